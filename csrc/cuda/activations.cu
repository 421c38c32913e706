// CUDA kernels of the activation family: grid-stride loops over 16-byte
// vectors (several in flight per thread), a scalar path for unaligned views
// and the tail, on the current stream, each launch checked.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>

#include "cuda_kernel.cuh"
#include "loops.h"

namespace fastreg::cuda {
namespace {

constexpr int kUnroll = plan::kMapUnroll;  // vectors each thread loads before it computes

// Half types compute with math::Fast (activations.h), the others Precise.
template <class Op, class T> struct ForwardFn {
  Op op;
  __device__ __forceinline__ T operator()(T x, T) const {
    using A = opmath_t<T>;
    return static_cast<T>(op.template forward<A, math_for_t<T>>(static_cast<A>(x)));
  }
};

template <class Op, class T> struct BackwardFn {
  Op op;
  __device__ __forceinline__ T operator()(T g, T s) const {
    using A = opmath_t<T>;
    return static_cast<T>(
        op.template backward<A, math_for_t<T>>(static_cast<A>(g), static_cast<A>(s)));
  }
};

// out[i] = fn(a[i], b[i]) (b ignored when kBinary is false).
template <bool kBinary, int V, class T, class Fn>
__global__ void __launch_bounds__(kBlock)
    map_kernel(Fn fn, T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b,
               int64_t n) {
  using P = Pack<T, V>;
  const int64_t nvec = n / V;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kBlock * kUnroll;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kBlock * kUnroll + threadIdx.x;
       base < nvec; base += step) {
    P pa[kUnroll], pb[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kBlock;
      if (i < nvec) {
        pa[u] = reinterpret_cast<const P*>(a)[i];
        if constexpr (kBinary) pb[u] = reinterpret_cast<const P*>(b)[i];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kBlock;
      if (i < nvec) {
        P po;
#pragma unroll
        for (int k = 0; k < V; ++k) po.v[k] = fn(pa[u].v[k], kBinary ? pb[u].v[k] : T());
        reinterpret_cast<P*>(out)[i] = po;
      }
    }
  }
  const int64_t t = nvec * V + static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (t < n) out[t] = fn(a[t], kBinary ? b[t] : T());
}

template <bool kBinary, class T, class Fn>
void launch_map(Fn fn, T* out, const T* a, const T* b, int64_t n) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const plan::MapGrid mg = plan::map_grid(
      n, kVec<T>, aligned16(out) && aligned16(a) && (!kBinary || aligned16(b)), device_sms());
  if (mg.vec) {
    map_kernel<kBinary, kVec<T>><<<mg.grid, kBlock, 0, stream>>>(fn, out, a, b, n);
  } else {
    map_kernel<kBinary, 1><<<mg.grid, kBlock, 0, stream>>>(fn, out, a, b, n);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Units of 8 elements: 8 outputs and one mask byte; kBatchUnits<T> units per
// thread per pass, their loads issued together (for_units_batched).
template <class Op, class T>
__global__ void __launch_bounds__(kBlock)
    mask_forward_kernel(Op op, const T* __restrict__ x, T* __restrict__ y,
                        uint8_t* __restrict__ mask, int64_t n, bool aligned) {
  using A = opmath_t<T>;
  const T* const in[1] = {x};
  for_units_batched<kBatchUnits<T>>((n + 7) / 8, in, nullptr, n, aligned,
                                    [&](int64_t u, const T(&v)[1][8], uint32_t, bool vec) {
                                      alignas(16) T yv[8];
                                      uint32_t bits = 0;
#pragma unroll
                                      for (int k = 0; k < 8; ++k) {
                                        const A a = static_cast<A>(v[0][k]);
                                        yv[k] = static_cast<T>(op.forward(a));
                                        bits |= uint32_t(op.keep(a)) << k;
                                      }
                                      store8(y, yv, 8 * u, n, vec);
                                      if (mask != nullptr) mask[u] = static_cast<uint8_t>(bits);
                                    });
}

template <class Op, class T>
__global__ void __launch_bounds__(kBlock)
    mask_backward_kernel(Op op, const T* __restrict__ g, const uint8_t* __restrict__ mask,
                         T* __restrict__ dx, int64_t n, bool aligned) {
  using A = opmath_t<T>;
  const T* const in[1] = {g};
  for_units_batched<kBatchUnits<T>>(
      (n + 7) / 8, in, mask, n, aligned,
      [&](int64_t u, const T(&v)[1][8], uint32_t bits, bool vec) {
        alignas(16) T dv[8];
#pragma unroll
        for (int k = 0; k < 8; ++k)
          dv[k] = static_cast<T>(op.backward(static_cast<A>(v[0][k]), bool((bits >> k) & 1u)));
        store8(dx, dv, 8 * u, n, vec);
      });
}

// PReLU: memory is [outer][C][inner]; units of 8 elements, channel found once
// per unit (fast divmod) and advanced element by element.
template <class T>
__global__ void __launch_bounds__(kBlock)
    prelu_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                         int64_t n, ChannelIndex channel_of, bool aligned) {
  using A = opmath_t<T>;
  const Prelu op;
  const T* const in[1] = {x};
  for_units_batched<kBatchUnits<T>>(
      (n + 7) / 8, in, nullptr, n, aligned, [&](int64_t u, const T(&v)[1][8], uint32_t, bool vec) {
        int64_t c, pos;
        channel_of(8 * u, c, pos);
        alignas(16) T yv[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          yv[k] = static_cast<T>(op.forward(static_cast<A>(v[0][k]), static_cast<A>(w[c])));
          channel_of.step(c, pos);
        }
        store8(y, yv, 8 * u, n, vec);
      });
}

// grad_input, and per-block partial sums of grad_weight in shared memory
// (flushed when the channel changes; a warp whose 32 units all lie in one
// channel adds one warp sum), written to partial[block][C];
// reduce_partials_kernel sums them in a fixed order.
template <class T>
__global__ void __launch_bounds__(kBlock)
    prelu_backward_kernel(const T* __restrict__ g, const T* __restrict__ x, const T* __restrict__ w,
                          T* __restrict__ dx, opmath_t<T>* __restrict__ partial, int64_t n,
                          int64_t C, ChannelIndex channel_of, bool aligned) {
  using A = opmath_t<T>;
  extern __shared__ unsigned char smem_raw[];
  const ChannelSums<A> sums{reinterpret_cast<A*>(smem_raw)};
  const bool want_dw = partial != nullptr;
  if (want_dw) sums.begin(C);
  const Prelu op;
  const T* const in[2] = {g, x};
  for_grid_units_prefetched(in, nullptr, n, aligned,
                            [&](int64_t u, const T(&v)[2][8], uint32_t, bool vec) {
                              int64_t c, pos;
                              channel_of(8 * u, c, pos);
                              auto run = sums.run(c);
                              alignas(16) T dv[8];
#pragma unroll
                              for (int k = 0; k < 8; ++k) {
                                const A gi = static_cast<A>(v[0][k]), xi = static_cast<A>(v[1][k]);
                                dv[k] = static_cast<T>(op.grad_input(gi, xi, static_cast<A>(w[c])));
                                if (want_dw && 8 * u + k < n) run.add(c, op.grad_weight(gi, xi));
                                channel_of.step(c, pos);
                              }
                              if (want_dw) run.finish();
                              store8(dx, dv, 8 * u, n, vec);
                            });
  if (want_dw) sums.end(partial, C);
}

}  // namespace

template <class Op>
void ActivationLoops::forward(const Op& op, const at::Tensor& x, at::Tensor& y) {
  const c10::cuda::CUDAGuard guard(x.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_act", [&] {
    launch_map<false>(ForwardFn<Op, scalar_t>{op}, y.mutable_data_ptr<scalar_t>(),
                      x.const_data_ptr<scalar_t>(), static_cast<const scalar_t*>(nullptr),
                      x.numel());
  });
}

template <class Op>
void ActivationLoops::backward(const Op& op, const at::Tensor& g, const at::Tensor& s,
                               at::Tensor& dx) {
  if constexpr (Op::saved != Saved::Mask) {
    const c10::cuda::CUDAGuard guard(g.device());
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, g.scalar_type(), "fastreg_act_bwd", [&] {
          launch_map<true>(BackwardFn<Op, scalar_t>{op}, dx.mutable_data_ptr<scalar_t>(),
                           g.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(), g.numel());
        });
  }
}

template <class Op>
void ActivationLoops::forward_mask(const Op& op, const at::Tensor& x, at::Tensor& y,
                                   uint8_t* mask) {
  if constexpr (Op::saved == Saved::Mask) {
    if (mask == nullptr) return forward(op, x, y);  // inference: the plain map kernel
    const c10::cuda::CUDAGuard guard(x.device());
    const int64_t n = x.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_act_mask", [&] {
          const scalar_t* xp = x.const_data_ptr<scalar_t>();
          scalar_t* yp = y.mutable_data_ptr<scalar_t>();
          const int64_t grid = grid_for((n + 7) / 8, kBlock * kBatchUnits<scalar_t>);
          mask_forward_kernel<<<grid, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
              op, xp, yp, mask, n, aligned16(xp) && aligned16(yp));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
}

template <class Op>
void ActivationLoops::backward_mask(const Op& op, const at::Tensor& g, const uint8_t* mask,
                                    at::Tensor& dx) {
  if constexpr (Op::saved == Saved::Mask) {
    const c10::cuda::CUDAGuard guard(g.device());
    const int64_t n = g.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, g.scalar_type(), "fastreg_act_mask_bwd", [&] {
          const scalar_t* gp = g.const_data_ptr<scalar_t>();
          scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
          const int64_t grid = grid_for((n + 7) / 8, kBlock * kBatchUnits<scalar_t>);
          mask_backward_kernel<<<grid, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
              op, gp, mask, dp, n, aligned16(gp) && aligned16(dp));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
}

void ActivationLoops::prelu_forward(const at::Tensor& x, const at::Tensor& w, at::Tensor& y,
                                    PreluShape shape) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_prelu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    prelu_forward_kernel<<<grid_for((n + 7) / 8, kBlock * kBatchUnits<scalar_t>), kBlock, 0,
                           at::cuda::getCurrentCUDAStream()>>>(
        xp, w.const_data_ptr<scalar_t>(), yp, n, ChannelIndex(n, shape.channels, shape.inner),
        aligned16(xp) && aligned16(yp));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void ActivationLoops::prelu_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w,
                                     at::Tensor& dx, at::Tensor& dw, PreluShape shape) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel(), C = shape.channels;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_prelu_bwd", [&] {
        using A = opmath_t<scalar_t>;
        const auto stream = at::cuda::getCurrentCUDAStream();
        const int64_t grid = grid_for((n + 7) / 8, kBlock, 8);
        const ChannelIndex channel_of(n, C, shape.inner);
        const bool aligned = aligned16(g.const_data_ptr<scalar_t>()) &&
                             aligned16(x.const_data_ptr<scalar_t>()) &&
                             aligned16(dx.const_data_ptr<scalar_t>());
        const bool shared =
            plan::prelu_grad_path(shape, at::globalContext().deterministicAlgorithms(),
                                  sizeof(A)) == plan::ParamGrad::kSharedPartials;
        at::Tensor partial;
        if (shared)
          partial = at::empty({grid * C}, x.options().dtype(c10::CppTypeToScalarType<A>::value));
        prelu_backward_kernel<<<grid, kBlock, shared ? C * sizeof(A) : 0, stream>>>(
            g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
            w.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
            shared ? partial.mutable_data_ptr<A>() : nullptr, n, C, channel_of, aligned);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (!shared) {  // kReduction: grad_weight by an ATen reduction (a second pass)
          plan::prelu_weight_grad_by_reduction(g, x, shape, dw);
          return;
        }
        reduce_partials_kernel<<<reduce_partials_grid(C), kBlock, 0, stream>>>(
            partial.const_data_ptr<A>(), dw.mutable_data_ptr<scalar_t>(), grid, C);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

// The loops of every activation of FASTREG_ACTIVATIONS, for the op wrappers in register.cpp
// (the mask loops are empty for the other functors, the backward map for the mask ones).
#define FASTREG_INSTANTIATE(Op)                                                                  \
  template void ActivationLoops::forward<Op>(const Op&, const at::Tensor&, at::Tensor&);         \
  template void ActivationLoops::backward<Op>(const Op&, const at::Tensor&, const at::Tensor&,   \
                                              at::Tensor&);                                      \
  template void ActivationLoops::forward_mask<Op>(const Op&, const at::Tensor&, at::Tensor&,     \
                                                  uint8_t*);                                     \
  template void ActivationLoops::backward_mask<Op>(const Op&, const at::Tensor&, const uint8_t*, \
                                                   at::Tensor&);
FASTREG_ACTIVATIONS(FASTREG_INSTANTIATE)
#undef FASTREG_INSTANTIATE

}  // namespace fastreg::cuda
