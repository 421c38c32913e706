"""The activation table: a row per activation op of ``FASTREG_ACTIVATIONS`` (csrc/activations.h).

The C++ list says what an op is (``fastreg._C.activations()``: its name, what backward
saves, its argument besides the input and whether it has an in-place form); a row here
says what Python needs beyond that: the plain-torch formula (the specification,
``fastreg.reference``), the torch function and module it replaces, the argument's default
and the words of its docstring. ``fastreg.functional``'s and ``fastreg.reference``'s
functions, ``fastreg.nn``'s modules, ``fastreg.convert``'s mappings, the autograd formulas
(second order included), ``bias_act_dropout``'s activations, the tests and the benchmark
rows follow from the two (docs/design.md, "How to add an activation").
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _zero(x):
    return torch.zeros((), dtype=x.dtype, device=x.device)


def _expm1_neg(x):
    """expm1(min(x, 0)), as the kernels compute ELU's negative branch: where x > 0 selects the
    other branch, this one's derivative is then exp(0) = 1 rather than exp(x), which overflows
    to inf for large x and makes the unselected branch's zero gradient 0 * inf = NaN (clamp
    would pass no gradient at x = 0)."""
    return torch.expm1(torch.where(x > 0, _zero(x), x))


def _gelu(x, approximate):
    if approximate == "tanh":
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
        return 0.5 * x * (1 + torch.tanh(inner))
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _gelu_exact(x, approximate):
    """GELU without cancellation in the negative tail (erfc, and x sigmoid(2u) for tanh)."""
    if approximate == "tanh":
        return x * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))
    return 0.5 * x * torch.erfc(-x / math.sqrt(2))


@dataclass(frozen=True)
class Activation:
    """An activation op: the C++ list's facts (the last five fields) and Python's.

    ``formula(x, *param)`` computes the activation in ``x``'s dtype with torch ops (the
    reference; ``x`` in float32 for the half types); ``torch_function(x, *param)`` is what it
    replaces; ``torch_module`` is torch.nn's class, whose constructor takes ``param`` and
    ``inplace`` where it has them. ``grad_from_output(y, *param)`` is the derivative written
    in the output, for the ops whose backward reads it (their second derivative); ``exact``,
    where the formula cancels in a tail, a float64 evaluation that does not (the accuracy
    tests). ``timm`` maps timm's module classes to the arguments fixed by each (an argument
    None: the timm module's attribute is ignored). ``test_param``: a non-default argument
    the tests use.
    """

    name: str
    formula: Callable
    torch_function: Callable
    torch_module: type
    summary: str
    saved_doc: str
    default: float | str | None = None
    param_doc: str = ""
    grad_from_output: Callable | None = None
    exact: Callable | None = None
    timm: dict = field(default_factory=dict)
    test_param: float | str | None = None
    # from fastreg._C.activations()
    saves: str = ""
    param: str | None = None
    param_min: float | None = None
    variants: tuple = ()
    inplace: bool = False


ROWS = [
    Activation(
        "sigmoid",
        formula=torch.sigmoid,  # not 1 / (1 + exp(-x)), whose derivative is inf / inf = NaN below -88
        torch_function=torch.sigmoid,
        torch_module=torch.nn.Sigmoid,
        summary="``1 / (1 + exp(-x))``",
        saved_doc="the output (as torch)",
        grad_from_output=lambda y: y * (1 - y),
        timm={"Sigmoid": {}},
    ),
    Activation(
        "tanh",
        formula=torch.tanh,
        torch_function=torch.tanh,
        torch_module=torch.nn.Tanh,
        summary="``tanh(x)``",
        saved_doc="the output (as torch)",
        grad_from_output=lambda y: 1 - y * y,
        timm={"Tanh": {}},
    ),
    Activation(
        "relu",
        formula=lambda x: torch.where(x <= 0, _zero(x), x),
        torch_function=F.relu,
        torch_module=torch.nn.ReLU,
        summary="``max(x, 0)`` (NaN passes, as in torch)",
        saved_doc="a 1-bit mask, 1/8 byte per element (torch saves the output)",
    ),
    Activation(
        "leaky_relu",
        formula=lambda x, negative_slope: torch.where(x > 0, x, x * negative_slope),
        torch_function=F.leaky_relu,
        torch_module=torch.nn.LeakyReLU,
        summary="``x if x > 0 else negative_slope * x``",
        saved_doc="a 1-bit mask, 1/8 byte per element (torch saves the input)",
        default=0.01,
        param_doc="the slope for ``x <= 0``",
        test_param=0.2,
    ),
    Activation(
        "elu",
        formula=lambda x, alpha: torch.where(x > 0, x, alpha * _expm1_neg(x)),
        torch_function=F.elu,
        torch_module=torch.nn.ELU,
        summary="``x if x > 0 else alpha * (exp(x) - 1)``",
        saved_doc="the output",
        default=1.0,
        param_doc="the negative branch's scale, ``>= 0`` (backward reads the output, which a "
        "negative alpha would make ambiguous)",
        grad_from_output=lambda y, alpha: torch.where(y <= 0, y + alpha, torch.ones_like(y)),
        test_param=0.7,
    ),
    Activation(
        "selu",
        formula=lambda x: SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * _expm1_neg(x)),
        torch_function=F.selu,
        torch_module=torch.nn.SELU,
        summary="``scale * (x if x > 0 else alpha * (exp(x) - 1))`` with torch's constants",
        saved_doc="the output",
        grad_from_output=lambda y: torch.where(
            y <= 0, y + SELU_ALPHA * SELU_SCALE, torch.full_like(y, SELU_SCALE)
        ),
    ),
    Activation(
        "gelu",
        formula=_gelu,
        torch_function=F.gelu,
        torch_module=torch.nn.GELU,
        summary="``x * Phi(x)``, or its tanh approximation",
        saved_doc="the input (as torch); accuracy in docs/accuracy.md",
        default="none",
        param_doc="``'none'`` (the erf form) or ``'tanh'``",
        exact=_gelu_exact,
        timm={"GELU": {"inplace": None}, "GELUTanh": {"approximate": "tanh", "inplace": None}},
        test_param="tanh",
    ),
    Activation(
        "silu",
        formula=lambda x: x * torch.sigmoid(x),  # (not x / (1 + exp(-x)): see sigmoid)
        torch_function=F.silu,
        torch_module=torch.nn.SiLU,
        summary="``x * sigmoid(x)``",
        saved_doc="the input",
        timm={"Swish": {}, "SwishMe": {"inplace": None}},
    ),
    Activation(
        "mish",
        formula=lambda x: x * torch.tanh(F.softplus(x)),
        torch_function=F.mish,
        torch_module=torch.nn.Mish,
        summary="``x * tanh(softplus(x))``",
        saved_doc="the input (as torch)",
        timm={"Mish": {}, "MishMe": {}},
    ),
    Activation(
        "hardswish",
        formula=lambda x: x * torch.clamp(x + 3, 0, 6) / 6,
        torch_function=F.hardswish,
        torch_module=torch.nn.Hardswish,
        summary="``x * relu6(x + 3) / 6``",
        saved_doc="the input (as torch)",
        timm={"HardSwish": {}, "HardSwishMe": {}},
    ),
]


def _table():
    """name -> Activation, the rows joined with the C++ list (which must name the same ops)."""
    from . import _C

    facts = {a["name"]: a for a in _C.activations()}
    rows = {row.name: row for row in ROWS}
    if list(facts) != list(rows):
        raise ImportError(
            f"fastreg: the activation table ({', '.join(rows)}) and FASTREG_ACTIVATIONS "
            f"({', '.join(facts)}) differ: a row in fastreg/_activations.py per functor of the list"
        )
    table = {}
    for name, row in rows.items():
        f = facts[name]
        kw = {k.name: getattr(row, k.name) for k in fields(row)}
        kw.update(saves=f["saves"], param=f["param"], param_min=f["param_min"], inplace=f["inplace"])
        kw["variants"] = tuple(f["variants"])
        table[name] = Activation(**kw)
    return table


TABLE = _table()


def cases():
    """(case name, row, arguments) for every op and variant at its default argument and the
    tests' other one: what the tests and the benchmark parametrize over."""
    out = []
    for row in TABLE.values():
        if row.param is None:
            out.append((row.name, row, {}))
        elif row.variants:
            out += [
                (row.name if v == row.default else f"{row.name}_{v}", row, {row.param: v})
                for v in row.variants
            ]
        else:
            out.append((row.name, row, {row.param: row.test_param}))
    return out
