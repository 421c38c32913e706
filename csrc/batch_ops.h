// Host side of the batch ops (Cutout, random erasing, Mixup/CutMix) shared by
// the backends: argument checks, the sample layout the kernels walk, and the
// registration of every op. A backend supplies `Loops`:
//   fill_boxes(images, seed, rule, fill, random)   writes each sample's box in place
//   mix_draw(seed, target, mode, spec, num_classes, smoothing)
//       -> {params: (B, kMixParamCols) float64 draws, soft targets}
//   mix_images(src, dst, params, layout, inplace, backward)
// and calls register_batch_kernels<Loops>(m).
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <utility>

#include "errors.h"
#include "philox.h"
#include "sampling.h"

namespace fastreg {

// A dense sample walked as rows: `planes` x `rows` rows of `row_len` elements,
// the box's columns being positions [x0 * sw, x1 * sw) of a row.
//   contiguous (NCHW): planes C (stride H*W), rows H (stride W), row_len W, sw 1
//   channels_last:     planes 1,             rows H (stride W*C), row_len W*C, sw C
struct RowLayout { int64_t planes, plane_stride, rows, row_stride, row_len, sw, sample; };

inline bool is_nchw(const at::Tensor& t) { return t.is_contiguous(); }
inline bool is_nhwc(const at::Tensor& t) { return t.is_contiguous(at::MemoryFormat::ChannelsLast); }

inline RowLayout row_layout(const at::Tensor& t) {
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  if (is_nchw(t)) return {C, H * W, H, W, W, 1, C * H * W};
  return {1, 0, H, W * C, W * C, C, C * H * W};
}

// `sample_offset`: the seed may also be [seed, first]: the images are samples first, first + 1,
// ... of a larger batch (a shard of samples; fastreg.distributed), whose draws they take.
inline void check_images(const at::Tensor& images, const at::Tensor& seed, const char* op,
                         bool allow_uint8, bool sample_offset = false) {
  const auto st = images.scalar_type();
  const bool is_float =
      st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16;
  FASTREG_CHECK_TYPE(is_float || (allow_uint8 && st == at::kByte), "fastreg.", op,
                     ": images must be a float", allow_uint8 ? " or uint8" : "", " tensor, got ",
                     st);
  FASTREG_CHECK_VALUE(images.dim() == 4, "fastreg.", op, ": images must be 4-D (B, C, H, W), got ",
                      images.dim(), "-D");
  FASTREG_CHECK_TYPE(seed.scalar_type() == at::kLong &&
                         (seed.numel() == 1 || (sample_offset && seed.numel() == 2 &&
                                                seed.dim() == 1 && seed.is_contiguous())),
                     "fastreg.", op, ": seed must be a one-element int64 tensor",
                     sample_offset ? " (or [seed, first sample] for a shard of samples)" : "");
  FASTREG_CHECK(seed.device() == images.device(), "fastreg.", op, ": seed is on ", seed.device(),
                " but images are on ", images.device());
}

// The in-place forms write into images: elements that share memory (an expanded view)
// would be written several times with different values, as torch's in-place ops refuse.
inline void check_writable(const at::Tensor& images, const char* op) {
  FASTREG_CHECK_VALUE(
      at::has_internal_overlap(images) != at::MemOverlap::Yes, "fastreg.", op,
      ": images has elements that share memory (an expanded view); the in-place form ",
      "would write them more than once: clone() it first");
}

inline void check_sample_beta(const at::Tensor& seed, int64_t n, double a, double b) {
  FASTREG_CHECK_TYPE(seed.scalar_type() == at::kLong && seed.numel() == 1,
                     "fastreg._sample_beta: seed must be a one-element int64 tensor");
  FASTREG_CHECK_VALUE(n >= 0 && n < (int64_t(1) << 32), "fastreg._sample_beta: n out of range");
  FASTREG_CHECK_VALUE(a > 0 && b > 0, "fastreg._sample_beta: alpha must be > 0, got ", a, ", ", b);
}

inline void check_prob(double p, const char* op, const char* name) {
  FASTREG_CHECK_VALUE(p >= 0.0 && p <= 1.0, "fastreg.", op, ": ", name, " must be in [0, 1], got ",
                      p);
}

inline sampling::BoxRule cutout_rule(const at::Tensor& images, const at::Tensor& seed, int64_t size,
                                     double p, const char* name) {
  check_images(images, seed, name, true, true);
  FASTREG_CHECK_VALUE(size > 0, "fastreg.", name, ": size must be > 0, got ", size);
  check_prob(p, name, "p");
  sampling::BoxRule r{};
  r.erase = false;
  r.size = size;
  r.threshold = philox::keep_threshold(p);
  return r;
}

inline sampling::BoxRule erase_rule(const at::Tensor& images, const at::Tensor& seed, double p,
                                    double scale_lo, double scale_hi, double log_ratio_lo,
                                    double log_ratio_hi, bool random, const char* name) {
  check_images(images, seed, name, !random, true);
  // value='random' keys each element's normal by its memory offset; a shard's offset in the
  // whole batch is first * stride(0) only when samples are outermost in memory
  FASTREG_CHECK_VALUE(!random || seed.numel() == 1 || images.size(0) <= 1 ||
                          images.stride(0) * images.size(0) == images.numel(),
                      "fastreg.", name, ": value='random' on a shard of samples needs images ",
                      "whose samples are outermost in memory (contiguous or channels_last)");
  check_prob(p, name, "p");
  FASTREG_CHECK_VALUE(scale_lo >= 0.0 && scale_lo <= scale_hi && scale_hi <= 1.0, "fastreg.", name,
                      ": scale must satisfy 0 <= scale[0] <= scale[1] <= 1, got (", scale_lo, ", ",
                      scale_hi, ")");
  FASTREG_CHECK_VALUE(
      std::isfinite(log_ratio_lo) && log_ratio_lo <= log_ratio_hi && std::isfinite(log_ratio_hi),
      "fastreg.", name, ": ratio must satisfy 0 < ratio[0] <= ratio[1]");
  sampling::BoxRule r{};
  r.erase = true;
  r.e.H = images.size(2);
  r.e.W = images.size(3);
  r.e.threshold = philox::keep_threshold(p);
  r.e.area = static_cast<float>(images.size(2) * images.size(3));
  r.e.scale_lo = static_cast<float>(scale_lo);
  r.e.scale_span = static_cast<float>(scale_hi - scale_lo);
  r.e.log_ratio_lo = static_cast<float>(log_ratio_lo);
  r.e.log_ratio_span = static_cast<float>(log_ratio_hi - log_ratio_lo);
  return r;
}

struct MixArgs {
  int64_t num_classes;
  double label_smoothing, mixup_alpha, cutmix_alpha, cut_min, cut_max, prob, switch_prob;
  int64_t mode;
  bool correct_lam;
};

inline sampling::MixSpec mix_spec(const at::Tensor& images, const at::Tensor& target,
                                  const at::Tensor& seed, const MixArgs& a, const char* name) {
  check_images(images, seed, name, false);
  const int64_t B = images.size(0), H = images.size(2), W = images.size(3);
  FASTREG_CHECK_VALUE(a.mode >= 0 && a.mode <= 2, "fastreg.", name,
                      ": mode must be 'batch', 'pair' or 'elem'");
  FASTREG_CHECK_VALUE(
      a.mixup_alpha >= 0.0 && a.cutmix_alpha >= 0.0 && a.mixup_alpha + a.cutmix_alpha > 0.0,
      "fastreg.", name, ": alpha must be > 0 (mixup_alpha ", a.mixup_alpha, ", cutmix_alpha ",
      a.cutmix_alpha, ")");
  check_prob(a.prob, name, "prob");
  check_prob(a.switch_prob, name, "switch_prob");
  FASTREG_CHECK_VALUE(a.label_smoothing >= 0.0 && a.label_smoothing <= 1.0, "fastreg.", name,
                      ": label_smoothing must be in [0, 1], got ", a.label_smoothing);
  FASTREG_CHECK_VALUE(a.num_classes > 0, "fastreg.", name, ": num_classes must be > 0, got ",
                      a.num_classes);
  FASTREG_CHECK_VALUE(B < (int64_t(1) << 32), "fastreg.", name, ": batch too large");
  FASTREG_CHECK(target.device() == images.device(), "fastreg.", name, ": target is on ",
                target.device(), " but images are on ", images.device());
  if (target.dim() == 1) {
    FASTREG_CHECK_TYPE(target.scalar_type() == at::kLong, "fastreg.", name,
                       ": class-index target must be int64, got ", target.scalar_type());
  } else {
    FASTREG_CHECK_VALUE(target.dim() == 2 && target.size(1) == a.num_classes, "fastreg.", name,
                        ": target must be class indices (B,) or probabilities (B, num_classes=",
                        a.num_classes, "), got shape ", target.sizes());
    FASTREG_CHECK_TYPE(at::isFloatingType(target.scalar_type()), "fastreg.", name,
                       ": probability target must be a float tensor, got ", target.scalar_type());
  }
  FASTREG_CHECK_VALUE(target.size(0) == B, "fastreg.", name, ": target has ", target.size(0),
                      " samples but images have ", B);
  sampling::MixSpec s{};
  s.H = H;
  s.W = W;
  s.prob_threshold = philox::keep_threshold(a.prob);
  s.switch_threshold = philox::keep_threshold(a.switch_prob);
  s.mixup_alpha = static_cast<float>(a.mixup_alpha);
  s.cutmix_alpha = static_cast<float>(a.cutmix_alpha);
  s.correct_lam = a.correct_lam;
  s.minmax = a.cut_min >= 0.0;
  if (s.minmax) {
    s.min_h = static_cast<int64_t>(H * a.cut_min);
    s.min_w = static_cast<int64_t>(W * a.cut_min);
    s.span_h = static_cast<int64_t>(H * a.cut_max) - s.min_h;
    s.span_w = static_cast<int64_t>(W * a.cut_max) - s.min_w;
    FASTREG_CHECK_VALUE(a.cut_max <= 1.0 && s.span_h > 0 && s.span_w > 0, "fastreg.", name,
                        ": cutmix_minmax (", a.cut_min, ", ", a.cut_max,
                        ") gives no box side range for a ", H, "x", W, " image");
  }
  return s;
}

// The layout the mixing kernels walk: NCHW or NHWC dense; anything else is made
// contiguous first (and the result copied into images' own layout).
inline at::Tensor walkable(const at::Tensor& t) {
  return is_nchw(t) || is_nhwc(t) ? t : t.contiguous();
}

// Checks, each sample's draw (params) and the soft targets: what mix and mix_ share.
template <class Loops>
std::pair<at::Tensor, at::Tensor> draw_mix(const at::Tensor& images, const at::Tensor& target,
                                           const at::Tensor& seed, const MixArgs& a,
                                           const char* name) {
  const auto spec = mix_spec(images, target, seed, a, name);
  return Loops::mix_draw(seed, target, static_cast<int>(a.mode), spec, a.num_classes,
                         a.label_smoothing);
}

// mix_backward's arguments: a float (B, C, H, W) gradient and the forward's record of
// each sample's draw, (B, kMixParamCols) float64 on the gradient's device. The kernels
// read the record row by row, so a strided view of it is made contiguous.
inline at::Tensor checked_mix_params(const at::Tensor& grad, const at::Tensor& params) {
  const auto st = grad.scalar_type();
  FASTREG_CHECK_TYPE(
      st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
      "fastreg.mix_backward: grad must be a float tensor, got ", st);
  FASTREG_CHECK_VALUE(grad.dim() == 4, "fastreg.mix_backward: grad must be 4-D (B, C, H, W), got ",
                      grad.dim(), "-D");
  FASTREG_CHECK_TYPE(params.scalar_type() == at::kDouble,
                     "fastreg.mix_backward: params must be the forward's float64 record, got ",
                     params.scalar_type());
  FASTREG_CHECK_VALUE(params.dim() == 2 && params.size(0) == grad.size(0) &&
                          params.size(1) == sampling::kMixParamCols,
                      "fastreg.mix_backward: params must have shape (B, ", sampling::kMixParamCols,
                      ") with B = ", grad.size(0), ", got ", params.sizes());
  FASTREG_CHECK(params.device() == grad.device(), "fastreg.mix_backward: params is on ",
                params.device(), " but grad is on ", grad.device());
  return params.contiguous();
}

// The mixing pass out of place (forward, or backward on the gradient), in t's layout.
template <class Loops>
at::Tensor mixed(const at::Tensor& t, const at::Tensor& params, bool backward) {
  const at::Tensor src = walkable(t);
  at::Tensor out = at::empty_like(src);
  if (out.numel() > 0) Loops::mix_images(src, out, params, row_layout(src), false, backward);
  return src.is_same(t) ? out : at::empty_like(t).copy_(out);
}

// Cutout and random erasing, out of place and in place.
template <class Loops>
void register_box_kernels(torch::Library& m) {
  m.impl("cutout",
         [](const at::Tensor& images, const at::Tensor& seed, int64_t size, double p, double fill) {
           const auto rule = cutout_rule(images, seed, size, p, "cutout");
           at::Tensor out = images.clone();  // keeps the layout
           if (out.numel() > 0) Loops::fill_boxes(out, seed, rule, fill, false);
           return out;
         });
  m.impl("cutout_",
         [](at::Tensor& images, const at::Tensor& seed, int64_t size, double p, double fill) {
           const auto rule = cutout_rule(images, seed, size, p, "cutout_");
           check_writable(images, "cutout_");
           if (images.numel() > 0) Loops::fill_boxes(images, seed, rule, fill, false);
         });

  m.impl("random_erasing", [](const at::Tensor& images, const at::Tensor& seed, double p, double s0,
                              double s1, double r0, double r1, double value, bool random) {
    const auto rule = erase_rule(images, seed, p, s0, s1, r0, r1, random, "random_erasing");
    at::Tensor out =
        images.clone();  // dense: the per-element normals are keyed by its memory order
    if (out.numel() > 0) Loops::fill_boxes(out, seed, rule, value, random);
    return out;
  });
  m.impl("random_erasing_", [](at::Tensor& images, const at::Tensor& seed, double p, double s0,
                               double s1, double r0, double r1, double value, bool random) {
    const auto rule = erase_rule(images, seed, p, s0, s1, r0, r1, random, "random_erasing_");
    check_writable(images, "random_erasing_");
    if (images.numel() == 0) return;
    if (random && !images.is_non_overlapping_and_dense()) {
      at::Tensor out = images.clone();
      Loops::fill_boxes(out, seed, rule, value, random);
      images.copy_(out);
    } else {
      Loops::fill_boxes(images, seed, rule, value, random);
    }
  });
}

// Mixup / CutMix: the draws and targets, the mixing pass out of place and in place, backward.
template <class Loops>
void register_mix_kernels(torch::Library& m) {
  m.impl("mix",
         [](const at::Tensor& images, const at::Tensor& target, const at::Tensor& seed, int64_t K,
            double eps, double mixup_alpha, double cutmix_alpha, double cut_min, double cut_max,
            double prob, double switch_prob, int64_t mode, bool correct_lam) {
           const MixArgs a{K,       eps,  mixup_alpha, cutmix_alpha, cut_min,
                           cut_max, prob, switch_prob, mode,         correct_lam};
           const auto [params, soft] = draw_mix<Loops>(images, target, seed, a, "mix");
           return std::make_tuple(mixed<Loops>(images, params, false), soft, params);
         });
  m.impl("mix_",
         [](at::Tensor& images, const at::Tensor& target, const at::Tensor& seed, int64_t K,
            double eps, double mixup_alpha, double cutmix_alpha, double cut_min, double cut_max,
            double prob, double switch_prob, int64_t mode, bool correct_lam) {
           const MixArgs a{K,       eps,  mixup_alpha, cutmix_alpha, cut_min,
                           cut_max, prob, switch_prob, mode,         correct_lam};
           check_images(images, seed, "mix_", false);  // before check_writable's look at its memory
           check_writable(images, "mix_");
           const auto [params, soft] = draw_mix<Loops>(images, target, seed, a, "mix_");
           if (images.numel() > 0) {
             if (is_nchw(images) || is_nhwc(images)) {
               Loops::mix_images(images, images, params, row_layout(images), true, false);
             } else {
               at::Tensor work = images.contiguous();
               Loops::mix_images(work, work, params, row_layout(work), true, false);
               images.copy_(work);
             }
           }
           return std::make_tuple(soft, params);
         });
  m.impl("mix_backward", [](const at::Tensor& grad, const at::Tensor& params) {
    return mixed<Loops>(grad, checked_mix_params(grad, params), true);
  });
}

template <class Loops>
void register_batch_kernels(torch::Library& m) {
  m.impl("_sample_beta", [](const at::Tensor& seed, int64_t n, double a, double b, int64_t stream) {
    check_sample_beta(seed, n, a, b);
    return Loops::sample_beta(seed, n, a, b, stream);
  });
  register_box_kernels<Loops>(m);
  register_mix_kernels<Loops>(m);
}

}  // namespace fastreg
