// CPU kernels of the activation family: one loop per kind of op, templated on
// the functor; at::parallel_for over both cores, vectorized inner loops.
#include <ATen/Dispatch.h>

#include <vector>

#include "../activation_ops.h"
#include "convert_simd.h"
#include "cpu_kernel.h"

namespace fastreg::cpu {
namespace {

// ReLU's forward is exactly x or 0, and its backward g or 0: its loops select
// raw element bits instead of converting to float and back (for bfloat16 and
// float16 the conversion back, with its rounding, was most of the loop). A NaN
// passes through with its payload.
template <class Op> constexpr bool kSelectsInput = false;
template <> constexpr bool kSelectsInput<Relu> = true;
// The forward loops select raw bits for the 2-byte types only: for float32 and float64
// the functor's own select (x <= 0 ? 0 : x) gives the same bits with no conversion, and
// GCC vectorizes it better than the integer select.
template <class Op, class T> constexpr bool kForwardSelectsRaw =
    kSelectsInput<Op> && sizeof(T) == 2;

// Relu's keep bit !(x <= 0) (NaN keeps) read off the element's bits: for the 2-byte
// types, not +-0 and either positive or a NaN, in 16-bit integer lanes (the generic
// float16 -> float32 conversion was most of the float16 forward).
template <class T> FASTREG_HOST bool relu_keep(const Relu& o, const T* p, int64_t i) {
  if constexpr (sizeof(T) == 2) {
    constexpr uint16_t inf = std::is_same_v<T, c10::Half> ? 0x7c00 : 0x7f80;
    const uint16_t h = raw(p)[i], a = h & 0x7fff;
    return a != 0 && ((h & 0x8000) == 0 || a > inf);
  } else {
    return o.keep(p[i]);
  }
}

// Backward loops that write their result with non-temporal stores once the op's
// bytes reach the last-level cache (stream_stores): those of the mask (relu,
// leaky_relu) and of the output (sigmoid, tanh, elu, selu), a few arithmetic
// operations per element, whose stores' read-for-ownership bounded them. gelu's and
// silu's (exp, erf of the input) do not: their cached stores drain under the math.
// Forward loops do not stream: a training forward's output is read again soon.
// (Measurements: docs/performance-log.md, "Streaming stores".)
template <class Op> constexpr bool kStreamsBackward = Op::saved == Saved::Output;

#ifdef FASTREG_HAVE_AVX512_BF16
// The 1-bit-mask loops of leaky_relu and relu for float16 and bfloat16 on AVX-512: the keep bits
// are the compare's mask register itself, stored as is (a __mmask16 of 16 elements
// starting at a multiple of 8 is two mask bytes in the mask's bit order), and read
// back as one. Through the generic mask loops (a keep byte per element, then a packing
// pass, or an unpacking pass and a byte per element) the forward with mask ran at half
// the speed of the forward without, and the backward at half of relu's raw-bit select
// (this project's Zen 4, 2^22 elements). Results are the functor's: kept x (or g) as
// is, else x * slope rounded once, NaN never kept; NaNs, and bfloat16 without
// AVX512_BF16, take the generic rounding (convert_simd.h).

// The elements [i, end) after the last whole 32-element block, a mask byte at a time
// (bits past `end` stay 0): put(j) writes element j's output and returns its keep bit.
template <class Put> FASTREG_HOST void mask_forward_tail(uint8_t* m, int64_t i, int64_t end,
                                                         const Put& put) {
  for (; i < end; i += 8) {
    uint8_t byte = 0;
    for (int64_t t = 0; t < 8 && i + t < end; ++t)
      byte = uint8_t(byte | (uint8_t(put(i + t)) << t));
    m[i / 8] = byte;
  }
}

// The scalar tails of the vector loops below (leaky_relu's and relu's forward with mask and
// backward from it), from element i, a multiple of 8, to end.
template <class T>
FASTREG_HOST void leaky_mask_forward_tail(const T* x, T* y, uint8_t* m, int64_t i, int64_t end,
                                          float slope) {
  mask_forward_tail(m, i, end, [&](int64_t j) {
    const float v = load(x, j);
    store(y, j, v > 0.0f ? v : v * slope);
    return v > 0.0f;
  });
}
template <class T>
FASTREG_HOST void leaky_mask_backward_tail(const T* g, const uint8_t* m, T* dx, int64_t i,
                                           int64_t end, float slope) {
  for (; i < end; ++i) {
    const float v = load(g, i);
    store(dx, i, (m[i / 8] >> (i % 8)) & 1 ? v : v * slope);
  }
}
template <class T> FASTREG_HOST void relu_mask_forward_tail(const T* x, T* y, uint8_t* m, int64_t i,
                                                            int64_t end) {
  mask_forward_tail(m, i, end, [&](int64_t j) {
    const bool kept = relu_keep(Relu{}, x, j);
    raw(y)[j] = kept ? raw(x)[j] : uint16_t(0);
    return kept;
  });
}
template <class T> FASTREG_HOST void relu_mask_backward_tail(const T* g, const uint8_t* m, T* dx,
                                                             int64_t i, int64_t end) {
  for (; i < end; ++i) raw(dx)[i] = (m[i / 8] >> (i % 8)) & 1 ? raw(g)[i] : uint16_t(0);
}

// y[i .. end) and the mask bits of those elements; i a multiple of 8.
template <class T>
FASTREG_TARGET_AVX512 __attribute__((noinline)) void leaky_mask_forward512(const T* __restrict x,
                                                                           T* __restrict y,
                                                                           uint8_t* __restrict m,
                                                                           int64_t i, int64_t end,
                                                                           float slope) {
  const bool bf16i = bf16_convert();
  const __m512 s = _mm512_set1_ps(slope), zero = _mm512_setzero_ps();
  for (; i + 32 <= end; i += 32) {
    const __m512 a = load16(x + i), b = load16(x + i + 16);
    const __mmask16 ka = _mm512_cmp_ps_mask(a, zero, _CMP_GT_OQ),
                    kb = _mm512_cmp_ps_mask(b, zero, _CMP_GT_OQ);
    store16x2<false>(y + i, _mm512_mask_mul_ps(a, _knot_mask16(ka), a, s),
                     _mm512_mask_mul_ps(b, _knot_mask16(kb), b, s), bf16i);
    const uint32_t bits = uint32_t(ka) | (uint32_t(kb) << 16);
    std::memcpy(m + i / 8, &bits, 4);
  }
  leaky_mask_forward_tail(x, y, m, i, end, slope);
}

// dx[i .. end) from g and the mask; i a multiple of 8 (kStream: dx + i 64-byte aligned).
template <bool kStream, class T>
FASTREG_TARGET_AVX512 __attribute__((noinline)) void leaky_mask_backward512(
    const T* __restrict g, const uint8_t* __restrict m, T* __restrict dx, int64_t i, int64_t end,
    float slope) {
  const bool bf16i = bf16_convert();
  const __m512 s = _mm512_set1_ps(slope);
  for (; i + 32 <= end; i += 32) {
    uint32_t bits;
    std::memcpy(&bits, m + i / 8, 4);
    const __m512 a = load16(g + i), b = load16(g + i + 16);
    const __mmask16 da = __mmask16(~bits), db = __mmask16(~bits >> 16);  // dropped: times the slope
    store16x2<kStream>(dx + i, _mm512_mask_mul_ps(a, da, a, s), _mm512_mask_mul_ps(b, db, b, s),
                       bf16i);
  }
  leaky_mask_backward_tail(g, m, dx, i, end, slope);
}

// relu's for the 2-byte types: the keep test !(x <= 0) on the raw bits of 32 elements
// per vector (not +-0, and either the sign clear or a NaN: relu_keep's rule), the
// output and the gradient selected by the mask register (raw bits: NaN payloads pass).
template <class T> FASTREG_TARGET_AVX512 inline __attribute__((always_inline)) __mmask32
relu_keep32(__m512i h) {
  constexpr short inf = std::is_same_v<T, c10::Half> ? 0x7c00 : 0x7f80;
  const __m512i a = _mm512_and_si512(h, _mm512_set1_epi16(0x7fff));
  const __mmask32 nonzero = _mm512_test_epi16_mask(a, a);
  const __mmask32 positive = _mm512_testn_epi16_mask(h, _mm512_set1_epi16(short(0x8000)));
  const __mmask32 nan = _mm512_cmpgt_epu16_mask(a, _mm512_set1_epi16(inf));
  return nonzero & (positive | nan);
}

template <class T>
FASTREG_TARGET_AVX512 __attribute__((noinline)) void relu_mask_forward512(const T* __restrict x,
                                                                          T* __restrict y,
                                                                          uint8_t* __restrict m,
                                                                          int64_t i, int64_t end) {
  for (; i + 32 <= end; i += 32) {
    const __m512i h = _mm512_loadu_si512(x + i);
    const __mmask32 k = relu_keep32<T>(h);
    _mm512_storeu_si512(y + i, _mm512_maskz_mov_epi16(k, h));
    const uint32_t bits = k;
    std::memcpy(m + i / 8, &bits, 4);
  }
  relu_mask_forward_tail(x, y, m, i, end);
}

template <bool kStream, class T>
FASTREG_TARGET_AVX512 __attribute__((noinline)) void relu_mask_backward512(
    const T* __restrict g, const uint8_t* __restrict m, T* __restrict dx, int64_t i, int64_t end) {
  for (; i + 32 <= end; i += 32) {
    uint32_t bits;
    std::memcpy(&bits, m + i / 8, 4);
    line_store<kStream>(raw(dx + i),
                        _mm512_maskz_mov_epi16(__mmask32(bits), _mm512_loadu_si512(g + i)));
  }
  relu_mask_backward_tail(g, m, dx, i, end);
}

// The same four loops on AVX2 CPUs (no mask registers): the keep lanes of a compare
// become mask bits by movemask (8 float32 lanes are one mask byte; relu's 16-bit lanes are
// packed to bytes first), and mask bits become lanes again by a variable shift (bit k to
// lane k's sign, which blendv reads) or a test against one bit per 16-bit lane, instead of
// the generic loops' keep byte per element and packing pass.

// y[i .. end) and the mask bits of those elements; i a multiple of 8.
template <class T>
FASTREG_TARGET_AVX2 __attribute__((noinline)) void leaky_mask_forward_avx2(const T* __restrict x,
                                                                           T* __restrict y,
                                                                           uint8_t* __restrict m,
                                                                           int64_t i, int64_t end,
                                                                           float slope) {
  const __m256 s = _mm256_set1_ps(slope), zero = _mm256_setzero_ps();
  for (; i + 16 <= end; i += 16) {
    const __m256 a = load8(x + i), b = load8(x + i + 8);
    const __m256 ka = _mm256_cmp_ps(a, zero, _CMP_GT_OQ), kb = _mm256_cmp_ps(b, zero, _CMP_GT_OQ);
    store8x2(y + i, _mm256_blendv_ps(_mm256_mul_ps(a, s), a, ka),
             _mm256_blendv_ps(_mm256_mul_ps(b, s), b, kb));
    const uint16_t bits = uint16_t(_mm256_movemask_ps(ka) | (_mm256_movemask_ps(kb) << 8));
    std::memcpy(m + i / 8, &bits, 2);
  }
  leaky_mask_forward_tail(x, y, m, i, end, slope);
}

// Mask byte `byte` as 8 float32 lanes whose sign is its bit k (blendv's selector).
FASTREG_TARGET_AVX2 inline __attribute__((always_inline)) __m256 mask_byte_lanes(uint8_t byte) {
  const __m256i shift = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
  return _mm256_castsi256_ps(_mm256_sllv_epi32(_mm256_set1_epi32(byte), shift));
}

// (kStream: dx + i 64-byte aligned)
template <bool kStream, class T>
FASTREG_TARGET_AVX2 __attribute__((noinline)) void leaky_mask_backward_avx2(
    const T* __restrict g, const uint8_t* __restrict m, T* __restrict dx, int64_t i, int64_t end,
    float slope) {
  const __m256 s = _mm256_set1_ps(slope);
  for (; i + 16 <= end; i += 16) {
    const __m256 a = load8(g + i), b = load8(g + i + 8);
    store8x2<kStream>(dx + i, _mm256_blendv_ps(_mm256_mul_ps(a, s), a, mask_byte_lanes(m[i / 8])),
                      _mm256_blendv_ps(_mm256_mul_ps(b, s), b, mask_byte_lanes(m[i / 8 + 1])));
  }
  leaky_mask_backward_tail(g, m, dx, i, end, slope);
}

// relu_keep's rule on 16 raw 16-bit lanes: all ones where kept.
template <class T> FASTREG_TARGET_AVX2 inline __attribute__((always_inline)) __m256i
relu_keep16(__m256i h) {
  constexpr short inf = std::is_same_v<T, c10::Half> ? 0x7c00 : 0x7f80;
  const __m256i a = _mm256_and_si256(h, _mm256_set1_epi16(0x7fff));
  const __m256i zero = _mm256_cmpeq_epi16(a, _mm256_setzero_si256());
  const __m256i positive = _mm256_cmpgt_epi16(h, _mm256_set1_epi16(-1));
  const __m256i nan = _mm256_cmpgt_epi16(a, _mm256_set1_epi16(inf));
  return _mm256_andnot_si256(zero, _mm256_or_si256(positive, nan));
}

template <class T>
FASTREG_TARGET_AVX2 __attribute__((noinline)) void relu_mask_forward_avx2(const T* __restrict x,
                                                                          T* __restrict y,
                                                                          uint8_t* __restrict m,
                                                                          int64_t i, int64_t end) {
  for (; i + 32 <= end; i += 32) {
    const __m256i h0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    const __m256i h1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 16));
    const __m256i k0 = relu_keep16<T>(h0), k1 = relu_keep16<T>(h1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), _mm256_and_si256(h0, k0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i + 16), _mm256_and_si256(h1, k1));
    // bytes k0 0-7, k1 0-7 | k0 8-15, k1 8-15 -> element order, then one bit per byte
    const __m256i bytes = _mm256_permute4x64_epi64(_mm256_packs_epi16(k0, k1), 0xd8);
    const uint32_t bits = uint32_t(_mm256_movemask_epi8(bytes));
    std::memcpy(m + i / 8, &bits, 4);
  }
  relu_mask_forward_tail(x, y, m, i, end);
}

template <bool kStream, class T>
FASTREG_TARGET_AVX2 __attribute__((noinline)) void relu_mask_backward_avx2(
    const T* __restrict g, const uint8_t* __restrict m, T* __restrict dx, int64_t i, int64_t end) {
  const __m256i bit = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
                                        8192, 16384, short(0x8000));
  for (; i + 16 <= end; i += 16) {
    uint16_t bits;
    std::memcpy(&bits, m + i / 8, 2);
    const __m256i keep =
        _mm256_cmpeq_epi16(_mm256_and_si256(_mm256_set1_epi16(short(bits)), bit), bit);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + i));
    store256<kStream>(reinterpret_cast<__m256i*>(dx + i), _mm256_and_si256(v, keep));
  }
  relu_mask_backward_tail(g, m, dx, i, end);
}
#endif

// The 1-bit-mask ops with loops of their own for the half types (below); any other
// mask functor takes the generic loops.
template <class Op>
constexpr bool kHasHalfMaskLoops = std::is_same_v<Op, Relu> || std::is_same_v<Op, LeakyRelu>;

#ifdef FASTREG_HAVE_AVX512_BF16
// The half types' mask loops above of instruction set I (AVX-512 or AVX2) for Op, over the
// elements [i0, i1), i0 a multiple of 8 (kStream: dx + i0 64-byte aligned).
template <Isa I, class Op, class T>
FASTREG_HOST void mask_forward_isa(const Op& op, const T* x, T* y, uint8_t* m, int64_t i0,
                                   int64_t i1) {
  if constexpr (std::is_same_v<Op, LeakyRelu>) {
    const float slope = static_cast<float>(op.negative_slope);
    if constexpr (I >= Isa::Avx512)
      return leaky_mask_forward512(x, y, m, i0, i1, slope);
    else
      return leaky_mask_forward_avx2(x, y, m, i0, i1, slope);
  } else {
    static_assert(std::is_same_v<Op, Relu>, "the 1-bit-mask ops: relu, leaky_relu");
    if constexpr (I >= Isa::Avx512)
      return relu_mask_forward512(x, y, m, i0, i1);
    else
      return relu_mask_forward_avx2(x, y, m, i0, i1);
  }
}
template <Isa I, bool kStream, class Op, class T>
FASTREG_HOST void mask_backward_isa(const Op& op, const T* g, const uint8_t* m, T* dx, int64_t i0,
                                    int64_t i1) {
  if constexpr (std::is_same_v<Op, LeakyRelu>) {
    const float slope = static_cast<float>(op.negative_slope);
    if constexpr (I >= Isa::Avx512)
      return leaky_mask_backward512<kStream>(g, m, dx, i0, i1, slope);
    else
      return leaky_mask_backward_avx2<kStream>(g, m, dx, i0, i1, slope);
  } else {
    if constexpr (I >= Isa::Avx512)
      return relu_mask_backward512<kStream>(g, m, dx, i0, i1);
    else
      return relu_mask_backward_avx2<kStream>(g, m, dx, i0, i1);
  }
}
#endif

#ifdef FASTREG_HAVE_AVX512_BF16
// PReLU's backward over the first 16k of a row's n elements for the 2-byte types on AVX2,
// by intrinsics (Prelu's formulas as selects: blend g or w * g, and g * x or +0 into the
// 16 running sums `lane`, element i + k into lane k as the generic loop adds them); returns
// where it stopped. GCC left the generic loop scalar, with branches, there.
// A, the accumulator type, is float for the 2-byte types.
template <class T, class A>
FASTREG_TARGET_AVX2 __attribute__((noinline)) int64_t prelu_backward_row_avx2(const T* __restrict g,
                                                                              const T* __restrict x,
                                                                              T* __restrict dx,
                                                                              int64_t n, A w,
                                                                              A* __restrict lane) {
  static_assert(std::is_same_v<A, float>, "the 2-byte types accumulate in float");
  const __m256 ws = _mm256_set1_ps(w), zero = _mm256_setzero_ps();
  __m256 lo = _mm256_loadu_ps(lane), hi = _mm256_loadu_ps(lane + 8);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 ga = load8(g + i), gb = load8(g + i + 8), xa = load8(x + i), xb = load8(x + i + 8);
    const __m256 pa = _mm256_cmp_ps(xa, zero, _CMP_GT_OQ), pb = _mm256_cmp_ps(xb, zero, _CMP_GT_OQ);
    store8x2(dx + i, _mm256_blendv_ps(_mm256_mul_ps(ws, ga), ga, pa),
             _mm256_blendv_ps(_mm256_mul_ps(ws, gb), gb, pb));
    lo = _mm256_add_ps(lo, _mm256_andnot_ps(pa, _mm256_mul_ps(ga, xa)));
    hi = _mm256_add_ps(hi, _mm256_andnot_ps(pb, _mm256_mul_ps(gb, xb)));
  }
  _mm256_storeu_ps(lane, lo);
  _mm256_storeu_ps(lane + 8, hi);
  return i;
}
#endif

struct CpuLoops {
  template <class Op>
  static void forward(const Op& op, const at::Tensor& x, at::Tensor& y) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_act", [&] {
      const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
      scalar_t* __restrict yp = y.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
        run_isa<Op::saved == Saved::Mask && kNarrowSelect<scalar_t>>(
            [&](auto isa) FASTREG_INLINE_LAMBDA {
              // local copies: parameters and pointers in registers, not re-read per element
              const Op o = op;
              const scalar_t* __restrict x_ = xp;
              scalar_t* __restrict y_ = yp;
              if constexpr (kForwardSelectsRaw<Op, scalar_t>) {
                const raw_t<scalar_t>* __restrict xr = raw(x_);
                raw_t<scalar_t>* __restrict yr = raw(y_);
                for (int64_t i = begin; i < end; ++i)
                  yr[i] = relu_keep(o, x_, i) ? xr[i] : raw_t<scalar_t>(0);
              } else {
                map1(isa, y_, x_, begin, end,
                     [&](int64_t, auto v) FASTREG_INLINE_LAMBDA { return o.forward(v); });
              }
            });
      });
    });
  }

  template <class Op>
  static void backward(const Op& op, const at::Tensor& g, const at::Tensor& s, at::Tensor& dx) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, g.scalar_type(), "fastreg_act_bwd", [&] {
          const scalar_t* __restrict gp = g.const_data_ptr<scalar_t>();
          const scalar_t* __restrict sp = s.const_data_ptr<scalar_t>();
          scalar_t* __restrict dp = dx.mutable_data_ptr<scalar_t>();
          const bool stream = kStreamsBackward<Op> && stream_stores(3 * g.nbytes());
          at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
            run_isa([&](auto isa) FASTREG_INLINE_LAMBDA {
              const Op o = op;
              const scalar_t* __restrict g_ = gp;
              const scalar_t* __restrict s_ = sp;
              scalar_t* __restrict d_ = dp;
              map2(
                  isa, d_, g_, s_, begin, end,
                  [&](int64_t, auto gv, auto sv)
                      FASTREG_INLINE_LAMBDA { return o.backward(gv, sv); },
                  stream);
            });
            if (stream) store_fence();
          });
        });
  }

  // Chunks of kMaskChunk elements (whole mask bytes: threads never share one);
  // in each, one vectorized loop computes outputs and a byte per element, a
  // second packs the bytes into bits.
  static constexpr int64_t kMaskChunk = 256;

  template <class Op>
  static void forward_mask(const Op& op, const at::Tensor& x, at::Tensor& y, uint8_t* mask) {
    const int64_t n = x.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_act_mask", [&] {
          if (mask == nullptr) {
            forward(op, x, y);
            return;
          }
          const scalar_t* xp = x.const_data_ptr<scalar_t>();
          scalar_t* yp = y.mutable_data_ptr<scalar_t>();
          const int64_t chunks = (n + kMaskChunk - 1) / kMaskChunk;
          at::parallel_for(0, chunks, kGrain / kMaskChunk, [&](int64_t c0, int64_t c1) {
            run_isa<kNarrowSelect<scalar_t>>([&](auto isa) FASTREG_INLINE_LAMBDA {
#ifdef FASTREG_HAVE_AVX512_BF16
              if constexpr (kTwoByte<scalar_t> && decltype(isa)::isa >= Isa::Avx2 &&
                            kHasHalfMaskLoops<Op>) {
                const int64_t i0 = c0 * kMaskChunk, i1 = std::min(n, c1 * kMaskChunk);
                return mask_forward_isa<decltype(isa)::isa>(op, xp, yp, mask, i0, i1);
              }
#endif
              const Op o = op;
              const scalar_t* __restrict x_ = xp;
              scalar_t* __restrict y_ = yp;
              uint8_t* __restrict m_ = mask;
              alignas(64) uint8_t bits[kMaskChunk];
              for (int64_t ch = c0; ch < c1; ++ch) {
                const int64_t i0 = ch * kMaskChunk, len = std::min(kMaskChunk, n - i0);
                if constexpr (kForwardSelectsRaw<Op, scalar_t>) {
                  const raw_t<scalar_t>* __restrict xr = raw(x_) + i0;
                  raw_t<scalar_t>* __restrict yr = raw(y_) + i0;
                  for (int64_t k = 0; k < len; ++k) {
                    const bool kp = relu_keep(o, x_, i0 + k);
                    yr[k] = kp ? xr[k] : raw_t<scalar_t>(0);
                    bits[k] = kp;
                  }
                } else {
                  map1<true>(isa, y_ + i0, x_ + i0, 0, len,
                             [&](int64_t k, auto v) FASTREG_INLINE_LAMBDA {
                               bits[k] = o.keep(v);
                               return o.forward(v);
                             });
                }
                for (int64_t k = len; k < kMaskChunk; ++k) bits[k] = 0;
                for (int64_t q = 0; q < (len + 7) / 8; ++q) {
                  m_[i0 / 8 + q] = pack_bits8(bits + 8 * q);
                }
              }
            });
          });
        });
  }

  template <class Op>
  static void backward_mask(const Op& op, const at::Tensor& g, const uint8_t* mask,
                            at::Tensor& dx) {
    const int64_t n = g.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, g.scalar_type(), "fastreg_act_mask_bwd", [&] {
          const scalar_t* gp = g.const_data_ptr<scalar_t>();
          scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
          const int64_t chunks = (n + kMaskChunk - 1) / kMaskChunk;
          const bool stream = stream_stores(2 * g.nbytes());
          at::parallel_for(0, chunks, kGrain / kMaskChunk, [&](int64_t c0, int64_t c1) {
            run_isa<kNarrowSelect<scalar_t>>([&](auto isa) FASTREG_INLINE_LAMBDA {
#ifdef FASTREG_HAVE_AVX512_BF16
              if constexpr (kTwoByte<scalar_t> && decltype(isa)::isa >= Isa::Avx2 &&
                            kHasHalfMaskLoops<Op>) {
                constexpr Isa I = decltype(isa)::isa;
                const int64_t i0 = c0 * kMaskChunk, i1 = std::min(n, c1 * kMaskChunk);
                if (stream && reinterpret_cast<uintptr_t>(dp + i0) % 64 == 0) {
                  return mask_backward_isa<I, true>(op, gp, mask, dp, i0, i1);
                }
                return mask_backward_isa<I, false>(op, gp, mask, dp, i0, i1);
              }
#endif
              const Op o = op;
              const scalar_t* __restrict g_ = gp;
              const uint8_t* __restrict m_ = mask;
              scalar_t* __restrict d_ = dp;
              alignas(64) uint8_t bits[kMaskChunk];
              for (int64_t ch = c0; ch < c1; ++ch) {
                const int64_t i0 = ch * kMaskChunk, len = std::min(kMaskChunk, n - i0);
                unpack_bits8(m_ + i0 / 8, (len + 7) / 8, bits);
                if constexpr (kSelectsInput<Op>) {
                  const raw_t<scalar_t>* __restrict gr = raw(g_) + i0;
                  map_store<true>(
                      isa, raw(d_) + i0, 0, len,
                      [&](int64_t k) FASTREG_INLINE_LAMBDA {
                        const raw_t<scalar_t> v = gr[k];  // loaded unconditionally: no masked load
                        return bits[k] != 0 ? v : raw_t<scalar_t>(0);
                      },
                      stream);
                } else {
                  map1<true>(
                      isa, d_ + i0, g_ + i0, 0, len,
                      [&](int64_t k, auto gv)
                          FASTREG_INLINE_LAMBDA { return o.backward(gv, bits[k] != 0); },
                      stream);
                }
              }
            });
            if (stream) store_fence();
          });
        });
  }

  // Memory is [outer][C][inner]; tasks take whole (outer, c) rows of `inner`
  // elements, or, when rows are short (channels_last), whole outer slices.
  static void prelu_forward(const at::Tensor& x, const at::Tensor& w, at::Tensor& y,
                            PreluShape shape) {
    const int64_t C = shape.channels, inner = shape.inner, rows = x.numel() / inner;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_prelu", [&] {
          const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
          const scalar_t* __restrict wp = w.const_data_ptr<scalar_t>();
          scalar_t* __restrict yp = y.mutable_data_ptr<scalar_t>();
          const Prelu op;
          at::parallel_for(
              0, rows, std::max<int64_t>(1, kGrain / inner), [&](int64_t r0, int64_t r1) {
                run_isa<kNarrowSelect<scalar_t>>([&](auto isa) FASTREG_INLINE_LAMBDA {
                  for (int64_t r = r0, c = r0 % C; r < r1; ++r, c = c + 1 == C ? 0 : c + 1) {
                    const auto wc = load(wp, c);
                    const int64_t base = r * inner;
                    map1(isa, yp + base, xp + base, 0, inner,
                         [&](int64_t, auto v) FASTREG_INLINE_LAMBDA { return op.forward(v, wc); });
                  }
                });
              });
        });
  }

  // grad_weight is reduced here: per-task partial sums per channel, then one
  // small sum over tasks (deterministic: task boundaries depend only on sizes).
  static void prelu_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w,
                             at::Tensor& dx, at::Tensor& dw, PreluShape shape) {
    const int64_t C = shape.channels, inner = shape.inner, rows = x.numel() / inner;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "fastreg_prelu_bwd", [&] {
          using acc_t = opmath_t<scalar_t>;
          const scalar_t* __restrict gp = g.const_data_ptr<scalar_t>();
          const scalar_t* __restrict xp = x.const_data_ptr<scalar_t>();
          const scalar_t* __restrict wp = w.const_data_ptr<scalar_t>();
          scalar_t* __restrict dp = dx.mutable_data_ptr<scalar_t>();
          const Prelu op;
          const int64_t grain = std::max<int64_t>(1, kGrain / inner);
          const int64_t tasks = (rows + grain - 1) / grain;
          std::vector<acc_t> partial(static_cast<size_t>(tasks * C), acc_t(0));
          at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
              acc_t* __restrict part = partial.data() + t * C;
              const int64_t r1 = std::min(rows, (t + 1) * grain);
              run_isa<kNarrowSelect<scalar_t>>([&](auto isa) FASTREG_INLINE_LAMBDA {
                for (int64_t r = t * grain, c = r % C; r < r1; ++r, c = c + 1 == C ? 0 : c + 1) {
                  const int64_t base = r * inner;
                  const acc_t wc = load(wp, c);
                  // 16 running sums: a single one would serialize on the add latency.
                  acc_t lane[16] = {};
                  int64_t i = 0;
#ifdef FASTREG_HAVE_AVX512_BF16
                  if constexpr (kTwoByte<scalar_t> && decltype(isa)::isa == Isa::Avx2) {
                    if (inner >= 16)
                      i = prelu_backward_row_avx2(gp + base, xp + base, dp + base, inner, wc, lane);
                  }
#endif
                  for (; i + 16 <= inner; i += 16) {
                    for (int k = 0; k < 16; ++k) {
                      const acc_t gi = load(gp, base + i + k), xi = load(xp, base + i + k);
                      store(dp, base + i + k, op.grad_input(gi, xi, wc));
                      lane[k] += op.grad_weight(gi, xi);
                    }
                  }
                  acc_t sum = 0;
                  for (; i < inner; ++i) {
                    const acc_t gi = load(gp, base + i), xi = load(xp, base + i);
                    store(dp, base + i, op.grad_input(gi, xi, wc));
                    sum += op.grad_weight(gi, xi);
                  }
                  for (int k = 0; k < 16; ++k) sum += lane[k];
                  part[c] += sum;
                }
              });
            }
          });
          sum_partials(partial.data(), tasks, C, dw.mutable_data_ptr<scalar_t>());
        });
  }
};

}  // namespace
}  // namespace fastreg::cpu

TORCH_LIBRARY_IMPL(fastreg, CPU, m) {
  fastreg::register_activation_kernels<fastreg::cpu::CpuLoops>(m);
}
