// The one source of activation math: a functor per activation with its forward
// and backward formula, shared by the CPU and CUDA kernels. Functors compute in
// the op's "opmath" type (float for float16/bfloat16/float32, double for
// float64); the kernels convert on load and store.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FASTREG_HD __host__ __device__ __forceinline__
#else
#define FASTREG_HD inline __attribute__((always_inline))
#endif
// Host-only helpers (the CPU kernels' float math).
#define FASTREG_HOST inline __attribute__((always_inline))

namespace fastreg {

// The type kernels compute in: float for the half types, else the type itself.
template <class T> struct Opmath { using type = T; };
template <> struct Opmath<c10::Half> { using type = float; };
template <> struct Opmath<c10::BFloat16> { using type = float; };
template <class T> using opmath_t = typename Opmath<T>::type;

// What an activation's backward needs from its forward (docs/design.md, memory).
enum class Saved { Input, Output, Mask };

namespace math {

// Host float math is written branch-free so that GCC vectorizes the kernel
// loops (libm calls would keep them scalar); device code uses CUDA's libdevice.
FASTREG_HOST float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
FASTREG_HOST uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// exp for float on the host: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2,
// degree-7 Taylor polynomial (truncation < 1e-8 relative), then 2^n applied as
// two factors so that overflow to inf and gradual underflow are both right.
FASTREG_HOST float exp_host(float x) {
  // Ternaries, not fmin/fmax: those have NaN rules that block vectorization.
  float xc = x < -104.0f ? -104.0f : x;
  xc = xc > 88.8f ? 88.8f : xc;
  const float n = __builtin_rintf(xc * 1.44269504088896341f);
  float r = std::fma(n, -0.693145751953125f, xc);
  r = std::fma(n, -1.428606765330187045e-06f, r);
  float p = 1.0f / 5040.0f;
  p = std::fma(p, r, 1.0f / 720.0f);
  p = std::fma(p, r, 1.0f / 120.0f);
  p = std::fma(p, r, 1.0f / 24.0f);
  p = std::fma(p, r, 1.0f / 6.0f);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t half = ni >> 1;  // n in [-150, 128]: both factors are normal floats
  const float s1 = bits_to_float(static_cast<uint32_t>(half + 127) << 23);
  const float s2 = bits_to_float(static_cast<uint32_t>(ni - half + 127) << 23);
  const float y = p * s1 * s2;
  return x != x ? x : y;  // NaN in, NaN out
}

// expm1 for float on the host: a Taylor polynomial where exp(x) - 1 would
// cancel (|x| < 0.5), else exp(x) - 1.
FASTREG_HOST float expm1_host(float x) {
  float p = 1.0f / 362880.0f;
  p = std::fma(p, x, 1.0f / 40320.0f);
  p = std::fma(p, x, 1.0f / 5040.0f);
  p = std::fma(p, x, 1.0f / 720.0f);
  p = std::fma(p, x, 1.0f / 120.0f);
  p = std::fma(p, x, 1.0f / 24.0f);
  p = std::fma(p, x, 1.0f / 6.0f);
  p = std::fma(p, x, 0.5f);
  p = std::fma(p, x, 1.0f);
  const float small = p * x;
  const float large = exp_host(x) - 1.0f;
  return std::fabs(x) < 0.5f ? small : large;
}

// tanh(|x|) = -expm1(-2|x|) / (2 + expm1(-2|x|)), sign restored.
FASTREG_HOST float tanh_host(float x) {
  const float e = expm1_host(-2.0f * std::fabs(x));
  return std::copysign(-e / (2.0f + e), x);
}

// erf for float on the host: Abramowitz & Stegun 7.1.28,
// erf(a) = 1 - (1 + a1 a + ... + a6 a^6)^-16 for a >= 0, absolute error < 3e-7
// (7.1.26, ATen's CPU formula, is < 1.5e-7 but needs an exp as well as a
// division: this form is a third of the work, which bounds GELU on the CPU).
FASTREG_HOST float erf_host(float x) {
  const float a = std::fabs(x);
  float p = 0.0000430638f;
  p = std::fma(p, a, 0.0002765672f);
  p = std::fma(p, a, 0.0001520143f);
  p = std::fma(p, a, 0.0092705272f);
  p = std::fma(p, a, 0.0422820123f);
  p = std::fma(p, a, 0.0705230784f);
  float q = std::fma(p, a, 1.0f);
  q = q * q;  // ^2
  q = q * q;  // ^4
  q = q * q;  // ^8
  q = q * q;  // ^16 (inf for large a: the result is then exactly 1)
  return std::copysign(1.0f - 1.0f / q, x);
}

#if defined(__CUDA_ARCH__)
FASTREG_HD float exp(float x) { return ::expf(x); }
FASTREG_HD float expm1(float x) { return ::expm1f(x); }
FASTREG_HD float tanh(float x) { return ::tanhf(x); }
FASTREG_HD float erf(float x) { return ::erff(x); }
#else
FASTREG_HD float exp(float x) { return exp_host(x); }
FASTREG_HD float expm1(float x) { return expm1_host(x); }
FASTREG_HD float tanh(float x) { return tanh_host(x); }
FASTREG_HD float erf(float x) { return erf_host(x); }
#endif
// a * b + c rounded once (1 - y * y loses the low bits of y * y near |y| = 1)
FASTREG_HD float fma(float a, float b, float c) { return fmaf(a, b, c); }
FASTREG_HD double fma(double a, double b, double c) { return ::fma(a, b, c); }
FASTREG_HD double exp(double x) { return ::exp(x); }
FASTREG_HD double expm1(double x) { return ::expm1(x); }
FASTREG_HD double tanh(double x) { return ::tanh(x); }
FASTREG_HD double erf(double x) { return ::erf(x); }

// Math policies of the functors. Precise: the functions above (libdevice on
// the GPU, the host versions on the CPU) and IEEE division. Fast: what the
// CUDA kernels use for float16/bfloat16 storage, whose rounding (2^-11 and
// 2^-8 relative) hides errors of a few float32 ulps: the SFU's exp2 and
// reciprocal (ex2.approx, rcp.approx) instead of libdevice's range-reduced
// expf and the IEEE division's Newton steps and slow path. Errors against
// float64 (PTX's bounds for the approximations): exp 2 + 1.2 |x| ulp (results
// below 2^-126 flushed to zero), division 2 ulp, expm1 below 2e-6 relative:
// under a tenth of a float16 ulp; normcdf 8.1e-7 absolute, as the CPU's erf
// (GELU's far negative tail, x < -5 where Phi < 3e-7, is accurate only in
// absolute terms). tanh stays libdevice's. Both half types round once.
// float32 and float64 storage keep Precise; the CPU kernels always do.
// Every formula is host-device code, so the CPU tests evaluate the CUDA
// kernels' math (docs/accuracy.md): only the SFU instructions and libdevice
// calls below differ between the two.

// The functions Precise is built on: math:: above.
struct KernelLib {
  template <class T> static FASTREG_HD T exp(T x) { return math::exp(x); }
  template <class T> static FASTREG_HD T expm1(T x) { return math::expm1(x); }
  template <class T> static FASTREG_HD T tanh(T x) { return math::tanh(x); }
  template <class T> static FASTREG_HD T erf(T x) { return math::erf(x); }
};

template <class Lib>
struct PreciseWith {
  template <class T> static FASTREG_HD T exp(T x) { return Lib::exp(x); }
  template <class T> static FASTREG_HD T expm1(T x) { return Lib::expm1(x); }
  template <class T> static FASTREG_HD T tanh(T x) { return Lib::tanh(x); }
  // Phi(x) = P(N(0, 1) <= x) = (1 + erf(x / sqrt 2)) / 2 (GELU's erf form)
  template <class T> static FASTREG_HD T normcdf(T x) {
    return T(0.5) * (T(1) + Lib::erf(x * T(0.7071067811865476)));
  }
  template <class T> static FASTREG_HD T div(T a, T b) { return a / b; }
};
using Precise = PreciseWith<KernelLib>;

// The SFU's approximations. On the host (where only the accuracy tests call them)
// they are the correctly rounded float32 values with the same flushing of
// subnormal inputs and results: the GPU's differ from those by PTX's bounds above.
struct Sfu {
#if defined(__CUDA_ARCH__)
  static __device__ __forceinline__ float ex2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
  }
  static __device__ __forceinline__ float rcp(float b) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(b));
    return r;
  }
#else
  static constexpr float kMinNormal = 1.17549435e-38f;
  static inline float flush(float v) {
    return std::fabs(v) < kMinNormal ? std::copysign(0.0f, v) : v;
  }
  static inline float ex2(float x) {
    return flush(static_cast<float>(std::exp2(static_cast<double>(flush(x)))));
  }
  static inline float rcp(float b) {
    return flush(static_cast<float>(1.0 / static_cast<double>(flush(b))));
  }
#endif
};

struct Fast {
  // 2^(x log2 e) on the SFU, results below 2^-126 flushed to zero (__expf
  // without the flush adds a rescaling guard for them).
  static FASTREG_HD float exp(float x) { return Sfu::ex2(x * 1.4426950408889634f); }
  // Taylor polynomial of degree 6 where exp(x) - 1 cancels (|x| < 1/4:
  // truncation below 6e-8 relative), else exp(x) - 1 (below 2e-6 relative).
  static FASTREG_HD float expm1(float x) {
    float p = 1.0f / 720.0f;
    p = fmaf(p, x, 1.0f / 120.0f);
    p = fmaf(p, x, 1.0f / 24.0f);
    p = fmaf(p, x, 1.0f / 6.0f);
    p = fmaf(p, x, 0.5f);
    p = fmaf(p, x, 1.0f);
    const float small = p * x;
    const float large = exp(x) - 1.0f;
    return fabsf(x) < 0.25f ? small : large;
  }
  // libdevice's tanhf is already cheaper than an expm1-based form here.
  static FASTREG_HD float tanh(float x) { return tanhf(x); }
  // Phi(x) from Abramowitz & Stegun 7.1.28 (as erf_host) with |x| / sqrt 2
  // folded into the coefficients (a_k 2^(-k/2)) and the SFU's reciprocal:
  // h = (1 - erf(|x| / sqrt 2)) / 2 = Phi(-|x|), then Phi(x) = 1 - h or h.
  // Largest error against float64 over [-12, 12]: 8.1e-7 absolute.
  static FASTREG_HD float normcdf(float x) {
    const float a = fabsf(x);
    float p = 5.382974905e-06f;
    p = fmaf(p, a, 4.889063712e-05f);
    p = fmaf(p, a, 3.800357445e-05f);
    p = fmaf(p, a, 0.003277626354f);
    p = fmaf(p, a, 0.02114100568f);
    p = fmaf(p, a, 0.04986734688f);
    float q = fmaf(p, a, 1.0f);
    q = q * q;
    q = q * q;
    q = q * q;
    q = q * q;  // inf for large |x|: rcp(inf) = 0
    const float h = 0.5f * rcp(q);
    return x >= 0.0f ? 1.0f - h : h;  // NaN: h is NaN
  }
  // The SFU's reciprocal alone (rcp.approx, 1 ulp): __fdividef adds a guard
  // for tiny divisors that no caller here has (every divisor is >= 1). 1/inf = 0.
  static FASTREG_HD float rcp(float b) { return Sfu::rcp(b); }
  static FASTREG_HD float div(float a, float b) { return a * rcp(b); }
  // Fast is the half types' policy (opmath float); double keeps Precise, so that
  // the templates stay instantiable for every opmath type.
  static FASTREG_HD double exp(double x) { return Precise::exp(x); }
  static FASTREG_HD double expm1(double x) { return Precise::expm1(x); }
  static FASTREG_HD double tanh(double x) { return Precise::tanh(x); }
  static FASTREG_HD double normcdf(double x) { return Precise::normcdf(x); }
  static FASTREG_HD double div(double a, double b) { return a / b; }
};

}  // namespace math

// The math policy of a storage type (see math::Fast).
template <class T> struct MathFor { using type = math::Precise; };
template <> struct MathFor<c10::Half> { using type = math::Fast; };
template <> struct MathFor<c10::BFloat16> { using type = math::Fast; };
template <class T> using math_for_t = typename MathFor<T>::type;

// ---------------------------------------------------------------------------
// Functors. forward(x) -> y. Saved::Input / Saved::Output ones have
// backward(grad, saved) -> grad_input; Saved::Mask ones have keep(x) -> bool
// (the bit stored for backward) and backward(grad, bit) -> grad_input. T is
// the opmath type, M the math policy (math::Precise unless a CUDA kernel of a
// half type picks math::Fast).
//
// What makes an op of a functor (activation_ops.h): kName, the op's name; `saved`;
// optionally kParam, the name of its one float argument (the functor is built as
// Op{value}; kParamMin, its smallest allowed value), or kVariantArg and kVariant, a str
// argument choosing among functors of the same kName; kInplace, an in-place form.
#define FASTREG_FN template <class T, class M = math::Precise> FASTREG_HD

struct Sigmoid {
  static constexpr const char* kName = "sigmoid";
  static constexpr Saved saved = Saved::Output;
  FASTREG_FN T forward(T x) const { return M::div(T(1), T(1) + M::exp(-x)); }
  FASTREG_FN T backward(T g, T y) const { return g * y * (T(1) - y); }
};

struct Tanh {
  static constexpr const char* kName = "tanh";
  static constexpr Saved saved = Saved::Output;
  FASTREG_FN T forward(T x) const { return M::tanh(x); }
  // 1 - y^2 with one rounding: (1 - y * y) was 1024 float32 ulps off at y = -0.9999
  FASTREG_FN T backward(T g, T y) const { return g * math::fma(-y, y, T(1)); }
};

struct Relu {
  static constexpr const char* kName = "relu";
  static constexpr Saved saved = Saved::Mask;
  static constexpr bool kInplace = true;
  // NaN propagates like torch.relu (clamp_min) and counts as kept.
  template <class T> FASTREG_HD bool keep(T x) const { return !(x <= T(0)); }
  FASTREG_FN T forward(T x) const { return x <= T(0) ? T(0) : x; }
  FASTREG_FN T backward(T g, bool kept) const { return kept ? g : T(0); }
};

struct LeakyRelu {
  static constexpr const char* kName = "leaky_relu";
  static constexpr Saved saved = Saved::Mask;
  static constexpr const char* kParam = "negative_slope";
  static constexpr bool kInplace = true;
  double negative_slope;
  template <class T> FASTREG_HD bool keep(T x) const { return x > T(0); }
  FASTREG_FN T forward(T x) const { return x > T(0) ? x : x * T(negative_slope); }
  FASTREG_FN T backward(T g, bool kept) const { return kept ? g : g * T(negative_slope); }
};

// ELU with torch's (alpha, scale) parameterization; SELU is ELU with fixed
// constants. Backward from the output (alpha >= 0): dy/dx = y + alpha*scale
// where y <= 0, else scale.
struct Elu {
  static constexpr const char* kName = "elu";
  static constexpr Saved saved = Saved::Output;
  static constexpr const char* kParam = "alpha";
  static constexpr double kParamMin = 0.0;  // backward from the output needs alpha >= 0
  static constexpr bool kInplace = true;
  double alpha;
  double scale = 1.0;
  FASTREG_FN T forward(T x) const {
    // expm1 of min(x, 0), unconditionally: a select instead of a divergent branch
    const T e = M::expm1(x > T(0) ? T(0) : x);
    return x > T(0) ? T(scale) * x : T(alpha * scale) * e;
  }
  FASTREG_FN T backward(T g, T y) const {
    return y <= T(0) ? g * (y + T(alpha * scale)) : g * T(scale);
  }
};

struct Selu : Elu {
  static constexpr const char* kName = "selu";
  static constexpr const char* kParam = nullptr;  // Elu's constants, no argument
  Selu() : Elu{1.6732632423543772848170429916717, 1.0507009873554804934193349852946} {}
};

// GELU's two forms are two instantiations, so that the kernels' loops carry
// no branch on the form.
template <bool kTanh>
struct GeluOp {
  static constexpr const char* kName = "gelu";
  static constexpr Saved saved = Saved::Input;
  static constexpr const char* kVariantArg = "approximate";
  static constexpr const char* kVariant = kTanh ? "tanh" : "none";
  FASTREG_FN T forward(T x) const {
    if constexpr (kTanh) {
      const T inner = T(0.7978845608028654) * (x + T(0.044715) * x * x * x);
      return T(0.5) * x * (T(1) + M::tanh(inner));
    } else {
      return x * M::normcdf(x);  // = 0.5 x (1 + erf(x / sqrt 2)): halving is exact
    }
  }
  FASTREG_FN T backward(T g, T x) const {
    if constexpr (kTanh) {
      const T x2 = x * x;
      const T t = M::tanh(T(0.7978845608028654) * (x + T(0.044715) * x2 * x));
      const T dinner = T(0.7978845608028654) * (T(1) + T(3 * 0.044715) * x2);
      return g * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * dinner);
    } else {
      const T cdf = M::normcdf(x);
      const T pdf = M::exp(T(-0.5) * x * x) * T(0.3989422804014327);
      return g * (cdf + x * pdf);
    }
  }
};
using Gelu = GeluOp<false>;
using GeluTanh = GeluOp<true>;

struct Silu {
  static constexpr const char* kName = "silu";
  static constexpr Saved saved = Saved::Input;
  static constexpr bool kInplace = true;
  FASTREG_FN T forward(T x) const { return M::div(x, T(1) + M::exp(-x)); }
  FASTREG_FN T backward(T g, T x) const {
    const T s = M::div(T(1), T(1) + M::exp(-x));
    return g * s * (T(1) + x * (T(1) - s));
  }
};

// Mish, x tanh(softplus(x)). With n = e^x (e^x + 2), tanh(log(1 + e^x)) = n / (n + 2) and
// 1 - tanh = 2 / (n + 2): neither the forward nor the backward's 1 - t^2 cancels. Above 20
// softplus(x) is x (torch's threshold) and tanh of it is 1 in float64: the identity there,
// e^x clamped so that n stays finite.
struct Mish {
  static constexpr const char* kName = "mish";
  static constexpr Saved saved = Saved::Input;
  static constexpr bool kInplace = true;
  FASTREG_FN T forward(T x) const {
    const T e = M::exp(x > T(20) ? T(20) : x);
    const T n = e * (e + T(2));
    return x > T(20) ? x : x * M::div(n, n + T(2));
  }
  FASTREG_FN T backward(T g, T x) const {
    const T e = M::exp(x > T(20) ? T(20) : x);
    const T n = e * (e + T(2));
    const T d = n + T(2);
    const T t = M::div(n, d);
    const T sigmoid = M::div(e, e + T(1));
    const T one_minus_t2 = M::div(T(2), d) * (T(1) + t);
    return x > T(20) ? g : g * (t + x * sigmoid * one_minus_t2);
  }
};

// Hardswish, x relu6(x + 3) / 6, and torch's gradient: 0 up to -3, x / 3 + 1/2 below 3,
// the gradient itself from 3 on (and at NaN, as in torch). The clamp keeps NaN.
struct Hardswish {
  static constexpr const char* kName = "hardswish";
  static constexpr Saved saved = Saved::Input;
  static constexpr bool kInplace = true;
  FASTREG_FN T forward(T x) const {
    T c = x + T(3);
    c = c < T(0) ? T(0) : c;
    c = c > T(6) ? T(6) : c;
    return M::div(x * c, T(6));
  }
  FASTREG_FN T backward(T g, T x) const {
    return x <= T(-3) ? T(0) : (x < T(3) ? g * (M::div(x, T(3)) + T(0.5)) : g);
  }
};

// PReLU's weight varies along dim 1, so its kernels pass the channel's weight.
struct Prelu {
  static constexpr Saved saved = Saved::Input;
  template <class T> FASTREG_HD T forward(T x, T w) const { return x > T(0) ? x : w * x; }
  template <class T> FASTREG_HD T grad_input(T g, T x, T w) const { return x > T(0) ? g : w * g; }
  template <class T> FASTREG_HD T grad_weight(T g, T x) const { return x > T(0) ? T(0) : g * x; }
};

#undef FASTREG_FN

// Every activation op, in one list: their schemas (csrc/fastreg.cpp), both backends'
// kernels and registrations (activation_ops.h, cuda/activations.cu) and the activations
// bias_act_dropout takes follow from it. (PReLU, with its weight, is an op of its own.)
// clang-format off
#define FASTREG_ACTIVATIONS(X) \
  X(Sigmoid) X(Tanh) X(Relu) X(LeakyRelu) X(Elu) X(Selu) X(Gelu) X(GeluTanh) X(Silu) \
  X(Mish) X(Hardswish)
// clang-format on

}  // namespace fastreg
