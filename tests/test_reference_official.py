"""Checks of the reference re-implementation of the authors' release (tests/reference/official.py)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.reference.official import (
    DepthConv,
    OfficialDiscriminator,
    OfficialEncoder,
    OfficialGenerator,
    make_opt,
    randomize_,
    state_dict_listing,
)

PRESETS = {
    "ade20k": dict(label_nc=150, contain_dontcare_label=True, no_instance=True),
    "coco_stuff": dict(label_nc=182, contain_dontcare_label=True, no_instance=False),
    "cityscapes": dict(
        label_nc=35,
        contain_dontcare_label=False,
        no_instance=False,
        crop_size=512,
        aspect_ratio=2.0,
        num_upsampling_layers="more",
    ),
}


def _parse_listing(path: Path) -> tuple[str, dict, dict]:
    """(header line, {section: [(key, shape, dtype)]}, {section: parameter count in millions})."""
    header, sections, counts, current = "", {}, {}, None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            name, rest = line[3:].split(":", 1)
            current = name.strip()
            sections[current] = []
            counts[current] = float(rest.split()[0])
        elif line.startswith("#"):
            header = line
        elif line.strip():
            key, shape, dtype = line.split("\t")
            sections[current].append((key, ast.literal_eval(shape), dtype))
    return header, sections, counts


def _semantics(n: int, opt, h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    num_labels = opt.semantic_nc - int(not opt.no_instance)
    # blocky layout, so that nearest resizes keep some structure
    labels = torch.randint(0, num_labels, (n, 1, h // 8, w // 8), generator=gen).float()
    labels = F.interpolate(labels, size=(h, w), mode="nearest")[:, 0].long()
    onehot = F.one_hot(labels, num_labels).permute(0, 3, 1, 2).float()
    if opt.no_instance:
        return onehot
    edges = (torch.rand(n, 1, h, w, generator=gen) > 0.8).float()
    return torch.cat([onehot, edges], dim=1)


# ------------------------------------------------------------------------------------------------
# Official state-dict layout at the real size


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_state_dict_listing_equals_official(preset, spec_dir):
    path = spec_dir / f"official_state_dict_{preset}.txt"
    header, sections, counts = _parse_listing(path)
    opt = make_opt(**PRESETS[preset])
    assert f"semantic_nc={opt.semantic_nc}" in header
    with torch.device("meta"):
        nets = {
            "net_G": OfficialGenerator(opt),
            "net_D": OfficialDiscriminator(opt),
            "net_E": OfficialEncoder(opt),
        }
    assert sorted(nets) == sorted(sections)
    for name, net in nets.items():
        ours = state_dict_listing(net)
        expected = sections[name]
        for i, (mine, theirs) in enumerate(zip(ours, expected)):
            assert mine == theirs, f"{preset} {name} line {i}: {mine} != {theirs}"
        assert len(ours) == len(expected), f"{preset} {name}: {len(ours)} vs {len(expected)} keys"
        millions = sum(p.numel() for p in net.parameters()) / 1e6
        assert round(millions, 2) == counts[name]


def test_make_opt_semantic_channels():
    assert make_opt(150, True, True).semantic_nc == 151
    assert make_opt(182, True, False).semantic_nc == 184
    assert make_opt(35, False, False).semantic_nc == 36
    with pytest.raises(ValueError):
        make_opt(35, False, False, num_upsampling_layers="most")


# ------------------------------------------------------------------------------------------------
# Tiny CPU forwards


def _tiny_opt(**kw):
    base = dict(label_nc=6, contain_dontcare_label=True, no_instance=False, ngf=8, ndf=8, crop_size=64)
    base.update(kw)
    return make_opt(**base)


@pytest.fixture(scope="module")
def tiny_g():
    opt = _tiny_opt()
    return opt, randomize_(OfficialGenerator(opt), seed=1).eval()


@pytest.mark.parametrize("mode", ["normal", "more"])
@pytest.mark.parametrize("use_vae", [True, False])
def test_generator_output_shape(mode, use_vae):
    opt = _tiny_opt(num_upsampling_layers=mode, use_vae=use_vae)
    net = randomize_(OfficialGenerator(opt), seed=3).eval()
    z = torch.randn(1, opt.z_dim) if use_vae else None
    with torch.no_grad():
        out = net(_semantics(1, opt, 64, 64), z)
    assert out.shape == (1, 3, 64, 64)
    assert out.abs().max() <= 1.0 and torch.isfinite(out).all()


def test_generator_non_square():
    opt = _tiny_opt(aspect_ratio=2.0, use_vae=False)
    net = OfficialGenerator(opt).eval()
    assert (net.sh, net.sw) == (1, 2)
    with torch.no_grad():
        out = net(_semantics(1, opt, 32, 64))
    assert out.shape == (1, 3, 32, 64)


def test_generator_eval_is_deterministic_given_z(tiny_g):
    opt, net = tiny_g
    seg = _semantics(2, opt, 64, 64)
    z = torch.randn(2, opt.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = net(seg, z)
        b = net(seg, z)
        sampled = net(seg)  # z drawn inside, on the input's device
    assert torch.equal(a, b)
    assert (a - sampled).abs().max() > 1e-3
    # randomized weights keep the image mostly out of tanh saturation
    assert 0.1 < a.abs().mean() < 0.9


def test_discriminator_shapes():
    opt = _tiny_opt()
    net = randomize_(OfficialDiscriminator(opt), seed=4).eval()
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        features, preds = net(image, _semantics(2, opt, 64, 64))
    assert [tuple(f.shape) for f in features] == [
        (2, 16, 16, 16),
        (2, 32, 8, 8),
        (2, 64, 4, 4),
        (2, 64, 2, 2),
    ]
    assert [tuple(p.shape) for p in preds] == [(2, 1, 16, 16), (2, 1, 8, 8), (2, 1, 4, 4)]
    assert all(torch.isfinite(p).all() for p in preds)


def test_encoder_resizes_to_256():
    opt = _tiny_opt(crop_size=256)
    net = randomize_(OfficialEncoder(opt), seed=5).eval()
    with torch.no_grad():
        mu, logvar = net(torch.rand(2, 3, 64, 96) * 2 - 1)
    assert mu.shape == logvar.shape == (2, 256)
    assert not torch.allclose(mu, logvar)


def test_encoder_small_crop_keeps_release_behaviour():
    # The release builds layer6 only for crop_size >= 256, yet always resizes to 256: it then fails.
    net = OfficialEncoder(_tiny_opt(crop_size=64))
    assert not hasattr(net, "layer6")
    with pytest.raises(RuntimeError):
        net(torch.rand(1, 3, 64, 64))


def test_depthconv_matches_formula():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=gen)
    w = torch.randn(2, 27, 5, 6, generator=gen)
    xpad = F.pad(x, (1, 1, 1, 1))
    expected = torch.zeros_like(x)
    for c in range(3):
        for i in range(3):
            for j in range(3):
                expected[:, c] += w[:, c * 9 + i * 3 + j] * xpad[:, c, i : i + 5, j : j + 6]
    torch.testing.assert_close(DepthConv(3)(x, w), expected)


# ------------------------------------------------------------------------------------------------
# Random checkpoints


def test_randomize_is_deterministic_and_complete():
    opt = _tiny_opt()
    default = OfficialGenerator(opt).state_dict()
    a = randomize_(OfficialGenerator(opt), seed=7).state_dict()
    b = randomize_(OfficialGenerator(opt), seed=7).state_dict()
    c = randomize_(OfficialGenerator(opt), seed=8).state_dict()
    for key in default:
        assert torch.equal(a[key], b[key]), key
        assert not torch.equal(a[key], c[key]), key
        assert not torch.equal(a[key], default[key]), key
        if key.endswith("running_var"):
            assert 0.5 <= a[key].min() and a[key].max() <= 1.5
        if key.endswith(("weight_u", "weight_v")):
            torch.testing.assert_close(a[key].norm(), torch.tensor(1.0))


def test_spectral_norm_vectors_fixed_in_eval(tiny_g):
    opt, net = tiny_g
    conv = net.labelenc2[0][0]
    u, v = conv.weight_u.clone(), conv.weight_v.clone()
    with torch.no_grad():
        net(_semantics(1, opt, 64, 64), torch.zeros(1, opt.z_dim))
    assert torch.equal(conv.weight_u, u) and torch.equal(conv.weight_v, v)
    mat = conv.weight_orig.reshape(conv.weight_orig.shape[0], -1)
    sigma = torch.dot(u, mat @ v)
    assert sigma > 0
    torch.testing.assert_close(conv.weight, conv.weight_orig / sigma)


def test_wrong_mapping_shows_and_unused_norms_do_not(tiny_g):
    opt, net = tiny_g
    seg = _semantics(1, opt, 64, 64)
    z = torch.randn(1, opt.z_dim, generator=torch.Generator().manual_seed(2))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    swaps = [
        ("head_0.gen_se_weights1.2.weight", "head_0.gen_se_weights2.2.weight"),
        ("up_3.norm_1.running_mean", "up_3.norm_s.param_free_norm.running_mean"),
        ("labellat1.0.0.weight_u", "labellat2.0.0.weight_u"),
    ]
    unused = ["G_middle_0.norm_0.weight", "up_1.conv_0.norm_layer.running_var", "up_2.conv_2.norm_layer.bias"]
    try:
        with torch.no_grad():
            base = net(seg, z)
            for k1, k2 in swaps:
                net.load_state_dict({**state, k1: state[k2], k2: state[k1]})
                assert (net(seg, z) - base).abs().max() > 1e-3, (k1, k2)
            net.load_state_dict({**state, **{k: state[k] * 3 + 1 for k in unused}})
            assert torch.equal(net(seg, z), base)
    finally:
        net.load_state_dict(state)
