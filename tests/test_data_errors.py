"""Every broken-data path gives one DataError naming the file (at construction, at
``__getitem__``, through DataLoader workers, and in ``ccfpse data check``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from ccfpse.cli import main
from ccfpse.config import Config, preset
from ccfpse.data import build_dataset, validate_dataset
from ccfpse.errors import DataError


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def good_tree(root: Path, n: int = 3, size: int = 32, values=(0, 1, 2)) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        save(root / "train" / "labels" / f"s{i}.png", rng.choice(np.array(values, np.uint8), (size, size)))
        save(root / "train" / "images" / f"s{i}.jpg", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return root


def cfg_for(root: Path, label_nc: int = 3, **model) -> Config:
    cfg = Config()
    cfg.model.crop_size = 32
    cfg.model.label_nc = label_nc
    for k, v in model.items():
        setattr(cfg.model, k, v)
    cfg.data.dataroot = str(root)
    cfg.data.load_size = 32
    return cfg


def check(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["data", "check", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------- label values


def test_out_of_range_label_names_file_values_and_fix(tmp_path, capsys):
    root = good_tree(tmp_path)
    bad = save(root / "train" / "labels" / "s1.png", np.full((32, 32), 7, np.uint8))
    ds = build_dataset(cfg_for(root), "train")
    with pytest.raises(DataError) as e:
        ds[1]
    msg = str(e.value)
    assert str(bad) in msg and "7" in msg and "--label-nc 8" in msg and "--palette" in msg
    report = validate_dataset(ds)
    assert not report.ok and any(str(bad) in p and "--label-nc 8" in p for p in report.problems)
    with pytest.raises(DataError, match="s1.png"):
        report.raise_for_problems()
    code, out, _ = check(capsys, "--dataroot", str(root), "--label-nc", "3")
    assert code == 1 and str(bad) in out and "OUT OF RANGE" in out
    # without --label-nc the check infers 8 from the values and passes
    code, out, _ = check(capsys, "--dataroot", str(root))
    assert code == 0 and "label_nc: 8" in out


def test_unlabeled_255_without_dontcare_suggests_the_flag(tmp_path, capsys):
    root = good_tree(tmp_path)
    bad = save(root / "train" / "labels" / "s0.png", np.array([[0, 255], [1, 2]], np.uint8).repeat(16, 0).repeat(16, 1))
    ds = build_dataset(cfg_for(root), "train")
    with pytest.raises(DataError) as e:
        ds[0]
    assert str(bad) in str(e.value) and "--contain-dontcare-label" in str(e.value)
    ok = build_dataset(cfg_for(root, contain_dontcare_label=True), "train")
    assert set(ok[0]["label"].unique().tolist()) == {0, 1, 2, 3}
    assert check(capsys, "--dataroot", str(root), "--label-nc", "3")[0] == 1
    code, out, _ = check(capsys, "--dataroot", str(root), "--label-nc", "3", "--ignore-label", "255")
    assert code == 0 and "255 -> 3 dontcare" in out


def test_ade20k_raw_value_above_150(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    lab = np.full((32, 32), 151, np.uint8)
    bad = save(base / "annotations" / "training" / "a.png", lab)
    save(base / "images" / "training" / "a.jpg", np.zeros((32, 32, 3), np.uint8))
    cfg = preset("ade20k")
    cfg.model.crop_size, cfg.data.load_size, cfg.data.dataroot = 32, 32, str(tmp_path)
    with pytest.raises(DataError) as e:
        build_dataset(cfg, "train")[0]
    assert str(bad) in str(e.value) and "151" in str(e.value)


# ---------------------------------------------------------------------------------- masks


def test_rgb_mask_without_palette(tmp_path, capsys):
    root = good_tree(tmp_path)
    mask = np.zeros((32, 32, 3), np.uint8)
    mask[:, :16] = (128, 64, 128)
    bad = save(root / "train" / "labels" / "s2.png", mask)
    ds = build_dataset(cfg_for(root), "train")
    with pytest.raises(DataError) as e:
        ds[2]
    assert str(bad) in str(e.value) and "palette" in str(e.value)
    code, out, _ = check(capsys, "--dataroot", str(root))
    assert code == 1 and str(bad) in out and "--palette" in out


def test_palette_mask_with_unknown_colour(tmp_path):
    root = tmp_path
    (root / "pal.json").write_text(json.dumps([{"id": 0, "name": "a", "color": [0, 0, 0]}, {"id": 1, "name": "b", "color": "#ff0000"}]))
    mask = np.zeros((32, 32, 3), np.uint8)
    mask[:8] = (255, 0, 0)
    mask[8:10] = (1, 2, 3)
    bad = save(root / "labels" / "m.png", mask)
    save(root / "images" / "m.png", mask)
    cfg = cfg_for(root, label_nc=2)
    cfg.data.palette = str(root / "pal.json")
    with pytest.raises(DataError) as e:
        build_dataset(cfg, "train")[0]
    assert str(bad) in str(e.value) and "(1,2,3)" in str(e.value)


def test_bad_palette_files(tmp_path):
    root = good_tree(tmp_path)
    cfg = cfg_for(root)
    (tmp_path / "dup.json").write_text(json.dumps([{"id": 0, "color": [1, 1, 1]}, {"id": 1, "color": [1, 1, 1]}]))
    cfg.data.palette = str(tmp_path / "dup.json")
    with pytest.raises(DataError, match="dup.json"):
        build_dataset(cfg)
    (tmp_path / "broken.json").write_text("{not json")
    cfg.data.palette = str(tmp_path / "broken.json")
    with pytest.raises(DataError, match="broken.json"):
        build_dataset(cfg)
    cfg.data.palette = str(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="missing.csv"):
        build_dataset(cfg)


# ---------------------------------------------------------------------------------- files


def test_truncated_jpeg_is_detected(tmp_path, capsys):
    root = good_tree(tmp_path, size=64)
    path = root / "train" / "images" / "s1.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = build_dataset(cfg_for(root), "train")  # the header is intact: construction succeeds
    with pytest.raises(DataError) as e:
        ds[1]
    assert str(path) in str(e.value) and "truncated" in str(e.value)
    report = validate_dataset(ds)  # small sets are fully decoded by default
    assert any(str(path) in p and "truncated" in p for p in report.problems)
    assert validate_dataset(ds, decode_images=False).ok  # headers alone cannot tell
    code, out, _ = check(capsys, "--dataroot", str(root))
    assert code == 1 and str(path) in out


def test_label_and_image_sizes_differ(tmp_path, capsys):
    root = good_tree(tmp_path)
    img = save(root / "train" / "images" / "s0.jpg", np.zeros((40, 32, 3), np.uint8))
    lab = root / "train" / "labels" / "s0.png"
    ds = build_dataset(cfg_for(root), "train")
    with pytest.raises(DataError) as e:
        ds[0]
    assert str(img) in str(e.value) and str(lab) in str(e.value)
    code, out, _ = check(capsys, "--dataroot", str(root))
    assert code == 1 and str(img) in out and str(lab) in out


def test_unpaired_files_are_listed(tmp_path, capsys):
    root = good_tree(tmp_path)
    extra_label = save(root / "train" / "labels" / "lonely.png", np.zeros((32, 32), np.uint8))
    extra_image = save(root / "train" / "images" / "orphan.jpg", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(DataError) as e:
        build_dataset(cfg_for(root), "train")
    assert str(extra_label) in str(e.value) and str(extra_image) in str(e.value)
    code, out, _ = check(capsys, "--dataroot", str(root))
    assert code == 1 and "unpaired files: 2" in out and str(extra_label) in out and "pairs found: 3" in out


def test_missing_folders_and_duplicate_stems(tmp_path, capsys):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(cfg_for(tmp_path / "nowhere"), "train")
    root = good_tree(tmp_path / "d")
    save(root / "train" / "images" / "s0.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="s0.jpg.*s0.png|s0.png.*s0.jpg"):
        build_dataset(cfg_for(root), "train")
    code, _, err = check(capsys, "--dataroot", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_worker_errors_stay_one_clear_line(tmp_path):
    root = good_tree(tmp_path)
    path = root / "train" / "images" / "s0.jpg"
    path.write_bytes(path.read_bytes()[:200])
    ds = build_dataset(cfg_for(root), "train")
    loader = DataLoader(ds, batch_size=1, num_workers=1)
    with pytest.raises(DataError) as e:
        next(iter(loader))
    msg = str(e.value)
    assert str(path) in msg and "Traceback" not in msg and "\n" not in msg


# ---------------------------------------------------------------------------------- data check


def test_data_check_good_set(tmp_path, capsys):
    root = good_tree(tmp_path, values=(0, 1, 2, 5))
    code, out, _ = check(capsys, "--dataroot", str(root), "--split", "train")
    assert code == 0
    assert "pairs found: 3" in out and "unpaired files: none" in out and "32x32 (3)" in out
    assert "label_nc: 6" in out and "problems: none" in out
    assert "5 -> 5" in out  # values listed with counts
    code, out, _ = check(capsys, "--label-dir", str(root / "train" / "labels"), "--image-dir", str(root / "train" / "images"), "--label-nc", "6")
    assert code == 0 and "problems: none" in out


def test_data_check_presets_and_dontcare(tmp_path, capsys):
    root = tmp_path
    lab = np.array([[0, 5], [181, 255]], np.uint8).repeat(16, 0).repeat(16, 1)
    save(root / "val_label" / "a.png", lab)
    save(root / "val_img" / "a.jpg", np.zeros((32, 32, 3), np.uint8))
    save(root / "val_inst" / "a.png", lab)
    code, out, _ = check(capsys, "--preset", "coco_stuff", "--dataroot", str(root), "--split", "val")
    assert code == 0 and "255 -> 182 dontcare" in out and "label_nc: 182" in out
    code, out, _ = check(capsys, "--dataset-mode", "coco_stuff", "--dataroot", str(root), "--split", "val", "--no-contain-dontcare-label")
    assert code == 1 and "--contain-dontcare-label" in out
