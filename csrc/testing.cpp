// fastreg._C._testing: the host-side code of the CUDA launchers (launch_plan.h)
// and the kernels' index arithmetic (channel_index.h), callable from Python, so
// that the CPU tests drive every branch of it; none of it is part of the API.
#include <ATen/Dispatch.h>
#include <torch/extension.h>

#include <cmath>
#include <string>
#include <tuple>
#include <type_traits>

#include "activation_ops.h"
#include "channel_index.h"
#include "dropout_ops.h"
#include "launch_plan.h"

namespace fastreg {
namespace {

using Pair = std::tuple<int64_t, int64_t>;

// (c, pos) of elements first .. first + count - 1 of n: by the division (ChannelIndex's
// operator(), what a kernel does once per unit) and by step() from the first.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> channel_index(
    int64_t n, int64_t channels, int64_t inner, int64_t first, int64_t count) {
  FASTREG_CHECK_VALUE(
      n > 0 && channels > 0 && inner > 0 && first >= 0 && count >= 0 && first + count <= n,
      "channel_index: bad arguments");
  const ChannelIndex index(n, channels, inner);
  auto opts = at::TensorOptions().dtype(at::kLong);
  at::Tensor c = at::empty({count}, opts), pos = at::empty({count}, opts);
  at::Tensor c_step = at::empty({count}, opts), pos_step = at::empty({count}, opts);
  int64_t sc = 0, sp = 0;
  if (count > 0) index(first, sc, sp);
  for (int64_t k = 0; k < count; ++k) {
    int64_t ck, pk;
    index(first + k, ck, pk);
    c.data_ptr<int64_t>()[k] = ck;
    pos.data_ptr<int64_t>()[k] = pk;
    c_step.data_ptr<int64_t>()[k] = sc;
    pos_step.data_ptr<int64_t>()[k] = sp;
    index.step(sc, sp);
  }
  return {c, pos, c_step, pos_step};
}

// FastDivmod(divisor, max_dividend) applied to each value: (quotients, remainders, small).
std::tuple<at::Tensor, at::Tensor, bool> divmod(int64_t divisor, int64_t max_dividend,
                                                const at::Tensor& values) {
  FASTREG_CHECK_VALUE(divisor >= 1 && values.scalar_type() == at::kLong && values.dim() == 1,
                      "divmod: bad arguments");
  const FastDivmod d(divisor, max_dividend);
  const at::Tensor v = values.contiguous();
  at::Tensor q = at::empty_like(v), r = at::empty_like(v);
  for (int64_t k = 0; k < v.numel(); ++k) {
    int64_t qk, rk;
    d(v.data_ptr<int64_t>()[k], qk, rk);
    q.data_ptr<int64_t>()[k] = qk;
    r.data_ptr<int64_t>()[k] = rk;
  }
  return {q, r, d.small};
}

// libdevice's stand-in on the host: the C library's functions (libdevice's documented
// errors are within 2 ulp of them; docs/accuracy.md).
struct LibmLib {
  template <class T> static T exp(T x) { return std::exp(x); }
  template <class T> static T expm1(T x) { return std::expm1(x); }
  template <class T> static T tanh(T x) { return std::tanh(x); }
  template <class T> static T erf(T x) { return std::erf(x); }
};

// The functor of activation `name` (its float argument `param`, its variant `variant`)
// applied element by element to x (float32 or float64) in the math of `policy`: "cpu" (the CPU
// kernels' Precise), "cuda" (what a CUDA kernel of x's dtype computes: Precise on libdevice; for x
// float32 holding a half type's values, with half=True, math::Fast). backward: the gradient for
// grad 1 given the saved value in x (the output or the input, as the functor saves; the input for
// the mask ones).
at::Tensor eval_activation(const std::string& name, bool backward, const at::Tensor& x,
                           const std::string& policy, bool half, double param,
                           const std::string& variant) {
  FASTREG_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                      "eval_activation: x must be float32 or float64");
  FASTREG_CHECK_VALUE(policy == "cpu" || policy == "cuda", "eval_activation: bad policy");
  FASTREG_CHECK_VALUE(!half || (policy == "cuda" && x.scalar_type() == at::kFloat),
                      "eval_activation: half=True is the CUDA math of float32 opmath");
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty_like(xc);
  with_activation("eval_activation", name, param, param, variant, [&](auto op) {
    AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "eval_activation", [&] {
      using T = scalar_t;
      const T* xp = xc.const_data_ptr<T>();
      T* yp = out.mutable_data_ptr<T>();
      using Op = decltype(op);
      auto run = [&](auto policy_tag) {
        using M = decltype(policy_tag);
        for (int64_t i = 0; i < xc.numel(); ++i) {
          if (!backward) {
            yp[i] = op.template forward<T, M>(xp[i]);
          } else if constexpr (Op::saved == Saved::Mask) {  // x: the input, whose bit is saved
            yp[i] = op.template backward<T, M>(T(1), op.keep(xp[i]));
          } else {
            yp[i] = op.template backward<T, M>(T(1), xp[i]);
          }
        }
      };
      if constexpr (std::is_same_v<T, float>) {
        if (half) return run(math::Fast{});
      }
      if (policy == "cuda") return run(math::PreciseWith<LibmLib>{});
      run(math::Precise{});
    });
    return 0;
  });
  return out;
}

// The CUDA launch plans (launch_plan.h), which are host code.
void bind_launch_plans(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("grid_blocks", &plan::grid_blocks, py::arg("work"), py::arg("per_block"), py::arg("sms"),
        py::arg("waves") = plan::kWaves);
  m.def("bias_grad_path", [](bool has_bias, int64_t channels, int64_t inner, bool aligned,
                             bool deterministic, int64_t acc_bytes) {
    return std::string(plan::name(
        plan::bias_grad_path(has_bias, {channels, inner}, aligned, deterministic, acc_bytes)));
  });
  m.def("prelu_grad_path",
        [](int64_t channels, int64_t inner, bool deterministic, int64_t acc_bytes) {
          return std::string(
              plan::name(plan::prelu_grad_path({channels, inner}, deterministic, acc_bytes)));
        });
  m.def("bias_rows_forward", [](bool has_bias, int64_t channels, int64_t inner, bool aligned) {
    return plan::bias_rows_forward(has_bias, {channels, inner}, aligned);
  });
  m.def("map_grid", [](int64_t n, int vec_elems, bool aligned, int64_t sms) {
    const plan::MapGrid g = plan::map_grid(n, vec_elems, aligned, sms);
    return std::make_tuple(g.vec, g.grid);
  });
  m.def("columns_grid", [](int64_t n, int64_t channels, int64_t sms) {
    const plan::ColumnsGrid g = plan::columns_grid(n, channels, sms);
    return std::make_tuple(g.cols, g.x, g.y);
  });
  m.def("mix_grid", [](int64_t batch, int64_t sample, int vec_elems, bool aligned) {
    const plan::MixGrid g = plan::mix_grid(batch, sample, vec_elems, aligned);
    return std::make_tuple(g.vec, g.x, g.y);
  });
}

}  // namespace

void bind_testing(pybind11::module_& m) {
  bind_launch_plans(m);
  // The [outer][C][inner] views the ops take of their (dense) inputs.
  m.def("bias_shape", [](const at::Tensor& x, const std::optional<at::Tensor>& bias) {
    const BiasShape s = bias_shape(dense(x), bias);
    return Pair{s.channels, s.inner};
  });
  m.def("prelu_shape", [](const at::Tensor& x, const at::Tensor& weight) {
    const PreluShape s = prelu_shape(dense(x), weight);
    return Pair{s.channels, s.inner};
  });
  m.def("sample_shape", [](const at::Tensor& x) {
    const SampleShape s = sample_shape(dense(x));
    return Pair{s.samples, s.inner};
  });
  m.def("channel_index", &channel_index);
  m.def("eval_activation", &eval_activation, pybind11::arg("name"), pybind11::arg("backward"),
        pybind11::arg("x"), pybind11::arg("policy"), pybind11::arg("half") = false,
        pybind11::arg("param") = 1.0, pybind11::arg("variant") = "none");
  m.def("divmod", &divmod);
  m.def("channel_sums", [](const at::Tensor& t, int64_t channels, int64_t inner) {
    return plan::channel_sums(t, channels, inner, plan::acc_type(t.scalar_type()));
  });
  // The kReduction paths on the CPU, with the shapes the ops compute: grad_bias from a
  // bias_act_dropout grad_input, grad_weight of PReLU.
  m.def("bias_grad_by_reduction", [](const at::Tensor& dx, const at::Tensor& bias) {
    at::Tensor db = at::empty({bias.size(0)}, dx.options());
    plan::bias_grad_by_reduction(dx, bias_shape(dx, bias), db);
    return db;
  });
  m.def("prelu_weight_grad_by_reduction",
        [](const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight) {
          const at::Tensor xd = dense(x);
          at::Tensor dw = at::empty_like(weight, at::MemoryFormat::Contiguous);
          plan::prelu_weight_grad_by_reduction(like_layout(g, xd), xd, prelu_shape(xd, weight), dw);
          return dw;
        });
}

}  // namespace fastreg
