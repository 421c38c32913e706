// CPU kernels of the batch family: per-sample boxes (Cutout, random erasing),
// Mixup/CutMix draws, the pairwise mixing pass and the soft targets. Per-sample
// draws come from csrc/sampling.h, the same functions the CUDA kernels call.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "../batch_ops.h"
#include "../errors.h"
#include "../sampling.h"
#include "cpu_kernel.h"

namespace fastreg::cpu {
namespace {

// The key of a seed tensor's first element (a shard of samples' seed is [seed, first]).
philox::Key seed_key(const at::Tensor& seed) {
  return philox::key_schedule(static_cast<uint64_t>(seed.const_data_ptr<int64_t>()[0]));
}

using sampling::kBlend;
using sampling::kOwn;
using sampling::kPartner;
using sampling::MixMember;
using Mode = sampling::MixMode;

// Calls segment(s0, s1, mode_i, mode_p) over rows [r0, r1) of a pair's samples (element
// offsets in a sample): rows that no box crosses form one flat segment, the others are split
// at the box columns.
template <class F>
FASTREG_HOST void for_mix_segments(const MixMember& mi, const MixMember& mp, int64_t r0, int64_t r1,
                                   int64_t H, const RowLayout& L, F&& segment) {
  int64_t flat0 = r0;
  for (int64_t r = r0; r <= r1; ++r) {
    const int64_t y = r % H;
    const bool boxed = r < r1 && (mi.cuts_row(y) || mp.cuts_row(y));
    if (r < r1 && !boxed) continue;
    segment(flat0 * L.row_len, r * L.row_len, mi.base(), mp.base());
    flat0 = r + 1;
    if (r == r1) break;
    const int64_t base = r * L.row_len;
    int64_t cuts[6] = {0, L.row_len, 0, 0, 0, 0};
    int nc = 2;
    for (const MixMember* m : {&mi, &mp})
      if (m->cuts_row(y)) {
        cuts[nc++] = m->x0 * L.sw;
        cuts[nc++] = m->x1 * L.sw;
      }
    for (int u = 1; u < nc; ++u)  // insertion sort of at most 6 boundaries
      for (int v = u; v > 0 && cuts[v - 1] > cuts[v]; --v) std::swap(cuts[v - 1], cuts[v]);
    for (int k = 0; k + 1 < nc; ++k)
      segment(base + cuts[k], base + cuts[k + 1], mi.mode_at(y, cuts[k], L.sw),
              mp.mode_at(y, cuts[k], L.sw));
  }
}

struct CpuLoops {
  static at::Tensor sample_beta(const at::Tensor& seed, int64_t n, double a, double b,
                                int64_t stream) {
    at::Tensor out = at::empty({n}, seed.options().dtype(at::kDouble));
    const philox::Key key = seed_key(seed);
    double* o = out.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i)
      o[i] = sampling::beta(key, static_cast<uint32_t>(stream), static_cast<uint32_t>(i),
                            static_cast<float>(a), static_cast<float>(b));
    return out;
  }

  // Writes every sample's box, on every channel, through the strides (any
  // layout); nothing else is touched. `random`: element (b, c, y, x) gets the
  // standard normal of its memory offset (images are dense then). A seed [seed, first]
  // draws for samples first + b (and offsets + first * sB) of a larger batch.
  static void fill_boxes(at::Tensor& images, const at::Tensor& seed, const sampling::BoxRule& rule,
                         double fill, bool random) {
    const int64_t B = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
    const int64_t sB = images.stride(0), sC = images.stride(1), sH = images.stride(2),
                  sW = images.stride(3);
    const philox::Key key = seed_key(seed);
    const int64_t first = seed.numel() > 1 ? seed.const_data_ptr<int64_t>()[1] : 0;
    AT_DISPATCH_FLOATING_TYPES_AND3(
        at::kHalf, at::kBFloat16, at::kByte, images.scalar_type(), "fastreg_boxes", [&] {
          scalar_t* base = images.mutable_data_ptr<scalar_t>();
          const scalar_t value = static_cast<scalar_t>(fill);
          at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b) {
              const sampling::Box box = rule(key, static_cast<uint32_t>(first + b), H, W);
              if (!box.apply) continue;
              for (int64_t c = 0; c < C; ++c)
                for (int64_t y = box.y0; y < box.y1; ++y)
                  for (int64_t x = box.x0; x < box.x1; ++x) {
                    const int64_t off = b * sB + c * sC + y * sH + x * sW;
                    if (random) {
                      base[off] = static_cast<scalar_t>(sampling::normal_at(
                          key, philox::kStreamEraseValue, static_cast<uint64_t>(off + first * sB)));
                    } else {
                      base[off] = value;
                    }
                  }
            }
          });
        });
  }

  static at::Tensor mix_params(const at::Tensor& seed, int64_t B, int mode,
                               const sampling::MixSpec& spec) {
    at::Tensor params = at::empty({B, sampling::kMixParamCols}, seed.options().dtype(at::kDouble));
    const philox::Key key = seed_key(seed);
    double* p = params.data_ptr<double>();
    for (int64_t i = 0; i < B; ++i) {
      const uint32_t k = sampling::mix_key_index(mode, i, B);
      if (i > 0 && k == sampling::mix_key_index(mode, i - 1, B)) {  // batch mode: one draw
        std::memcpy(p + i * sampling::kMixParamCols, p + (i - 1) * sampling::kMixParamCols,
                    sizeof(double) * sampling::kMixParamCols);
        continue;
      }
      sampling::store_mix(p + i * sampling::kMixParamCols, sampling::mix_draw(key, k, spec));
    }
    return params;
  }

  // soft[i] = lam_i * smooth(y_i) + (1 - lam_i) * smooth(y_{B-1-i}), lam_i the
  // target lambda; smooth: one-hot with on = 1 - eps + eps/K, off = eps/K, or
  // probabilities p * (1 - eps) + eps/K.
  static at::Tensor mix_targets(const at::Tensor& target, const at::Tensor& params, int64_t K,
                                double eps) {
    const int64_t B = target.size(0);
    const double* prm = params.const_data_ptr<double>();
    if (target.dim() == 1) {
      const at::Tensor t = target.contiguous();
      const int64_t* ti = t.const_data_ptr<int64_t>();
      for (int64_t i = 0; i < B; ++i)
        FASTREG_CHECK_VALUE(ti[i] >= 0 && ti[i] < K, "fastreg.mixup: target holds class index ",
                            ti[i], " at position ", i, ", outside [0, num_classes=", K, ")");
      at::Tensor soft = at::empty({B, K}, target.options().dtype(at::kFloat));
      float* s = soft.mutable_data_ptr<float>();
      const float off = static_cast<float>(eps / K), on = static_cast<float>(1.0 - eps + eps / K);
      at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
        for (int64_t i = b0; i < b1; ++i) {
          const double lam = prm[i * sampling::kMixParamCols + 1];
          const float l = static_cast<float>(lam), r = static_cast<float>(1.0 - lam);
          const int64_t a = ti[i], b = ti[B - 1 - i];
          for (int64_t k = 0; k < K; ++k) {
            const float ya = k == a ? on : off, yb = k == b ? on : off;
            s[i * K + k] = ya * l + yb * r;
          }
        }
      });
      return soft;
    }
    const at::Tensor t = target.contiguous();
    at::Tensor soft = at::empty({B, K}, t.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, t.scalar_type(), "fastreg_mix_targets", [&] {
          using A = opmath_t<scalar_t>;
          const scalar_t* tp = t.const_data_ptr<scalar_t>();
          scalar_t* s = soft.mutable_data_ptr<scalar_t>();
          const A keep = static_cast<A>(1.0 - eps), off = static_cast<A>(eps / K);
          at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
            for (int64_t i = b0; i < b1; ++i) {
              const double lam = prm[i * sampling::kMixParamCols + 1];
              const A l = static_cast<A>(lam), r = static_cast<A>(1.0 - lam);
              const scalar_t* ya = tp + i * K;
              const scalar_t* yb = tp + (B - 1 - i) * K;
              for (int64_t k = 0; k < K; ++k) {
                const A a = load(ya, k) * keep + off, b = load(yb, k) * keep + off;
                store(s + i * K, k, a * l + b * r);
              }
            }
          });
        });
    return soft;
  }

  static std::pair<at::Tensor, at::Tensor> mix_draw(const at::Tensor& seed,
                                                    const at::Tensor& target, int mode,
                                                    const sampling::MixSpec& spec, int64_t K,
                                                    double eps) {
    at::Tensor params = mix_params(seed, target.size(0), mode, spec);
    return {params, mix_targets(target, params, K, eps)};
  }

  // Forward: dst_i = own x_i, the partner's x_p, or lam_i x_i + (1 - lam_i) x_p per
  // element (Mode); pairs (i, B-1-i) are read together and written together, so
  // dst may be src (in place: elements whose mode is kOwn are not written).
  // Backward (dst = grad of the images): g'_i = own_i g_i + partner_p g_p, with
  // own / partner the coefficients (1, 0), (0, 1) or (lam, 1 - lam) of each mode.
  static void mix_images(const at::Tensor& src, at::Tensor& dst, const at::Tensor& params,
                         const RowLayout& L, bool inplace, bool backward) {
    const int64_t B = src.size(0), H = src.size(2), W = src.size(3);
    const int64_t pairs = (B + 1) / 2;
    const double* prm = params.const_data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, src.scalar_type(), "fastreg_mix_images", [&] {
          using T = scalar_t;
          using A = opmath_t<T>;
          const T* sp = src.const_data_ptr<T>();
          T* dp = dst.mutable_data_ptr<T>();
          // a task: one pair, a block of whole rows (rows are contiguous: row r at r * row_len)
          const int64_t rows = L.planes * L.rows;
          const int64_t rows_per_task =
              std::max<int64_t>(1, kGrain / 8 / std::max<int64_t>(1, L.row_len));
          const int64_t blocks = (rows + rows_per_task - 1) / rows_per_task;
          at::parallel_for(0, pairs * blocks, 1, [&](int64_t t0, int64_t t1) {
            run_isa([&](auto) FASTREG_INLINE_LAMBDA {
              constexpr int64_t kBuf = 1024;
              alignas(64) T ta[kBuf];
              alignas(64) T tb[kBuf];
              for (int64_t task = t0; task < t1; ++task) {
                const int64_t q = task / blocks, r0 = (task % blocks) * rows_per_task;
                const int64_t r1 = std::min(rows, r0 + rows_per_task);
                const int64_t i = q, p = B - 1 - q;
                const bool self = i == p;
                const MixMember mi = MixMember::from_row(prm + i * sampling::kMixParamCols, H, W);
                const MixMember mp = MixMember::from_row(prm + p * sampling::kMixParamCols, H, W);
                if (inplace && mi.kind == sampling::kMixNone && mp.kind == sampling::kMixNone)
                  continue;
                const T* a = sp + i * L.sample;
                const T* b = sp + p * L.sample;
                T* oa = dp + i * L.sample;
                T* ob = dp + p * L.sample;
                // [s0, s1) of the sample with constant modes: forward out_i = own x_i + par x_p;
                // backward pairs own_i with partner_p (the transpose)
                auto segment = [&](int64_t s0, int64_t s1, Mode ma, Mode mb) FASTREG_INLINE_LAMBDA {
                  if (s1 <= s0 || (!backward && inplace && ma == kOwn && (self || mb == kOwn)))
                    return;
                  const A li = A(mi.lam), ri = A(mi.rest()), lp = A(mp.lam), rp = A(mp.rest());
                  const A a_own = sampling::own_coef(ma, li), b_own = sampling::own_coef(mb, lp);
                  const A a_par =
                      backward ? sampling::partner_coef(mb, rp) : sampling::partner_coef(ma, ri);
                  const A b_par =
                      backward ? sampling::partner_coef(ma, ri) : sampling::partner_coef(mb, rp);
                  for (int64_t c0 = s0; c0 < s1; c0 += kBuf) {
                    const int64_t n = std::min(kBuf, s1 - c0);
                    std::memcpy(ta, a + c0, n * sizeof(T));
                    std::memcpy(tb, b + c0, n * sizeof(T));
                    emit(ta, tb, oa + c0, n, backward ? kBlend : ma, a_own, a_par, inplace);
                    if (!self)
                      emit(tb, ta, ob + c0, n, backward ? kBlend : mb, b_own, b_par, inplace);
                  }
                };
                for_mix_segments(mi, mp, r0, r1, H, L, segment);
              }
            });
          });
        });
  }

  template <class T, class A>
  FASTREG_HOST static void emit(const T* own, const T* par, T* out, int64_t n, Mode m, A c_own,
                                A c_par, bool inplace) {
    if (m == kOwn) {
      if (!inplace) std::memcpy(out, own, n * sizeof(T));
    } else if (m == kPartner) {
      std::memcpy(out, par, n * sizeof(T));
    } else {
      for (int64_t k = 0; k < n; ++k) store(out, k, load(own, k) * c_own + load(par, k) * c_par);
    }
  }
};

}  // namespace
}  // namespace fastreg::cpu

TORCH_LIBRARY_IMPL(fastreg, CPU, m) { fastreg::register_batch_kernels<fastreg::cpu::CpuLoops>(m); }
