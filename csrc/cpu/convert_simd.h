// Conversions and stores of the CPU loops' 2-byte types, done by instructions
// where the CPU has them, bit-identical to c10's roundings (cpu_kernel.h's
// float_to_bf16, float_to_half), plus the streaming (non-temporal) row stores.
//
// bfloat16: AVX512_BF16's VCVTNE2PS2BF16 (one instruction per 32 elements, round
// to nearest even). The instruction differs from c10 in two cases, which are
// detected per vector and routed through the generic rounding: a NaN (the
// instruction keeps the payload, c10 gives 0x7fc0) and a denormal float32 (the
// instruction flushes it to zero, c10 rounds it to a denormal bfloat16). Both are
// rare in training data, so the check (one VFPCLASSPS per 16 elements) costs less
// than the rounding sequence it replaces: on this project's Zen 4 the generic
// sequence is ~8 vector instructions per 16 elements.
//
// float16: AVX-512F's VCVTPH2PS / VCVTPS2PH (16 lanes; F16C's 8-lane forms on AVX2
// CPUs), exact and round to nearest even. They differ from c10 only on NaN (the instructions keep the
// payload, c10 gives 0x7e00 with the sign), again detected per vector. The
// generic conversions are ~10 (load) and ~15 (store) vector instructions per 16
// elements, which made float16 loops 1.2-2x slower than float32 ones; GCC 12
// vectorizes no _Float16 conversion without AVX512-FP16, hence the explicit rows.
#pragma once

#include <algorithm>
#include <cstring>
#include <cstdint>
#include <type_traits>

#include "cpu_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FASTREG_HAVE_AVX512_BF16 1

// GCC 12 warns about the intrinsics' own _mm512_undefined operands.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fastreg::cpu {

#define FASTREG_TARGET_AVX512_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")))

// VFPCLASSPS categories that the instruction converts unlike c10: QNaN, SNaN, denormal.
constexpr int kBf16Special = 0x01 | 0x80 | 0x20;

// The 16 bfloat16 values at p as float32 (exact: a shift).
FASTREG_TARGET_AVX512_BF16 inline __attribute__((always_inline)) __m512 bf16x16_load(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

// One 64-byte line at p (kStream: a non-temporal store, p 64-byte aligned).
template <bool kStream>
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) void line_store(uint16_t* p, __m512i v) {
  if constexpr (kStream) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), v);
  } else {
    _mm512_storeu_si512(p, v);
  }
}

// The fallback of the vector stores below: 32 float32 values rounded one by one
// by the generic conversion (round(float) -> uint16_t bits).
template <class Round>
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) void generic32_store(uint16_t* p, __m512 lo, __m512 hi,
                                                                                 Round round) {
  alignas(64) float v[32];
  _mm512_store_ps(v, lo);
  _mm512_store_ps(v + 16, hi);
  for (int k = 0; k < 32; ++k) p[k] = round(v[k]);
}

// 32 float32 values (lo: elements 0-15, hi: 16-31) -> 32 bfloat16 at p, as c10 rounds.
template <bool kStream = false>
FASTREG_TARGET_AVX512_BF16 inline __attribute__((always_inline)) void bf16x32_store(uint16_t* p, __m512 lo,
                                                                                     __m512 hi) {
  const __mmask16 s = _mm512_fpclass_ps_mask(lo, kBf16Special) | _mm512_fpclass_ps_mask(hi, kBf16Special);
  if (__builtin_expect(s == 0, 1)) return line_store<kStream>(p, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  generic32_store(p, lo, hi, float_to_bf16);
}

// dst[0 .. n) = src[0 .. n) rounded to bfloat16 (the row stores of buffered loops);
// kStream: non-temporal stores (dst 64-byte aligned).
template <bool kStream = false>
FASTREG_TARGET_AVX512_BF16 __attribute__((noinline)) void bf16_store_row(uint16_t* __restrict dst,
                                                                         const float* __restrict src, int64_t n) {
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    bf16x32_store<kStream>(dst + k, _mm512_loadu_ps(src + k), _mm512_loadu_ps(src + k + 16));
  }
  for (; k < n; ++k) dst[k] = float_to_bf16(src[k]);
}

// The 16 float16 values at p as float32 (exact).
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) __m512 half16_load(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// 32 float32 values (lo: elements 0-15, hi: 16-31) -> 32 float16 at p, as c10 rounds.
template <bool kStream = false>
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) void half32_store(uint16_t* p, __m512 lo, __m512 hi) {
  const __mmask16 nan = _mm512_cmp_ps_mask(lo, lo, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(hi, hi, _CMP_UNORD_Q);
  if (__builtin_expect(nan == 0, 1)) {
    const __m256i a = _mm512_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i b = _mm512_cvtps_ph(hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return line_store<kStream>(p, _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1));
  }
  generic32_store(p, lo, hi, float_to_half);
}

// dst[0 .. n) = the float16 values src[0 .. n) as float32.
FASTREG_TARGET_AVX512 __attribute__((noinline)) inline void half_load_row512(float* __restrict dst,
                                                                             const uint16_t* __restrict src,
                                                                             int64_t n) {
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) _mm512_storeu_ps(dst + k, half16_load(src + k));
  for (; k < n; ++k) dst[k] = half_to_float(src[k]);
}

// dst[0 .. n) = src[0 .. n) rounded to float16; kStream: non-temporal stores (dst
// 64-byte aligned).
template <bool kStream>
FASTREG_TARGET_AVX512 __attribute__((noinline)) void half_store_row512(uint16_t* __restrict dst,
                                                                       const float* __restrict src, int64_t n) {
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    half32_store<kStream>(dst + k, _mm512_loadu_ps(src + k), _mm512_loadu_ps(src + k + 16));
  }
  for (; k < n; ++k) dst[k] = float_to_half(src[k]);
}

// The same two rows with F16C's 8-lane forms, for AVX2 CPUs (every AVX2 CPU has
// F16C; it is checked anyway).
#define FASTREG_TARGET_AVX2_F16C __attribute__((target("avx2,fma,f16c")))

FASTREG_TARGET_AVX2_F16C __attribute__((noinline)) inline void half_load_row256(float* __restrict dst,
                                                                                const uint16_t* __restrict src,
                                                                                int64_t n) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    _mm256_storeu_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
  }
  for (; k < n; ++k) dst[k] = half_to_float(src[k]);
}

FASTREG_TARGET_AVX2_F16C __attribute__((noinline)) inline void half_store_row256(uint16_t* __restrict dst,
                                                                                 const float* __restrict src,
                                                                                 int64_t n) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256 v = _mm256_loadu_ps(src + k);
    if (__builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) == 0, 1)) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k),
                       _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else {
      for (int j = 0; j < 8; ++j) dst[k + j] = float_to_half(src[k + j]);
    }
  }
  for (; k < n; ++k) dst[k] = float_to_half(src[k]);
}

// The rows of the CPU's width (half_convert() said yes).
inline void half_load_row(float* __restrict dst, const uint16_t* __restrict src, int64_t n) {
  return cpu_isa() >= Isa::Avx512 ? half_load_row512(dst, src, n) : half_load_row256(dst, src, n);
}
inline void half_store_row(uint16_t* __restrict dst, const float* __restrict src, int64_t n) {
  return cpu_isa() >= Isa::Avx512 ? half_store_row512<false>(dst, src, n) : half_store_row256(dst, src, n);
}

// dst[0 .. bytes) = src[0 .. bytes), whole 64-byte lines with non-temporal stores
// (dst 64-byte aligned), the rest with ordinary ones.
FASTREG_TARGET_AVX512 __attribute__((noinline)) inline void stream_copy(void* __restrict dst,
                                                                        const void* __restrict src,
                                                                        int64_t bytes) {
  char* __restrict d = static_cast<char*>(dst);
  const char* __restrict s = static_cast<const char*>(src);
  int64_t k = 0;
  for (; k + 64 <= bytes; k += 64) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + k), _mm512_loadu_si512(s + k));
  }
  if (k < bytes) std::memcpy(d + k, s + k, static_cast<size_t>(bytes - k));
}

}  // namespace fastreg::cpu

#pragma GCC diagnostic pop

#endif

namespace fastreg::cpu {

// Whether bfloat16 stores go through AVX512_BF16's conversion (the CPU has it and
// FASTREG_CPU_ISA does not cap it off).
inline bool bf16_convert() {
#ifdef FASTREG_HAVE_AVX512_BF16
  return cpu_isa() == Isa::Avx512Bf16;
#else
  return false;
#endif
}

// Whether float16 loads and stores go through the conversion instructions
// (AVX-512F's on AVX-512 CPUs, F16C's on AVX2 ones; FASTREG_CPU_ISA=portable keeps
// the generic ones).
inline bool half_convert() {
#ifdef FASTREG_HAVE_AVX512_BF16
  static const bool f16c = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("f16c") != 0;
  }();
  return cpu_isa() >= Isa::Avx512 || (cpu_isa() == Isa::Avx2 && f16c);
#else
  return false;
#endif
}

// Whether an op whose reads and writes come to `bytes` writes its output with
// non-temporal stores (stream_min_bytes(): the output cannot stay cached; AVX-512
// CPUs only). The loops that do end each task with store_fence().
inline bool stream_stores(int64_t bytes) {
#ifdef FASTREG_HAVE_AVX512_BF16
  return cpu_isa() >= Isa::Avx512 && bytes >= stream_min_bytes();
#else
  (void)bytes;
  return false;
#endif
}

// dst[0 .. n) = src[0 .. n) in T with non-temporal stores (stream_stores() said
// yes): ordinary stores up to the first 64-byte boundary of dst, then whole lines
// streamed, bfloat16 through AVX512_BF16's conversion where bf16_convert().
template <class T> FASTREG_HOST void stream_row(T* __restrict dst, const opmath_t<T>* __restrict src, int64_t n) {
  int64_t k = 0;
#ifdef FASTREG_HAVE_AVX512_BF16
  using A = opmath_t<T>;
  for (; k < n && reinterpret_cast<uintptr_t>(dst + k) % 64 != 0; ++k) store(dst, k, src[k]);
  if constexpr (std::is_same_v<raw_t<T>, A>) {  // float, double and raw bits: no rounding
    return stream_copy(dst + k, src + k, (n - k) * static_cast<int64_t>(sizeof(T)));
  } else {
    if (std::is_same_v<T, c10::BFloat16> && bf16_convert()) return bf16_store_row<true>(raw(dst + k), src + k, n - k);
    if (std::is_same_v<T, c10::Half>) return half_store_row512<true>(raw(dst + k), src + k, n - k);  // AVX-512 here
    alignas(64) raw_t<T> out[256];
    for (; k < n; k += 256) {
      const int64_t len = std::min<int64_t>(256, n - k);
      for (int64_t j = 0; j < len; ++j) store(reinterpret_cast<T*>(out), j, src[k + j]);
      stream_copy(dst + k, out, len * static_cast<int64_t>(sizeof(T)));
    }
  }
#endif
  for (; k < n; ++k) store(dst, k, src[k]);
}

// The streaming form of map_store: 256 values at a time computed into an L1
// buffer, then stream_row. (The functor stays in this inlined loop: handing it to a
// non-inlined AVX-512 function made its captures escape, and GCC stopped
// vectorizing the ordinary loop of map_store beside it.)
template <class T, class F>
FASTREG_HOST void map_stream(T* __restrict y, int64_t begin, int64_t end, const F& f) {
  alignas(64) opmath_t<T> buf[256];
  for (int64_t i = begin; i < end; i += 256) {
    const int64_t len = std::min<int64_t>(256, end - i);
    for (int64_t k = 0; k < len; ++k) buf[k] = f(i + k);
    stream_row(y + i, buf, len);
  }
}

// dst[0 .. n) = src[0 .. n) in scalar_t (buffered loops' row stores), bfloat16
// through AVX512_BF16's conversion where bf16_convert().
template <class T> FASTREG_HOST void store_row(T* __restrict dst, const opmath_t<T>* __restrict src, int64_t n) {
#ifdef FASTREG_HAVE_AVX512_BF16
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (bf16_convert()) return bf16_store_row(raw(dst), src, n);
  }
  if constexpr (std::is_same_v<T, c10::Half>) {
    if (half_convert()) return half_store_row(raw(dst), src, n);
  }
#endif
  for (int64_t k = 0; k < n; ++k) store(dst, k, src[k]);
}

// y[i] = f(i) for i in [begin, end), f giving opmath values. For bfloat16 where
// bf16_convert(), 256 values at a time go through a float32 buffer and
// AVX512_BF16's conversion; otherwise each is stored (rounded) as it is computed.
// stream: map_stream's non-temporal stores (from stream_stores()).
template <class T, class F>
FASTREG_HOST void map_store(T* __restrict y, int64_t begin, int64_t end, const F& f, bool stream = false) {
  if (stream) return map_stream(y, begin, end, f);
#ifdef FASTREG_HAVE_AVX512_BF16
  if constexpr (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>) {
    if (std::is_same_v<T, c10::BFloat16> ? bf16_convert() : half_convert()) {
      alignas(64) float buf[256];
      for (int64_t i0 = begin; i0 < end; i0 += 256) {
        const int64_t len = std::min<int64_t>(256, end - i0);
        for (int64_t k = 0; k < len; ++k) buf[k] = f(i0 + k);
        store_row(y + i0, buf, len);
      }
      return;
    }
  }
#endif
  for (int64_t i = begin; i < end; ++i) store(y, i, f(i));
}

// y[i] = f(i, a[i]) (map1) or f(i, a[i], b[i]) (map2) for i in [begin, end), the
// inputs given to f as opmath values: map_store, except that float16 inputs, where
// half_convert(), are converted 256 at a time by half_load_row into L1 buffers.
template <class T, class F>
FASTREG_HOST void map1(T* __restrict y, const T* __restrict a, int64_t begin, int64_t end, const F& f,
                       bool stream = false) {
#ifdef FASTREG_HAVE_AVX512_BF16
  if constexpr (std::is_same_v<T, c10::Half>) {
    if (half_convert()) {
      alignas(64) float av[256];
      for (int64_t i0 = begin; i0 < end; i0 += 256) {
        const int64_t len = std::min<int64_t>(256, end - i0);
        half_load_row(av, raw(a + i0), len);
        map_store(y + i0, 0, len, [&](int64_t k) FASTREG_INLINE_LAMBDA { return f(i0 + k, av[k]); }, stream);
      }
      return;
    }
  }
#endif
  map_store(y, begin, end, [&](int64_t i) FASTREG_INLINE_LAMBDA { return f(i, load(a, i)); }, stream);
}

template <class T, class F>
FASTREG_HOST void map2(T* __restrict y, const T* __restrict a, const T* __restrict b, int64_t begin, int64_t end,
                       const F& f, bool stream = false) {
#ifdef FASTREG_HAVE_AVX512_BF16
  if constexpr (std::is_same_v<T, c10::Half>) {
    if (half_convert()) {
      alignas(64) float av[256], bv[256];
      for (int64_t i0 = begin; i0 < end; i0 += 256) {
        const int64_t len = std::min<int64_t>(256, end - i0);
        half_load_row(av, raw(a + i0), len);
        half_load_row(bv, raw(b + i0), len);
        map_store(
            y + i0, 0, len, [&](int64_t k) FASTREG_INLINE_LAMBDA { return f(i0 + k, av[k], bv[k]); }, stream);
      }
      return;
    }
  }
#endif
  map_store(y, begin, end, [&](int64_t i) FASTREG_INLINE_LAMBDA { return f(i, load(a, i), load(b, i)); }, stream);
}

}  // namespace fastreg::cpu
