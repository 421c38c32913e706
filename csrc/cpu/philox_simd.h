// Philox4x32-10 for 16 counter blocks at a time in AVX-512 registers: the same
// function as csrc/philox.h (tested equal word for word), written with
// intrinsics because GCC vectorizes the scalar rounds poorly (64-bit products).
// Each of the 10 rounds is two 32x32->64 multiplies per block, done as even/odd
// _mm512_mul_epu32 pairs; the four words of the 16 blocks are then transposed
// into element order (block b's words at 4b .. 4b+3).
#pragma once

#include <cstdint>

#include "../philox.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FASTREG_HAVE_AVX512_PHILOX 1

// GCC 12 warns about the intrinsics' own _mm512_undefined operands.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fastreg::cpu {

#define FASTREG_AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"), noinline))

// hi and lo 32-bit halves of a * m (m broadcast), per 32-bit lane.
__attribute__((target("avx512f"), always_inline)) inline void mulhilo16(__m512i a, __m512i m, __m512i& hi,
                                                                        __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);                         // lanes 0, 2, ...: 64-bit products
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);  // lanes 1, 3, ...
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

// words[0 .. 64 * groups) = the words of blocks b0 .. b0 + 16 * groups, in element order.
FASTREG_AVX512_FN inline void philox_words_avx512(const philox::Key& key, uint32_t stream, uint64_t b0,
                                                   int64_t groups, uint32_t* __restrict words) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(philox::kM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(philox::kM1));
  for (int64_t g = 0; g < groups; ++g) {
    const uint64_t first = b0 + static_cast<uint64_t>(g) * 16;
    // counters: {lo32(block), hi32(block), stream, 0}; blocks never straddle 2^32 within
    // a group unless lo32 wraps, handled by the carry below
    const __m512i lo32 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first))), lane);
    const __mmask16 wrapped =
        _mm512_cmplt_epu32_mask(lo32, _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first))));
    __m512i c0 = lo32;
    __m512i c1 = _mm512_mask_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first >> 32))),
                                       wrapped, _mm512_set1_epi32(static_cast<int>(first >> 32)),
                                       _mm512_set1_epi32(1));
    __m512i c2 = _mm512_set1_epi32(static_cast<int>(stream));
    __m512i c3 = _mm512_setzero_si512();
    for (int round = 0; round < 10; ++round) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo16(c0, m0, hi0, lo0);
      mulhilo16(c2, m1, hi1, lo1);
      const __m512i k0 = _mm512_set1_epi32(static_cast<int>(key.k0[round]));
      const __m512i k1 = _mm512_set1_epi32(static_cast<int>(key.k1[round]));
      c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), k0);
      c1 = lo1;
      c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), k1);
      c3 = lo0;
    }
    // 4 x 16 -> element order: within each 128-bit lane a 4x4 transpose of 32-bit
    // words, then a 4x4 transpose of the 128-bit lanes
    const __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpacklo_epi32(c2, c3);
    const __m512i t2 = _mm512_unpackhi_epi32(c0, c1), t3 = _mm512_unpackhi_epi32(c2, c3);
    const __m512i u0 = _mm512_unpacklo_epi64(t0, t1);  // lane L: block 4L
    const __m512i u1 = _mm512_unpackhi_epi64(t0, t1);  // block 4L + 1
    const __m512i u2 = _mm512_unpacklo_epi64(t2, t3);  // block 4L + 2
    const __m512i u3 = _mm512_unpackhi_epi64(t2, t3);  // block 4L + 3
    const __m512i v0 = _mm512_shuffle_i32x4(u0, u1, 0x44), v1 = _mm512_shuffle_i32x4(u2, u3, 0x44);  // lanes 0, 1
    const __m512i v2 = _mm512_shuffle_i32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);  // lanes 2, 3
    uint32_t* out = words + 64 * g;
    _mm512_storeu_si512(out, _mm512_shuffle_i32x4(v0, v1, 0x88));       // blocks 0-3
    _mm512_storeu_si512(out + 16, _mm512_shuffle_i32x4(v0, v1, 0xDD));  // blocks 4-7
    _mm512_storeu_si512(out + 32, _mm512_shuffle_i32x4(v2, v3, 0x88));  // blocks 8-11
    _mm512_storeu_si512(out + 48, _mm512_shuffle_i32x4(v2, v3, 0xDD));  // blocks 12-15
  }
}

}  // namespace fastreg::cpu

#pragma GCC diagnostic pop

#endif
