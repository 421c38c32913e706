"""Dropout-family rows, forward+backward (a training step of the op): fastreg
against torch eager, torch.compile of the same eager code, and timm's drop_path."""

import torch
import torch.nn.functional as F
from harness import Case

import fastreg.functional as FR

P = 0.1


def timm_drop_path(x, drop_prob, training=True, scale_by_keep=True):
    """timm.layers.drop_path (timm's own when installed, else its code as written there)."""
    try:
        from timm.layers import drop_path

        return drop_path(x, drop_prob, training, scale_by_keep)
    except ImportError:
        keep_prob = 1 - drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
        if keep_prob > 0.0 and scale_by_keep:
            random_tensor.div_(keep_prob)
        return x * random_tensor


def _step(f, inputs, grad):
    return lambda: torch.autograd.grad(f(*inputs), inputs, grad)


def _dropconnect_case(device):
    """DropConnect: a training step of the layer against nn.Linear's (same shapes)."""
    on_gpu = torch.device(device).type == "cuda"
    m, k, n = (8192, 4096, 4096) if on_gpu else (512, 1024, 1024)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    x = torch.randn(m, k, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(n, k, device=device, dtype=dtype) / k**0.5).requires_grad_()
    bias = torch.zeros(n, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(m, n, device=device, dtype=dtype)
    inputs = (x, w, bias)
    impls = {
        "fastreg": lambda a, ww, bb: FR.dropconnect_linear(a, ww, bb, P),
        "eager": lambda a, ww, bb: F.linear(a, F.dropout(ww, P), bb),
        "nn.Linear": lambda a, ww, bb: F.linear(a, ww, bb),
    }
    saved = {kk: (lambda f=f: f(*inputs)) for kk, f in impls.items()}
    floor = (m * k + n * k + m * n) * 2 * x.element_size()
    return Case(
            "dropout",
            f"dropconnect_linear {m}x{k}x{n}",
            "fwd+bwd",
            str(dtype).replace("torch.", ""),
            n * k,
            floor,
            {kk: _step(f, inputs, g) for kk, f in impls.items()},
            saved,
            note="matmul-bound: compare with nn.Linear, not the byte floor",
    )  # fmt: skip


def cases(device, dtypes, numel, compile_ops):
    out = []
    for dtype in dtypes:
        e = torch.tensor([], dtype=dtype).element_size()
        dt = str(dtype).replace("torch.", "")
        width = 4096
        x = torch.randn(numel // width, width, device=device, dtype=dtype, requires_grad=True)
        r = torch.randn_like(x, requires_grad=True)
        g = torch.randn_like(x)
        b = torch.zeros(width, device=device, dtype=dtype, requires_grad=True)

        def row(op, floor, fr, eager, inputs, extra=None):
            impls = {"fastreg": fr, "eager": eager}
            impls.update(extra or {})
            if op in compile_ops:
                impls["compile"] = torch.compile(eager, dynamic=False)
            saved = {k: (lambda f=f: f(*inputs)) for k, f in impls.items() if k != "compile"}
            steps = {k: _step(f, inputs, g) for k, f in impls.items()}
            out.append(Case("dropout", op, "fwd+bwd", dt, numel, int(floor), steps, saved))

        # x in, y out | grad in, grad out: the mask costs no bytes
        row("dropout", 4 * e * numel, lambda t: FR.dropout(t, P), lambda t: F.dropout(t, P), (x,))
        # x in, y out | grad in, saved in, grad out (a 1-bit mask for relu)
        row(
            "bias_relu_dropout", (4 * e + 0.25) * numel,
            lambda t, bb: FR.bias_act_dropout(t, bb, "relu", P),
            lambda t, bb: F.dropout(F.relu(t + bb), P), (x, b),
        )  # fmt: skip
        row(
            "bias_gelu_dropout", 5 * e * numel,
            lambda t, bb: FR.bias_act_dropout(t, bb, "gelu", P),
            lambda t, bb: F.dropout(F.gelu(t + bb), P), (x, b),
        )  # fmt: skip
        # x, residual in, y out | grad in, grad out (the residual's grad is the incoming one)
        row(
            "dropout_add", 5 * e * numel,
            lambda t, rr: FR.dropout_add(t, rr, P), lambda t, rr: rr + F.dropout(t, P), (x, r),
        )  # fmt: skip
        row(
            "drop_path_residual", 5 * e * numel,
            lambda t, rr: FR.drop_path(t, P, True, residual=rr),
            lambda t, rr: rr + timm_drop_path(t, P), (x, r),
        )  # fmt: skip

    out.append(_dropconnect_case(device))
    return out
