// Philox4x32-10 for many counter blocks at a time in SIMD registers (AVX-512, and
// AVX2 for CPUs without it): the same function as csrc/philox.h (tested equal word
// for word), written with intrinsics because GCC vectorizes the scalar rounds
// poorly (64-bit products).
// Each block lives in a 64-bit lane, its 32-bit words in the lanes' low halves:
// one _mm512_mul_epu32 is then the full 32x32->64 product of 8 blocks (hi = the
// product >> 32, lo = the product itself, whose high half the next multiply
// ignores), and each round's two XORs are one ternary-logic op. Two groups of 16
// blocks (four independent chains) per pass keep the multipliers busy without
// spilling (more chains ran slower: docs/performance-log.md, "Philox on the CPU").
// The four words of every 8 blocks are permuted into element order (block b's
// words at 4b .. 4b+3).
#pragma once

#include <cstdint>

#include "../philox.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FASTREG_HAVE_SIMD_PHILOX 1

// GCC 12 warns about the intrinsics' own _mm512_undefined operands.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fastreg::cpu {

#define FASTREG_AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"), noinline))

// The four counter words of 8 blocks, one block per 64-bit lane (low halves).
struct Lanes8 { __m512i c0, c1, c2, c3; };

__attribute__((target("avx512f"), always_inline)) inline void philox_round8(Lanes8& a, __m512i m0,
                                                                            __m512i m1, __m512i k0,
                                                                            __m512i k1) {
  const __m512i p0 = _mm512_mul_epu32(a.c0, m0), p1 = _mm512_mul_epu32(a.c2, m1);
  a.c0 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), a.c1, k0, 0x96);  // hi1 ^ c1 ^ k0
  a.c2 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), a.c3, k1, 0x96);  // hi0 ^ c3 ^ k1
  a.c1 = p1;
  a.c3 = p0;
}

// The counters of blocks first .. first + 7: block first + j in lane j as a 64-bit
// index, whose low half is counter word 0 and, shifted down, word 1 (the rounds
// ignore the lanes' high halves).
__attribute__((target("avx512f"), always_inline)) inline void philox_counters8(uint64_t first,
                                                                               __m512i stream,
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
__attribute__((target("avx512f"), always_inline)) inline void philox_store8(const Lanes8& a,
                                                                            uint32_t* out) {
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
__attribute__((target("avx512f"), always_inline)) inline void philox_groups(const philox::Key& key,
                                                                            uint32_t stream,
                                                                            uint64_t first,
                                                                            uint32_t* out) {
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
FASTREG_AVX512_FN inline void philox_words_avx512(const philox::Key& key, uint32_t stream,
                                                  uint64_t b0, int64_t groups,
                                                  uint32_t* __restrict words) {
  int64_t g = 0;
  for (; g + 2 <= groups; g += 2)
    philox_groups<2>(key, stream, b0 + static_cast<uint64_t>(g) * 16, words + 64 * g);
  if (g < groups) philox_groups<1>(key, stream, b0 + static_cast<uint64_t>(g) * 16, words + 64 * g);
}

// AVX2: the same layout with 4 blocks per 256-bit register (Lanes4), two XORs where
// AVX-512 has one ternary-logic op, and 3 chains per pass, which fit AVX2's 16
// registers (state, multipliers, round keys, products) and measured fastest.
#define FASTREG_AVX2_PHILOX_FN __attribute__((target("avx2"), noinline))

// The four counter words of 4 blocks, one block per 64-bit lane (low halves).
struct Lanes4 { __m256i c0, c1, c2, c3; };

__attribute__((target("avx2"), always_inline)) inline void philox_round4(Lanes4& a, __m256i m0,
                                                                         __m256i m1, __m256i k0,
                                                                         __m256i k1) {
  const __m256i p0 = _mm256_mul_epu32(a.c0, m0), p1 = _mm256_mul_epu32(a.c2, m1);
  a.c0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), a.c1), k0);  // hi1 ^ c1 ^ k0
  a.c2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), a.c3), k1);  // hi0 ^ c3 ^ k1
  a.c1 = p1;
  a.c3 = p0;
}

// The counters of blocks first .. first + 3, as philox_counters8 makes them.
__attribute__((target("avx2"), always_inline)) inline void philox_counters4(uint64_t first,
                                                                            __m256i stream,
                                                                            Lanes4& a) {
  const __m256i index = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<long long>(first)),
                                         _mm256_setr_epi64x(0, 1, 2, 3));
  a.c0 = index;
  a.c1 = _mm256_srli_epi64(index, 32);
  a.c2 = stream;
  a.c3 = _mm256_setzero_si256();
}

// 4 blocks' words -> 16 words in element order at out: words 0, 1 (and 2, 3) of each
// block paired in its qword by a shift and a blend, then the qword pairs of blocks
// 0, 2 and 1, 3 unpacked per 128-bit lane and the lanes put in block order.
__attribute__((target("avx2"), always_inline)) inline void philox_store4(const Lanes4& a,
                                                                         uint32_t* out) {
  const __m256i t01 =
      _mm256_blend_epi32(a.c0, _mm256_slli_epi64(a.c1, 32), 0xaa);  // qword j: words 0, 1
  const __m256i t23 =
      _mm256_blend_epi32(a.c2, _mm256_slli_epi64(a.c3, 32), 0xaa);  // qword j: words 2, 3
  const __m256i even = _mm256_unpacklo_epi64(t01, t23);             // blocks 0 | 2
  const __m256i odd = _mm256_unpackhi_epi64(t01, t23);              // blocks 1 | 3
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute2x128_si256(even, odd, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8),
                      _mm256_permute2x128_si256(even, odd, 0x31));
}

// G chains of 4 blocks from block `first`.
template <int G>
__attribute__((target("avx2"), always_inline)) inline void philox_chains4(const philox::Key& key,
                                                                          uint32_t stream,
                                                                          uint64_t first,
                                                                          uint32_t* out) {
  const __m256i m0 = _mm256_set1_epi64x(philox::kM0), m1 = _mm256_set1_epi64x(philox::kM1);
  const __m256i st = _mm256_set1_epi64x(stream);
  Lanes4 s[G];
  for (int q = 0; q < G; ++q) philox_counters4(first + 4 * static_cast<uint64_t>(q), st, s[q]);
#pragma GCC unroll 10
  for (int r = 0; r < 10; ++r) {
    const __m256i k0 = _mm256_set1_epi32(static_cast<int>(key.k0[r]));
    const __m256i k1 = _mm256_set1_epi32(static_cast<int>(key.k1[r]));
#pragma GCC unroll 4
    for (int q = 0; q < G; ++q) philox_round4(s[q], m0, m1, k0, k1);
  }
  for (int q = 0; q < G; ++q) philox_store4(s[q], out + 16 * q);
}

// words[0 .. 16 * quads) = the words of blocks b0 .. b0 + 4 * quads, in element order.
FASTREG_AVX2_PHILOX_FN inline void philox_words_avx2(const philox::Key& key, uint32_t stream,
                                                     uint64_t b0, int64_t quads,
                                                     uint32_t* __restrict words) {
  int64_t q = 0;
  for (; q + 3 <= quads; q += 3)
    philox_chains4<3>(key, stream, b0 + static_cast<uint64_t>(q) * 4, words + 16 * q);
  for (; q < quads; ++q)
    philox_chains4<1>(key, stream, b0 + static_cast<uint64_t>(q) * 4, words + 16 * q);
}

}  // namespace fastreg::cpu

#pragma GCC diagnostic pop

#endif
