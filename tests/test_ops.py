"""Conditional depthwise convolution: both paths against the release's unfold form."""

import logging
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from ccfpse import ops
from ccfpse.ops import cond_depthwise_conv2d, cond_depthwise_conv2d_eager, cond_depthwise_conv2d_unfold

SHAPES = [(2, 3, 5, 7), (1, 1, 4, 4), (1, 2, 1, 9), (2, 4, 16, 8), (3, 1, 6, 2), (1, 1, 1, 1)]
F64 = dict(rtol=0.0, atol=1e-13)  # a few ulps of sums of nine O(1) products


def _kernel_or_skip():
    if ops._kernel() is None:
        if os.environ.get("CCFPSE_NO_EXT") == "1":
            pytest.skip("CCFPSE_NO_EXT=1 disables the compiled kernel")
        if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
            pytest.skip("no C compiler here, so no compiled kernel")
        pytest.fail("the compiled kernel did not build or load although a C compiler exists (see log)")


def _fast(x, w):
    _kernel_or_skip()
    return cond_depthwise_conv2d(x, w)


PATHS = {"kernel": _fast, "eager": cond_depthwise_conv2d_eager}


def _inputs(shape, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=gen, dtype=dtype).requires_grad_()
    wt = torch.randn((n, c * 9, h, w), generator=gen, dtype=dtype).requires_grad_()
    g = torch.randn(shape, generator=gen, dtype=dtype)
    return x, wt, g


def _value_and_grads(fn, x, w, g):
    y = fn(x, w)
    return (y, *torch.autograd.grad(y, (x, w), g))


def _sequential(x, w):
    """The definition, summed tap by tap in order 0..8 with plain multiplies and adds."""
    n, c, h, wd = x.shape
    xp, w5 = F.pad(x, (1, 1, 1, 1)), w.reshape(n, c, 9, h, wd)
    out = torch.zeros_like(x)
    for i in range(3):
        for j in range(3):
            out = out + w5[:, :, i * 3 + j] * xp[:, :, i : i + h, j : j + wd]
    return out


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_unfold_form_float64(path, shape):
    x, w, g = _inputs(shape)
    ref = _value_and_grads(cond_depthwise_conv2d_unfold, x, w, g)
    got = _value_and_grads(PATHS[path], x, w, g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("shape", SHAPES + [(1, 2, 128, 130)])  # the last is big enough for threads
def test_kernel_is_bit_exact_float64(shape):
    # Same products, same summation order, no FMA: bit-equal to the definition and to the
    # release's gradients (its weight gradient is one product, its input gradient col2im sums taps
    # in order 0..8).
    x, w, g = _inputs(shape, seed=1)
    y, gx, gw = _value_and_grads(_fast, x, w, g)
    _, rgx, rgw = _value_and_grads(cond_depthwise_conv2d_unfold, x, w, g)
    assert torch.equal(y, _sequential(x, w))
    assert torch.equal(gw, rgw)
    assert torch.equal(gx, rgx)


@pytest.mark.parametrize("path", PATHS)
def test_non_contiguous_inputs(path):
    _, _, g = _inputs((2, 3, 6, 5))
    # x as a transposed view, weight channels-last and sliced out of a wider tensor.
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64).transpose(2, 3).requires_grad_()
    big = torch.randn(2, 30, 6, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
    w = big[:, 1:28].detach().requires_grad_()
    assert not x.is_contiguous() and not w.is_contiguous()
    g = g.transpose(2, 3).contiguous().transpose(2, 3)  # a non-contiguous incoming gradient too
    ref = _value_and_grads(cond_depthwise_conv2d_unfold, x, w, g)
    got = _value_and_grads(PATHS[path], x, w, g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("path", PATHS)
def test_gradcheck(path):
    x, w, _ = _inputs((2, 2, 4, 3))
    assert torch.autograd.gradcheck(PATHS[path], (x, w))


def test_eager_path_equals_kernel_path():
    x, w, g = _inputs((2, 5, 9, 12), dtype=torch.float32)
    a = _value_and_grads(_fast, x, w, g)
    b = _value_and_grads(cond_depthwise_conv2d_eager, x, w, g)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-5)


def test_env_var_forces_eager_path(monkeypatch):
    monkeypatch.setenv("CCFPSE_NO_EXT", "1")
    assert ops._kernel() is None
    calls = []
    monkeypatch.setattr(ops, "_forward", lambda x, w: calls.append(1) or _sequential(x, w))
    x, w, _ = _inputs((1, 2, 4, 4))
    cond_depthwise_conv2d(x, w)
    assert calls == [1]


def test_kernel_builds_into_extensions_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("CCFPSE_NO_EXT", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(ops, "_lib", None)
    _kernel_or_skip()
    assert list((tmp_path / "ccfpse_ops").glob("cond_depthwise_*.so"))
    x, w, g = _inputs((1, 2, 5, 5))
    for a, b in zip(_value_and_grads(cond_depthwise_conv2d, x, w, g), _value_and_grads(_sequential, x, w, g)):
        torch.testing.assert_close(a, b, **F64)


def test_failed_build_falls_back_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("CCFPSE_NO_EXT", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(ops, "_lib", None)
    with caplog.at_level(logging.WARNING, logger="ccfpse.ops"):
        assert ops._kernel() is None
    assert "eager path" in caplog.text
    x, w, g = _inputs((1, 2, 5, 5))
    ref = _value_and_grads(cond_depthwise_conv2d_unfold, x, w, g)
    for a, b in zip(_value_and_grads(cond_depthwise_conv2d, x, w, g), ref):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_cpu(dtype):
    x, w, g = _inputs((2, 3, 8, 8))
    exact = cond_depthwise_conv2d_unfold(x, w).detach()
    xh, wh = x.detach().to(dtype).requires_grad_(), w.detach().to(dtype).requires_grad_()
    y = cond_depthwise_conv2d(xh, wh)
    y.backward(g.to(dtype))
    assert y.dtype == dtype and xh.grad.dtype == dtype and wh.grad.dtype == dtype
    # Sums are accumulated in float32: no less accurate than the release's form at this dtype.
    err = (y.double() - exact).abs().mean()
    release_err = (cond_depthwise_conv2d_unfold(xh, wh).double() - exact).abs().mean()
    assert err <= release_err
    _, rgx, rgw = _value_and_grads(cond_depthwise_conv2d_unfold, xh, wh, g.to(dtype))
    torch.testing.assert_close(wh.grad, rgw, rtol=0, atol=0)  # one product, rounded once
    torch.testing.assert_close(xh.grad.double(), rgx.double(), rtol=0.02, atol=0.05)


def test_mixed_dtypes_promote_and_autocast():
    x, w, g = _inputs((1, 2, 6, 6), dtype=torch.float32)
    wb = w.detach().bfloat16().requires_grad_()
    y = cond_depthwise_conv2d(x, wb)
    y.backward(g)
    assert y.dtype == torch.float32 and x.grad.dtype == torch.float32 and wb.grad.dtype == torch.bfloat16
    # Under autocast a conv predicts the kernels in bf16 while x stays float32.
    conv = torch.nn.Conv2d(2, 18, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kernels = conv(x)
        assert kernels.dtype == torch.bfloat16
        out = cond_depthwise_conv2d(x, kernels)
    out.sum().backward()
    assert out.dtype == torch.float32 and conv.weight.grad is not None


def test_single_input_gradients():
    x, w, g = _inputs((1, 2, 5, 4))
    _, rgx, rgw = _value_and_grads(cond_depthwise_conv2d_unfold, x, w, g)
    (gx,) = torch.autograd.grad(cond_depthwise_conv2d(x, w.detach()), x, g)
    (gw,) = torch.autograd.grad(cond_depthwise_conv2d(x.detach(), w), w, g)
    torch.testing.assert_close(gx, rgx, **F64)
    torch.testing.assert_close(gw, rgw, **F64)


def _saved_bytes(fn, x, w):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, w)
    return sum(storages.values())


@pytest.mark.parametrize("path", PATHS)
def test_saves_only_the_inputs_for_backward(path):
    x, w, _ = _inputs((2, 4, 16, 16), dtype=torch.float32)
    ours = _saved_bytes(PATHS[path], x, w)
    assert ours == (x.numel() + w.numel()) * 4
    assert ours <= 0.6 * _saved_bytes(cond_depthwise_conv2d_unfold, x, w)


@pytest.mark.parametrize(
    "xs, ws",
    [
        ((1, 2, 4, 4), (1, 17, 4, 4)),  # not C*9 channels
        ((1, 2, 4, 4), (1, 18, 4, 5)),  # spatial size differs
        ((1, 2, 4, 4), (2, 18, 4, 4)),  # batch differs
        ((2, 4, 4), (18, 4, 4)),  # x not 4-D
    ],
)
def test_shape_mismatch_raises(xs, ws):
    for fn in (cond_depthwise_conv2d, cond_depthwise_conv2d_eager, cond_depthwise_conv2d_unfold):
        with pytest.raises(ValueError, match="cond_depthwise_conv2d"):
            fn(torch.zeros(xs), torch.zeros(ws))


def test_integer_inputs_raise():
    with pytest.raises(ValueError, match="floating-point"):
        cond_depthwise_conv2d(torch.zeros(1, 1, 2, 2, dtype=torch.long), torch.zeros(1, 9, 2, 2))


@pytest.mark.parametrize("path", PATHS)
def test_under_activation_checkpointing(path):
    # The generator may recompute the kernel maps in backward (non-reentrant checkpoint).
    from torch.utils.checkpoint import checkpoint

    x, w, g = _inputs((1, 2, 6, 5))
    ref = _value_and_grads(cond_depthwise_conv2d_unfold, x, w, g)
    got = _value_and_grads(lambda a, b: checkpoint(PATHS[path], a, b * 1.0, use_reentrant=False), x, w, g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **F64)


# --- predict_and_apply_kernels ------------------------------------------------------------------

STRIP_SHAPE = (2, 3, 4, 7, 5)  # N, C, Ch, H, W: odd H and W
# strip_rows: 1 row, 2 and 3 (do not divide H = 7), 7 and 50 (one strip), None (default: one strip).
STRIP_ROWS = [1, 2, 3, 7, 50, None]


def _predict_inputs(shape=STRIP_SHAPE, bias=True, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, c, ch, h, w = shape
    x = torch.randn((n, c, h, w), generator=gen, dtype=dtype).requires_grad_()
    hidden = torch.randn((n, ch, h, w), generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn((9 * c, ch, 3, 3), generator=gen, dtype=dtype).requires_grad_()
    b = torch.randn(9 * c, generator=gen, dtype=dtype).requires_grad_() if bias else None
    g = torch.randn((n, c, h, w), generator=gen, dtype=dtype)
    return (x, hidden, weight, b), g


def _dense(x, hidden, weight, bias):
    return cond_depthwise_conv2d(x, F.conv2d(hidden, weight, bias, padding=1))


def _strips(rows):
    return lambda *args: ops.predict_and_apply_kernels(*args, strip_rows=rows)


def _outputs_and_grads(fn, args, g):
    y = fn(*args)
    wrt = [t for t in args if t is not None and t.requires_grad]
    return (y, *torch.autograd.grad(y, wrt, g))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", STRIP_ROWS)
def test_predict_and_apply_kernels_matches_dense(rows, bias):
    args, g = _predict_inputs(bias=bias)
    got = _outputs_and_grads(_strips(rows), args, g)
    ref = _outputs_and_grads(_dense, args, g)
    assert len(got) == len(ref) == (5 if bias else 4)  # value; grads of x, hidden, weight (, bias)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_predict_and_apply_kernels_default_strips(monkeypatch):
    # A small budget so that the default strip height gives several strips: 2 rows here.
    n, c, _, _, w = STRIP_SHAPE
    monkeypatch.setattr(ops, "STRIP_BYTES", 2 * n * 9 * c * w * 4 + 3)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        args, g = _predict_inputs(dtype=dtype)
        calls = []
        real = ops._strip
        monkeypatch.setattr(ops, "_strip", lambda *a: calls.append(a[0].shape[2]) or real(*a))
        got = _outputs_and_grads(ops.predict_and_apply_kernels, args, g)
        monkeypatch.setattr(ops, "_strip", real)
        if dtype == torch.float32:  # 4 strips of at most 2 rows (plus halo), forward and backward
            assert calls == [3, 4, 4, 2] * 2
        else:  # float64: 1 row per strip
            assert len(calls) == 14 and max(calls) == 3
        for a, b in zip(got, _outputs_and_grads(_dense, args, g)):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_predict_and_apply_kernels_gradcheck():
    args, _ = _predict_inputs((1, 2, 2, 5, 3))
    assert torch.autograd.gradcheck(_strips(2), args)


@pytest.mark.parametrize("needed", [(0,), (1,), (2,), (3,), (1, 2, 3), (0, 2)])
def test_predict_and_apply_kernels_needs_input_grad(needed):
    args, g = _predict_inputs()
    args = tuple(t.detach().requires_grad_(i in needed) for i, t in enumerate(args))
    got = _outputs_and_grads(_strips(3), args, g)
    ref = _outputs_and_grads(_dense, args, g)
    assert len(got) == len(needed) + 1
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_predict_and_apply_kernels_saves_only_inputs_and_no_grad():
    args, _ = _predict_inputs(dtype=torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = ops.predict_and_apply_kernels(*args, strip_rows=2)
        assert {t.untyped_storage().data_ptr() for t in saved} == {t.untyped_storage().data_ptr() for t in args}
        saved.clear()
        with torch.no_grad():
            y0 = ops.predict_and_apply_kernels(*args, strip_rows=2)
        assert saved == [] and y0.grad_fn is None and not y0.requires_grad
    assert y.grad_fn is not None
    torch.testing.assert_close(y0, _dense(*args).detach(), rtol=1e-5, atol=1e-5)


def test_predict_and_apply_kernels_no_double_backward():
    args, g = _predict_inputs((1, 1, 2, 4, 3))
    y = ops.predict_and_apply_kernels(*args, strip_rows=2)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(y, args[0], g, create_graph=True)


def test_predict_and_apply_kernels_autocast():
    args, g = _predict_inputs(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _outputs_and_grads(_strips(2), args, g)
        ref = _outputs_and_grads(_dense, args, g)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.5)


@pytest.mark.parametrize(
    "shapes, problem",
    [
        (((1, 2, 4, 4), (1, 3, 4, 4), (17, 3, 3, 3), None), "18 output channels"),
        (((1, 2, 4, 4), (1, 3, 4, 5), (18, 3, 3, 3), None), "spatial sizes"),
        (((1, 2, 4, 4), (2, 3, 4, 4), (18, 3, 3, 3), None), "batch sizes"),
        (((1, 2, 4, 4), (1, 3, 4, 4), (18, 2, 3, 3), None), "input channels"),
        (((1, 2, 4, 4), (1, 3, 4, 4), (18, 3, 1, 1), None), r"3x3 conv weight"),
        (((1, 2, 4, 4), (1, 3, 4, 4), (18, 3, 3, 3), (9,)), r"bias must have shape"),
        (((2, 4, 4), (1, 3, 4, 4), (18, 3, 3, 3), None), "4-D"),
    ],
)
def test_predict_and_apply_kernels_bad_shapes(shapes, problem):
    xs, hs, ws, bs = shapes
    with pytest.raises(ValueError, match=f"predict_and_apply_kernels: .*{problem}"):
        ops.predict_and_apply_kernels(
            torch.zeros(xs), torch.zeros(hs), torch.zeros(ws), None if bs is None else torch.zeros(bs)
        )


@pytest.mark.parametrize("rows", [0, -1, 2.0])
def test_predict_and_apply_kernels_bad_strip_rows(rows):
    args = torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(18, 3, 3, 3), None
    with pytest.raises(ValueError, match="strip_rows must be a positive int"):
        ops.predict_and_apply_kernels(*args, strip_rows=rows)
