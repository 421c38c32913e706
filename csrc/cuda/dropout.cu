// CUDA kernels of the dropout family. A thread handles units of 8 elements
// (16-byte vectors, two Philox counter blocks); the seed is read from device
// memory inside the kernel, so nothing syncs with the host and a captured
// CUDA graph draws fresh masks on every replay when the seed is redrawn.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>

#include "cuda_kernel.cuh"
#include "loops.h"

namespace fastreg::cuda {
namespace {

using DeviceKeep = philox::KeepRule;

// The seed tensor as a kernel argument: its device pointer and length (a positioned
// seed of a shard is longer than one element; philox.h IndexMap).
struct SeedRef {
  const int64_t* p;
  int64_t len;
};

inline SeedRef seed_ref(const at::Tensor& seed) {
  return {seed.const_data_ptr<int64_t>(), seed.numel()};
}

// The key, read in the kernel, and the seed tensor, whose map (a shard's place in the whole
// tensor) is read where it is used: the unsharded path keeps no map in registers.
struct DeviceDraw {
  philox::Key key;
  SeedRef seed;

  __device__ __forceinline__ bool positioned() const { return seed.len > 1; }
  // index i of the whole tensor
  __device__ __forceinline__ uint64_t at(int64_t i) const {
    return positioned() ? philox::IndexMap::load(seed.p, seed.len)(static_cast<uint64_t>(i))
                        : static_cast<uint64_t>(i);
  }
};

__device__ __forceinline__ DeviceDraw load_draw(SeedRef seed) {
  return {philox::key_schedule(static_cast<uint64_t>(seed.p[0])), seed};
}

// The 8 words of unit u (elements 8u .. 8u+7); for a shard, each element's word of its
// index in the whole tensor (one Philox call per element).
__device__ __forceinline__ void unit_words(const DeviceDraw& d, uint32_t stream, int64_t u,
                                           uint32_t (&w)[8]) {
  if (d.positioned()) {
    const philox::IndexMap map = philox::IndexMap::load(d.seed.p, d.seed.len);
#pragma unroll
    for (int k = 0; k < 8; ++k)
      w[k] = philox::word(d.key, stream, map(static_cast<uint64_t>(8 * u + k)));
    return;
  }
  const philox::Word4 a = philox::block_words(d.key, stream, 2 * static_cast<uint64_t>(u));
  const philox::Word4 b = philox::block_words(d.key, stream, 2 * static_cast<uint64_t>(u) + 1);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    w[k] = a.v[k];
    w[4 + k] = b.v[k];
  }
}

// kAffine: alpha dropout's kept x * scale + add, dropped `drop`; else plain
// dropout's x * scale or 0 (no + 0 per element, which would also turn a kept
// -0 into +0 where torch keeps -0).
template <class T, bool kAffine>
__global__ void __launch_bounds__(kBlock)
    dropout_kernel(const T* __restrict__ x, const T* __restrict__ r, T* __restrict__ y,
                   SeedRef seed, int64_t n, DeviceKeep keep, opmath_t<T> scale, opmath_t<T> add,
                   opmath_t<T> drop, bool aligned) {
  using A = opmath_t<T>;
  const DeviceDraw draw = load_draw(seed);
  const T* const in[2] = {x, r};
  for_grid_units_prefetched(
      in, nullptr, n, aligned, [&](int64_t u, const T(&v)[2][8], uint32_t, bool vec) {
        uint32_t w[8];
        unit_words(draw, philox::kStreamElement, u, w);
        alignas(16) T yv[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          A o;
          if constexpr (kAffine) {
            o = keep(w[k]) ? add_rn(mul_rn(static_cast<A>(v[0][k]), scale), add) : drop;
          } else {
            o = keep(w[k]) ? mul_rn(static_cast<A>(v[0][k]), scale) : A(0);
          }
          if (r != nullptr) o = add_rn(static_cast<A>(v[1][k]), o);
          yv[k] = static_cast<T>(o);
        }
        store8(y, yv, 8 * u, n, vec);
      });
}

// words[i] = the Philox word of sample i on `stream` (a grid-stride loop).
__global__ void __launch_bounds__(kBlock)
    sample_words_kernel(const int64_t* __restrict__ seed_p, uint32_t stream, int64_t n,
                        int64_t* __restrict__ words) {
  const philox::Key key = philox::key_schedule(static_cast<uint64_t>(*seed_p));
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    words[i] = philox::word(key, stream, static_cast<uint64_t>(i));
}

// Sample of element i: (i / inner) % B. One Philox call per unit when the
// unit lies in one sample (the usual case), else one per element.
template <class T>
__global__ void __launch_bounds__(kBlock)
    drop_path_kernel(const T* __restrict__ x, const T* __restrict__ r, T* __restrict__ y,
                     SeedRef seed, int64_t n, ChannelIndex sample_of, DeviceKeep keep,
                     opmath_t<T> scale, bool aligned) {
  using A = opmath_t<T>;
  const DeviceDraw draw = load_draw(seed);
  const T* const in[2] = {x, r};
  for_grid_units_prefetched(
      in, nullptr, n, aligned, [&](int64_t u, const T(&v)[2][8], uint32_t, bool vec) {
        int64_t first, last, pos;
        sample_of(8 * u, first, pos);
        sample_of(min(8 * u + 7, n - 1), last, pos);
        const A s_first =
            keep(philox::word(draw.key, philox::kStreamSample, draw.at(first))) ? scale : A(0);
        alignas(16) T yv[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          A s = s_first;
          if (first != last) {
            int64_t b;
            sample_of(8 * u + k, b, pos);
            s = keep(philox::word(draw.key, philox::kStreamSample, draw.at(b))) ? scale : A(0);
          }
          A o = mul_rn(static_cast<A>(v[0][k]), s);
          if (r != nullptr) o = add_rn(static_cast<A>(v[1][k]), o);
          yv[k] = static_cast<T>(o);
        }
        store8(y, yv, 8 * u, n, vec);
      });
}

template <class Op, class T>
__global__ void __launch_bounds__(kBlock)
    bias_act_dropout_kernel(Op op, const T* __restrict__ x, const T* __restrict__ bias,
                            T* __restrict__ y, uint8_t* __restrict__ mask, SeedRef seed, int64_t n,
                            ChannelIndex channel_of, DeviceKeep keep, opmath_t<T> scale,
                            bool aligned) {
  using A = opmath_t<T>;
  const DeviceDraw draw = load_draw(seed);
  const T* const in[1] = {x};
  for_grid_units_prefetched(
      in, nullptr, n, aligned, [&](int64_t u, const T(&v)[1][8], uint32_t, bool vec) {
        uint32_t w[8];
        unit_words(draw, philox::kStreamElement, u, w);
        int64_t c, pos;
        channel_of(8 * u, c, pos);
        uint32_t bits = 0;
        alignas(16) T yv[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const A z = static_cast<A>(v[0][k]) + (bias != nullptr ? static_cast<A>(bias[c]) : A(0));
          bits |= uint32_t(act_bit(op, z)) << k;
          yv[k] =
              static_cast<T>(keep(w[k]) ? op.template forward<A, math_for_t<T>>(z) * scale : A(0));
          channel_of.step(c, pos);
        }
        store8(y, yv, 8 * u, n, vec);
        if (mask != nullptr) mask[u] = static_cast<uint8_t>(bits);
      });
}

// The usual layout: bias on the contiguous last dim (inner == 1), K % 8 == 0,
// 16-byte aligned. A unit lies in one row, so its 8 bias values are one
// vector load at channel (8u) % K, found once and then advanced by the
// grid-stride step (no division, no per-element channel walk).
template <class Op, class T>
__global__ void __launch_bounds__(kBlock)
    bias_act_dropout_rows_kernel(Op op, const T* __restrict__ x, const T* __restrict__ bias,
                                 T* __restrict__ y, uint8_t* __restrict__ mask, SeedRef seed,
                                 int64_t n, int64_t K, DeviceKeep keep, opmath_t<T> scale) {
  using A = opmath_t<T>;
  const DeviceDraw draw = load_draw(seed);
  const int64_t u0 = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  const int64_t ustep = static_cast<int64_t>(gridDim.x) * kBlock;
  const bool small = 8 * (u0 + ustep) < (int64_t(1) << 32) && K < (int64_t(1) << 32);
  const auto mod = [&](int64_t a) {  // a 64-bit division costs ~100 instructions
    return small ? static_cast<int64_t>(static_cast<uint32_t>(a) % static_cast<uint32_t>(K))
                 : a % K;
  };
  const int64_t cstep = mod(8 * ustep);
  int64_t c = mod(8 * u0);
  const T* const in[1] = {x};
  for_units_prefetched(
      u0, ustep, n / 8, in, nullptr, n, true, [&](int64_t u, const T(&v)[1][8], uint32_t, bool) {
        alignas(16) T bv[8];
        load8(bv, bias, c, K, true);
        uint32_t w[8];
        unit_words(draw, philox::kStreamElement, u, w);
        uint32_t bits = 0;
        alignas(16) T yv[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const A z = static_cast<A>(v[0][k]) + static_cast<A>(bv[k]);
          bits |= uint32_t(act_bit(op, z)) << k;
          yv[k] =
              static_cast<T>(keep(w[k]) ? op.template forward<A, math_for_t<T>>(z) * scale : A(0));
        }
        store8(y, yv, 8 * u, n, true);
        if (mask != nullptr) mask[u] = static_cast<uint8_t>(bits);
        c += cstep;
        if (c >= K) c -= K;
      });
}

// grad_input, and per-block partial sums of grad_bias in shared memory
// (flushed when the channel changes; a warp whose 32 units all lie in one
// channel adds one warp sum), written to partial[block][K].
template <class Op, class T>
__global__ void __launch_bounds__(kBlock)
    bias_act_dropout_backward_kernel(Op op, const T* __restrict__ g, const T* __restrict__ xs,
                                     const uint8_t* __restrict__ mask, const T* __restrict__ bias,
                                     T* __restrict__ dx, opmath_t<T>* __restrict__ partial,
                                     SeedRef seed, int64_t n, int64_t K, ChannelIndex channel_of,
                                     DeviceKeep keep, opmath_t<T> scale, bool aligned) {
  using A = opmath_t<T>;
  extern __shared__ unsigned char smem_raw[];
  const ChannelSums<A> sums{reinterpret_cast<A*>(smem_raw)};
  const bool want_db = partial != nullptr;
  if (want_db) sums.begin(K);
  const DeviceDraw draw = load_draw(seed);
  const T* const in[2] = {g, Op::saved == Saved::Mask ? nullptr : xs};
  for_grid_units_prefetched(
      in, Op::saved == Saved::Mask ? mask : nullptr, n, aligned,
      [&](int64_t u, const T(&v)[2][8], uint32_t bits, bool vec) {
        uint32_t w[8];
        unit_words(draw, philox::kStreamElement, u, w);
        int64_t c, pos;
        channel_of(8 * u, c, pos);
        auto run = sums.run(c);
        alignas(16) T dv[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          A z = A(0);
          if constexpr (Op::saved != Saved::Mask)
            z = static_cast<A>(v[1][k]) + (bias != nullptr ? static_cast<A>(bias[c]) : A(0));
          const A d = keep(w[k]) ? act_grad<math_for_t<T>>(op, static_cast<A>(v[0][k]), z,
                                                           bool((bits >> k) & 1u)) *
                                       scale
                                 : A(0);
          dv[k] = static_cast<T>(d);
          if (want_db && 8 * u + k < n) run.add(c, d);
          channel_of.step(c, pos);
        }
        if (want_db) run.finish();
        store8(dx, dv, 8 * u, n, vec);
      });
  if (want_db) sums.end(partial, K);
}

// grad_bias when the bias runs along the contiguous last dim (inner == 1) and
// K % 8 == 0: threads own 8-channel column groups and walk rows, summing in
// registers (no atomics), then a block sums its rows in shared memory and
// writes partial[blockIdx.y][K]. Same units (8 elements, unit_words) as above.
template <class Op, class T>
__global__ void __launch_bounds__(kBlock) bias_act_dropout_backward_columns_kernel(
    Op op, const T* __restrict__ g, const T* __restrict__ xs, const uint8_t* __restrict__ mask,
    const T* __restrict__ bias, T* __restrict__ dx, opmath_t<T>* __restrict__ partial, SeedRef seed,
    int64_t rows, int64_t K, int cols_per_block, DeviceKeep keep, opmath_t<T> scale) {
  using A = opmath_t<T>;
  __shared__ A sacc[kBlock * 8];
  const DeviceDraw draw = load_draw(seed);
  const int tx = threadIdx.x % cols_per_block, ty = threadIdx.x / cols_per_block;
  const int rows_per_block = kBlock / cols_per_block;
  const int64_t groups = K / 8;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * cols_per_block + tx;  // column group
  A acc[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) acc[k] = A(0);
  A bv[8];
#pragma unroll
  for (int k = 0; k < 8; ++k)
    bv[k] = (j < groups && bias != nullptr) ? static_cast<A>(bias[8 * j + k]) : A(0);
  if (j < groups && ty < rows_per_block) {  // kBlock % cols_per_block threads idle
    const T* const in[2] = {g, Op::saved == Saved::Mask ? nullptr : xs};
    // unit u = r * groups + j for rows r = blockIdx.y * rows_per_block + ty, ... < rows
    for_units_prefetched((static_cast<int64_t>(blockIdx.y) * rows_per_block + ty) * groups + j,
                         static_cast<int64_t>(gridDim.y) * rows_per_block * groups, rows * groups,
                         in, Op::saved == Saved::Mask ? mask : nullptr, rows * K, true,
                         [&](int64_t u, const T(&v)[2][8], uint32_t bits, bool) {
                           uint32_t w[8];
                           unit_words(draw, philox::kStreamElement, u, w);
                           alignas(16) T dv[8];
#pragma unroll
                           for (int k = 0; k < 8; ++k) {
                             A z = A(0);
                             if constexpr (Op::saved != Saved::Mask)
                               z = static_cast<A>(v[1][k]) + bv[k];
                             const A d = keep(w[k])
                                             ? act_grad<math_for_t<T>>(op, static_cast<A>(v[0][k]),
                                                                       z, bool((bits >> k) & 1u)) *
                                                   scale
                                             : A(0);
                             dv[k] = static_cast<T>(d);
                             acc[k] += d;
                           }
                           store8(dx, dv, 8 * u, rows * K, true);
                         });
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) sacc[threadIdx.x * 8 + k] = acc[k];
  __syncthreads();
  if (ty == 0 && j < groups) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      A sum = A(0);
      for (int q = 0; q < rows_per_block; ++q) sum += sacc[(q * cols_per_block + tx) * 8 + k];
      partial[static_cast<int64_t>(blockIdx.y) * K + 8 * j + k] = sum;
    }
  }
}

}  // namespace

void DropoutLoops::dropout(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                           const at::Tensor& seed, DropoutParams prm, at::Tensor& y) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_dropout", [&] {
        using A = opmath_t<scalar_t>;
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const scalar_t* rp = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
        scalar_t* yp = y.mutable_data_ptr<scalar_t>();
        const bool aligned = aligned16(xp) && aligned16(yp) && (rp == nullptr || aligned16(rp));
        const auto stream = at::cuda::getCurrentCUDAStream();
        const int64_t grid = grid_for((n + 7) / 8, kBlock);
        const SeedRef sp = seed_ref(seed);
        const auto kernel = prm.keep_add != 0.0 || prm.drop_value != 0.0
                                ? dropout_kernel<scalar_t, true>
                                : dropout_kernel<scalar_t, false>;
        kernel<<<grid, kBlock, 0, stream>>>(xp, rp, yp, sp, n, DeviceKeep(prm.threshold),
                                            A(prm.scale), A(prm.keep_add), A(prm.drop_value),
                                            aligned);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

void DropoutLoops::drop_path(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                             const at::Tensor& seed, uint64_t threshold, double scale,
                             SampleShape shape, at::Tensor& y) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_drop_path", [&] {
        using A = opmath_t<scalar_t>;
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const scalar_t* rp = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
        scalar_t* yp = y.mutable_data_ptr<scalar_t>();
        const bool aligned = aligned16(xp) && aligned16(yp) && (rp == nullptr || aligned16(rp));
        drop_path_kernel<<<grid_for((n + 7) / 8, kBlock), kBlock, 0,
                           at::cuda::getCurrentCUDAStream()>>>(
            xp, rp, yp, seed_ref(seed), n, ChannelIndex(n, shape.samples, shape.inner),
            DeviceKeep(threshold), A(scale), aligned);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

void DropoutLoops::sample_words(const at::Tensor& seed, uint32_t stream, at::Tensor& words) {
  const c10::cuda::CUDAGuard guard(words.device());
  const int64_t n = words.numel();
  sample_words_kernel<<<grid_for(n, kBlock), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      seed.const_data_ptr<int64_t>(), stream, n, words.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class Op>
void DropoutLoops::bias_act_dropout(const Op& op, const at::Tensor& x, const at::Tensor& bias,
                                    const at::Tensor& seed, DropoutParams prm, BiasShape shape,
                                    at::Tensor& y, uint8_t* mask) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_bad", [&] {
    using A = opmath_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const scalar_t* bp = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    if (plan::bias_rows_forward(bp != nullptr, shape,
                                aligned16(xp) && aligned16(yp) && aligned16(bp))) {
      bias_act_dropout_rows_kernel<<<grid_for(n / 8, kBlock), kBlock, 0,
                                     at::cuda::getCurrentCUDAStream()>>>(
          op, xp, bp, yp, mask, seed_ref(seed), n, shape.channels, DeviceKeep(prm.threshold),
          A(prm.scale));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    bias_act_dropout_kernel<<<grid_for((n + 7) / 8, kBlock), kBlock, 0,
                              at::cuda::getCurrentCUDAStream()>>>(
        op, xp, bp, yp, mask, seed_ref(seed), n, ChannelIndex(n, shape.channels, shape.inner),
        DeviceKeep(prm.threshold), A(prm.scale), aligned16(xp) && aligned16(yp));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <class Op>
void DropoutLoops::bias_act_dropout_backward(const Op& op, const at::Tensor& g,
                                             const at::Tensor& saved, const at::Tensor& bias,
                                             const at::Tensor& seed, DropoutParams prm,
                                             BiasShape shape, at::Tensor& dx, at::Tensor* dbias) {
  const c10::cuda::CUDAGuard guard(g.device());
  const int64_t n = g.numel(), K = shape.channels;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, g.scalar_type(), "fastreg_bad_bwd", [&] {
        using A = opmath_t<scalar_t>;
        const auto stream = at::cuda::getCurrentCUDAStream();
        const scalar_t* gp = g.const_data_ptr<scalar_t>();
        const scalar_t* xp = Op::saved == Saved::Mask ? nullptr : saved.const_data_ptr<scalar_t>();
        const uint8_t* mp = Op::saved == Saved::Mask ? saved.const_data_ptr<uint8_t>() : nullptr;
        scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
        const bool aligned = aligned16(gp) && aligned16(dp) && (xp == nullptr || aligned16(xp));
        const scalar_t* bp = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
        const auto path =
            plan::bias_grad_path(dbias != nullptr, shape, aligned,
                                 at::globalContext().deterministicAlgorithms(), sizeof(A));
        const auto partials = [&](int64_t rows) {
          return at::empty({rows * K}, g.options().dtype(c10::CppTypeToScalarType<A>::value));
        };
        if (path == plan::ParamGrad::kColumns) {
          const plan::ColumnsGrid cg = plan::columns_grid(n, K, device_sms());
          at::Tensor partial = partials(cg.y);
          bias_act_dropout_backward_columns_kernel<<<dim3(cg.x, cg.y), kBlock, 0, stream>>>(
              op, gp, xp, mp, bp, dp, partial.mutable_data_ptr<A>(), seed_ref(seed), n / K, K,
              cg.cols, DeviceKeep(prm.threshold), A(prm.scale));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          reduce_partials_kernel<<<reduce_partials_grid(K), kBlock, 0, stream>>>(
              partial.const_data_ptr<A>(), dbias->mutable_data_ptr<scalar_t>(), cg.y, K);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          return;
        }
        const bool shared = path == plan::ParamGrad::kSharedPartials;
        const int64_t grid = grid_for((n + 7) / 8, kBlock, 8);
        at::Tensor partial = shared ? partials(grid) : at::Tensor();
        bias_act_dropout_backward_kernel<<<grid, kBlock, shared ? K * sizeof(A) : 0, stream>>>(
            op, gp, xp, mp, bp, dp, shared ? partial.mutable_data_ptr<A>() : nullptr,
            seed_ref(seed), n, K, ChannelIndex(n, K, shape.inner), DeviceKeep(prm.threshold),
            A(prm.scale), aligned);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (shared) {
          reduce_partials_kernel<<<reduce_partials_grid(K), kBlock, 0, stream>>>(
              partial.const_data_ptr<A>(), dbias->mutable_data_ptr<scalar_t>(), grid, K);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        } else if (path == plan::ParamGrad::kReduction) {
          plan::bias_grad_by_reduction(dx, shape, *dbias);
        }
      });
}

#define FASTREG_INSTANTIATE(Op)                                                              \
  template void DropoutLoops::bias_act_dropout<Op>(                                          \
      const Op&, const at::Tensor&, const at::Tensor&, const at::Tensor&, DropoutParams,     \
      BiasShape, at::Tensor&, uint8_t*);                                                     \
  template void DropoutLoops::bias_act_dropout_backward<Op>(                                 \
      const Op&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, \
      DropoutParams, BiasShape, at::Tensor&, at::Tensor*);
FASTREG_ACTIVATIONS(FASTREG_INSTANTIATE)
#undef FASTREG_INSTANTIATE

}  // namespace fastreg::cuda
