// CUDA kernels of the batch family. So far only the per-sample Beta draws the
// Mixup/CutMix ops will use (test-only op fastreg::_sample_beta): one thread
// per sample, the seed read on the device.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <ATen/Dispatch.h>

#include "../batch_ops.h"
#include "../errors.h"
#include "../sampling.h"
#include "cuda_kernel.cuh"

namespace fastreg::cuda {
namespace {

__global__ void sample_beta_kernel(const int64_t* __restrict__ seed_p, double* __restrict__ out,
                                   int64_t n, float a, float b, uint32_t stream) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (i >= n) return;
  const philox::Key key = philox::key_schedule(static_cast<uint64_t>(*seed_p));
  out[i] = sampling::beta(key, stream, static_cast<uint32_t>(i), a, b);
}

at::Tensor sample_beta(const at::Tensor& seed, int64_t n, double a, double b, int64_t stream) {
  FASTREG_CHECK_TYPE(seed.scalar_type() == at::kLong && seed.numel() == 1,
                     "fastreg._sample_beta: seed must be a one-element int64 tensor");
  FASTREG_CHECK_VALUE(n >= 0 && n < (int64_t(1) << 32), "fastreg._sample_beta: n out of range");
  FASTREG_CHECK_VALUE(a > 0 && b > 0, "fastreg._sample_beta: alpha must be > 0, got ", a, ", ", b);
  const c10::cuda::CUDAGuard guard(seed.device());
  at::Tensor out = at::empty({n}, seed.options().dtype(at::kDouble));
  if (n == 0) return out;
  sample_beta_kernel<<<(n + kBlock - 1) / kBlock, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      seed.const_data_ptr<int64_t>(), out.mutable_data_ptr<double>(), n, static_cast<float>(a),
      static_cast<float>(b), static_cast<uint32_t>(stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// One block per (sample, channel); the box comes from the seed on the device.
template <class T>
__global__ void __launch_bounds__(kBlock)
    cutout_kernel(T* __restrict__ base, const int64_t* __restrict__ seed_p, int64_t C, int64_t H,
                  int64_t W, int64_t sB, int64_t sC, int64_t sH, int64_t sW, int64_t size,
                  uint64_t threshold, T value) {
  const int64_t b = blockIdx.x / C, c = blockIdx.x % C;
  const philox::Key key = philox::key_schedule(static_cast<uint64_t>(*seed_p));
  const sampling::Box box = sampling::cutout_box(key, static_cast<uint32_t>(b), H, W, size, threshold);
  if (!box.apply) return;
  const int64_t bw = box.x1 - box.x0, area = (box.y1 - box.y0) * bw;
  for (int64_t k = threadIdx.x; k < area; k += kBlock) {
    const int64_t y = box.y0 + k / bw, x = box.x0 + k % bw;
    base[b * sB + c * sC + y * sH + x * sW] = value;
  }
}

void fill_boxes(at::Tensor& images, const at::Tensor& seed, int64_t size, double p, double fill) {
  const c10::cuda::CUDAGuard guard(images.device());
  const int64_t B = images.size(0), C = images.size(1);
  if (B * C == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, images.scalar_type(), "fastreg_cutout", [&] {
    cutout_kernel<<<B * C, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        images.mutable_data_ptr<scalar_t>(), seed.const_data_ptr<int64_t>(), C, images.size(2),
        images.size(3), images.stride(0), images.stride(1), images.stride(2), images.stride(3), size,
        philox::keep_threshold(p), static_cast<scalar_t>(fill));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace fastreg::cuda

TORCH_LIBRARY_IMPL(fastreg, CUDA, m) {
  m.impl("_sample_beta", &fastreg::cuda::sample_beta);
  fastreg::register_cutout_kernels<&fastreg::cuda::fill_boxes>(m);
}
