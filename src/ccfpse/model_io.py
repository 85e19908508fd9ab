"""Our native model format: a directory with ``config.json`` and ``G.safetensors``
[``D.safetensors``, ``E.safetensors``]. Written atomically (temp dir + rename)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ccfpse.config import Config, ConfigError
from ccfpse.errors import CheckpointError, unreadable_reason
from ccfpse.nn import ConvEncoder, CCFPSEGenerator, FPSEDiscriminator

FORMAT = "ccfpse-model-1"


def save_model_dir(
    out_dir: str | Path,
    cfg: Config,
    G: nn.Module,
    D: nn.Module | None = None,
    E: nn.Module | None = None,
) -> Path:
    """Write the networks and their config; an existing directory is replaced whole."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, net in (("G", G), ("D", D), ("E", E)):
            if net is not None:
                state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
                save_file(state, str(tmp / f"{name}.safetensors"), metadata={"format": FORMAT})
        meta = {"format": FORMAT, "config": cfg.to_dict()}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.exists():
            old = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_model_config(model_dir: str | Path) -> Config:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: not a ccfpse model directory (no config.json)")
    try:
        meta = json.loads(path.read_text())
        return Config.from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: malformed model config ({e})") from None


def load_weights(net: nn.Module, path: Path) -> nn.Module:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    missing, unexpected = set(net.state_dict()) - set(state), set(state) - set(net.state_dict())
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the config (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the config ({e})") from None
    return net


def load_model_dir(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[Config, CCFPSEGenerator, FPSEDiscriminator | None, ConvEncoder | None]:
    """(config, G, D or None, E or None), in eval mode on ``device``."""
    model_dir = Path(model_dir)
    cfg = read_model_config(model_dir)
    m = cfg.model
    G = load_weights(CCFPSEGenerator.from_config(m), model_dir / "G.safetensors")
    D = E = None
    if (model_dir / "D.safetensors").exists():
        D = load_weights(FPSEDiscriminator(m.semantic_nc, m.ndf, label_channels=m.num_label_channels), model_dir / "D.safetensors")
    if (model_dir / "E.safetensors").exists():
        E = load_weights(ConvEncoder(m.ngf, m.z_dim), model_dir / "E.safetensors")
    nets = [n.to(device).eval() if n is not None else None for n in (G, D, E)]
    return cfg, nets[0], nets[1], nets[2]


TRAIN_FORMAT = "ccfpse-train-1"


def read_training_checkpoint(path: str | Path) -> dict:
    """A training checkpoint written by ``ccfpse train`` (tensors and plain data only)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a zip, foreign pickle
        raise CheckpointError(f"{path}: not a readable ccfpse training checkpoint ({unreadable_reason(e)})") from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path}: not a ccfpse training checkpoint (format {TRAIN_FORMAT} expected)")
    return state


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``checkpoints/step_*.pt`` of a run directory, or None."""
    ckpts = sorted(Path(run_dir, "checkpoints").glob("step_*.pt"))
    return ckpts[-1] if ckpts else None


def load_for_inference(
    path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[Config, CCFPSEGenerator, ConvEncoder | None]:
    """(config, G, E or None) in eval mode from a model directory, a training checkpoint file or
    a run directory (its newest checkpoint). The EMA generator is used when there is one."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file() and (path / "G.safetensors").is_file():
        cfg, G, _, E = load_model_dir(path, device)
        return cfg, G, E
    if path.is_dir():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise CheckpointError(
                f"{path}: neither a model directory (config.json + G.safetensors) nor a run "
                "directory with checkpoints/step_*.pt"
            )
        path = ckpt
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or model directory")
    state = read_training_checkpoint(path)
    try:
        cfg = Config.from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: malformed config ({e})") from None
    nets = state["nets"]
    G = CCFPSEGenerator.from_config(cfg.model)
    G.load_state_dict(nets["G_ema"] if use_ema and nets.get("G_ema") is not None else nets["G"])
    E = None
    if nets.get("E") is not None:
        E = ConvEncoder(cfg.model.ngf, cfg.model.z_dim)
        E.load_state_dict(nets["E"])
        E = E.to(device).eval()
    return cfg, G.to(device).eval(), E
