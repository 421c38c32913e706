// The CPU loops' element maps (map1/map2/map_store): conversions of the 2-byte
// types done by instructions where the CPU has them, bit-identical to c10's roundings
// (cpu_kernel.h's float_to_bf16, float_to_half), and the streaming (non-temporal)
// stores. On AVX-512 CPUs a map is one pass (map_avx512: convert, compute, convert,
// store per 64-byte line, in registers).
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
// CPUs), exact and round to nearest even. They differ from c10 only on NaN (the instructions keep
// the payload, c10 gives 0x7e00 with the sign), again detected per vector. The generic conversions
// are ~10 (load) and ~15 (store) vector instructions per 16 elements, more than the math of most
// loops; GCC 12 vectorizes no _Float16 conversion without AVX512-FP16, hence the intrinsics.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FASTREG_HAVE_AVX512_BF16 1

// GCC 12 warns about the intrinsics' own _mm512_undefined operands.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fastreg::cpu {

// VFPCLASSPS categories that the instruction converts unlike c10: QNaN, SNaN, denormal.
constexpr int kBf16Special = 0x01 | 0x80 | 0x20;

// The 16 bfloat16 values at p as float32 (exact: a shift).
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) __m512 bf16x16_load(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

// One 64-byte line at p (kStream: a non-temporal store, p 64-byte aligned).
template <bool kStream>
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) void line_store(uint16_t* p,
                                                                            __m512i v) {
  if constexpr (kStream) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), v);
  } else {
    _mm512_storeu_si512(p, v);
  }
}

// The fallback of the vector stores below: 32 float32 values rounded one by one
// by the generic conversion (round(float) -> uint16_t bits).
template <class Round>
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) void generic32_store(uint16_t* p,
                                                                                 __m512 lo,
                                                                                 __m512 hi,
                                                                                 Round round) {
  alignas(64) float v[32];
  _mm512_store_ps(v, lo);
  _mm512_store_ps(v + 16, hi);
  for (int k = 0; k < 32; ++k) p[k] = round(v[k]);
}

// 32 float32 values (lo: elements 0-15, hi: 16-31) -> 32 bfloat16 at p, as c10 rounds.
template <bool kStream = false>
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) void bf16x32_store(uint16_t* p,
                                                                               __m512 lo,
                                                                               __m512 hi) {
  const __mmask16 s =
      _mm512_fpclass_ps_mask(lo, kBf16Special) | _mm512_fpclass_ps_mask(hi, kBf16Special);
  if (__builtin_expect(s == 0, 1))
    return line_store<kStream>(p, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  generic32_store(p, lo, hi, float_to_bf16);
}

// The 16 float16 values at p as float32 (exact).
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) __m512 half16_load(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// 32 float32 values (lo: elements 0-15, hi: 16-31) -> 32 float16 at p, as c10 rounds.
template <bool kStream = false>
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) void half32_store(uint16_t* p,
                                                                              __m512 lo,
                                                                              __m512 hi) {
  const __mmask16 nan =
      _mm512_cmp_ps_mask(lo, lo, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(hi, hi, _CMP_UNORD_Q);
  if (__builtin_expect(nan == 0, 1)) {
    const __m256i a = _mm512_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i b = _mm512_cvtps_ph(hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return line_store<kStream>(p, _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1));
  }
  generic32_store(p, lo, hi, float_to_half);
}

// The 16 values of the 2-byte type T at p as float32 (exact).
template <class T> FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) __m512
load16(const T* p) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    return half16_load(raw(p));
  } else {
    return bf16x16_load(raw(p));
  }
}

// 32 float32 values (lo: elements 0-15, hi: 16-31) rounded to the 2-byte type T at p, as
// c10 rounds: float16 by AVX-512F, bfloat16 by AVX512_BF16 where bf16i, else by the
// generic rounding. kStream: the converted line leaves by a non-temporal store (p 64-byte
// aligned; the generic roundings store as usual).
template <bool kStream = false, class T>
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) void store16x2(T* p, __m512 lo,
                                                                           __m512 hi, bool bf16i) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    half32_store<kStream>(raw(p), lo, hi);
  } else if (bf16i) {
    bf16x32_store<kStream>(raw(p), lo, hi);
  } else {
    generic32_store(raw(p), lo, hi, float_to_bf16);
  }
}

// dst[0 .. n) = src[0 .. n) rounded to the 2-byte type T (the row stores of buffered
// loops), 32 at a time by AVX512_BF16 (bfloat16: called where bf16_convert()) or
// AVX-512F (float16).
template <class T>
FASTREG_TARGET_AVX512 __attribute__((noinline)) void store_row512(T* __restrict dst,
                                                                  const float* __restrict src,
                                                                  int64_t n) {
  int64_t k = 0;
  for (; k + 32 <= n; k += 32)
    store16x2(dst + k, _mm512_loadu_ps(src + k), _mm512_loadu_ps(src + k + 16), true);
  for (; k < n; ++k) store(dst, k, src[k]);
}

// The AVX2 forms, 8 elements per 256-bit register, for CPUs without AVX-512: bfloat16
// by integer ops (as c10 rounds: nearest even, NaN -> 0x7fc0, in 32-bit lanes),
// float16 by F16C (every AVX2 CPU has it; cpu_isa() checks): FASTREG_TARGET_AVX2 names it.

// The 8 values of the 2-byte type T at p as float32 (exact).
template <class T> FASTREG_TARGET_AVX2 inline __attribute__((always_inline)) __m256
load8(const T* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (std::is_same_v<T, c10::Half>) {
    return _mm256_cvtph_ps(h);
  } else {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

// 8 float32 values rounded to bfloat16 as float_to_bf16 does, one per 32-bit lane.
FASTREG_TARGET_AVX2 inline __attribute__((always_inline)) __m256i bf16x8_round(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
}

// 32 bytes at q (kStream: a non-temporal store, q 32-byte aligned).
template <bool kStream = false>
FASTREG_TARGET_AVX2 inline __attribute__((always_inline)) void store256(__m256i* q, __m256i v) {
  if constexpr (kStream) {
    _mm256_stream_si256(q, v);
  } else {
    _mm256_storeu_si256(q, v);
  }
}

// 16 float32 values (a: elements 0-7, b: 8-15) rounded to the 2-byte type T at p, as c10
// rounds: bfloat16 by bf16x8_round and an unsigned pack (exact: every lane is below
// 2^16), float16 by F16C, whose only difference from c10 (a NaN's payload) sends a
// vector holding a NaN to the generic rounding.
// kStream: a non-temporal store (p 32-byte aligned; the generic rounding stores as usual).
template <bool kStream = false, class T>
FASTREG_TARGET_AVX2 inline __attribute__((always_inline)) void store8x2(T* p, __m256 a, __m256 b) {
  __m256i* q = reinterpret_cast<__m256i*>(p);
  if constexpr (std::is_same_v<T, c10::Half>) {
    if (__builtin_expect(_mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q),
                                                         _mm256_cmp_ps(b, b, _CMP_UNORD_Q))) == 0,
                         1)) {
      constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
      return store256<kStream>(
          q, _mm256_set_m128i(_mm256_cvtps_ph(b, kNearest), _mm256_cvtps_ph(a, kNearest)));
    }
    alignas(32) float v[16];
    _mm256_store_ps(v, a);
    _mm256_store_ps(v + 8, b);
    for (int k = 0; k < 16; ++k) raw(p)[k] = float_to_half(v[k]);
  } else {
    const __m256i packed =
        _mm256_packus_epi32(bf16x8_round(a), bf16x8_round(b));     // a0-3 b0-3 | a4-7 b4-7
    store256<kStream>(q, _mm256_permute4x64_epi64(packed, 0xd8));  // a0-7 b0-7
  }
}

FASTREG_TARGET_AVX2 __attribute__((noinline)) inline void half_store_row256(
    uint16_t* __restrict dst, const float* __restrict src, int64_t n) {
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
// (AVX-512F's on AVX-512 CPUs, F16C's on AVX2 ones: cpu_isa() takes the AVX2 path only
// with F16C; FASTREG_CPU_ISA=portable keeps the generic ones).
inline bool half_convert() {
#ifdef FASTREG_HAVE_AVX512_BF16
  return cpu_isa() >= Isa::Avx2;
#else
  return false;
#endif
}

// Whether an op whose reads and writes come to `bytes` writes its output with
// non-temporal stores (stream_min_bytes(): the output cannot stay cached; the AVX-512
// and AVX2 paths). The loops that do end each task with store_fence().
inline bool stream_stores(int64_t bytes) {
#ifdef FASTREG_HAVE_AVX512_BF16
  return cpu_isa() >= Isa::Avx2 && bytes >= stream_min_bytes();
#else
  (void)bytes;
  return false;
#endif
}

// dst[0 .. n) = src[0 .. n) in scalar_t (buffered loops' row stores), bfloat16
// through AVX512_BF16's conversion where bf16_convert().
template <class T> FASTREG_HOST void store_row(T* __restrict dst, const opmath_t<T>* __restrict src,
                                               int64_t n) {
#ifdef FASTREG_HAVE_AVX512_BF16
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (bf16_convert()) return store_row512(dst, src, n);
  }
  if constexpr (std::is_same_v<T, c10::Half>) {
    if (cpu_isa() >= Isa::Avx512) return store_row512(dst, src, n);
    if (half_convert()) return half_store_row256(raw(dst), src, n);
  }
#endif
  for (int64_t k = 0; k < n; ++k) store(dst, k, src[k]);
}

template <class T> constexpr bool kTwoByte =
    std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

#ifdef FASTREG_HAVE_AVX512_BF16
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// v[0 .. 32) = the 32 values of the 2-byte type T at p as float32 (exact).
template <class T>
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) void load32(float* v, const T* p) {
  _mm512_store_ps(v, load16(p));
  _mm512_store_ps(v + 16, load16(p + 16));
}

// The 64 bytes at p (64-byte aligned: a block the loop below just computed), read the
// way that loop wrote them, so that GCC keeps the block in registers: it vectorizes a
// functor's loop with 512-bit vectors, but with 256-bit ones where the loop also reads
// or writes a byte per element (kBytes: the 1-bit mask kernels' keep bytes). A 512-bit
// load of two 256-bit stores stalls on store forwarding; two 256-bit loads of a 512-bit
// store cost an extract and an insert (5-10 % of bfloat16 sigmoid's forward).
template <bool kBytes>
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) __m512i line_load(const void* p) {
  if constexpr (kBytes) {
    const __m256i* q = static_cast<const __m256i*>(p);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_load_si256(q)),
                              _mm256_load_si256(q + 1), 1);
  } else {
    return _mm512_load_si512(p);
  }
}

// The 32 float32 values v[0 .. 32) rounded to the 2-byte type T at p (store16x2).
template <bool kStream, bool kBytes, class T>
FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) void store32(T* p, const float* v,
                                                                         bool bf16i) {
  store16x2<kStream>(p, _mm512_castsi512_ps(line_load<kBytes>(v)),
                     _mm512_castsi512_ps(line_load<kBytes>(v + 16)), bf16i);
}

// out[k] = f(i + k, v[0][k] ...) for the 32 elements of a step of map_avx512 / map_avx2,
// with N inputs converted into v; inlined into their loops. kLoop (map_avx512): the loop
// is kept a loop for the vectorizer, which turns its 32 elements into two 512-bit
// registers (unrolled first, it stays scalar). On AVX2 the same pragma left four
// 256-bit iterations over arrays in L1 around a loop of one vector each; without it GCC
// vectorizes the loop, then unrolls the four vectors in registers (load, math and
// rounding of a step without a store between them).
template <bool kLoop, size_t N, class F>
FASTREG_HOST void map_block(float* __restrict out, const float (*v)[32], int64_t i, const F& f) {
  if constexpr (!kLoop) {
    for (int k = 0; k < 32; ++k) {
      if constexpr (N == 0) {
        out[k] = f(i + k);
      } else if constexpr (N == 1) {
        out[k] = f(i + k, v[0][k]);
      } else {
        out[k] = f(i + k, v[0][k], v[1][k]);
      }
    }
  } else if constexpr (N == 0) {
    _Pragma("GCC unroll 1")  // kept a loop for the vectorizer (unrolled, it stays scalar)
        for (int k = 0; k < 32; ++k) out[k] = f(i + k);
  } else if constexpr (N == 1) {
    _Pragma("GCC unroll 1")  // kept a loop for the vectorizer (unrolled, it stays scalar)
        for (int k = 0; k < 32; ++k) out[k] = f(i + k, v[0][k]);
  } else {
    _Pragma("GCC unroll 1")  // kept a loop for the vectorizer (unrolled, it stays scalar)
        for (int k = 0; k < 32; ++k) out[k] = f(i + k, v[0][k], v[1][k]);
  }
}

// The AVX-512 form of map_rows: y[i] = f(i, a[i]...) in one pass, a 64-byte line of
// y at a time. The 2-byte types are converted by instruction (VCVTPH2PS/VCVTPS2PH,
// AVX512_BF16) into 32-element arrays around the functor's loop, which GCC turns into
// vector registers: no L1 row buffers between conversion, math and store (those
// cost float16 leaky_relu a third of eager's speed). kStream: the lines leave by non-
// temporal stores as they are computed (after ordinary stores up to y's first 64-byte
// boundary). Reached only through run_avx512's flatten (its target attribute).
template <bool kStream, bool kBytes, class T, class F, class... P>
FASTREG_TARGET_AVX512 void map_avx512(T* __restrict y, int64_t i, int64_t end, const F& f,
                                      P... in) {
  constexpr size_t N = sizeof...(P);
  static_assert(N <= 2 && (std::is_same_v<P, const T*> && ...),
                "map_avx512: up to two inputs of y's type");
  if constexpr (kStream) {
    for (; i < end && reinterpret_cast<uintptr_t>(y + i) % 64 != 0; ++i)
      store(y, i, f(i, load(in, i)...));
  }
  if constexpr (kTwoByte<T>) {
    const bool bf16i = bf16_convert();
    const T* const ptr[N + 1] = {in..., nullptr};
    for (; i + 32 <= end; i += 32) {
      alignas(64) float v[N + 1][32];
      alignas(64) float out[32];
      for (size_t j = 0; j < N; ++j) load32(v[j], ptr[j] + i);
      map_block<true, N>(out, v, i, f);
      store32<kStream, kBytes>(y + i, out, bf16i);
    }
  } else if constexpr (kStream) {  // float, double, raw bits: four lines of L elements
    // (one line per step left GCC 12 with scalar code or 2-lane pieces for the loops
    // that read keep bytes)
    constexpr int64_t L = 64 / static_cast<int64_t>(sizeof(T));
    for (; i + 4 * L <= end; i += 4 * L) {
      alignas(64) T out[4 * L];
      _Pragma("GCC unroll 1")  // kept a loop for the vectorizer (unrolled, it stays scalar)
          for (int64_t k = 0; k < 4 * L; ++k) out[k] = f(i + k, in[i + k]...);
      for (int64_t j = 0; j < 4 * L; j += L) {
        _mm512_stream_si512(reinterpret_cast<__m512i*>(y + i + j), line_load<kBytes>(out + j));
      }
    }
  }
  for (; i < end; ++i) store(y, i, f(i, load(in, i)...));
}

// The AVX2 form for the 2-byte types, as map_avx512's: 32 elements per step converted
// by instruction (load8, store8x2) into float arrays around the functor's loop, which GCC
// keeps in four 256-bit registers (map_block<false>; pinned as a loop, the arrays stayed in
// L1, and steps of 16 elements left some loops scalar: docs/performance-log.md). Reached
// only through run_avx2's flatten (its target attribute).
// kStream: as map_avx512's, for every type (the 4- and 8-byte types take this function
// only to stream).
template <bool kStream, class T, class F, class... P>
FASTREG_TARGET_AVX2 void map_avx2(T* __restrict y, int64_t i, int64_t end, const F& f, P... in) {
  constexpr size_t N = sizeof...(P);
  static_assert(N <= 2 && (std::is_same_v<P, const T*> && ...),
                "map_avx2: up to two inputs of y's type");
  if constexpr (kStream) {
    for (; i < end && reinterpret_cast<uintptr_t>(y + i) % 64 != 0; ++i)
      store(y, i, f(i, load(in, i)...));
  }
  if constexpr (kTwoByte<T>) {
    const T* const ptr[N + 1] = {in..., nullptr};
    for (; i + 32 <= end; i += 32) {
      alignas(32) float v[N + 1][32];
      alignas(32) float out[32];
      for (size_t j = 0; j < N; ++j) {
        for (int q = 0; q < 32; q += 8) _mm256_store_ps(v[j] + q, load8(ptr[j] + i + q));
      }
      map_block<false, N>(out, v, i, f);
      store8x2<kStream>(y + i, _mm256_load_ps(out), _mm256_load_ps(out + 8));
      store8x2<kStream>(y + i + 16, _mm256_load_ps(out + 16), _mm256_load_ps(out + 24));
    }
  } else if constexpr (kStream) {  // float, double, raw bits: four lines of L elements
    constexpr int64_t L = 64 / static_cast<int64_t>(sizeof(T));
    for (; i + 4 * L <= end; i += 4 * L) {
      alignas(64) T out[4 * L];
      _Pragma("GCC unroll 1")  // kept a loop for the vectorizer (unrolled, it stays scalar)
          for (int64_t k = 0; k < 4 * L; ++k) out[k] = f(i + k, in[i + k]...);
      for (int64_t j = 0; j < 4 * L; j += L / 2) {
        _mm256_stream_si256(reinterpret_cast<__m256i*>(y + i + j),
                            _mm256_load_si256(reinterpret_cast<const __m256i*>(out + j)));
      }
    }
  }
  for (; i < end; ++i) store(y, i, f(i, load(in, i)...));
}

#pragma GCC diagnostic pop
#endif

// y[i] = f(i, a[i]...) for i in [begin, end), for up to two inputs a of y's type,
// handed to f as opmath values; stream (from stream_stores()): y is written with
// non-temporal stores. Tag: the instruction set the caller was inlined for
// (run_isa's IsaTag). On AVX-512, map_avx512's single pass, on AVX2 map_avx2's for
// the 2-byte types; otherwise each value is loaded and stored (rounded) as it is
// computed, which GCC vectorizes.
template <bool kBytes, class Tag, class T, class F, class... P>
FASTREG_HOST void map_rows(Tag, T* __restrict y, int64_t begin, int64_t end, const F& f,
                           bool stream, P... in) {
#ifdef FASTREG_HAVE_AVX512_BF16
  if constexpr (Tag::isa >= Isa::Avx512) {
    if (stream) return map_avx512<true, kBytes>(y, begin, end, f, in...);
    if (std::is_same_v<T, c10::Half> || (std::is_same_v<T, c10::BFloat16> && bf16_convert())) {
      return map_avx512<false, kBytes>(y, begin, end, f, in...);
    }
  } else if constexpr (Tag::isa == Isa::Avx2) {
    if (stream) return map_avx2<true>(y, begin, end, f, in...);
    if constexpr (kTwoByte<T>)
      return map_avx2<false>(y, begin, end, f, in...);  // (with F16C: cpu_isa())
  }
#endif
  (void)stream;  // streaming is for the AVX-512 and AVX2 paths (stream_stores())
  for (int64_t i = begin; i < end; ++i) store(y, i, f(i, load(in, i)...));
}

// The three shapes the loops use: y[i] = f(i), f(i, a[i]), f(i, a[i], b[i]). kBytes:
// f reads or writes a byte per element (a keep byte; see line_load).
template <bool kBytes = false, class Tag, class T, class F>
FASTREG_HOST void map_store(Tag tag, T* __restrict y, int64_t begin, int64_t end, const F& f,
                            bool stream = false) {
  map_rows<kBytes>(tag, y, begin, end, f, stream);
}
template <bool kBytes = false, class Tag, class T, class F>
FASTREG_HOST void map1(Tag tag, T* __restrict y, const T* __restrict a, int64_t begin, int64_t end,
                       const F& f, bool stream = false) {
  map_rows<kBytes>(tag, y, begin, end, f, stream, a);
}
template <bool kBytes = false, class Tag, class T, class F>
FASTREG_HOST void map2(Tag tag, T* __restrict y, const T* __restrict a, const T* __restrict b,
                       int64_t begin, int64_t end, const F& f, bool stream = false) {
  map_rows<kBytes>(tag, y, begin, end, f, stream, a, b);
}

}  // namespace fastreg::cpu
