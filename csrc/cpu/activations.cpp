// CPU kernels of the activation family: one loop per kind of op, templated on
// the functor; at::parallel_for over both cores, vectorized inner loops.
#include <ATen/Dispatch.h>

#include <vector>

#include "../activation_ops.h"
#include "convert_simd.h"
#include "cpu_kernel.h"

namespace fastreg::cpu {
namespace {

// ReLU's forward is exactly x or 0, and its backward g or 0: its loops select
// raw element bits instead of converting to float and back (for bfloat16 and
// float16 the conversion back, with its rounding, was most of the loop: the
// bfloat16 forward with mask ran at 0.78x ATen's relu). A NaN passes through
// with its payload.
template <class Op> constexpr bool kSelectsInput = false;
template <> constexpr bool kSelectsInput<Relu> = true;

// Relu's keep bit !(x <= 0) (NaN keeps) read off the element's bits: for the 2-byte
// types, not +-0 and either positive or a NaN, in 16-bit integer lanes (the generic
// float16 -> float32 conversion was most of the float16 forward).
template <class T> FASTREG_HOST bool relu_keep(const Relu& o, const T* p, int64_t i) {
  if constexpr (sizeof(T) == 2) {
    constexpr uint16_t inf = std::is_same_v<T, c10::Half> ? 0x7c00 : 0x7f80;
    const uint16_t h = raw(p)[i], a = h & 0x7fff;
    return a != 0 && ((h & 0x8000) == 0 || a > inf);
  } else {
    return o.keep(p[i]);
  }
}

// Backward loops that write their result with non-temporal stores once the op's
// bytes reach the last-level cache (stream_stores): those of the mask (relu,
// leaky_relu) and of the output (sigmoid, tanh, elu, selu), a few arithmetic
// operations per element, which the stores' read-for-ownership made slower. Same-
// process alternating timings on this project's Zen 4, float32, 2^22 elements,
// three sessions of each: backward 1.08-1.29x (relu), 1.08-1.34x (leaky_relu),
// 1.44-1.52x (sigmoid), 1.40-1.52x (tanh), 1.48-1.67x (elu) faster. The backward
// of gelu and silu (exp, erf of the input) ran 0.83x when streamed from a 256-element
// buffer, and 0.87-0.93x streamed four lines at a time from the loop (eighth session):
// cached stores drain under their math. Forward
// loops do not stream: a training forward that streamed ran 0.70-0.83x, its output
// staying in cache for the next op.
template <class Op> constexpr bool kStreamsBackward = Op::saved == Saved::Output;

struct CpuLoops {
  template <class Op>
  static void forward(const Op& op, const at::Tensor& x, at::Tensor& y) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_act", [&] {
      const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
      scalar_t* __restrict yp = y.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
        run_isa<Op::saved == Saved::Mask && kNarrowSelect<scalar_t>>([&](auto isa) FASTREG_INLINE_LAMBDA {
          // local copies: parameters and pointers in registers, not re-read per element
          const Op o = op;
          const scalar_t* __restrict x_ = xp;
          scalar_t* __restrict y_ = yp;
          if constexpr (kSelectsInput<Op>) {
            const raw_t<scalar_t>* __restrict xr = raw(x_);
            raw_t<scalar_t>* __restrict yr = raw(y_);
            for (int64_t i = begin; i < end; ++i) yr[i] = relu_keep(o, x_, i) ? xr[i] : raw_t<scalar_t>(0);
          } else {
            map1(isa, y_, x_, begin, end, [&](int64_t, auto v) FASTREG_INLINE_LAMBDA { return o.forward(v); });
          }
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
      const bool stream = kStreamsBackward<Op> && stream_stores(3 * g.nbytes());
      at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
        run_isa([&](auto isa) FASTREG_INLINE_LAMBDA {
          const Op o = op;
          const scalar_t* __restrict g_ = gp;
          const scalar_t* __restrict s_ = sp;
          scalar_t* __restrict d_ = dp;
          map2(
              isa, d_, g_, s_, begin, end, [&](int64_t, auto gv, auto sv) FASTREG_INLINE_LAMBDA { return o.backward(gv, sv); },
              stream);
        });
        if (stream) store_fence();
      });
    });
  }

  // Chunks of kMaskChunk elements (whole mask bytes: threads never share one);
  // in each, one vectorized loop computes outputs and a byte per element, a
  // second packs the bytes into bits.
  static constexpr int64_t kMaskChunk = 256;

  template <class Op>
  static void forward_mask(const Op& op, const at::Tensor& x, at::Tensor& y, uint8_t* mask) {
    const int64_t n = x.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_act_mask", [&] {
      if (mask == nullptr) {
        forward(op, x, y);
        return;
      }
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* yp = y.mutable_data_ptr<scalar_t>();
      const int64_t chunks = (n + kMaskChunk - 1) / kMaskChunk;
      at::parallel_for(0, chunks, kGrain / kMaskChunk, [&](int64_t c0, int64_t c1) {
        run_isa<kNarrowSelect<scalar_t>>([&](auto isa) FASTREG_INLINE_LAMBDA {
          const Op o = op;
          const scalar_t* __restrict x_ = xp;
          scalar_t* __restrict y_ = yp;
          uint8_t* __restrict m_ = mask;
          alignas(64) uint8_t bits[kMaskChunk];
          for (int64_t ch = c0; ch < c1; ++ch) {
            const int64_t i0 = ch * kMaskChunk, len = std::min(kMaskChunk, n - i0);
            if constexpr (kSelectsInput<Op>) {
              const raw_t<scalar_t>* __restrict xr = raw(x_) + i0;
              raw_t<scalar_t>* __restrict yr = raw(y_) + i0;
              for (int64_t k = 0; k < len; ++k) {
                const bool kp = relu_keep(o, x_, i0 + k);
                yr[k] = kp ? xr[k] : raw_t<scalar_t>(0);
                bits[k] = kp;
              }
            } else {
              map1<true>(isa, y_ + i0, x_ + i0, 0, len, [&](int64_t k, auto v) FASTREG_INLINE_LAMBDA {
                bits[k] = o.keep(v);
                return o.forward(v);
              });
            }
            for (int64_t k = len; k < kMaskChunk; ++k) bits[k] = 0;
            for (int64_t q = 0; q < (len + 7) / 8; ++q) {
              m_[i0 / 8 + q] = pack_bits8(bits + 8 * q);
            }
          }
        });
      });
    });
  }

  template <class Op>
  static void backward_mask(const Op& op, const at::Tensor& g, const uint8_t* mask, at::Tensor& dx) {
    const int64_t n = g.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "fastreg_act_mask_bwd", [&] {
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
      const int64_t chunks = (n + kMaskChunk - 1) / kMaskChunk;
      const bool stream = stream_stores(2 * g.nbytes());
      at::parallel_for(0, chunks, kGrain / kMaskChunk, [&](int64_t c0, int64_t c1) {
        run_isa<kNarrowSelect<scalar_t>>([&](auto isa) FASTREG_INLINE_LAMBDA {
          const Op o = op;
          const scalar_t* __restrict g_ = gp;
          const uint8_t* __restrict m_ = mask;
          scalar_t* __restrict d_ = dp;
          alignas(64) uint8_t bits[kMaskChunk];
          for (int64_t ch = c0; ch < c1; ++ch) {
            const int64_t i0 = ch * kMaskChunk, len = std::min(kMaskChunk, n - i0);
            unpack_bits8(m_ + i0 / 8, (len + 7) / 8, bits);
            if constexpr (kSelectsInput<Op>) {
              const raw_t<scalar_t>* __restrict gr = raw(g_) + i0;
              map_store<true>(
                  isa, raw(d_) + i0, 0, len,
                  [&](int64_t k) FASTREG_INLINE_LAMBDA {
                    const raw_t<scalar_t> v = gr[k];  // loaded unconditionally: no masked load
                    return bits[k] != 0 ? v : raw_t<scalar_t>(0);
                  },
                  stream);
            } else {
              map1<true>(
                  isa, d_ + i0, g_ + i0, 0, len,
                  [&](int64_t k, auto gv) FASTREG_INLINE_LAMBDA { return o.backward(gv, bits[k] != 0); }, stream);
            }
          }
        });
        if (stream) store_fence();
      });
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
        run_isa<kNarrowSelect<scalar_t>>([&](auto isa) FASTREG_INLINE_LAMBDA {
          for (int64_t r = r0, c = r0 % C; r < r1; ++r, c = c + 1 == C ? 0 : c + 1) {
            const auto wc = load(wp, c);
            const int64_t base = r * inner;
            map1(isa, yp + base, xp + base, 0, inner,
                 [&](int64_t, auto v) FASTREG_INLINE_LAMBDA { return op.forward(v, wc); });
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
          run_isa<kNarrowSelect<scalar_t>>([&](auto) FASTREG_INLINE_LAMBDA {
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
      sum_partials(partial.data(), tasks, C, dw.mutable_data_ptr<scalar_t>());
    });
  }
};

}  // namespace
}  // namespace fastreg::cpu

TORCH_LIBRARY_IMPL(fastreg, CPU, m) {
  fastreg::register_activation_kernels<fastreg::cpu::CpuLoops>(m);
}
