"""Pretrained weights of the metric networks: local path, cache, or download with a checksum.

Every metric net (Inception for FID, the paper's segmenters, the LPIPS backbone) names its
weights with a ``WeightSpec``. ``resolve_weights`` returns a local file: the path the user gave
(``--inception-weights PATH`` and friends), else a cached copy, else a download into the cache.
Offline and without a path it raises ``WeightsError`` naming the URL, the cache location and the
option to use, never a traceback. ``read_state_dict`` / ``load_state_dict_strict`` turn a file into
a network's weights and reject files that belong to another network with one clear message.

Cache: ``$CCFPSE_CACHE_DIR`` or ``$XDG_CACHE_HOME/ccfpse`` (default ``~/.cache/ccfpse``), under
``weights/``. Files that torch.hub / torchvision / pytorch-fid already downloaded into
``torch.hub.get_dir()/checkpoints`` are used as they are.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ccfpse.errors import WeightsError, unreadable_reason


@dataclass(frozen=True)
class WeightSpec:
    """Where one weight file comes from and how to check it.

    ``sha256`` is the full hex digest when it is known, or the leading hex digits that torch.hub
    puts in a file name (``name-<sha256 prefix>.pth``); ``None`` when no digest is published.
    """

    what: str  # human name used in messages, e.g. "Inception FID weights"
    filename: str  # file name inside the cache (may contain a sub-folder)
    url: str | None
    sha256: str | None
    option: str  # the command-line option that takes a local path
    where_to_get: str | None = None  # hint when there is no direct URL


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    sha256: str
    source: str  # "path" | "cache" | "torch-hub-cache" | "download"


def cache_dir() -> Path:
    """Folder holding downloaded metric weights."""
    root = os.environ.get("CCFPSE_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "weights"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "ccfpse" / "weights"


def _torch_hub_checkpoint(filename: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(filename).name


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_ok(digest: str, expected: str | None) -> bool:
    return expected is None or digest.startswith(expected.lower())


def _download(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` atomically (a partial file never takes the final name)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    os.close(fd)
    try:
        torch.hub.download_url_to_file(url, tmp, progress=True)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve_weights(spec: WeightSpec, path: str | os.PathLike | None = None) -> ResolvedWeights:
    """A verified local copy of ``spec``'s weights (see the module docstring for the order)."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsError(f"{spec.what}: {p} is not a file (given with {spec.option})")
        # A user's own file may legitimately differ from the published one (e.g. re-saved);
        # whether it fits the network is checked when it is loaded.
        return ResolvedWeights(p, sha256_file(p), "path")

    candidates = [(cache_dir() / spec.filename, "cache"), (_torch_hub_checkpoint(spec.filename), "torch-hub-cache")]
    for candidate, source in candidates:
        if candidate.is_file():
            digest = sha256_file(candidate)
            if not _checksum_ok(digest, spec.sha256):
                raise WeightsError(
                    f"{spec.what}: cached file {candidate} fails its checksum (sha256 {digest}, "
                    f"expected {spec.sha256}...); delete it to download again, or pass {spec.option} PATH"
                )
            return ResolvedWeights(candidate, digest, source)

    target = cache_dir() / spec.filename
    if spec.url is None:
        hint = f" ({spec.where_to_get})" if spec.where_to_get else ""
        raise WeightsError(
            f"{spec.what}: no direct download exists{hint}; download {Path(spec.filename).name} "
            f"yourself and pass {spec.option} PATH, or put it at {target}"
        )
    try:
        _download(spec.url, target)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsError(
            f"{spec.what}: cannot download {spec.url} ({reason}); without network, fetch the file "
            f"elsewhere and pass {spec.option} PATH, or put it at {target}"
        ) from None
    digest = sha256_file(target)
    if not _checksum_ok(digest, spec.sha256):
        target.unlink()
        raise WeightsError(
            f"{spec.what}: the download from {spec.url} fails its checksum (sha256 {digest}, "
            f"expected {spec.sha256}...); it was deleted"
        )
    return ResolvedWeights(target, digest, "download")


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.safetensors`` file, unwrapped from the usual containers
    (``{"state_dict": ...}``, ``{"model": ...}``) and from DataParallel's ``module.`` prefix."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes one clear message
        raise WeightsError(f"{path} is not a readable weight file for the {what}: {unreadable_reason(e)}") from None
    for key in ("state_dict", "model", "net"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} is not a state dict of tensors, so not the {what}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _short_list(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_state_dict_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], what: str, source: str | Path
) -> None:
    """Load ``state`` into ``module`` requiring every key and shape to match.

    BatchNorm's ``num_batches_tracked`` counters are not required (old checkpoints lack them and
    evaluation never reads them). ``module`` may live on the meta device: tensors are assigned.
    """
    state = dict(state)
    own = module.state_dict(keep_vars=True)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    for key in [k for k in state if k.endswith("num_batches_tracked") and k not in own]:
        del state[key]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short_list(unexpected)}")
        raise WeightsError(f"file {source} is not {what}: " + "; ".join(parts))
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape
    ]
    if wrong:
        raise WeightsError(f"file {source} is not {what}: shape mismatch for {_short_list(wrong, 3)}")
    # Keep the network's dtypes (a file saved in half precision must not turn the net into fp16).
    state = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
