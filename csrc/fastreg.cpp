// Every op schema of fastreg, in one place; kernels are registered per backend
// in cpu/<family>.cpp and cuda/<family>.cu. The pybind11 module only reports
// how the extension was built.
#include <torch/extension.h>

#include "cpu/cpu_kernel.h"
#include "errors.h"

#include "build_info.h"  // written by setup.py

TORCH_LIBRARY(fastreg, m) {
  // Activations. Backward ops take what DESIGN §4 says is saved: the output
  // (sigmoid, tanh, elu, selu), the input (gelu, silu, prelu) or a 1-bit mask
  // (relu, leaky_relu; empty when save_mask is false).
  m.def("sigmoid(Tensor input) -> Tensor");
  m.def("sigmoid_backward(Tensor grad, Tensor output) -> Tensor");
  m.def("tanh(Tensor input) -> Tensor");
  m.def("tanh_backward(Tensor grad, Tensor output) -> Tensor");
  m.def("relu(Tensor input, bool save_mask) -> (Tensor, Tensor)");
  m.def("relu_backward(Tensor grad, Tensor mask) -> Tensor");
  m.def("leaky_relu(Tensor input, float negative_slope, bool save_mask) -> (Tensor, Tensor)");
  m.def("leaky_relu_backward(Tensor grad, Tensor mask, float negative_slope) -> Tensor");
  m.def("elu(Tensor input, float alpha) -> Tensor");
  m.def("elu_backward(Tensor grad, Tensor output, float alpha) -> Tensor");
  m.def("selu(Tensor input) -> Tensor");
  m.def("selu_backward(Tensor grad, Tensor output) -> Tensor");
  m.def("gelu(Tensor input, str approximate) -> Tensor");
  m.def("gelu_backward(Tensor grad, Tensor input, str approximate) -> Tensor");
  m.def("silu(Tensor input) -> Tensor");
  m.def("silu_backward(Tensor grad, Tensor input) -> Tensor");
  m.def("prelu(Tensor input, Tensor weight) -> Tensor");
  m.def("prelu_backward(Tensor grad, Tensor input, Tensor weight) -> (Tensor, Tensor)");

  // Dropout family. `seed` is a one-element int64 tensor on the input's device
  // (philox.h maps it and each element to random bits); backward ops regenerate
  // the keep decisions from it, so no mask is stored.
  m.def("dropout(Tensor input, Tensor seed, float p, bool alpha) -> Tensor");
  m.def("dropout_backward(Tensor grad, Tensor seed, float p, bool alpha) -> Tensor");
  m.def("dropout_add(Tensor input, Tensor residual, Tensor seed, float p) -> Tensor");
  m.def("drop_path(Tensor input, Tensor? residual, Tensor seed, float p, bool scale_by_keep) -> Tensor");
  m.def("drop_path_backward(Tensor grad, Tensor seed, float p, bool scale_by_keep) -> Tensor");
  m.def(
      "bias_act_dropout(Tensor input, Tensor? bias, Tensor seed, str activation, float p, "
      "float negative_slope, float alpha, str approximate, bool save_mask) -> (Tensor, Tensor)");
  m.def(
      "bias_act_dropout_backward(Tensor grad, Tensor saved, Tensor? bias, Tensor seed, "
      "str activation, float p, float negative_slope, float alpha, str approximate) "
      "-> (Tensor, Tensor)");
  // Composite (fastreg/_autograd.py): the weight mask from `dropout`, the
  // product from ATen's matmul; saves the input and the seed only.
  m.def("dropconnect_linear(Tensor input, Tensor weight, Tensor? bias, Tensor seed, float p) -> Tensor");
  m.def(
      "dropconnect_linear_backward(Tensor grad, Tensor input, Tensor weight, Tensor seed, float p) "
      "-> (Tensor, Tensor, Tensor)");

  // Batch family groundwork (test-only): n float64 draws of Beta(a, b), bit-identical
  // on every device and in fastreg/_random.py (csrc/sampling.h).
  m.def("_sample_beta(Tensor seed, int n, float a, float b, int stream) -> Tensor");
  // Test-only (CPU): element words first .. first + n - 1 as the CPU kernels draw them.
  m.def("_philox_words(Tensor seed, int stream, int first, int n) -> Tensor");
  // Cutout: boxes from the seed (csrc/sampling.h cutout_box); the in-place form
  // writes only the boxes. Backward is cutout of the gradient with fill 0.
  m.def("cutout(Tensor images, Tensor seed, int size, float p, float fill) -> Tensor");
  m.def("cutout_(Tensor(a!) images, Tensor seed, int size, float p, float fill) -> ()");
  // Random erasing (torchvision's box rule, one box per sample, csrc/sampling.h erase_box);
  // `random` fills per-element standard normals (keyed by the element's memory
  // position) instead of `value`. Backward erases the gradient's boxes with 0.
  m.def(
      "random_erasing(Tensor images, Tensor seed, float p, float scale_lo, float scale_hi, "
      "float log_ratio_lo, float log_ratio_hi, float value, bool random) -> Tensor");
  m.def(
      "random_erasing_(Tensor(a!) images, Tensor seed, float p, float scale_lo, float scale_hi, "
      "float log_ratio_lo, float log_ratio_hi, float value, bool random) -> ()");
  // Mixup / CutMix / timm's Mixup in one op: returns (mixed images, soft targets,
  // params) where params (B, 8) float64 holds each sample's draw (lambda, target
  // lambda, kind, box; csrc/sampling.h mix_draw), which backward reads. mix_mode: 0
  // batch, 1 pair, 2 elem; cut_min < 0: no min-max box.
  m.def(
      "mix(Tensor images, Tensor target, Tensor seed, int num_classes, float label_smoothing, "
      "float mixup_alpha, float cutmix_alpha, float cut_min, float cut_max, float prob, float switch_prob, "
      "int mix_mode, bool correct_lam) -> (Tensor, Tensor, Tensor)");
  m.def(
      "mix_(Tensor(a!) images, Tensor target, Tensor seed, int num_classes, float label_smoothing, "
      "float mixup_alpha, float cutmix_alpha, float cut_min, float cut_max, float prob, float switch_prob, "
      "int mix_mode, bool correct_lam) -> (Tensor, Tensor)");
  m.def("mix_backward(Tensor grad, Tensor params) -> Tensor");
}

namespace fastreg {

void throw_type_error(const std::string& msg) { TORCH_CHECK_TYPE(false, msg); }
void throw_value_error(const std::string& msg) { TORCH_CHECK_VALUE(false, msg); }
void throw_runtime_error(const std::string& msg) { TORCH_CHECK(false, msg); }

}  // namespace fastreg

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = FASTREG_VERSION;
#ifdef FASTREG_WITH_CUDA
  info["with_cuda"] = true;
#else
  info["with_cuda"] = false;
#endif
  info["cuda_arch_list"] = FASTREG_CUDA_ARCH_LIST;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
  info["torch_version"] = FASTREG_TORCH_VERSION;
  info["cpu_isa"] = fastreg::cpu::isa_name(fastreg::cpu::cpu_isa());
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastreg compiled kernels (ops are registered under torch.ops.fastreg)";
  m.def("build_info", &build_info, "How this extension was built");
}
