// The CUDA backend's raw kernels, as the op wrappers see them: declarations
// only, compiled by the host compiler. The definitions (and the explicit
// instantiations for every activation functor) are in the .cu files; the op
// wrappers (argument checks, error messages, allocation, registration) are in
// register.cpp, host code compiled by the host compiler, so the nvcc
// translation units hold only kernels and their launchers, which are called
// with checked arguments.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>

#include "../activation_ops.h"
#include "../batch_ops.h"
#include "../dropout_ops.h"
#include "../sampling.h"

namespace fastreg::cuda {

struct ActivationLoops {
  template <class Op>
  static void forward(const Op& op, const at::Tensor& x, at::Tensor& y);
  template <class Op>
  static void backward(const Op& op, const at::Tensor& g, const at::Tensor& s, at::Tensor& dx);
  template <class Op>
  static void forward_mask(const Op& op, const at::Tensor& x, at::Tensor& y, uint8_t* mask);
  template <class Op>
  static void backward_mask(const Op& op, const at::Tensor& g, const uint8_t* mask, at::Tensor& dx);
  static void prelu_forward(const at::Tensor& x, const at::Tensor& w, at::Tensor& y,
                            PreluShape shape);
  static void prelu_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w,
                             at::Tensor& dx, at::Tensor& dw, PreluShape shape);
};

struct DropoutLoops {
  static void dropout(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                      const at::Tensor& seed, DropoutParams prm, at::Tensor& y);
  static void drop_path(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                        const at::Tensor& seed, uint64_t threshold, double scale, SampleShape shape,
                        at::Tensor& y);
  static void sample_words(const at::Tensor& seed, uint32_t stream, at::Tensor& words);
  template <class Op>
  static void bias_act_dropout(const Op& op, const at::Tensor& x, const at::Tensor& bias,
                               const at::Tensor& seed, DropoutParams prm, BiasShape shape,
                               at::Tensor& y, uint8_t* mask);
  template <class Op>
  static void bias_act_dropout_backward(const Op& op, const at::Tensor& g, const at::Tensor& saved,
                                        const at::Tensor& bias, const at::Tensor& seed,
                                        DropoutParams prm, BiasShape shape, at::Tensor& dx,
                                        at::Tensor* dbias);
};

struct BatchLoops {
  static at::Tensor sample_beta(const at::Tensor& seed, int64_t n, double a, double b,
                                int64_t stream);
  static void fill_boxes(at::Tensor& images, const at::Tensor& seed, const sampling::BoxRule& rule,
                         double fill, bool random);
  static std::pair<at::Tensor, at::Tensor> mix_draw(const at::Tensor& seed,
                                                    const at::Tensor& target, int mode,
                                                    const sampling::MixSpec& spec, int64_t K,
                                                    double eps);
  static void mix_images(const at::Tensor& src, at::Tensor& dst, const at::Tensor& params,
                         const RowLayout& L, bool inplace, bool backward);
};

}  // namespace fastreg::cuda
