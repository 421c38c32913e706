// Argument checks for the op wrappers. The message is built where the check
// is, but the exception is thrown by functions compiled in fastreg.cpp (the
// host compiler), never inside a translation unit compiled by nvcc: on the
// H200 image (torch 2.11, nvcc 13.0, gcc 13.3) a c10::ValueError thrown from
// an nvcc-compiled wrapper crashed the process (seen with fastreg::prelu).
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <string>

namespace fastreg {

[[noreturn]] void throw_type_error(const std::string& msg);
[[noreturn]] void throw_value_error(const std::string& msg);
[[noreturn]] void throw_runtime_error(const std::string& msg);

}  // namespace fastreg

#define FASTREG_CHECK_IMPL(thrower, cond, ...)                 \
  do {                                                         \
    if (C10_UNLIKELY(!(cond))) thrower(::c10::str(__VA_ARGS__)); \
  } while (0)
// TypeError: wrong dtype or kind of argument.
#define FASTREG_CHECK_TYPE(cond, ...) FASTREG_CHECK_IMPL(::fastreg::throw_type_error, cond, __VA_ARGS__)
// ValueError: a wrong value or shape.
#define FASTREG_CHECK_VALUE(cond, ...) FASTREG_CHECK_IMPL(::fastreg::throw_value_error, cond, __VA_ARGS__)
// RuntimeError: anything else (devices), as torch raises it.
#define FASTREG_CHECK(cond, ...) FASTREG_CHECK_IMPL(::fastreg::throw_runtime_error, cond, __VA_ARGS__)
