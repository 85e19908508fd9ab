"""`ccfpse evaluate`, `ccfpse train-segmenter` and evaluation during training, offline, with
weight files the tests create."""

import json
import shutil

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from ccfpse.cli import main
from ccfpse.config import apply_overrides, preset
from ccfpse.data import landscapes
from ccfpse.metrics import fid as fid_mod
from ccfpse.model_io import save_model_dir
from ccfpse.nn import build_networks
from ccfpse.train.loop import train

TINY = ["model.ngf=4", "model.ndf=4", "model.predictor_hidden=8", "model.z_dim=8", "train.batch_size=2",
        "data.num_workers=0", "data.load_size=72"]


pytestmark = pytest.mark.usefixtures("offline_weights")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    landscapes.generate(root / "data", num=12, size=64, seed=1, val_fraction=0.5)
    torch.manual_seed(0)
    net, _ = fid_mod._build_fid_inception()
    torch.save(net.state_dict(), root / "inception.pth")
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), root / "alexnet.pth")
    cfg = apply_overrides(preset("landscapes"), TINY + [f"data.dataroot={root / 'data'}"])
    G, D, E = build_networks(cfg.model)
    save_model_dir(root / "model", cfg, G, D, E)
    return root


def test_train_segmenter_then_evaluate_all_metrics(setup, tmp_path):
    seg = tmp_path / "seg"
    assert main(["train-segmenter", "--dataroot", str(setup / "data"), "--steps", "3", "--batch-size", "2",
                 "--out", str(seg), "--set", "model.crop_size=64", "--device", "cpu"]) == 0
    out = tmp_path / "res"
    code = main(["evaluate", "-c", str(setup / "model"), "--inception-weights", str(setup / "inception.pth"),
                 "--segmenter", f"small:{seg}", "--lpips-samples", "2", "--lpips-backbone-weights", str(setup / "alexnet.pth"),
                 "--out", str(out), "--device", "cpu", "--batch-size", "3"])
    assert code == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["num_images"] == 6
    assert result["fid"] > 0 and 0 <= result["miou"] <= 100 and 0 <= result["accuracy"] <= 100
    assert result["lpips_diversity"] > 0
    assert str(setup / "inception.pth") in result["weights"]
    assert all(len(d) == 64 for d in result["weights"].values())  # sha256 of every file used
    table = (out / "metrics.md").read_text()
    assert "| FID | mIoU | acc | LPIPS |" in table


def test_fid_of_a_folder_against_itself_is_zero(setup, tmp_path, capsys):
    images = setup / "data" / "val" / "images"
    assert main(["evaluate", "--real-dir", str(images), "--fake-dir", str(images),
                 "--inception-weights", str(setup / "inception.pth"), "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert abs(json.loads((tmp_path / "metrics.json").read_text())["fid"]) < 1e-3


def test_missing_inception_weights_offline_is_one_clear_error(setup, capsys):
    code = main(["evaluate", "-c", str(setup / "model"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--inception-weights" in err and "Traceback" not in err


def test_wrong_inception_file_is_rejected(setup, capsys):
    code = main(["evaluate", "-c", str(setup / "model"), "--inception-weights", str(setup / "alexnet.pth"),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "alexnet.pth" in err


def test_training_evaluates_every_n_steps_and_keeps_the_best(setup, tmp_path):
    cfg = apply_overrides(preset("landscapes"), TINY + [
        f"data.dataroot={setup / 'data'}", "model.crop_size=64", "train.max_steps=2", "train.eval_every=1",
        "train.eval_num_images=4", f"train.inception_weights={setup / 'inception.pth'}", "train.log_every=1"])
    train(cfg, tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    fids = [r["eval/fid"] for r in lines if "eval/fid" in r]
    assert len(fids) == 2
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["metrics"]["fid"] == min(fids)


def test_a_resumed_run_replaces_best_only_with_a_better_model(setup, tmp_path, monkeypatch):
    from ccfpse.train import loop

    scores = iter([5.0, 3.0, 4.0, 6.0])  # the best (3.0) is at step 2, before the run stops
    monkeypatch.setattr(loop, "evaluate_during_training", lambda *a, **k: {"fid": next(scores)})
    sets = TINY + [f"data.dataroot={setup / 'data'}", "model.crop_size=64", "train.eval_every=1",
                   f"train.inception_weights={setup / 'inception.pth'}", "train.save_every=1"]
    train(apply_overrides(preset("landscapes"), sets + ["train.max_steps=2"]), tmp_path / "run", progress=False)
    result = train(apply_overrides(preset("landscapes"), sets + ["train.max_steps=4"]), tmp_path / "run",
                   progress=False)
    assert result.step == 4
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == 2 and best["metrics"]["fid"] == 3.0


def test_an_unreadable_best_checkpoint_is_one_clear_error(setup, tmp_path):
    from ccfpse.errors import CheckpointError

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    cfg = apply_overrides(preset("landscapes"), TINY + [
        f"data.dataroot={setup / 'data'}", "model.crop_size=64", "train.max_steps=1", "train.eval_every=1",
        f"train.inception_weights={setup / 'inception.pth'}"])
    with pytest.raises(CheckpointError, match=r"best\.pt: not a readable best checkpoint"):
        train(cfg, tmp_path / "run", progress=False)


def test_a_bad_label_met_while_evaluating_is_one_error_on_its_own_line_and_writes_nothing(setup, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(setup / "data", data)
    bad = sorted((data / "val" / "labels").glob("*.png"))[3]
    label = np.array(Image.open(bad))
    label[0, 0] = 250
    Image.fromarray(label).save(bad)
    out = tmp_path / "res"
    code = main(["evaluate", "-c", str(setup / "model"), "--dataroot", str(data), "--inception-weights",
                 str(setup / "inception.pth"), "--device", "cpu", "--batch-size", "1", "--out", str(out)])
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(error_lines) == 1
    assert error_lines[0].startswith(f"ccfpse evaluate: error: {bad}") and "250" in error_lines[0]
    assert not out.exists()
