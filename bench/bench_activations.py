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


def cases(device, dtypes, numel, compile_ops):
    out = []
    for dtype in dtypes:
        e = torch.tensor([], dtype=dtype).element_size()
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
            dt = str(dtype).replace("torch.", "")

            def fwd(f, inp=inp):
                def run():
                    with torch.no_grad():
                        return f(inp)

                return run

            out.append(
                Case(
                    "activations",
                    name,
                    "fwd",
                    dt,
                    numel,
                    2 * numel * e,
                    {k: fwd(f) for k, f in impls.items()},
                )
            )

            def step(f, inpg=inpg, g=g):
                grad = g.view(inpg.shape)
                return lambda: torch.autograd.grad(f(inpg), inpg, grad)

            # x in, y out | grad in, saved in, grad out (a 1-bit mask for relu)
            floor = (4 * e + 0.25) * numel if mask else 5 * e * numel
            saved = {k: (lambda f=f, inpg=inpg: f(inpg)) for k, f in impls.items() if k != "compile"}
            out.append(
                Case(
                    "activations",
                    name,
                    "fwd+bwd",
                    dt,
                    numel,
                    int(floor),
                    {k: step(f) for k, f in impls.items()},
                    saved,
                )
            )
    return out
