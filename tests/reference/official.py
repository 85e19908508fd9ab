"""Reference networks: an independent re-implementation of the authors' CC-FPSE release.

Written from the fact sheet `shared/spec/CC-FPSE.md`, in the release's module structure, so that
`state_dict()` keys, shapes and dtypes equal those of the official checkpoints (including the
BatchNorms the release builds but never uses, and old-style spectral norm with
`weight_orig/weight_u/weight_v`). The forward passes follow the release's computations (unfold-based
conditional depthwise conv, nearest upsampling in G, bilinear in D, ...). Tests and benchmarks use it as
ground truth: the package's own networks must load these weights through a key mapping and give the
same outputs.

Like the release, the networks take a plain options namespace (see `make_opt`).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

# Number of 2x upsamplings between the start tensor and the output, per mode.
_NUM_UP_LAYERS = {"normal": 5, "more": 6}
_HIDDEN = 128  # hidden width of the weight predictors and of SPADE's shared MLP


def make_opt(
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
) -> SimpleNamespace:
    """Options namespace with the release's option names, plus the derived `semantic_nc`."""
    if num_upsampling_layers not in _NUM_UP_LAYERS:
        raise ValueError(f"num_upsampling_layers must be one of {sorted(_NUM_UP_LAYERS)}")
    semantic_nc = label_nc + int(contain_dontcare_label) + int(not no_instance)
    return SimpleNamespace(
        label_nc=label_nc,
        contain_dontcare_label=contain_dontcare_label,
        no_instance=no_instance,
        ngf=ngf,
        ndf=ndf,
        crop_size=crop_size,
        aspect_ratio=aspect_ratio,
        use_vae=use_vae,
        z_dim=z_dim,
        num_upsampling_layers=num_upsampling_layers,
        semantic_nc=semantic_nc,
    )


def _actvn(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def _sn_conv(fin: int, fout: int, kernel: int, stride: int = 1) -> nn.Module:
    # The release builds convs with a bias and deletes it when a norm follows: same as bias=False.
    return spectral_norm(nn.Conv2d(fin, fout, kernel, stride=stride, padding=kernel // 2, bias=False))


def _unit(fin: int, fout: int, kernel: int, stride: int, norm: str) -> nn.Sequential:
    """Sequential(Sequential(SN conv, norm), LReLU): keys `<name>.0.0.*` and `<name>.0.1.*`."""
    if norm == "batch":
        norm_layer = nn.BatchNorm2d(fout, affine=True)
    else:
        norm_layer = nn.InstanceNorm2d(fout, affine=False)
    return nn.Sequential(
        nn.Sequential(_sn_conv(fin, fout, kernel, stride), norm_layer),
        nn.LeakyReLU(0.2, inplace=True),
    )


class DepthConv(nn.Module):
    """Conditional depthwise 3x3 conv with per-pixel, per-channel kernels (zero padding, stride 1).

    out[n, c, y, x] = sum_{i,j} w[n, c*9 + i*3 + j, y, x] * xpad[n, c, y+i, x+j]. The release computes it
    with unfold; its `norm_layer` BatchNorm is built but never applied.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm_layer = nn.BatchNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor, conv_weights: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # unfold orders its channels as c*9 + (i*3 + j), the same layout as the predicted kernels.
        patches = F.unfold(x, kernel_size=3, padding=1).view(n, c, 9, h, w)
        return (patches * conv_weights.view(n, c, 9, h, w)).sum(dim=2)


class SPADE(nn.Module):
    """Parameter-free BatchNorm modulated by gamma/beta predicted from the conditioning map."""

    def __init__(self, norm_nc: int, cond_nc: int) -> None:
        super().__init__()
        self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(cond_nc, _HIDDEN, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(_HIDDEN, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(_HIDDEN, norm_nc, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        cond = F.interpolate(cond, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(cond)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


def _predictor(cond_nc: int, out_nc: int, sigmoid: bool = False) -> nn.Sequential:
    """conv3x3 -> ReLU -> conv3x3 (biases, no SN) [-> sigmoid]: keys `.0.*` and `.2.*`."""
    layers = [
        nn.Conv2d(cond_nc, _HIDDEN, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(_HIDDEN, out_nc, 3, padding=1),
    ]
    if sigmoid:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


class CondConvBlock(nn.Module):
    """The generator's residual block with layout-predicted depthwise kernels and SE-style gates."""

    def __init__(self, fin: int, fout: int, opt: SimpleNamespace) -> None:
        super().__init__()
        fmiddle = min(fin, fout)
        cond_nc = opt.semantic_nc + opt.ngf
        self.learned_shortcut = fin != fout
        # Registration order matters: it is the order of the official state-dict keys.
        self.gen_weights1 = _predictor(cond_nc, fin * 9)
        self.gen_weights2 = _predictor(cond_nc, fout * 9)
        self.gen_se_weights1 = _predictor(cond_nc, fmiddle, sigmoid=True)
        self.gen_se_weights2 = _predictor(cond_nc, fout, sigmoid=True)
        self.conv_0 = DepthConv(fin)
        self.norm_0 = nn.BatchNorm2d(fmiddle, affine=True)  # unused by the release's forward
        self.conv_1 = nn.Conv2d(fin, fmiddle, 1)
        self.norm_1 = nn.BatchNorm2d(fin, affine=True)
        self.conv_2 = DepthConv(fmiddle)
        self.norm_2 = nn.BatchNorm2d(fmiddle, affine=True)
        self.conv_3 = nn.Conv2d(fmiddle, fout, 1)
        if self.learned_shortcut:
            self.conv_s = _sn_conv(fin, fout, 1)
            self.norm_s = SPADE(fin, cond_nc)

    def forward(self, x: torch.Tensor, seg: torch.Tensor, segout: torch.Tensor) -> torch.Tensor:
        seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        cond = torch.cat([seg, segout], dim=1)
        weights1 = self.gen_weights1(cond)
        weights2 = self.gen_weights2(cond)
        se1 = self.gen_se_weights1(cond)
        se2 = self.gen_se_weights2(cond)

        x_s = self.conv_s(self.norm_s(x, cond)) if self.learned_shortcut else x

        dx = self.norm_1(x)
        dx = self.conv_0(dx, weights1)
        dx = self.conv_1(dx)
        dx = _actvn(dx * se1)
        dx = self.norm_2(dx)
        dx = self.conv_2(dx, weights2)
        dx = self.conv_3(dx)
        dx = _actvn(dx * se2)
        return x_s + dx


class OfficialGenerator(nn.Module):
    """net_G: label-map feature pyramid + seven conditional-convolution blocks."""

    def __init__(self, opt: SimpleNamespace) -> None:
        super().__init__()
        self.opt = opt
        nf = opt.ngf
        num_up = _NUM_UP_LAYERS[opt.num_upsampling_layers]
        self.sw = opt.crop_size // (2 ** num_up)
        self.sh = round(self.sw / opt.aspect_ratio)
        self.levels = num_up + 1  # pyramid levels: full resolution down to the start resolution

        if opt.use_vae:
            self.fc = nn.Linear(opt.z_dim, 16 * nf * self.sh * self.sw)
        else:
            self.fc = nn.Conv2d(opt.semantic_nc, 16 * nf, 3, padding=1)

        self.labelenc1 = _unit(opt.semantic_nc, nf, 3, 1, "batch")
        for i in range(2, self.levels + 1):
            self.add_module(f"labelenc{i}", _unit(nf, nf, 3, 2, "batch"))
        for k in range(1, self.levels):
            self.add_module(f"labellat{k}", _unit(nf, nf, 1, 1, "batch"))
        for k in range(1, self.levels):
            self.add_module(f"labeldec{k}", _unit(nf, nf, 3, 1, "batch"))

        self.head_0 = CondConvBlock(16 * nf, 16 * nf, opt)
        self.G_middle_0 = CondConvBlock(16 * nf, 16 * nf, opt)
        self.G_middle_1 = CondConvBlock(16 * nf, 16 * nf, opt)
        self.up_0 = CondConvBlock(16 * nf, 8 * nf, opt)
        self.up_1 = CondConvBlock(8 * nf, 4 * nf, opt)
        self.up_2 = CondConvBlock(4 * nf, 2 * nf, opt)
        self.up_3 = CondConvBlock(2 * nf, 1 * nf, opt)
        self.conv_img = nn.Conv2d(nf, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)  # nearest

    def _pyramid(self, seg: torch.Tensor) -> list:
        """Top-down outputs [segout1 (coarsest) ... segout_levels (full resolution)]."""
        encoded = []
        feat = seg
        for i in range(1, self.levels + 1):
            feat = getattr(self, f"labelenc{i}")(feat)
            encoded.append(feat)
        segouts = [encoded[-1]]
        for k in range(1, self.levels):
            lateral = getattr(self, f"labellat{k}")(encoded[self.levels - 1 - k])
            segouts.append(getattr(self, f"labeldec{k}")(self.up(segouts[-1]) + lateral))
        return segouts

    def forward(self, input_semantics: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        seg = input_semantics
        nf = self.opt.ngf
        if self.opt.use_vae:
            if z is None:
                z = torch.randn(seg.size(0), self.opt.z_dim, dtype=torch.float32, device=seg.device)
            x = self.fc(z).view(-1, 16 * nf, self.sh, self.sw)
        else:
            x = self.fc(F.interpolate(seg, size=(self.sh, self.sw), mode="nearest"))

        segout = self._pyramid(seg)
        x = self.head_0(x, seg, segout[0])
        x = self.up(x)
        x = self.G_middle_0(x, seg, segout[1])
        if self.opt.num_upsampling_layers == "more":
            x = self.up(x)
            x = self.G_middle_1(x, seg, segout[2])
            rest = segout[3:]
        else:
            x = self.G_middle_1(x, seg, segout[1])
            rest = segout[2:]
        for block, s in zip((self.up_0, self.up_1, self.up_2, self.up_3), rest):
            x = self.up(x)
            x = block(x, seg, s)
        x = self.conv_img(_actvn(x))
        return torch.tanh(x)


class OfficialDiscriminator(nn.Module):
    """net_D: Feature-Pyramid Semantics-Embedding discriminator."""

    def __init__(self, opt: SimpleNamespace) -> None:
        super().__init__()
        nf = opt.ndf
        self.enc1 = _unit(3, nf, 3, 2, "instance")
        self.enc2 = _unit(nf, 2 * nf, 3, 2, "instance")
        self.enc3 = _unit(2 * nf, 4 * nf, 3, 2, "instance")
        self.enc4 = _unit(4 * nf, 8 * nf, 3, 2, "instance")
        self.enc5 = _unit(8 * nf, 8 * nf, 3, 2, "instance")
        self.lat2 = _unit(2 * nf, 4 * nf, 1, 1, "instance")
        self.lat3 = _unit(4 * nf, 4 * nf, 1, 1, "instance")
        self.lat4 = _unit(8 * nf, 4 * nf, 1, 1, "instance")
        self.lat5 = _unit(8 * nf, 4 * nf, 1, 1, "instance")
        self.final2 = _unit(4 * nf, 2 * nf, 3, 1, "instance")
        self.final3 = _unit(4 * nf, 2 * nf, 3, 1, "instance")
        self.final4 = _unit(4 * nf, 2 * nf, 3, 1, "instance")
        self.tf = nn.Conv2d(2 * nf, 1, 1)
        self.seg = nn.Conv2d(2 * nf, 2 * nf, 1)
        self.embedding = nn.Conv2d(opt.semantic_nc, 2 * nf, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, image: torch.Tensor, semantics: torch.Tensor) -> list:
        f1 = self.enc1(image)
        f2 = self.enc2(f1)
        f3 = self.enc3(f2)
        f4 = self.enc4(f3)
        f5 = self.enc5(f4)
        t5 = self.lat5(f5)
        t4 = self.up(t5) + self.lat4(f4)
        t3 = self.up(t4) + self.lat3(f3)
        t2 = self.up(t3) + self.lat2(f2)
        heads = [self.final2(t2), self.final3(t3), self.final4(t4)]

        emb = self.embedding(semantics)
        embs = []
        for _ in range(4):
            emb = F.avg_pool2d(emb, kernel_size=2, stride=2)
            embs.append(emb)
        # scales 1/4, 1/8, 1/16 pair with the 2nd, 3rd and 4th pooled embeddings
        preds = []
        for h, e in zip(heads, embs[1:]):
            preds.append(self.tf(h) + torch.sum(e * self.seg(h), dim=1, keepdim=True))
        return [[f2, f3, f4, f5], preds]


class OfficialEncoder(nn.Module):
    """net_E: image -> (mu, logvar) of the style code."""

    def __init__(self, opt: SimpleNamespace) -> None:
        super().__init__()
        self.opt = opt
        nf = opt.ngf
        self.layer1 = self._layer(3, nf)
        self.layer2 = self._layer(nf, 2 * nf)
        self.layer3 = self._layer(2 * nf, 4 * nf)
        self.layer4 = self._layer(4 * nf, 8 * nf)
        self.layer5 = self._layer(8 * nf, 8 * nf)
        # The release's condition; for smaller crops the forward then fails (input is always 256).
        if opt.crop_size >= 256:
            self.layer6 = self._layer(8 * nf, 8 * nf)
        self.fc_mu = nn.Linear(8 * nf * 4 * 4, 256)
        self.fc_var = nn.Linear(8 * nf * 4 * 4, 256)

    @staticmethod
    def _layer(fin: int, fout: int) -> nn.Sequential:
        return nn.Sequential(_sn_conv(fin, fout, 3, 2), nn.InstanceNorm2d(fout, affine=False))

    def forward(self, image: torch.Tensor) -> tuple:
        x = image
        if x.size(2) != 256 or x.size(3) != 256:
            x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)
        x = self.layer1(x)
        x = self.layer2(_actvn(x))
        x = self.layer3(_actvn(x))
        x = self.layer4(_actvn(x))
        x = self.layer5(_actvn(x))
        if self.opt.crop_size >= 256:
            x = self.layer6(_actvn(x))
        x = _actvn(x).reshape(x.size(0), -1)
        return self.fc_mu(x), self.fc_var(x)


# ---------------------------------------------------------------------------------------------------
# Test-checkpoint helpers


# Gains that keep activations near unit scale: He-style for the SN conv units (followed by leaky ReLU),
# plain 1/sqrt(fan_in) elsewhere (larger makes the generator's up blocks grow and its tanh saturate).
_SN_GAIN = 2 ** 0.5
_PLAIN_GAIN = 1.0
# (weight gain, bias std) by module-name suffix. Larger predicted kernels and gates spread well around
# 0.5, else the generator's residual branch is a few percent of the shortcut and its weights barely
# show; a smaller conv_img keeps the tanh output mostly unsaturated.
_ROLE_INIT = {
    "gen_weights1.2": (2.0, 0.1),
    "gen_weights2.2": (2.0, 0.1),
    "gen_se_weights1.2": (2.0, 1.0),
    "gen_se_weights2.2": (2.0, 1.0),
    "conv_img": (0.3, 0.1),
}


def _role_init(name: str) -> tuple:
    for suffix, init in _ROLE_INIT.items():
        if name == suffix or name.endswith("." + suffix):
            return init
    return _PLAIN_GAIN, 0.1


def _normal(gen: torch.Generator, like: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return torch.randn(like.shape, generator=gen, dtype=torch.float64).mul_(std).add_(mean)


@torch.no_grad()
def _fill_spectral(mod: nn.Module, gen: torch.Generator, gain: float) -> None:
    """weight_orig random; weight_u, weight_v unit vectors giving the layer a typical gain of ~`gain`.

    In eval mode the effective weight is W / sigma with sigma = u . (W v). v comes from two power
    iterations from a random start (so sigma can be large enough), and u is the matching direction
    W v mixed with a random direction orthogonal to it, chosen so that sigma = |W|_F / (sqrt(out) *
    gain). Neither vector is a converged singular vector, so both enter the output at first order
    and an implementation that power-iterates in eval mode would give visibly different outputs.
    """
    w = mod.weight_orig
    mat = _normal(gen, w, 0.0, 1.0 / max(1, w[0].numel()) ** 0.5).reshape(w.shape[0], -1)
    u = F.normalize(torch.randn(mat.shape[0], generator=gen, dtype=torch.float64), dim=0)
    r = torch.randn(mat.shape[0], generator=gen, dtype=torch.float64)
    for _ in range(2):
        v = F.normalize(mat.t() @ u, dim=0)
        u = F.normalize(mat @ v, dim=0)
    sigma_pi = torch.dot(u, mat @ v)
    target = mat.norm() / (mat.shape[0] ** 0.5 * gain)
    # u = cos(a) u_pi + sin(a) r_perp gives sigma = cos(a) sigma_pi; keep cos(a) >= 0.3 so u_pi shows.
    cos = float((target / sigma_pi).clamp(0.3, 1.0))
    r_perp = r - torch.dot(r, u) * u
    if mat.shape[0] > 1 and r_perp.norm() > 1e-6:
        u = cos * u + (1.0 - cos ** 2) ** 0.5 * F.normalize(r_perp, dim=0)
    w.copy_(mat.reshape(w.shape))
    mod.weight_u.copy_(F.normalize(u, dim=0))
    mod.weight_v.copy_(v)
    if mod.bias is not None:
        mod.bias.copy_(_normal(gen, mod.bias, 0.0, 0.1))


@torch.no_grad()
def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter and buffer of `module` with deterministic, non-trivial random values.

    BatchNorm: weight ~ N(1, 0.1), bias ~ N(0, 0.1), running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5),
    num_batches_tracked a random count. Plain conv/linear: weight ~ N(0, 1 / fan_in), bias ~ N(0, 0.1),
    except the roles in `_ROLE_INIT` (the generator's kernel and gate predictors, conv_img).
    Spectral-norm convs: see `_fill_spectral` (fixed unit vectors weight_u, weight_v, used as they are
    in eval mode). Values are drawn on the CPU in float64, so they do not depend on the device.
    """
    gen = torch.Generator().manual_seed(seed)
    filled = set()
    for name, mod in module.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            if mod.weight is not None:
                mod.weight.copy_(_normal(gen, mod.weight, 1.0, 0.1))
                mod.bias.copy_(_normal(gen, mod.bias, 0.0, 0.1))
            if mod.running_mean is not None:
                mod.running_mean.copy_(_normal(gen, mod.running_mean, 0.0, 0.1))
                var = torch.rand(mod.running_var.shape, generator=gen, dtype=torch.float64) + 0.5
                mod.running_var.copy_(var)
                mod.num_batches_tracked.fill_(int(torch.randint(1, 100_000, (), generator=gen)))
        elif hasattr(mod, "weight_orig"):
            # The generator's shortcut conv: no activation follows, and the residual branch is added
            # to it, so gain 1/sqrt(2) keeps x from growing block after block.
            _fill_spectral(mod, gen, 0.5 ** 0.5 if name.endswith("conv_s") else _SN_GAIN)
        elif isinstance(mod, (nn.Conv2d, nn.Linear)):
            gain, bias_std = _role_init(name)
            fan_in = mod.weight[0].numel()
            mod.weight.copy_(_normal(gen, mod.weight, 0.0, gain / fan_in ** 0.5))
            if mod.bias is not None:
                mod.bias.copy_(_normal(gen, mod.bias, 0.0, bias_std))
        else:
            continue
        filled.update(id(t) for t in mod.parameters(recurse=False))
        filled.update(id(t) for t in mod.buffers(recurse=False))
    missed = [k for k, t in module.state_dict(keep_vars=True).items() if id(t) not in filled]
    if missed:
        raise TypeError(f"randomize_ does not know how to fill: {missed[:5]}")
    return module


def state_dict_listing(module: nn.Module) -> list:
    """[(key, shape, dtype name)] of `module.state_dict()`, in order (dtype as in 'float32')."""
    return [
        (key, tuple(t.shape), str(t.dtype).replace("torch.", ""))
        for key, t in module.state_dict().items()
    ]
