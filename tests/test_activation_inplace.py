"""The activations' in-place forms (inplace=True): values, gradients, saved bytes, the ops
they run, opcheck and torch.compile, for every case of the table with an in-place form."""

import pytest
import torch
from activation_cases import INPLACE, KWARGS, ROW_OF, activation_cases, make_input
from conftest import DEVICES, ops_called, saved_bytes

import fastreg.functional as FR

ops = torch.ops.fastreg


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(INPLACE))
def test_inplace(device, name):
    """inplace=True on a non-leaf returns the input, holding torch's out-of-place result, and
    gives torch's gradient."""
    inplace, _, _ = INPLACE[name]
    tf, kw = ROW_OF[name].torch_function, KWARGS[name]
    base = torch.randn(50, device=device, requires_grad=True)
    x = base * 2  # a non-leaf, as inplace activations see in a network
    expected = tf(base.detach() * 2, **kw)
    out = inplace(x)
    assert out is x
    torch.testing.assert_close(x.detach(), expected)
    (g,) = torch.autograd.grad(out.sum(), base)
    ref_base = base.detach().clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(tf(ref_base * 2, **kw).sum(), ref_base)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(INPLACE))
def test_inplace_under_torch_func(device, name):
    """inplace=True inside torch.func.grad: the same gradient as torch's in-place function
    (silu's reference saves its input, which the in-place write must not overwrite)."""
    from torch.func import grad

    inplace, _, torch_inplace = INPLACE[name]
    x = make_input((6,), "contiguous", torch.float64, device)
    got = grad(lambda v: inplace(v * 1.0).sin().sum())(x)
    want = grad(lambda v: torch_inplace(v * 1.0).sin().sum())(x)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(INPLACE))
def test_inplace_writes_the_input_itself(device, dtype, name):
    """inplace=True on a contiguous or channels_last tensor runs the op's in-place form: the
    result is written into the input's own memory (no fresh output copied back), bit for bit
    the out-of-place result, and the version counter moves. With autograd (on a non-leaf, and
    on a view of one) the gradients are the out-of-place op's and torch's in-place op's, and
    what is saved is what the out-of-place op saves. Other layouts take the copy-back path;
    a leaf that requires grad is refused as torch refuses it."""
    inplace, outplace, torch_inplace = INPLACE[name]
    x = (torch.randn(4, 6, 5, 7, device=device) * 3).to(dtype)
    for layout in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, ::2]):
        want = outplace(layout)
        with torch.no_grad():
            t = layout.clone()
            ptr, version = t.data_ptr(), t._version
            assert inplace(t) is t and t.data_ptr() == ptr and t._version > version
            assert torch.equal(t, want) and t.stride() == layout.clone().stride()
            if layout.is_contiguous() or layout.is_contiguous(memory_format=torch.channels_last):
                assert ops_called(inplace, layout.clone()) == [getattr(ops, name + "_").default]
    a = (torch.randn(4, 6, 5, 7, device=device) * 3).to(dtype).requires_grad_()
    g = torch.randn_like(a)
    n = a.numel()
    nbytes, _, y = saved_bytes(lambda t: inplace(t * 1), a)
    # relu and leaky_relu save a 1-bit mask; elu and selu the output (the input itself,
    # which holds it); silu in place a copy of its input, as torch's in-place silu keeps
    assert nbytes == (n // 8 if ROW_OF[name].saves == "mask" else n * dtype.itemsize)
    want_y = outplace(a * 1)
    assert torch.equal(y, want_y)
    got = torch.autograd.grad(y, a, g)[0]
    assert torch.equal(got, torch.autograd.grad(want_y, a, g)[0])
    torch.testing.assert_close(got, torch.autograd.grad(torch_inplace(a * 1), a, g)[0])
    cl = a.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    y_cl = inplace(cl * 1)  # channels_last in place: the mask / saved tensor in its memory order
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(y_cl, want_y)
    assert torch.equal(torch.autograd.grad(y_cl, cl, g)[0], got)
    base = a * 1  # in place on a view: autograd rebases the base's history
    inplace(base[1:3])
    want_base = torch.cat([a[:1] * 1, outplace(a[1:3] * 1), a[3:] * 1])
    assert torch.equal(base, want_base)
    assert torch.equal(torch.autograd.grad(base, a, g)[0], torch.autograd.grad(want_base, a, g)[0])
    with pytest.raises(RuntimeError, match="leaf Variable"):
        inplace(a)


def test_inplace_forms_opcheck_and_compile():
    """The in-place ops pass opcheck (schema, fake kernels, version counter); under
    torch.compile(fullgraph=True) inplace=True is traced (out of place and a copy, which the
    compiler reinplaces) and gives the eager result in the input."""
    x = torch.randn(3, 8, 5)
    seed = torch.tensor([3])
    checks = [(ops.dropout_, (seed, 0.3, False)), (ops.dropout_, (seed, 0.3, True))]
    for _, row, kw in activation_cases():
        if row.inplace:
            op_, params = getattr(ops, row.name + "_"), tuple(kw.values())
            masks = [(True,), (False,)] if row.saves == "mask" else [()]
            checks += [(op_, params + m) for m in masks]
    for op, args in checks:
        torch.library.opcheck(op, (x.clone(), *args))
    for name, (inplace, outplace, _) in INPLACE.items():
        t = x.clone()
        out = torch.compile(inplace, fullgraph=True)(t)
        assert torch.equal(t, outplace(x)) and torch.equal(out, t), name


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_forms_gradcheck_and_gradgradcheck(device):
    """First and second derivatives through the in-place forms (float64, on a non-leaf)."""
    cases = [inplace for inplace, _, _ in INPLACE.values()] + [
        lambda t: FR.dropout(t, 0.3, inplace=True, seed=3),
        lambda t: FR.alpha_dropout(t, 0.3, True, inplace=True, seed=4),
    ]
    for inplace in cases:
        x = torch.randn(5, 6, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t, f=inplace: f(t * 1), (x,))
        assert torch.autograd.gradgradcheck(lambda t, f=inplace: f(t * 1), (x,))
