// The CPU loop driver shared by every family: scalar <-> opmath conversions
// written so that GCC vectorizes them, and a run-time ISA switch. The extension
// is compiled once (no per-ISA builds like ATen's), so each hot loop is inlined
// into an AVX-512, an AVX2 and a portable wrapper and the CPU picks one; the
// wrapper tells the loop which it is (IsaTag), so that intrinsics for that
// instruction set can sit inside the loop (convert_simd.h's map_avx512).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../activations.h"

namespace fastreg::cpu {

using fastreg::opmath_t;

using math::bits_to_float;
using math::float_to_bits;

// float16 <-> float32 with integer ops and selects (exact, round to nearest
// even), so that the loops vectorize without F16C intrinsics: the AVX2 and
// portable paths, and tails (AVX-512 loops convert whole rows by instruction,
// convert_simd.h).
FASTREG_HOST float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t em = uint32_t(h & 0x7fffu) << 13;
  const uint32_t exp = em & 0x0f800000u;
  const uint32_t normal = em + ((127u - 15u) << 23);
  const uint32_t infnan = normal + ((128u - 16u) << 23);
  const float sub = bits_to_float(em + (113u << 23)) - bits_to_float(113u << 23);
  const uint32_t o = exp == 0x0f800000u ? infnan : (exp == 0 ? float_to_bits(sub) : normal);
  return bits_to_float(o | sign);
}

FASTREG_HOST uint16_t float_to_half(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = u & 0x80000000u;
  const uint32_t a = u ^ sign;
  const uint32_t big = a > (255u << 23) ? 0x7e00u : 0x7c00u;  // NaN, or overflow to inf
  const float magic = bits_to_float(((127u - 15u) + (23u - 10u) + 1u) << 23);
  const uint32_t sub = float_to_bits(bits_to_float(a) + magic) - float_to_bits(magic);
  const uint32_t norm = (a + ((15u - 127u) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
  const uint32_t o = a >= ((127u + 16u) << 23) ? big : (a < (113u << 23) ? sub : norm);
  return uint16_t(o | (sign >> 16));
}

FASTREG_HOST float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

// Round to nearest even; NaN stays a quiet NaN (as c10::BFloat16 does).
FASTREG_HOST uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return f != f ? uint16_t(0x7fc0) : uint16_t(r);
}

template <class T> FASTREG_HOST opmath_t<T> load(const T* p, int64_t i) { return p[i]; }
template <> FASTREG_HOST float load(const c10::Half* p, int64_t i) {
  return half_to_float(reinterpret_cast<const uint16_t*>(p)[i]);
}
template <> FASTREG_HOST float load(const c10::BFloat16* p, int64_t i) {
  return bf16_to_float(reinterpret_cast<const uint16_t*>(p)[i]);
}

template <class T> FASTREG_HOST void store(T* p, int64_t i, opmath_t<T> v) { p[i] = v; }
template <> FASTREG_HOST void store(c10::Half* p, int64_t i, float v) {
  reinterpret_cast<uint16_t*>(p)[i] = float_to_half(v);
}
template <> FASTREG_HOST void store(c10::BFloat16* p, int64_t i, float v) {
  reinterpret_cast<uint16_t*>(p)[i] = float_to_bf16(v);
}

// An element's raw bits (the 2-byte types as uint16_t): loops of ops whose
// result is one of their inputs or zero move these without converting.
template <class T> struct Raw { using type = T; };
template <> struct Raw<c10::Half> { using type = uint16_t; };
template <> struct Raw<c10::BFloat16> { using type = uint16_t; };
template <class T> using raw_t = typename Raw<T>::type;
template <class T> FASTREG_HOST const raw_t<T>* raw(const T* p) {
  return reinterpret_cast<const raw_t<T>*>(p);
}
template <class T> FASTREG_HOST raw_t<T>* raw(T* p) { return reinterpret_cast<raw_t<T>*>(p); }

// Eight 0/1 bytes -> one byte, bit t = byte t: one multiply moves byte t's bit to
// bit 56 + t (the partial products never overlap, so nothing carries).
FASTREG_HOST uint8_t pack_bits8(const uint8_t* b) {
  uint64_t v;
  std::memcpy(&v, b, 8);
  return static_cast<uint8_t>((v * 0x0102040810204080ull) >> 56);
}

// The inverse for `bytes` mask bytes: bit t of byte q -> out[8q + t], non-zero
// when set (one multiply spreads the byte over 8 bytes, a mask keeps bit t of each).
FASTREG_HOST void unpack_bits8(const uint8_t* __restrict m, int64_t bytes,
                               uint8_t* __restrict out) {
  for (int64_t q = 0; q < bytes; ++q) {
    const uint64_t spread = (uint64_t(m[q]) * 0x0101010101010101ull) & 0x8040201008040201ull;
    std::memcpy(out + 8 * q, &spread, 8);
  }
}

// Avx512Bf16: AVX-512 plus AVX512_BF16's float32 -> bfloat16 conversion
// (convert_simd.h), which the bfloat16 stores of the dropout family and of the
// activation maps use.
enum class Isa { Portable, Avx2, Avx512, Avx512Bf16 };

// FASTREG_CPU_ISA=portable|avx2|avx512|avx512bf16 caps the choice (tests run
// every path; an unsupported request falls back to what the CPU has).
inline Isa detect_isa() {
  const char* cap = std::getenv("FASTREG_CPU_ISA");
  const std::string want = cap ? cap : "";
  if (want == "portable") return Isa::Portable;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && want != "avx2") {
    return __builtin_cpu_supports("avx512bf16") && want != "avx512" ? Isa::Avx512Bf16 : Isa::Avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return Isa::Avx2;  // (every AVX2 CPU has F16C: the float16 conversions)
  }
#endif
  return Isa::Portable;
}

inline Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512Bf16:
      return "avx512bf16";
    case Isa::Avx512:
      return "avx512";
    case Isa::Avx2:
      return "avx2";
    default:
      return "portable";
  }
}

// The AVX-512 wrappers carry AVX512_BF16 and F16C as well, so that the one-pass
// conversions of convert_simd.h inline into them; GCC 12 emits AVX512_BF16
// instructions only through intrinsics, which run where bf16_convert() says so.
#if defined(__x86_64__) && defined(__GNUC__)
#define FASTREG_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,f16c,avx2,fma")))
#define FASTREG_TARGET_AVX512_256 \
  __attribute__((target(          \
      "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,f16c,avx2,fma,prefer-vector-width=256")))
#define FASTREG_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define FASTREG_TARGET_AVX512
#define FASTREG_TARGET_AVX512_256
#define FASTREG_TARGET_AVX2
#endif

// The instruction set a loop body was inlined for, known at compile time: run_isa
// hands one to the body, which passes it to map1/map2/map_store (convert_simd.h).
template <Isa I> struct IsaTag { static constexpr Isa isa = I; };

// The body (an always_inline lambda taking an IsaTag) is inlined into each
// wrapper, so the vectorizer sees it with that wrapper's instruction set.
// `flatten` also inlines what the body calls: convert_simd.h's AVX-512 and AVX2 loops
// carry the wrapper's target attribute, which a default-target lambda cannot inline
// itself, so they reach the body's loop only through the wrapper.
template <class F> FASTREG_TARGET_AVX512 __attribute__((noinline, flatten)) void run_avx512(
    const F& f) {
  f(IsaTag<Isa::Avx512>{});
}
template <class F> FASTREG_TARGET_AVX512_256 __attribute__((noinline, flatten)) void run_avx512_256(
    const F& f) {
  f(IsaTag<Isa::Avx512>{});
}
template <class F> FASTREG_TARGET_AVX2 __attribute__((noinline, flatten)) void run_avx2(
    const F& f) {
  f(IsaTag<Isa::Avx2>{});
}
template <class F> __attribute__((noinline)) void run_portable(const F& f) {
  f(IsaTag<Isa::Portable>{});
}

// kNarrow: on an AVX-512 CPU, vectorize with 256-bit registers (AVX-512VL
// instructions): faster for the memory-bound select loops of 4- and 8-byte types
// (relu, leaky_relu, prelu in float32); loops with real math (exp, erf) and the
// 2-byte types, whose conversions are the work, are faster at 512 bits. ATen,
// likewise, compiles most of its elementwise kernels for AVX2 only.
template <bool kNarrow = false, class F> void run_isa(const F& f) {
  switch (cpu_isa()) {
    case Isa::Avx512:
    case Isa::Avx512Bf16:
      if constexpr (kNarrow) {
        run_avx512_256(f);
      } else {
        run_avx512(f);
      }
      break;
    case Isa::Avx2:
      run_avx2(f);
      break;
    default:
      run_portable(f);
  }
}

// Whether select loops over scalar_t take 256-bit vectors (run_isa's kNarrow).
template <class scalar_t> constexpr bool kNarrowSelect = sizeof(scalar_t) >= 4;

// out[c] = sum over tasks of partial[task][c], in task order (deterministic).
// Rows are added whole (sequential, vectorized); a column walk strided by C
// cost more than the kernel itself for C = 4096.
template <class scalar_t, class A>
void sum_partials(const A* partial, int64_t tasks, int64_t C, scalar_t* out) {
  std::vector<A> acc(static_cast<size_t>(C), A(0));
  A* __restrict a = acc.data();
  for (int64_t t = 0; t < tasks; ++t) {
    const A* __restrict row = partial + t * C;
    for (int64_t c = 0; c < C; ++c) a[c] += row[c];
  }
  for (int64_t c = 0; c < C; ++c) out[c] = static_cast<scalar_t>(a[c]);
}

// The last-level cache's size in bytes, as Linux reports it for CPU 0
// (/sys/devices/system/cpu/cpu0/cache/index3/size; glibc's sysconf can report
// the host's, ten times the guest's 32 MiB on this project's VM), else 32 MiB.
inline int64_t read_llc_bytes() {
  if (std::FILE* f = std::fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r")) {
    long long v = 0;
    char unit = 0;
    const int got = std::fscanf(f, "%lld%c", &v, &unit);
    std::fclose(f);
    if (got >= 1 && v > 0) return unit == 'M' ? v << 20 : unit == 'K' ? v << 10 : v;
  }
  return int64_t(32) << 20;
}

// Streaming (non-temporal) stores pay when an op's bytes read and written
// together exceed the last-level cache: its output cannot stay cached anyway,
// and without a read-for-ownership of each line the stores drain while the
// kernel computes. FASTREG_CPU_STREAM_MIN_BYTES overrides the threshold (tests).
inline int64_t stream_min_bytes() {
  static const int64_t v = [] {
    const char* env = std::getenv("FASTREG_CPU_STREAM_MIN_BYTES");
    return env ? std::atoll(env) : read_llc_bytes();
  }();
  return v;
}

// Orders a task's non-temporal stores before whatever follows it (they are
// weakly ordered on x86).
inline void store_fence() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_ia32_sfence();
#endif
}

// Elements per task: large enough to amortize a thread hand-off, small enough
// that 2^22 elements split across the cores.
constexpr int64_t kGrain = 1 << 15;

}  // namespace fastreg::cpu

// Marks a loop-body lambda for inlining into the ISA wrappers.
#define FASTREG_INLINE_LAMBDA __attribute__((always_inline))
