// Every op schema of fastreg, in one place; kernels are registered per backend
// in cpu/<family>.cpp and cuda/<family>.cu. The pybind11 module reports how the
// extension was built and holds each op's typed entry (below).
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/extension.h>

#include <string>
#include <utility>
#include <vector>

#include "activation_registry.h"
#include "build_info.h"  // written by setup.py
#include "cpu/cpu_kernel.h"
#include "errors.h"

namespace {

// Typed entries: fastreg._C.below.<op>(...) calls the op through the dispatcher
// below autograd (as torch.ops.fastreg.<op> inside torch._C._AutoDispatchBelowAutograd,
// which is what fastreg.functional and the autograd formulas call), but with
// pybind11's typed argument conversion and a typed dispatcher handle instead of
// torch.ops' schema-driven boxing (Python values -> IValue stack -> boxed call):
// about 2-3 us less per call, of a small call's 5-6 us. The dispatcher stays in the path
// (backend selection, dispatch modes, fake tensors), so the kernel run is the
// same; what is skipped is torch.ops' __torch_function__ handling, which is why
// Python uses an entry only when no argument or mode has a __torch_function__
// (fastreg/_autograd.py `kernel`). The GIL is released around the call, as
// torch.ops releases it. The signature is checked against the schema when the
// module loads (TypedOperatorHandle), so a mismatch fails `import fastreg`.
using T = const at::Tensor&;
using Mut = at::Tensor&;
using OptT = const std::optional<at::Tensor>&;
using sv = c10::string_view;
using Y = at::Tensor;
using Y2 = std::tuple<at::Tensor, at::Tensor>;
using Y3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

using Binder = void (*)(pybind11::module_&, const std::string&);

std::vector<std::pair<std::string, Binder>>& entries() {
  static std::vector<std::pair<std::string, Binder>> list;
  return list;
}

template <class Sig>
struct Entry;

template <class R, class... A>
struct Entry<R(A...)> {
  static void bind(pybind11::module_& below, const std::string& name) {
    const std::string qualified = "fastreg::" + name;
    auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow(qualified.c_str(), "").typed<R(A...)>();
    below.def(
        name.c_str(),
        [op](A... args) -> R {
          at::AutoDispatchBelowAutograd guard;
          return op.call(args...);
        },
        pybind11::call_guard<pybind11::gil_scoped_release>());
  }
};

// m.def(schema), and a typed entry with signature Sig for the op.
template <class Sig>
void def(torch::Library& m, const std::string& schema) {
  m.def(schema.c_str());
  entries().emplace_back(schema.substr(0, schema.find('(')), &Entry<Sig>::bind);
}

// The schemas of an activation op, its backward and its in-place form, from its functor:
// P... is the argument besides the tensors (none, float or str; activation_registry.h).
template <class Op, class... P>
void def_activation(torch::Library& m, fastreg::Pack<P...>) {
  using fastreg::Saved;
  const std::string name = Op::kName;
  std::string arg;  // ", float negative_slope" or ", str approximate"
  if constexpr (fastreg::kParamKind<Op> == fastreg::ParamKind::kFloat) {
    arg = std::string(", float ") + fastreg::ParamName<Op>::value;
  } else if constexpr (fastreg::kParamKind<Op> == fastreg::ParamKind::kVariant) {
    arg = std::string(", str ") + fastreg::VariantArg<Op>::value;
  }
  const std::string backward =
      name + "_backward(Tensor grad, Tensor " + fastreg::saved_arg<Op>() + arg + ") -> Tensor";
  def<Y(T, T, P...)>(m, backward);
  if constexpr (Op::saved == Saved::Mask) {
    def<Y2(T, P..., bool)>(m,
                           name + "(Tensor input" + arg + ", bool save_mask) -> (Tensor, Tensor)");
    if constexpr (fastreg::kHasInplace<Op>) {
      def<Y(Mut, P..., bool)>(m, name + "_(Tensor(a!) input" + arg + ", bool save_mask) -> Tensor");
    }
  } else {
    def<Y(T, P...)>(m, name + "(Tensor input" + arg + ") -> Tensor");
    if constexpr (fastreg::kHasInplace<Op>) {
      def<void(Mut, P...)>(m, name + "_(Tensor(a!) input" + arg + ") -> ()");
    }
  }
}

void def_activation_ops(torch::Library& m) {
  // Activations: every op of FASTREG_ACTIVATIONS (csrc/activations.h), def_activation below.
  // Backward ops take what docs/design.md says is saved: the output (sigmoid, tanh, elu,
  // selu), the input (gelu, silu) or a 1-bit mask (relu, leaky_relu; empty when save_mask
  // is false). The in-place forms (inplace=True) write the input; the mask ones return
  // the mask. They have no autograd formula of their own (fastreg.functional applies the
  // out-of-place op's backward in a Function that marks the input dirty).
  fastreg::for_each_activation([&](auto tag) {
    using Op = typename decltype(tag)::type;
    if constexpr (fastreg::is_primary<Op>()) def_activation<Op>(m, fastreg::params_of<Op>{});
  });
  def<Y(T, T)>(m, "prelu(Tensor input, Tensor weight) -> Tensor");
  def<Y2(T, T, T)>(m,
                   "prelu_backward(Tensor grad, Tensor input, Tensor weight) -> (Tensor, Tensor)");
}

void def_dropout_ops(torch::Library& m) {
  // Dropout family. `seed` is a one-element int64 tensor on the input's device
  // (philox.h maps it and each element to random bits); backward ops regenerate
  // the keep decisions from it, so no mask is stored.
  def<Y(T, T, double, bool)>(m,
                             "dropout(Tensor input, Tensor seed, float p, bool alpha) -> Tensor");
  def<Y(T, T, double, bool)>(
      m, "dropout_backward(Tensor grad, Tensor seed, float p, bool alpha) -> Tensor");
  def<void(Mut, T, double, bool)>(
      m, "dropout_(Tensor(a!) input, Tensor seed, float p, bool alpha) -> ()");
  def<Y(T, T, T, double)>(
      m, "dropout_add(Tensor input, Tensor residual, Tensor seed, float p) -> Tensor");
  def<Y(T, OptT, T, double, bool)>(
      m,
      "drop_path(Tensor input, Tensor? residual, Tensor seed, float p, "
      "bool scale_by_keep) -> Tensor");
  def<Y(T, T, double, bool)>(
      m, "drop_path_backward(Tensor grad, Tensor seed, float p, bool scale_by_keep) -> Tensor");
  def<Y2(T, OptT, T, sv, double, double, double, sv, bool)>(
      m,
      "bias_act_dropout(Tensor input, Tensor? bias, Tensor seed, str activation, float p, "
      "float negative_slope, float alpha, str approximate, bool save_mask) -> (Tensor, Tensor)");
  def<Y2(T, T, OptT, T, sv, double, double, double, sv)>(
      m,
      "bias_act_dropout_backward(Tensor grad, Tensor saved, Tensor? bias, Tensor seed, "
      "str activation, float p, float negative_slope, float alpha, str approximate) "
      "-> (Tensor, Tensor)");
  // Stochastic depth that skips the dropped samples (row mode): `keep` of the `batch` sample
  // indices, ascending, chosen uniformly without replacement: the samples ranked by their
  // Philox word (stream kStreamSubset; ties by index), the first `keep`. A function of
  // (seed, batch, keep) only, the same on every device.
  def<Y(T, int64_t, int64_t)>(
      m, "stochastic_depth_subset(Tensor seed, int batch, int keep) -> Tensor");
  // Composite (fastreg/_autograd.py): the weight mask from `dropout`, the
  // product from ATen's matmul; saves the input and the seed only.
  m.def(
      "dropconnect_linear(Tensor input, Tensor weight, Tensor? bias, Tensor seed, float p) -> "
      "Tensor");
  m.def(
      "dropconnect_linear_backward(Tensor grad, Tensor input, Tensor weight, Tensor seed, float p) "
      "-> (Tensor, Tensor, Tensor)");
}

void def_batch_ops(torch::Library& m) {
  // Batch family groundwork (test-only): n float64 draws of Beta(a, b), bit-identical
  // on every device and in fastreg/_random.py (csrc/sampling.h).
  m.def("_sample_beta(Tensor seed, int n, float a, float b, int stream) -> Tensor");
  // Test-only (CPU): element words first .. first + n - 1 as the CPU kernels draw them.
  m.def("_philox_words(Tensor seed, int stream, int first, int n) -> Tensor");
  // Cutout: boxes from the seed (csrc/sampling.h cutout_box); the in-place form
  // writes only the boxes. Backward is cutout of the gradient with fill 0.
  def<Y(T, T, int64_t, double, double)>(
      m, "cutout(Tensor images, Tensor seed, int size, float p, float fill) -> Tensor");
  def<void(Mut, T, int64_t, double, double)>(
      m, "cutout_(Tensor(a!) images, Tensor seed, int size, float p, float fill) -> ()");
  // Random erasing (torchvision's box rule, one box per sample, csrc/sampling.h erase_box);
  // `random` fills per-element standard normals (keyed by the element's memory
  // position) instead of `value`. Backward erases the gradient's boxes with 0.
  def<Y(T, T, double, double, double, double, double, double, bool)>(
      m,
      "random_erasing(Tensor images, Tensor seed, float p, float scale_lo, float scale_hi, "
      "float log_ratio_lo, float log_ratio_hi, float value, bool random) -> Tensor");
  def<void(Mut, T, double, double, double, double, double, double, bool)>(
      m,
      "random_erasing_(Tensor(a!) images, Tensor seed, float p, float scale_lo, float scale_hi, "
      "float log_ratio_lo, float log_ratio_hi, float value, bool random) -> ()");
  // Mixup / CutMix / timm's Mixup in one op: returns (mixed images, soft targets,
  // params) where params (B, 8) float64 holds each sample's draw (lambda, target
  // lambda, kind, box; csrc/sampling.h mix_draw), which backward reads. mix_mode: 0
  // batch, 1 pair, 2 elem; cut_min < 0: no min-max box.
  def<Y3(T, T, T, int64_t, double, double, double, double, double, double, double, int64_t, bool)>(
      m,
      "mix(Tensor images, Tensor target, Tensor seed, int num_classes, float label_smoothing, "
      "float mixup_alpha, float cutmix_alpha, float cut_min, float cut_max, float prob, "
      "float switch_prob, int mix_mode, bool correct_lam) -> (Tensor, Tensor, Tensor)");
  def<Y2(Mut, T, T, int64_t, double, double, double, double, double, double, double, int64_t,
         bool)>(
      m,
      "mix_(Tensor(a!) images, Tensor target, Tensor seed, int num_classes, float label_smoothing, "
      "float mixup_alpha, float cutmix_alpha, float cut_min, float cut_max, float prob, "
      "float switch_prob, int mix_mode, bool correct_lam) -> (Tensor, Tensor)");
  def<Y(T, T)>(m, "mix_backward(Tensor grad, Tensor params) -> Tensor");
}

}  // namespace

// Every op's schema (and typed entry), family by family.
TORCH_LIBRARY(fastreg, m) {
  def_activation_ops(m);
  def_dropout_ops(m);
  def_batch_ops(m);
}

// The in-place ops bump their input's version counter, as torch's in-place ops do, so
// that autograd refuses a backward through a tensor they modified after it was saved.
// ADInplaceOrView is the key where torch's own in-place ops bump it; without a kernel
// there the dispatcher fell through and the counter stayed where it was. (torch's
// autogradNotImplementedInplaceOrViewFallback bumps only outputs annotated `Tensor(a!)`;
// these ops return nothing, or new tensors, so the mutated argument is bumped here.)
namespace {

void bump_mutated_arguments(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                            torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const size_t start = stack->size() - arguments.size();
  std::vector<at::Tensor> mutated;
  for (size_t i = 0; i < arguments.size(); ++i) {
    const at::AliasInfo* alias = arguments[i].alias_info();
    if (alias != nullptr && alias->isWrite()) mutated.push_back((*stack)[start + i].toTensor());
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  for (const auto& t : mutated) torch::autograd::impl::bump_version(t);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastreg, ADInplaceOrView, m) {
  std::vector<std::string> ops = {"dropout_", "cutout_", "random_erasing_", "mix_"};
  fastreg::for_each_activation([&](auto tag) {
    using Op = typename decltype(tag)::type;
    if constexpr (fastreg::is_primary<Op>() && fastreg::kHasInplace<Op>)
      ops.push_back(fastreg::inplace_name<Op>());
  });
  for (const std::string& op : ops)
    m.impl(op.c_str(), torch::CppFunction::makeFromBoxedFunction<&bump_mutated_arguments>());
}

namespace fastreg {

void bind_testing(pybind11::module_& m);  // testing.cpp

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

// What Python builds fastreg.functional's activations from: for every activation op of
// FASTREG_ACTIVATIONS, its name, what backward saves, its argument (a float's name and
// smallest value, or a str's name and its variants) and whether it has an in-place form.
pybind11::list activations() {
  pybind11::list out;
  fastreg::for_each_activation([&](auto tag) {
    using Op = typename decltype(tag)::type;
    if constexpr (fastreg::is_primary<Op>()) {
      pybind11::dict a;
      a["name"] = Op::kName;
      a["saves"] = std::string(fastreg::saved_arg<Op>());
      a["param"] = pybind11::none();
      a["param_min"] = pybind11::none();
      a["variants"] = pybind11::list();
      if constexpr (fastreg::kParamKind<Op> == fastreg::ParamKind::kFloat) {
        a["param"] = fastreg::ParamName<Op>::value;
        if constexpr (fastreg::kHasParamMin<Op>) a["param_min"] = Op::kParamMin;
      } else if constexpr (fastreg::kParamKind<Op> == fastreg::ParamKind::kVariant) {
        a["param"] = fastreg::VariantArg<Op>::value;
        pybind11::list variants;
        fastreg::for_each_activation([&](auto other) {
          using O = typename decltype(other)::type;
          if constexpr (fastreg::kSameOp<O, Op>) variants.append(O::kVariant);
        });
        a["variants"] = variants;
      }
      a["inplace"] = fastreg::kHasInplace<Op>;
      out.append(a);
    }
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastreg compiled kernels (ops are registered under torch.ops.fastreg)";
  m.def("build_info", &build_info, "How this extension was built");
  m.def("activations", &activations, "The activation ops and their arguments (activations.h)");
  auto below = m.def_submodule("below", "each op's typed entry below autograd (_autograd.kernel)");
  for (const auto& [name, bind] : entries()) bind(below, name);
  auto testing = m.def_submodule(
      "_testing", "launch plans and index arithmetic of the CUDA kernels, for tests");
  fastreg::bind_testing(testing);
}
