"""BatchNorm as a per-channel affine map, and BatchNorm synchronised over processes on any device.

The conditional blocks normalise with batch statistics of the whole image but apply the result
strip by strip (``CondConvBlock``), so they take BatchNorm apart: ``batch_norm_affine`` returns
``(scale, shift)`` with ``norm(x) == x * scale + shift`` per channel, updating the running
statistics exactly as ``norm.forward`` would. Differentiable in ``x`` and the affine parameters.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from torch.autograd.function import once_differentiable

from ccfpse import native


def _all_reduce(t: Tensor) -> Tensor:
    """Differentiable sum over all processes."""
    import warnings

    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():  # deprecated, but its suggested successor has no autograd
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(t)


def _synced(norm: nn.Module) -> bool:
    return (isinstance(norm, (nn.SyncBatchNorm, GlooSyncBatchNorm)) and dist.is_available()
            and dist.is_initialized())


def batch_moments(x: Tensor, synced: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(mean, biased variance, count) per channel over (N, H, W) of ``x``, over every
    process's batch when ``synced``."""
    c = x.shape[1]
    if x.dtype in (torch.float16, torch.bfloat16):  # statistics in float32, as BatchNorm keeps them
        x = x.float()
    if not synced:
        lib = _moments_lib(x)
        if lib is not None:
            mean, var = _ChannelMoments.apply(x, lib)
        else:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        return mean, var, x.new_tensor(float(x.numel() // max(c, 1)))
    sums = _all_reduce(torch.cat([x.sum((0, 2, 3)), x.new_full((1,), x.numel() / c)]))
    count = sums[-1]
    mean = sums[:c] / count
    # Two passes: E[x^2] - E[x]^2 loses precision when the mean dominates (one-hot inputs).
    var = _all_reduce((x - mean[None, :, None, None]).square().sum((0, 2, 3))) / count
    return mean, var, count


def _moments_lib(x: Tensor):
    """The compiled library if it computes the moments of ``x`` (contiguous float32 on the CPU)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or not x.is_contiguous():
        return None
    return native.lib()


class _ChannelMoments(torch.autograd.Function):
    """(mean, biased variance) per channel of a contiguous float32 (N, C, H, W) map on the CPU
    (``csrc/moments.c``: two passes in double; ``torch.var_mean`` took 13x longer). Backward:
    d mean / dx = 1 / count, d var / dx = 2 (x - mean) / count."""

    @staticmethod
    def forward(ctx, x: Tensor, lib) -> tuple[Tensor, Tensor]:
        n, c = x.shape[:2]
        mean, var = x.new_empty(c), x.new_empty(c)
        lib.channel_moments_f32(x.data_ptr(), mean.data_ptr(), var.data_ptr(), n, c, x[0, 0].numel(),
                                native.threads(x.numel()))
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, g_mean: Tensor | None, g_var: Tensor | None):
        x, mean = ctx.saved_tensors
        count = x.numel() // x.shape[1]
        per_channel = (1, -1, 1, 1)
        gx = None
        if g_var is not None:
            gx = (x - mean.view(per_channel)).mul_((g_var * (2 / count)).view(per_channel))
        if g_mean is not None:
            g = (g_mean / count).view(per_channel)
            gx = gx.add_(g) if gx is not None else g.expand_as(x).contiguous()
        return gx, None


def batch_norm_affine(norm: nn.modules.batchnorm._BatchNorm, x: Tensor,
                      update_stats: bool = True) -> tuple[Tensor, Tensor]:
    """``(scale, shift)``, each of shape (1, C, 1, 1), with ``norm(x) == x * scale + shift``.

    In training mode (or without running statistics) from the batch's moments, updating the
    running statistics like ``norm.forward`` unless ``update_stats`` is False (a recomputation);
    in eval mode from the running statistics."""
    use_batch = norm.training or norm.running_mean is None
    if use_batch:
        mean, var, count = batch_moments(x, _synced(norm) and norm.training)
        if norm.training and norm.track_running_stats and update_stats:
            with torch.no_grad():
                norm.num_batches_tracked.add_(1)
                m = norm.momentum if norm.momentum is not None else 1 / float(norm.num_batches_tracked)
                norm.running_mean.lerp_(mean.detach(), m)
                norm.running_var.lerp_(var.detach() * count / (count - 1).clamp_min(1), m)
    else:
        mean, var = norm.running_mean, norm.running_var
    scale = torch.rsqrt(var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight
        shift = norm.bias - mean * scale
    else:
        shift = -mean * scale
    return scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the global batch of all ranks, for devices
    where ``nn.SyncBatchNorm`` is not supported (the CPU with gloo). All-reduces of per-channel
    sums; ``torch.distributed.nn`` makes it differentiable, so gradients flow through the global
    statistics exactly as in SyncBatchNorm."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _synced(self)):
            return super().forward(x)
        scale, shift = batch_norm_affine(self, x)
        return x * scale + shift
