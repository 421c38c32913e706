"""Activation rows: every activation, inference forward and forward+backward,
fastreg against torch eager and torch.compile of the same eager code."""

import torch
import torch.nn.functional as F
from harness import Case

import fastreg.functional as FR
from fastreg._activations import TABLE


def _activations():
    """name -> (fastreg, eager, saves a 1-bit mask): every row of the activation table at its
    default argument, a row per variant (gelu, gelu_tanh), and PReLU."""
    out = {}
    for row in TABLE.values():
        fr = getattr(FR, row.name)
        for v in row.variants or (None,):
            kw = {} if v is None or v == row.default else {row.param: v}
            name = row.name if not kw else f"{row.name}_{v}"
            out[name] = (
                lambda x, fr=fr, kw=kw: fr(x, **kw),
                lambda x, tf=row.torch_function, kw=kw: tf(x, **kw),
                row.saves == "mask",
            )
    out["prelu"] = (None, None, False)
    return out


ACTIVATIONS = _activations()


def _forward(f, inp):
    def run():
        with torch.no_grad():
            return f(inp)

    return run


def _step(f, inpg, g):
    grad = g.view(inpg.shape)
    return lambda: torch.autograd.grad(f(inpg), inpg, grad)


def _cases_of(name, impls, mask, inp, inpg, g):
    """The inference and training-step Cases of one activation on one input."""
    numel, e = inp.numel(), inp.element_size()
    dt = str(inp.dtype).replace("torch.", "")
    fwd = Case(
        "activations", name, "fwd", dt, numel, 2 * numel * e, {k: _forward(f, inp) for k, f in impls.items()}
    )
    # x in, y out | grad in, saved in, grad out (a 1-bit mask for relu)
    floor = (4 * e + 0.25) * numel if mask else 5 * e * numel
    saved = {k: (lambda f=f: f(inpg)) for k, f in impls.items() if k != "compile"}
    steps = {k: _step(f, inpg, g) for k, f in impls.items()}
    return [fwd, Case("activations", name, "fwd+bwd", dt, numel, int(floor), steps, saved)]


def cases(device, dtypes, numel, compile_ops):
    out = []
    for dtype in dtypes:
        x = torch.randn(numel, device=device, dtype=dtype)
        g = torch.randn(numel, device=device, dtype=dtype)
        xg = x.clone().requires_grad_()
        channels = 64
        x4 = x.view(-1, channels, numel // channels // 64, 64)
        x4g = x4.detach().clone().requires_grad_()
        w = torch.full((channels,), 0.25, device=device, dtype=dtype, requires_grad=True)
        for name, (fr, eager, mask) in ACTIVATIONS.items():
            if name == "prelu":  # per-channel weight on a (N, 64, H, 64) tensor
                fr = lambda t, w=w: FR.prelu(t, w)  # noqa: E731
                eager = lambda t, w=w: F.prelu(t, w)  # noqa: E731
                inp, inpg = x4, x4g
            else:
                inp, inpg = x, xg
            impls = {"fastreg": fr, "eager": eager}
            if name in compile_ops:
                impls["compile"] = torch.compile(eager, dynamic=False)
            out += _cases_of(name, impls, mask, inp, inpg, g)
    return out
