// CPU kernels of the dropout family. Work goes in chunks of 256 elements at
// absolute, aligned positions (so results and mask bytes never depend on the
// thread count): Philox words for a chunk are generated 16 counter blocks at a
// time (vectorized), then one vectorized pass applies them.
#include <ATen/Dispatch.h>

#include <vector>

#include "../dropout_ops.h"
#include "cpu_kernel.h"

namespace fastreg::cpu {
namespace {

constexpr int64_t kChunk = 256;                // elements per chunk (a multiple of 8 and 4)
constexpr int64_t kChunksPerTask = kGrain / kChunk;

// words[k] = Philox word of element i0 + k, for k < len (len <= kChunk).
FASTREG_HOST void fill_words(uint64_t seed, uint32_t stream, int64_t i0, int64_t len,
                             uint32_t* __restrict words) {
  const int64_t b0 = i0 >> 2, nb = ((i0 + len + 3) >> 2) - b0;
  alignas(64) uint32_t w0[kChunk / 4 + 2], w1[kChunk / 4 + 2], w2[kChunk / 4 + 2],
      w3[kChunk / 4 + 2];
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int64_t b = 0; b < nb; ++b) {  // independent counters: vectorized across blocks
    const uint64_t blk = static_cast<uint64_t>(b0 + b);
    const philox::Word4 r = philox::philox4x32_10(static_cast<uint32_t>(blk),
                                                  static_cast<uint32_t>(blk >> 32), stream, 0u, k0, k1);
    w0[b] = r.v[0];
    w1[b] = r.v[1];
    w2[b] = r.v[2];
    w3[b] = r.v[3];
  }
  const int64_t skip = i0 - 4 * b0;
  for (int64_t k = 0; k < len; ++k) {
    const int64_t e = k + skip, b = e >> 2;
    const int lane = static_cast<int>(e & 3);
    words[k] = lane == 0 ? w0[b] : lane == 1 ? w1[b] : lane == 2 ? w2[b] : w3[b];
  }
}

struct Keep {
  uint32_t threshold;
  bool none;  // p = 1: the threshold 2^32 does not fit 32 bits
  explicit Keep(uint64_t t) : threshold(t > 0xffffffffull ? 0u : uint32_t(t)), none(t > 0xffffffffull) {}
  FASTREG_HOST bool operator()(uint32_t w) const { return !none && w >= threshold; }
};

// Splits [i, end) into segments where the channel of element start+j is
// c + j (kStep, inner == 1) or c (inner > 1), and calls seg(start, len, c).
template <class F>
FASTREG_HOST void for_channel_segments(int64_t i, int64_t end, int64_t C, int64_t inner, F&& seg) {
  int64_t pos = i % inner, c = (i / inner) % C;
  while (i < end) {
    const int64_t len = std::min(end - i, inner == 1 ? C - c : inner - pos);
    seg(i, len, c);
    i += len;
    if (inner == 1) {
      c += len;
    } else {
      pos += len;
      if (pos == inner) pos = 0, ++c;
    }
    if (c == C) c = 0;
  }
}

struct CpuLoops {
  static void dropout(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                      const at::Tensor& seed_t, DropoutParams prm, at::Tensor& y) {
    const int64_t n = x.numel(), chunks = (n + kChunk - 1) / kChunk;
    const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_dropout", [&] {
      using A = opmath_t<scalar_t>;
      const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
      const scalar_t* __restrict rp = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
      scalar_t* __restrict yp = y.mutable_data_ptr<scalar_t>();
      const A scale = A(prm.scale), add = A(prm.keep_add), drop = A(prm.drop_value);
      const Keep keep(prm.threshold);
      at::parallel_for(0, chunks, kChunksPerTask, [&](int64_t c0, int64_t c1) {
        run_isa([&]() FASTREG_INLINE_LAMBDA {
          alignas(64) uint32_t words[kChunk];
          for (int64_t ch = c0; ch < c1; ++ch) {
            const int64_t i0 = ch * kChunk, len = std::min(kChunk, n - i0);
            fill_words(seed, philox::kStreamElement, i0, len, words);
            if (rp != nullptr) {
              for (int64_t k = 0; k < len; ++k) {
                const A v = load(xp, i0 + k);
                store(yp, i0 + k, load(rp, i0 + k) + (keep(words[k]) ? v * scale + add : drop));
              }
            } else {
              for (int64_t k = 0; k < len; ++k) {
                const A v = load(xp, i0 + k);
                store(yp, i0 + k, keep(words[k]) ? v * scale + add : drop);
              }
            }
          }
        });
      });
    });
  }

  static void drop_path(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                        const at::Tensor& seed_t, uint64_t threshold, double scale_d,
                        SampleShape shape, at::Tensor& y) {
    const int64_t B = shape.samples, inner = shape.inner, rows = x.numel() / inner;
    const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_drop_path", [&] {
      using A = opmath_t<scalar_t>;
      const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
      const scalar_t* __restrict rp = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
      scalar_t* __restrict yp = y.mutable_data_ptr<scalar_t>();
      const Keep keep(threshold);
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / inner), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r % B, base = r * inner;
          const A s = keep(philox::word(seed, philox::kStreamSample, b)) ? A(scale_d) : A(0);
          run_isa([&]() FASTREG_INLINE_LAMBDA {
            if (rp != nullptr) {
              for (int64_t i = base; i < base + inner; ++i) store(yp, i, load(rp, i) + load(xp, i) * s);
            } else {
              for (int64_t i = base; i < base + inner; ++i) store(yp, i, load(xp, i) * s);
            }
          });
        }
      });
    });
  }

  template <class Op>
  static void bias_act_dropout(const Op& op, const at::Tensor& x, const at::Tensor& bias,
                               const at::Tensor& seed_t, DropoutParams prm, BiasShape shape,
                               at::Tensor& y, uint8_t* mask) {
    const int64_t n = x.numel(), chunks = (n + kChunk - 1) / kChunk;
    const int64_t K = shape.channels, inner = shape.inner;
    const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_bad", [&] {
      using A = opmath_t<scalar_t>;
      const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
      const scalar_t* __restrict bp = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* __restrict yp = y.mutable_data_ptr<scalar_t>();
      const A scale = A(prm.scale);
      const Keep keep(prm.threshold);
      at::parallel_for(0, chunks, kChunksPerTask, [&](int64_t c0, int64_t c1) {
        run_isa([&]() FASTREG_INLINE_LAMBDA {
          const Op o = op;
          alignas(64) uint32_t words[kChunk];
          alignas(64) uint8_t bits[kChunk];
          for (int64_t ch = c0; ch < c1; ++ch) {
            const int64_t i0 = ch * kChunk, len = std::min(kChunk, n - i0);
            fill_words(seed, philox::kStreamElement, i0, len, words);
            for_channel_segments(i0, i0 + len, K, inner, [&](int64_t s, int64_t l, int64_t c) {
              const int64_t step = inner == 1 ? 1 : 0;
              for (int64_t j = 0; j < l; ++j) {
                const int64_t k = s - i0 + j;
                const A z = load(xp, s + j) + (bp ? A(load(bp, c + j * step)) : A(0));
                bits[k] = act_bit(o, z);
                store(yp, s + j, keep(words[k]) ? o.forward(z) * scale : A(0));
              }
            });
            if (mask != nullptr) {
              for (int64_t q = 0; q < (len + 7) / 8; ++q) {
                uint32_t byte = 0;
                for (int t = 0; t < 8; ++t) byte |= uint32_t(8 * q + t < len && bits[8 * q + t]) << t;
                mask[i0 / 8 + q] = static_cast<uint8_t>(byte);
              }
            }
          }
        });
      });
    });
  }

  template <class Op>
  static void bias_act_dropout_backward(const Op& op, const at::Tensor& g, const at::Tensor& saved,
                                        const at::Tensor& bias, const at::Tensor& seed_t,
                                        DropoutParams prm, BiasShape shape, at::Tensor& dx,
                                        at::Tensor* dbias) {
    const int64_t n = g.numel(), chunks = (n + kChunk - 1) / kChunk;
    const int64_t K = shape.channels, inner = shape.inner;
    const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
    // Fixed task boundaries (from sizes only): grad_bias is deterministic.
    int64_t per_task = kChunksPerTask;
    while (dbias && per_task < chunks && (chunks / per_task) * K > (int64_t(1) << 22)) per_task *= 2;
    const int64_t tasks = (chunks + per_task - 1) / per_task;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "fastreg_bad_bwd", [&] {
      using A = opmath_t<scalar_t>;
      const scalar_t* __restrict gp = g.const_data_ptr<scalar_t>();
      const scalar_t* __restrict xp =
          Op::saved == Saved::Mask ? nullptr : saved.const_data_ptr<scalar_t>();
      const uint8_t* __restrict mp = Op::saved == Saved::Mask ? saved.const_data_ptr<uint8_t>() : nullptr;
      const scalar_t* __restrict bp = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* __restrict dp = dx.mutable_data_ptr<scalar_t>();
      const A scale = A(prm.scale);
      const Keep keep(prm.threshold);
      std::vector<A> partial(dbias ? static_cast<size_t>(tasks * K) : 0, A(0));
      at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          A* __restrict part = dbias ? partial.data() + t * K : nullptr;
          run_isa([&]() FASTREG_INLINE_LAMBDA {
            const Op o = op;
            alignas(64) uint32_t words[kChunk];
            const int64_t ch1 = std::min(chunks, (t + 1) * per_task);
            for (int64_t ch = t * per_task; ch < ch1; ++ch) {
              const int64_t i0 = ch * kChunk, len = std::min(kChunk, n - i0);
              fill_words(seed, philox::kStreamElement, i0, len, words);
              for_channel_segments(i0, i0 + len, K, inner, [&](int64_t s, int64_t l, int64_t c) {
                const int64_t step = inner == 1 ? 1 : 0;
                A lane[16] = {};
                for (int64_t j = 0; j < l; ++j) {
                  const int64_t k = s - i0 + j, i = s + j;
                  A z = A(0);
                  bool bit = false;
                  if constexpr (Op::saved == Saved::Mask) {
                    bit = (mp[i >> 3] >> (i & 7)) & 1;
                  } else {
                    z = load(xp, i) + (bp ? A(load(bp, c + j * step)) : A(0));
                  }
                  const A d = keep(words[k]) ? act_grad(o, load(gp, i), z, bit) * scale : A(0);
                  store(dp, i, d);
                  if (part != nullptr) {
                    if (step) part[c + j] += d;
                    else lane[j & 15] += d;
                  }
                }
                if (part != nullptr && !step) {
                  A sum = A(0);
                  for (int q = 0; q < 16; ++q) sum += lane[q];
                  part[c] += sum;
                }
              });
            }
          });
        }
      });
      if (dbias) {
        scalar_t* dbp = dbias->mutable_data_ptr<scalar_t>();
        for (int64_t c = 0; c < K; ++c) {
          A sum = A(0);
          for (int64_t t = 0; t < tasks; ++t) sum += partial[t * K + c];
          dbp[c] = static_cast<scalar_t>(sum);
        }
      }
    });
  }
};

}  // namespace
}  // namespace fastreg::cpu

TORCH_LIBRARY_IMPL(fastreg, CPU, m) {
  fastreg::register_dropout_kernels<fastreg::cpu::CpuLoops>(m);
}
