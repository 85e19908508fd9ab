"""`ccfpse synthesize` and the Synthesizer API on tiny random-init models (CPU, 32 px)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from ccfpse.cli import main
from ccfpse.config import Config, DataConfig, ModelConfig, preset
from ccfpse.errors import CCFPSEError, DataError
from ccfpse.model_io import TRAIN_FORMAT, save_model_dir
from ccfpse.nn import build_networks
from ccfpse.synthesize import Synthesizer, output_names

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "coco_stuff"
TINY = dict(ngf=4, ndf=4, crop_size=32, z_dim=8, predictor_hidden=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These nets are tiny: one thread is as fast when idle and far faster on a shared, loaded
    machine, where OpenMP threads of several processes spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _save(path: Path, cfg: Config, with_encoder: bool = True, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    G, _, E = build_networks(cfg.model, with_discriminator=False)
    return save_model_dir(path, cfg, G, E=E if with_encoder else None)


def _custom_cfg(**model) -> Config:
    return Config(model=ModelConfig(label_nc=3, **{**TINY, **model}), data=DataConfig(dataset_mode="custom"))


@pytest.fixture(scope="module")
def coco_model(tmp_path_factory) -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"real COCO-Stuff fixtures not found at {FIXTURES}")
    cfg = preset("coco_stuff")
    for k, v in TINY.items():
        setattr(cfg.model, k, v)
    return _save(tmp_path_factory.mktemp("coco") / "model", cfg)


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("custom") / "model", _custom_cfg())


def run(*argv) -> int:
    return main(["synthesize", "--device", "cpu", "--quiet", *map(str, argv)])


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def gallery_refs(out: Path) -> list[Path]:
    parser = _Refs()
    parser.feed((out / "index.html").read_text())
    return [out / unquote(r) for r in parser.refs]


@pytest.fixture(scope="module")
def coco_run(coco_model, tmp_path_factory) -> Path:
    """The eight validation layouts, one sample each, seed 1."""
    out = tmp_path_factory.mktemp("run") / "out"
    assert run("-c", coco_model, "--dataroot", FIXTURES, "--split", "val", "--seed", 1, "--out", out) == 0
    return out


def stems() -> list[str]:
    return sorted(p.stem for p in (FIXTURES / "val_label").glob("*.png"))


# ---------------------------------------------------------------------------------------------
# COCO-Stuff fixtures (raw labels 0..181 and 255, instance maps)


def test_split_writes_one_image_per_layout_reproducibly(coco_run, coco_model, tmp_path):
    files = pngs(coco_run)
    assert sorted(files) == [f"{s}.png" for s in stems()]
    for name in files:
        with Image.open(coco_run / name) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    again = tmp_path / "again"
    assert run("-c", coco_model, "--dataroot", FIXTURES, "--split", "val", "--seed", 1, "--out", again) == 0
    assert pngs(again) == files  # same seed: identical bytes
    batched = tmp_path / "batched"
    assert run("-c", coco_model, "--dataroot", FIXTURES, "--split", "val", "--seed", 1,
               "--batch-size", 3, "--out", batched) == 0
    for name in files:  # same z whatever the batch; kernels may round differently per batch size
        a, b = (np.asarray(Image.open(d / name), dtype=np.int16) for d in (coco_run, batched))
        assert np.abs(a - b).max() <= 1
    other = tmp_path / "other"
    assert run("-c", coco_model, "--dataroot", FIXTURES, "--split", "val", "--seed", 2, "--limit", 2,
               "--out", other) == 0
    assert len(pngs(other)) == 2 and all(files[n] != b for n, b in pngs(other).items())


def test_gallery_references_existing_files(coco_run):
    refs = gallery_refs(coco_run)
    # label | sample | real for every layout
    assert len({r for r in refs}) == 3 * len(stems())
    assert all(r.is_file() for r in refs), [r for r in refs if not r.is_file()]
    for s in stems():
        assert coco_run / f"{s}.png" in refs
        assert coco_run / "gallery" / f"{s}_real.png" in refs


def test_num_samples_gives_k_different_images(coco_model, coco_run, tmp_path):
    out = tmp_path / "k"
    assert run("-c", coco_model, "--dataroot", FIXTURES, "--split", "val", "--seed", 1,
               "--num-samples", 3, "--limit", 3, "--out", out) == 0
    files = pngs(out)
    assert sorted(files) == sorted(n for s in stems()[:3] for n in output_names(s, 3))
    single = pngs(coco_run)
    for s in stems()[:3]:
        a, b, c = (np.asarray(Image.open(out / f"{s}_s{k}.png")) for k in range(3))
        assert not np.array_equal(a, b) and not np.array_equal(b, c) and not np.array_equal(a, c)
        # sample 0 is the layout's single sample for the same seed
        assert files[f"{s}_s0.png"] == single[f"{s}.png"]
    refs = gallery_refs(out)
    assert all(r.is_file() for r in refs) and len(set(refs)) == 5 * 3


def test_label_folder_and_single_file_match_the_split(coco_model, coco_run, tmp_path):
    out = tmp_path / "folder"
    assert run("-c", coco_model, "--labels", FIXTURES / "val_label", "--instances", FIXTURES / "val_inst",
               "--seed", 1, "--limit", 4, "--out", out) == 0
    # the same remapping (255 -> dontcare 182), resizing and per-stem random streams
    assert pngs(out) == {f"{s}.png": pngs(coco_run)[f"{s}.png"] for s in stems()[:4]}
    assert all(r.is_file() for r in gallery_refs(out))

    stem = stems()[3]
    one = tmp_path / "one"
    assert run("-c", coco_model, "--labels", FIXTURES / "val_label" / f"{stem}.png",
               "--instances", FIXTURES / "val_inst" / f"{stem}.png", "--seed", 1, "--out", one) == 0
    assert pngs(one) == {f"{stem}.png": pngs(coco_run)[f"{stem}.png"]}


def test_style_exemplar_changes_output_deterministically(coco_model, coco_run, tmp_path):
    style = FIXTURES / "val_img" / f"{stems()[0]}.jpg"
    common = ["-c", coco_model, "--dataroot", FIXTURES, "--split", "val", "--limit", 2, "--style", style]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run(*common, "--seed", 1, "--out", a) == 0
    assert run(*common, "--seed", 2, "--out", b) == 0
    styled = pngs(a)
    assert len(styled) == 2
    assert all(styled[n] != pngs(coco_run)[n] for n in styled)
    # one sample uses z = mu of the exemplar: the seed does not matter
    assert pngs(b) == styled
    assert (a / "gallery" / "style.png").is_file() and all(r.is_file() for r in gallery_refs(a))
    # several samples draw around mu, reproducibly for a seed
    assert run(*common, "--seed", 1, "--num-samples", 2, "--out", c) == 0
    k = pngs(c)
    assert len(k) == 4 and all(k[f"{s}_s0.png"] != k[f"{s}_s1.png"] for s in stems()[:2])


def test_training_checkpoint_uses_ema_unless_told(tmp_path):
    cfg = _custom_cfg()
    torch.manual_seed(0)
    G, _, E = build_networks(cfg.model, with_discriminator=False)
    G_ema, _, _ = build_networks(cfg.model, with_discriminator=False)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"format": TRAIN_FORMAT, "step": 5, "config": cfg.to_dict(),
                "nets": {"G": G.state_dict(), "G_ema": G_ema.state_dict(), "E": E.state_dict()}},
               run_dir / "checkpoints" / "step_000000005.pt")
    label = np.random.default_rng(0).integers(0, 3, (32, 32))
    want_ema = Synthesizer(cfg, G_ema, E, "cpu").synthesize(label, seed=3, keys=["x"])[0, 0]
    want_raw = Synthesizer(cfg, G, E, "cpu").synthesize(label, seed=3, keys=["x"])[0, 0]
    assert not np.array_equal(want_ema, want_raw)
    Image.fromarray(label.astype(np.uint8)).save(tmp_path / "x.png")
    for source, flags, want in ((run_dir, [], want_ema),
                                (run_dir / "checkpoints" / "step_000000005.pt", ["--no-ema"], want_raw)):
        out = tmp_path / f"out{len(flags)}"
        assert run("-c", source, "--labels", tmp_path / "x.png", "--seed", 3, "--out", out, *flags) == 0
        assert np.array_equal(np.asarray(Image.open(out / "x.png")), want)


# ---------------------------------------------------------------------------------------------
# Label files: palette-coded masks, resizing


def test_palette_coded_labels_match_index_labels(custom_model, tmp_path):
    colors = [(0, 0, 255), (0, 160, 0), (200, 200, 200)]
    palette = tmp_path / "palette.json"
    palette.write_text(json.dumps({"classes": [{"id": i, "name": f"c{i}", "color": c}
                                                for i, c in enumerate(colors)]}))
    rng = np.random.default_rng(1)
    index_dir, rgb_dir = tmp_path / "index", tmp_path / "rgb"
    index_dir.mkdir()
    rgb_dir.mkdir()
    for name in ("a", "b"):
        lab = rng.integers(0, 3, (48, 64)).astype(np.uint8)  # resized NEAREST to 32 x 32
        Image.fromarray(lab).save(index_dir / f"{name}.png")
        Image.fromarray(np.array(colors, np.uint8)[lab]).save(rgb_dir / f"{name}.png")
    o1, o2 = tmp_path / "o1", tmp_path / "o2"
    assert run("-c", custom_model, "--labels", index_dir, "--seed", 0, "--out", o1) == 0
    assert run("-c", custom_model, "--labels", rgb_dir, "--palette", palette, "--seed", 0, "--out", o2) == 0
    assert pngs(o1) == pngs(o2) and sorted(pngs(o1)) == ["a.png", "b.png"]
    # API on the same label (resized in memory) gives the same image as the file
    synth = Synthesizer.from_checkpoint(custom_model, "cpu")
    lab = np.asarray(Image.open(index_dir / "a.png"))
    img = synth.synthesize(lab, seed=0, keys=["a"])
    assert img.shape == (1, 1, 32, 32, 3) and img.dtype == np.uint8
    assert np.array_equal(img[0, 0], np.asarray(Image.open(o1 / "a.png")))


# ---------------------------------------------------------------------------------------------
# Bad inputs: exit code 2 and one line naming the file


def _bad_label(tmp_path: Path, value: int) -> Path:
    path = tmp_path / "bad_label.png"
    lab = np.zeros((32, 32), np.uint8)
    lab[5, 7] = value
    Image.fromarray(lab).save(path)
    return path


def test_label_value_out_of_range(coco_model, tmp_path, capsys):
    bad = _bad_label(tmp_path, 200)  # COCO-Stuff raw values are 0..181 and 255
    inst = tmp_path / "bad_inst.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(inst)
    assert run("-c", coco_model, "--labels", bad, "--instances", inst, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "200" in err


def test_a_bad_label_leaves_no_empty_output_folder_and_its_error_starts_a_line(custom_model, tmp_path, capsys):
    bad = _bad_label(tmp_path, 3)  # label_nc 3, no dontcare
    out = tmp_path / "new" / "out"
    # with the progress bar, which must be closed before the error is printed
    assert main(["synthesize", "--device", "cpu", "-c", str(custom_model), "--labels", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "error" in line][0].startswith("ccfpse synthesize: error: ")
    assert not (tmp_path / "new").exists()  # nor the parent folder it made for it
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "mine.txt").write_text("a file of the user's")
    assert run("-c", custom_model, "--labels", bad, "--out", tmp_path / "kept") == 2
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["mine.txt"]


def test_custom_label_value_out_of_range(custom_model, tmp_path, capsys):
    bad = _bad_label(tmp_path, 3)  # label_nc 3, no dontcare
    assert run("-c", custom_model, "--labels", bad, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and " 3 " in err


def test_output_folder_must_not_be_the_label_folder(custom_model, tmp_path, capsys):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "x.png")
    before = (tmp_path / "x.png").read_bytes()
    assert run("-c", custom_model, "--labels", tmp_path, "--out", tmp_path) == 2
    assert "overwrite" in capsys.readouterr().err
    assert (tmp_path / "x.png").read_bytes() == before


def test_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert run("-c", missing, "--labels", tmp_path, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err


def test_model_needing_instances_without_them(coco_model, tmp_path, capsys):
    labels = FIXTURES / "val_label"
    assert run("-c", coco_model, "--labels", labels, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(labels) in err and "--instances" in err
    assert not (tmp_path / "o").exists()


def test_colour_mask_without_palette(custom_model, tmp_path, capsys):
    path = tmp_path / "rgb.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    assert run("-c", custom_model, "--labels", path, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "--palette" in err


def test_non_vae_model_is_deterministic_and_refuses_samples(tmp_path, capsys):
    model = _save(tmp_path / "novae", _custom_cfg(use_vae=False))
    label = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 3, (32, 32), dtype=np.uint8)).save(label)
    o1, o2 = tmp_path / "o1", tmp_path / "o2"
    assert run("-c", model, "--labels", label, "--seed", 1, "--out", o1) == 0
    assert run("-c", model, "--labels", label, "--seed", 2, "--out", o2) == 0
    assert pngs(o1) == pngs(o2)
    capsys.readouterr()
    for flags in (["--num-samples", 2], ["--style", label]):
        assert run("-c", model, "--labels", label, "--out", tmp_path / "o3", *flags) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(model) in err and "use_vae" in err


def test_non_finite_output_is_an_error_not_black_images(tmp_path, capsys):
    cfg = _custom_cfg()
    G, _, _ = build_networks(cfg.model, with_discriminator=False)
    with torch.no_grad():
        G.conv_img.bias.fill_(float("nan"))
    model = save_model_dir(tmp_path / "broken", cfg, G)
    label = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(label)
    assert run("-c", model, "--labels", label, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(model) in err and "NaN" in err
    assert not (tmp_path / "o" / "x.png").exists()


def test_style_needs_encoder_weights(tmp_path, capsys):
    model = _save(tmp_path / "noE", _custom_cfg(), with_encoder=False)
    label = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(label)
    assert run("-c", model, "--labels", label, "--style", label, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(model) in err and "encoder" in err


# ---------------------------------------------------------------------------------------------
# Python API


def test_api_shapes_seeds_and_samples(custom_model):
    synth = Synthesizer.from_checkpoint(custom_model, device="cpu")
    assert synth.image_size == (32, 32)
    labels = torch.from_numpy(np.random.default_rng(2).integers(0, 3, (2, 32, 32)))
    a = synth.synthesize(labels, num_samples=3, seed=7)
    assert a.shape == (2, 3, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, synth.synthesize(labels, num_samples=3, seed=7))
    assert not np.array_equal(a, synth.synthesize(labels, num_samples=3, seed=8))
    assert not np.array_equal(a[0, 0], a[0, 1]) and not np.array_equal(a[0, 1], a[0, 2])
    # sample k of a layout does not depend on the batch or on K
    assert np.array_equal(synth.synthesize(labels[1], seed=7, keys=[1])[0, 0], a[1, 0])
    float_out = synth.generate(labels, seed=7)
    assert float_out.shape == (2, 1, 3, 32, 32) and float_out.abs().max() <= 1


def test_api_style(custom_model):
    synth = Synthesizer.from_checkpoint(custom_model, device="cpu")
    photo = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    mu, logvar = synth.style_from_image(photo)
    assert mu.shape == logvar.shape == (1, 8)
    label = np.random.default_rng(4).integers(0, 3, (32, 32))
    styled = synth.synthesize(label, style_image=photo, seed=1)
    assert np.array_equal(styled, synth.synthesize(label, style_image=(mu, logvar), seed=99))
    assert not np.array_equal(styled, synth.synthesize(label, seed=1))


def test_api_rejects_bad_inputs(custom_model, coco_model):
    synth = Synthesizer.from_checkpoint(custom_model, device="cpu")
    with pytest.raises(DataError, match="0..2"):
        synth.synthesize(np.full((32, 32), 3))
    with pytest.raises(DataError, match="instance"):
        synth.synthesize(np.zeros((32, 32), np.int64), instance=np.zeros((32, 32), np.int64))
    coco = Synthesizer.from_checkpoint(coco_model, device="cpu")
    with pytest.raises(CCFPSEError, match="instance"):
        coco.synthesize(np.zeros((32, 32), np.int64))
