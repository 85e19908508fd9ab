"""Official checkpoint import: key listings, exact outputs against an independent re-implementation
of the release's networks (tests/reference/official.py), clear errors, and `ccfpse convert`."""

import re

import pytest
import torch

from ccfpse import compat
from ccfpse.cli import main
from ccfpse.data.semantics import make_semantics
from ccfpse.errors import CheckpointError
from ccfpse.model_io import load_for_inference, load_model_dir
from ccfpse.nn import build_networks
from tests.reference import official as ref

TINY = dict(ngf=8, ndf=8)
CONFIGS = {
    # name: release options (tiny widths; the real-size key listings are checked separately)
    "ade20k_vae": dict(label_nc=150, contain_dontcare_label=True, no_instance=True, crop_size=64, use_vae=True),
    "coco_instances": dict(label_nc=182, contain_dontcare_label=True, no_instance=False, crop_size=64, use_vae=True),
    "cityscapes_more": dict(label_nc=35, contain_dontcare_label=False, no_instance=False, crop_size=128,
                            aspect_ratio=2.0, use_vae=True, num_upsampling_layers="more"),
    "no_vae": dict(label_nc=12, contain_dontcare_label=False, no_instance=True, crop_size=64, use_vae=False),
}


def official_inputs(opt, cfg, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    label = torch.randint(0, cfg.num_label_channels, (n, h, w), generator=g)
    # blocky instance maps so that edges are sparse, as in real data
    instance = torch.randint(0, 4, (n, h // 8, w // 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    semantics = make_semantics(label, cfg.num_label_channels, instance if cfg.use_instance else None)
    image = torch.rand(n, 3, h, w, generator=g) * 2 - 1
    z = torch.randn(n, 256, generator=g)
    return semantics, image, z


def save_official(tmp_path, opt, seed):
    """Official-format checkpoints with non-trivial weights, BN statistics and SN vectors."""
    nets = {
        "G": ref.randomize_(ref.OfficialGenerator(opt), seed).eval(),
        "D": ref.randomize_(ref.OfficialDiscriminator(opt), seed + 1).eval(),
        "E": ref.randomize_(ref.OfficialEncoder(opt), seed + 2).eval(),
    }
    paths = {}
    for name, net in nets.items():
        paths[name] = tmp_path / f"latest_net_{name}.pth"
        torch.save(net.state_dict(), paths[name])
    return nets, paths


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_official_checkpoints_reproduce_the_official_networks(tmp_path, name):
    options = dict(CONFIGS[name], **TINY)
    opt = ref.make_opt(**options)
    # encoder of the release needs crop_size >= 256 for layer6; ours always has it
    opt_e = ref.make_opt(**dict(options, crop_size=256, aspect_ratio=1.0, num_upsampling_layers="normal"))
    cfg = compat.official_config(**options)
    nets, paths = save_official(tmp_path, opt, seed=3)
    nets["E"] = ref.randomize_(ref.OfficialEncoder(opt_e), 5).eval()
    torch.save(nets["E"].state_dict(), paths["E"])

    G = compat.load_official_generator(paths["G"], cfg)
    D = compat.load_official_discriminator(paths["D"], cfg)
    E = compat.load_official_encoder(paths["E"], cfg)
    assert not G.training and not D.training and not E.training

    semantics, image, z = official_inputs(opt, cfg)
    with torch.no_grad():
        ours = G(semantics, z=z) if cfg.use_vae else G(semantics)
        theirs = nets["G"](semantics, z=z) if cfg.use_vae else nets["G"](semantics)
        assert rel_err(ours, theirs) < 1e-4
        assert ours.std() > 0.01  # a non-degenerate check

        (f_ours, p_ours), (f_theirs, p_theirs) = D(image, semantics), nets["D"](image, semantics)
        assert len(f_ours) == 4 and len(p_ours) == 3
        for a, b in zip(f_ours + p_ours, f_theirs + p_theirs):
            assert a.shape == b.shape and rel_err(a, b) < 1e-4

        for a, b in zip(E(image), nets["E"](image)):
            assert rel_err(a, b) < 1e-4


def test_export_then_import_round_trip_is_identical(tmp_path):
    """Our weights renamed into the official names load back unchanged (incl. fused predictors)."""
    cfg = compat.official_config(**dict(CONFIGS["coco_instances"], **TINY))
    G, D, E = build_networks(cfg)
    for net, key_map, loader in (
        (G, compat.generator_key_map, compat.load_official_generator),
        (D, compat.discriminator_key_map, compat.load_official_discriminator),
        (E, compat.encoder_key_map, compat.load_official_encoder),
    ):
        official = compat.to_official_state_dict(net, key_map(net))
        path = tmp_path / "net.pth"
        torch.save(official, path)
        loaded = loader(path, cfg)
        for k, v in net.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k


def test_unused_official_keys_are_accepted_and_dropped(tmp_path):
    opt = ref.make_opt(**dict(CONFIGS["ade20k_vae"], **TINY))
    sd = ref.OfficialGenerator(opt).state_dict()
    assert any(".norm_0." in k for k in sd) and any("conv_0.norm_layer" in k for k in sd)
    torch.save(sd, tmp_path / "G.pth")
    compat.load_official_generator(tmp_path / "G.pth", compat.official_config(**dict(CONFIGS["ade20k_vae"], **TINY)))


def test_wrong_label_nc_names_the_key_and_the_option(tmp_path):
    options = dict(CONFIGS["ade20k_vae"], **TINY)
    torch.save(ref.OfficialGenerator(ref.make_opt(**options)).state_dict(), tmp_path / "G.pth")
    wrong = compat.official_config(**dict(options, label_nc=149))
    with pytest.raises(CheckpointError) as e:
        compat.load_official_generator(tmp_path / "G.pth", wrong)
    msg = str(e.value)
    assert "G.pth" in msg and "labelenc1.0.0.weight_orig" in msg and "label_nc" in msg


def test_wrong_upsampling_mode_and_missing_keys_are_clear(tmp_path):
    options = dict(CONFIGS["cityscapes_more"], **TINY)
    sd = ref.OfficialGenerator(ref.make_opt(**options)).state_dict()
    torch.save(sd, tmp_path / "G.pth")
    with pytest.raises(CheckpointError, match="num_upsampling_layers"):
        compat.load_official_generator(tmp_path / "G.pth", compat.official_config(**dict(options, num_upsampling_layers="normal", crop_size=128)))
    del sd["up_1.conv_1.weight"]
    torch.save(sd, tmp_path / "G2.pth")
    with pytest.raises(CheckpointError, match=re.escape("missing key 'up_1.conv_1.weight'")):
        compat.load_official_generator(tmp_path / "G2.pth", compat.official_config(**options))


def test_vae_mismatch_and_unreadable_files_are_clear(tmp_path):
    options = dict(CONFIGS["ade20k_vae"], **TINY)
    torch.save(ref.OfficialGenerator(ref.make_opt(**options)).state_dict(), tmp_path / "G.pth")
    with pytest.raises(CheckpointError, match="use_vae"):
        compat.load_official_generator(tmp_path / "G.pth", compat.official_config(**dict(options, use_vae=False)))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        compat.load_official_generator(tmp_path / "junk.pth", compat.official_config(**options))
    with pytest.raises(CheckpointError, match="no such"):
        compat.load_official_generator(tmp_path / "absent.pth", compat.official_config(**options))


def test_pickled_objects_are_refused(tmp_path):
    import argparse

    torch.save({"fc.weight": argparse.Namespace(x=1)}, tmp_path / "evil.pth")  # not allow-listed
    with pytest.raises(CheckpointError, match="evil.pth"):
        compat.read_official(tmp_path / "evil.pth")


def test_real_size_key_listings_map_completely(spec_dir):
    """Every key of the three official listings is mapped (or a known unused one) with the listed
    shape, for the real ngf = ndf = 64 presets (built on the meta device)."""
    from ccfpse.config import preset

    for name in ("ade20k", "coco_stuff", "cityscapes"):
        text = (spec_dir / f"official_state_dict_{name}.txt").read_text()
        cfg = preset(name).model
        with torch.device("meta"):
            G, D, E = build_networks(cfg)
        for tag, net, key_map in (("net_G", G, compat.generator_key_map), ("net_D", D, compat.discriminator_key_map),
                                  ("net_E", E, compat.encoder_key_map)):
            section = text.split(f"## {tag}")[1].split("\n## ")[0]
            listed = {}
            for line in section.strip().splitlines()[1:] if not section.strip().splitlines()[0].count("\t") else section.strip().splitlines():
                if "\t" in line:
                    key, shape, dtype = line.split("\t")
                    listed[key] = torch.empty(eval(shape), dtype=getattr(torch, dtype), device="meta")
            converted = compat.convert_state_dict(listed, net, key_map(net), cfg, source=f"{name} {tag}")
            assert set(converted) == set(net.state_dict())


def test_convert_cli_writes_a_model_dir_that_loads_back(tmp_path):
    options = dict(CONFIGS["ade20k_vae"], **TINY)
    opt = ref.make_opt(**options)
    nets, paths = save_official(tmp_path, opt, seed=11)
    opt_e = ref.make_opt(**dict(options, crop_size=256))
    torch.save(ref.randomize_(ref.OfficialEncoder(opt_e), 12).state_dict(), paths["E"])
    out = tmp_path / "model"
    code = main(["convert", "--official", str(tmp_path), "--preset", "ade20k", "--set", "model.ngf=8",
                 "--set", "model.ndf=8", "--set", "model.crop_size=64", "--out", str(out)])
    assert code == 0
    cfg, G, D, E = load_model_dir(out)
    assert D is not None and E is not None and cfg.model.ngf == 8
    semantics, image, z = official_inputs(opt, cfg.model)
    with torch.no_grad():
        assert rel_err(G(semantics, z=z), nets["G"](semantics, z=z)) < 1e-4
    cfg2, G2, E2 = load_for_inference(out)
    assert E2 is not None


def test_convert_cli_reports_a_mismatch_in_one_line(tmp_path, capsys):
    options = dict(CONFIGS["ade20k_vae"], **TINY)
    torch.save(ref.OfficialGenerator(ref.make_opt(**options)).state_dict(), tmp_path / "G.pth")
    code = main(["convert", "--official", str(tmp_path / "G.pth"), "--preset", "coco_stuff", "--set", "model.ngf=8",
                 "--set", "model.crop_size=64", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and "G.pth" in err and "label_nc" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()
