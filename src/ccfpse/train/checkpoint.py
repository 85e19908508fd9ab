"""Training checkpoints that survive kill -9: written to a temp file, fsynced, then renamed.

A checkpoint holds everything needed to continue bit-exactly: G, D, E, the EMA generator, both
optimizers, the grad scaler, step/epoch/position in the epoch, and the RNG states.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccfpse.atomic import atomic_file, remove_leftovers
from ccfpse.errors import CheckpointError, unreadable_reason
from ccfpse.model_io import TRAIN_FORMAT, latest_checkpoint, read_training_checkpoint

__all__ = [
    "TRAIN_FORMAT", "atomic_save", "save_checkpoint", "latest_checkpoint", "read_training_checkpoint",
    "prune_checkpoints", "best_checkpoint_fid", "rng_state", "set_rng_state", "seed_rngs",
]


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to ``path`` so that a reader never sees a partial file, and fsynced: a
    checkpoint that was renamed into place also survives a power cut."""
    with atomic_file(path, "wb", durable=True, public=False) as f:
        torch.save(obj, f)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:09d}.pt"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any]) -> Path:
    path = checkpoint_path(run_dir, step)
    atomic_save({"format": TRAIN_FORMAT, "step": step, **state}, path)
    return path


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` step checkpoints (``best.pt`` is never touched)."""
    ckpts = sorted(Path(run_dir, "checkpoints").glob("step_*.pt"))
    for old in ckpts[: max(0, len(ckpts) - keep_last)]:
        old.unlink(missing_ok=True)
    remove_leftovers(Path(run_dir, "checkpoints"))  # saves killed half-way


def best_checkpoint_fid(run_dir: Path) -> float:
    """The FID recorded in the run's ``best.pt`` (inf when there is none): a resumed run replaces
    that file only with a model that scores better."""
    path = Path(run_dir, "checkpoints", "best.pt")
    if not path.is_file():
        return float("inf")
    try:  # memory-mapped: only the metrics are read, not the networks
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return float(state["metrics"]["fid"])
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem to the user
        raise CheckpointError(
            f"{path}: not a readable best checkpoint ({unreadable_reason(e)}); move it away to start "
            "a new best"
        ) from None


def rng_state() -> dict[str, Any]:
    """Every RNG the training step draws from, as tensors and plain Python data."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_rngs(seed: int) -> None:
    """Seed every RNG that ``rng_state`` records (torch with CUDA, NumPy, Python), so that runs
    with the same seed hold the same states, in their checkpoints too: an unseeded one would
    start from the OS's entropy in every process."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
