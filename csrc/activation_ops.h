// Host side of the activation ops, shared by the backends: argument checks,
// layout handling and the registration of every activation. A backend supplies
// `Loops`, the raw kernels over dense memory, and calls
// register_activation_kernels<Loops>(m) inside its TORCH_LIBRARY_IMPL block.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <tuple>

#include "activation_registry.h"
#include "activations.h"
#include "errors.h"

namespace fastreg {

// "(2, 3, 4)": built with std::to_string, not an ostream (errors.h says why).
inline std::string shape_str(const at::Tensor& t) {
  std::string s = "(";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + ")";
}

inline void check_float(const at::Tensor& t, const char* op, const char* arg) {
  FASTREG_CHECK_VALUE(t.defined(), "fastreg.", op, ": ", arg, " is undefined");
  const auto st = t.scalar_type();
  FASTREG_CHECK_TYPE(
      st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, "fastreg.",
      op, ": ", arg, " must be a float32, float64, float16 or bfloat16 tensor, got ", st);
}

// `t` must be on `ref`'s device with `ref`'s dtype and shape.
inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* arg,
                       const char* ref_arg) {
  FASTREG_CHECK(t.device() == ref.device(), "fastreg.", op, ": ", arg, " is on ", t.device(),
                " but ", ref_arg, " is on ", ref.device());
  FASTREG_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "fastreg.", op, ": ", arg, " has dtype ",
                     t.scalar_type(), " but ", ref_arg, " has dtype ", ref.scalar_type());
  FASTREG_CHECK_VALUE(t.sizes() == ref.sizes(), "fastreg.", op, ": ", arg, " has shape ",
                      shape_str(t), " but ", ref_arg, " has shape ", shape_str(ref));
}

// Kernels walk memory linearly, so they take non-overlapping dense tensors
// (contiguous, channels_last, any permutation). Anything else is copied into
// the dense layout that keeps its dimension order (empty_like's rule, which is
// also the layout torch's elementwise ops give their result).
inline at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : at::empty_like(t).copy_(t);
}

inline bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

// `t` laid out exactly like the dense tensor `ref`, so that element i of one's
// memory is element i of the other's.
inline at::Tensor like_layout(const at::Tensor& t, const at::Tensor& ref) {
  return same_layout(t, ref) ? t : at::empty_like(ref, t.options()).copy_(t);
}

inline int64_t mask_bytes(int64_t numel) { return (numel + 7) / 8; }

// A dense tensor's memory viewed as [outer][size(dim)][inner], the view of every
// kernel with a per-channel (or per-sample) value: inner is the stride of `dim`,
// except where dim has size 1, whose stride in a dense tensor is arbitrary (0, or
// larger than the tensor): then everything is one channel, inner = numel.
inline int64_t inner_of(const at::Tensor& dense, int64_t dim) {
  return dense.size(dim) == 1 ? std::max<int64_t>(dense.numel(), 1) : dense.stride(dim);
}

template <class Loops, class Op>
at::Tensor act_forward(const char* name, const at::Tensor& x, const Op& op) {
  check_float(x, name, "input");
  const at::Tensor xd = dense(x);
  at::Tensor y = at::empty_like(xd);
  if (y.numel() > 0) Loops::forward(op, xd, y);
  return y;
}

// `saved` is the forward's output or input (`saved_arg` names it, as the schema does).
template <class Loops, class Op>
at::Tensor act_backward(const char* name, const at::Tensor& grad, const at::Tensor& saved,
                        const Op& op) {
  const char* saved_arg = Op::saved == Saved::Output ? "output" : "input";
  check_float(grad, name, "grad");
  check_float(saved, name, saved_arg);
  check_like(saved, grad, name, saved_arg, "grad");
  const at::Tensor s = dense(saved);
  const at::Tensor g = like_layout(grad, s);
  at::Tensor dx = at::empty_like(s);
  if (dx.numel() > 0) Loops::backward(op, g, s, dx);
  return dx;
}

// In-place forms (relu_, leaky_relu_, elu_, selu_, silu_, dropout_: torch's
// `inplace=True`): the input is the output. The loops allow that (each element is read
// before it is written, by the thread that writes it), so an in-place call moves what
// torch's in-place op moves (read, write) instead of writing a fresh output and copying
// it back. The input must be dense (its memory is the loops' linear walk, and the
// mask's bit order); fastreg.functional takes the out-of-place op and a copy for any
// other layout.
inline void check_inplace(const at::Tensor& x, const char* name) {
  check_float(x, name, "input");
  FASTREG_CHECK_VALUE(x.is_non_overlapping_and_dense(), "fastreg.", name,
                      ": input must be non-overlapping and dense for the in-place form (a "
                      "contiguous, channels_last or permuted tensor), got shape ",
                      shape_str(x));
}

template <class Loops, class Op>
void act_forward_(const char* name, at::Tensor& x, const Op& op) {
  check_inplace(x, name);
  if (x.numel() > 0) Loops::forward(op, x, x);
}

// Mask activations (relu, leaky_relu): bit i of the mask (byte i/8, bit i%8)
// belongs to element i of the output's memory order. `save_mask` false gives
// an empty mask (inference: no bytes written for backward).
template <class Loops, class Op>
std::tuple<at::Tensor, at::Tensor> act_forward_mask(const char* name, const at::Tensor& x,
                                                    bool save_mask, const Op& op) {
  check_float(x, name, "input");
  const at::Tensor xd = dense(x);
  at::Tensor y = at::empty_like(xd);
  at::Tensor mask =
      at::empty({save_mask ? mask_bytes(xd.numel()) : 0}, xd.options().dtype(at::kByte));
  if (y.numel() > 0) Loops::forward_mask(op, xd, y, save_mask ? mask.data_ptr<uint8_t>() : nullptr);
  return {y, mask};
}

// In place: returns the mask (bit i: element i of x's memory order).
template <class Loops, class Op>
at::Tensor act_forward_mask_(const char* name, at::Tensor& x, bool save_mask, const Op& op) {
  check_inplace(x, name);
  at::Tensor mask =
      at::empty({save_mask ? mask_bytes(x.numel()) : 0}, x.options().dtype(at::kByte));
  if (x.numel() > 0) Loops::forward_mask(op, x, x, save_mask ? mask.data_ptr<uint8_t>() : nullptr);
  return mask;
}

// A 1-bit mask argument (`arg` of op `name`) for a gradient like `grad`: a 1-D uint8
// tensor of mask_bytes(grad.numel()) bytes on grad's device. The kernels read its
// bytes in order, so a strided view of the mask is made contiguous first.
inline at::Tensor checked_mask(const at::Tensor& mask, const at::Tensor& grad, const char* name,
                               const char* arg) {
  FASTREG_CHECK_VALUE(mask.defined(), "fastreg.", name, ": ", arg, " is undefined");
  FASTREG_CHECK_TYPE(mask.scalar_type() == at::kByte, "fastreg.", name, ": ", arg,
                     " must be a uint8 tensor (the forward's 1-bit mask), got ",
                     mask.scalar_type());
  FASTREG_CHECK_VALUE(mask.dim() == 1, "fastreg.", name, ": ", arg, " must be 1-D, got shape ",
                      shape_str(mask));
  FASTREG_CHECK(mask.device() == grad.device(), "fastreg.", name, ": ", arg, " is on ",
                mask.device(), " but grad is on ", grad.device());
  FASTREG_CHECK_VALUE(mask.numel() == mask_bytes(grad.numel()), "fastreg.", name, ": ", arg,
                      " has ", mask.numel(), " bytes but grad needs ", mask_bytes(grad.numel()),
                      " (was the forward run with save_mask=False?)");
  return mask.contiguous();
}

// `grad` must be laid out like the forward output (the Python autograd formula
// ensures it); its memory order is the mask's.
template <class Loops, class Op>
at::Tensor act_backward_mask(const char* name, const at::Tensor& grad, const at::Tensor& mask,
                             const Op& op) {
  check_float(grad, name, "grad");
  const at::Tensor m = checked_mask(mask, grad, name, "mask");
  const at::Tensor g = dense(grad);
  at::Tensor dx = at::empty_like(g);
  if (dx.numel() > 0) Loops::backward_mask(op, g, m.const_data_ptr<uint8_t>(), dx);
  return dx;
}

// PReLU views a dense tensor's memory as [outer][C][inner] with inner = the
// stride of dim 1: that holds for every dense layout, so one kernel serves
// contiguous and channels_last inputs. A one-element weight is C = 1.
struct PreluShape {
  int64_t channels;
  int64_t inner;
};

// Checks come before any tensor is made, so bad input changes nothing.
inline void check_prelu(const at::Tensor& x, const at::Tensor& weight, const char* name) {
  check_float(weight, name, "weight");
  FASTREG_CHECK(weight.device() == x.device(), "fastreg.", name, ": weight is on ", weight.device(),
                " but input is on ", x.device());
  FASTREG_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), "fastreg.", name,
                     ": weight has dtype ", weight.scalar_type(), " but input has dtype ",
                     x.scalar_type());
  FASTREG_CHECK_VALUE(weight.dim() <= 1, "fastreg.", name, ": weight must be 0-D or 1-D, got ",
                      weight.dim(), "-D");
  const int64_t c = weight.numel();
  FASTREG_CHECK_VALUE(c == 1 || (x.dim() >= 2 && x.size(1) == c), "fastreg.", name, ": weight has ",
                      c, " elements but must have 1 or input.size(1) elements (input shape ",
                      shape_str(x), ")");
}

inline PreluShape prelu_shape(const at::Tensor& xd, const at::Tensor& weight) {
  const int64_t c = weight.numel();
  if (c == 1) return {1, std::max<int64_t>(xd.numel(), 1)};
  return {c, inner_of(xd, 1)};
}

template <class Loops>
at::Tensor prelu_forward(const at::Tensor& x, const at::Tensor& weight) {
  check_float(x, "prelu", "input");
  check_prelu(x, weight, "prelu");
  const at::Tensor xd = dense(x);
  const PreluShape shape = prelu_shape(xd, weight);
  at::Tensor y = at::empty_like(xd);
  if (y.numel() > 0) Loops::prelu_forward(xd, weight.contiguous(), y, shape);
  return y;
}

template <class Loops>
std::tuple<at::Tensor, at::Tensor> prelu_backward(const at::Tensor& grad, const at::Tensor& x,
                                                  const at::Tensor& weight) {
  check_float(x, "prelu_backward", "input");
  check_like(grad, x, "prelu_backward", "grad", "input");
  check_prelu(x, weight, "prelu_backward");
  const at::Tensor xd = dense(x);
  const PreluShape shape = prelu_shape(xd, weight);
  const at::Tensor g = like_layout(grad, xd);
  at::Tensor dx = at::empty_like(xd);
  at::Tensor dw = at::empty_like(weight, at::MemoryFormat::Contiguous);
  if (dx.numel() > 0)
    Loops::prelu_backward(g, xd, weight.contiguous(), dx, dw, shape);
  else
    dw.zero_();
  return {dx, dw};
}

// The kernels of one activation op (and its backward and in-place ops), whose argument
// besides the tensors is P... (activation_registry.h): what FASTREG_ACTIVATIONS lists.
template <class L, class Op, class... P>
void register_activation(torch::Library& m, Pack<P...>) {
  using at::Tensor;
  if constexpr (Op::saved == Saved::Mask) {
    m.impl(Op::kName, [](const Tensor& x, P... p, bool save_mask) {
      return with_op<Op>(
          Op::kName,
          [&](const auto& op) { return act_forward_mask<L>(Op::kName, x, save_mask, op); }, p...);
    });
    m.impl(backward_name<Op>(), [](const Tensor& g, const Tensor& mask, P... p) {
      const char* name = backward_name<Op>();
      return with_op<Op>(
          name, [&](const auto& op) { return act_backward_mask<L>(name, g, mask, op); }, p...);
    });
    if constexpr (kHasInplace<Op>) {
      m.impl(inplace_name<Op>(), [](Tensor& x, P... p, bool save_mask) {
        const char* name = inplace_name<Op>();
        return with_op<Op>(
            name, [&](const auto& op) { return act_forward_mask_<L>(name, x, save_mask, op); },
            p...);
      });
    }
  } else {
    m.impl(Op::kName, [](const Tensor& x, P... p) {
      return with_op<Op>(
          Op::kName, [&](const auto& op) { return act_forward<L>(Op::kName, x, op); }, p...);
    });
    m.impl(backward_name<Op>(), [](const Tensor& g, const Tensor& s, P... p) {
      const char* name = backward_name<Op>();
      return with_op<Op>(
          name, [&](const auto& op) { return act_backward<L>(name, g, s, op); }, p...);
    });
    if constexpr (kHasInplace<Op>) {
      m.impl(inplace_name<Op>(), [](Tensor& x, P... p) {
        const char* name = inplace_name<Op>();
        with_op<Op>(name, [&](const auto& op) { act_forward_<L>(name, x, op); }, p...);
      });
    }
  }
}

// Every activation of FASTREG_ACTIVATIONS (schemas in csrc/fastreg.cpp), and PReLU.
template <class L>
void register_activation_kernels(torch::Library& m) {
  for_each_activation([&](auto tag) {
    using Op = typename decltype(tag)::type;
    if constexpr (is_primary<Op>()) register_activation<L, Op>(m, params_of<Op>{});
  });
  m.impl("prelu", [](const at::Tensor& x, const at::Tensor& w) { return prelu_forward<L>(x, w); });
  m.impl("prelu_backward", [](const at::Tensor& g, const at::Tensor& x, const at::Tensor& w) {
    return prelu_backward<L>(g, x, w);
  });
}

}  // namespace fastreg
