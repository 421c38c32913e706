// The CUDA loop helpers shared by every family: 16-byte vectors, launch
// geometry from the device, and the opmath type.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "../activations.h"
#include "../channel_index.h"
#include "../launch_plan.h"

namespace fastreg::cuda {

using fastreg::opmath_t;

// Elements per 16-byte access.
template <class T> constexpr int kVec = 16 / sizeof(T);

// N elements accessed as one load/store (16 bytes when N = kVec<T>). Aligned
// to its own size, not more: Pack<T, 1> must index element by element.
template <class T, int N> struct alignas(sizeof(T) * N) Pack { T v[N]; };

constexpr int kBlock = plan::kBlock;

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

inline int64_t device_sms() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// plan::grid_blocks on the current device.
inline int64_t grid_for(int64_t work, int64_t per_block, int waves = plan::kWaves) {
  return plan::grid_blocks(work, per_block, device_sms(), waves);
}

// Arithmetic that nvcc must not contract into an FMA: the random ops round
// exactly like fastreg.reference (one rounding per multiply and per add).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

// Loads/stores 8 elements (one mask byte's worth) as 16-byte vectors when
// `vec`, else element by element up to n.
template <class T>
__device__ __forceinline__ void load8(T (&dst)[8], const T* __restrict__ p, int64_t first,
                                      int64_t n, bool vec) {
  if (vec) {
#pragma unroll
    for (int j = 0; j < 8 / kVec<T>; ++j)
      reinterpret_cast<Pack<T, kVec<T>>*>(dst)[j] =
          reinterpret_cast<const Pack<T, kVec<T>>*>(p + first)[j];
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) dst[k] = first + k < n ? p[first + k] : T(0);
  }
}

template <class T>
__device__ __forceinline__ void store8(T* __restrict__ p, const T (&src)[8], int64_t first,
                                       int64_t n, bool vec) {
  if (vec) {
#pragma unroll
    for (int j = 0; j < 8 / kVec<T>; ++j)
      reinterpret_cast<Pack<T, kVec<T>>*>(p + first)[j] =
          reinterpret_cast<const Pack<T, kVec<T>>*>(src)[j];
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (first + k < n) p[first + k] = src[k];
  }
}

// Units of 8 elements u = u0, u0 + ustep, ... < units, with the loads running
// one unit ahead: unit u's compute (the Philox rounds cost about as long as
// the memory access on half types) overlaps the next unit's loads, which a
// plain grid-stride loop leaves idle. `in` holds kIn input pointers (a null
// one is not read), `mask` an optional byte per unit. body(u, vals, bits, vec)
// computes and stores unit u; vals[j] holds in[j]'s 8 elements.
template <int kIn, class T, class Body>
__device__ __forceinline__ void for_units_prefetched(int64_t u0, int64_t ustep, int64_t units,
                                                     const T* const (&in)[kIn],
                                                     const uint8_t* __restrict__ mask, int64_t n,
                                                     bool aligned, Body&& body) {
  int64_t u = u0;
  if (u >= units) return;
  alignas(16) T cur[kIn][8];
  uint32_t cur_bits = 0;
#pragma unroll
  for (int j = 0; j < kIn; ++j)
    if (in[j] != nullptr) load8(cur[j], in[j], 8 * u, n, aligned && 8 * u + 8 <= n);
  if (mask != nullptr) cur_bits = mask[u];
  while (true) {
    const int64_t next = u + ustep;
    const bool more = next < units;
    alignas(16) T nxt[kIn][8];
    uint32_t nxt_bits = 0;
    if (more) {
#pragma unroll
      for (int j = 0; j < kIn; ++j)
        if (in[j] != nullptr) load8(nxt[j], in[j], 8 * next, n, aligned && 8 * next + 8 <= n);
      if (mask != nullptr) nxt_bits = mask[next];
    }
    body(u, cur, cur_bits, aligned && 8 * u + 8 <= n);
    if (!more) break;
    u = next;
    cur_bits = nxt_bits;
#pragma unroll
    for (int j = 0; j < kIn; ++j)
      if (in[j] != nullptr) {
#pragma unroll
        for (int k = 0; k < 8; ++k) cur[j][k] = nxt[j][k];
      }
  }
}

// for_units_prefetched over the whole tensor's (n + 7) / 8 units, grid-stride
// (thread t of the grid takes units t, t + threads, ...): the usual launch of
// the elementwise kernels, grid_for(units, kBlock).
template <int kIn, class T, class Body>
__device__ __forceinline__ void for_grid_units_prefetched(const T* const (&in)[kIn],
                                                          const uint8_t* __restrict__ mask,
                                                          int64_t n, bool aligned, Body&& body) {
  for_units_prefetched(static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x,
                       static_cast<int64_t>(gridDim.x) * kBlock, (n + 7) / 8, in, mask, n, aligned,
                       static_cast<Body&&>(body));
}

// For light per-unit work (streaming kernels): each thread loads kU units
// (u = base + j * kBlock) before it computes any, so kU units' loads (64 bytes
// per thread for kU = 64 / (8 sizeof(T))) are in flight, as in the map kernel.
// body(u, vals, bits, vec) as for for_units_prefetched. Launch with
// grid_for(units, kBlock * kU).
template <int kU, int kIn, class T, class Body>
__device__ __forceinline__ void for_units_batched(int64_t units, const T* const (&in)[kIn],
                                                  const uint8_t* __restrict__ mask, int64_t n,
                                                  bool aligned, Body&& body) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kBlock * kU;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kBlock * kU + threadIdx.x; base < units;
       base += step) {
    alignas(16) T v[kU][kIn][8];
    uint32_t bits[kU];
#pragma unroll
    for (int j = 0; j < kU; ++j) {
      const int64_t u = base + j * kBlock;
      bits[j] = 0;
      if (u < units) {
#pragma unroll
        for (int q = 0; q < kIn; ++q)
          if (in[q] != nullptr) load8(v[j][q], in[q], 8 * u, n, aligned && 8 * u + 8 <= n);
        if (mask != nullptr) bits[j] = mask[u];
      }
    }
#pragma unroll
    for (int j = 0; j < kU; ++j) {
      const int64_t u = base + j * kBlock;
      if (u < units) body(u, v[j], bits[j], aligned && 8 * u + 8 <= n);
    }
  }
}

// Units per thread per pass of for_units_batched: 64 bytes of each input in flight.
template <class T> constexpr int kBatchUnits = sizeof(T) >= 8 ? 1 : 8 / static_cast<int>(sizeof(T));

// Sum of v over a full warp whose lanes all hold the same key (then lane 0
// gets the sum and true), else false: callers fall back to per-lane atomics.
// Collapses the 32 same-address shared-memory atomics of a warp (a CAS loop
// for floats) into one where a channel spans whole warps (NCHW layouts).
template <class A>
__device__ __forceinline__ bool warp_sum_same_key(int64_t key, A& v) {
  if (__activemask() != 0xffffffffu) return false;
  const int64_t k0 = __shfl_sync(0xffffffffu, key, 0);
  if (!__all_sync(0xffffffffu, key == k0)) return false;
#pragma unroll
  for (int d = 16; d > 0; d /= 2) v += __shfl_xor_sync(0xffffffffu, v, d);
  return true;
}

// Per-channel sums of a block (PReLU's grad_weight, bias_act_dropout's
// grad_bias) in shared memory s[C]: begin() zeroes them; per unit, a thread
// adds its elements in memory order into a run (flushed with an atomic when
// the channel changes) and finish() adds the last run, one warp sum where the
// warp's 32 units all lie in one channel; end() writes s to partial[block][C].
template <class A>
struct ChannelSums {
  A* s;
  __device__ __forceinline__ void begin(int64_t C) const {
    for (int64_t c = threadIdx.x; c < C; c += kBlock) s[c] = A(0);
    __syncthreads();
  }
  __device__ __forceinline__ void end(A* __restrict__ partial, int64_t C) const {
    __syncthreads();
    for (int64_t c = threadIdx.x; c < C; c += kBlock) partial[blockIdx.x * C + c] = s[c];
  }
  struct Run {
    A* s;
    int64_t c;
    A sum = A(0);
    bool single = true;  // the unit lies in one channel
    __device__ __forceinline__ void add(int64_t ch, A v) {
      if (ch != c) {
        atomicAdd(&s[c], sum);
        c = ch;
        sum = A(0);
        single = false;
      }
      sum += v;
    }
    __device__ __forceinline__ void finish() {
      if (warp_sum_same_key(single ? c : -1 - static_cast<int64_t>(threadIdx.x), sum)) {
        if (threadIdx.x % 32 == 0) atomicAdd(&s[c], sum);
      } else {
        atomicAdd(&s[c], sum);
      }
    }
  };
  __device__ __forceinline__ Run run(int64_t c) const { return Run{s, c}; }
};

// out[c] = sum over blocks of partial[block][c] in a fixed order (deterministic):
// a block owns 32 consecutive channels, its 8 warps each sum every 8th partial
// row (one 128-byte line per row and warp: coalesced), then one warp adds the 8
// sums in order. Launch with reduce_partials_grid(C) blocks.
template <class T>
__global__ void __launch_bounds__(kBlock)
    reduce_partials_kernel(const opmath_t<T>* __restrict__ partial, T* __restrict__ dw,
                           int64_t blocks, int64_t C) {
  using A = opmath_t<T>;
  constexpr int kCols = 32, kSplit = kBlock / kCols;
  __shared__ A s[kSplit][kCols];
  const int x = threadIdx.x % kCols, y = threadIdx.x / kCols;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kCols + x;
  A sum = A(0);
  if (c < C)
    for (int64_t b = y; b < blocks; b += kSplit) sum += partial[b * C + c];
  s[y][x] = sum;
  __syncthreads();
  if (y == 0 && c < C) {
    A total = s[0][x];
#pragma unroll
    for (int q = 1; q < kSplit; ++q) total += s[q][x];
    dw[c] = static_cast<T>(total);
  }
}

inline int64_t reduce_partials_grid(int64_t C) { return (C + 31) / 32; }

}  // namespace fastreg::cuda
