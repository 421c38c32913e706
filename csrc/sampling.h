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

#include <cmath>
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
  p = dadd(dmul(p, s2), 0.1428571492433548f);   // 1/7
  p = dadd(dmul(p, s2), 0.20000000298023224f);  // 1/5
  p = dadd(dmul(p, s2), 0.3333333432674408f);   // 1/3
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
  float p = 0.00019841270113829523f;             // 1/5040
  p = dadd(dmul(p, r), 0.0013888889225199819f);  // 1/720
  p = dadd(dmul(p, r), 0.008333333767950535f);   // 1/120
  p = dadd(dmul(p, r), 0.0416666679084301f);     // 1/24
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
FASTREG_PHILOX_HD float gamma(const philox::Key& key, uint32_t stream, uint32_t sample,
                              float shape) {
  const bool boost = shape < 1.0f;
  const float a = boost ? dadd(shape, 1.0f) : shape;
  const float d = dsub(a, 0.3333333432674408f);
  const float c = ddiv(1.0f, dsqrt(dmul(9.0f, d)));
  float result = d;  // returned only if every attempt is rejected (probability < 1e-40)
  float boost_u = 0.5f;
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    const philox::Word4 w =
        philox::philox4x32_10(sample, static_cast<uint32_t>(attempt), stream, 0u, key);
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
  const int64_t cy =
      static_cast<int64_t>((static_cast<uint64_t>(w.v[1]) * static_cast<uint64_t>(H)) >> 32);
  const int64_t cx =
      static_cast<int64_t>((static_cast<uint64_t>(w.v[2]) * static_cast<uint64_t>(W)) >> 32);
  const int64_t top = cy - size / 2, left = cx - size / 2;
  Box b;
  b.apply = static_cast<uint64_t>(w.v[0]) < threshold;
  b.y0 = top < 0 ? 0 : top;
  b.y1 = top + size > H ? H : top + size;
  b.x0 = left < 0 ? 0 : left;
  b.x1 = left + size > W ? W : left + size;
  return b;
}

// --- random erasing (torchvision's rule, one box per sample) --------------------------
// Block {sample, 0, kStreamErase, 0} word 0 is the coin (erase when < threshold(p));
// attempt a < 10 uses block {sample, 1 + a, kStreamErase, 0}: w0 the area fraction
// (uniform in scale), w1 the log aspect ratio (uniform in log(ratio)), w2 the top row,
// w3 the left column. h = rint(sqrt(area * s * r)), w = rint(sqrt(area * s / r)); the
// first attempt with h < H and w < W wins; none does: the sample is left unchanged.
constexpr int kEraseAttempts = 10;

struct EraseSpec {
  int64_t H, W;
  uint64_t threshold;
  float area, scale_lo, scale_span, log_ratio_lo, log_ratio_span;
};

FASTREG_PHILOX_HD Box erase_box(const philox::Key& key, uint32_t sample, const EraseSpec& e) {
  Box b{false, 0, 0, 0, 0};
  const philox::Word4 coin = philox::philox4x32_10(sample, 0u, philox::kStreamErase, 0u, key);
  if (!(static_cast<uint64_t>(coin.v[0]) < e.threshold)) return b;
  for (int attempt = 0; attempt < kEraseAttempts; ++attempt) {
    const philox::Word4 w = philox::philox4x32_10(sample, static_cast<uint32_t>(1 + attempt),
                                                  philox::kStreamErase, 0u, key);
    const float target = dmul(e.area, dadd(e.scale_lo, dmul(uniform(w.v[0]), e.scale_span)));
    const float aspect = dexp(dadd(e.log_ratio_lo, dmul(uniform(w.v[1]), e.log_ratio_span)));
    const int64_t h = static_cast<int64_t>(drint(dsqrt(dmul(target, aspect))));
    const int64_t wd = static_cast<int64_t>(drint(dsqrt(ddiv(target, aspect))));
    if (!(h < e.H && wd < e.W)) continue;
    b.apply = true;
    b.y0 = static_cast<int64_t>(
        (static_cast<uint64_t>(w.v[2]) * static_cast<uint64_t>(e.H - h + 1)) >> 32);
    b.x0 = static_cast<int64_t>(
        (static_cast<uint64_t>(w.v[3]) * static_cast<uint64_t>(e.W - wd + 1)) >> 32);
    b.y1 = b.y0 + h;
    b.x1 = b.x0 + wd;
    return b;
  }
  return b;
}

// The box of one sample for Cutout (erase = false) or random erasing (erase = true).
struct BoxRule {
  bool erase;
  int64_t size;        // cutout
  uint64_t threshold;  // cutout
  EraseSpec e;         // random erasing
  FASTREG_PHILOX_HD Box operator()(const philox::Key& key, uint32_t sample, int64_t H,
                                   int64_t W) const {
    return erase ? erase_box(key, sample, e) : cutout_box(key, sample, H, W, size, threshold);
  }
};

// sin(2 pi u) and cos(2 pi u) for u in (0, 1): quadrant q = rint(4u), the rest
// r = u - q/4 (exact) in [-1/8, 1/8], x = 2 pi r, Taylor polynomials to x^9 / x^8.
FASTREG_PHILOX_HD void sincos_2pi(float u, float& s, float& c) {
  const float q = drint(dmul(u, 4.0f));
  const float x = dmul(dsub(u, dmul(q, 0.25f)), 6.2831854820251465f);
  const float x2 = dmul(x, x);
  float ps = 2.7557318844628753e-06f;                // 1/9!
  ps = dsub(dmul(ps, x2), 0.00019841270113829523f);  // 1/7!
  ps = dadd(dmul(ps, x2), 0.008333333767950535f);    // 1/5!
  ps = dsub(dmul(ps, x2), 0.1666666716337204f);      // 1/3!
  ps = dadd(dmul(ps, x2), 1.0f);
  const float sx = dmul(x, ps);
  float pc = 2.4801587642286904e-05f;               // 1/8!
  pc = dsub(dmul(pc, x2), 0.0013888889225199819f);  // 1/6!
  pc = dadd(dmul(pc, x2), 0.0416666679084301f);     // 1/4!
  pc = dsub(dmul(pc, x2), 0.5f);
  const float cx = dadd(dmul(pc, x2), 1.0f);
  switch (static_cast<int>(q) & 3) {
    case 0:
      s = sx;
      c = cx;
      break;
    case 1:
      s = cx;
      c = -sx;
      break;
    case 2:
      s = -sx;
      c = -cx;
      break;
    default:
      s = -cx;
      c = sx;
      break;
  }
}

// A standard normal for element n of a per-element draw (Box-Muller): block n / 4
// of `stream`; elements 4k, 4k+1 share words (w0, w1) (cosine, sine), 4k+2, 4k+3
// share (w2, w3).
FASTREG_PHILOX_HD float normal_at(const philox::Key& key, uint32_t stream, uint64_t n) {
  const philox::Word4 w = philox::block_words(key, stream, n >> 2);
  const int j = static_cast<int>(n & 3);
  const uint32_t w_r = j < 2 ? w.v[0] : w.v[2], w_t = j < 2 ? w.v[1] : w.v[3];
  const float r = dsqrt(dmul(-2.0f, dlog(uniform(w_r))));
  float s, c;
  sincos_2pi(uniform(w_t), s, c);
  return dmul(r, (j & 1) ? s : c);
}

// --- Mixup / CutMix (timm's Mixup, drawn per sample on the device) --------------------
// The draw of key index k (0 in 'batch' mode, min(i, B-1-i) in 'pair', i in 'elem'):
// block {k, 0, kStreamMix, 0}: w0 the coin (mix when < threshold(prob)), w1 the switch
// to CutMix (when < threshold(switch_prob), both alphas > 0), w2 / w3 the box centre row /
// column; block {k, 1, kStreamMix, 0}: w0 / w1 the min-max box height / width, w2 / w3
// its top / left. lambda ~ Beta(alpha, alpha) (mixup: streams 8, 9; cutmix: 10, 11).
// lambda == 1 (no coin, or a draw of exactly 1) leaves the sample alone, as in timm.
// CutMix box (timm's rand_bbox): side_h = floor(H sqrt(1 - lambda)), computed exactly
// as the integer square root of the double H*H*(1 - lambda) (so no sqrt rounding can
// differ between devices), centre (floor(w2 H / 2^32), floor(w3 W / 2^32)), rows
// [cy - side_h / 2, cy + (side_h + 1) / 2) clipped; columns alike. With correct_lam
// (or a min-max box) the targets' lambda is 1 - box area / (H W).
enum MixKind : int { kMixNone = 0, kMixBlend = 1, kMixCut = 2 };

struct MixSpec {
  int64_t H, W;
  uint64_t prob_threshold, switch_threshold;
  float mixup_alpha, cutmix_alpha;  // 0: off
  bool minmax, correct_lam;
  int64_t min_h, span_h, min_w, span_w;  // min-max box side ranges [min, min + span)
};

struct MixDraw {
  double lam, lam_target;
  int kind;
  int64_t y0, y1, x0, x1;
};

FASTREG_PHILOX_HD int64_t floor_sqrt(double q) {  // largest c >= 0 with c * c <= q
  int64_t c = static_cast<int64_t>(::sqrt(q));
  while (c > 0 && static_cast<double>(c) * static_cast<double>(c) > q) --c;
  while (static_cast<double>(c + 1) * static_cast<double>(c + 1) <= q) ++c;
  return c;
}

FASTREG_PHILOX_HD int64_t clip(int64_t v, int64_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

FASTREG_PHILOX_HD MixDraw mix_draw(const philox::Key& key, uint32_t k, const MixSpec& m) {
  MixDraw d{1.0, 1.0, kMixNone, 0, 0, 0, 0};
  const philox::Word4 w = philox::philox4x32_10(k, 0u, philox::kStreamMix, 0u, key);
  if (!(static_cast<uint64_t>(w.v[0]) < m.prob_threshold)) return d;
  bool cut;
  if (m.mixup_alpha > 0.0f && m.cutmix_alpha > 0.0f)
    cut = static_cast<uint64_t>(w.v[1]) < m.switch_threshold;
  else
    cut = !(m.mixup_alpha > 0.0f);
  const double lam = cut ? beta(key, philox::kStreamCutmixBeta, k, m.cutmix_alpha, m.cutmix_alpha)
                         : beta(key, philox::kStreamMixupBeta, k, m.mixup_alpha, m.mixup_alpha);
  if (lam == 1.0) return d;
  d.lam = d.lam_target = lam;
  if (!cut) {
    d.kind = kMixBlend;
    return d;
  }
  d.kind = kMixCut;
  if (m.minmax) {
    const philox::Word4 v = philox::philox4x32_10(k, 1u, philox::kStreamMix, 0u, key);
    const int64_t ch =
        m.min_h + static_cast<int64_t>((static_cast<uint64_t>(v.v[0]) * m.span_h) >> 32);
    const int64_t cw =
        m.min_w + static_cast<int64_t>((static_cast<uint64_t>(v.v[1]) * m.span_w) >> 32);
    d.y0 = static_cast<int64_t>(
        (static_cast<uint64_t>(v.v[2]) * static_cast<uint64_t>(m.H - ch + 1)) >> 32);
    d.x0 = static_cast<int64_t>(
        (static_cast<uint64_t>(v.v[3]) * static_cast<uint64_t>(m.W - cw + 1)) >> 32);
    d.y1 = d.y0 + ch;
    d.x1 = d.x0 + cw;
  } else {
    const double rest = 1.0 - lam;
    const int64_t ch = floor_sqrt(static_cast<double>(m.H * m.H) * rest);
    const int64_t cw = floor_sqrt(static_cast<double>(m.W * m.W) * rest);
    const int64_t cy =
        static_cast<int64_t>((static_cast<uint64_t>(w.v[2]) * static_cast<uint64_t>(m.H)) >> 32);
    const int64_t cx =
        static_cast<int64_t>((static_cast<uint64_t>(w.v[3]) * static_cast<uint64_t>(m.W)) >> 32);
    d.y0 = clip(cy - ch / 2, m.H);
    d.y1 = clip(cy + (ch + 1) / 2, m.H);
    d.x0 = clip(cx - cw / 2, m.W);
    d.x1 = clip(cx + (cw + 1) / 2, m.W);
  }
  if (m.correct_lam || m.minmax) {
    const int64_t area = (d.y1 - d.y0) * (d.x1 - d.x0);
    d.lam_target = 1.0 - static_cast<double>(area) / static_cast<double>(m.H * m.W);
  }
  return d;
}

// The params row the image and target kernels read (float64, kMixParamCols per sample).
constexpr int kMixParamCols = 8;  // lam, lam_target, kind, y0, y1, x0, x1, 0

FASTREG_PHILOX_HD void store_mix(double* row, const MixDraw& d) {
  row[0] = d.lam;
  row[1] = d.lam_target;
  row[2] = d.kind;
  row[3] = static_cast<double>(d.y0);
  row[4] = static_cast<double>(d.y1);
  row[5] = static_cast<double>(d.x0);
  row[6] = static_cast<double>(d.x1);
  row[7] = 0.0;
}

// What the mixing kernels read back from a params row, and the per-element rule
// both backends apply: an output element of sample i takes its own pixel, the
// partner's (inside i's CutMix box) or the blend lam x_i + (1 - lam) x_partner.
enum MixMode : int { kOwn = 0, kPartner = 1, kBlend = 2 };

struct MixMember {
  int kind;
  double lam;
  int64_t y0, y1, x0, x1;

  // A row of an H x W image's params. Rows come from mix_draw, but mix_backward takes
  // them as an argument: a kind other than blend or cut reads as none, and box edges
  // are clipped to the image (NaN to 0), so no values make the kernels leave the image.
  FASTREG_PHILOX_HD static MixMember from_row(const double* row, int64_t H, int64_t W) {
    const double k = row[2];
    const int kind =
        k == double(kMixBlend) ? kMixBlend : (k == double(kMixCut) ? kMixCut : kMixNone);
    return {kind, row[0], edge(row[3], H), edge(row[4], H), edge(row[5], W), edge(row[6], W)};
  }
  FASTREG_PHILOX_HD static int64_t edge(double v, int64_t hi) {
    return v > 0.0 ? (v < static_cast<double>(hi) ? static_cast<int64_t>(v) : hi) : 0;
  }
  FASTREG_PHILOX_HD double rest() const { return 1.0 - lam; }
  // the mode of every element outside a box
  FASTREG_PHILOX_HD MixMode base() const { return kind == kMixBlend ? kBlend : kOwn; }
  // whether row y (0 <= y < H) crosses this sample's box
  FASTREG_PHILOX_HD bool cuts_row(int64_t y) const {
    return kind == kMixCut && y >= y0 && y < y1 && x1 > x0;
  }
  // the mode at row y, position col of a row whose pixels are sw elements apart
  FASTREG_PHILOX_HD MixMode mode_at(int64_t y, int64_t col, int64_t sw) const {
    return cuts_row(y) && col >= x0 * sw && col < x1 * sw ? kPartner : base();
  }
};

// Forward: out_i = own(mode_i) x_i + partner(mode_i) x_p, with (own, partner) = (1, 0),
// (0, 1) or (lam, 1 - lam); backward is the transpose: g'_i = own(mode_i) g_i +
// partner(mode_p) g_p. lam and rest come in the kernel's opmath type.
template <class A>
FASTREG_PHILOX_HD A own_coef(MixMode m, A lam) {
  return m == kOwn ? A(1) : (m == kPartner ? A(0) : lam);
}
template <class A>
FASTREG_PHILOX_HD A partner_coef(MixMode m, A rest) {
  return m == kOwn ? A(0) : (m == kPartner ? A(1) : rest);
}

FASTREG_PHILOX_HD uint32_t mix_key_index(int mode, int64_t i,
                                         int64_t B) {  // 0 batch, 1 pair, 2 elem
  return mode == 0 ? 0u : static_cast<uint32_t>(mode == 1 ? (i < B - 1 - i ? i : B - 1 - i) : i);
}

}  // namespace fastreg::sampling
