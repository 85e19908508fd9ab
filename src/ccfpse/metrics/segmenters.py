"""Segmentation networks that score generated images (mIoU / pixel accuracy against the input layout).

One small interface, ``Segmenter``: ``num_classes``, ``ignore_index``, ``predict(images)`` and
``label_to_target(label)``. Implementations:

- ``deeplabv2_cocostuff``: DeepLabV2-ResNet101 with multi-scale inputs (kazuto1011/deeplab-pytorch,
  ``deeplabv2_resnet101_msc-cocostuff164k-100000.pth``, 182 classes). Caffe-style input: BGR in
  0..255 minus the ImageNet mean (B 104.008, G 116.669, R 122.675). Inputs at their own size, as
  the CC-FPSE authors describe for their evaluation (generated 256 x 256 images).
- ``upernet101_ade20k``: UPerNet on a ResNet-101 (CSAIL semantic-segmentation-pytorch,
  ``ade20k-resnet101-upernet``, 150 classes), RGB normalised with the ImageNet mean/std, inputs
  rounded up to a multiple of 32, single scale.
- ``drn_d_105_cityscapes``: DRN-D-105 (fyu/drn ``DRNSeg``, ``drn-d-105_ms_cityscapes.pth``,
  19 Cityscapes train ids), RGB normalised with the Cityscapes mean/std; by default images are
  upsampled to 1024 x 2048 (the resolution the net was trained on) and the prediction is
  brought back to the image size.
- ``torchscript:PATH``: any TorchScript model returning (N, C, h, w) logits.
- ``small:PATH``: the small net that ``train_small_segmenter`` trains for custom data.

Every prediction is bilinearly resized (logits) to the input's H x W and arg-maxed.

The ResNet pieces: UPerNet's encoder and DRN-D-105's residual stages reuse torchvision's
``Bottleneck`` (same layout and key names as those releases). DeepLabV2's ResNet cannot: it is the
MSRA/Caffe variant with the stride on the first 1x1 conv and its own key names, so it is written
out here.

``label_to_target`` maps a label map in this package's data convention (see the fact sheet:
COCO-Stuff dontcare = 182, ADE20K dontcare = 150, Cityscapes = raw label ids) to the
segmenter's classes, with ``ignore_index`` (255) for pixels that do not count.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from ccfpse.errors import CCFPSEError, WeightsError
from ccfpse.metrics.weights import (
    ResolvedWeights,
    WeightSpec,
    load_state_dict_strict,
    read_state_dict,
    resolve_weights,
    sha256_file,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# fyu/drn's Cityscapes info.json (RGB, images in [0, 1]).
CITYSCAPES_MEAN = (0.290101, 0.328081, 0.286964)
CITYSCAPES_STD = (0.182954, 0.186566, 0.184475)
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)
IGNORE = 255

# Cityscapes label id -> train id (cityscapesScripts' labels table); ids without a train id -> 255.
CITYSCAPES_LABEL_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

SEGMENTER_OPTION = "--segmenter-weights"
DEEPLAB_WEIGHTS = WeightSpec(
    what="DeepLabV2-ResNet101 COCO-Stuff weights",
    filename="deeplabv2_resnet101_msc-cocostuff164k-100000.pth",
    url="https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/"
    "deeplabv2_resnet101_msc-cocostuff164k-100000.pth",
    sha256=None,  # not published
    option=SEGMENTER_OPTION,
)
_CSAIL_URL = "http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet101-upernet/"
UPERNET_ENCODER_WEIGHTS = WeightSpec(
    what="UPerNet101 ADE20K encoder weights",
    filename="ade20k-resnet101-upernet/encoder_epoch_50.pth",
    url=_CSAIL_URL + "encoder_epoch_50.pth",
    sha256=None,
    option=SEGMENTER_OPTION,
)
UPERNET_DECODER_WEIGHTS = WeightSpec(
    what="UPerNet101 ADE20K decoder weights",
    filename="ade20k-resnet101-upernet/decoder_epoch_50.pth",
    url=_CSAIL_URL + "decoder_epoch_50.pth",
    sha256=None,
    option=SEGMENTER_OPTION,
)
DRN_WEIGHTS = WeightSpec(
    what="DRN-D-105 Cityscapes weights",
    filename="drn-d-105_ms_cityscapes.pth",
    url=None,  # shared through the DRN authors' page only, no direct link
    sha256=None,
    option=SEGMENTER_OPTION,
    where_to_get="the DRN authors share it via http://go.yf.io/drn-cityscapes-models",
)


@runtime_checkable
class Segmenter(Protocol):
    num_classes: int
    ignore_index: int | None
    weights_used: dict[str, str]  # weight file -> sha256, for reports

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images in [-1, 1] -> (N, H, W) long class ids."""
        ...

    def label_to_target(self, label: torch.Tensor) -> torch.Tensor:
        """Label map in the data set's convention -> this segmenter's classes (ignore_index where
        a pixel does not count)."""
        ...


# ----------------------------------------------------------------------------- shared plumbing


def _rgb01(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
    return ((images.float() + 1) / 2).clamp(0, 1)


def _normalise(x01: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01 - m) / s


def _argmax_at(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits.argmax(1)


def _load_net(
    net: nn.Module, state: dict[str, torch.Tensor], what: str, source: str | Path, device: str | torch.device
) -> nn.Module:
    load_state_dict_strict(net, state, what, source)
    return net.to(device).eval().requires_grad_(False)


def _cityscapes_lut() -> torch.Tensor:
    lut = torch.full((256,), IGNORE, dtype=torch.long)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


# ----------------------------------------------------------------------------- DeepLabV2 (COCO-Stuff)


class _ConvBnReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: int, dilation: int, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)
        if relu:
            self.relu = nn.ReLU()


class _CaffeBottleneck(nn.Module):
    """MSRA ResNet bottleneck: the stride is on the first 1x1 conv."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, project: bool):
        super().__init__()
        mid = cout // 4
        self.reduce = _ConvBnReLU(cin, mid, 1, stride, 0, 1)
        self.conv3x3 = _ConvBnReLU(mid, mid, 3, 1, dilation, dilation)
        self.increase = _ConvBnReLU(mid, cout, 1, 1, 0, 1, relu=False)
        self.shortcut = _ConvBnReLU(cin, cout, 1, stride, 0, 1, relu=False) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


def _caffe_stage(blocks: int, cin: int, cout: int, stride: int, dilation: int) -> nn.Sequential:
    stage = nn.Sequential()
    for i in range(blocks):
        stage.add_module(
            f"block{i + 1}", _CaffeBottleneck(cin if i == 0 else cout, cout, stride if i == 0 else 1, dilation, i == 0)
        )
    return stage


class _ASPP(nn.Module):
    """DeepLabV2's atrous pyramid: parallel dilated 3x3 classifiers, summed."""

    def __init__(self, cin: int, num_classes: int, rates: Sequence[int]):
        super().__init__()
        for i, rate in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(cin, num_classes, 3, 1, padding=rate, dilation=rate, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.children())


class DeepLabV2MSC(nn.Module):
    """DeepLabV2-ResNet101 inside the multi-scale wrapper; state-dict keys ``base.layer1…``,
    ``base.aspp.c0…`` as in kazuto1011's released checkpoints. At test time the logits of the
    input and of 0.5x / 0.75x copies are resized to the full-scale logits and max-pooled."""

    def __init__(self, num_classes: int = 182, rates: Sequence[int] = (6, 12, 18, 24), scales: Sequence[float] = (0.5, 0.75)):
        super().__init__()
        stem = nn.Sequential(
            OrderedDict(conv1=_ConvBnReLU(3, 64, 7, 2, 3, 1), pool=nn.MaxPool2d(3, 2, 1, ceil_mode=True))
        )
        self.base = nn.Sequential(
            OrderedDict(
                layer1=stem,
                layer2=_caffe_stage(3, 64, 256, 1, 1),
                layer3=_caffe_stage(4, 256, 512, 2, 1),
                layer4=_caffe_stage(23, 512, 1024, 1, 2),
                layer5=_caffe_stage(3, 1024, 2048, 1, 4),
                aspp=_ASPP(2048, num_classes, rates),
            )
        )
        self.scales = tuple(scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.base(x)
        for scale in self.scales:
            small = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            other = F.interpolate(self.base(small), size=logits.shape[-2:], mode="bilinear", align_corners=False)
            logits = torch.maximum(logits, other)
        return logits


class DeepLabV2Segmenter:
    num_classes = 182
    ignore_index = IGNORE

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu"):
        resolved = resolve_weights(DEEPLAB_WEIGHTS, weights)
        state = read_state_dict(resolved.path, DEEPLAB_WEIGHTS.what)
        if not any(k.startswith("base.") for k in state):  # a bare DeepLabV2, without the MSC wrapper
            state = {f"base.{k}": v for k, v in state.items()}
        with torch.device("meta"):
            net = DeepLabV2MSC(self.num_classes)
        self.net = _load_net(net, state, DEEPLAB_WEIGHTS.what, resolved.path, device)
        self.device = torch.device(device)
        self.weights_used = {str(resolved.path): resolved.sha256}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        x = _rgb01(images).to(self.device) * 255
        bgr = x.flip(1)  # RGB -> BGR, the Caffe model's channel order
        bgr = bgr - torch.tensor(CAFFE_MEAN_BGR, device=bgr.device).view(1, 3, 1, 1)
        return _argmax_at(self.net(bgr), tuple(images.shape[-2:]))

    def label_to_target(self, label: torch.Tensor) -> torch.Tensor:
        # Our COCO-Stuff labels are the raw ids 0..181 with unlabeled (raw 255) at index 182.
        label = label.long()
        return torch.where(label < self.num_classes, label, torch.full_like(label, IGNORE))


# ----------------------------------------------------------------------------- UPerNet101 (ADE20K)


def _torchvision_stage(inplanes: int, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """A ResNet stage of torchvision ``Bottleneck``s (stride on the 3x3 conv), keys ``i.conv1…``."""
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * Bottleneck.expansion),
        )
    layers = [Bottleneck(inplanes, planes, stride, downsample, dilation=dilation)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes, dilation=dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CSAILResNet101(nn.Module):
    """CSAIL's ``resnet101`` encoder: a three-conv stem (to 128 channels), then the four
    standard stages; returns the four stage outputs (strides 4, 8, 16, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _torchvision_stage(128, 64, 3)
        self.layer2 = _torchvision_stage(256, 128, 4, stride=2)
        self.layer3 = _torchvision_stage(512, 256, 23, stride=2)
        self.layer4 = _torchvision_stage(1024, 512, 3, stride=2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.maxpool(F.relu(self.bn3(self.conv3(x))))
        outs = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            outs.append(x)
        return outs


class UPerNetHead(nn.Module):
    """CSAIL's ``upernet`` decoder (PPM on the last stage + FPN fusion), returning logits at 1/4."""

    def __init__(
        self,
        num_classes: int = 150,
        fc_dim: int = 2048,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        fpn_inplanes: Sequence[int] = (256, 512, 1024, 2048),
        fpn_dim: int = 512,
    ) -> None:
        super().__init__()
        self.ppm_pooling = nn.ModuleList(nn.AdaptiveAvgPool2d(s) for s in pool_scales)
        self.ppm_conv = nn.ModuleList(_conv_bn_relu(fc_dim, 512, 1) for _ in pool_scales)
        self.ppm_last_conv = _conv_bn_relu(fc_dim + len(pool_scales) * 512, fpn_dim, 3)
        self.fpn_in = nn.ModuleList(_conv_bn_relu(c, fpn_dim, 1) for c in fpn_inplanes[:-1])
        self.fpn_out = nn.ModuleList(nn.Sequential(_conv_bn_relu(fpn_dim, fpn_dim, 3)) for _ in fpn_inplanes[:-1])
        self.conv_last = nn.Sequential(
            _conv_bn_relu(len(fpn_inplanes) * fpn_dim, fpn_dim, 3), nn.Conv2d(fpn_dim, num_classes, 1)
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        size = top.shape[-2:]
        ppm = [top] + [
            conv(F.interpolate(pool(top), size=size, mode="bilinear", align_corners=False))
            for pool, conv in zip(self.ppm_pooling, self.ppm_conv)
        ]
        f = self.ppm_last_conv(torch.cat(ppm, 1))
        pyramid = [f]
        for i in reversed(range(len(feats) - 1)):
            lateral = self.fpn_in[i](feats[i])
            f = lateral + F.interpolate(f, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            pyramid.append(self.fpn_out[i](f))
        pyramid.reverse()
        out_size = pyramid[0].shape[-2:]
        fused = [pyramid[0]] + [
            F.interpolate(p, size=out_size, mode="bilinear", align_corners=False) for p in pyramid[1:]
        ]
        return self.conv_last(torch.cat(fused, 1))


class UPerNet101(nn.Module):
    """Keys ``encoder.*`` / ``decoder.*``: the contents of CSAIL's ``encoder_epoch_50.pth`` and
    ``decoder_epoch_50.pth`` under those prefixes."""

    def __init__(self, num_classes: int = 150) -> None:
        super().__init__()
        self.encoder = CSAILResNet101()
        self.decoder = UPerNetHead(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _resolve_upernet(weights: str | Path | None) -> tuple[dict[str, torch.Tensor], list[ResolvedWeights]]:
    """Either one file holding ``encoder.*`` and ``decoder.*`` keys, or CSAIL's two files (a folder
    holding them, or the cache / the download)."""
    what = "UPerNet101 ADE20K weights"
    if weights is not None and Path(weights).expanduser().is_file():
        resolved = resolve_weights(UPERNET_ENCODER_WEIGHTS, weights)
        return read_state_dict(resolved.path, what), [resolved]
    if weights is not None and not Path(weights).expanduser().is_dir():
        raise WeightsError(f"{what}: {weights} is neither a file nor a folder (given with {SEGMENTER_OPTION})")
    state: dict[str, torch.Tensor] = {}
    used = []
    for prefix, spec in (("encoder", UPERNET_ENCODER_WEIGHTS), ("decoder", UPERNET_DECODER_WEIGHTS)):
        path = None if weights is None else Path(weights).expanduser() / Path(spec.filename).name
        resolved = resolve_weights(spec, path)
        state.update({f"{prefix}.{k}": v for k, v in read_state_dict(resolved.path, spec.what).items()})
        used.append(resolved)
    return state, used


# Training-time buffers of some versions of CSAIL's synchronized BatchNorm; never read at test time.
_SYNC_BN_EXTRA = ("._tmp_running_mean", "._tmp_running_var", "._running_iter")


class UPerNetSegmenter:
    num_classes = 150
    ignore_index = IGNORE

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu"):
        state, used = _resolve_upernet(weights)
        state = {k: v for k, v in state.items() if not k.endswith(_SYNC_BN_EXTRA)}
        with torch.device("meta"):
            net = UPerNet101(self.num_classes)
        source = ", ".join(str(r.path) for r in used)
        self.net = _load_net(net, state, "UPerNet101 ADE20K weights", source, device)
        self.device = torch.device(device)
        self.weights_used = {str(r.path): r.sha256 for r in used}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        x = _normalise(_rgb01(images).to(self.device), IMAGENET_MEAN, IMAGENET_STD)
        h, w = x.shape[-2:]
        # CSAIL feeds sizes rounded up to a multiple of 32 (its padding_constant).
        h32, w32 = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
        if (h32, w32) != (h, w):
            x = F.interpolate(x, size=(h32, w32), mode="bilinear", align_corners=False)
        return _argmax_at(self.net(x), (h, w))

    def label_to_target(self, label: torch.Tensor) -> torch.Tensor:
        # Our ADE20K labels: raw class c (1..150) at index c - 1 -- CSAIL's class ids -- and
        # raw 0 ("other") at index 150.
        label = label.long()
        return torch.where(label < self.num_classes, label, torch.full_like(label, IGNORE))


# ----------------------------------------------------------------------------- DRN-D-105 (Cityscapes)


def _drn_conv_layer(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _bilinear_upsampling_kernel(channels: int, size: int) -> torch.Tensor:
    """The fixed kernel of DRNSeg's depthwise transposed conv (bilinear interpolation)."""
    f = math.ceil(size / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - torch.abs(torch.arange(size, dtype=torch.float32) / f - c)
    return (ramp[:, None] * ramp[None, :]).expand(channels, 1, size, size).clone()


class DRND105Seg(nn.Module):
    """fyu/drn's ``DRNSeg('drn_d_105', 19)``: keys ``base.0…base.8`` (layer0..layer8 of DRN-D-105),
    ``seg`` (1x1 classifier) and ``up`` (fixed bilinear x8 transposed conv)."""

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        self.base = nn.Sequential(
            nn.Sequential(  # layer0
                nn.Conv2d(3, 16, 7, 1, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
            ),
            _drn_conv_layer(16, 16),  # layer1
            _drn_conv_layer(16, 32, stride=2),  # layer2
            _torchvision_stage(32, 64, 3, stride=2),  # layer3
            _torchvision_stage(256, 128, 4, stride=2),  # layer4
            _torchvision_stage(512, 256, 23, dilation=2),  # layer5
            _torchvision_stage(1024, 512, 3, dilation=4),  # layer6
            _drn_conv_layer(2048, 512, dilation=2),  # layer7
            _drn_conv_layer(512, 512),  # layer8
        )
        self.seg = nn.Conv2d(512, num_classes, 1, bias=True)
        self.up = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, padding=4, groups=num_classes, bias=False)
        self.up.weight.requires_grad_(False)
        if not self.up.weight.is_meta:
            with torch.no_grad():
                self.up.weight.copy_(_bilinear_upsampling_kernel(num_classes, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.seg(self.base(x)))


class DRNSegmenter:
    num_classes = 19
    ignore_index = IGNORE

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str | torch.device = "cpu",
        input_size: tuple[int, int] | None = (1024, 2048),
    ):
        resolved = resolve_weights(DRN_WEIGHTS, weights)
        state = read_state_dict(resolved.path, DRN_WEIGHTS.what)
        with torch.device("meta"):
            net = DRND105Seg(self.num_classes)
        self.net = _load_net(net, state, DRN_WEIGHTS.what, resolved.path, device)
        self.device = torch.device(device)
        self.input_size = tuple(input_size) if input_size else None
        self.weights_used = {str(resolved.path): resolved.sha256}
        self._lut = _cityscapes_lut()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        x = _normalise(_rgb01(images).to(self.device), CITYSCAPES_MEAN, CITYSCAPES_STD)
        if self.input_size and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return _argmax_at(self.net(x), tuple(images.shape[-2:]))

    def label_to_target(self, label: torch.Tensor) -> torch.Tensor:
        """Cityscapes label ids (gtFine labelIds, 0..33) -> the 19 train ids; the rest -> 255."""
        label = label.long()
        inside = (label >= 0) & (label < self._lut.numel())
        lut = self._lut.to(label.device)
        return torch.where(inside, lut[label.clamp(0, self._lut.numel() - 1)], torch.full_like(label, IGNORE))


# ----------------------------------------------------------------------------- TorchScript


class TorchScriptSegmenter:
    """Any TorchScript segmentation model that maps a normalised (N, 3, H, W) RGB batch to
    (N, C, h, w) logits (or a dict with ``"out"``, or a tuple whose first item is the logits).

    Options not given are read from a ``segmenter.json`` extra file saved inside the TorchScript
    archive (``torch.jit.save(m, path, _extra_files={"segmenter.json": ...})`` with keys
    ``num_classes``, ``mean``, ``std``, ``ignore_index``), else default to the ImageNet mean/std,
    no ignore index, and the number of output channels of a probe forward pass.
    """

    EXTRA_FILE = "segmenter.json"

    def __init__(
        self,
        path: str | Path,
        num_classes: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        ignore_index: int | None = None,
        device: str | torch.device = "cpu",
    ):
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsError(f"TorchScript segmenter {path} is not a file")
        extra = {self.EXTRA_FILE: ""}
        try:
            with warnings.catch_warnings():  # torch >= 2.9 flags TorchScript as deprecated; it still loads
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
        except Exception as e:  # noqa: BLE001 - one clear line for any unreadable archive
            raise WeightsError(f"{path} is not a TorchScript model: {str(e).strip().splitlines()[0]}") from None
        meta = json.loads(extra[self.EXTRA_FILE]) if extra[self.EXTRA_FILE] else {}
        self.device = torch.device(device)
        self.mean = tuple(mean or meta.get("mean", IMAGENET_MEAN))
        self.std = tuple(std or meta.get("std", IMAGENET_STD))
        self.ignore_index = ignore_index if ignore_index is not None else meta.get("ignore_index")
        classes = num_classes or meta.get("num_classes")
        if classes is None:
            classes = self._logits(torch.zeros(1, 3, 64, 64, device=self.device)).shape[1]
        self.num_classes = int(classes)
        self.weights_used = {str(path): sha256_file(path)}

    @torch.no_grad()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, dict):
            out = out["out"]
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise CCFPSEError("the TorchScript segmenter must return (N, C, h, w) logits")
        return out

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        logits = self._logits(_normalise(_rgb01(images).to(self.device), self.mean, self.std))
        if logits.shape[1] != self.num_classes:
            raise CCFPSEError(f"the TorchScript segmenter returned {logits.shape[1]} classes, expected {self.num_classes}")
        return _argmax_at(logits, tuple(images.shape[-2:]))

    def label_to_target(self, label: torch.Tensor) -> torch.Tensor:
        return label.long()


# ----------------------------------------------------------------------------- factory

SEGMENTERS = ("deeplabv2_cocostuff", "upernet101_ade20k", "drn_d_105_cityscapes", "torchscript:PATH", "small:PATH")


def build_segmenter(
    name: str, weights: str | Path | None = None, device: str | torch.device = "cpu", **options
) -> Segmenter:
    """The segmenter called ``name`` (see ``SEGMENTERS``); ``weights`` is a local weight file
    (a folder with CSAIL's two files also works for UPerNet); ``options`` go to its constructor
    (e.g. ``input_size=None`` for DRN)."""
    if name == "deeplabv2_cocostuff":
        return DeepLabV2Segmenter(weights, device, **options)
    if name == "upernet101_ade20k":
        return UPerNetSegmenter(weights, device, **options)
    if name == "drn_d_105_cityscapes":
        return DRNSegmenter(weights, device, **options)
    if name.startswith(("torchscript:", "small:")) and weights is not None:
        raise CCFPSEError(f"segmenter {name!r} names its own model file; do not also give {SEGMENTER_OPTION}")
    if name.startswith("torchscript:"):
        return TorchScriptSegmenter(name.split(":", 1)[1], device=device, **options)
    if name.startswith("small:"):
        from ccfpse.metrics.small_segmenter import load_small_segmenter

        return load_small_segmenter(name.split(":", 1)[1], device=device, **options)
    raise CCFPSEError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
