// Host-side decisions of the CUDA launchers, in plain C++: grid sizes, which
// kernel a launcher takes, and the ATen reductions some paths fall back to. The
// .cu files hold kernels and the launches these plans describe; the CPU tests
// drive every branch here (fastreg._C._testing) with the shapes that reach them
// on a GPU, since the CUDA code runs only where a GPU is.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "dropout_ops.h"

namespace fastreg::plan {

constexpr int kBlock = 256;  // threads per block of every elementwise kernel
constexpr int kWaves = 32;   // grid-stride kernels: at most this many waves of blocks
// Bytes of per-channel partial sums a block keeps in shared memory (of its 48 KB).
constexpr int64_t kMaxSharedPartials = 48 * 1024;

// Blocks covering `work` items at `per_block` each, at least 1, capped at `waves`
// waves of the device's `sms` multiprocessors (the kernels are grid-stride loops).
inline int64_t grid_blocks(int64_t work, int64_t per_block, int64_t sms, int waves = kWaves) {
  const int64_t need = (work + per_block - 1) / per_block;
  return std::max<int64_t>(1, std::min<int64_t>(need, sms * waves));
}

// The activations' map kernel: 16-byte vectors of `vec_elems` elements where every
// pointer is aligned (the tail of fewer than vec_elems elements by the first threads),
// else element by element; each thread loads kMapUnroll vectors before it computes.
constexpr int kMapUnroll = 4;

struct MapGrid {
  bool vec;
  int64_t grid;
};

inline MapGrid map_grid(int64_t n, int vec_elems, bool aligned, int64_t sms) {
  if (aligned)
    return {true, grid_blocks(std::max<int64_t>(n / vec_elems, 1), kBlock * kMapUnroll, sms)};
  return {false, grid_blocks(n, kBlock * kMapUnroll, sms)};
}

// How a backward computes a parameter gradient (bias_act_dropout's grad_bias,
// PReLU's grad_weight) beside grad_input.
enum class ParamGrad {
  kNone,            // no parameter: grad_input only
  kColumns,         // threads own 8-channel column groups, sum rows in registers: no atomics
  kSharedPartials,  // per-block sums in shared memory (atomics between warps), then
                    // reduce_partials_kernel in a fixed order
  kReduction,       // grad_input only, then an ATen reduction (channel_sums): more channels
                    // than shared memory holds, or deterministic algorithms requested
};

inline const char* name(ParamGrad p) {
  switch (p) {
    case ParamGrad::kNone:
      return "none";
    case ParamGrad::kColumns:
      return "columns";
    case ParamGrad::kSharedPartials:
      return "shared_partials";
    case ParamGrad::kReduction:
      return "reduction";
  }
  return "?";
}

// Whether per-block shared sums of `channels` values of `acc_bytes` each may be used:
// they fit, and their atomics' varying order is allowed.
inline bool shared_partials_fit(int64_t channels, int64_t acc_bytes, bool deterministic) {
  return !deterministic && channels * acc_bytes <= kMaxSharedPartials;
}

// bias_act_dropout's backward. `aligned`: grad, saved input and grad_input all 16-byte
// aligned. The column kernel needs the bias on the contiguous last dim and K % 8 == 0
// (8-channel groups, one 16-byte vector each); it is deterministic by construction.
inline ParamGrad bias_grad_path(bool has_bias, const BiasShape& s, bool aligned, bool deterministic,
                                int64_t acc_bytes) {
  if (!has_bias) return ParamGrad::kNone;
  if (s.inner == 1 && s.channels % 8 == 0 && aligned) return ParamGrad::kColumns;
  if (shared_partials_fit(s.channels, acc_bytes, deterministic)) return ParamGrad::kSharedPartials;
  return ParamGrad::kReduction;
}

// PReLU's backward (a one-element weight is one channel).
inline ParamGrad prelu_grad_path(const PreluShape& s, bool deterministic, int64_t acc_bytes) {
  return shared_partials_fit(s.channels, acc_bytes, deterministic) ? ParamGrad::kSharedPartials
                                                                   : ParamGrad::kReduction;
}

// bias_act_dropout's forward takes the rows kernel (8 bias values per 16-byte load,
// channel advanced without a division) where a unit of 8 elements lies in one row.
inline bool bias_rows_forward(bool has_bias, const BiasShape& s, bool aligned) {
  return has_bias && s.inner == 1 && s.channels % 8 == 0 && aligned;
}

// The column kernel's grid: `cols` column groups per block along x, blocks of
// kBlock / cols rows along y, enough y blocks for about 8 per multiprocessor.
struct ColumnsGrid {
  int cols;
  int64_t x, y;
};

inline ColumnsGrid columns_grid(int64_t n, int64_t channels, int64_t sms) {
  const int64_t groups = channels / 8, rows = n / channels;
  const int cols = static_cast<int>(std::min<int64_t>(groups, kBlock));
  const int64_t x = (groups + cols - 1) / cols;
  const int64_t rows_per_block = kBlock / cols;
  const int64_t y =
      std::max<int64_t>(1, std::min<int64_t>((rows + rows_per_block - 1) / rows_per_block,
                                             std::max<int64_t>(1, sms * 8 / x)));
  return {cols, x, y};
}

// The mixing pass (mix_images_kernel): pairs of samples along grid y, packs of
// `vec_elems` elements (one 16-byte vector) of a sample along grid x, or single
// elements where the sample size or a pointer does not allow vectors. Both grid
// dimensions are capped at 65535; the kernel strides over what they do not cover.
struct MixGrid {
  bool vec;
  int64_t x, y;
};

inline MixGrid mix_grid(int64_t batch, int64_t sample, int vec_elems, bool aligned) {
  const bool vec = sample % vec_elems == 0 && aligned;
  const int64_t packs = vec ? sample / vec_elems : sample, pairs = (batch + 1) / 2;
  return {vec, std::min<int64_t>((packs + kBlock - 1) / kBlock, 65535),
          std::min<int64_t>(pairs, 65535)};
}

// The accumulation type of a storage type (float for the half types).
inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Per-channel sums of a dense tensor whose memory is [outer][channels][inner] (the
// view every kernel of a per-channel parameter walks), in `acc`: a (channels,) tensor.
// Sums over outer and inner, so a 1-D tensor (outer = inner = 1) gives itself and a
// single channel the sum of everything, whatever the rank.
inline at::Tensor channel_sums(const at::Tensor& t, int64_t channels, int64_t inner,
                               at::ScalarType acc) {
  FASTREG_CHECK_VALUE(t.is_non_overlapping_and_dense() && channels >= 1 && inner >= 1 &&
                          t.numel() % (channels * inner) == 0,
                      "fastreg: channel_sums needs a dense tensor of [outer][", channels, "][",
                      inner, "] elements, got shape ", shape_str(t));
  const int64_t outer = t.numel() / (channels * inner);
  return t.as_strided({outer, channels, inner}, {channels * inner, inner, 1})
      .to(acc)
      .sum(at::IntArrayRef{0, 2});
}

// grad_bias of bias_act_dropout from its grad_input (the kReduction path).
inline void bias_grad_by_reduction(const at::Tensor& dx, const BiasShape& s, at::Tensor& db) {
  db.copy_(channel_sums(dx, s.channels, s.inner, acc_type(dx.scalar_type())));
}

// grad_weight of PReLU: sum of (x > 0 ? 0 : g x) per channel (the kReduction path).
// A select, as Prelu::grad_weight, not g * x * (x <= 0), which is NaN where x = +inf.
// g and x are dense in the same layout; dw has the weight's (contiguous) shape.
inline void prelu_weight_grad_by_reduction(const at::Tensor& g, const at::Tensor& x,
                                           const PreluShape& s, at::Tensor& dw) {
  const at::ScalarType acc = acc_type(x.scalar_type());
  const at::Tensor xa = x.to(acc), ga = g.to(acc);
  at::Tensor term = at::empty_like(xa);  // x's dense layout: the [outer][C][inner] view holds
  at::where_out(term, xa > 0, at::zeros({}, xa.options()), ga * xa);
  dw.view({-1}).copy_(channel_sums(term, s.channels, s.inner, acc));
}

}  // namespace fastreg::plan
