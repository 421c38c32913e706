// Index arithmetic of the CUDA kernels, as __host__ __device__ code: the kernels
// run it on the device, the CPU tests run the same code on the host
// (fastreg._C._testing.channel_index), so an off-by-one here fails on any machine.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__CUDACC__)
#define FASTREG_INDEX_HD __host__ __device__ __forceinline__
#else
#define FASTREG_INDEX_HD inline __attribute__((always_inline))
#endif

namespace fastreg {

// n / d for 32-bit n < 2^31 and 1 <= d < 2^31 by a multiply and a shift (ATen's
// IntDivider: Hacker's Delight 10-9, with the magic number's 33rd bit folded in
// as "+ n"); a 64-bit division costs about 100 instructions on the GPU.
struct Divider32 {
  uint32_t divisor = 1, magic = 0;
  int shift = 0;
  Divider32() = default;
  explicit Divider32(uint32_t d) : divisor(d) {
    while (shift < 32 && (uint64_t(1) << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }
  FASTREG_INDEX_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t t = __umulhi(n, magic);
#else
    const uint32_t t = static_cast<uint32_t>((static_cast<uint64_t>(n) * magic) >> 32);
#endif
    return (t + n) >> shift;
  }
};

// q = a / d, r = a % d for 0 <= a <= max_dividend: the 32-bit multiply-shift when
// both fit in 31 bits, else 64-bit division.
struct FastDivmod {
  Divider32 d32;
  int64_t d;
  bool small;
  FastDivmod(int64_t divisor, int64_t max_dividend)
      : d(divisor), small(max_dividend < (int64_t(1) << 31) && divisor < (int64_t(1) << 31)) {
    if (small) d32 = Divider32(static_cast<uint32_t>(divisor));
  }
  FASTREG_INDEX_HD void operator()(int64_t a, int64_t& q, int64_t& r) const {
    if (small) {
      const uint32_t a32 = static_cast<uint32_t>(a), q32 = d32.div(a32);
      q = q32;
      r = a32 - q32 * d32.divisor;
    } else {
      q = a / d;
      r = a - q * d;
    }
  }
};

// Channel and position of element i of n in memory viewed as [outer][C][inner].
struct ChannelIndex {
  FastDivmod by_inner, by_channels;
  ChannelIndex(int64_t n, int64_t C, int64_t inner)
      : by_inner(inner, n), by_channels(C, n / std::max<int64_t>(inner, 1) + 1) {}
  FASTREG_INDEX_HD void operator()(int64_t i, int64_t& c, int64_t& pos) const {
    int64_t row, outer;
    by_inner(i, row, pos);
    by_channels(row, outer, c);
  }
  // (c, pos) of element i -> those of element i + 1, without a division.
  FASTREG_INDEX_HD void step(int64_t& c, int64_t& pos) const {
    if (++pos == by_inner.d) {
      pos = 0;
      if (++c == by_channels.d) c = 0;
    }
  }
};

}  // namespace fastreg
