"""Import of the authors' released checkpoints (``latest_net_{G,D,E}.pth``) into our networks.

The release names its modules ``labelenc3.0.0.weight_orig``, ``head_0.gen_weights1.2.weight`` and
so on; our networks build repeated stages with lists. This module holds the one key map between
the two, checks every shape against the configuration, and concatenates the four first-layer
kernel predictors of each block into our single fused convolution. Spectral-norm ``u``/``v`` and
BatchNorm running statistics are copied as stored, so eval-mode outputs are the official ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ccfpse.config import Config, ModelConfig, preset
from ccfpse.errors import CheckpointError, unreadable_reason
from ccfpse.nn import ConvEncoder, CCFPSEGenerator, FPSEDiscriminator
from ccfpse.nn.generator import BLOCK_NAMES

# Official modules that the release builds but never uses in forward: accepted and dropped.
UNUSED_OFFICIAL_KEYS = re.compile(r"(^|\.)(norm_0|conv_0\.norm_layer|conv_2\.norm_layer)\.")
# The four first-layer kernel predictors of a block, in the order our fused conv stacks them.
FUSED_PREDICTORS = ("gen_weights1.0", "gen_weights2.0", "gen_se_weights1.0", "gen_se_weights2.0")
SECOND_LAYER_PREDICTORS = {
    "kernels_1": "gen_weights1.2",
    "kernels_2": "gen_weights2.2",
    "gate_1": "gen_se_weights1.2",
    "gate_2": "gen_se_weights2.2",
}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
BN_STAT_KEYS = ("running_mean", "running_var", "num_batches_tracked")


def official_config(
    label_nc: int,
    contain_dontcare_label: bool,
    no_instance: bool,
    ngf: int = 64,
    ndf: int = 64,
    crop_size: int = 256,
    aspect_ratio: float = 1.0,
    use_vae: bool = True,
    z_dim: int = 256,
    num_upsampling_layers: str = "normal",
) -> ModelConfig:
    """Our ``ModelConfig`` from the release's option names."""
    cfg = ModelConfig(
        label_nc=label_nc,
        contain_dontcare_label=contain_dontcare_label,
        use_instance=not no_instance,
        ngf=ngf,
        ndf=ndf,
        crop_size=crop_size,
        aspect_ratio=aspect_ratio,
        use_vae=use_vae,
        z_dim=z_dim,
        num_upsampling_layers=num_upsampling_layers,
    )
    cfg.validate()
    return cfg


# ----------------------------------------------------------------------------- key maps
# Each map is {our key: official key}; fused entries are {our key: [official keys]}.


def _plain(native: str, official: str, names: tuple[str, ...] = ("weight", "bias")) -> dict:
    return {f"{native}.{n}": f"{official}.{n}" for n in names}


def _spectral(native: str, official: str) -> dict:
    p = f"{native}.parametrizations.weight"
    return {f"{p}.original": f"{official}.weight_orig", f"{p}.0._u": f"{official}.weight_u",
            f"{p}.0._v": f"{official}.weight_v"}


def _bn_unit(native: str, official: str) -> dict:
    """ConvUnit <- Sequential(Sequential(SN conv, BatchNorm), LReLU)."""
    return _spectral(f"{native}.conv", f"{official}.0.0") | _plain(f"{native}.norm", f"{official}.0.1", BN_KEYS)


def generator_key_map(G: CCFPSEGenerator) -> dict[str, str | list[str]]:
    keys: dict[str, str | list[str]] = {}
    keys |= _plain("fc", "fc") | _plain("conv_img", "conv_img")
    for i in range(len(G.pyramid.down)):
        keys |= _bn_unit(f"pyramid.down.{i}", f"labelenc{i + 1}")
    for i in range(len(G.pyramid.lateral)):
        keys |= _bn_unit(f"pyramid.lateral.{i}", f"labellat{i + 1}")
        keys |= _bn_unit(f"pyramid.decode.{i}", f"labeldec{i + 1}")
    for b, (block, name) in enumerate(zip(G.blocks, BLOCK_NAMES)):
        n = f"blocks.{b}"
        for param in ("weight", "bias"):
            keys[f"{n}.predictor_in.{param}"] = [f"{name}.{p}.{param}" for p in FUSED_PREDICTORS]
        for native, official in SECOND_LAYER_PREDICTORS.items():
            keys |= _plain(f"{n}.{native}", f"{name}.{official}")
        keys |= _plain(f"{n}.norm_1", f"{name}.norm_1", BN_KEYS) | _plain(f"{n}.norm_2", f"{name}.norm_2", BN_KEYS)
        keys |= _plain(f"{n}.conv_1", f"{name}.conv_1") | _plain(f"{n}.conv_3", f"{name}.conv_3")
        if block.learned_shortcut:
            keys |= _spectral(f"{n}.conv_s", f"{name}.conv_s")
            keys |= _plain(f"{n}.norm_s.param_free_norm", f"{name}.norm_s.param_free_norm", BN_STAT_KEYS)
            keys |= _plain(f"{n}.norm_s.shared", f"{name}.norm_s.mlp_shared.0")
            keys |= _plain(f"{n}.norm_s.gamma", f"{name}.norm_s.mlp_gamma")
            keys |= _plain(f"{n}.norm_s.beta", f"{name}.norm_s.mlp_beta")
    return keys


def discriminator_key_map(D: FPSEDiscriminator) -> dict[str, str | list[str]]:
    keys: dict[str, str | list[str]] = {}
    for i in range(len(D.down)):
        keys |= _spectral(f"down.{i}.conv", f"enc{i + 1}.0.0")
    for i in range(len(D.lateral)):
        keys |= _spectral(f"lateral.{i}.conv", f"lat{i + 2}.0.0")
    for i in range(len(D.final)):
        keys |= _spectral(f"final.{i}.conv", f"final{i + 2}.0.0")
    keys |= _plain("real_fake", "tf") | _plain("seg", "seg") | _plain("embedding", "embedding")
    return keys


def encoder_key_map(E: ConvEncoder) -> dict[str, str | list[str]]:
    keys: dict[str, str | list[str]] = {}
    for i in range(len(E.layers)):
        keys |= _spectral(f"layers.{i}.conv", f"layer{i + 1}.0")
    keys |= _plain("fc_mu", "fc_mu") | _plain("fc_var", "fc_var")
    return keys


# ----------------------------------------------------------------------------- conversion


def _hint(official_key: str, cfg: ModelConfig | None) -> str:
    """The config option that most likely disagrees with the checkpoint at ``official_key``."""
    semantic = (
        "label_nc / contain_dontcare_label / no_instance "
        + (f"(the config gives semantic_nc={cfg.semantic_nc}: label_nc={cfg.label_nc}"
           f" + dontcare {int(cfg.contain_dontcare_label)} + instance edges {int(cfg.use_instance)})"
           if cfg else "")
    )
    if re.match(r"(labelenc1\.|embedding\.weight)", official_key) or re.search(
        r"(gen_\w+\.0|mlp_shared\.0)\.weight$", official_key
    ):
        return semantic
    if re.match(r"label(enc7|lat6|dec6)\.", official_key):
        return "num_upsampling_layers ('more' has labelenc7, labellat6, labeldec6; 'normal' does not)"
    if official_key.startswith("fc."):
        return "use_vae / z_dim / crop_size / aspect_ratio / num_upsampling_layers / ngf"
    if official_key.startswith("layer6."):
        return "the encoder: the release builds layer6 only for crop_size >= 256"
    return "ngf / ndf"


def convert_state_dict(
    official: dict[str, torch.Tensor],
    model: nn.Module,
    key_map: dict[str, str | list[str]],
    cfg: ModelConfig | None = None,
    source: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Rename (and fuse) an official state dict into ``model``'s keys, checking every shape."""
    official = {k.removeprefix("module."): v for k, v in official.items()}
    expected = model.state_dict()
    assert set(key_map) == set(expected), "key map out of date with the model"
    converted: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing = [k for ks in key_map.values() for k in ([ks] if isinstance(ks, str) else ks) if k not in official]
    if missing:
        raise CheckpointError(
            f"{source}: missing key {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; check the config option {_hint(missing[0], cfg)}"
        )
    for native, names in key_map.items():
        names = [names] if isinstance(names, str) else names
        tensors = [official[k] for k in names]
        used.update(names)
        value = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
        want = expected[native].shape
        if value.shape != want:
            key = names[0]
            if len(names) > 1:  # report the first of the fused parts that disagrees
                part = want[0] // len(names)
                key = next((k for k in names if official[k].shape[1:] != want[1:] or official[k].shape[0] != part), key)
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(official[key].shape)}, but the config "
                f"builds {tuple(want) if len(names) == 1 else (want[0] // len(names),) + tuple(want[1:])}; "
                f"check the config option {_hint(key, cfg)}"
            )
        converted[native] = value.to(expected[native].dtype)
    unexpected = sorted(k for k in official if k not in used and not UNUSED_OFFICIAL_KEYS.search(k))
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected key {unexpected[0]!r}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
            + f"; check the config option {_hint(unexpected[0], cfg)}"
        )
    return converted


def to_official_state_dict(model: nn.Module, key_map: dict[str, str | list[str]]) -> dict[str, torch.Tensor]:
    """Our weights under the official names (fused predictors split again); without the unused
    official BatchNorms. Used to export and by our round-trip checks."""
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for native, names in key_map.items():
        if isinstance(names, str):
            out[names] = ours[native].clone()
        else:
            for name, part in zip(names, ours[native].chunk(len(names), dim=0)):
                out[name] = part.clone()
    return out


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` state dict without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, disallowed globals
        raise CheckpointError(f"{path}: not a readable PyTorch state dict ({unreadable_reason(e)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def _load(path: str | Path, model: nn.Module, key_map_fn: Callable, cfg: ModelConfig) -> nn.Module:
    state = convert_state_dict(read_official(path), model, key_map_fn(model), cfg, source=str(path))
    model.load_state_dict(state)
    return model.eval()


def load_official_generator(path: str | Path, cfg: ModelConfig) -> CCFPSEGenerator:
    """The released ``latest_net_G.pth`` as our generator, in eval mode on the CPU."""
    return _load(path, CCFPSEGenerator.from_config(cfg), generator_key_map, cfg)


def load_official_discriminator(path: str | Path, cfg: ModelConfig) -> FPSEDiscriminator:
    return _load(path, FPSEDiscriminator(cfg.semantic_nc, cfg.ndf, label_channels=cfg.num_label_channels), discriminator_key_map, cfg)


def load_official_encoder(path: str | Path, cfg: ModelConfig) -> ConvEncoder:
    return _load(path, ConvEncoder(cfg.ngf, cfg.z_dim), encoder_key_map, cfg)


# ----------------------------------------------------------------------------- CLI


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert the authors' released checkpoints into a ccfpse model directory",
        description="Convert latest_net_G.pth (and optionally D and E) of the CC-FPSE release into "
        "a model directory (safetensors weights + config.json) that `ccfpse synthesize` reads.",
    )
    p.add_argument("--official", required=True, metavar="G.pth",
                   help="the release's generator checkpoint, or a folder holding latest_net_{G,D,E}.pth")
    p.add_argument("--net-d", metavar="D.pth", help="the release's discriminator checkpoint")
    p.add_argument("--net-e", metavar="E.pth", help="the release's encoder checkpoint")
    p.add_argument("--preset", required=True, choices=("ade20k", "coco_stuff", "cityscapes"),
                   help="the paper configuration the checkpoint was trained with")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. model.ngf=32 (repeatable)")
    p.add_argument("--out", required=True, help="output model directory")
    p.set_defaults(func=_convert_command)


def _convert_command(args) -> int:
    from ccfpse.config import apply_overrides
    from ccfpse.model_io import save_model_dir

    cfg: Config = apply_overrides(preset(args.preset), args.set)
    g_path, d_path, e_path = Path(args.official), args.net_d, args.net_e
    if g_path.is_dir():
        folder = g_path
        g_path = folder / "latest_net_G.pth"
        d_path = d_path or (folder / "latest_net_D.pth" if (folder / "latest_net_D.pth").exists() else None)
        e_path = e_path or (folder / "latest_net_E.pth" if (folder / "latest_net_E.pth").exists() else None)
    G = load_official_generator(g_path, cfg.model)
    D = load_official_discriminator(d_path, cfg.model) if d_path else None
    E = load_official_encoder(e_path, cfg.model) if e_path else None
    if E is not None and not cfg.model.use_vae:
        raise CheckpointError(f"{e_path}: an encoder was given but the config has use_vae=false")
    out = save_model_dir(args.out, cfg, G=G, D=D, E=E)
    nets = ", ".join(n for n, m in (("G", G), ("D", D), ("E", E)) if m is not None)
    print(f"wrote {out} ({nets}; preset {args.preset})")
    return 0
