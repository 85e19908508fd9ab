"""Typed configuration: model, data and training options, and the paper presets.

A ``Config`` is three dataclasses. Presets are plain functions returning a fresh ``Config``;
YAML files and ``--set section.key=value`` overrides are applied on top of a preset.
Derived quantities (``semantic_nc``, the latent grid size) are properties, never stored.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccfpse.atomic import atomic_write_text
from ccfpse.errors import CCFPSEError

UPSAMPLING_MODES = ("normal", "more")
PRESETS = ("ade20k", "coco_stuff", "cityscapes", "landscapes")


class ConfigError(CCFPSEError, ValueError):
    """A configuration value is missing, unknown or inconsistent."""


def latent_grid(crop_size: int, aspect_ratio: float, num_upsampling_layers: str) -> tuple[int, int]:
    """(sh, sw) of the generator's start tensor, as the release computes it."""
    if num_upsampling_layers not in UPSAMPLING_MODES:
        raise ConfigError(
            f"num_upsampling_layers must be one of {UPSAMPLING_MODES}, got {num_upsampling_layers!r}"
        )
    num_up = 5 if num_upsampling_layers == "normal" else 6
    sw = crop_size // 2**num_up
    sh = round(sw / aspect_ratio)
    if sw < 1 or sh < 1 or crop_size % 2**num_up:
        raise ConfigError(
            f"crop_size={crop_size} must be a positive multiple of {2**num_up} for "
            f"num_upsampling_layers={num_upsampling_layers!r} (aspect_ratio={aspect_ratio})"
        )
    return sh, sw


@dataclass
class ModelConfig:
    label_nc: int = 10
    contain_dontcare_label: bool = False
    use_instance: bool = False
    ngf: int = 64
    ndf: int = 64
    crop_size: int = 256
    aspect_ratio: float = 1.0
    use_vae: bool = True
    z_dim: int = 256
    num_upsampling_layers: str = "normal"
    # Hidden width of the kernel predictors and of SPADE's shared MLP (128 in the release).
    predictor_hidden: int = 128

    @property
    def semantic_nc(self) -> int:
        """Channels of the generator/discriminator input: one-hot classes [+ dontcare] [+ edges]."""
        return self.label_nc + int(self.contain_dontcare_label) + int(self.use_instance)

    @property
    def num_label_channels(self) -> int:
        """One-hot channels only (label_nc plus the dontcare channel), without instance edges."""
        return self.label_nc + int(self.contain_dontcare_label)

    @property
    def num_up_layers(self) -> int:
        return {"normal": 5, "more": 6}[self.num_upsampling_layers]

    @property
    def latent_size(self) -> tuple[int, int]:
        """(sh, sw) of the generator's start tensor."""
        return latent_grid(self.crop_size, self.aspect_ratio, self.num_upsampling_layers)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of generated images."""
        sh, sw = self.latent_size
        scale = 2**self.num_up_layers
        return sh * scale, sw * scale

    def validate(self) -> None:
        if self.label_nc < 1:
            raise ConfigError(f"model.label_nc must be >= 1, got {self.label_nc}")
        for name in ("ngf", "ndf", "z_dim", "predictor_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.aspect_ratio <= 0:
            raise ConfigError(f"model.aspect_ratio must be > 0, got {self.aspect_ratio}")
        self.latent_size  # raises on a crop size the generator cannot produce


@dataclass
class DataConfig:
    # ade20k | cityscapes | coco_stuff | custom (landscapes data is generated in the custom layout)
    dataset_mode: str = "custom"
    dataroot: str | None = None
    image_dir: str | None = None
    label_dir: str | None = None
    instance_dir: str | None = None
    # JSON/CSV mapping RGB colours to class ids, for colour-coded label masks.
    palette: str | None = None
    # resize_and_crop | fixed | scale_width | scale_width_and_crop | none
    preprocess_mode: str = "resize_and_crop"
    load_size: int = 286
    no_flip: bool = False
    # Raw label value that marks "unlabeled" pixels in custom data (mapped to the dontcare index).
    ignore_label: int | None = None
    num_workers: int = 2
    # Size of generated landscapes images when the built-in data set is used.
    landscapes_size: int = 64
    landscapes_num: int = 1000


@dataclass
class TrainConfig:
    batch_size: int = 1
    niter: int = 100  # epochs at the initial learning rate
    niter_decay: int = 100  # epochs of linear decay to zero
    max_steps: int | None = None
    lr: float = 2e-4  # base lr; TTUR gives G/E lr/2 and D lr*2
    beta1: float = 0.0
    beta2: float = 0.9
    no_ttur: bool = False
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    lambda_kld: float = 0.05
    no_ganfeat_loss: bool = False
    no_vgg_loss: bool = False
    vgg_weights: str | None = None
    ema_decay: float = 0.999
    use_ema: bool = True
    precision: str = "fp32"  # fp32 | bf16 | fp16
    checkpoint_activations: bool = False
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    save_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    sample_every: int = 200
    eval_every: int = 0
    eval_num_images: int = 64
    inception_weights: str | None = None
    segmenter: str | None = None
    segmenter_weights: str | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        cfg = cls(preset=d.get("preset"))
        unknown = set(d) - {"model", "data", "train", "preset"}
        if unknown:
            raise ConfigError(f"unknown config sections: {sorted(unknown)}")
        for section in ("model", "data", "train"):
            for key, value in (d.get(section) or {}).items():
                set_value(cfg, f"{section}.{key}", value)
        cfg.model.validate()
        return cfg

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def _coerce(value: Any, current: Any, type_hint: str, key: str) -> Any:
    """Convert a string from ``--set`` to the field's type; typed values pass through."""
    if not isinstance(value, str):
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    text = value.strip()
    if text.lower() in ("none", "null") and "None" in type_hint:
        return None
    if "bool" in type_hint:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    try:
        if "int" in type_hint and "float" not in type_hint:
            return int(text)
        if "float" in type_hint:
            return float(text)
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    return text


def set_value(cfg: Config, dotted_key: str, value: Any) -> None:
    """Set ``section.key`` (e.g. ``model.ngf``) on ``cfg``, converting strings to the field type."""
    if "." not in dotted_key:
        raise ConfigError(f"override {dotted_key!r} must be section.key, e.g. model.ngf=32")
    section_name, key = dotted_key.split(".", 1)
    section = getattr(cfg, section_name, None)
    if section_name not in ("model", "data", "train") or section is None:
        raise ConfigError(f"unknown config section {section_name!r} in {dotted_key!r}")
    fields = {f.name: f for f in dataclasses.fields(section)}
    if key not in fields:
        raise ConfigError(
            f"unknown option {dotted_key!r}; {section_name} options are: {', '.join(sorted(fields))}"
        )
    hint = str(fields[key].type)
    setattr(section, key, _coerce(value, getattr(section, key), hint, dotted_key))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value)
    cfg.model.validate()
    return cfg


def preset(name: str) -> Config:
    """The paper presets (the release's settings) and the small built-in ``landscapes`` preset."""
    if name == "ade20k":
        cfg = Config(
            model=ModelConfig(label_nc=150, contain_dontcare_label=True, use_instance=False),
            data=DataConfig(dataset_mode="ade20k", preprocess_mode="resize_and_crop", load_size=286),
            train=TrainConfig(niter=100, niter_decay=100, lambda_feat=10.0),
        )
    elif name == "coco_stuff":
        cfg = Config(
            model=ModelConfig(label_nc=182, contain_dontcare_label=True, use_instance=True),
            data=DataConfig(dataset_mode="coco_stuff", preprocess_mode="resize_and_crop", load_size=286),
            # The released COCO-Stuff model was trained with lambda_feat 20.
            train=TrainConfig(niter=100, niter_decay=100, lambda_feat=20.0),
        )
    elif name == "cityscapes":
        cfg = Config(
            model=ModelConfig(
                label_nc=35,
                contain_dontcare_label=False,
                use_instance=True,
                crop_size=512,
                aspect_ratio=2.0,
                num_upsampling_layers="more",
            ),
            data=DataConfig(dataset_mode="cityscapes", preprocess_mode="fixed", load_size=512),
            train=TrainConfig(niter=100, niter_decay=100, lambda_feat=10.0),
        )
    elif name == "landscapes":
        # Small enough to show learning within minutes on a 2-core CPU. The VGG loss is off by
        # default because its ImageNet weights cannot be fetched offline.
        cfg = Config(
            model=ModelConfig(
                label_nc=10, contain_dontcare_label=False, use_instance=False,
                ngf=16, ndf=16, crop_size=64, z_dim=64, predictor_hidden=16,
            ),
            data=DataConfig(
                dataset_mode="custom", preprocess_mode="resize_and_crop", load_size=72,
                landscapes_size=72, landscapes_num=1000, num_workers=1,
            ),
            train=TrainConfig(
                # About 700 steps: ~10-15 minutes on a 2-core CPU.
                batch_size=4, niter=2, niter_decay=1, no_vgg_loss=True, lr=4e-4,
                save_every=100, sample_every=50, ema_decay=0.99,
            ),
        )
    else:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg.preset = name
    cfg.model.validate()
    return cfg
