"""Data-parallel training on the engine PyTorch ships: ``torchrun`` + DistributedDataParallel.

NCCL on CUDA, gloo on CPU. Only rank 0 writes files; every rank holds the same weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ccfpse.nn.norm import GlooSyncBatchNorm


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
