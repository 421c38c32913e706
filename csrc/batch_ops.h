// Host side of the batch ops shared by the backends: checks and registration.
// A backend supplies fill_boxes(images, seed, size, p, fill), which writes the
// boxes in place through the strides.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include "errors.h"

namespace fastreg {

using FillBoxes = void (*)(at::Tensor&, const at::Tensor&, int64_t, double, double);

inline void check_cutout(const at::Tensor& images, const at::Tensor& seed, int64_t size, double p) {
  const auto st = images.scalar_type();
  FASTREG_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16 ||
                         st == at::kByte,
                     "fastreg.cutout: images must be a float or uint8 tensor, got ", st);
  FASTREG_CHECK_VALUE(images.dim() == 4, "fastreg.cutout: images must be 4-D (B, C, H, W), got ",
                      images.dim(), "-D");
  FASTREG_CHECK_VALUE(size > 0, "fastreg.cutout: size must be > 0, got ", size);
  FASTREG_CHECK_VALUE(p >= 0.0 && p <= 1.0, "fastreg.cutout: p must be in [0, 1], got ", p);
  FASTREG_CHECK_TYPE(seed.scalar_type() == at::kLong && seed.numel() == 1,
                     "fastreg.cutout: seed must be a one-element int64 tensor");
  FASTREG_CHECK(seed.device() == images.device(), "fastreg.cutout: seed is on ", seed.device(),
                " but images are on ", images.device());
}

template <FillBoxes fill_boxes>
void register_cutout_kernels(torch::Library& m) {
  m.impl("cutout", [](const at::Tensor& images, const at::Tensor& seed, int64_t size, double p, double fill) {
    check_cutout(images, seed, size, p);
    at::Tensor out = images.clone();  // keeps the layout
    if (out.numel() > 0) fill_boxes(out, seed, size, p, fill);
    return out;
  });
  m.impl("cutout_", [](at::Tensor& images, const at::Tensor& seed, int64_t size, double p, double fill) {
    check_cutout(images, seed, size, p);
    if (images.numel() > 0) fill_boxes(images, seed, size, p, fill);
  });
}

}  // namespace fastreg
