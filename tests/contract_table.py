"""The contract tests' table: a row per raw op of torch.ops.fastreg, with a reference
computed from the same arguments (plain torch and fastreg.reference), the shapes it runs
on and the bad shapes its arguments get (test_contract.py runs them)."""

import math
from dataclasses import dataclass, field

import torch

import fastreg  # noqa: F401
import fastreg.reference as R
from fastreg import _random
from fastreg._activations import TABLE
from fastreg._activations import cases as activation_cases

ops = torch.ops.fastreg
SEED = 12345
P = 0.3


# --- references of the raw ops ---------------------------------------------------------------


def pack_mask(keep, like):
    """The 1-bit mask of bool `keep` (shaped like `like`): bit i belongs to element i of the
    dense memory order of `like` (csrc/activation_ops.h)."""
    n = keep.numel()
    flat = torch.zeros(((n + 7) // 8) * 8, dtype=torch.bool, device=keep.device)
    if n:
        flat[_random.memory_index(like).reshape(-1)] = keep.reshape(-1)
    weights = 2 ** torch.arange(8, device=keep.device)
    return (flat.view(-1, 8).long() * weights).sum(1).to(torch.uint8)


def unpack_mask(mask, like):
    """The bits of `mask` as a bool tensor shaped like `like`, in its dense memory order."""
    n = like.numel()
    bits = ((mask.long().unsqueeze(1) >> torch.arange(8, device=mask.device)) & 1).bool().reshape(-1)[:n]
    return (
        bits[_random.memory_index(like)]
        if n
        else torch.zeros(like.shape, dtype=torch.bool, device=like.device)
    )


def seed_of(seed):
    return int(seed.reshape(()).item())


def vjp(fn, primals, grad):
    out, pullback = torch.func.vjp(fn, *primals)
    return pullback(grad.to(out.dtype))


def saved_output_backward(name, g, y, *params):
    return g * TABLE[name].grad_from_output(y, *params)


def _leaky(bits, g, slope):
    return torch.where(bits, g, g * slope)


def bias_mask_backward(g, mask, bias, seed, act, p, slope):
    """bias_act_dropout_backward of a mask activation: the kept gradient times the
    activation's slope, the keep decisions and bits in g's dense memory order."""
    bits = unpack_mask(mask, g)
    keep = R.keep_mask(g, seed, p)
    d = torch.where(bits, g, g * slope) if act == "leaky_relu" else torch.where(bits, g, torch.zeros_like(g))
    dx = torch.where(keep, d * (1.0 / (1.0 - p)), torch.zeros_like(d))
    db = dx.reshape(-1, dx.shape[-1]).sum(0) if bias is not None else dx.new_empty(0)
    return dx, db


def mix_params(images, seed, mode, mixup_alpha, cutmix_alpha, cut, prob, switch, correct):
    B, _, H, W = images.shape
    minmax = None if cut[0] < 0 else cut
    draws = _random.mix_draws(
        seed, B, H, W, mode, mixup_alpha, cutmix_alpha, minmax, prob, switch, correct, images.device
    )
    cols = [d.double() for d in draws] + [torch.zeros(B, dtype=torch.float64, device=images.device)]
    return torch.stack(cols, 1) if B else torch.empty(0, 8, dtype=torch.float64, device=images.device)


def mix_ref(images, target, seed, K, eps, ma, ca, cmin, cmax, prob, switch, mode, correct):
    modes = {v: k for k, v in _random.MIX_MODES.items()}
    out, soft = R.mix(
        images, target, num_classes=K, label_smoothing=eps, mixup_alpha=ma, cutmix_alpha=ca,
        cutmix_minmax=None if cmin < 0 else (cmin, cmax), prob=prob, switch_prob=switch, mode=modes[mode],
        correct_lam=correct, seed=seed_of(seed),
    )  # fmt: skip
    params = mix_params(images, seed_of(seed), mode, ma, ca, (cmin, cmax), prob, switch, correct)
    return out, soft, params


def mix_backward_ref(g, params):
    return vjp(lambda t: R.mix_pixels(t, *params[:, [0, 2, 3, 4, 5, 6]].unbind(1)), (g,), g)[0]


# --- the table ----------------------------------------------------------------------------------


def randn(*shape, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed + 7 * len(shape) + sum(shape))
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)


def images_of(shape, device):
    return randn(*shape, device=device)


@dataclass
class Row:
    """A raw op's contract: `make(shape, device)` builds valid arguments in schema order for
    the op's primary shape (the first of `shapes` is the default; the others have size-0 and
    size-1 dimensions); `ref(*args)` computes the outputs (for an in-place op, the mutated
    argument followed by the outputs); `bad_shapes` maps an argument to functions giving a
    wrong rank or size of it; `inplace` is the index of the mutated argument;
    `layout_errors` the arguments whose non-dense views may be refused (in-place targets)."""

    make: object
    ref: object
    shapes: list
    bad_shapes: dict = field(default_factory=dict)
    inplace: int | None = None
    layout_errors: tuple = ()
    aliases: tuple = ()  # other names an error message may give the op (its public function)
    devices: tuple = ("cpu", "cuda")  # where the op has kernels


ACT_SHAPES = [(4, 6), (0, 6), (1,), (1, 1), (1, 6), (3, 1, 5), ()]
IMG_SHAPES = [(2, 3, 8, 8), (0, 3, 8, 8), (1, 1, 1, 1), (3, 1, 5, 1)]


def _act(name, *params):
    fwd = getattr(ops, name)
    saves_output = TABLE[name].saves == "output"

    def r_forward(x):
        return getattr(R, name)(x, *params)

    rows = {
        name: Row(lambda s, d: [randn(*s, device=d), *params], lambda x, *a: r_forward(x), ACT_SHAPES),
    }
    if saves_output:

        def make_bwd(s, d):
            x = randn(*s, device=d)
            return [randn(*s, device=d, seed=1), fwd(x, *params), *params]

        rows[name + "_backward"] = Row(
            make_bwd,
            lambda g, y, *a: saved_output_backward(name, g, y, *params),
            ACT_SHAPES,
            bad_shapes={"grad": [lambda t: t.reshape(-1)[:-1] if t.numel() else t.reshape(-1, 1)]},
        )
    else:

        def make_bwd(s, d):
            return [randn(*s, device=d, seed=1), randn(*s, device=d), *params]

        rows[name + "_backward"] = Row(
            make_bwd,
            lambda g, x, *a: vjp(r_forward, (x,), g)[0],
            ACT_SHAPES,
            bad_shapes={"grad": [lambda t: t.reshape(-1)[:-1] if t.numel() else t.reshape(-1, 1)]},
        )
    if TABLE[name].inplace:
        rows[name + "_"] = Row(
            lambda s, d: [randn(*s, device=d), *params],
            lambda x, *a: (r_forward(x),),
            ACT_SHAPES,
            inplace=0,
            layout_errors=("input",),
        )
    return rows


def _mask_act(name, *params):
    fwd = getattr(ops, name)

    def keep(x):  # the mask's bits: where the gradient passes unscaled (relu's NaN passes)
        return {"relu": lambda: ~(x <= 0), "leaky_relu": lambda: x > 0}[name]()

    def r_forward(x):
        return getattr(R, name)(x, *params)

    def make_bwd(s, d):
        x = randn(*s, device=d)
        return [randn(*s, device=d, seed=1), fwd(x, *params, True)[1], *params]

    def r_backward(g, mask, *a):
        bits = unpack_mask(mask, g)
        return _leaky(bits, g, params[0]) if params else torch.where(bits, g, torch.zeros_like(g))

    return {
        name: Row(
            lambda s, d: [randn(*s, device=d), *params, True],
            lambda x, *a: (r_forward(x), pack_mask(keep(x), x)),
            ACT_SHAPES,
        ),
        name + "_backward": Row(
            make_bwd,
            r_backward,
            ACT_SHAPES,
            bad_shapes={"mask": [lambda t: t.view(1, -1), lambda t: torch.cat([t, t[:1]])]},
        ),
        name + "_": Row(
            lambda s, d: [randn(*s, device=d), *params, True],
            lambda x, *a: (r_forward(x), pack_mask(keep(x), x)),
            ACT_SHAPES,
            inplace=0,
            layout_errors=("input",),
        ),
    }


def _prelu_make(s, d, grad=False):
    x = randn(*s, device=d)
    w = randn(s[1] if len(s) >= 2 else 1, device=d, seed=2).abs()
    return ([randn(*s, device=d, seed=1)] if grad else []) + [x, w]


PRELU_SHAPES = [(4, 6, 3), (0, 6), (4, 1), (1, 6), (5,), (2, 3, 1, 1)]
PRELU_BAD_WEIGHT = [lambda t: t.view(1, -1), lambda t: torch.cat([t, t[:1]])]


def _seed(d):
    return torch.tensor([SEED], device=d)


def _dropout_rows():
    def drop(x, seed, p, alpha):
        f = R.alpha_dropout if alpha else R.dropout
        return f(x, p, True, seed=seed_of(seed))

    bias_args = ("relu", P, 0.01, 1.0, "none")
    gelu_args = ("gelu", P, 0.01, 1.0, "tanh")
    X_SHAPES = [(4, 6), (0, 6), (1,), (1, 1), (1, 6), (3, 1, 5)]
    LAST_DIM = [(4, 6), (0, 6), (1,), (4, 1), (1, 6), (3, 1, 5)]
    shape_of = {"residual": [lambda t: t.reshape(-1)]}

    def bias_of(s, d):
        return randn(s[-1], device=d, seed=3)

    def make_bad_bwd_mask(s, d):
        x, b = randn(*s, device=d), bias_of(s, d)
        mask = ops.bias_act_dropout(x, b, _seed(d), *bias_args, True)[1]
        return [randn(*s, device=d, seed=1), mask, b, _seed(d), *bias_args]

    def make_bad_bwd_gelu(s, d):
        return [randn(*s, device=d, seed=1), randn(*s, device=d), bias_of(s, d), _seed(d), *gelu_args]

    def bad_bwd_gelu_ref(g, x, b, seed, act, p, slope, alpha, approx):
        return vjp(
            lambda t, bb: R.bias_act_dropout(t, bb, act, p, approximate=approx, seed=seed_of(seed)), (x, b), g
        )

    bias_bad = {"bias": [lambda t: t.view(1, -1), lambda t: torch.cat([t, t[:1]])]}
    return {
        "dropout": Row(lambda s, d: [randn(*s, device=d), _seed(d), P, True], drop, X_SHAPES),
        "dropout_backward": Row(lambda s, d: [randn(*s, device=d), _seed(d), P, False], drop, X_SHAPES),
        "dropout_": Row(
            lambda s, d: [randn(*s, device=d), _seed(d), P, False],
            lambda x, seed, p, alpha: (drop(x, seed, p, alpha),),
            X_SHAPES,
            inplace=0,
            layout_errors=("input",),
        ),
        "dropout_add": Row(
            lambda s, d: [randn(*s, device=d), randn(*s, device=d, seed=1), _seed(d), P],
            lambda x, r, seed, p: R.dropout_add(x, r, p, seed=seed_of(seed)),
            X_SHAPES,
            bad_shapes=shape_of,
        ),
        "drop_path": Row(
            lambda s, d: [randn(*s, device=d), randn(*s, device=d, seed=1), _seed(d), P, True],
            lambda x, r, seed, p, sbk: R.drop_path(
                x, p, True, residual=r, scale_by_keep=sbk, seed=seed_of(seed)
            ),
            X_SHAPES,
            bad_shapes=shape_of,
        ),
        "drop_path_backward": Row(
            lambda s, d: [randn(*s, device=d), _seed(d), P, False],
            lambda g, seed, p, sbk: R.drop_path(g, p, True, scale_by_keep=sbk, seed=seed_of(seed)),
            X_SHAPES,
        ),
        "bias_act_dropout": Row(
            lambda s, d: [randn(*s, device=d), bias_of(s, d), _seed(d), *bias_args, True],
            lambda x, b, seed, act, p, slope, alpha, approx, sm: (
                R.bias_act_dropout(x, b, act, p, seed=seed_of(seed)),
                pack_mask(~(x.float() + b.float() <= 0), x),
            ),
            LAST_DIM,
            bad_shapes=bias_bad,
        ),
        "bias_act_dropout_backward": Row(
            make_bad_bwd_mask,
            lambda g, mask, b, seed, act, p, slope, alpha, approx: bias_mask_backward(
                g, mask, b, seed, act, p, slope
            ),
            LAST_DIM,
            bad_shapes={**bias_bad, "saved": [lambda t: t.view(1, -1), lambda t: torch.cat([t, t[:1]])]},
        ),
        "bias_act_dropout_backward/gelu": Row(
            make_bad_bwd_gelu,
            bad_bwd_gelu_ref,
            LAST_DIM,
            bad_shapes={**bias_bad, "saved": [lambda t: t.reshape(-1)]},
        ),
        "dropconnect_linear": Row(
            lambda s, d: [
                randn(*s, device=d),
                randn(5, s[-1], device=d, seed=1),
                randn(5, device=d, seed=2),
                _seed(d),
                P,
            ],
            lambda x, w, b, seed, p: R.dropconnect_linear(x, w, b, p, True, seed=seed_of(seed)),
            [(4, 6), (0, 6), (1, 1), (2, 1, 3)],
            bad_shapes={
                "weight": [
                    lambda t: t.reshape(-1),
                    lambda t: t[:, :-1] if t.shape[1] > 1 else torch.cat([t, t], 1),
                ],
                "bias": [lambda t: t.view(1, -1), lambda t: t[:-1]],
                "input": [lambda t: t.reshape(-1) if t.dim() > 1 else t.reshape(1, 1, -1)[..., :0]],
            },
        ),
        "dropconnect_linear_backward": Row(
            lambda s, d: [
                randn(*s[:-1], 5, device=d, seed=3),
                randn(*s, device=d),
                randn(5, s[-1], device=d, seed=1),
                _seed(d),
                P,
            ],
            lambda g, x, w, seed, p: vjp(
                lambda t, ww, bb: R.dropconnect_linear(t, ww, bb, p, True, seed=seed_of(seed)),
                (x, w, torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)),
                g,
            ),
            [(4, 6), (0, 6), (1, 1), (2, 1, 3)],
            bad_shapes={
                "grad": [lambda t: t[..., :-1]],
                "weight": [
                    lambda t: t.reshape(-1),
                    lambda t: t[:, :-1] if t.shape[1] > 1 else torch.cat([t, t], 1),
                ],
                "input": [lambda t: t.reshape(-1)],
            },
        ),
    }


def _batch_rows():
    K = 10

    def mix_make(s, d):
        B = s[0]
        return [
            images_of(s, d),
            torch.arange(B, device=d) % K,
            _seed(d),
            K,
            0.1,
            1.0,
            1.0,
            -1.0,
            -1.0,
            1.0,
            0.5,
            2,
            True,
        ]

    target_bad = [lambda t: torch.cat([t, t[:1]]), lambda t: t.view(-1, 1)]
    images_bad = [lambda t: t[0], lambda t: t.unsqueeze(0)]
    erase_args = (0.7, 0.02, 0.33, math.log(0.3), math.log(3.3))

    def erase_ref(images, seed, p, s0, s1, r0, r1, value, random):
        return R.random_erasing(
            images,
            p,
            (s0, s1),
            (math.exp(r0), math.exp(r1)),
            value="random" if random else value,
            seed=seed_of(seed),
        )

    return {
        "_sample_beta": Row(
            lambda s, d: [_seed(d), s[0], 0.5, 2.0, 3],
            lambda seed, n, a, b, stream: _random.beta_samples(seed_of(seed), stream, n, a, b, seed.device),
            [(10,), (0,), (1,)],
        ),
        "stochastic_depth_subset": Row(
            lambda s, d: [_seed(d), s[0], s[0] // 2 + 1 if s[0] else 0],
            lambda seed, batch, keep: _random.subset_indices(seed_of(seed), batch, keep, seed.device),
            [(10,), (0,), (1,)],
        ),
        "_philox_words": Row(
            lambda s, d: [_seed(d), 3, 8, s[0]],
            lambda seed, stream, first, n: _random.philox_words(
                seed_of(seed), stream, torch.arange(first, first + n, device=seed.device)
            ),
            [(20,), (0,), (1,)],
            devices=("cpu",),  # a test-only op of the CPU kernels
        ),
        "cutout": Row(
            lambda s, d: [images_of(s, d), _seed(d), 4, 0.7, 0.5],
            lambda x, seed, size, p, fill: R.cutout(x, size, p, fill=fill, seed=seed_of(seed)),
            IMG_SHAPES,
            bad_shapes={"images": images_bad},
        ),
        "cutout_": Row(
            lambda s, d: [images_of(s, d), _seed(d), 4, 0.7, 0.5],
            lambda x, seed, size, p, fill: (R.cutout(x, size, p, fill=fill, seed=seed_of(seed)),),
            IMG_SHAPES,
            bad_shapes={"images": images_bad},
            inplace=0,
            layout_errors=("images",),
        ),
        "random_erasing": Row(
            lambda s, d: [images_of(s, d), _seed(d), *erase_args, 0.0, True],
            erase_ref,
            IMG_SHAPES,
            bad_shapes={"images": images_bad},
        ),
        "random_erasing_": Row(
            lambda s, d: [images_of(s, d), _seed(d), *erase_args, 0.25, False],
            lambda *a: (erase_ref(*a),),
            IMG_SHAPES,
            bad_shapes={"images": images_bad},
            inplace=0,
            layout_errors=("images",),
        ),
        "mix": Row(mix_make, mix_ref, IMG_SHAPES, bad_shapes={"images": images_bad, "target": target_bad}),
        "mix_": Row(
            mix_make,
            mix_ref,
            IMG_SHAPES,
            bad_shapes={"images": images_bad, "target": target_bad},
            inplace=0,
            layout_errors=("images",),
        ),
        "mix_backward": Row(
            lambda s, d: [images_of(s, d), ops.mix(*mix_make(s, d))[2]],
            mix_backward_ref,
            IMG_SHAPES,
            bad_shapes={
                "grad": images_bad,
                "params": [lambda t: t[:, :3], lambda t: t[:-1] if len(t) else t.view(1, 0, 8)],
            },
        ),
    }


def table():
    rows = {}
    for _, row, kw in activation_cases():  # gelu: its last variant
        rows.update((_mask_act if row.saves == "mask" else _act)(row.name, *kw.values()))
    rows["prelu"] = Row(
        lambda s, d: _prelu_make(s, d),
        lambda x, w: R.prelu(x, w),
        PRELU_SHAPES,
        bad_shapes={
            "weight": PRELU_BAD_WEIGHT,
            "input": [lambda t: t.reshape(-1) if t.dim() > 1 else t.reshape(1, 1, -1)],
        },
    )
    rows["prelu_backward"] = Row(
        lambda s, d: _prelu_make(s, d, grad=True),
        lambda g, x, w: vjp(R.prelu, (x, w), g),
        PRELU_SHAPES,
        bad_shapes={
            "weight": PRELU_BAD_WEIGHT,
            "grad": [lambda t: t.reshape(-1)[:-1] if t.numel() else t.reshape(-1, 1)],
        },
    )
    rows.update(_dropout_rows())
    rows.update(_batch_rows())
    return rows
