// Per-sample random draws (uniform, normal, Gamma, Beta) that are bit-identical
// on the CPU, on CUDA and in fastreg/_random.py: every step is an IEEE
// operation rounded on its own (add, sub, mul, div, sqrt, rint; no FMA
// contraction, no libm), so all three compute the same float32 bits.
// Groundwork for the batch augmentations (Mixup/CutMix lambdas, boxes).
//
// Counter mapping of a per-sample draw with rejection: attempt `a` of sample
// `i` uses the Philox block {lo32(i), a, stream, 0} (key = seed); its words
// w0, w1 give the polar-method normal, w2 the acceptance uniform, and w3 of
// attempt 0 the boost uniform for shape < 1.
#pragma once

#include <cstdint>
#include <cstring>

#include "philox.h"

namespace fastreg::sampling {

// Separately rounded arithmetic: nvcc would otherwise contract a*b+c into FMAs.
#if defined(__CUDA_ARCH__)
FASTREG_PHILOX_HD float dmul(float a, float b) { return __fmul_rn(a, b); }
FASTREG_PHILOX_HD float dadd(float a, float b) { return __fadd_rn(a, b); }
FASTREG_PHILOX_HD float dsub(float a, float b) { return __fsub_rn(a, b); }
FASTREG_PHILOX_HD float ddiv(float a, float b) { return __fdiv_rn(a, b); }
FASTREG_PHILOX_HD float dsqrt(float a) { return __fsqrt_rn(a); }
FASTREG_PHILOX_HD float drint(float a) { return rintf(a); }
FASTREG_PHILOX_HD float bits_float(uint32_t u) { return __uint_as_float(u); }
FASTREG_PHILOX_HD uint32_t float_bits(float f) { return __float_as_uint(f); }
#else
// (the CPU build compiles with -ffp-contract=off)
FASTREG_PHILOX_HD float dmul(float a, float b) { return a * b; }
FASTREG_PHILOX_HD float dadd(float a, float b) { return a + b; }
FASTREG_PHILOX_HD float dsub(float a, float b) { return a - b; }
FASTREG_PHILOX_HD float ddiv(float a, float b) { return a / b; }
FASTREG_PHILOX_HD float dsqrt(float a) { return __builtin_sqrtf(a); }
FASTREG_PHILOX_HD float drint(float a) { return __builtin_rintf(a); }
FASTREG_PHILOX_HD float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
FASTREG_PHILOX_HD uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
#endif

// A uniform in (0, 1): the top 24 bits of the word, centred in their bucket.
FASTREG_PHILOX_HD float uniform(uint32_t w) {
  return dadd(dmul(static_cast<float>(w >> 8), 5.9604644775390625e-08f), 2.98023223876953125e-08f);
}

// log(x) for a normal positive float: x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// log(m) = 2 atanh(s), s = (m - 1) / (m + 1), odd series to s^9.
FASTREG_PHILOX_HD float dlog(float x) {
  const uint32_t u = float_bits(x);
  int32_t e = static_cast<int32_t>((u >> 23) & 0xffu) - 127;
  float m = bits_float((u & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  if (m > 1.4142135381698608f) {
    m = dmul(m, 0.5f);
    e += 1;
  }
  const float s = ddiv(dsub(m, 1.0f), dadd(m, 1.0f));
  const float s2 = dmul(s, s);
  float p = 0.1111111119389534f;  // 1/9 (exact float32 values: the reference reads the same)
  p = dadd(dmul(p, s2), 0.1428571492433548f);  // 1/7
  p = dadd(dmul(p, s2), 0.20000000298023224f);  // 1/5
  p = dadd(dmul(p, s2), 0.3333333432674408f);  // 1/3
  p = dadd(dmul(p, s2), 1.0f);
  const float log_m = dmul(dmul(2.0f, s), p);
  const float ef = static_cast<float>(e);
  return dadd(dadd(dmul(ef, 0.693145751953125f), dmul(ef, 1.428606765330187e-06f)), log_m);
}

// exp(x), x clamped to [-87, 88]: x = n ln2 + r, degree-7 Taylor polynomial.
FASTREG_PHILOX_HD float dexp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = drint(dmul(x, 1.4426950216293335f));
  const float r = dsub(dsub(x, dmul(n, 0.693145751953125f)), dmul(n, 1.428606765330187e-06f));
  float p = 0.00019841270113829523f;  // 1/5040
  p = dadd(dmul(p, r), 0.0013888889225199819f);  // 1/720
  p = dadd(dmul(p, r), 0.008333333767950535f);  // 1/120
  p = dadd(dmul(p, r), 0.0416666679084301f);  // 1/24
  p = dadd(dmul(p, r), 0.1666666716337204f);
  p = dadd(dmul(p, r), 0.5f);
  p = dadd(dmul(p, r), 1.0f);
  p = dadd(dmul(p, r), 1.0f);
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t half = ni / 2;
  const float s1 = bits_float(static_cast<uint32_t>(half + 127) << 23);
  const float s2 = bits_float(static_cast<uint32_t>(ni - half + 127) << 23);
  return dmul(dmul(p, s1), s2);
}

constexpr int kMaxAttempts = 64;

// Gamma(shape, 1) by Marsaglia & Tsang (2000); shape < 1 via the boost
// Gamma(shape + 1) * U^(1/shape).
FASTREG_PHILOX_HD float gamma(const philox::Key& key, uint32_t stream, uint32_t sample, float shape) {
  const bool boost = shape < 1.0f;
  const float a = boost ? dadd(shape, 1.0f) : shape;
  const float d = dsub(a, 0.3333333432674408f);
  const float c = ddiv(1.0f, dsqrt(dmul(9.0f, d)));
  float result = d;  // returned only if every attempt is rejected (probability < 1e-40)
  float boost_u = 0.5f;
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    const philox::Word4 w = philox::philox4x32_10(sample, static_cast<uint32_t>(attempt), stream, 0u, key);
    if (attempt == 0) boost_u = uniform(w.v[3]);
    // polar method: (v1, v2) uniform in the square, kept inside the unit disc
    const float v1 = dsub(dmul(2.0f, uniform(w.v[0])), 1.0f);
    const float v2 = dsub(dmul(2.0f, uniform(w.v[1])), 1.0f);
    const float s = dadd(dmul(v1, v1), dmul(v2, v2));
    if (!(s < 1.0f)) continue;
    const float x = dmul(v1, dsqrt(ddiv(dmul(-2.0f, dlog(s)), s)));
    const float t = dadd(1.0f, dmul(c, x));
    if (!(t > 0.0f)) continue;
    const float v = dmul(dmul(t, t), t);
    if (!(v > 1e-30f)) continue;  // keeps dlog on normal floats
    const float u = uniform(w.v[2]);
    const float bound = dadd(dsub(dadd(dmul(dmul(0.5f, x), x), d), dmul(d, v)), dmul(d, dlog(v)));
    if (dlog(u) < bound) {
      result = dmul(d, v);
      break;
    }
  }
  if (boost) result = dmul(result, dexp(ddiv(dlog(boost_u), shape)));
  return result;
}

// Beta(a, b) = X / (X + Y), X ~ Gamma(a) on `stream`, Y ~ Gamma(b) on `stream + 1`.
// The ratio is taken in float64 (IEEE add and divide, the same everywhere):
// in float32 every draw within 6e-8 of 1 would collapse onto 1.0, an atom of
// ~2% of Beta(0.2, 0.2)'s mass that a Kolmogorov-Smirnov test sees.
FASTREG_PHILOX_HD double beta(const philox::Key& key, uint32_t stream, uint32_t sample, float a,
                              float b) {
  const double x = gamma(key, stream, sample, a);
  const double y = gamma(key, stream + 1, sample, b);
  const double sum = x + y;
  return sum > 0.0 ? x / sum : 0.5;
}

// Cutout's box of one sample (DeVries & Taylor): with probability p (word 0 <
// threshold), a square of side `size` whose centre is uniform over the whole
// image (integer draws: centre = floor(word * H / 2^32)), clipped at the border.
// Block {sample, 0, kStreamBox, 0}: w0 the coin, w1 the row, w2 the column.
struct Box {
  bool apply;
  int64_t y0, y1, x0, x1;  // rows [y0, y1), columns [x0, x1)
};

FASTREG_PHILOX_HD Box cutout_box(const philox::Key& key, uint32_t sample, int64_t H, int64_t W,
                                 int64_t size, uint64_t threshold) {
  const philox::Word4 w = philox::philox4x32_10(sample, 0u, philox::kStreamBox, 0u, key);
  const int64_t cy = static_cast<int64_t>((static_cast<uint64_t>(w.v[1]) * static_cast<uint64_t>(H)) >> 32);
  const int64_t cx = static_cast<int64_t>((static_cast<uint64_t>(w.v[2]) * static_cast<uint64_t>(W)) >> 32);
  const int64_t top = cy - size / 2, left = cx - size / 2;
  Box b;
  b.apply = static_cast<uint64_t>(w.v[0]) < threshold;
  b.y0 = top < 0 ? 0 : top;
  b.y1 = top + size > H ? H : top + size;
  b.x0 = left < 0 ? 0 : left;
  b.x1 = left + size > W ? W : left + size;
  return b;
}

}  // namespace fastreg::sampling
