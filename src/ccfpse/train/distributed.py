"""Data-parallel training on the engine PyTorch ships: ``torchrun`` + DistributedDataParallel.

NCCL on CUDA, gloo on CPU. Only rank 0 writes files; every rank holds the same weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that torchrun describes in the environment (no-op without it)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value)
        value /= info.world_size
    return value


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's decision (e.g. stop after a signal) for every rank."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def _differentiable_all_reduce(t: torch.Tensor) -> torch.Tensor:
    import warnings

    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():  # deprecated, but its suggested successor has no autograd
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(t)


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the global batch of all ranks, for devices
    where ``nn.SyncBatchNorm`` is not supported (the CPU with gloo). All-reduces of per-channel
    sums; ``torch.distributed.nn`` makes it differentiable, so gradients flow through the global
    statistics exactly as in SyncBatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        c = x.shape[1]
        count = x.new_full((1,), x.numel() / c)
        sums = _differentiable_all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        total = sums[-1]
        mean = sums[:c] / total
        # Two passes: E[x^2] - E[x]^2 loses precision when the mean dominates (one-hot inputs).
        var = _differentiable_all_reduce((x - mean[None, :, None, None]).square().sum((0, 2, 3))) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * total / (total - 1).clamp_min(1), m)
        out = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Synchronise the generator's BatchNorms across ranks, as the release does on GPUs."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats, device="meta")
            # The same parameter and buffer objects, so optimizers and EMA keep working on them.
            for key, value in list(child.named_parameters(recurse=False)) + list(child.named_buffers(recurse=False)):
                setattr(sync, key, value)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child, device_type)
    return module
