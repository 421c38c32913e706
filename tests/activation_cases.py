"""The activation tests' cases, all derived from the activation table (fastreg/_activations.py).

A case is an op of the table at one argument: every op at the tests' non-default argument,
and each variant of the ops that have variants (gelu and gelu_tanh). A row added to the
table (and its functor to FASTREG_ACTIVATIONS) is a new case of every test parametrized
over ``CASES``, of every op list built here (opcheck samples, modules, in-place forms) and
of the benchmark.
"""

import torch

import fastreg.functional as FR
import fastreg.nn as FN
import fastreg.reference as R
from fastreg._activations import cases as activation_cases

ops = torch.ops.fastreg
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(0,), (1,), (7,), (33,), (4, 37), (2, 3, 5, 7)]
LAYOUTS = ["contiguous", "strided", "permuted", "channels_last"]

# case -> (fastreg function, torch function, reference function, keyword arguments)
CASES = {
    case: (getattr(FR, row.name), row.torch_function, getattr(R, row.name), kw)
    for case, row, kw in activation_cases()
}
ROW_OF = {case: row for case, row, _ in activation_cases()}
KWARGS = {case: kw for case, _, kw in activation_cases()}


def _from_output(row):
    return lambda g, y, kw: (g.double() * row.grad_from_output(y.double(), *kw.values())).to(g.dtype)


# The backward formula of each activation that saves its output, written in that output
# (the table's grad_from_output), evaluated in float64 on a given output and rounded once
# (torch's own CUDA kernels round intermediate products in half types, which is less
# accurate than fastreg's).
OUTPUT_BACKWARD = {case: _from_output(row) for case, row in ROW_OF.items() if row.saves == "output"}

# bytes saved per element for a bfloat16 input (docs/design.md): a 1-bit mask or a tensor
SAVED = {case: 0.125 if row.saves == "mask" else 2 for case, row in ROW_OF.items()}


def make_input(shape, layout, dtype, device, scale=3.0):
    """Values over the interesting range (saturation included) in the given layout."""
    if layout == "contiguous":
        x = torch.randn(shape)
    elif layout == "strided":  # not dense: every other element of the last dim
        x = torch.randn(shape[:-1] + (2 * shape[-1],))[..., ::2]
    elif layout == "permuted":  # dense, dims in reverse memory order
        x = torch.randn(shape[::-1]).permute(*reversed(range(len(shape))))
    else:
        x = torch.randn(shape).to(memory_format=torch.channels_last)
    return (x * scale).to(device=device, dtype=dtype)


def layout_cases():
    for shape in SHAPES:
        for layout in LAYOUTS:
            if layout == "channels_last" and len(shape) != 4:
                continue
            yield shape, layout


def same_strides(a, b):
    return all(n <= 1 or s == t for n, s, t in zip(a.shape, a.stride(), b.stride(), strict=True))


def forward_args(case, x, save_mask=True):
    """The raw op's arguments: the input, the op's argument, and save_mask for mask ops."""
    row = ROW_OF[case]
    return (x, *KWARGS[case].values()) + ((save_mask,) if row.saves == "mask" else ())


def raw_forward(case):
    """The case's torch.ops.fastreg op as a function of the input alone (its output)."""
    row, op = ROW_OF[case], getattr(ops, ROW_OF[case].name)
    if row.saves == "mask":
        return lambda t: op(*forward_args(case, t))[0]
    return lambda t: op(*forward_args(case, t))


def saved_tensor(case, x):
    """What the case's forward saves for its backward op: the mask, the output or the input."""
    row, op = ROW_OF[case], getattr(ops, ROW_OF[case].name)
    if row.saves == "mask":
        return op(*forward_args(case, x.detach()))[1]
    if row.saves == "output":
        return op(*forward_args(case, x.detach()))
    return x


def op_samples(device):
    """(op, args) for every activation op, forward and backward: each case's forward (mask ops
    with and without the mask), its backward, and the backward with inputs that require a
    gradient (the backward op's own formula, create_graph=True); PReLU's."""
    x = make_input((3, 17), "contiguous", torch.float32, device).requires_grad_()
    g = torch.randn(3, 17, device=device)
    w = torch.rand(17, device=device).requires_grad_()
    samples = []
    for case, row in ROW_OF.items():
        op, backward = getattr(ops, row.name), getattr(ops, row.name + "_backward")
        params = tuple(KWARGS[case].values())
        samples.append((op, forward_args(case, x)))
        if row.saves == "mask":
            samples.append((op, forward_args(case, x.detach(), save_mask=False)))
        saved = saved_tensor(case, x)
        samples.append((backward, (g, saved.detach(), *params)))
        grad_saved = saved if row.saves == "mask" else saved.detach().clone().requires_grad_()
        samples.append((backward, (g.clone().requires_grad_(), grad_saved, *params)))
    return samples + [
        (ops.prelu, (x, w)),
        (ops.prelu_backward, (g, x.detach(), w.detach())),
        (ops.prelu_backward, (g.clone().requires_grad_(), x, w)),
    ]


def module_pairs():
    """(fastreg.nn module, torch.nn module) for every case, at the case's argument."""
    pairs = []
    for case, row in ROW_OF.items():
        fastreg_module = getattr(FN, row.torch_module.__name__)
        pairs.append((fastreg_module(*KWARGS[case].values()), row.torch_module(*KWARGS[case].values())))
    return pairs


def _inplace_case(row, kw):
    fr, tf = getattr(FR, row.name), row.torch_function
    return (lambda t: fr(t, **kw, inplace=True), lambda t: fr(t, **kw), lambda t: tf(t, **kw, inplace=True))


# case -> (fastreg in place, fastreg out of place, torch in place): every case with an
# in-place form, at the tests' argument
INPLACE = {case: _inplace_case(row, kw) for case, row, kw in activation_cases() if row.inplace}
