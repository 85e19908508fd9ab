"""BatchNorm's batch moments: the compiled two-pass kernel against float64, and its gradient."""

import pytest
import torch
import torch.nn as nn

from ccfpse.nn import norm
from ccfpse.nn.norm import batch_moments, batch_norm_affine
from tests.test_ops import _kernel_or_skip

SHAPES = [(2, 64, 16, 16), (1, 3, 5, 7), (3, 17, 33, 31), (2, 512, 4, 4), (1, 1, 1, 1)]


def _reference(x: torch.Tensor):
    var, mean = torch.var_mean(x.detach().double(), dim=(0, 2, 3), unbiased=False)
    return mean, var


@pytest.mark.parametrize("shape", SHAPES)
def test_compiled_moments_match_float64(shape):
    _kernel_or_skip()
    # A mean 300x the spread: a one-pass E[x^2] - E[x]^2 in float32 would lose the variance.
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).mul(3).add(1000).float()
    assert norm._moments_lib(x) is not None  # the compiled path is the one under test
    mean, var, count = batch_moments(x, synced=False)
    ref_mean, ref_var = _reference(x)
    assert count.item() == x.numel() // x.shape[1]
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-7, atol=0)
    if x[0, 0].numel() * x.shape[0] > 1:
        torch.testing.assert_close(var.double(), ref_var, rtol=1e-6, atol=0)
    else:
        assert var.item() == 0.0


def test_compiled_moments_gradient_matches_autograd_of_float64():
    _kernel_or_skip()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((2, 5, 6, 7), generator=gen).requires_grad_()
    g_mean, g_var = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
    mean, var, _ = batch_moments(x, synced=False)
    for gm, gv in ((g_mean, g_var), (g_mean, None), (None, g_var)):
        outs = [t for t, g in ((mean, gm), (var, gv)) if g is not None]
        got, = torch.autograd.grad(outs, x, [g for g in (gm, gv) if g is not None], retain_graph=True)
        x64 = x.detach().double().requires_grad_()
        var64, mean64 = torch.var_mean(x64, dim=(0, 2, 3), unbiased=False)
        loss = (mean64 * gm.double()).sum() if gm is not None else 0
        loss = loss + ((var64 * gv.double()).sum() if gv is not None else 0)
        want, = torch.autograd.grad(loss, x64)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make", [
    lambda x: x.transpose(2, 3),  # not contiguous
    lambda x: x.double(),  # not float32
])
def test_other_inputs_take_torch_var_mean(make):
    x = make(torch.randn((2, 4, 6, 8), generator=torch.Generator().manual_seed(2)))
    assert norm._moments_lib(x) is None
    mean, var, _ = batch_moments(x, synced=False)
    ref_mean, ref_var = _reference(x)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-5, atol=1e-7)


def test_affine_map_equals_batch_norm_module_and_updates_running_stats():
    torch.manual_seed(3)
    bn, ref = nn.BatchNorm2d(6), nn.BatchNorm2d(6)
    nn.init.normal_(bn.weight), nn.init.normal_(bn.bias)
    ref.load_state_dict(bn.state_dict())
    x = torch.randn(3, 6, 9, 10) * 2 + 5
    scale, shift = batch_norm_affine(bn, x)
    torch.testing.assert_close(x * scale + shift, ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-6, atol=1e-7)
