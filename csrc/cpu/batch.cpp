// CPU kernels of the batch family. So far only the per-sample Beta draws the
// Mixup/CutMix ops will use, exposed as the test-only op fastreg::_sample_beta.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "../batch_ops.h"
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

// Writes `fill` into every sample's box, on every channel, through the strides
// (any layout); nothing else is touched.
void fill_boxes(at::Tensor& images, const at::Tensor& seed, int64_t size, double p, double fill) {
  const int64_t B = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  const int64_t sB = images.stride(0), sC = images.stride(1), sH = images.stride(2), sW = images.stride(3);
  const philox::Key key = philox::key_schedule(static_cast<uint64_t>(seed.item<int64_t>()));
  const uint64_t threshold = philox::keep_threshold(p);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, images.scalar_type(), "fastreg_cutout", [&] {
    scalar_t* base = images.mutable_data_ptr<scalar_t>();
    const scalar_t value = static_cast<scalar_t>(fill);
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const sampling::Box box = sampling::cutout_box(key, static_cast<uint32_t>(b), H, W, size, threshold);
        if (!box.apply) continue;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t y = box.y0; y < box.y1; ++y)
            for (int64_t x = box.x0; x < box.x1; ++x) base[b * sB + c * sC + y * sH + x * sW] = value;
      }
    });
  });
}

}  // namespace
}  // namespace fastreg::cpu

TORCH_LIBRARY_IMPL(fastreg, CPU, m) {
  m.impl("_sample_beta", &fastreg::cpu::sample_beta);
  fastreg::register_cutout_kernels<&fastreg::cpu::fill_boxes>(m);
}
