"""Device choice shared by training, synthesis and evaluation."""

from __future__ import annotations

import torch

from ccfpse.errors import CCFPSEError


def pick_device(name: str | None = None) -> torch.device:
    """``name`` or, for None/"auto", CUDA if available, else MPS, else CPU."""
    if name and name != "auto":
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise CCFPSEError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise CCFPSEError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CCFPSEError(f"device {name!r} asked for, but MPS is not available here; use --device cpu")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
