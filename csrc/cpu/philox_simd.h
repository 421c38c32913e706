// Philox4x32-10 for 16 or 32 counter blocks at a time in AVX-512 registers: the
// same function as csrc/philox.h (tested equal word for word), written with
// intrinsics because GCC vectorizes the scalar rounds poorly (64-bit products).
// Each block lives in a 64-bit lane, its 32-bit words in the lanes' low halves:
// one _mm512_mul_epu32 is then the full 32x32->64 product of 8 blocks (hi = the
// product >> 32, lo = the product itself, whose high half the next multiply
// ignores), and each round's two XORs are one ternary-logic op. Two groups of 16
// blocks (four independent chains) per pass keep the multipliers busy: 0.42 ns per
// word on one core of the development machine, against 0.58 for 16 lanes of 32 bits
// with even/odd multiplies and blends; 0.33 since the counters are made as 64-bit
// indices and the words leave through permutes (below). The four words of every 8
// blocks are permuted into element order (block b's words at 4b .. 4b+3). Three or
// four groups per pass (six or eight chains) ran at less than half the speed.
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

// The four counter words of 8 blocks, one block per 64-bit lane (low halves).
struct Lanes8 {
  __m512i c0, c1, c2, c3;
};

__attribute__((target("avx512f"), always_inline)) inline void philox_round8(Lanes8& a, __m512i m0, __m512i m1,
                                                                            __m512i k0, __m512i k1) {
  const __m512i p0 = _mm512_mul_epu32(a.c0, m0), p1 = _mm512_mul_epu32(a.c2, m1);
  a.c0 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), a.c1, k0, 0x96);  // hi1 ^ c1 ^ k0
  a.c2 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), a.c3, k1, 0x96);  // hi0 ^ c3 ^ k1
  a.c1 = p1;
  a.c3 = p0;
}

// The counters of blocks first .. first + 7: block first + j in lane j as a 64-bit
// index, whose low half is counter word 0 and, shifted down, word 1 (the rounds
// ignore the lanes' high halves).
__attribute__((target("avx512f"), always_inline)) inline void philox_counters8(uint64_t first, __m512i stream,
                                                                               Lanes8& a) {
  const __m512i index = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(first)),
                                         _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  a.c0 = index;
  a.c1 = _mm512_srli_epi64(index, 32);
  a.c2 = stream;
  a.c3 = _mm512_setzero_si512();
}

// 8 blocks' words (one Lanes8, each word in its lane's low half) -> 32 words in
// element order at out: two two-source dword permutes pair words 0, 1 and 2, 3 of
// each block, two qword permutes interleave the pairs. (A 4x4 transpose per
// 128-bit lane and one across lanes took 7 shuffles per 8 blocks and the low-half
// extraction 3 more: 12 % more time per word on the development machine.)
__attribute__((target("avx512f"), always_inline)) inline void philox_store8(const Lanes8& a, uint32_t* out) {
  const __m512i pair = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
  const __m512i t01 = _mm512_permutex2var_epi32(a.c0, pair, a.c1);  // qword j: block j's words 0, 1
  const __m512i t23 = _mm512_permutex2var_epi32(a.c2, pair, a.c3);  // qword j: block j's words 2, 3
  const __m512i lo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
  const __m512i hi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  _mm512_storeu_si512(out, _mm512_permutex2var_epi64(t01, lo, t23));       // blocks 0-3
  _mm512_storeu_si512(out + 16, _mm512_permutex2var_epi64(t01, hi, t23));  // blocks 4-7
}

// G groups of 16 blocks from block `first`: G = 2 per pass, G = 1 for an odd last group.
template <int G>
__attribute__((target("avx512f"), always_inline)) inline void philox_groups(const philox::Key& key, uint32_t stream,
                                                                            uint64_t first, uint32_t* out) {
  const __m512i m0 = _mm512_set1_epi64(philox::kM0), m1 = _mm512_set1_epi64(philox::kM1);
  Lanes8 s[2 * G];
  const __m512i st = _mm512_set1_epi64(stream);
  for (int q = 0; q < 2 * G; ++q) philox_counters8(first + 8 * static_cast<uint64_t>(q), st, s[q]);
#pragma GCC unroll 10
  for (int r = 0; r < 10; ++r) {
    const __m512i k0 = _mm512_set1_epi32(static_cast<int>(key.k0[r]));
    const __m512i k1 = _mm512_set1_epi32(static_cast<int>(key.k1[r]));
#pragma GCC unroll 4
    for (int q = 0; q < 2 * G; ++q) philox_round8(s[q], m0, m1, k0, k1);
  }
  for (int q = 0; q < 2 * G; ++q) philox_store8(s[q], out + 32 * q);
}

// words[0 .. 64 * groups) = the words of blocks b0 .. b0 + 16 * groups, in element order.
FASTREG_AVX512_FN inline void philox_words_avx512(const philox::Key& key, uint32_t stream, uint64_t b0,
                                                   int64_t groups, uint32_t* __restrict words) {
  int64_t g = 0;
  for (; g + 2 <= groups; g += 2) philox_groups<2>(key, stream, b0 + static_cast<uint64_t>(g) * 16, words + 64 * g);
  if (g < groups) philox_groups<1>(key, stream, b0 + static_cast<uint64_t>(g) * 16, words + 64 * g);
}

}  // namespace fastreg::cpu

#pragma GCC diagnostic pop

#endif
