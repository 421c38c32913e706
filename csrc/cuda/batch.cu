// CUDA kernels of the batch family. So far only the per-sample Beta draws the
// Mixup/CutMix ops will use (test-only op fastreg::_sample_beta): one thread
// per sample, the seed read on the device.
#include <ATen/ATen.h>
#include <torch/library.h>

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

}  // namespace
}  // namespace fastreg::cuda

TORCH_LIBRARY_IMPL(fastreg, CUDA, m) { m.impl("_sample_beta", &fastreg::cuda::sample_beta); }
