"""``winograd.conv3x3``: F(4x4, 3x3) Winograd path and its F.conv2d fallback against a float64
``F.conv2d`` on the explicitly padded input, for whole maps and for strips of rows."""

import pytest
import torch
import torch.nn.functional as F

from ccfpse import native, winograd
from ccfpse.winograd import conv3x3, uses_winograd, winograd_weight

# Max abs error of the float32 Winograd path relative to max |reference| in the correctness
# tests. Measured up to 1.1e-5 for C = 128 (test_float32_error_bound), less for fewer channels;
# a wrong tile, row or column gives errors of order 1.
REL = 3e-5
F64 = dict(rtol=1e-12, atol=1e-12)
WINOGRAD_FN = "_WinogradConv3x3Backward"
UNFOLDED_FN = "_UnfoldedConv3x3Backward"


# The size thresholds of the dispatch (those that winograd.py defines).
THRESHOLDS = [name for name in ("MIN_PIXELS", "MIN_CHANNELS", "MIN_FILTERS") if hasattr(winograd, name)]


def _any_size(monkeypatch):
    """Let the Winograd path take the tests' tiny maps and few channels."""
    for name in THRESHOLDS:
        monkeypatch.setattr(winograd, name, 1)


@pytest.fixture
def wino(monkeypatch):
    """The Winograd path for any size: skip without the compiled library."""
    if native.lib() is None:
        pytest.skip("compiled kernels unavailable (CCFPSE_NO_EXT=1 or no working C compiler): "
                    "conv3x3 can only use F.conv2d")
    _any_size(monkeypatch)


def _inputs(n, c, k, h, w, out_rows=None, bias=True, seed=0, dtype=torch.float32):
    """x, weight, bias (or None) requiring grad, and an output gradient."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, h, w), generator=gen, dtype=dtype).requires_grad_()
    wt = (torch.randn((k, c, 3, 3), generator=gen, dtype=dtype) / (9 * c) ** 0.5).requires_grad_()
    b = torch.randn(k, generator=gen, dtype=dtype).requires_grad_() if bias else None
    gy = torch.randn((n, k, h if out_rows is None else out_rows, w), generator=gen, dtype=dtype)
    return x, wt, b, gy


def _grads(y, inputs, gy):
    wrt = [t for t in inputs if t is not None and t.requires_grad]
    return (y, *torch.autograd.grad(y, wrt, gy))


def _reference(x, wt, b, gy, pad_top=1, out_rows=None):
    """Value and gradients of a float64 F.conv2d on x zero-padded explicitly for the strip."""
    h = x.shape[2]
    out_rows = h + 2 * pad_top - 2 if out_rows is None else out_rows
    pad_bottom = out_rows + 2 - pad_top - h
    leaves = [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in (x, wt, b)]
    xd, wd, bd = leaves
    y = F.conv2d(F.pad(xd, (1, 1, pad_top, pad_bottom)), wd, bd)
    assert y.shape[2] == out_rows
    return _grads(y, leaves, gy.double())


def _assert_close_rel(got, ref, rel=REL):
    assert len(got) == len(ref)
    for a, r in zip(got, ref):
        assert a.shape == r.shape and a.dtype == torch.float32
        err = (a.double() - r).abs().max().item()
        assert err <= rel * r.abs().max().item() + 1e-30, f"max error {err:.3g}, max |ref| {r.abs().max().item():.3g}"


# (N, C, K, H, W): H and W not multiples of 4, W = 1, H = 1, one channel, batch 2, whole tiles.
SHAPES = [(1, 3, 5, 7, 9), (2, 4, 3, 5, 6), (1, 1, 1, 1, 1), (1, 2, 3, 1, 7), (1, 3, 2, 6, 1),
          (2, 1, 4, 4, 4), (1, 5, 6, 9, 13), (1, 8, 8, 12, 16)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_conv2d(wino, shape, bias):
    x, wt, b, gy = _inputs(*shape, bias=bias)
    assert uses_winograd(x, wt)
    y = conv3x3(x, wt, b)
    assert type(y.grad_fn).__name__ == WINOGRAD_FN
    _assert_close_rel(_grads(y, (x, wt, b), gy), _reference(x, wt, b, gy))


# (pad_top, out_rows as an offset from H): all the strip geometries, and the defaults.
GEOMETRIES = [(1, 0), (1, -1), (0, -1), (0, -2), (1, None), (0, None)]


@pytest.mark.parametrize("h", [6, 7, 3])
@pytest.mark.parametrize("pad_top, rows", GEOMETRIES)
def test_strip_geometry(wino, h, pad_top, rows):
    out_rows = None if rows is None else h + rows
    expected_rows = h + 2 * pad_top - 2 if rows is None else out_rows
    x, wt, b, gy = _inputs(2, 3, 4, h, 5, out_rows=expected_rows, seed=1)
    y = conv3x3(x, wt, b, pad_top=pad_top, out_rows=out_rows)
    assert y.shape == (2, 4, expected_rows, 5) and type(y.grad_fn).__name__ == WINOGRAD_FN
    _assert_close_rel(_grads(y, (x, wt, b), gy), _reference(x, wt, b, gy, pad_top, out_rows))


@pytest.mark.parametrize("pretransformed", [False, True])
def test_strips_reassemble_the_whole_map(wino, pretransformed):
    # What the strip geometry is for: output rows [a, b) from input rows [a-1, b+1), clipped at
    # the borders (a zero row above the first strip, below the last); together the whole map.
    x, wt, b, gy = _inputs(1, 3, 4, 11, 6, seed=2)
    h = x.shape[2]
    u = winograd_weight(wt) if pretransformed else wt
    bounds = [0, 1, 5, 6, 10, 11]  # strips of 1, 4, 1, 4 and 1 rows
    parts = []
    for a, e in zip(bounds, bounds[1:]):
        lo, hi = max(0, a - 1), min(h, e + 1)
        parts.append(conv3x3(x[:, :, lo:hi], u, b, pad_top=1 - (a - lo), out_rows=e - a))
    y = torch.cat(parts, 2)
    _assert_close_rel(_grads(y, (x, wt, b), gy), _reference(x, wt, b, gy))


def test_many_chunks_equal_one_chunk(wino, monkeypatch):
    x, wt, b, gy = _inputs(2, 5, 6, 13, 11, seed=3)  # 4 tile rows
    counts = []
    real = winograd._chunks
    monkeypatch.setattr(winograd, "_chunks", lambda *a: counts.append(len(real(*a))) or real(*a))
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 2**40)
    one = _grads(conv3x3(x, wt, b), (x, wt, b), gy)
    assert counts == [1, 1]  # forward, backward
    ref = _reference(x, wt, b, gy)
    _assert_close_rel(one, ref)
    tw = (11 + 3) // 4
    for chunk_bytes, chunks in ((1, 4), (3 * 36 * 6 * 2 * tw * 4, 2)):  # 1 tile row each; 3 + 1
        counts.clear()
        monkeypatch.setattr(winograd, "CHUNK_BYTES", chunk_bytes)
        many = _grads(conv3x3(x, wt, b), (x, wt, b), gy)
        assert counts == [chunks, chunks]
        _assert_close_rel(many, ref)
        # Only the rounding of the products differs (BLAS blocks other sizes differently).
        for a, c in zip(many, one):
            torch.testing.assert_close(a, c, rtol=0, atol=1e-5 * c.abs().max().item())


def test_filter_blocks_of_one_chunk(wino, monkeypatch):
    """With one chunk the filters are transformed block by block (and their gradient back):
    several blocks give what one block gives."""
    x, wt, b, gy = _inputs(2, 5, 7, 9, 10, seed=4)
    ref = _reference(x, wt, b, gy)
    one = _grads(conv3x3(x, wt, b), (x, wt, b), gy)
    real = winograd._blocks
    calls = []
    monkeypatch.setattr(winograd, "_blocks", lambda k, tiles: calls.append(k) or [(k0, min(k, k0 + 3)) for k0 in range(0, k, 3)])
    many = _grads(conv3x3(x, wt, b), (x, wt, b), gy)
    assert calls == [7, 7] and len(winograd._chunks(3, 3, 2, 5)) == 1 and len(real(7, 18)) == 1
    _assert_close_rel(many, ref)
    for a, c in zip(many, one):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-5 * c.abs().max().item())


def test_winograd_weight_is_g_g_gt():
    gen = torch.Generator().manual_seed(4)
    wt = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64)
    u = winograd_weight(wt)
    assert u.shape == (36, 3, 2)
    g = winograd._G
    for k in range(3):
        for c in range(2):
            torch.testing.assert_close(u[:, k, c].view(6, 6), g @ wt[k, c] @ g.T, **F64)


def test_pretransformed_weights_give_the_same(wino):
    x, wt, b, gy = _inputs(2, 3, 4, 9, 7, seed=5)
    direct = _grads(conv3x3(x, wt, b), (x, wt, b), gy)
    # The gradient reaches wt through winograd_weight.
    got = _grads(conv3x3(x, winograd_weight(wt), b), (x, wt, b), gy)
    _assert_close_rel(got, _reference(x, wt, b, gy))
    for a, c in zip(got, direct):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-5 * c.abs().max().item())
    # A transformed leaf: its gradient maps back to the filters' by the transform's transpose.
    u = winograd_weight(wt).detach().requires_grad_()
    (gu,) = torch.autograd.grad(conv3x3(x, u, b), u, gy)
    assert gu.shape == u.shape
    gw = direct[2]
    torch.testing.assert_close(winograd._weight_grad(gu, 4, 3), gw, rtol=0, atol=1e-5 * gw.abs().max().item())


@pytest.mark.parametrize("path, fn, rel", [("wino", WINOGRAD_FN, REL), ("unfolded", UNFOLDED_FN, 2e-6)])
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("needed", ["x", "weight", "bias", "x bias", "weight bias"])
def test_single_input_gradients(request, path, fn, rel, n, needed):
    request.getfixturevalue(path)
    x, wt, b, gy = _inputs(n, 3, 4, 6, 5, seed=6)
    for name, t in zip(("x", "weight", "bias"), (x, wt, b)):
        t.requires_grad_(name in needed.split())
    y = conv3x3(x, wt, b)
    assert type(y.grad_fn).__name__ == fn
    got = _grads(y, (x, wt, b), gy)
    assert len(got) == len(needed.split()) + 1
    _assert_close_rel(got, _reference(x, wt, b, gy), rel)


@pytest.mark.parametrize("layout", ["rows", "transposed"])
def test_window_view_of_a_bigger_tensor(wino, layout):
    gen = torch.Generator().manual_seed(7)
    if layout == "rows":  # rows contiguous, as a strip of an NCHW map: read where it is
        big = torch.randn(2, 3, 20, 6, generator=gen)
    else:  # rows not contiguous: copied first
        big = torch.randn(2, 3, 6, 20, generator=gen).transpose(2, 3)
    big.requires_grad_()
    x = big[:, :, 3:11]
    assert not x.is_contiguous()
    _, wt, b, gy = _inputs(2, 3, 4, 8, 6, out_rows=6, seed=8)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = conv3x3(x, wt, b, pad_top=0, out_rows=6)
    assert (big.untyped_storage().data_ptr() in saved) == (layout == "rows")
    gbig, gw, gb = torch.autograd.grad(y, (big, wt, b), gy)
    xr = big.detach()[:, :, 3:11].contiguous().requires_grad_()
    ref = _reference(xr, wt, b, gy, pad_top=0, out_rows=6)
    _assert_close_rel((y, gbig[:, :, 3:11], gw, gb), ref)
    assert torch.count_nonzero(gbig[:, :, :3]) == 0 and torch.count_nonzero(gbig[:, :, 11:]) == 0


def test_saves_only_the_inputs(wino):
    x, wt, b, _ = _inputs(2, 8, 16, 12, 12)
    saved = {}
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()), lambda t: t
    ):
        conv3x3(x, wt, b)
    assert sum(saved.values()) == (x.numel() + wt.numel()) * 4  # no transformed tiles


def test_no_grad_inference(wino):
    x, wt, b, gy = _inputs(1, 3, 4, 6, 5, seed=9)
    with torch.no_grad():
        y = conv3x3(x, wt, b)
    assert y.grad_fn is None and not y.requires_grad
    _assert_close_rel((y,), _reference(x, wt, b, gy)[:1])


def test_two_threads(wino):
    # Large enough for the transforms' OpenMP loops to run on two threads (native.threads).
    x, wt, b, gy = _inputs(1, 16, 16, 32, 30, seed=10)
    ref = _reference(x, wt, b, gy)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert native.threads(16 * 36 * 8 * 8) == 2
        got = _grads(conv3x3(x, wt, b), (x, wt, b), gy)
    finally:
        torch.set_num_threads(threads)
    _assert_close_rel(got, ref)


@pytest.mark.parametrize("path", ["wino", "unfolded"])
def test_double_backward_raises(request, path):
    request.getfixturevalue(path)
    x, wt, b, gy = _inputs(1, 2, 3, 5, 5)
    y = conv3x3(x, wt, b)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(y, x, gy, create_graph=True)
    (gx,) = torch.autograd.grad(conv3x3(x, wt, b), x, gy)  # first order is fine
    assert gx.shape == x.shape


def test_float32_error_bound(wino):
    # Winograd F(4x4, 3x3) in float32 against float64, C = 128 input channels, unit-variance
    # inputs, filters of variance 1/(9C). Measured here (4 seeds, 3 shapes with C = 128):
    # relative RMS error y 2.4e-6, grad x 2.4e-6, grad weight 1.8e-6; max error / max |ref|
    # y 1.1e-5, grad x 6.7e-6, grad weight 6.4e-6. A direct float32 convolution: 2.2e-7 RMS,
    # 3e-7 max. Bounds about 3x above the measurements.
    x, wt, b, gy = _inputs(1, 128, 64, 32, 32, seed=0)
    got = _grads(conv3x3(x, wt, b), (x, wt, b), gy)
    ref = _reference(x, wt, b, gy)
    for name, a, r in zip(("y", "grad x", "grad weight", "grad bias"), got, ref):
        err = a.double() - r
        rel_rms = (err.pow(2).mean().sqrt() / r.pow(2).mean().sqrt()).item()
        rel_max = (err.abs().max() / r.abs().max()).item()
        assert rel_rms < 7e-6, f"{name}: relative RMS error {rel_rms:.3g}"
        assert rel_max < 3e-5, f"{name}: max error / max |ref| {rel_max:.3g}"


# --- dispatch and fallback ----------------------------------------------------------------------


def _no_winograd(case, monkeypatch):
    """Make conv3x3 take F.conv2d; returns the dtype to use."""
    _any_size(monkeypatch)
    if case == "float64":
        return torch.float64
    if case == "min_pixels":
        monkeypatch.setattr(winograd, "MIN_PIXELS", 10**9)
    elif case == "no_ext":
        monkeypatch.setenv("CCFPSE_NO_EXT", "1")
    elif case == "failed_build":
        monkeypatch.delenv("CCFPSE_NO_EXT", raising=False)
        monkeypatch.setenv("CC", "false")
        monkeypatch.setattr(native, "_lib", None)
    return torch.float32


FALLBACKS = ["float64", "min_pixels", "no_ext", "failed_build"]


@pytest.mark.parametrize("case", FALLBACKS)
@pytest.mark.parametrize("pad_top, rows", GEOMETRIES)
def test_fallback_equals_conv2d(case, pad_top, rows, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    dtype = _no_winograd(case, monkeypatch)
    h = 6
    out_rows = None if rows is None else h + rows
    expected_rows = h + 2 * pad_top - 2 if rows is None else out_rows
    x, wt, b, gy = _inputs(2, 3, 4, h, 5, out_rows=expected_rows, seed=11, dtype=dtype)
    assert not uses_winograd(x, wt, pad_top, expected_rows)
    y = conv3x3(x, wt, b, pad_top=pad_top, out_rows=out_rows)
    assert type(y.grad_fn).__name__ == "ConvolutionBackward0" and y.dtype == dtype
    got = _grads(y, (x, wt, b), gy)
    if pad_top == 1 and rows in (0, None):  # the plain "same" convolution: the very same call
        assert torch.equal(y, F.conv2d(x, wt, b, padding=1))
    ref = _reference(x, wt, b, gy, pad_top, out_rows)
    for a, r in zip(got, ref):
        tol = F64 if dtype == torch.float64 else dict(rtol=0, atol=1e-5 * r.abs().max().item())
        torch.testing.assert_close(a.double(), r, **tol)


def test_fallback_under_autocast(wino):
    x, wt, b, _ = _inputs(1, 3, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_winograd(x, wt)
        y = conv3x3(x, wt, b)
        ref = F.conv2d(x, wt, b, padding=1)
    assert y.dtype == torch.bfloat16 and torch.equal(y, ref)
    assert uses_winograd(x, wt)  # and back on outside the region


@pytest.mark.parametrize("pad_top, out_rows", [(1, None), (1, 7), (0, 6), (0, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_uses_winograd_agrees_with_dispatch(monkeypatch, pad_top, out_rows, dtype):
    _any_size(monkeypatch)
    x, wt, b, _ = _inputs(2, 2, 3, 8, 5, dtype=dtype)
    rows = 8 if out_rows is None else out_rows
    for threshold in (2 * rows * 5, 2 * rows * 5 + 1):  # exactly enough output pixels; one short
        monkeypatch.setattr(winograd, "MIN_PIXELS", threshold)
        y = conv3x3(x, wt, b, pad_top=pad_top, out_rows=out_rows)
        assert y.shape[2] == rows
        took = type(y.grad_fn).__name__ == WINOGRAD_FN
        assert uses_winograd(x, wt, pad_top, out_rows) == took
        expected = dtype == torch.float32 and threshold == 2 * rows * 5 and native.lib() is not None
        assert took == expected


@pytest.mark.parametrize("name, limit", [("MIN_CHANNELS", 4), ("MIN_FILTERS", 6)])
def test_uses_winograd_agrees_with_dispatch_on_channels(monkeypatch, name, limit):
    # x has 4 channels, the weight 6 filters: enough at the limit, one short above it.
    if name not in THRESHOLDS:
        pytest.skip(f"winograd.{name} does not exist")
    _any_size(monkeypatch)
    x, wt, b, _ = _inputs(1, 4, 6, 8, 5)
    for value in (limit, limit + 1):
        monkeypatch.setattr(winograd, name, value)
        for weight in (wt, winograd_weight(wt)) if value == limit and native.lib() is not None else (wt,):
            y = conv3x3(x, weight, b)
            took = type(y.grad_fn).__name__ == WINOGRAD_FN
            assert uses_winograd(x, weight) == took
            assert took == (value == limit and native.lib() is not None)


@pytest.mark.parametrize(
    "h, pad_top, out_rows",
    [
        (6, 2, None),  # two zero rows above
        (6, -1, 6),  # negative padding
        (6, 1, 7),  # would need two zero rows below
        (6, 1, 4),  # would drop an input row: not a 3x3 strip
        (6, 0, 6),  # two zero rows below
        (6, 0, 3),
        (2, 0, 0),  # no output rows
        (1, 0, None),  # default: -1 rows
    ],
)
def test_impossible_geometry_raises(h, pad_top, out_rows):
    x, wt, _, _ = _inputs(1, 2, 3, h, 5, bias=False)
    with pytest.raises(ValueError, match=r"conv3x3: -?\d+ output rows cannot come from \d+ input rows"):
        conv3x3(x, wt, pad_top=pad_top, out_rows=out_rows)


@pytest.mark.parametrize("case", [c for c in FALLBACKS if c != "min_pixels"])
def test_transformed_weights_need_the_winograd_path(case, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    dtype = _no_winograd(case, monkeypatch)
    x, wt, _, _ = _inputs(1, 2, 3, 6, 5, bias=False, dtype=dtype)
    with pytest.raises(ValueError, match="Winograd-transformed weights need the Winograd path"):
        conv3x3(x, winograd_weight(wt))


def test_transformed_weights_take_the_winograd_path_whatever_the_size(monkeypatch):
    """The caller transformed them for many strips, the last of which may be small."""
    if native.lib() is None:
        pytest.skip("no compiled kernels here (CCFPSE_NO_EXT=1 or no C compiler)")
    monkeypatch.setattr(winograd, "MIN_PIXELS", 10**9)
    x, wt, b, gy = _inputs(1, 2, 3, 6, 5)
    y = conv3x3(x, winograd_weight(wt), b)
    assert type(y.grad_fn).__name__ == WINOGRAD_FN
    torch.testing.assert_close(y, F.conv2d(x, wt, b, padding=1), rtol=1e-5, atol=1e-5)


# --- small maps, many filters: matrix products over the unfolded input ---------------------------


@pytest.fixture
def unfolded(monkeypatch):
    """The unfolded path for the tests' few filters (and never the Winograd path)."""
    monkeypatch.setattr(winograd, "MIN_PIXELS", 10**9)
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "GEMM_MIN_FILTERS", 1)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("pad_top, rows", GEOMETRIES)
def test_unfolded_path_matches_conv2d(unfolded, n, bias, pad_top, rows):
    h = 6
    out_rows = None if rows is None else h + rows
    expected_rows = h + 2 * pad_top - 2 if rows is None else out_rows
    x, wt, b, gy = _inputs(n, 3, 4, h, 5, out_rows=expected_rows, bias=bias, seed=12)
    y = conv3x3(x, wt, b, pad_top=pad_top, out_rows=out_rows)
    assert y.shape == (n, 4, expected_rows, 5) and type(y.grad_fn).__name__ == UNFOLDED_FN
    _assert_close_rel(_grads(y, (x, wt, b), gy), _reference(x, wt, b, gy, pad_top, out_rows), rel=2e-6)


def test_unfolded_path_on_a_window_of_a_bigger_tensor(unfolded):
    big = torch.randn(2, 3, 20, 6, generator=torch.Generator().manual_seed(14))
    x = big[:, :, 4:10].requires_grad_(False)
    _, wt, b, gy = _inputs(2, 3, 4, 6, 6, out_rows=5, seed=15)
    got = _grads(conv3x3(x, wt, b, pad_top=0, out_rows=5), (wt, b), gy)
    _assert_close_rel(got, _reference(x, wt, b, gy, 0, 5), rel=2e-6)


def test_unfolded_path_dispatch(monkeypatch):
    """Maps below MIN_PIXELS with at least MIN_CHANNELS channels and GEMM_MIN_FILTERS filters, in
    float32 on the CPU outside autocast; otherwise F.conv2d (or Winograd on large maps)."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 3)
    monkeypatch.setattr(winograd, "GEMM_MIN_FILTERS", 4)
    monkeypatch.setattr(winograd, "MIN_FILTERS", 4)
    x, wt, _, _ = _inputs(2, 3, 4, 6, 5, bias=False)  # 60 output pixels

    def path(x, wt, **kw) -> str:
        return type(conv3x3(x, wt, **kw).grad_fn).__name__

    monkeypatch.setattr(winograd, "MIN_PIXELS", 61)
    assert path(x, wt) == UNFOLDED_FN
    assert path(x, wt, pad_top=0, out_rows=4) == UNFOLDED_FN
    assert path(x, wt[:3]) == "ConvolutionBackward0"  # one filter short
    assert path(x[:, :2], wt[:, :2]) == "ConvolutionBackward0"  # one channel short
    assert path(x.double(), wt.double()) == "ConvolutionBackward0"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert path(x, wt) == "ConvolutionBackward0"
    monkeypatch.setattr(winograd, "MIN_PIXELS", 60)  # large enough for Winograd
    expected = WINOGRAD_FN if native.lib() is not None else "ConvolutionBackward0"
    assert path(x, wt) == expected
