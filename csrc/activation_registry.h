// The activation registry: what an op of an activation functor looks like, read off the
// functor (csrc/activations.h) and the list FASTREG_ACTIVATIONS. The schemas
// (fastreg.cpp), both backends' registrations (activation_ops.h), bias_act_dropout's
// activations and fastreg._C.activations() (what Python builds its functions from) use it.
#pragma once

#include <c10/util/string_view.h>

#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "activations.h"
#include "errors.h"

namespace fastreg {

// The argument an activation op takes besides its tensors: none, a float (kParam) or a
// string naming a variant (kVariantArg).
enum class ParamKind { kNone, kFloat, kVariant };

template <class Op, class = void>
struct ParamName {
  static constexpr const char* value = nullptr;
};
template <class Op>
struct ParamName<Op, std::void_t<decltype(Op::kParam)>> {
  static constexpr const char* value = Op::kParam;
};
template <class Op, class = void>
struct VariantArg {
  static constexpr const char* value = nullptr;
};
template <class Op>
struct VariantArg<Op, std::void_t<decltype(Op::kVariantArg)>> {
  static constexpr const char* value = Op::kVariantArg;
};
template <class Op, class = void>
constexpr bool kHasParamMin = false;
template <class Op>
constexpr bool kHasParamMin<Op, std::void_t<decltype(Op::kParamMin)>> = true;
template <class Op, class = void>
constexpr bool kHasInplace = false;
template <class Op>
constexpr bool kHasInplace<Op, std::void_t<decltype(Op::kInplace)>> = Op::kInplace;

template <class Op>
constexpr ParamKind kParamKind = VariantArg<Op>::value != nullptr  ? ParamKind::kVariant
                                 : ParamName<Op>::value != nullptr ? ParamKind::kFloat
                                                                   : ParamKind::kNone;

// The C++ types of that argument, as a pack (for signatures and lambdas).
template <class... P>
struct Pack {};
template <ParamKind K>
struct ParamTypes {
  using type = Pack<>;
};
template <>
struct ParamTypes<ParamKind::kFloat> {
  using type = Pack<double>;
};
template <>
struct ParamTypes<ParamKind::kVariant> {
  using type = Pack<c10::string_view>;
};
template <class Op>
using params_of = typename ParamTypes<kParamKind<Op>>::type;

template <class T>
struct Tag {
  using type = T;
};

// f(Tag<Op>{}) for every functor of the list, in its order.
template <class F>
void for_each_activation(F&& f) {
#define FASTREG_VISIT(Op) f(Tag<Op>{});
  FASTREG_ACTIVATIONS(FASTREG_VISIT)
#undef FASTREG_VISIT
}

// A and B are functors of one op (the variants of GELU).
template <class A, class B>
constexpr bool kSameOp = std::string_view(A::kName) == std::string_view(B::kName);

// The first functor of its op in the list: the one the op is registered for.
template <class Op>
constexpr bool is_primary() {
  bool found = false, earlier = false;
#define FASTREG_SCAN(O)        \
  if (!found) {                \
    if (std::is_same_v<O, Op>) \
      found = true;            \
    else if (kSameOp<O, Op>)   \
      earlier = true;          \
  }
  FASTREG_ACTIVATIONS(FASTREG_SCAN)
#undef FASTREG_SCAN
  return !earlier;
}

// Calls f(functor) for the op of Op and its argument `name` was called with: Op{} (none),
// Op{value} (kParam, at least kParamMin), or the variant of Op's op that `variant` names.
template <class Op, class F>
decltype(auto) with_op(const char* /*name*/, F&& f) {
  return f(Op{});
}

template <class Op, class F>
decltype(auto) with_op(const char* name, F&& f, double value) {
  if constexpr (kHasParamMin<Op>) {
    FASTREG_CHECK_VALUE(value >= Op::kParamMin, "fastreg.", name, ": ", Op::kParam,
                        " must be >= ", Op::kParamMin, ", got ", value);
  }
  return f(Op{value});
}

template <class Op, class F>
auto with_op(const char* name, F&& f, c10::string_view variant) -> decltype(f(Op{})) {
  using R = decltype(f(Op{}));
  std::conditional_t<std::is_void_v<R>, bool, std::optional<R>> out{};
  bool matched = false;
  std::string names;
  for_each_activation([&](auto tag) {
    using O = typename decltype(tag)::type;
    if constexpr (kSameOp<O, Op>) {
      names += std::string(names.empty() ? "'" : ", '") + O::kVariant + "'";
      if (!matched && variant == O::kVariant) {
        matched = true;
        if constexpr (std::is_void_v<R>) {
          f(O{});
        } else {
          out.emplace(f(O{}));
        }
      }
    }
  });
  FASTREG_CHECK_VALUE(matched, "fastreg.", name, ": ", Op::kVariantArg, " must be one of ", names,
                      "; got '", std::string(variant), "'");
  if constexpr (!std::is_void_v<R>) return std::move(*out);
}

// bias_act_dropout's argument for Op's parameter: its schema names negative_slope, alpha
// and approximate, so an activation with another parameter needs one added there.
template <class Op>
double bias_act_param(double negative_slope, double alpha) {
  constexpr std::string_view p = ParamName<Op>::value;
  static_assert(p == "negative_slope" || p == "alpha",
                "bias_act_dropout has no argument for this activation's parameter");
  return p == "negative_slope" ? negative_slope : alpha;
}

// Calls f(functor) for bias_act_dropout's `activation` (any op of the list) with its
// argument from negative_slope, alpha or approximate; unknown names are a ValueError.
template <class F>
auto with_activation(const char* name, c10::string_view activation, double negative_slope,
                     double alpha, c10::string_view approximate, F&& f) -> decltype(f(Relu{})) {
  std::optional<decltype(f(Relu{}))> out;
  std::string names;
  for_each_activation([&](auto tag) {
    using Op = typename decltype(tag)::type;
    if constexpr (is_primary<Op>()) {
      names += std::string(names.empty() ? "" : ", ") + Op::kName;
      if (out || activation != Op::kName) return;
      if constexpr (kParamKind<Op> == ParamKind::kNone) {
        out.emplace(with_op<Op>(name, f));
      } else if constexpr (kParamKind<Op> == ParamKind::kFloat) {
        out.emplace(with_op<Op>(name, f, bias_act_param<Op>(negative_slope, alpha)));
      } else {
        static_assert(std::string_view(VariantArg<Op>::value) == "approximate",
                      "bias_act_dropout's variant argument is approximate");
        out.emplace(with_op<Op>(name, f, approximate));
      }
    }
  });
  FASTREG_CHECK_VALUE(out.has_value(), "fastreg.", name, ": activation must be one of ", names,
                      "; got '", std::string(activation), "'");
  return std::move(*out);
}

// The names of an op's backward and in-place ops.
template <class Op>
const char* backward_name() {
  static const std::string name = std::string(Op::kName) + "_backward";
  return name.c_str();
}
template <class Op>
const char* inplace_name() {
  static const std::string name = std::string(Op::kName) + "_";
  return name.c_str();
}

// What backward takes besides the gradient, as the schema names it.
template <class Op>
constexpr const char* saved_arg() {
  return Op::saved == Saved::Mask ? "mask" : Op::saved == Saved::Output ? "output" : "input";
}

}  // namespace fastreg
