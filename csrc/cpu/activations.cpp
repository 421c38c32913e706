// CPU kernels of the activation family: one loop per kind of op, templated on
// the functor; at::parallel_for over both cores, vectorized inner loops.
#include <ATen/Dispatch.h>

#include <vector>

#include "../activation_ops.h"
#include "cpu_kernel.h"

namespace fastreg::cpu {
namespace {

struct CpuLoops {
  template <class Op>
  static void forward(const Op& op, const at::Tensor& x, at::Tensor& y) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_act", [&] {
      const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
      scalar_t* __restrict yp = y.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
        run_isa([&]() FASTREG_INLINE_LAMBDA {
          const Op o = op;  // a local copy: parameters in registers, not re-read per element
          for (int64_t i = begin; i < end; ++i) store(yp, i, o.forward(load(xp, i)));
        });
      });
    });
  }

  template <class Op>
  static void backward(const Op& op, const at::Tensor& g, const at::Tensor& s, at::Tensor& dx) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "fastreg_act_bwd", [&] {
      const scalar_t* __restrict gp = g.const_data_ptr<scalar_t>();
      const scalar_t* __restrict sp = s.const_data_ptr<scalar_t>();
      scalar_t* __restrict dp = dx.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
        run_isa([&]() FASTREG_INLINE_LAMBDA {
          const Op o = op;
          for (int64_t i = begin; i < end; ++i)
            store(dp, i, o.backward(load(gp, i), load(sp, i)));
        });
      });
    });
  }

  // Work is split on whole mask bytes (8 elements) so threads never share one.
  template <class Op>
  static void forward_mask(const Op& op, const at::Tensor& x, at::Tensor& y, uint8_t* mask) {
    const int64_t n = x.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_act_mask", [&] {
      const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
      scalar_t* __restrict yp = y.mutable_data_ptr<scalar_t>();
      if (mask == nullptr) {
        at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
          run_isa([&]() FASTREG_INLINE_LAMBDA {
            const Op o = op;
            for (int64_t i = begin; i < end; ++i) store(yp, i, o.forward(load(xp, i)));
          });
        });
        return;
      }
      uint8_t* __restrict mp = mask;
      const int64_t full = n / 8;
      at::parallel_for(0, full, kGrain / 8, [&](int64_t begin, int64_t end) {
        run_isa([&]() FASTREG_INLINE_LAMBDA {
          const Op o = op;
          for (int64_t b = begin; b < end; ++b) {
            uint32_t bits = 0;
            for (int k = 0; k < 8; ++k) {
              const auto v = load(xp, 8 * b + k);
              store(yp, 8 * b + k, o.forward(v));
              bits |= uint32_t(o.keep(v)) << k;
            }
            mp[b] = uint8_t(bits);
          }
        });
      });
      if (full * 8 < n) {
        uint32_t bits = 0;
        for (int64_t i = full * 8; i < n; ++i) {
          const auto v = load(xp, i);
          store(yp, i, op.forward(v));
          bits |= uint32_t(op.keep(v)) << (i - full * 8);
        }
        mp[full] = uint8_t(bits);
      }
    });
  }

  template <class Op>
  static void backward_mask(const Op& op, const at::Tensor& g, const uint8_t* mask, at::Tensor& dx) {
    const int64_t n = g.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "fastreg_act_mask_bwd", [&] {
      const scalar_t* __restrict gp = g.const_data_ptr<scalar_t>();
      scalar_t* __restrict dp = dx.mutable_data_ptr<scalar_t>();
      const uint8_t* __restrict mp = mask;
      const int64_t full = n / 8;
      at::parallel_for(0, full, kGrain / 8, [&](int64_t begin, int64_t end) {
        run_isa([&]() FASTREG_INLINE_LAMBDA {
          const Op o = op;
          for (int64_t b = begin; b < end; ++b) {
            const uint32_t bits = mp[b];
            for (int k = 0; k < 8; ++k)
              store(dp, 8 * b + k, o.backward(load(gp, 8 * b + k), bool((bits >> k) & 1u)));
          }
        });
      });
      for (int64_t i = full * 8; i < n; ++i)
        store(dp, i, op.backward(load(gp, i), bool((mp[full] >> (i - full * 8)) & 1u)));
    });
  }

  // Memory is [outer][C][inner]; tasks take whole (outer, c) rows of `inner`
  // elements, or, when rows are short (channels_last), whole outer slices.
  static void prelu_forward(const at::Tensor& x, const at::Tensor& w, at::Tensor& y,
                            PreluShape shape) {
    const int64_t C = shape.channels, inner = shape.inner, rows = x.numel() / inner;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_prelu", [&] {
      const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
      const scalar_t* __restrict wp = w.const_data_ptr<scalar_t>();
      scalar_t* __restrict yp = y.mutable_data_ptr<scalar_t>();
      const Prelu op;
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / inner), [&](int64_t r0, int64_t r1) {
        run_isa([&]() FASTREG_INLINE_LAMBDA {
          for (int64_t r = r0, c = r0 % C; r < r1; ++r, c = c + 1 == C ? 0 : c + 1) {
            const auto wc = load(wp, c);
            const int64_t base = r * inner;
            for (int64_t i = 0; i < inner; ++i)
              store(yp, base + i, op.forward(load(xp, base + i), wc));
          }
        });
      });
    });
  }

  // grad_weight is reduced here: per-task partial sums per channel, then one
  // small sum over tasks (deterministic: task boundaries depend only on sizes).
  static void prelu_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w,
                             at::Tensor& dx, at::Tensor& dw, PreluShape shape) {
    const int64_t C = shape.channels, inner = shape.inner, rows = x.numel() / inner;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_prelu_bwd", [&] {
      using acc_t = opmath_t<scalar_t>;
      const scalar_t* __restrict gp = g.const_data_ptr<scalar_t>();
      const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
      const scalar_t* __restrict wp = w.const_data_ptr<scalar_t>();
      scalar_t* __restrict dp = dx.mutable_data_ptr<scalar_t>();
      const Prelu op;
      const int64_t grain = std::max<int64_t>(1, kGrain / inner);
      const int64_t tasks = (rows + grain - 1) / grain;
      std::vector<acc_t> partial(static_cast<size_t>(tasks * C), acc_t(0));
      at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          acc_t* __restrict part = partial.data() + t * C;
          const int64_t r1 = std::min(rows, (t + 1) * grain);
          run_isa([&]() FASTREG_INLINE_LAMBDA {
            for (int64_t r = t * grain, c = r % C; r < r1; ++r, c = c + 1 == C ? 0 : c + 1) {
              const int64_t base = r * inner;
              const acc_t wc = load(wp, c);
              // 16 running sums: a single one would serialize on the add latency.
              acc_t lane[16] = {};
              int64_t i = 0;
              for (; i + 16 <= inner; i += 16) {
                for (int k = 0; k < 16; ++k) {
                  const acc_t gi = load(gp, base + i + k), xi = load(xp, base + i + k);
                  store(dp, base + i + k, op.grad_input(gi, xi, wc));
                  lane[k] += op.grad_weight(gi, xi);
                }
              }
              acc_t sum = 0;
              for (; i < inner; ++i) {
                const acc_t gi = load(gp, base + i), xi = load(xp, base + i);
                store(dp, base + i, op.grad_input(gi, xi, wc));
                sum += op.grad_weight(gi, xi);
              }
              for (int k = 0; k < 16; ++k) sum += lane[k];
              part[c] += sum;
            }
          });
        }
      });
      scalar_t* dwp = dw.mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) {
        acc_t sum = 0;
        for (int64_t t = 0; t < tasks; ++t) sum += partial[t * C + c];
        dwp[c] = static_cast<scalar_t>(sum);
      }
    });
  }
};

}  // namespace
}  // namespace fastreg::cpu

TORCH_LIBRARY_IMPL(fastreg, CPU, m) {
  fastreg::register_activation_kernels<fastreg::cpu::CpuLoops>(m);
}
