"""Multi-process scenarios of tests/test_distributed.py: each runs on every rank of a
2-process group (gloo on the CPU; NCCL when 2 GPUs are present) and returns a dict of
named checks (True when it holds) and values; the test asserts them.

Run directly: python tests/distributed_scenarios.py <init file> <output prefix> [names...]
"""

import os
import sys
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SEED = 1234


class Ctx:
    def __init__(self, rank, world, device):
        from torch.distributed.device_mesh import init_device_mesh

        self.rank, self.world, self.device = rank, world, device
        self.mesh = init_device_mesh(device.type, (world,))

    def randn(self, *shape, seed=0):
        """The same values on every rank."""
        g = torch.Generator().manual_seed(seed)
        return torch.randn(*shape, generator=g).to(self.device)


def _same_on_ranks(t):
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t.contiguous())
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


# --- DTensor: random ops equal the whole tensor's, whatever the placement ------------------


def _placements():
    from torch.distributed.tensor import Replicate, Shard

    return {"Shard(0)": Shard(0), "Shard(1)": Shard(1), "Shard(-1)": Shard(-1), "Replicate": Replicate()}


def _random_cases(ctx):
    import fastreg.functional as F

    r = ctx.randn(5, 7, 9, seed=1)  # a residual
    bias = ctx.randn(9, seed=2)
    return {
        "dropout": (lambda x, **k: F.dropout(x, 0.4, seed=SEED), {}),
        "alpha_dropout": (lambda x, **k: F.alpha_dropout(x, 0.3, True, seed=SEED), {}),
        "dropout_add": (lambda x, res: F.dropout_add(x, res, 0.4, seed=SEED), {"res": r}),
        "drop_path": (lambda x, **k: F.drop_path(x, 0.5, True, seed=SEED), {}),
        "drop_path_residual": (lambda x, res: F.drop_path(x, 0.5, True, residual=res, seed=SEED), {"res": r}),
        "bias_relu_dropout": (lambda x, b: F.bias_act_dropout(x, b, "relu", 0.3, seed=SEED), {"b": bias}),
        "bias_gelu_dropout": (lambda x, b: F.bias_act_dropout(x, b, "gelu", 0.3, seed=SEED), {"b": bias}),
    }


def _distribute_extra(name, value, x_placement, ctx):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    if name == "b":  # the bias of the last dim: sharded with it
        last = x_placement.is_shard() and x_placement.dim in (-1, 2)
        return distribute_tensor(value, ctx.mesh, [Shard(0) if last else Replicate()])
    return distribute_tensor(value, ctx.mesh, [x_placement])


def scenario_dtensor_random(ctx):
    """Every random op on a DTensor of uneven shards (5 x 7 x 9 over 2 ranks) with each
    placement: the output keeps the placement and equals the op on the whole tensor bit
    for bit; the gradients equal the whole tensor's (bit for bit but grad_bias, summed in
    other orders); a local shard equals the reference with the shard's positioned seed."""
    from torch.distributed.tensor import distribute_tensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    import fastreg.reference as R
    from fastreg.distributed import element_position, positioned_seed, sample_position

    out = {}
    x_full = ctx.randn(5, 7, 9, seed=3)
    g_full = ctx.randn(5, 7, 9, seed=4)
    for name, (fn, extra) in _random_cases(ctx).items():
        xf = x_full.clone().requires_grad_(True)
        ef = {k: v.clone().requires_grad_(True) for k, v in extra.items()}
        yf = fn(xf, **ef)
        yf.backward(g_full)
        for pname, pl in _placements().items():
            xd = distribute_tensor(x_full, ctx.mesh, [pl]).requires_grad_(True)
            ed = {k: _distribute_extra(k, v, pl, ctx).requires_grad_(True) for k, v in extra.items()}
            yd = fn(xd, **ed)
            key = f"{name}/{pname}"
            out[key + "/placement"] = tuple(yd.placements) == tuple(xd.placements)
            out[key + "/forward"] = torch.equal(yd.full_tensor(), yf.detach())
            yd.backward(distribute_tensor(g_full, ctx.mesh, [pl]))
            out[key + "/grad_input"] = torch.equal(xd.grad.full_tensor(), xf.grad)
            for k in ed:
                full_grad = ed[k].grad.full_tensor()
                out[key + f"/grad_{k}"] = torch.allclose(full_grad, ef[k].grad, rtol=1e-5, atol=1e-5)
            # the reference on this shard with its positioned seed
            local = xd.to_local()
            _, offsets = compute_local_shape_and_global_offset(xd.shape, ctx.mesh, xd.placements)
            seed = torch.full((1,), SEED, dtype=torch.int64, device=ctx.device)
            if name == "dropout":
                s = positioned_seed(seed, element_position(tuple(xd.shape), tuple(local.shape), offsets))
                out[key + "/reference"] = torch.equal(R.dropout(local, 0.4, seed=s), yd.to_local())
            if name == "drop_path":
                s = positioned_seed(seed, sample_position(offsets[0]))
                out[key + "/reference"] = torch.equal(R.drop_path(local, 0.5, True, seed=s), yd.to_local())
    import fastreg.functional as F

    for pname, pl in _placements().items():  # in place: the shards are written
        xd = distribute_tensor(x_full.clone(), ctx.mesh, [pl])  # Replicate may alias its source
        F.dropout(xd, 0.4, inplace=True, seed=SEED)
        out[f"dropout in place/{pname}"] = torch.equal(xd.full_tensor(), F.dropout(x_full, 0.4, seed=SEED))
    return out


def scenario_dtensor_grad_layout(ctx):
    """Backward with a gradient placed otherwise than the forward's input (Replicate for a
    Shard(1) input, Partial): the masks are those of the whole tensor all the same; a relu
    mask is read with the gradient laid out as its forward input was."""
    from torch.distributed.tensor import Partial, Replicate, Shard, distribute_tensor

    import fastreg.functional as F

    out = {}
    x_full, g_full = ctx.randn(6, 10, seed=5), ctx.randn(6, 10, seed=6)
    for name, fn in {
        "dropout": lambda x: F.dropout(x, 0.5, seed=SEED),
        "relu": F.relu,
        "bias_relu_dropout": lambda x: F.bias_act_dropout(x, None, "relu", 0.5, seed=SEED),
    }.items():
        xf = x_full.clone().requires_grad_(True)
        fn(xf).backward(g_full)
        for gname, g_pl in {"Replicate": Replicate(), "Shard(0)": Shard(0), "Partial": Partial()}.items():
            xd = distribute_tensor(x_full, ctx.mesh, [Shard(1)]).requires_grad_(True)
            yd = fn(xd)
            if gname == "Partial":  # each rank holds half the gradient
                g = torch.distributed.tensor.DTensor.from_local(g_full / ctx.world, ctx.mesh, [Partial()])
            else:
                g = distribute_tensor(g_full, ctx.mesh, [g_pl])
            yd.backward(g)
            out[f"{name}/grad {gname}"] = torch.allclose(xd.grad.full_tensor(), xf.grad, rtol=1e-6, atol=1e-6)
    return out


def scenario_dtensor_ops(ctx):
    """The other ops: activations (register_sharding; relu and leaky_relu by the mask
    handler) keep each placement and equal the whole tensor's, forward and backward;
    in-place forms; PReLU with per-channel weights sharded with the channels; the raw op
    torch.ops.fastreg.dropout; DropConnect with a column- or row-sharded weight; the batch
    ops on Replicate and Shard(1) images, and their errors on Shard(0)."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import fastreg.functional as F
    from fastreg._activations import TABLE

    out = {}
    x_full, g_full = ctx.randn(4, 6, 5, seed=7), ctx.randn(4, 6, 5, seed=8)
    for row in TABLE.values():
        fn = getattr(F, row.name)
        xf = x_full.clone().requires_grad_(True)
        yf = fn(xf)
        yf.backward(g_full)
        for pname, pl in _placements().items():
            xd = distribute_tensor(x_full, ctx.mesh, [pl]).requires_grad_(True)
            yd = fn(xd)
            yd.backward(distribute_tensor(g_full, ctx.mesh, [pl]))
            key = f"{row.name}/{pname}"
            out[key + "/placement"] = tuple(yd.placements) == tuple(xd.placements)
            out[key + "/forward"] = torch.equal(yd.full_tensor(), yf.detach())
            out[key + "/grad"] = torch.equal(xd.grad.full_tensor(), xf.grad)
            if row.inplace:
                xi = distribute_tensor(x_full.clone(), ctx.mesh, [pl])  # Replicate may alias its source
                fn(xi, inplace=True)
                out[key + "/inplace"] = torch.equal(xi.full_tensor(), yf.detach())
    # PReLU, one weight per channel (dim 1)
    w_full = torch.linspace(0.05, 0.5, 6, device=ctx.device)
    xf, wf = x_full.clone().requires_grad_(True), w_full.clone().requires_grad_(True)
    F.prelu(xf, wf).backward(g_full)
    for pname, pl in _placements().items():
        w_pl = Shard(0) if pl == Shard(1) else Replicate()
        xd = distribute_tensor(x_full, ctx.mesh, [pl]).requires_grad_(True)
        wd = distribute_tensor(w_full, ctx.mesh, [w_pl]).requires_grad_(True)
        yd = F.prelu(xd, wd)
        yd.backward(distribute_tensor(g_full, ctx.mesh, [pl]))
        out[f"prelu/{pname}/placement"] = tuple(yd.placements) == tuple(xd.placements)
        out[f"prelu/{pname}/forward"] = torch.equal(yd.full_tensor(), F.prelu(x_full, w_full))
        out[f"prelu/{pname}/grad"] = torch.equal(xd.grad.full_tensor(), xf.grad)
        out[f"prelu/{pname}/grad_weight"] = torch.allclose(wd.grad.full_tensor(), wf.grad, atol=1e-5)
    try:  # a plain tensor among DTensors
        F.dropout_add(distribute_tensor(x_full, ctx.mesh, [Shard(0)]), x_full, 0.5, seed=SEED)
        out["plain residual raises"] = False
    except TypeError as e:
        out["plain residual raises"] = "fastreg.dropout_add: residual is a torch.Tensor" in str(e)
    # the raw op
    seed = torch.full((1,), SEED, dtype=torch.int64, device=ctx.device)
    xd = distribute_tensor(x_full, ctx.mesh, [Shard(1)])
    raw = torch.ops.fastreg.dropout(xd, seed, 0.5, False)
    out["raw dropout/forward"] = torch.equal(
        raw.full_tensor(), torch.ops.fastreg.dropout(x_full, seed, 0.5, False)
    )
    # DropConnect: column- and row-parallel weights
    full_args = [
        t.requires_grad_(True)
        for t in (ctx.randn(3, 8, seed=9), ctx.randn(6, 8, seed=10), ctx.randn(6, seed=11))
    ]
    full = F.dropconnect_linear(*full_args, 0.5, seed=SEED)
    full.backward(torch.ones_like(full))
    for name, placements in {
        "colwise": (Replicate(), Shard(0), Shard(0)),
        "rowwise": (Shard(-1), Shard(1), Replicate()),
    }.items():
        args = [
            distribute_tensor(t.detach(), ctx.mesh, [p]).requires_grad_(True)
            for t, p in zip(full_args, placements, strict=True)
        ]
        yd = F.dropconnect_linear(*args, 0.5, seed=SEED)
        yd.backward(torch.ones_like(yd))
        out[f"dropconnect/{name}"] = torch.allclose(yd.full_tensor(), full, rtol=1e-5, atol=1e-5)
        for arg, t, ref in zip(("input", "weight", "bias"), args, full_args, strict=True):
            out[f"dropconnect/{name}/grad_{arg}"] = torch.allclose(
                t.grad.full_tensor(), ref.grad, rtol=1e-5, atol=1e-5
            )
    # batch ops: boxes per sample (a shard of samples draws its own samples'), mixing per pair
    images = ctx.randn(5, 6, 8, 8, seed=12)  # 5 samples: uneven shards of samples
    for pname, pl in {"Replicate": Replicate(), "Shard(0)": Shard(0), "Shard(1)": Shard(1)}.items():
        d = distribute_tensor(images, ctx.mesh, [pl])
        cut = F.cutout(d, 4, seed=SEED)
        out[f"cutout/{pname}"] = cut.placements == d.placements and torch.equal(
            cut.full_tensor(), F.cutout(images, 4, seed=SEED)
        )
        erased = F.random_erasing(d, 1.0, seed=SEED).full_tensor()
        out[f"random_erasing/{pname}"] = torch.equal(erased, F.random_erasing(images, 1.0, seed=SEED))
        if pname != "Shard(1)":
            noise = F.random_erasing(d, 1.0, value="random", seed=SEED).full_tensor()
            ref = F.random_erasing(images, 1.0, value="random", seed=SEED)
            out[f"random_erasing random/{pname}"] = torch.equal(noise, ref)
    target = torch.arange(5, device=ctx.device) % 3
    for pname, pl in {"Replicate": Replicate(), "Shard(1)": Shard(1)}.items():
        mixed, soft = F.mixup(distribute_tensor(images, ctx.mesh, [pl]), target, num_classes=3, seed=SEED)
        ref_mixed, ref_soft = F.mixup(images, target, num_classes=3, seed=SEED)
        out[f"mixup/{pname}"] = torch.equal(mixed.full_tensor(), ref_mixed) and torch.equal(
            soft.full_tensor(), ref_soft
        )
    for name, (call, pl, need) in {
        "cutout": (
            lambda d: F.cutout(d, 4, seed=SEED),
            Shard(2),
            "Replicate, Shard(0) (samples) or Shard(1)",
        ),
        "random_erasing": (
            lambda d: F.random_erasing(d, 1.0, value="random", seed=SEED),
            Shard(1),
            "Replicate or Shard(0)",
        ),
        "mixup": (lambda d: F.mixup(d, target, num_classes=3, seed=SEED), Shard(0), "Replicate or Shard(1)"),
        "cutmix": (
            lambda d: F.cutmix(d, target, num_classes=3, seed=SEED),
            Shard(0),
            "Replicate or Shard(1)",
        ),
    }.items():
        try:
            call(distribute_tensor(images, ctx.mesh, [pl]))
            out[f"{name}/{pl} raises"] = False
        except NotImplementedError as e:
            out[f"{name}/{pl} raises"] = need in str(e) and f"fastreg.{name}:" in str(e)
    return out


# --- tensor parallelism: a Megatron-style MLP block -------------------------------------------


class MLP(torch.nn.Module):
    """fc1 (column parallel) -> bias + GELU + dropout -> fc2 (row parallel) -> dropout + residual."""

    def __init__(self, d=8, h=16, p=0.25):
        import fastreg

        super().__init__()
        self.fc1 = torch.nn.Linear(d, h, bias=False)
        self.act = fastreg.nn.BiasActDropout(h, "gelu", p)
        self.fc2 = torch.nn.Linear(h, d)
        self.p = p
        torch.nn.init.normal_(self.act.bias)

    def forward(self, x):
        import fastreg.functional as F

        return F.dropout_add(self.fc2(self.act(self.fc1(x))), x, self.p)


def scenario_tensor_parallel(ctx):
    """The MLP parallelised with torch.distributed.tensor.parallel (the bias of the fused
    op sharded like fc1's columns) equals the single-process block: the hidden activation's
    dropped positions bit for bit, outputs and gradients within float tolerance."""
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    out = {}
    torch.manual_seed(0)
    ref = MLP().to(ctx.device)
    tp = MLP().to(ctx.device)
    tp.load_state_dict(ref.state_dict())
    parallelize_module(
        tp, ctx.mesh,
        {"fc1": ColwiseParallel(use_local_output=False), "fc2": RowwiseParallel(input_layouts=Shard(-1))},
    )  # fmt: skip
    tp.act.bias = torch.nn.Parameter(distribute_tensor(tp.act.bias.detach(), ctx.mesh, [Shard(0)]))
    hidden = {}
    ref.act.register_forward_hook(lambda m, i, o: hidden.__setitem__("ref", o.detach()))
    tp.act.register_forward_hook(lambda m, i, o: hidden.__setitem__("tp", o.detach()))
    x = ctx.randn(4, 3, 8, seed=13)
    for step in range(2):
        torch.manual_seed(100 + step)  # the same draws for both blocks
        y_ref = ref(x)
        torch.manual_seed(100 + step)
        y_tp = tp(x)
        y_ref.square().sum().backward()
        y_tp.square().sum().backward()
        h_tp = hidden["tp"].full_tensor()
        out[f"step {step}/hidden sharded by columns"] = hidden["tp"].placements == (Shard(h_tp.dim() - 1),)
        out[f"step {step}/dropped positions"] = torch.equal(h_tp == 0, hidden["ref"] == 0)
        out[f"step {step}/hidden"] = torch.allclose(h_tp, hidden["ref"], rtol=1e-5, atol=1e-6)
        out[f"step {step}/output"] = torch.allclose(y_tp, y_ref, rtol=1e-5, atol=1e-5)
    for name, p in ref.named_parameters():
        q = dict(tp.named_parameters())[name].grad
        q = q.full_tensor() if hasattr(q, "full_tensor") else q
        out[f"grad {name}"] = torch.allclose(q, p.grad, rtol=1e-4, atol=1e-5)
    return out


# --- DDP and FSDP2 ---------------------------------------------------------------------------


def fastreg_model():
    import fastreg

    return torch.nn.Sequential(
        torch.nn.Linear(8, 16, bias=False),
        fastreg.nn.BiasActDropout(16, "relu", 0.2),
        fastreg.nn.Dropout(0.1),
        fastreg.nn.GELU(),
        fastreg.nn.DropConnectLinear(16, 16, p=0.2),
        fastreg.nn.PReLU(16),
        fastreg.nn.DropPath(0.3),
        fastreg.nn.SiLU(),
        torch.nn.Linear(16, 4),
    )


def timm_model():
    import timm

    import fastreg

    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=8, in_chans=3, num_classes=4, embed_dim=32, depth=2, num_heads=2,
        drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.0, drop_path_rate=0.2,
    )  # fmt: skip
    return fastreg.convert(vit)


def _inputs(name, ctx, batch):
    if name == "fastreg":
        return ctx.randn(batch, 8, seed=20)
    return ctx.randn(batch, 3, 16, 16, seed=20)


def _grads(model):
    return {
        k: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
        for k, p in model.named_parameters()
    }


def _train(model, x, steps, ctx, offset=None):
    """A few SGD steps: the loss of each (the mean over the global batch) and the first
    step's gradients."""
    import fastreg

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses, grads = [], None
    for step in range(steps):
        torch.manual_seed(200 + step)
        if offset is None:
            loss = model(x).square().mean()
            loss.backward()
        else:
            with fastreg.distributed.batch_offset(offset):
                loss = model(x).square().mean()
                loss.backward()
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss = loss / ctx.world
        grads = grads or _grads(model)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses, grads


def _losses_close(losses, ref):
    return len(losses) == len(ref) and all(
        abs(a - r) <= 1e-5 * max(1.0, abs(r)) for a, r in zip(losses, ref, strict=True)
    )


def _close(a, b):
    return set(a) == set(b) and all(torch.allclose(v, b[k], rtol=1e-4, atol=1e-6) for k, v in a.items())


def _params(model):
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()
    }


def _single_process_run(name, make, ctx, b):
    """A model trained by one process over the whole batch (b samples per rank), a copy of
    its initial weights for the distributed run, the batch, and the run's losses and
    first gradients."""
    torch.manual_seed(0)
    single = make().to(ctx.device)
    copy = make().to(ctx.device)
    copy.load_state_dict(single.state_dict())
    x = _inputs(name, ctx, b * ctx.world)
    return single, copy, x, _train(single, x, 3, ctx)


def scenario_ddp(ctx):
    """A model of fastreg modules and one made by fastreg.convert() from timm train under
    DistributedDataParallel: parameters identical across ranks; with batch_offset and ranks
    seeded alike, losses and parameters equal a single process over the whole batch."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    b = 4
    for name, make in {"fastreg": fastreg_model, "timm": timm_model}.items():
        single, local, x, (ref_losses, ref_grads) = _single_process_run(name, make, ctx, b)
        ddp = DDP(local)
        mine = x[ctx.rank * b : (ctx.rank + 1) * b]
        losses, grads = _train(ddp, mine, 3, ctx, offset=ctx.rank * b)
        out[f"{name}/gradients"] = _close({k.removeprefix("module."): v for k, v in grads.items()}, ref_grads)
        flat = torch.cat([p.detach().flatten() for p in local.parameters()])
        out[f"{name}/params same on ranks"] = _same_on_ranks(flat)
        out[f"{name}/losses"] = _losses_close(losses, ref_losses)
        out[f"{name}/losses values"] = (losses, ref_losses)
        ref = _params(single)
        out[f"{name}/params equal single process"] = _close(_params(local), ref)
    return out


def scenario_fsdp(ctx):
    """fully_shard over the same models trains a few steps with the losses of the unsharded
    model (batch_offset, ranks seeded alike); state_dict round-trips through a second
    sharded model, PReLU, BiasActDropout and DropConnectLinear parameters included."""
    from torch.distributed.fsdp import fully_shard

    out = {}
    b = 4
    for name, make in {"fastreg": fastreg_model, "timm": timm_model}.items():
        single, sharded, x, (ref_losses, ref_grads) = _single_process_run(name, make, ctx, b)
        fully_shard(sharded, mesh=ctx.mesh)
        losses, grads = _train(sharded, x[ctx.rank * b : (ctx.rank + 1) * b], 3, ctx, offset=ctx.rank * b)
        out[f"{name}/gradients"] = _close(grads, ref_grads)
        out[f"{name}/losses"] = _losses_close(losses, ref_losses)
        out[f"{name}/losses values"] = (losses, ref_losses)
        ref, got = _params(single), _params(sharded)
        out[f"{name}/params equal unsharded"] = _close(got, ref)
        copy = make().to(ctx.device)
        fully_shard(copy, mesh=ctx.mesh)
        copy.load_state_dict(sharded.state_dict())
        back = _params(copy)
        out[f"{name}/state_dict round trip"] = set(back) == set(got) and all(
            torch.equal(back[k], got[k]) for k in got
        )
        if name == "fastreg":
            keys = {"1.bias", "4.weight", "4.bias", "5.weight"}  # BiasActDropout, DropConnectLinear, PReLU
            out["fastreg/state_dict keys"] = keys <= set(got)
    return out


# --- seeds across ranks ----------------------------------------------------------------------


def scenario_seeds(ctx):
    """Seeds taken from torch's generator behave as torch's: ranks seeded alike draw alike
    (fastreg and torch's dropout both), ranks seeded apart draw apart; batch_offset gives
    each rank its rows of the whole batch's draws."""
    import fastreg
    import fastreg.functional as F

    out = {}
    x = torch.ones(8, 64, device=ctx.device)
    for how, seed in {"alike": 5, "apart": 5 + ctx.rank}.items():
        torch.manual_seed(seed)
        ours = F.dropout(x, 0.5) == 0
        torch.manual_seed(seed)
        theirs = torch.nn.functional.dropout(x, 0.5) == 0
        out[f"{how}/fastreg same on ranks"] = _same_on_ranks(ours)
        out[f"{how}/torch same on ranks"] = _same_on_ranks(theirs)
    torch.manual_seed(9)
    whole = F.dropout(torch.ones(8, 64, device=ctx.device), 0.5)
    torch.manual_seed(9)
    with fastreg.distributed.batch_offset(4 * ctx.rank):
        mine = F.dropout(torch.ones(4, 64, device=ctx.device), 0.5)
    out["batch_offset rows"] = torch.equal(mine, whole[4 * ctx.rank : 4 * ctx.rank + 4])
    torch.manual_seed(9)
    plain = F.dropout(torch.ones(4, 64, device=ctx.device), 0.5)  # each rank: the first rows
    out["without batch_offset, the first rows"] = torch.equal(plain, whole[:4])
    return out


SCENARIOS = {name[len("scenario_") :]: fn for name, fn in globals().items() if name.startswith("scenario_")}


def worker(rank, init_file, prefix, names):
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= 2
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if cuda else "gloo", init_method="file://" + init_file, rank=rank, world_size=2
    )
    import fastreg  # noqa: F401

    ctx = Ctx(rank, 2, device)
    results = {}
    for name in names:
        try:
            results[name] = SCENARIOS[name](ctx)
        except Exception:  # recorded: the test shows it
            results[name] = {"error": traceback.format_exc()}
    torch.save(results, f"{prefix}{rank}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    names = sys.argv[3:] or list(SCENARIOS)
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2], names), nprocs=2)
