// Argument checks for the op wrappers: FASTREG_CHECK_TYPE / _VALUE / plain raise
// Python's TypeError / ValueError / RuntimeError with a message built here.
//
// The message is assembled by fastreg::detail::cat, never by c10::str or any
// std::ostream: on the H200 image (torch 2.11, gcc 13.3 at /opt/gcc) the
// extension carries its own copy of libstdc++'s stream code, and formatting a
// number through an ostream there fetched the wrong locale facet and crashed
// (SIGSEGV in std::ostream::_M_insert<double>, seen with cuda-gdb on both the
// CPU and the CUDA ops; messages holding only strings were fine). Numbers go
// through std::to_string and snprintf, which use no locale facets. The
// exception itself is thrown by functions in fastreg.cpp.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdio>
#include <string>
#include <type_traits>

namespace fastreg {

[[noreturn]] void throw_type_error(const std::string& msg);
[[noreturn]] void throw_value_error(const std::string& msg);
[[noreturn]] void throw_runtime_error(const std::string& msg);

namespace detail {

inline void put(std::string& s, const char* v) { s += v; }
inline void put(std::string& s, const std::string& v) { s += v; }
inline void put(std::string& s, c10::string_view v) { s.append(v.data(), v.size()); }
inline void put(std::string& s, char v) { s += v; }
inline void put(std::string& s, bool v) { s += v ? "true" : "false"; }
template <class T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool> &&
                                        !std::is_same_v<T, char>,
                                    int> = 0>
inline void put(std::string& s, T v) {
  s += std::to_string(v);
}
inline void put(std::string& s, double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);  // as an ostream's default format prints it
  s += buf;
}
inline void put(std::string& s, float v) { put(s, static_cast<double>(v)); }
inline void put(std::string& s, c10::ScalarType v) { s += c10::toString(v); }
inline void put(std::string& s, const c10::Device& v) { s += v.str(); }
inline void put(std::string& s, c10::IntArrayRef v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  s += ']';
}

template <class... Args>
std::string cat(const Args&... args) {
  std::string s;
  (put(s, args), ...);
  return s;
}

}  // namespace detail
}  // namespace fastreg

#define FASTREG_CHECK_IMPL(thrower, cond, ...)                               \
  do {                                                                       \
    if (C10_UNLIKELY(!(cond))) thrower(::fastreg::detail::cat(__VA_ARGS__)); \
  } while (0)
// TypeError: wrong dtype or kind of argument.
#define FASTREG_CHECK_TYPE(cond, ...) \
  FASTREG_CHECK_IMPL(::fastreg::throw_type_error, cond, __VA_ARGS__)
// ValueError: a wrong value or shape.
#define FASTREG_CHECK_VALUE(cond, ...) \
  FASTREG_CHECK_IMPL(::fastreg::throw_value_error, cond, __VA_ARGS__)
// RuntimeError: anything else (devices), as torch raises it.
#define FASTREG_CHECK(cond, ...) \
  FASTREG_CHECK_IMPL(::fastreg::throw_runtime_error, cond, __VA_ARGS__)
