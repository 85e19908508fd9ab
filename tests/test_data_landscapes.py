"""The built-in landscapes data set: classes, determinism, multimodality, disk layout, cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ccfpse.cli import main
from ccfpse.config import preset
from ccfpse.data import build_dataset, landscapes, validate_dataset
from ccfpse.errors import DataError


def test_classes_match_the_preset():
    assert len(landscapes.CLASS_NAMES) == landscapes.LABEL_NC == 10
    assert preset("landscapes").model.label_nc == landscapes.LABEL_NC
    assert len(set(map(tuple, landscapes.PALETTE))) == 10


def test_samples_are_deterministic_per_seed_and_index():
    lab_a, img_a = landscapes.sample(3, 48, seed=7)
    lab_b, img_b = landscapes.sample(3, 48, seed=7)
    assert np.array_equal(lab_a, lab_b) and np.array_equal(img_a, img_b)
    lab_c, img_c = landscapes.sample(3, 48, seed=8)
    assert not np.array_equal(img_a, img_c)
    assert lab_a.shape == (48, 48) and lab_a.dtype == np.uint8 and lab_a.max() < 10
    assert img_a.shape == (48, 48, 3) and img_a.dtype == np.uint8


def test_one_layout_has_several_renderings():
    label, images = landscapes.variants(5, 48, seed=0, n=3)
    assert len(images) == 3
    assert all(not np.array_equal(images[0], im) for im in images[1:])
    # the renderings differ in colour, and each class keeps a consistent look within an image
    means = [im.reshape(-1, 3).mean(0) for im in images]
    assert max(np.abs(means[0] - m).max() for m in means[1:]) > 2


def test_classes_are_all_used_and_visually_distinct():
    labels, images = zip(*(landscapes.sample(i, 64, seed=1) for i in range(40)))
    labels, images = np.stack(labels), np.stack(images).astype(np.float64)
    present = np.bincount(labels.ravel(), minlength=10)
    assert (present > 0).all(), present
    # Within an image, a nearest-class-mean colour classifier already labels most pixels right:
    # the classes are told apart by colour (context does the rest for a real segmenter).
    accuracy = []
    for lab, img in zip(labels, images):
        ks = np.unique(lab)
        means = np.stack([img[lab == k].mean(0) for k in ks])
        pred = ks[np.argmin(((img[..., None, :] - means) ** 2).sum(-1), axis=-1)]
        accuracy.append((pred == lab).mean())
    assert np.mean(accuracy) > 0.7


def test_generate_writes_the_custom_layout_and_loads(tmp_path, capsys):
    out = tmp_path / "land"
    meta = landscapes.generate(out, num=10, size=32, seed=3, val_fraction=0.2)
    assert meta["num_train"] == 8 and meta["num_val"] == 2 and meta["label_nc"] == 10
    assert len(list((out / "train" / "images").glob("*.jpg"))) == 8
    assert len(list((out / "val" / "labels").glob("*.png"))) == 2
    assert json.loads((out / "palette.json").read_text())["classes"][0]["name"] == "sky"
    assert json.loads((out / "landscapes.json").read_text()) == meta
    again = tmp_path / "again"
    landscapes.generate(again, num=10, size=32, seed=3, val_fraction=0.2)
    for sub in ("train/labels/000000.png", "val/images/000009.jpg"):
        assert (out / sub).read_bytes() == (again / sub).read_bytes()

    cfg = preset("landscapes")
    cfg.model.crop_size, cfg.data.load_size = 32, 36
    cfg.data.dataroot = str(out)
    ds = build_dataset(cfg, "train")
    s = ds[0]
    assert s["label"].shape == (32, 32) and s["image"].shape == (3, 32, 32) and "instance" not in s
    assert ds.class_names == list(landscapes.CLASS_NAMES)
    assert validate_dataset(cfg, "val").ok
    assert main(["data", "check", str(out)]) == 0
    assert "problems: none" in capsys.readouterr().out


def test_make_landscapes_cli_then_check(tmp_path, capsys):
    out = tmp_path / "ls"
    assert main(["data", "make-landscapes", "--out", str(out), "--num", "6", "--size", "32", "--seed", "1"]) == 0
    assert main(["data", "check", "--preset", "landscapes", "--dataroot", str(out), "--split", "val"]) == 0
    assert "problems: none" in capsys.readouterr().out
    # refuses to mix with an existing set unless asked
    assert main(["data", "make-landscapes", "--out", str(out), "--num", "4", "--size", "32"]) == 2
    assert main(["data", "make-landscapes", "--out", str(out), "--num", "4", "--size", "32", "--overwrite"]) == 0
    assert len(list((out / "train" / "labels").glob("*.png"))) == 3


def test_ensure_landscapes_generates_once_atomically(tmp_path):
    root = landscapes.ensure_landscapes(tmp_path / "cache" / "land", num=5, size=32, seed=0)
    assert root == tmp_path / "cache" / "land"
    marker = root / "train" / "labels" / "000000.png"
    stamp = marker.stat().st_mtime_ns
    assert landscapes.ensure_landscapes(root, num=5, size=32, seed=0) == root
    assert marker.stat().st_mtime_ns == stamp  # reused, not regenerated
    assert [p.name for p in root.parent.iterdir()] == ["land"]  # no temporary leftovers
    # other parameters replace the set (and only the set)
    landscapes.ensure_landscapes(root, num=4, size=32, seed=1)
    assert json.loads((root / landscapes.META_NAME).read_text())["seed"] == 1
    assert len(list((root / "train" / "labels").iterdir())) + len(list((root / "val" / "labels").iterdir())) == 4
    assert [p.name for p in root.parent.iterdir()] == ["land"]
    # a directory holding anything else is never overwritten
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(DataError, match="mine"):
        landscapes.ensure_landscapes(other, num=4, size=32)
    assert (other / "precious.txt").read_text() == "keep"


def test_ensure_landscapes_removes_what_a_killed_generation_left(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.mkdir()
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = cache / f".land.tmp-{host}-{dead_pid}-abc123"  # a process killed mid-generation
    (stale / "train").mkdir(parents=True)
    running = cache / f".land.tmp-{host}-{os.getpid()}-def456"  # a generation still running
    running.mkdir()
    other_host = cache / f".land.tmp-elsewhere-{dead_pid}-xyz"  # cannot tell from here: kept
    other_host.mkdir()
    landscapes.ensure_landscapes(cache / "land", num=3, size=32, seed=0)
    assert sorted(p.name for p in cache.iterdir()) == sorted(["land", running.name, other_host.name])
