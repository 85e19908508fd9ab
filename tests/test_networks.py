"""Shapes, devices and gradient flow of the generator, discriminator and encoder."""

import copy

import pytest
import torch

from ccfpse.config import ConfigError, apply_overrides, preset
from ccfpse.data.semantics import make_semantics
from ccfpse.nn import CCFPSEGenerator, ConvEncoder, build_networks


def tiny(name: str, **overrides):
    sets = {"model.ngf": 4, "model.ndf": 4, "model.predictor_hidden": 8, "model.z_dim": 16,
            "model.crop_size": 128 if name == "cityscapes" else 64}
    sets.update(overrides)
    return apply_overrides(preset(name), [f"{k}={v}" for k, v in sets.items()]).model


def random_semantics(cfg, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    label = torch.randint(0, cfg.num_label_channels, (n, h, w), generator=g)
    instance = torch.randint(0, 3, (n, h, w), generator=g) if cfg.use_instance else None
    return make_semantics(label, cfg.num_label_channels, instance)


@pytest.mark.parametrize("name", ["ade20k", "coco_stuff", "cityscapes"])
@pytest.mark.parametrize("mode", ["normal", "more"])
def test_shapes_all_presets_and_modes(name, mode):
    cfg = tiny(name, **{"model.num_upsampling_layers": mode})
    G, D, E = build_networks(cfg)
    seg = random_semantics(cfg)
    assert seg.shape[1] == cfg.semantic_nc
    h, w = cfg.image_size
    img = G(seg)
    assert img.shape == (2, 3, h, w)
    assert img.abs().max() <= 1
    features, predictions = D(img, seg)
    assert [f.shape[1] for f in features] == [8, 16, 32, 32]
    assert [p.shape[2:] for p in predictions] == [(h // 4, w // 4), (h // 8, w // 8), (h // 16, w // 16)]
    assert all(p.shape[1] == 1 for p in predictions)
    mu, logvar = E(img)
    assert mu.shape == logvar.shape == (2, cfg.z_dim)


def test_semantic_nc_is_derived():
    assert preset("ade20k").model.semantic_nc == 151
    assert preset("coco_stuff").model.semantic_nc == 184
    assert preset("cityscapes").model.semantic_nc == 36
    assert preset("cityscapes").model.latent_size == (4, 8)


def test_bad_crop_size_is_a_config_error():
    with pytest.raises(ConfigError, match="crop_size=100"):
        tiny("ade20k", **{"model.crop_size": 100})


def test_generator_without_vae_is_deterministic_and_needs_no_z():
    cfg = tiny("ade20k", **{"model.use_vae": False})
    G = CCFPSEGenerator.from_config(cfg).eval()
    seg = random_semantics(cfg)
    with torch.no_grad():
        assert torch.equal(G(seg), G(seg))


def test_generator_with_vae_samples_z_on_the_input_device_and_uses_it():
    cfg = tiny("coco_stuff")
    G = CCFPSEGenerator.from_config(cfg).eval()
    seg = random_semantics(cfg)
    z = torch.randn(2, cfg.z_dim)
    with torch.no_grad():
        a, b = G(seg), G(seg)  # z sampled on the CPU, the device of seg
        assert not torch.equal(a, b)
        assert torch.equal(G(seg, z=z), G(seg, z=z))


def test_generator_rejects_wrong_channel_count():
    cfg = tiny("ade20k")
    G = CCFPSEGenerator.from_config(cfg)
    with pytest.raises(ValueError, match=r"\(N, 151, H, W\)"):
        G(torch.zeros(1, 150, 64, 64))


def test_encoder_works_below_256():
    E = ConvEncoder(ngf=4, z_dim=8)
    for size in (32, 64, 256):
        mu, logvar = E(torch.randn(1, 3, size, size))
        assert mu.shape == (1, 8)


def _assert_all_params_have_grad(module, what):
    missing = [n for n, p in module.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{what}: parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize("use_vae", [True, False])
def test_gradients_reach_every_parameter(use_vae):
    cfg = tiny("coco_stuff", **{"model.use_vae": use_vae})
    G, D, E = build_networks(cfg)
    seg = random_semantics(cfg)
    real = torch.rand(2, 3, *cfg.image_size) * 2 - 1
    z = None
    if use_vae:
        mu, logvar = E(real)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    fake = G(seg, z=z)
    features, predictions = D(fake, seg)
    loss = sum(p.mean() for p in predictions) + sum(f.mean() for f in features)
    loss.backward()
    _assert_all_params_have_grad(G, "G")
    _assert_all_params_have_grad(D, "D")
    if use_vae:
        _assert_all_params_have_grad(E, "E")


def test_checkpointing_gives_identical_gradients_and_statistics(monkeypatch):
    import ccfpse.nn.blocks

    monkeypatch.setattr(ccfpse.nn.blocks, "STRIP_BYTES", 4096)  # many strips even at this size
    monkeypatch.setattr(ccfpse.nn.blocks, "MIN_STRIP_PIXELS", 1)
    cfg = tiny("ade20k", **{"model.use_vae": False})
    torch.manual_seed(0)
    G0 = CCFPSEGenerator.from_config(cfg)
    seg = random_semantics(cfg)
    grads, states = [], []
    for enabled in (False, True):
        G = copy.deepcopy(G0)  # spectral norm's power iteration changes u, v at every forward
        G.set_checkpointing(enabled)
        G(seg).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in G.named_parameters()})
        states.append(G.state_dict())
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
    # The recomputation in backward leaves BatchNorm statistics and spectral-norm vectors alone.
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name], msg=name)


def test_only_large_blocks_are_recomputed(monkeypatch):
    """Under checkpointing a block is recomputed (and computed in strips) only from a kernel map
    of RECOMPUTE_MIN_BYTES on; smaller ones keep their graphs. The gradients are the same."""
    import ccfpse.nn.blocks as blocks

    cfg = tiny("ade20k", **{"model.use_vae": False})
    torch.manual_seed(0)
    G0 = CCFPSEGenerator.from_config(cfg)
    seg = random_semantics(cfg)
    sizes: list[int] = []  # each block's kernel map, in bytes
    hooks = [b.register_forward_pre_hook(lambda b, args: sizes.append(b._kernel_map_bytes(args[0]))) for b in G0.blocks]
    with torch.no_grad():
        copy.deepcopy(G0)(seg)  # a copy: a forward pass moves the spectral norms' vectors
    for hook in hooks:
        hook.remove()
    recomputed: list[int] = []
    apply = blocks._RecomputedBlock.apply
    monkeypatch.setattr(blocks._RecomputedBlock, "apply",
                        lambda block, *a: recomputed.append(block.index) or apply(block, *a))
    middle = sorted(sizes)[len(sizes) // 2]
    large = [i for i, n in enumerate(sizes) if n >= middle]
    assert 0 < len(large) < len(sizes)
    grads = []
    for threshold, want in ((0, list(range(len(sizes)))), (middle, large), (max(sizes) + 1, [])):
        G = copy.deepcopy(G0)
        G.set_checkpointing(True)
        for i, block in enumerate(G.blocks):
            block.index = i
        monkeypatch.setattr(blocks, "RECOMPUTE_MIN_BYTES", threshold)
        recomputed.clear()
        G(seg).square().mean().backward()
        assert recomputed == want, threshold
        grads.append({n: p.grad.clone() for n, p in G.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)
        torch.testing.assert_close(grads[2][name], grads[0][name], msg=name)


def test_checkpointed_encoder_gives_identical_outputs_gradients_and_state():
    """Recomputed in backward: the same mu, logvar and gradients (of the image, too), and the
    spectral norms' vectors moved by one power iteration only, as without checkpointing."""
    torch.manual_seed(0)
    E0 = ConvEncoder(ngf=4, z_dim=8)
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    results = []
    for enabled in (False, True):
        E = copy.deepcopy(E0)
        E.set_checkpointing(enabled)
        x = image.clone().requires_grad_()
        mu, logvar = E(x)
        (mu.square().sum() + logvar.exp().sum()).backward()
        results.append((mu.detach(), logvar.detach(), x.grad, {n: p.grad for n, p in E.named_parameters()},
                        E.state_dict()))
    (mu0, lv0, gx0, grads0, state0), (mu1, lv1, gx1, grads1, state1) = results
    torch.testing.assert_close(mu1, mu0, rtol=0, atol=0)
    torch.testing.assert_close(lv1, lv0, rtol=0, atol=0)
    torch.testing.assert_close(gx1, gx0)
    assert grads0.keys() == grads1.keys() and all(g is not None for g in grads1.values())
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], msg=name)
    for name in state0:
        torch.testing.assert_close(state1[name], state0[name], rtol=0, atol=0, msg=name)


def test_networks_follow_the_input_device_and_dtype():
    cfg = tiny("ade20k")
    G = CCFPSEGenerator.from_config(cfg).double().eval()
    seg = random_semantics(cfg).double()
    out = G(seg, z=torch.randn(2, cfg.z_dim, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.device == seg.device


def test_yaml_presets_match_the_built_in_presets():
    from ccfpse.config import PRESETS, Config
    from tests.conftest import ROOT

    for name in PRESETS:
        assert Config.load(ROOT / "configs" / f"{name}.yaml").to_dict() == preset(name).to_dict(), name


def test_checkpointing_under_bf16_autocast_recomputes_in_bf16():
    cfg = tiny("ade20k", **{"model.use_vae": False})
    torch.manual_seed(0)
    G0 = CCFPSEGenerator.from_config(cfg)
    seg = random_semantics(cfg)
    grads = []
    for enabled in (False, True):
        G = copy.deepcopy(G0)
        G.set_checkpointing(enabled)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = G(seg)
        assert out.dtype == torch.bfloat16
        out.float().square().mean().backward()
        grads.append(G.blocks[-1].kernels_1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("name,rows", [("coco_stuff", 4096), ("cityscapes", 8192), ("ade20k", 20000)])
def test_strips_are_exact_in_float64_in_training_and_eval(monkeypatch, name, rows):
    """Strip-wise computation (checkpointing) against the whole-map computation, float64: one
    training step's output, every gradient, the BatchNorm statistics; then eval-mode outputs
    without grad. Strip sizes of 1, 2 and 4 rows and "more" upsampling (cityscapes) included."""
    import ccfpse.nn.blocks

    monkeypatch.setattr(ccfpse.nn.blocks, "STRIP_BYTES", rows)
    monkeypatch.setattr(ccfpse.nn.blocks, "MIN_STRIP_PIXELS", 1)
    cfg = tiny(name, **{"model.use_vae": False})
    torch.manual_seed(0)
    G0 = CCFPSEGenerator.from_config(cfg).double()
    seg = random_semantics(cfg).double()
    counts = []
    strips = ccfpse.nn.blocks.CondConvBlock.strips
    monkeypatch.setattr(ccfpse.nn.blocks.CondConvBlock, "strips", lambda self, x: counts.append(len(strips(self, x))) or strips(self, x))
    results = []
    for enabled in (False, True):
        G = copy.deepcopy(G0)
        G.set_checkpointing(enabled)
        out = G(seg)
        out.square().mean().backward()
        with torch.no_grad():
            G.eval()
            evaluated = G(seg)
        results.append((out.detach(), {n: p.grad for n, p in G.named_parameters()}, G.state_dict(), evaluated))
    assert max(counts) > 4  # some blocks really ran in many strips
    (out0, grads0, state0, eval0), (out1, grads1, state1, eval1) = results
    exact = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out1, out0, **exact)
    torch.testing.assert_close(eval1, eval0, **exact)
    for key in grads0:
        torch.testing.assert_close(grads1[key], grads0[key], msg=key, **exact)
    for key in state0:
        torch.testing.assert_close(state1[key], state0[key], msg=key, **exact)


def test_checkpointed_block_on_the_winograd_path_equals_the_whole_map(monkeypatch):
    """With several strips, each on the Winograd path, the block's output and gradients are
    those of the whole map."""
    import ccfpse.nn.blocks as blocks
    from ccfpse import native
    from ccfpse.nn.label_conv import LabelMap

    if native.lib() is None:
        pytest.skip("no compiled kernels here (CCFPSE_NO_EXT=1 or no C compiler)")
    torch.manual_seed(0)
    classes, nf = 5, 4
    block0 = blocks.CondConvBlock(16, 8, classes + nf, hidden=32)  # kernels: 32 -> 144 and 72 channels
    blocks.init_weights(block0, gain=0.5)
    x = torch.randn(2, 16, 64, 64, requires_grad=True)
    feats = torch.randn(2, nf, 64, 64, requires_grad=True)
    labels = LabelMap.from_index(torch.randint(0, classes, (2, 64, 64)), classes)
    grad = torch.randn(2, 8, 64, 64)
    monkeypatch.setattr(blocks, "STRIP_BYTES", 2 * 9 * 16 * 64 * 4 * 32)  # 32-row strips: 4096 pixels
    import ccfpse.winograd

    calls = []
    real = ccfpse.winograd._forward
    monkeypatch.setattr(ccfpse.winograd, "_forward", lambda *a: calls.append(a[2].shape) or real(*a))

    monkeypatch.setattr(ccfpse.winograd, "MIN_CHANNELS", 1)  # every predictor conv on the Winograd path
    monkeypatch.setattr(ccfpse.winograd, "MIN_FILTERS", 1)
    results = []
    for enabled in (False, True):
        block = copy.deepcopy(block0)
        block.checkpoint = enabled
        out = block(x, labels, feats)
        results.append((out, *torch.autograd.grad(out, [x, feats, *block.parameters()], grad)))
    assert block.strips(x) == [(0, 32), (32, 64)]
    # The six convs on the hidden maps took the Winograd path, in every strip.
    convs = [block.kernels_1, block.kernels_2, block.gate_1, block.gate_2, block.norm_s.gamma, block.norm_s.beta]
    assert all(calls.count(c.weight.shape) >= 2 * 2 for c in convs)
    # Both are Winograd in float32, summed in other orders (each ~2.5e-6 from float64 here).
    for got, want in zip(results[1], results[0]):
        assert ((got - want).norm() / want.norm()).item() < 1e-4
