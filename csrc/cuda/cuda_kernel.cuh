// The CUDA loop helpers shared by every family: 16-byte vectors, launch
// geometry from the device, and the opmath type.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace fastreg::cuda {

template <class T> struct Opmath { using type = T; };
template <> struct Opmath<c10::Half> { using type = float; };
template <> struct Opmath<c10::BFloat16> { using type = float; };
template <class T> using opmath_t = typename Opmath<T>::type;

// Elements per 16-byte access.
template <class T> constexpr int kVec = 16 / sizeof(T);

template <class T, int N> struct alignas(16) Pack {
  T v[N];
};

constexpr int kBlock = 256;

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Enough blocks to cover `work` items at `per_block` each, capped at a few
// waves of the device (the kernels are grid-stride loops).
inline int64_t grid_for(int64_t work, int64_t per_block, int waves = 32) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t need = (work + per_block - 1) / per_block;
  return std::max<int64_t>(1, std::min<int64_t>(need, sms * waves));
}

}  // namespace fastreg::cuda
