"""Prototype (benchmark only, not the package): the generator of ``ccfpse.nn`` with the one-hot
part of every label-reading convolution computed as a table look-up instead of a dense conv.

The conditioning map of each block is concat(one-hot label map, pyramid features). A 3x3 conv
of a one-hot map is, at each pixel, the sum over the nine taps of the weight column of the class
found under that tap (zero outside the image): a gather of nine rows of a (9*S, out) table, not
S*9*out multiply-adds. Its weight gradient is the matching scatter: a sparse (9*S x pixels)
incidence matrix times the output gradient. No input gradient is needed (labels are data). The
pyramid-feature part stays a dense conv, now with nf instead of S + nf input channels, so its
input gradient is also nf channels only. Same parameters and state-dict keys as
``ccfpse.nn.CCFPSEGenerator``; same values (exact sums of the same weights; only the order of
additions differs). Falls back to the dense path when the label channels are not one-hot.

Applied to: the fused first predictor conv (``predictor_in``), SPADE's ``shared`` conv of the
learned shortcuts, and the first pyramid conv (``pyramid.down.0``).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from ccfpse.config import ModelConfig, latent_grid
from ccfpse.nn.blocks import LRELU_SLOPE, CondConvBlock, init_weights
from ccfpse.nn.generator import BLOCK_CHANNELS, BLOCK_SCHEDULE, LabelPyramid, upsample2x


class OneHotIndex:
    """Look-up structures of one label map (N, H, W) of S classes for 3x3 convs with zero padding:
    ``bags`` (N*H*W, 9) rows of the (9*(S+1), out) table per pixel (row k*(S+1) + S is the zero
    row used outside the image) and, built on first use, the transposed incidence matrix for
    the weight gradient."""

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        n, h, w = labels.shape
        self.shape, self.S = (n, h, w), num_classes
        padded = F.pad(labels, (1, 1, 1, 1), value=num_classes)
        rows = [padded[:, i : i + h, j : j + w] + (i * 3 + j) * (num_classes + 1) for i in range(3) for j in range(3)]
        self.bags = torch.stack(rows, dim=-1).reshape(-1, 9)
        self._incidence = None

    def incidence(self) -> torch.Tensor:
        if self._incidence is None:
            pixels = self.bags.shape[0]
            cols = torch.arange(pixels, device=self.bags.device).repeat_interleave(9)
            coo = torch.sparse_coo_tensor(
                torch.stack([self.bags.reshape(-1), cols]),
                torch.ones(pixels * 9, device=self.bags.device),
                (9 * (self.S + 1), pixels),
                check_invariants=False,
            )
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore")
                self._incidence = coo.coalesce().to_sparse_csr()
        return self._incidence


class _OneHotConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, index: OneHotIndex) -> torch.Tensor:
        out_ch, S = weight.shape[:2]
        table = F.pad(weight.detach().permute(2, 3, 1, 0), (0, 0, 0, 1)).reshape(9 * (S + 1), out_ch)
        rows = F.embedding_bag(index.bags, table, mode="sum")  # (N*H*W, out)
        n, h, w = index.shape
        ctx.index = index
        ctx.weight_shape = weight.shape
        return rows.view(n, h, w, out_ch).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_ch, S = ctx.weight_shape[:2]
        rows = grad.permute(0, 2, 3, 1).reshape(-1, out_ch)
        g_table = torch.sparse.mm(ctx.index.incidence(), rows.contiguous())  # (9*(S+1), out)
        g_weight = g_table.view(3, 3, S + 1, out_ch)[:, :, :S].permute(3, 2, 0, 1)
        return g_weight, None


def label_conv3x3(
    weight: torch.Tensor, bias: torch.Tensor | None, index: OneHotIndex | None, onehot: torch.Tensor,
    feats: torch.Tensor, stride: int = 1,
) -> torch.Tensor:
    """conv3x3(concat(onehot, feats), weight, bias, padding 1) with the one-hot part looked up."""
    S = onehot.shape[1]
    if index is None:  # not one-hot: the dense conv
        return F.conv2d(torch.cat([onehot, feats], 1), weight, bias, padding=1)
    out = _OneHotConv3x3.apply(weight[:, :S], index)
    if feats.shape[1]:
        return F.conv2d(feats, weight[:, S:], bias, padding=1) + out
    return out + bias.view(1, -1, 1, 1) if bias is not None else out.contiguous()


class ProtoCondConvBlock(CondConvBlock):
    def forward(self, x, onehot, index, feats):  # type: ignore[override]
        if self.learned_shortcut:
            spade = self.norm_s
            actv = F.relu(label_conv3x3(spade.shared.weight, spade.shared.bias, index, onehot, feats))
            shortcut = self.conv_s(spade.param_free_norm(x) * (1 + spade.gamma(actv)) + spade.beta(actv))
        else:
            shortcut = x
        hidden = F.relu(label_conv3x3(self.predictor_in.weight, self.predictor_in.bias, index, onehot, feats))
        h_kernels_1, h_kernels_2, h_gate_1, h_gate_2 = hidden.chunk(4, dim=1)
        dx = self._apply_kernels(self.kernels_1, self.norm_1(x), h_kernels_1)
        dx = F.leaky_relu(self.conv_1(dx) * torch.sigmoid(self.gate_1(h_gate_1)), LRELU_SLOPE)
        dx = self._apply_kernels(self.kernels_2, self.norm_2(dx), h_kernels_2)
        dx = F.leaky_relu(self.conv_3(dx) * torch.sigmoid(self.gate_2(h_gate_2)), LRELU_SLOPE)
        return shortcut + dx


def onehot_labels(semantics: torch.Tensor) -> torch.Tensor | None:
    """Class indices (N, H, W) if every pixel of ``semantics`` is exactly one-hot, else None."""
    values, labels = semantics.max(dim=1)
    if bool((values == 1).all()) and bool((semantics.sum(dim=1) == 1).all()):
        return labels
    return None


class CCFPSEGenerator(nn.Module):
    def __init__(self, semantic_nc, ngf=64, crop_size=256, aspect_ratio=1.0, use_vae=True, z_dim=256,
                 num_upsampling_layers="normal", predictor_hidden=128):
        super().__init__()
        self.semantic_nc, self.ngf, self.use_vae, self.z_dim = semantic_nc, ngf, use_vae, z_dim
        self.latent_size = latent_grid(crop_size, aspect_ratio, num_upsampling_layers)
        sh, sw = self.latent_size
        self.fc = nn.Linear(z_dim, BLOCK_CHANNELS[0] * ngf * sh * sw) if use_vae else \
            nn.Conv2d(semantic_nc, BLOCK_CHANNELS[0] * ngf, 3, padding=1)
        self.schedule = BLOCK_SCHEDULE[num_upsampling_layers]
        self.pyramid = LabelPyramid(semantic_nc, ngf, num_levels=1 + max(level for level, _ in self.schedule))
        self.blocks = nn.ModuleList(
            ProtoCondConvBlock(cin * ngf, cout * ngf, semantic_nc + ngf, predictor_hidden)
            for cin, cout in zip(BLOCK_CHANNELS[:-1], BLOCK_CHANNELS[1:])
        )
        self.conv_img = nn.Conv2d(ngf, 3, 3, padding=1)
        init_weights(self)

    @classmethod
    def from_config(cls, cfg: ModelConfig):
        return cls(cfg.semantic_nc, cfg.ngf, cfg.crop_size, cfg.aspect_ratio, cfg.use_vae, cfg.z_dim,
                   cfg.num_upsampling_layers, cfg.predictor_hidden)

    def set_checkpointing(self, enabled: bool) -> None:
        for block in self.blocks:
            block.checkpoint_kernels = enabled

    def _pyramid(self, semantics, index):
        first = self.pyramid.down[0]
        # The first pyramid conv reads only the label map: a pure look-up.
        h = label_conv3x3(first.conv.weight, None, index, semantics, semantics[:, :0])
        h = F.leaky_relu(first.norm(h), LRELU_SLOPE)
        bottom_up = [h]
        for layer in self.pyramid.down[1:]:
            h = layer(h)
            bottom_up.append(h)
        top_down = [bottom_up[-1]]
        for lateral, decode, skip in zip(self.pyramid.lateral, self.pyramid.decode, reversed(bottom_up[:-1])):
            top_down.append(decode(upsample2x(top_down[-1]) + lateral(skip)))
        return top_down

    def forward(self, semantics: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        sh, sw = self.latent_size
        if self.use_vae:
            if z is None:
                z = torch.randn(semantics.shape[0], self.z_dim, device=semantics.device)
            x = self.fc(z.to(semantics.dtype)).view(-1, BLOCK_CHANNELS[0] * self.ngf, sh, sw)
        else:
            x = self.fc(F.interpolate(semantics, size=(sh, sw), mode="nearest"))
        labels = onehot_labels(semantics)
        full = tuple(semantics.shape[2:])
        maps = {full: (semantics, None if labels is None else OneHotIndex(labels, self.semantic_nc))}
        pyramid = self._pyramid(semantics, maps[full][1])
        for block, (level, upsample) in zip(self.blocks, self.schedule):
            if upsample:
                x = upsample2x(x)
            size = tuple(x.shape[2:])
            if size not in maps:
                small = F.interpolate(semantics, size=size, mode="nearest")
                idx = None
                if labels is not None:
                    lab = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
                    idx = OneHotIndex(lab, self.semantic_nc)
                maps[size] = (small, idx)
            onehot, index = maps[size]
            x = block(x, onehot, index, pyramid[level])
        return torch.tanh(self.conv_img(F.leaky_relu(x, LRELU_SLOPE)))
