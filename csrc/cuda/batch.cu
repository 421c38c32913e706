// CUDA kernels of the batch family: per-sample boxes (Cutout, random erasing),
// Mixup/CutMix draws, the pairwise mixing pass and the soft targets. Every
// per-sample draw happens on the device from the seed tensor (no host sync):
// the same csrc/sampling.h functions as the CPU kernels, so the bits agree.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <type_traits>
#include <utility>

#include "cuda_kernel.cuh"
#include "loops.h"

namespace fastreg::cuda {
namespace {

__device__ __forceinline__ philox::Key seed_key(const int64_t* seed_p) {
  return philox::key_schedule(static_cast<uint64_t>(*seed_p));
}

__global__ void sample_beta_kernel(const int64_t* __restrict__ seed_p, double* __restrict__ out,
                                   int64_t n, float a, float b, uint32_t stream) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (i >= n) return;
  out[i] = sampling::beta(seed_key(seed_p), stream, static_cast<uint32_t>(i), a, b);
}

// One block per (sample, channel); the box comes from the seed on the device. A seed of
// two elements, [seed, first], draws for samples first + b of a larger batch.
template <class T>
__global__ void __launch_bounds__(kBlock)
    boxes_kernel(T* __restrict__ base, const int64_t* __restrict__ seed_p, int64_t seed_len,
                 int64_t C, int64_t H, int64_t W, int64_t sB, int64_t sC, int64_t sH, int64_t sW,
                 sampling::BoxRule rule, T value, bool random) {
  const int64_t b = blockIdx.x / C, c = blockIdx.x % C;
  const philox::Key key = seed_key(seed_p);
  const int64_t first = seed_len > 1 ? seed_p[1] : 0;
  const sampling::Box box = rule(key, static_cast<uint32_t>(first + b), H, W);
  if (!box.apply) return;
  const int64_t bw = box.x1 - box.x0, area = (box.y1 - box.y0) * bw;
  auto put = [&](int64_t y, int64_t x) {
    const int64_t off = b * sB + c * sC + y * sH + x * sW;
    if (random) {
      base[off] = static_cast<T>(sampling::normal_at(key, philox::kStreamEraseValue,
                                                     static_cast<uint64_t>(off + first * sB)));
    } else {
      base[off] = value;
    }
  };
  if (area < (int64_t(1) << 31)) {  // 32-bit division: a box of an image under 2^31 pixels
    const int bw32 = static_cast<int>(bw), area32 = static_cast<int>(area);
    for (int k = threadIdx.x; k < area32; k += kBlock) put(box.y0 + k / bw32, box.x0 + k % bw32);
  } else {
    for (int64_t k = threadIdx.x; k < area; k += kBlock) put(box.y0 + k / bw, box.x0 + k % bw);
  }
}

// One block per sample: thread 0 draws the sample's lambda and box (its params
// row), then the block writes the sample's soft-target row, which needs only
// its own target lambda: the draws and the targets are one launch.
//   soft[i] = lam_i * smooth(y_i) + (1 - lam_i) * smooth(y_{B-1-i})
// Index targets (TT = int64_t, soft float): one-hot with on / off; probability
// targets (TT = soft type): p * (1 - eps) + eps / K.
template <class TT, class ST>
__global__ void __launch_bounds__(kBlock)
    mix_draw_kernel(const int64_t* __restrict__ seed_p, double* __restrict__ params, int64_t B,
                    int mode, sampling::MixSpec spec, const TT* __restrict__ target,
                    ST* __restrict__ soft, int64_t K, double eps, float on, float off) {
  const int64_t i = blockIdx.x;
  __shared__ double lam_s;
  if (threadIdx.x == 0) {
    const sampling::MixDraw d =
        sampling::mix_draw(seed_key(seed_p), sampling::mix_key_index(mode, i, B), spec);
    sampling::store_mix(params + i * sampling::kMixParamCols, d);
    lam_s = d.lam_target;
  }
  __syncthreads();
  const double lam = lam_s;
  if constexpr (std::is_same_v<TT, int64_t>) {
    const int64_t a = target[i], b = target[B - 1 - i];
#ifdef CUDA_KERNEL_ASSERT_MSG
    CUDA_KERNEL_ASSERT_MSG(a >= 0 && a < K,
                           "fastreg.mixup: target holds a class index outside [0, num_classes)");
#else
    CUDA_KERNEL_ASSERT(a >= 0 &&
                       a < K);  // fastreg.mixup: target class index outside [0, num_classes)
#endif
    const float l = static_cast<float>(lam), r = static_cast<float>(1.0 - lam);
    for (int64_t k = threadIdx.x; k < K; k += kBlock) {
      const float ya = k == a ? on : off, yb = k == b ? on : off;
      soft[i * K + k] = add_rn(mul_rn(ya, l), mul_rn(yb, r));
    }
  } else {
    using A = opmath_t<ST>;
    const A keep = static_cast<A>(1.0 - eps), offp = static_cast<A>(eps / K);
    const A l = static_cast<A>(lam), r = static_cast<A>(1.0 - lam);
    const TT* ya = target + i * K;
    const TT* yb = target + (B - 1 - i) * K;
    for (int64_t k = threadIdx.x; k < K; k += kBlock) {
      const A a = add_rn(mul_rn(static_cast<A>(ya[k]), keep), offp);
      const A b = add_rn(mul_rn(static_cast<A>(yb[k]), keep), offp);
      soft[i * K + k] = static_cast<ST>(add_rn(mul_rn(a, l), mul_rn(b, r)));
    }
  }
}

using sampling::kBlend;
using sampling::kOwn;
using sampling::kPartner;
using sampling::MixMember;
using sampling::MixMode;

// Pairs (i, B-1-i) on grid y, N-element packs of the sample on grid x: each
// thread reads both samples' pack and writes both (dst may be src). Forward:
// out_i = x_i, x_p or lam_i x_i + (1 - lam_i) x_p per element; in place, packs
// with nothing to change are neither read nor written (CutMix moves only its
// boxes' bytes). Backward: g'_i = own_i g_i + partner_p g_p.
// length: one kernel, kept whole until a GPU run can check a split of it (the CUDA path
// runs only on a GPU, and a change that never ran is not verified).
template <class T, int N>
__global__ void __launch_bounds__(kBlock)
    mix_images_kernel(const T* src, T* dst, const double* __restrict__ params, int64_t B,
                      int64_t sample, int64_t H, int64_t sw, FastDivmod by_row, bool inplace,
                      bool backward) {
  using A = opmath_t<T>;
  using P = Pack<T, N>;
  const int64_t pairs = (B + 1) / 2, packs = sample / N, W = by_row.d / sw;
  for (int64_t q = blockIdx.y; q < pairs; q += gridDim.y) {
    const int64_t i = q, p = B - 1 - q;
    const bool self = i == p;
    const MixMember mi = MixMember::from_row(params + i * sampling::kMixParamCols, H, W);
    const MixMember mp = MixMember::from_row(params + p * sampling::kMixParamCols, H, W);
    if (inplace && mi.kind == sampling::kMixNone && mp.kind == sampling::kMixNone) continue;
    const bool cut = mi.kind == sampling::kMixCut || mp.kind == sampling::kMixCut;
    const A li = static_cast<A>(mi.lam), ri = static_cast<A>(mi.rest());
    const A lp = static_cast<A>(mp.lam), rp = static_cast<A>(mp.rest());
    for (int64_t v = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x; v < packs;
         v += static_cast<int64_t>(gridDim.x) * kBlock) {
      const int64_t e = v * N;
      // the modes first: in place, a pack that keeps both samples' own pixels
      // (outside every CutMix box) is neither read nor written
      MixMode mas[N], mbs[N];
      bool any = !inplace;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        mas[j] = mi.base();
        mbs[j] = mp.base();
        if (cut) {
          int64_t row, col;
          by_row(e + j, row, col);
          const int64_t y = row % H;
          mas[j] = mi.mode_at(y, col, sw);
          mbs[j] = mp.mode_at(y, col, sw);
        }
        any = any || mas[j] != kOwn || mbs[j] != kOwn;
      }
      if (!any) continue;
      const P a = *reinterpret_cast<const P*>(src + i * sample + e);
      const P b = *reinterpret_cast<const P*>(src + p * sample + e);
      P oa, ob;
      bool wa = !inplace, wb = !inplace;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const MixMode ma = mas[j], mb = mbs[j];
        const A xa = static_cast<A>(a.v[j]), xb = static_cast<A>(b.v[j]);
        if (backward) {
          oa.v[j] = static_cast<T>(add_rn(mul_rn(sampling::own_coef(ma, li), xa),
                                          mul_rn(sampling::partner_coef(mb, rp), xb)));
          ob.v[j] = static_cast<T>(add_rn(mul_rn(sampling::own_coef(mb, lp), xb),
                                          mul_rn(sampling::partner_coef(ma, ri), xa)));
        } else {
          // copied elements are selected, not blended with a 0 coefficient (0 * inf = NaN)
          const T blend_a = static_cast<T>(add_rn(mul_rn(xa, li), mul_rn(xb, ri)));
          const T blend_b = static_cast<T>(add_rn(mul_rn(xb, lp), mul_rn(xa, rp)));
          oa.v[j] = ma == kOwn ? a.v[j] : (ma == kPartner ? b.v[j] : blend_a);
          ob.v[j] = mb == kOwn ? b.v[j] : (mb == kPartner ? a.v[j] : blend_b);
          wa = wa || ma != kOwn;
          wb = wb || mb != kOwn;
        }
      }
      if (wa) *reinterpret_cast<P*>(dst + i * sample + e) = oa;
      if (wb && !self) *reinterpret_cast<P*>(dst + p * sample + e) = ob;
    }
  }
}

}  // namespace

at::Tensor BatchLoops::sample_beta(const at::Tensor& seed, int64_t n, double a, double b,
                                   int64_t stream) {
  const c10::cuda::CUDAGuard guard(seed.device());
  at::Tensor out = at::empty({n}, seed.options().dtype(at::kDouble));
  if (n == 0) return out;
  sample_beta_kernel<<<(n + kBlock - 1) / kBlock, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      seed.const_data_ptr<int64_t>(), out.mutable_data_ptr<double>(), n, static_cast<float>(a),
      static_cast<float>(b), static_cast<uint32_t>(stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void BatchLoops::fill_boxes(at::Tensor& images, const at::Tensor& seed,
                            const sampling::BoxRule& rule, double fill, bool random) {
  const c10::cuda::CUDAGuard guard(images.device());
  const int64_t B = images.size(0), C = images.size(1);
  if (B * C == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND3(
      at::kHalf, at::kBFloat16, at::kByte, images.scalar_type(), "fastreg_boxes", [&] {
        boxes_kernel<<<B * C, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            images.mutable_data_ptr<scalar_t>(), seed.const_data_ptr<int64_t>(), seed.numel(), C,
            images.size(2), images.size(3), images.stride(0), images.stride(1), images.stride(2),
            images.stride(3), rule, static_cast<scalar_t>(fill), random);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

std::pair<at::Tensor, at::Tensor> BatchLoops::mix_draw(const at::Tensor& seed,
                                                       const at::Tensor& target, int mode,
                                                       const sampling::MixSpec& spec, int64_t K,
                                                       double eps) {
  const c10::cuda::CUDAGuard guard(seed.device());
  const int64_t B = target.size(0);
  const at::Tensor t = target.contiguous();
  at::Tensor params = at::empty({B, sampling::kMixParamCols}, seed.options().dtype(at::kDouble));
  at::Tensor soft =
      at::empty({B, K}, t.options().dtype(t.dim() == 1 ? at::kFloat : t.scalar_type()));
  if (B == 0) return {params, soft};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t* sp = seed.const_data_ptr<int64_t>();
  double* pp = params.mutable_data_ptr<double>();
  if (t.dim() == 1) {
    mix_draw_kernel<<<B, kBlock, 0, stream>>>(
        sp, pp, B, mode, spec, t.const_data_ptr<int64_t>(), soft.mutable_data_ptr<float>(), K, eps,
        static_cast<float>(1.0 - eps + eps / K), static_cast<float>(eps / K));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {params, soft};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "fastreg_mix_draw",
                                  [&] {
                                    mix_draw_kernel<<<B, kBlock, 0, stream>>>(
                                        sp, pp, B, mode, spec, t.const_data_ptr<scalar_t>(),
                                        soft.mutable_data_ptr<scalar_t>(), K, eps, 0.0f, 0.0f);
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
  return {params, soft};
}

void BatchLoops::mix_images(const at::Tensor& src, at::Tensor& dst, const at::Tensor& params,
                            const RowLayout& L, bool inplace, bool backward) {
  const c10::cuda::CUDAGuard guard(src.device());
  const int64_t B = src.size(0);
  const FastDivmod by_row(L.row_len, L.sample);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, src.scalar_type(), "fastreg_mix_images", [&] {
        using T = scalar_t;
        constexpr int N = kVec<T>;
        const plan::MixGrid mg = plan::mix_grid(
            B, L.sample, N, aligned16(src.const_data_ptr()) && aligned16(dst.const_data_ptr()));
        const dim3 grid(static_cast<unsigned>(mg.x), static_cast<unsigned>(mg.y));
        if (mg.vec) {
          mix_images_kernel<T, N><<<grid, kBlock, 0, stream>>>(
              src.const_data_ptr<T>(), dst.mutable_data_ptr<T>(), params.const_data_ptr<double>(),
              B, L.sample, L.rows, L.sw, by_row, inplace, backward);
        } else {
          mix_images_kernel<T, 1><<<grid, kBlock, 0, stream>>>(
              src.const_data_ptr<T>(), dst.mutable_data_ptr<T>(), params.const_data_ptr<double>(),
              B, L.sample, L.rows, L.sw, by_row, inplace, backward);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

}  // namespace fastreg::cuda
