// CPU kernels of the batch family. So far only the per-sample Beta draws the
// Mixup/CutMix ops will use, exposed as the test-only op fastreg::_sample_beta.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../errors.h"
#include "../sampling.h"

namespace fastreg::cpu {
namespace {

at::Tensor sample_beta(const at::Tensor& seed, int64_t n, double a, double b, int64_t stream) {
  FASTREG_CHECK_TYPE(seed.scalar_type() == at::kLong && seed.numel() == 1,
                     "fastreg._sample_beta: seed must be a one-element int64 tensor");
  FASTREG_CHECK_VALUE(n >= 0 && n < (int64_t(1) << 32), "fastreg._sample_beta: n out of range");
  FASTREG_CHECK_VALUE(a > 0 && b > 0, "fastreg._sample_beta: alpha must be > 0, got ", a, ", ", b);
  at::Tensor out = at::empty({n}, seed.options().dtype(at::kDouble));
  const philox::Key key = philox::key_schedule(static_cast<uint64_t>(seed.item<int64_t>()));
  double* o = out.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i)
    o[i] = sampling::beta(key, static_cast<uint32_t>(stream), static_cast<uint32_t>(i),
                          static_cast<float>(a), static_cast<float>(b));
  return out;
}

}  // namespace
}  // namespace fastreg::cpu

TORCH_LIBRARY_IMPL(fastreg, CPU, m) { m.impl("_sample_beta", &fastreg::cpu::sample_beta); }
