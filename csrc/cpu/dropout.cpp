// CPU kernels of the dropout family. Work goes in chunks of 256 elements at
// absolute, aligned positions (so results and mask bytes never depend on the
// thread count): Philox words for a chunk are generated 16 counter blocks at a
// time (vectorized), then one vectorized pass applies them.
#include <ATen/Dispatch.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "../dropout_ops.h"
#include "convert_simd.h"
#include "cpu_kernel.h"
#include "philox_simd.h"

namespace fastreg::cpu {
namespace {

constexpr int64_t kChunk = 256;  // elements per chunk (a multiple of 8 and 4)
constexpr int64_t kChunksPerTask = kGrain / kChunk;

// words[k] = Philox word of element i0 + k, for k < len (len <= kChunk,
// i0 a multiple of 4: chunks start on counter blocks). Vectorized across
// blocks; the four words of a block are stored interleaved (element order).
FASTREG_HOST void fill_words(uint64_t seed, uint32_t stream, int64_t i0, int64_t len,
                             uint32_t* __restrict words) {
  const int64_t b0 = i0 >> 2, nb = (len + 3) >> 2;
  const philox::Key key = philox::key_schedule(seed);
  int64_t b = 0;
#ifdef FASTREG_HAVE_SIMD_PHILOX
  if (cpu_isa() >= Isa::Avx512) {  // 16 blocks per AVX-512 pass, the rest below
    const int64_t groups = nb / 16;
    philox_words_avx512(key, stream, static_cast<uint64_t>(b0), groups, words);
    b = groups * 16;
  } else if (cpu_isa() == Isa::Avx2) {  // 4 blocks per AVX2 register, the rest below
    const int64_t quads = nb / 4;
    philox_words_avx2(key, stream, static_cast<uint64_t>(b0), quads, words);
    b = quads * 4;
  }
#endif
  for (; b < nb; ++b) {
    const philox::Word4 r = philox::block_words(key, stream, static_cast<uint64_t>(b0 + b));
    words[4 * b] = r.v[0];
    words[4 * b + 1] = r.v[1];
    words[4 * b + 2] = r.v[2];
    words[4 * b + 3] = r.v[3];
  }
}

// A seed tensor's values: the seed and, for a shard (a positioned seed), where its
// elements sit in the whole tensor (philox.h IndexMap).
struct Draw {
  uint64_t seed;
  philox::IndexMap map;
};

inline Draw draw_of(const at::Tensor& seed_t) {
  const int64_t* s = seed_t.const_data_ptr<int64_t>();
  return {static_cast<uint64_t>(s[0]), philox::IndexMap::load(s, seed_t.numel())};
}

// A shard's words (fill_words below): the whole tensor's words of the mapped indices,
// drawn run by run (a run: local indices that map to consecutive ones). Out of line, so
// that the unsharded loops stay as they were.
__attribute__((noinline)) void fill_mapped_words(const Draw& d, uint32_t stream, int64_t i0,
                                                 int64_t len, uint32_t* __restrict words) {
  alignas(64) uint32_t run_words[kChunk + 64];
  for (int64_t k = 0; k < len;) {
    const int64_t l = i0 + k;
    int64_t run = len - k;
    for (int j = 0; j < d.map.levels; ++j)
      if (d.map.seg[j] > 0) run = std::min(run, d.map.seg[j] - l % d.map.seg[j]);
    const int64_t g = static_cast<int64_t>(d.map(static_cast<uint64_t>(l)));
    const int64_t lead = g & 3;  // runs start anywhere; fill_words starts on a block
    fill_words(d.seed, stream, g - lead, run + lead, run_words);
    std::memcpy(words + k, run_words + lead, static_cast<size_t>(run) * sizeof(uint32_t));
    k += run;
  }
}

// words[k] = the word of local element i0 + k (of its index in the whole tensor, for a shard).
FASTREG_HOST void fill_words(const Draw& d, uint32_t stream, int64_t i0, int64_t len,
                             uint32_t* __restrict words) {
  if (d.map.identity()) {
    fill_words(d.seed, stream, i0, len, words);
  } else {
    fill_mapped_words(d, stream, i0, len, words);
  }
}

using Keep = philox::KeepRule;

#ifdef FASTREG_HAVE_AVX512_BF16
// Dropout of 16 float32 values by their words: kept ? v * scale : +0 (the keep
// decision is the zeroing mask of the multiply), as the generic loops compute it.
struct KeepScale16 {
  __m512 scale;
  __m512i threshold;
  __mmask16 any;  // 0 when p = 1 drops everything
  FASTREG_TARGET_AVX512 __attribute__((always_inline)) KeepScale16(float s, Keep keep)
      : scale(_mm512_set1_ps(s)),
        threshold(_mm512_set1_epi32(static_cast<int>(keep.threshold))),
        any(keep.none ? 0 : 0xffff) {}
  FASTREG_TARGET_AVX512 __attribute__((always_inline)) __m512 operator()(const uint32_t* words,
                                                                         __m512 v) const {
    return _mm512_maskz_mul_ps(
        _mm512_mask_cmpge_epu32_mask(any, _mm512_loadu_si512(words), threshold), v, scale);
  }
};

// One chunk of bfloat16 dropout (kResidual: + residual), 32 elements per step,
// with AVX512_BF16's conversion (convert_simd.h) in place of the generic rounding.
// kStream: non-temporal stores (y 64-byte aligned).
template <bool kResidual, bool kStream>
FASTREG_TARGET_AVX512 __attribute__((noinline)) void dropout_bf16_chunk(
    const uint16_t* __restrict x, const uint16_t* __restrict r, uint16_t* __restrict y,
    const uint32_t* __restrict words, int64_t len, float scale, Keep keep) {
  const KeepScale16 drop(scale, keep);
  int64_t k = 0;
  for (; k + 32 <= len; k += 32) {
    __m512 a0 = drop(words + k, bf16x16_load(x + k)),
           a1 = drop(words + k + 16, bf16x16_load(x + k + 16));
    if constexpr (kResidual) {
      a0 = _mm512_add_ps(bf16x16_load(r + k), a0);
      a1 = _mm512_add_ps(bf16x16_load(r + k + 16), a1);
    }
    bf16x32_store<kStream>(y + k, a0, a1);
  }
  for (; k < len; ++k) {
    const float a = keep(words[k]) ? bf16_to_float(x[k]) * scale : 0.0f;
    y[k] = float_to_bf16(kResidual ? bf16_to_float(r[k]) + a : a);
  }
}

// One chunk of float32 dropout with non-temporal stores (y 64-byte aligned).
template <bool kResidual>
FASTREG_TARGET_AVX512 __attribute__((noinline)) void dropout_f32_stream_chunk(
    const float* __restrict x, const float* __restrict r, float* __restrict y,
    const uint32_t* __restrict words, int64_t len, float scale, Keep keep) {
  const KeepScale16 drop(scale, keep);
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    __m512 a = drop(words + k, _mm512_loadu_ps(x + k));
    if constexpr (kResidual) a = _mm512_add_ps(_mm512_loadu_ps(r + k), a);
    _mm512_stream_ps(y + k, a);
  }
  for (; k < len; ++k) {
    const float a = keep(words[k]) ? x[k] * scale : 0.0f;
    y[k] = kResidual ? r[k] + a : a;
  }
}
#endif

// Plain or residual dropout of one chunk by an intrinsics loop: bfloat16 with
// AVX512_BF16's conversion (where bf16_convert()), streaming stores or not
// (`stream`); float32 with streaming stores. False where the generic loops apply.
template <class T>
bool dropout_chunk_fast(const T*, const T*, T*, const uint32_t*, int64_t, opmath_t<T>, Keep, bool) {
  return false;
}
inline bool dropout_chunk_fast(const c10::BFloat16* x, const c10::BFloat16* r, c10::BFloat16* y,
                               const uint32_t* words, int64_t len, float scale, Keep keep,
                               bool stream) {
#ifdef FASTREG_HAVE_AVX512_BF16
  if (!bf16_convert()) return false;
  const auto f =
      r != nullptr ? (stream ? dropout_bf16_chunk<true, true> : dropout_bf16_chunk<true, false>)
                   : (stream ? dropout_bf16_chunk<false, true> : dropout_bf16_chunk<false, false>);
  f(raw(x), raw(r), raw(y), words, len, scale, keep);
  return true;
#else
  return false;
#endif
}
inline bool dropout_chunk_fast(const float* x, const float* r, float* y, const uint32_t* words,
                               int64_t len, float scale, Keep keep, bool stream) {
#ifdef FASTREG_HAVE_AVX512_BF16
  if (!stream) return false;
  (r != nullptr ? dropout_f32_stream_chunk<true>
                : dropout_f32_stream_chunk<false>)(x, r, y, words, len, scale, keep);
  return true;
#else
  return false;
#endif
}

// Chunks per task of bias_act_dropout's backward, from the sizes only, so that grad_bias
// (summed per task, then over tasks in order) is deterministic: doubled while the tasks'
// grad_bias rows would hold more than 2^22 values.
inline int64_t backward_chunks_per_task(int64_t chunks, int64_t K, bool dbias) {
  int64_t per_task = kChunksPerTask;
  while (dbias && per_task < chunks && (chunks / per_task) * K > (int64_t(1) << 22)) per_task *= 2;
  return per_task;
}

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
    const Draw seed = draw_of(seed_t);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_dropout", [&] {
          using A = opmath_t<scalar_t>;
          const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
          const scalar_t* __restrict rp = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
          scalar_t* __restrict yp = y.mutable_data_ptr<scalar_t>();
          const A scale = A(prm.scale), add = A(prm.keep_add), drop = A(prm.drop_value);
          const bool affine = prm.keep_add != 0.0 || prm.drop_value != 0.0;
          FASTREG_CHECK(!(affine && residual), "internal: alpha dropout takes no residual");
          const Keep keep(prm.threshold);
          // Plain and residual dropout (alpha dropout takes the generic loops): bfloat16
          // through AVX512_BF16's conversion; non-temporal stores when the op's bytes exceed
          // the last-level cache. AVX-512 only: on the AVX2 path Philox words cost twice as
          // much, so compute, not memory, bounds the loop, and streaming measured slower.
          const int64_t bytes = n * static_cast<int64_t>(sizeof(scalar_t)) * (residual ? 3 : 2);
          const bool stream = !affine && cpu_isa() >= Isa::Avx512 && stream_stores(bytes) &&
                              reinterpret_cast<uintptr_t>(yp) % 64 == 0;
          at::parallel_for(0, chunks, kChunksPerTask, [&](int64_t c0, int64_t c1) {
            run_isa([&](auto isa) FASTREG_INLINE_LAMBDA {
              // locals, not captures: the loops must not re-read them after each store
              const Keep kp = keep;
              const A sc = scale, ad = add, dr = drop;
              const scalar_t* __restrict x_ = xp;
              const scalar_t* __restrict r_ = rp;
              scalar_t* __restrict y_ = yp;
              alignas(64) uint32_t words[kChunk + 4];
              for (int64_t ch = c0; ch < c1; ++ch) {
                const int64_t i0 = ch * kChunk, len = std::min(kChunk, n - i0);
                fill_words(seed, philox::kStreamElement, i0, len, words);
                if (!affine && dropout_chunk_fast(x_ + i0, r_ ? r_ + i0 : nullptr, y_ + i0, words,
                                                  len, sc, kp, stream)) {
                  continue;
                }
                // (map1/map2: the 2-byte types converted by instruction in the loop where the CPU
                // has it; the intrinsics chunks above stay faster for plain dropout)
                if (affine) {  // alpha dropout (never with a residual)
                  map1(isa, y_ + i0, x_ + i0, 0, len, [&](int64_t k, A v) FASTREG_INLINE_LAMBDA {
                    return kp(words[k]) ? v * sc + ad : dr;
                  });
                } else if (r_ != nullptr) {
                  map2(isa, y_ + i0, x_ + i0, r_ + i0, 0, len,
                       [&](int64_t k, A v, A r)
                           FASTREG_INLINE_LAMBDA { return r + (kp(words[k]) ? v * sc : A(0)); });
                } else {  // no + 0 (a kept -0 stays -0, as in torch)
                  map1(isa, y_ + i0, x_ + i0, 0, len, [&](int64_t k, A v) FASTREG_INLINE_LAMBDA {
                    return kp(words[k]) ? v * sc : A(0);
                  });
                }
              }
              if (stream) store_fence();
            });
          });
        });
  }

  // words[i] = the Philox word of sample i on `stream`.
  static void sample_words(const at::Tensor& seed_t, uint32_t stream, at::Tensor& words) {
    const philox::Key key = philox::key_schedule(static_cast<uint64_t>(seed_t.item<int64_t>()));
    int64_t* w = words.mutable_data_ptr<int64_t>();
    for (int64_t i = 0; i < words.numel(); ++i) w[i] = philox::word(key, stream, i);
  }

  static void drop_path(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                        const at::Tensor& seed_t, uint64_t threshold, double scale_d,
                        SampleShape shape, at::Tensor& y) {
    const int64_t B = shape.samples, inner = shape.inner, rows = x.numel() / inner;
    const Draw seed = draw_of(seed_t);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_drop_path", [&] {
          using A = opmath_t<scalar_t>;
          const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
          const scalar_t* __restrict rp = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
          scalar_t* __restrict yp = y.mutable_data_ptr<scalar_t>();
          const Keep keep(threshold);
          at::parallel_for(
              0, rows, std::max<int64_t>(1, kGrain / inner), [&](int64_t r0, int64_t r1) {
                for (int64_t r = r0; r < r1; ++r) {
                  const int64_t b = r % B, base = r * inner;
                  const A s = keep(philox::word(seed.seed, philox::kStreamSample, seed.map(b)))
                                  ? A(scale_d)
                                  : A(0);
                  run_isa([&](auto isa) FASTREG_INLINE_LAMBDA {
                    if (rp != nullptr) {
                      map2(isa, yp + base, xp + base, rp + base, 0, inner,
                           [&](int64_t, A v, A res) FASTREG_INLINE_LAMBDA { return res + v * s; });
                    } else {
                      map1(isa, yp + base, xp + base, 0, inner,
                           [&](int64_t, A v) FASTREG_INLINE_LAMBDA { return v * s; });
                    }
                  });
                }
              });
        });
  }

  // A chunk's bias values, one per element (the channel walk kept out of the
  // vectorized math loops).
  template <class scalar_t, class A>
  static FASTREG_HOST void gather_bias(const scalar_t* __restrict bp, int64_t i0, int64_t len,
                                       int64_t K, int64_t inner, A* __restrict bv) {
    if (bp == nullptr) {
      for (int64_t k = 0; k < len; ++k) bv[k] = A(0);
      return;
    }
    if (inner == 1) {  // bias along the last dimension: runs of consecutive channels
      for (int64_t k = 0, c = i0 % K; k < len; c = 0) {
        const int64_t l = std::min(len - k, K - c);
        const scalar_t* __restrict src = bp + c;
        A* __restrict dst = bv + k;
        for (int64_t j = 0; j < l; ++j) dst[j] = load(src, j);
        k += l;
      }
      return;
    }
    for_channel_segments(i0, i0 + len, K, inner, [&](int64_t s, int64_t l, int64_t c) {
      A* __restrict dst = bv + (s - i0);
      if (inner == 1) {
        for (int64_t j = 0; j < l; ++j) dst[j] = load(bp, c + j);
      } else {
        const A b = load(bp, c);
        for (int64_t j = 0; j < l; ++j) dst[j] = b;
      }
    });
  }

  template <class Op>
  static void bias_act_dropout(const Op& op, const at::Tensor& x, const at::Tensor& bias,
                               const at::Tensor& seed_t, DropoutParams prm, BiasShape shape,
                               at::Tensor& y, uint8_t* mask) {
    const int64_t n = x.numel(), chunks = (n + kChunk - 1) / kChunk;
    const int64_t K = shape.channels, inner = shape.inner;
    const Draw seed = draw_of(seed_t);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_bad", [&] {
      using A = opmath_t<scalar_t>;
      const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
      const scalar_t* __restrict bp = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* __restrict yp = y.mutable_data_ptr<scalar_t>();
      const A scale = A(prm.scale);
      const Keep keep(prm.threshold);
      // bias along the contiguous last dim, whole chunks per row: no gather
      const bool rows = bp != nullptr && inner == 1 && K % kChunk == 0;
      at::parallel_for(0, chunks, kChunksPerTask, [&](int64_t c0, int64_t c1) {
        run_isa([&](auto isa) FASTREG_INLINE_LAMBDA {
          const Op o = op;
          const Keep kp = keep;
          const A sc = scale;
          const scalar_t* __restrict x_ = xp;
          scalar_t* __restrict y_ = yp;
          uint8_t* __restrict m_ = mask;
          alignas(64) uint32_t words[kChunk + 4];
          alignas(64) uint8_t bits[kChunk];
          alignas(64) A bv[kChunk];
          for (int64_t ch = c0; ch < c1; ++ch) {
            const int64_t i0 = ch * kChunk, len = std::min(kChunk, n - i0);
            fill_words(seed, philox::kStreamElement, i0, len, words);
            if (rows) {  // the chunk's channels are i0 % K + k: the bias read in place
              // (the bias row as map2's second input: converted like x, by instruction)
              map2<true>(isa, y_ + i0, x_ + i0, bp + i0 % K, 0, len,
                         [&](int64_t k, A xv, A bk) FASTREG_INLINE_LAMBDA {
                           const A z = xv + bk;
                           bits[k] = act_bit(o, z);
                           const A a = o.forward(z) * sc;
                           return kp(words[k]) ? a : A(0);
                         });
            } else {
              gather_bias(bp, i0, len, K, inner, bv);
              map1<true>(isa, y_ + i0, x_ + i0, 0, len, [&](int64_t k, A xv) FASTREG_INLINE_LAMBDA {
                const A z = xv + bv[k];
                bits[k] = act_bit(o, z);
                const A a = o.forward(z) * sc;
                return kp(words[k]) ? a : A(0);
              });
            }
            if (m_ != nullptr) {
              for (int64_t k = len; k < (len + 7) / 8 * 8; ++k) bits[k] = 0;
              for (int64_t q = 0; q < (len + 7) / 8; ++q) {
                m_[i0 / 8 + q] = pack_bits8(bits + 8 * q);
              }
            }
          }
        });
      });
    });
  }

  // One chunk of bias_act_dropout's backward when the bias runs along the contiguous last
  // dim in whole chunks (the chunk's channels are i0 % K + k): one loop reads the bias in
  // place (b_ = bias + i0 % K), writes grad_input and adds into the task's grad_bias row
  // (pc = its row + i0 % K).
  template <class Op, class scalar_t, class A>
  static FASTREG_HOST void fused_rows_chunk(const Op o, const Keep kp, const A sc,
                                            const uint32_t* __restrict words,
                                            const uint8_t* __restrict bits,
                                            const scalar_t* __restrict g_,
                                            const scalar_t* __restrict x_,
                                            const scalar_t* __restrict b_, scalar_t* __restrict d_,
                                            A* __restrict pc, int64_t i0, int64_t len) {
    if constexpr (Op::saved == Saved::Mask) {
      _Pragma("GCC ivdep")  // pc (the task's row) overlaps no tensor
          for (int64_t k = 0; k < len; ++k) {
        // loads outside the select: AVX2 has no masked byte load, so a conditional read of
        // bits[] through a pointer keeps GCC from vectorizing the loop
        const A raw = o.backward(A(load(g_, i0 + k)), bits[k] != 0) * sc;
        const A d = kp(words[k]) ? raw : A(0);
        store(d_, i0 + k, d);
        pc[k] += d;
      }
    } else {
      _Pragma("GCC ivdep") for (int64_t k = 0; k < len; ++k) {
        const A z = load(x_, i0 + k) + load(b_, k);
        const A d = kp(words[k]) ? act_grad(o, A(load(g_, i0 + k)), z, false) * sc : A(0);
        store(d_, i0 + k, d);
        pc[k] += d;
      }
    }
  }

  // A chunk's gradient of the pre-activations x + bias (bv: the chunk's bias values), zero
  // where dropout dropped: dz.
  template <class Op, class scalar_t, class A>
  static FASTREG_HOST void chunk_grad(const Op o, const Keep kp, const A sc,
                                      const uint32_t* __restrict words,
                                      const uint8_t* __restrict bits, const scalar_t* __restrict g_,
                                      const scalar_t* __restrict x_, const A* __restrict bv,
                                      int64_t i0, int64_t len, A* __restrict dz) {
    if constexpr (Op::saved == Saved::Mask) {
      for (int64_t k = 0; k < len; ++k) {
        const A d = o.backward(A(load(g_, i0 + k)), bits[k] != 0) * sc;
        dz[k] = kp(words[k]) ? d : A(0);
      }
    } else {
      for (int64_t k = 0; k < len; ++k) {
        const A z = load(x_, i0 + k) + bv[k];
        const A d = act_grad(o, A(load(g_, i0 + k)), z, false) * sc;
        dz[k] = kp(words[k]) ? d : A(0);
      }
    }
  }

  // A chunk's dz added into the task's grad_bias row: runs of consecutive channels (bias
  // along the last dim), else one sum per channel segment.
  template <class A>
  static FASTREG_HOST void add_bias_grad(A* __restrict part, const A* __restrict dz, int64_t i0,
                                         int64_t len, int64_t K, int64_t inner) {
    if (inner == 1) {
      for (int64_t k = 0, c = i0 % K; k < len; c = 0) {
        const int64_t l = std::min(len - k, K - c);
        A* __restrict pc = part + c;
        const A* __restrict src = dz + k;
        _Pragma("GCC ivdep")  // the task's row and the chunk's buffer never overlap
            for (int64_t j = 0; j < l; ++j) pc[j] += src[j];
        k += l;
      }
      return;
    }
    for_channel_segments(i0, i0 + len, K, inner, [&](int64_t s, int64_t l, int64_t c) {
      const A* __restrict src = dz + (s - i0);
      A lane[16] = {};
      int64_t j = 0;
      for (; j + 16 <= l; j += 16)
        for (int q = 0; q < 16; ++q) lane[q] += src[j + q];
      A sum = A(0);
      for (; j < l; ++j) sum += src[j];
      for (int q = 0; q < 16; ++q) sum += lane[q];
      part[c] += sum;
    });
  }

  template <class Op>
  static void bias_act_dropout_backward(const Op& op, const at::Tensor& g, const at::Tensor& saved,
                                        const at::Tensor& bias, const at::Tensor& seed_t,
                                        DropoutParams prm, BiasShape shape, at::Tensor& dx,
                                        at::Tensor* dbias) {
    const int64_t n = g.numel(), chunks = (n + kChunk - 1) / kChunk;
    const int64_t K = shape.channels, inner = shape.inner;
    const Draw seed = draw_of(seed_t);
    const int64_t per_task = backward_chunks_per_task(chunks, K, dbias != nullptr);
    const int64_t tasks = (chunks + per_task - 1) / per_task;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, g.scalar_type(), "fastreg_bad_bwd", [&] {
          using A = opmath_t<scalar_t>;
          const scalar_t* __restrict gp = g.const_data_ptr<scalar_t>();
          const scalar_t* __restrict xp =
              Op::saved == Saved::Mask ? nullptr : saved.const_data_ptr<scalar_t>();
          const uint8_t* __restrict mp =
              Op::saved == Saved::Mask ? saved.const_data_ptr<uint8_t>() : nullptr;
          const scalar_t* __restrict bp =
              bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
          scalar_t* __restrict dp = dx.mutable_data_ptr<scalar_t>();
          const A scale = A(prm.scale);
          const Keep keep(prm.threshold);
          std::vector<A> partial(dbias ? static_cast<size_t>(tasks * K) : 0, A(0));
          // bias along the contiguous last dim, whole chunks per row: one fused loop (float32;
          // bfloat16, whose conversions dominate, gained nothing from it and keeps the buffers)
          const bool rows = inner == 1 && K % kChunk == 0 &&
                            (Op::saved == Saved::Mask || bp != nullptr) &&
                            std::is_same_v<scalar_t, A>;
          at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
              A* __restrict part = dbias ? partial.data() + t * K : nullptr;
              run_isa([&](auto) FASTREG_INLINE_LAMBDA {
                alignas(64) uint32_t words[kChunk + 4];
                alignas(64) uint8_t bits[kChunk];
                alignas(64) A bv[kChunk];
                alignas(64) A dz[kChunk];
                const int64_t ch1 = std::min(chunks, (t + 1) * per_task);
                for (int64_t ch = t * per_task; ch < ch1; ++ch) {
                  const int64_t i0 = ch * kChunk, len = std::min(kChunk, n - i0);
                  fill_words(seed, philox::kStreamElement, i0, len, words);
                  if constexpr (Op::saved == Saved::Mask)
                    unpack_bits8(mp + i0 / 8, (len + 7) / 8, bits);
                  if (rows && part != nullptr) {
                    const scalar_t* b = Op::saved == Saved::Mask ? nullptr : bp + i0 % K;
                    fused_rows_chunk(op, keep, scale, words, bits, gp, xp, b, dp, part + i0 % K, i0,
                                     len);
                    continue;
                  }
                  if constexpr (Op::saved != Saved::Mask) gather_bias(bp, i0, len, K, inner, bv);
                  chunk_grad(op, keep, scale, words, bits, gp, xp, bv, i0, len, dz);
                  store_row(dp + i0, dz, len);
                  if (part != nullptr) add_bias_grad(part, dz, i0, len, K, inner);
                }
              });
            }
          });
          if (dbias) sum_partials(partial.data(), tasks, K, dbias->mutable_data_ptr<scalar_t>());
        });
  }
};

}  // namespace
}  // namespace fastreg::cpu

namespace fastreg::cpu {
namespace {

// Test-only: the words of elements first .. first + n - 1 as the CPU kernels make
// them (the AVX-512 or AVX2 path where the CPU has it), to check counters past 2^32 blocks.
at::Tensor philox_words_op(const at::Tensor& seed, int64_t stream, int64_t first, int64_t n) {
  FASTREG_CHECK_TYPE(seed.scalar_type() == at::kLong && seed.numel() == 1,
                     "fastreg._philox_words: seed must be a one-element int64 tensor");
  FASTREG_CHECK_VALUE(first >= 0 && first % 4 == 0 && n >= 0,
                      "fastreg._philox_words: first must be a ",
                      "non-negative multiple of 4 and n >= 0");
  at::Tensor out = at::empty({n}, seed.options());
  int64_t* o = out.mutable_data_ptr<int64_t>();
  alignas(64) uint32_t words[kChunk + 4];
  const uint64_t s = static_cast<uint64_t>(seed.item<int64_t>());
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t len = std::min(kChunk, n - i);
    fill_words(s, static_cast<uint32_t>(stream), first + i, len, words);
    for (int64_t k = 0; k < len; ++k) o[i + k] = words[k];
  }
  return out;
}

}  // namespace
}  // namespace fastreg::cpu

TORCH_LIBRARY_IMPL(fastreg, CPU, m) {
  fastreg::register_dropout_kernels<fastreg::cpu::CpuLoops>(m);
  m.impl("_philox_words", &fastreg::cpu::philox_words_op);
}
