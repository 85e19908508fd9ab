"""Loaders for every layout (trees built here + the real COCO-Stuff samples), remapping,
identical crop/flip for label/instance/image, instance edges, palette masks, preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ccfpse.config import Config, preset
from ccfpse.data import LabelFolder, build_dataset, infer_label_nc, make_semantics
from ccfpse.data.datasets import ADE20KDataset, CityscapesDataset, CocoStuffDataset, CustomDataset
from ccfpse.data.semantics import instance_edges

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "coco_stuff"


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def blocks(h: int, w: int, values, block: int = 8, seed: int = 0) -> np.ndarray:
    """Label map of constant blocks drawn from ``values``."""
    rng = np.random.default_rng(seed)
    grid = rng.choice(np.asarray(values), size=(-(-h // block), -(-w // block)))
    return np.kron(grid, np.ones((block, block), dtype=grid.dtype))[:h, :w].astype(np.uint8)


def small(cfg: Config, crop: int = 32, load: int = 40) -> Config:
    cfg.model.crop_size = crop
    cfg.model.aspect_ratio = 1.0
    cfg.model.num_upsampling_layers = "normal"
    cfg.data.load_size = load
    return cfg


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------- ADE20K


def make_ade(root: Path, n: int = 3, size=(48, 40)) -> Path:
    base = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for i in range(n):
            name = f"ADE_{split[:5]}_{i:08d}"
            lab = blocks(size[1], size[0], [0, 1, 2, 150], seed=i)
            save(base / "annotations" / split / f"{name}.png", lab)
            save(base / "images" / split / f"{name}.jpg", rgb(size[1], size[0], i))
    return root


def test_ade20k_remaps_zero_to_dontcare_and_shifts_others(tmp_path):
    root = make_ade(tmp_path)
    cfg = small(preset("ade20k"))
    cfg.data.dataroot = str(root)
    ds = build_dataset(cfg, "train")
    assert isinstance(ds, ADE20KDataset) and len(ds) == 3 and ds.train
    cfg.data.preprocess_mode = "fixed"  # no crop: every raw value survives the resize
    for split in ("train", "val"):
        ds = build_dataset(cfg, split, train=False)
        raw = np.array(Image.open(ds.samples[0].label))
        label = ds[0]["label"]
        assert label.dtype == torch.int64 and label.shape == (32, 32)
        assert set(label.unique().tolist()) <= {150, 0, 1, 149}
        expect = {0: 150, 1: 0, 2: 1, 150: 149}
        got = {expect[v] for v in np.unique(raw)}
        assert set(label.unique().tolist()) == got
    # dataroot may also point at ADEChallengeData2016 itself
    cfg.data.dataroot = str(root / "ADEChallengeData2016")
    assert len(build_dataset(cfg, "val")) == 3


# ---------------------------------------------------------------------------------- COCO-Stuff


def make_coco(root: Path, n: int = 2, size=(40, 40)) -> Path:
    for split in ("train", "val"):
        for i in range(n):
            lab = blocks(size[1], size[0], [0, 5, 181, 255], seed=i)
            inst = np.zeros_like(lab)
            inst[4:20, 4:20] = 1
            inst[4:20, 20:36] = 2  # two touching instances
            save(root / f"{split}_label" / f"{i:012d}.png", lab)
            save(root / f"{split}_inst" / f"{i:012d}.png", inst)
            save(root / f"{split}_img" / f"{i:012d}.jpg", rgb(size[1], size[0], i))
    return root


def test_coco_stuff_maps_255_to_182_and_loads_instances(tmp_path):
    cfg = small(preset("coco_stuff"), crop=32, load=40)
    cfg.data.dataroot = str(make_coco(tmp_path))
    cfg.data.preprocess_mode = "fixed"
    ds = build_dataset(cfg, "val")
    assert isinstance(ds, CocoStuffDataset) and not ds.train
    s = ds[0]
    assert set(s["label"].unique().tolist()) == {0, 5, 181, 182}
    assert s["instance"].dtype == torch.int64 and set(s["instance"].unique().tolist()) == {0, 1, 2}
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert -1.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert s["path"].endswith(".jpg") and s["label_path"].endswith(".png")
    batch = next(iter(DataLoader(ds, batch_size=2)))
    sem = make_semantics(batch["label"], cfg.model.num_label_channels, batch["instance"])
    assert sem.shape == (2, cfg.model.semantic_nc, 32, 32) == (2, 184, 32, 32)


@pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"real COCO-Stuff fixtures not found at {FIXTURES}")
def test_coco_stuff_real_fixtures(tmp_path):
    cfg = preset("coco_stuff")
    cfg.data.dataroot = str(FIXTURES)
    for split in ("train", "val"):
        ds = build_dataset(cfg, split)
        assert len(ds) == len(list((FIXTURES / f"{split}_label").glob("*.png")))
        for i in (0, len(ds) - 1):
            s = ds[i]
            raw = np.unique(np.array(Image.open(ds.samples[i].label)))
            mapped = {182 if v == 255 else int(v) for v in raw}
            assert s["label"].shape == (256, 256) and s["image"].shape == (3, 256, 256)
            assert set(s["label"].unique().tolist()) <= mapped
            assert s["instance"].shape == (256, 256)
    # the full-resolution scan sees every raw value, 255 included, and maps it to 182
    from ccfpse.data import validate_dataset

    report = validate_dataset(cfg, "val")
    assert report.ok, report.problems
    assert 255 in report.value_pixels
    assert report.remap.map_values(np.array([255, 0, 181])).tolist() == [182, 0, 181]


# ---------------------------------------------------------------------------------- Cityscapes


def make_cityscapes(root: Path) -> Path:
    for split, cities in (("train", ("aachen", "bremen")), ("val", ("lindau",))):
        for city in cities:
            for j in range(2):
                stem = f"{city}_{j:06d}_000019"
                lab = blocks(32, 64, [0, 7, 26, 33], seed=j)
                inst = lab.astype(np.int32)
                inst[8:24, 8:30] = 26001
                inst[8:24, 30:50] = 26002
                gt = root / "gtFine" / split / city
                save(gt / f"{stem}_gtFine_labelIds.png", lab)
                save(gt / f"{stem}_gtFine_instanceIds.png", inst.astype(np.uint16))
                save(gt / f"{stem}_gtFine_color.png", rgb(32, 64))  # ignored
                save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb(32, 64, j))
    return root


def test_cityscapes_layout_labels_and_16bit_instances(tmp_path):
    cfg = preset("cityscapes")
    cfg.model.crop_size = 128  # keeps aspect 2 and "more" upsampling: 128 x 64
    cfg.data.load_size = 128
    cfg.data.dataroot = str(make_cityscapes(tmp_path))
    ds = build_dataset(cfg, "train")
    assert isinstance(ds, CityscapesDataset) and len(ds) == 4
    s = ds[0]
    assert s["label"].shape == (64, 128) and s["image"].shape == (3, 64, 128)
    assert set(s["label"].unique().tolist()) <= {0, 7, 26, 33}
    assert {26001, 26002} <= set(s["instance"].unique().tolist())
    assert "aachen" in s["label_path"] and s["label_path"].endswith("_gtFine_labelIds.png")
    assert s["path"].endswith("_leftImg8bit.png")
    assert len(build_dataset(cfg, "val")) == 2
    assert len(ds.class_names) == 35 and ds.class_names[26] == "car"


# ---------------------------------------------------------------------------------- custom


def test_custom_split_folders_palette_file_and_explicit_dirs(tmp_path):
    colors = {0: (10, 20, 30), 1: (200, 0, 0), 2: (0, 200, 0)}
    (tmp_path / "palette.json").write_text(
        json.dumps({"classes": [{"id": k, "name": f"c{k}", "color": list(v)} for k, v in colors.items()]})
    )
    for i in range(2):
        ids = blocks(32, 32, [0, 1, 2], seed=i)
        mask = np.zeros((32, 32, 3), np.uint8)
        for k, c in colors.items():
            mask[ids == k] = c
        save(tmp_path / "train" / "labels" / f"a{i}.png", mask)
        save(tmp_path / "train" / "images" / f"a{i}.jpg", rgb(32, 32, i))
        np.save(tmp_path / f"ids{i}.npy", ids)
    cfg = small(Config(), crop=32, load=32)
    cfg.model.label_nc = 3
    cfg.data.dataroot = str(tmp_path)
    ds = build_dataset(cfg, "train", train=False)
    assert isinstance(ds, CustomDataset) and ds.palette is not None
    assert ds.class_names == ["c0", "c1", "c2"]
    for i in range(2):
        assert np.array_equal(ds[i]["label"].numpy(), np.load(tmp_path / f"ids{i}.npy"))
    # explicit dirs override the root, and a CSV palette works too
    (tmp_path / "pal.csv").write_text("name,id,color\n" + "".join(f"c{k},{k},#{r:02x}{g:02x}{b:02x}\n" for k, (r, g, b) in colors.items()))
    cfg2 = small(Config(), crop=32, load=32)
    cfg2.model.label_nc = 3
    cfg2.data.label_dir = str(tmp_path / "train" / "labels")
    cfg2.data.image_dir = str(tmp_path / "train" / "images")
    cfg2.data.palette = str(tmp_path / "pal.csv")
    ds2 = build_dataset(cfg2, "train", train=False)
    assert np.array_equal(ds2[1]["label"].numpy(), np.load(tmp_path / "ids1.npy"))


def test_custom_index_png_modes_and_root_without_split(tmp_path):
    ids = blocks(32, 32, [0, 3, 4])
    save(tmp_path / "labels" / "gray.png", ids)
    save(tmp_path / "labels" / "rgbgray.png", np.repeat(ids[..., None], 3, axis=2))  # grey index as RGB
    p = Image.frombytes("P", (32, 32), ids.tobytes())
    p.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    p.save(tmp_path / "labels" / "pal.png")
    save(tmp_path / "labels" / "wide.png", ids.astype(np.uint16) * 1)  # 16-bit index PNG
    for stem in ("gray", "rgbgray", "pal", "wide"):
        save(tmp_path / "images" / f"{stem}.png", rgb(32, 32))
    cfg = small(Config(), crop=32, load=32)
    cfg.model.label_nc = 5
    cfg.data.dataroot = str(tmp_path)
    ds = build_dataset(cfg, "train", train=False)
    assert len(ds) == 4
    for i in range(4):
        assert np.array_equal(ds[i]["label"].numpy(), ids), ds.samples[i].label


def test_ignore_label_and_infer_label_nc(tmp_path):
    ids = blocks(32, 32, [0, 1, 6, 255])
    save(tmp_path / "labels" / "x.png", ids)
    save(tmp_path / "images" / "x.png", rgb(32, 32))
    cfg = small(Config(), crop=32, load=32)
    cfg.data.dataroot = str(tmp_path)
    assert infer_label_nc(cfg) == 7  # 255 is the unlabeled value, not a class
    cfg.model.label_nc = 7
    cfg.model.contain_dontcare_label = True
    s = build_dataset(cfg, "train", train=False)[0]
    assert set(s["label"].unique().tolist()) == {0, 1, 6, 7}
    # a custom ignore value
    ids2 = np.where(ids == 255, 9, ids).astype(np.uint8)
    save(tmp_path / "labels" / "x.png", ids2)
    cfg.data.ignore_label = 9
    assert infer_label_nc(cfg) == 7
    assert set(build_dataset(cfg, "train", train=False)[0]["label"].unique().tolist()) == {0, 1, 6, 7}


def test_label_only_folder_for_synthesis(tmp_path):
    raw = blocks(32, 32, [0, 1, 150])
    save(tmp_path / "labels" / "scene.png", raw)
    cfg = small(preset("ade20k"))
    ds = LabelFolder(cfg, tmp_path / "labels")
    s = ds[0]
    assert "image" not in s and s["path"] == s["label_path"]
    assert set(s["label"].unique().tolist()) == {150, 0, 149}  # ADE remapping still applies
    cfg2 = small(Config(), crop=32, load=32)
    cfg2.model.label_nc = 151
    cfg2.data.label_dir = str(tmp_path / "labels")
    s2 = build_dataset(cfg2, "val", images_required=False)[0]
    assert "image" not in s2 and set(s2["label"].unique().tolist()) == {0, 1, 150}
    batch = next(iter(DataLoader(ds, batch_size=1)))
    assert batch["label"].shape == (1, 32, 32)


# ---------------------------------------------------------------------------------- preprocessing


def colour_tree(root: Path, n: int = 2, size=(48, 48)) -> tuple[Path, np.ndarray]:
    """Labels of large blocks and images whose exact colours encode the label (PNG, lossless)."""
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
    for i in range(n):
        lab = blocks(size[1], size[0], [0, 1, 2, 3], block=6, seed=i)
        save(root / "labels" / f"{i}.png", lab)
        save(root / "images" / f"{i}.png", colors[lab])
        inst = (np.arange(size[0])[None, :] // 5 + 60 * lab).astype(np.uint8)  # ids tied to the label
        save(root / "instances" / f"{i}.png", inst)
    return root, colors


def _decode(image: torch.Tensor) -> np.ndarray:
    return ((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.int64)


def test_crop_and_flip_are_identical_for_label_instance_and_image(tmp_path):
    root, colors = colour_tree(tmp_path)
    cfg = small(Config(), crop=32, load=48)  # load == file size: crop/flip only, no resampling
    cfg.model.label_nc = 4
    cfg.model.use_instance = True
    cfg.data.dataroot = str(root)
    ds = build_dataset(cfg, "train")
    full = np.array(Image.open(ds.samples[0].label))
    seen_flip, seen_plain, boxes = False, False, set()
    for seed in range(16):
        torch.manual_seed(seed)
        s = ds[0]
        lab = s["label"].numpy()
        assert np.array_equal(_decode(s["image"]), colors[lab].astype(np.int64))
        assert np.array_equal(s["instance"].numpy() // 60, lab)
        # find where this crop came from, flipped or not
        for flipped, src in ((False, full), (True, full[:, ::-1])):
            hits = [(y, x) for y in range(17) for x in range(17) if np.array_equal(src[y:y + 32, x:x + 32], lab)]
            if hits:
                seen_flip |= flipped
                seen_plain |= not flipped
                boxes.add(hits[0])
                break
        else:
            pytest.fail("label crop not found in the source label map")
    assert seen_flip and seen_plain and len(boxes) > 3
    cfg.data.no_flip = True
    ds = build_dataset(cfg, "train")
    for seed in range(6):
        torch.manual_seed(seed)
        lab = ds[0]["label"].numpy()
        assert any(np.array_equal(full[y:y + 32, x:x + 32], lab) for y in range(17) for x in range(17))


def test_resize_keeps_label_and_image_aligned(tmp_path):
    root, colors = colour_tree(tmp_path)
    cfg = small(Config(), crop=32, load=72)  # upsampling: labels NEAREST, images BICUBIC
    cfg.model.label_nc = 4
    cfg.data.dataroot = str(root)
    ds = build_dataset(cfg, "train")
    torch.manual_seed(0)
    s = ds[1]
    img = _decode(s["image"])
    nearest = np.argmin(((img[:, :, None, :] - colors[None, None].astype(np.int64)) ** 2).sum(-1), axis=-1)
    assert (nearest == s["label"].numpy()).mean() > 0.9


def test_test_mode_is_deterministic_resize_without_flip(tmp_path):
    root, _ = colour_tree(tmp_path)
    cfg = small(Config(), crop=32, load=48)
    cfg.model.label_nc = 4
    cfg.data.dataroot = str(root)
    ds = build_dataset(cfg, "val", train=None)  # split != train -> test preprocessing
    assert not ds.train
    a, b = ds[0], ds[0]
    assert torch.equal(a["label"], b["label"]) and torch.equal(a["image"], b["image"])
    expect = np.array(Image.open(ds.samples[0].label).resize((32, 32), Image.Resampling.NEAREST))
    assert np.array_equal(a["label"].numpy(), expect)


@pytest.mark.parametrize(
    "mode, aspect, size, expect",
    [
        ("fixed", 2.0, (50, 30), (32, 64)),
        ("resize_and_crop", 1.0, (50, 30), (32, 32)),
        ("scale_width", 1.0, (50, 30), (24, 40)),
        ("scale_width_and_crop", 1.0, (80, 40), (32, 32)),
        ("scale_width_and_crop", 1.0, (120, 30), (32, 32)),  # very wide: grown, never padded
        ("none", 1.0, (50, 30), (32, 64)),
    ],
)
def test_preprocess_modes_output_sizes(tmp_path, mode, aspect, size, expect):
    w, h = size
    save(tmp_path / "labels" / "a.png", blocks(h, w, [0, 1]))
    save(tmp_path / "images" / "a.png", rgb(h, w))
    cfg = Config()
    cfg.model.crop_size, cfg.model.aspect_ratio = (64, aspect) if mode == "fixed" else (32, 1.0)
    cfg.model.label_nc = 2
    cfg.data.dataroot = str(tmp_path)
    cfg.data.preprocess_mode = mode
    cfg.data.load_size = 40
    s = build_dataset(cfg, "train")[0]
    assert tuple(s["label"].shape) == expect and tuple(s["image"].shape[1:]) == expect


def test_instance_edges_mark_both_sides_of_instance_boundaries(tmp_path):
    cfg = small(preset("coco_stuff"), crop=32, load=40)
    cfg.data.dataroot = str(make_coco(tmp_path, size=(32, 32)))
    cfg.data.preprocess_mode = "fixed"
    s = build_dataset(cfg, "val")[0]
    edges = instance_edges(s["instance"][None])[0, 0]
    inst = np.zeros((32, 32), np.int64)
    inst[4:20, 4:20] = 1
    inst[4:20, 20:36] = 2
    assert np.array_equal(s["instance"].numpy(), inst)
    assert edges[10, 19] == 1 and edges[10, 20] == 1  # the 1|2 boundary, both pixels
    assert edges[3, 10] == 1 and edges[4, 10] == 1  # 0|1 boundary
    assert edges[10, 10] == 0 and edges[30, 30] == 0
