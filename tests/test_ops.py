"""Conditional depthwise convolution: both paths against the release's unfold form and the
definition, for whole maps and for windows of rows (``x_offset``)."""

import logging
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from ccfpse import native, ops
from ccfpse.ops import cond_depthwise_conv2d, cond_depthwise_conv2d_eager, cond_depthwise_conv2d_unfold

SHAPES = [(2, 3, 5, 7), (1, 1, 4, 4), (1, 2, 1, 9), (2, 4, 16, 8), (3, 1, 6, 2), (1, 1, 1, 1)]
F64 = dict(rtol=0.0, atol=1e-13)  # a few ulps of sums of nine O(1) products


def _kernel_or_skip():
    if native.lib() is None:
        if os.environ.get("CCFPSE_NO_EXT") == "1":
            pytest.skip("CCFPSE_NO_EXT=1 disables the compiled kernel")
        if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
            pytest.skip("no C compiler here, so no compiled kernel")
        pytest.fail("the compiled kernel did not build or load although a C compiler exists (see log)")


def _fast(x, w, x_offset=0):
    _kernel_or_skip()
    return cond_depthwise_conv2d(x, w, x_offset)


PATHS = {"kernel": _fast, "eager": cond_depthwise_conv2d_eager}


def _inputs(shape, dtype=torch.float64, seed=0, x_rows=None):
    """x (N, C, x_rows or H, W), weight (N, 9C, H, W) and an output gradient (N, C, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn((n, c, h if x_rows is None else x_rows, w), generator=gen, dtype=dtype).requires_grad_()
    wt = torch.randn((n, c * 9, h, w), generator=gen, dtype=dtype).requires_grad_()
    g = torch.randn(shape, generator=gen, dtype=dtype)
    return x, wt, g


def _value_and_grads(fn, x, w, g):
    y = fn(x, w)
    return (y, *torch.autograd.grad(y, (x, w), g))


def _sequential(x, w, x_offset=0):
    """The definition, summed tap by tap in order 0..8 with plain multiplies and adds: output row
    y reads rows y + x_offset - 1 .. y + x_offset + 1 of x zero-padded by one all round."""
    n, c, _, wd = x.shape
    h = w.shape[2]
    xp, w5 = F.pad(x, (1, 1, 1, 1)), w.reshape(n, c, 9, h, wd)
    out = torch.zeros((n, c, h, wd), dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            # padded row x_offset + i + y is x row y + x_offset + i - 1
            out = out + w5[:, :, i * 3 + j] * xp[:, :, x_offset + i : x_offset + i + h, j : j + wd]
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
    assert native.lib() is None
    assert ops._kernel_for(torch.zeros(1)) is None
    calls = []
    monkeypatch.setattr(ops, "_forward", lambda x, w, xo: calls.append(xo) or _sequential(x, w, xo))
    x, w, _ = _inputs((1, 2, 4, 4))
    cond_depthwise_conv2d(x, w)
    x, w, _ = _inputs((1, 2, 4, 4), x_rows=5)
    cond_depthwise_conv2d(x, w, x_offset=1)
    assert calls == [0, 1]


def test_kernel_for_takes_only_float_cpu_tensors():
    _kernel_or_skip()
    assert ops._kernel_for(torch.zeros(1)) is native.lib()
    assert ops._kernel_for(torch.zeros(1, dtype=torch.float64)) is native.lib()
    for dtype in (torch.bfloat16, torch.float16):
        assert ops._kernel_for(torch.zeros(1, dtype=dtype)) is None
    assert ops._kernel_for(torch.zeros(1, device="meta")) is None


def test_kernel_builds_into_extensions_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("CCFPSE_NO_EXT", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_lib", None)  # forget the cached library: build again, here
    _kernel_or_skip()
    built = list((tmp_path / "ccfpse_ops").glob("ccfpse_native_*.so"))
    assert len(built) == 1
    assert native._lib._name == str(built[0])  # and that is the one loaded
    x, w, g = _inputs((1, 2, 5, 5))
    for a, b in zip(_value_and_grads(cond_depthwise_conv2d, x, w, g), _value_and_grads(_sequential, x, w, g)):
        torch.testing.assert_close(a, b, **F64)


def test_failed_build_falls_back_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("CCFPSE_NO_EXT", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(native, "_lib", None)
    with caplog.at_level(logging.WARNING, logger="ccfpse.ops"):
        assert native.lib() is None
        assert ops._kernel_for(torch.zeros(1)) is None
        assert native.lib() is None  # not retried, and warned only once
    warnings = [r for r in caplog.records if r.name == "ccfpse.ops" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "eager path" in warnings[0].getMessage()
    assert native._lib is False
    assert not list(tmp_path.rglob("*.so"))
    x, w, g = _inputs((1, 2, 5, 5))
    ref = _value_and_grads(cond_depthwise_conv2d_unfold, x, w, g)
    for a, b in zip(_value_and_grads(cond_depthwise_conv2d, x, w, g), ref):
        torch.testing.assert_close(a, b, **F64)
    x, w, g = _inputs((1, 2, 5, 5), x_rows=7)  # windows of rows work on the fallback too
    ref = _value_and_grads(lambda a, b: _sequential(a, b, 1), x, w, g)
    for a, b in zip(_value_and_grads(lambda a, b: cond_depthwise_conv2d(a, b, 1), x, w, g), ref):
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


def _saved(fn, *args):
    """{storage pointer: bytes} of the tensors autograd saves for backward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return storages


@pytest.mark.parametrize("path", PATHS)
def test_saves_only_the_inputs_for_backward(path):
    x, w, _ = _inputs((2, 4, 16, 16), dtype=torch.float32)
    ours = sum(_saved(PATHS[path], x, w).values())
    assert ours == (x.numel() + w.numel()) * 4
    assert ours <= 0.6 * sum(_saved(cond_depthwise_conv2d_unfold, x, w).values())


@pytest.mark.parametrize(
    "xs, ws",
    [
        ((1, 2, 4, 4), (1, 17, 4, 4)),  # not C*9 channels
        ((1, 2, 4, 4), (1, 18, 4, 5)),  # widths differ
        ((1, 2, 4, 4), (2, 18, 4, 4)),  # batch differs
        ((2, 4, 4), (18, 4, 4)),  # x not 4-D
        ((1, 2, 4, 4), (1, 18, 5, 4)),  # x has fewer rows than the output
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


# --- windows of rows (x_offset) -----------------------------------------------------------------

# (x_offset, rows of x below the output rows): no halo, halo above, halo below, both.
WINDOWS = {"none": (0, 0), "above": (1, 0), "below": (0, 1), "both": (1, 1)}
WINDOW_SHAPES = [(2, 3, 5, 7), (1, 2, 1, 4), (1, 1, 3, 1), (2, 4, 16, 9)]  # output (N, C, H, W)


def _window_inputs(shape, window, seed=0):
    x_offset, below = WINDOWS[window]
    x, w, g = _inputs(shape, seed=seed, x_rows=shape[2] + x_offset + below)
    return x, w, g, x_offset


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("shape", WINDOW_SHAPES)
def test_window_matches_definition_float64(path, window, shape):
    x, w, g, xo = _window_inputs(shape, window)
    got = _value_and_grads(lambda a, b: PATHS[path](a, b, xo), x, w, g)
    ref = _value_and_grads(lambda a, b: _sequential(a, b, xo), x, w, g)
    assert got[1].shape == x.shape and got[2].shape == w.shape
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **F64)
    if path == "kernel":  # same products in the same order, no FMA
        assert torch.equal(got[0], ref[0])


@pytest.mark.parametrize("path", PATHS)
def test_window_halo_rows_matter(path):
    # The halo rows enter the result (a kernel ignoring x_offset or the extra rows would pass a
    # test whose halo rows were zero): changing only the top (bottom) row of x changes only the
    # first (last) output row.
    x, w, _, xo = _window_inputs((1, 2, 4, 5), "both")
    x = x.detach()
    base = PATHS[path](x, w.detach(), xo)
    for row, out_row in ((0, 0), (-1, -1)):
        x2 = x.clone()
        x2[:, :, row] += 1.0
        diff = (PATHS[path](x2, w.detach(), xo) - base).abs().amax((0, 1, 3))
        assert diff[out_row] > 0.1
        assert torch.count_nonzero(diff) == 1


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("window", ["above", "both"])
def test_window_gradcheck(path, window):
    x, w, _, xo = _window_inputs((1, 2, 3, 4), window, seed=2)
    assert torch.autograd.gradcheck(lambda a, b: PATHS[path](a, b, xo), (x, w))


@pytest.mark.parametrize("path", PATHS)
def test_window_single_input_gradients(path):
    x, w, g, xo = _window_inputs((2, 3, 4, 5), "both", seed=3)
    _, rgx, rgw = _value_and_grads(lambda a, b: _sequential(a, b, xo), x, w, g)
    (gx,) = torch.autograd.grad(PATHS[path](x, w.detach(), xo), x, g)
    (gw,) = torch.autograd.grad(PATHS[path](x.detach(), w, xo), w, g)
    torch.testing.assert_close(gx, rgx, **F64)
    torch.testing.assert_close(gw, rgw, **F64)


@pytest.mark.parametrize("path", PATHS)
def test_strips_of_rows_reassemble_the_whole_map(path):
    # What the windows are for: output rows [a, b) of a map come from its rows [a-1, b+1) (clipped
    # at the borders) and those rows of the kernel map; the strips together are the whole map,
    # values and gradients.
    x, w, g = _inputs((2, 3, 9, 6), seed=4)
    h = x.shape[2]
    bounds = [0, 1, 3, 4, 8, 9]  # strips of 1, 2, 1, 4 and 1 rows: top, middle and bottom
    parts = []
    for a, b in zip(bounds, bounds[1:]):
        lo, hi = max(0, a - 1), min(h, b + 1)
        parts.append(PATHS[path](x[:, :, lo:hi], w[:, :, a:b], a - lo))
    got = torch.cat(parts, 2)
    got = (got, *torch.autograd.grad(got, (x, w), g))
    ref = _value_and_grads(cond_depthwise_conv2d_unfold, x, w, g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", ["rows", "transposed"])
def test_window_view_of_a_bigger_tensor(path, layout):
    # x as a window big[:, :, 3:9] of a bigger map: with contiguous rows (what strips of an NCHW
    # map give) and, as a harder case, with rows that are not contiguous.
    gen = torch.Generator().manual_seed(5)
    if layout == "rows":
        big = torch.randn(2, 3, 12, 5, dtype=torch.float64, generator=gen)
    else:
        big = torch.randn(2, 3, 5, 12, dtype=torch.float64, generator=gen).transpose(2, 3)
    big.requires_grad_()
    x = big[:, :, 3:9]
    assert not x.is_contiguous()
    w = torch.randn(2, 27, 4, 5, dtype=torch.float64, generator=gen).requires_grad_()
    g = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=gen)
    y = PATHS[path](x, w, 1)
    gbig, gw = torch.autograd.grad(y, (big, w), g)
    xr = big.detach()[:, :, 3:9].contiguous().requires_grad_()
    ref = _value_and_grads(lambda a, b: _sequential(a, b, 1), xr, w, g)
    torch.testing.assert_close(y, ref[0], **F64)
    torch.testing.assert_close(gw, ref[2], **F64)
    torch.testing.assert_close(gbig[:, :, 3:9], ref[1], **F64)
    assert torch.count_nonzero(gbig[:, :, :3]) == 0 and torch.count_nonzero(gbig[:, :, 9:]) == 0


def test_kernel_reads_a_window_in_place():
    # A window with contiguous rows goes to the kernel as it is (its strides are passed), not as
    # a padded or contiguous copy: autograd saves the big tensor's own storage.
    _kernel_or_skip()
    big = torch.randn(2, 3, 12, 5, requires_grad=True)
    x = big[:, :, 3:9]
    w = torch.randn(2, 27, 4, 5, requires_grad=True)
    saved = _saved(cond_depthwise_conv2d, x, w, 1)
    assert big.untyped_storage().data_ptr() in saved
    assert sum(saved.values()) == (big.numel() + w.numel()) * 4


@pytest.mark.parametrize(
    "x_rows, h, x_offset",
    [
        (6, 4, 2),  # offset above 1
        (4, 4, -1),  # negative offset
        (7, 4, 1),  # three extra rows
        (3, 4, 0),  # fewer rows than the output
        (4, 4, 1),  # a halo row above but no room for it
        (6, 4, 0),  # two extra rows but no halo row above: two below
    ],
)
def test_bad_window_raises(x_rows, h, x_offset):
    x, w = torch.zeros(1, 2, x_rows, 5), torch.zeros(1, 18, h, 5)
    msg = rf"cond_depthwise_conv2d: x \({x_rows} rows\) must cover the {h} output rows.*x_offset={x_offset}"
    for fn in (cond_depthwise_conv2d, cond_depthwise_conv2d_eager):
        with pytest.raises(ValueError, match=msg):
            fn(x, w, x_offset)
