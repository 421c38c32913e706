// Host side of the dropout family, shared by the backends: checks, layouts,
// the keep threshold and scales, and the registration of every op. A backend
// supplies `Loops` (raw kernels over dense memory) and calls
// register_dropout_kernels<Loops>(m).
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>
#include <tuple>

#include "activation_ops.h"
#include "philox.h"

namespace fastreg {

// y = keep ? x * scale + keep_add : drop_value, keep = word >= threshold.
// Plain dropout: (1/(1-p), 0, 0). Alpha dropout (torch's): a = 1/sqrt((α²p+1)(1-p)),
// keep_add = α a p, drop_value = -α a (1-p), α = SELU's -scale*alpha.
struct DropoutParams {
  uint64_t threshold;
  double scale;
  double keep_add;
  double drop_value;
};

inline void check_p(double p, const char* op) {
  FASTREG_CHECK_VALUE(p >= 0.0 && p <= 1.0, "fastreg.", op,
                      ": p (dropout probability) must be in [0, 1], got ", p);
}

// The seed of an element-wise or per-sample draw: one int64, or a positioned seed
// (philox.h IndexMap: [seed, base, seg_1, gap_1, ...], as fastreg.distributed makes for
// a shard of a DTensor).
inline void check_seed(const at::Tensor& seed, const at::Tensor& x, const char* op,
                       const char* x_arg = "input") {
  const int64_t n = seed.numel();
  FASTREG_CHECK_TYPE(seed.scalar_type() == at::kLong &&
                         (n == 1 || (n % 2 == 0 && n >= 2 && n <= philox::kMaxSeedLength &&
                                     seed.dim() == 1 && seed.is_contiguous())),
                     "fastreg.", op,
                     ": seed must be a one-element int64 tensor (or a positioned seed of a "
                     "shard: 1-D, contiguous, 2 + 2m elements, m <= ",
                     philox::kMaxLevels, ")");
  FASTREG_CHECK(seed.device() == x.device(), "fastreg.", op, ": seed is on ", seed.device(),
                " but ", x_arg, " is on ", x.device());
}

inline bool positioned(const at::Tensor& seed) { return seed.numel() > 1; }

// A dense tensor whose dim 0 is outermost in memory (contiguous, channels_last).
inline bool samples_outermost(const at::Tensor& d) {
  return d.dim() == 0 || d.size(0) <= 1 || d.stride(0) * d.size(0) == d.numel();
}

// The memory order the kernels walk: the input's own dense layout (activation_ops.h dense);
// for a positioned seed the shard's row-major order, which the map's levels describe,
// except for an offset along dim 0 only (seed [seed, base]), which keeps a dense layout
// whose samples are outermost: its draws are then those of the whole batch in that layout.
inline at::Tensor draw_order(const at::Tensor& x, const at::Tensor& seed) {
  if (!positioned(seed)) return dense(x);
  if (seed.numel() == 2) {
    at::Tensor d = dense(x);
    if (samples_outermost(d)) return d;
  }
  return x.contiguous();
}

constexpr double kAlphaDropoutAlpha = 1.7580993408473766;

inline DropoutParams dropout_params(double p, bool alpha, bool backward) {
  const uint64_t threshold = philox::keep_threshold(p);
  if (p >= 1.0) return {threshold, 0.0, 0.0, 0.0};  // everything dropped: zeros (as torch)
  if (!alpha) return {threshold, 1.0 / (1.0 - p), 0.0, 0.0};
  const double A = kAlphaDropoutAlpha;
  const double a = 1.0 / std::sqrt((A * A * p + 1.0) * (1.0 - p));
  if (backward) return {threshold, a, 0.0, 0.0};
  return {threshold, a, A * a * p, -A * a * (1.0 - p)};
}

// Validates an activation name and its parameters (before anything is made).
inline void check_activation(const char* name, c10::string_view activation, double alpha,
                             c10::string_view approximate) {
  with_activation(name, activation, 0.0, alpha, approximate, [](const auto&) { return 0; });
}

// The bit a mask activation stores for backward (false for the others).
template <class Op, class T>
FASTREG_HD bool act_bit(const Op& op, T z) {
  if constexpr (Op::saved == Saved::Mask) {
    return op.keep(z);
  } else {
    return false;
  }
}

// Backward of an activation from what bias_act_dropout saved: the 1-bit mask
// for mask activations, else the pre-activation z = x + bias (output-saving
// activations recompute their output from it).
template <class M = math::Precise, class Op, class T>
FASTREG_HD T act_grad(const Op& op, T g, T z, bool bit) {
  if constexpr (Op::saved == Saved::Mask) {
    return op.template backward<T, M>(g, bit);
  } else if constexpr (Op::saved == Saved::Output) {
    return op.template backward<T, M>(g, op.template forward<T, M>(z));
  } else {
    return op.template backward<T, M>(g, z);
  }
}

// bias indexes the last dimension: memory is [outer][K][inner] (inner_of).
struct BiasShape {
  int64_t channels;  // K (1 without a bias)
  int64_t inner;
};

inline bool has(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// `x_arg`: what op `name` calls its tensor that the bias is added to (input, or grad).
inline void check_bias(const at::Tensor& x, const std::optional<at::Tensor>& bias, const char* name,
                       const char* x_arg) {
  if (!has(bias)) return;
  const at::Tensor& b = *bias;
  check_float(b, name, "bias");
  FASTREG_CHECK_TYPE(b.scalar_type() == x.scalar_type(), "fastreg.", name, ": bias has dtype ",
                     b.scalar_type(), " but ", x_arg, " has dtype ", x.scalar_type());
  FASTREG_CHECK(b.device() == x.device(), "fastreg.", name, ": bias is on ", b.device(), " but ",
                x_arg, " is on ", x.device());
  FASTREG_CHECK_VALUE(x.dim() >= 1 && b.dim() == 1 && b.size(0) == x.size(-1), "fastreg.", name,
                      ": bias must be 1-D with ", x_arg,
                      ".size(-1) = ", x.dim() >= 1 ? x.size(-1) : 0, " elements, got shape ",
                      shape_str(b));
}

inline BiasShape bias_shape(const at::Tensor& xd, const std::optional<at::Tensor>& bias) {
  if (!has(bias)) return {1, std::max<int64_t>(xd.numel(), 1)};
  return {bias->size(0), inner_of(xd, -1)};
}

// drop path: one decision per sample of dim 0; memory is [outer][B][inner].
struct SampleShape {
  int64_t samples;
  int64_t inner;
};

inline SampleShape sample_shape(const at::Tensor& xd) {
  if (xd.dim() == 0) return {1, 1};
  return {xd.size(0), inner_of(xd, 0)};
}

template <class L>
at::Tensor dropout_forward(const at::Tensor& x, const at::Tensor& seed, double p, bool alpha,
                           bool backward, const char* name) {
  check_float(x, name, backward ? "grad" : "input");
  check_seed(seed, x, name, backward ? "grad" : "input");
  check_p(p, name);
  const at::Tensor xd = draw_order(x, seed);
  at::Tensor y = at::empty_like(xd);
  if (y.numel() > 0) L::dropout(xd, std::nullopt, seed, dropout_params(p, alpha, backward), y);
  return y;
}

// In place (activation_ops.h, check_inplace): the input is the output.
template <class L>
void dropout_forward_(at::Tensor& x, const at::Tensor& seed, double p, bool alpha) {
  check_inplace(x, "dropout_");
  check_seed(seed, x, "dropout_");
  check_p(p, "dropout_");
  FASTREG_CHECK_VALUE(!positioned(seed) || draw_order(x, seed).is_same(x), "fastreg.dropout_: ",
                      "a shard (positioned seed) must be contiguous to be written in place");
  if (x.numel() > 0) L::dropout(x, std::nullopt, seed, dropout_params(p, alpha, false), x);
}

template <class L>
at::Tensor dropout_add_forward(const at::Tensor& x, const at::Tensor& residual,
                               const at::Tensor& seed, double p) {
  check_float(x, "dropout_add", "input");
  check_like(residual, x, "dropout_add", "residual", "input");
  check_seed(seed, x, "dropout_add");
  check_p(p, "dropout_add");
  const at::Tensor xd = draw_order(x, seed);
  const at::Tensor r = like_layout(residual, xd);
  at::Tensor y = at::empty_like(xd);
  if (y.numel() > 0) L::dropout(xd, r, seed, dropout_params(p, false, false), y);
  return y;
}

inline double drop_path_scale(double p, bool scale_by_keep) {
  return (scale_by_keep && p < 1.0) ? 1.0 / (1.0 - p) : 1.0;
}

template <class L>
at::Tensor drop_path_forward(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                             const at::Tensor& seed, double p, bool scale_by_keep, const char* name,
                             const char* x_arg) {
  check_float(x, name, x_arg);
  check_seed(seed, x, name, x_arg);
  check_p(p, name);
  if (has(residual)) check_like(*residual, x, name, "residual", "input");
  const at::Tensor xd = draw_order(x, seed);
  std::optional<at::Tensor> r;
  if (has(residual)) r = like_layout(*residual, xd);
  at::Tensor y = at::empty_like(xd);
  if (y.numel() > 0)
    L::drop_path(xd, r, seed, philox::keep_threshold(p), drop_path_scale(p, scale_by_keep),
                 sample_shape(xd), y);
  return y;
}

// The words come from the backend (one Philox word per sample, stream kStreamSubset); the
// ranking is ATen's stable sort, so ties (equal words) keep the lower index first and the
// subset is the same on every device.
template <class L>
at::Tensor stochastic_depth_subset(const at::Tensor& seed, int64_t batch, int64_t keep) {
  FASTREG_CHECK_TYPE(seed.scalar_type() == at::kLong && seed.numel() == 1,
                     "fastreg.stochastic_depth_subset: seed must be a one-element int64 tensor");
  FASTREG_CHECK_VALUE(batch >= 0 && batch < (int64_t(1) << 40),
                      "fastreg.stochastic_depth_subset: batch must be >= 0, got ", batch);
  FASTREG_CHECK_VALUE(keep >= 0 && keep <= batch,
                      "fastreg.stochastic_depth_subset: keep must be in [0, batch], got ", keep,
                      " of ", batch);
  at::Tensor words = at::empty({batch}, seed.options());
  if (batch > 0) L::sample_words(seed, philox::kStreamSubset, words);
  const at::Tensor order = std::get<1>(at::sort(words, /*stable=*/true, 0, /*descending=*/false));
  return std::get<0>(at::sort(order.slice(0, 0, keep)));
}

template <class L>
std::tuple<at::Tensor, at::Tensor> bias_act_dropout_forward(
    const at::Tensor& x, const std::optional<at::Tensor>& bias, const at::Tensor& seed,
    c10::string_view activation, double p, double negative_slope, double alpha,
    c10::string_view approximate, bool save_mask) {
  check_float(x, "bias_act_dropout", "input");
  check_seed(seed, x, "bias_act_dropout");
  check_p(p, "bias_act_dropout");
  check_bias(x, bias, "bias_act_dropout", "input");
  check_activation("bias_act_dropout", activation, alpha, approximate);
  const at::Tensor xd = draw_order(x, seed);
  const BiasShape shape = bias_shape(xd, bias);
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  return with_activation(
      "bias_act_dropout", activation, negative_slope, alpha, approximate, [&](auto op) {
        using Op = decltype(op);
        const bool mask_bits = Op::saved == Saved::Mask && save_mask;
        at::Tensor y = at::empty_like(xd);
        at::Tensor mask =
            at::empty({mask_bits ? mask_bytes(xd.numel()) : 0}, xd.options().dtype(at::kByte));
        if (y.numel() > 0)
          L::bias_act_dropout(op, xd, b, seed, dropout_params(p, false, false), shape, y,
                              mask_bits ? mask.data_ptr<uint8_t>() : nullptr);
        return std::make_tuple(y, mask);
      });
}

// `saved` is the 1-bit mask (relu, leaky_relu) or the input. `grad` must be
// laid out like the forward output (the autograd formula ensures it).
template <class L>
std::tuple<at::Tensor, at::Tensor> bias_act_dropout_backward(
    const at::Tensor& grad, const at::Tensor& saved, const std::optional<at::Tensor>& bias,
    const at::Tensor& seed, c10::string_view activation, double p, double negative_slope,
    double alpha, c10::string_view approximate) {
  const char* name = "bias_act_dropout_backward";
  check_float(grad, name, "grad");
  check_seed(seed, grad, name, "grad");
  check_p(p, name);
  check_bias(grad, bias, name, "grad");
  check_activation(name, activation, alpha, approximate);
  return with_activation(name, activation, negative_slope, alpha, approximate, [&](auto op) {
    using Op = decltype(op);
    at::Tensor g, s;
    if constexpr (Op::saved == Saved::Mask) {
      s = checked_mask(saved, grad, name, "saved");
      g = draw_order(grad, seed);
    } else {
      check_like(saved, grad, name, "saved", "grad");
      s = draw_order(saved, seed);
      g = like_layout(grad, s);
    }
    const BiasShape shape = bias_shape(g, bias);
    const bool has_bias = bias.has_value() && bias->defined();
    const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
    at::Tensor dx = at::empty_like(g);
    at::Tensor db =
        has_bias ? at::empty({shape.channels}, g.options()) : at::empty({0}, g.options());
    if (dx.numel() > 0)
      L::bias_act_dropout_backward(op, g, s, b, seed, dropout_params(p, false, true), shape, dx,
                                   has_bias ? &db : nullptr);
    else if (has_bias)
      db.zero_();
    return std::make_tuple(dx, db);
  });
}

template <class L>
void register_dropout_kernels(torch::Library& m) {
  using at::Tensor;
  using OptT = const std::optional<Tensor>&;
  using sv = c10::string_view;
  m.impl("dropout", [](const Tensor& x, const Tensor& seed, double p, bool alpha) {
    return dropout_forward<L>(x, seed, p, alpha, false, "dropout");
  });
  m.impl("dropout_", [](Tensor& x, const Tensor& seed, double p, bool alpha) {
    dropout_forward_<L>(x, seed, p, alpha);
  });
  m.impl("dropout_backward", [](const Tensor& g, const Tensor& seed, double p, bool alpha) {
    return dropout_forward<L>(g, seed, p, alpha, true, "dropout_backward");
  });
  m.impl("dropout_add", [](const Tensor& x, const Tensor& r, const Tensor& seed, double p) {
    return dropout_add_forward<L>(x, r, seed, p);
  });
  m.impl("drop_path", [](const Tensor& x, OptT r, const Tensor& seed, double p, bool sbk) {
    return drop_path_forward<L>(x, r, seed, p, sbk, "drop_path", "input");
  });
  m.impl("drop_path_backward", [](const Tensor& g, const Tensor& seed, double p, bool sbk) {
    return drop_path_forward<L>(g, std::nullopt, seed, p, sbk, "drop_path_backward", "grad");
  });
  m.impl("stochastic_depth_subset", [](const Tensor& seed, int64_t batch, int64_t keep) {
    return stochastic_depth_subset<L>(seed, batch, keep);
  });
  m.impl("bias_act_dropout", [](const Tensor& x, OptT bias, const Tensor& seed, sv act, double p,
                                double slope, double alpha, sv approx, bool save_mask) {
    return bias_act_dropout_forward<L>(x, bias, seed, act, p, slope, alpha, approx, save_mask);
  });
  m.impl("bias_act_dropout_backward",
         [](const Tensor& g, const Tensor& saved, OptT bias, const Tensor& seed, sv act, double p,
            double slope, double alpha, sv approx) {
           return bias_act_dropout_backward<L>(g, saved, bias, seed, act, p, slope, alpha, approx);
         });
}

}  // namespace fastreg
