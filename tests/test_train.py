"""The trainer: learning on real data, exact resume (also after kill -9), DDP equivalence,
bf16 and fp16, the NaN guard, and the out-of-the-box command."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ccfpse.config import ConfigError, apply_overrides, preset
from ccfpse.data.datasets import build_dataset
from ccfpse.data.semantics import make_semantics
from ccfpse.model_io import load_for_inference, read_training_checkpoint
from ccfpse.nn import build_networks, reparameterize
from ccfpse.train import loop
from ccfpse.train.loop import TrainingDiverged, learning_rates, train

ROOT = Path(__file__).resolve().parents[1]

TINY = ["model.ngf=4", "model.ndf=4", "model.crop_size=64", "model.predictor_hidden=8", "model.z_dim=8",
        "data.load_size=72", "data.num_workers=0", "train.batch_size=2", "train.no_vgg_loss=true",
        "train.log_every=1", "train.deterministic=true"]


def coco_cfg(root, *sets):
    return apply_overrides(preset("coco_stuff"), TINY + [f"data.dataroot={root}", *sets])


def test_learning_rate_schedule_is_the_releases():
    cfg = apply_overrides(preset("ade20k"), ["train.niter=2", "train.niter_decay=4"])
    lrs = [learning_rates(cfg, e)[0] for e in range(6)]
    assert lrs[:3] == [1e-4, 1e-4, 1e-4]  # constant for niter epochs (+ the release's one-epoch lag)
    assert lrs[3] == pytest.approx(1e-4 * 3 / 4) and lrs[5] == pytest.approx(1e-4 / 4)
    assert learning_rates(cfg, 0)[1] == 4e-4  # TTUR


def test_a_few_steps_decrease_a_reconstruction_loss_on_real_data(coco_fixture_root):
    cfg = coco_cfg(coco_fixture_root)
    data = build_dataset(cfg, "train", train=False)
    batch = [data[i] for i in range(4)]
    semantics = make_semantics(torch.stack([b["label"] for b in batch]), cfg.model.num_label_channels,
                               torch.stack([b["instance"] for b in batch]))
    real = torch.stack([b["image"] for b in batch])
    torch.manual_seed(0)
    G, _, E = build_networks(cfg.model, with_discriminator=False)
    opt = torch.optim.Adam(list(G.parameters()) + list(E.parameters()), lr=2e-3)
    losses = []
    for _ in range(8):
        mu, logvar = E(real)
        fake = G(semantics, z=reparameterize(mu, logvar))
        loss = (fake - real).abs().mean()
        opt.zero_grad()
        (loss + 1e-4 * (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()))).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def _states(path):
    state = read_training_checkpoint(path)
    return state["nets"], state["optim"], (state["step"], state["epoch"], state["rng"])


def _assert_same_state(a, b):
    (nets_a, optim_a, position_a), (nets_b, optim_b, position_b) = a, b
    assert position_a[:2] == position_b[:2]  # step, epoch
    torch.testing.assert_close(position_a[2], position_b[2], rtol=0, atol=0)  # every RNG state, exactly
    for net in nets_a:
        if nets_a[net] is None:
            assert nets_b[net] is None
            continue
        for k, v in nets_a[net].items():
            assert torch.equal(v, nets_b[net][k]), f"{net}.{k}"
    for opt in optim_a:
        for pid, s in optim_a[opt]["state"].items():
            for k, v in s.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(optim_b[opt]["state"][pid][k])), f"{opt}.{pid}.{k}"


def test_stop_and_resume_gives_the_same_weights(coco_fixture_root, tmp_path):
    """k steps, stop, resume for n-k steps == n uninterrupted steps (VAE, EMA, random crops)."""
    sets = ["train.save_every=2", "train.niter=1", "train.niter_decay=1"]  # 6 steps/epoch: crosses an epoch
    full = train(coco_cfg(coco_fixture_root, *sets, "train.max_steps=8"), tmp_path / "full", progress=False)
    part = train(coco_cfg(coco_fixture_root, *sets, "train.max_steps=3"), tmp_path / "split", progress=False)
    assert part.step == 3 and part.last_checkpoint.name == "step_000000003.pt"
    with open(tmp_path / "split" / "log.jsonl", "a") as log:  # a line cut off by a crash
        log.write('{"step": 4, "time": 17')
    killed_writes = [tmp_path / "split" / ".config.json.x1.tmp", tmp_path / "split" / "gallery" / ".index.html.x2.tmp",
                     next((tmp_path / "split" / "gallery").glob("step_*")) / ".0.png.x3.tmp"]
    for leftover in killed_writes:
        leftover.write_bytes(b"half")
    rest = train(coco_cfg(coco_fixture_root, *sets, "train.max_steps=8"), tmp_path / "split", progress=False)
    assert rest.step == 8
    _assert_same_state(_states(full.last_checkpoint), _states(rest.last_checkpoint))
    log = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "G_gan" in r] == list(range(1, 9))
    assert not any(p.exists() for p in killed_writes)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_train(run_dir, root, *extra):
    return [sys.executable, "-m", "ccfpse", "train", "--preset", "coco_stuff", "--dataroot", str(root),
            "--out", str(run_dir), "--no-progress", *sum((["--set", s] for s in TINY), []),
            "--set", "data.num_workers=1", *extra]


def test_kill_dash_nine_then_resume_matches_an_uninterrupted_run(coco_fixture_root, tmp_path):
    args = ["--max-steps", "6", "--save-every", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(_cli_train(tmp_path / "full", coco_fixture_root, *args), check=True, env=env,
                   capture_output=True, timeout=600)
    proc = subprocess.Popen(_cli_train(tmp_path / "killed", coco_fixture_root, *args), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpts.glob("step_000000003.pt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(_cli_train(tmp_path / "killed", coco_fixture_root, *args), env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    _assert_same_state(_states(tmp_path / "full" / "checkpoints" / "step_000000006.pt"),
                       _states(tmp_path / "killed" / "checkpoints" / "step_000000006.pt"))


def _ddp_worker(rank, world, port, root, run_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    cfg = coco_cfg(root, "model.use_vae=false", "train.batch_size=1", "train.max_steps=1", "train.use_ema=false", "train.lr=1e-6",
                   "data.no_flip=true", "data.preprocess_mode=fixed", "data.load_size=64")
    train(cfg, run_dir, device="cpu", progress=False)


def test_ddp_step_equals_single_process_step_on_the_concatenated_batch(coco_fixture_root, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(coco_fixture_root), str(tmp_path / "ddp")), nprocs=2)
    single = coco_cfg(coco_fixture_root, "model.use_vae=false", "train.batch_size=2", "train.max_steps=1", "train.lr=1e-6",
                      "train.use_ema=false", "data.no_flip=true", "data.preprocess_mode=fixed", "data.load_size=64")
    train(single, tmp_path / "single", progress=False)
    ddp_nets, ddp_optim, _ = _states(tmp_path / "ddp" / "checkpoints" / "step_000000001.pt")
    one_nets, one_optim, _ = _states(tmp_path / "single" / "checkpoints" / "step_000000001.pt")
    # After one step Adam's second moment is (1 - beta2) * grad**2: it gives |grad| of the
    # (synchronised) gradient; the weights below carry its sign. Gradients that are zero in exact
    # arithmetic (biases followed by BatchNorm) hold only rounding noise, so errors are measured
    # against each network's largest gradient.
    for opt in ("G", "D"):
        def magnitude(state):
            return (state["exp_avg_sq"] / 0.1).sqrt()
        scale = max(magnitude(s).max() for s in one_optim[opt]["state"].values())
        for pid, state in one_optim[opt]["state"].items():
            g_one, g_ddp = magnitude(state), magnitude(ddp_optim[opt]["state"][pid])
            torch.testing.assert_close(g_ddp / scale, g_one / scale, rtol=1e-3, atol=1e-5, msg=f"{opt} grad {pid}")
    # Adam's first update is about lr * sign(grad); a tiny lr keeps sign flips of those noise
    # gradients from showing in the weights and the BatchNorm statistics (over the global batch).
    for net in ("G", "D"):
        for k, v in one_nets[net].items():
            torch.testing.assert_close(ddp_nets[net][k], v, rtol=1e-4, atol=1e-5, msg=f"{net}.{k}")
    # only rank 0 wrote: one log line per step, one checkpoint
    assert len((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()) == 1
    assert len(list((tmp_path / "ddp" / "checkpoints").iterdir())) == 1


@pytest.mark.parametrize("use_vae", [True, False])
def test_checkpoint_activations_trains_as_without(coco_fixture_root, tmp_path, use_vae):
    """--checkpoint-activations, with or without the encoder: the losses of two steps are those
    of two steps without it, up to float32 rounding. (Weights are not compared: Adam turns the
    rounding of near-zero gradients into steps of +-lr.)"""
    logs = []
    for ckpt in (False, True):
        sets = [f"model.use_vae={str(use_vae).lower()}", f"train.checkpoint_activations={str(ckpt).lower()}",
                "train.max_steps=2", "train.use_ema=false"]
        assert train(coco_cfg(coco_fixture_root, *sets), tmp_path / f"ckpt_{ckpt}", progress=False).step == 2
        records = [json.loads(line) for line in (tmp_path / f"ckpt_{ckpt}" / "log.jsonl").read_text().splitlines()]
        logs.append([{k: v for k, v in r.items() if k[0].isupper()} for r in records if "G_gan" in r])
    plain, checkpointed = logs
    assert len(plain) == 2 and [r.keys() for r in checkpointed] == [r.keys() for r in plain]
    assert ("KLD" in plain[0]) == use_vae
    for a, b in zip(plain, checkpointed):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k


def test_the_ema_generator_follows_the_trained_one_at_the_given_decay(coco_fixture_root, tmp_path):
    """After every step: EMA parameters = decay * EMA + (1 - decay) * G, buffers (BatchNorm
    statistics, spectral-norm vectors) copied from G; the EMA starts as a copy of G."""
    cfg = coco_cfg(coco_fixture_root, "train.ema_decay=0.75", "train.save_every=1", "train.keep_last=10",
                   "train.max_steps=3")
    train(cfg, tmp_path / "run", progress=False)
    G, _, _ = build_networks(cfg.model, with_discriminator=False)
    param_names = {name for name, _ in G.named_parameters()}
    nets = [read_training_checkpoint(tmp_path / "run" / "checkpoints" / f"step_{i:09d}.pt")["nets"] for i in (1, 2, 3)]
    for before, after in zip(nets, nets[1:]):
        moved = 0
        for key, ema in after["G_ema"].items():
            if key in param_names:
                want = 0.75 * before["G_ema"][key] + 0.25 * after["G"][key]
                torch.testing.assert_close(ema, want, rtol=1e-6, atol=1e-9, msg=key)
                moved += not torch.equal(ema, before["G_ema"][key])
            else:
                assert torch.equal(ema, after["G"][key]), key
        assert moved > len(param_names) // 2  # a real update, not a frozen copy


def test_bf16_step_runs_on_cpu(coco_fixture_root, tmp_path):
    result = train(coco_cfg(coco_fixture_root, "train.precision=bf16", "train.max_steps=1"), tmp_path / "bf16",
                   progress=False)
    record = json.loads((tmp_path / "bf16" / "log.jsonl").read_text().splitlines()[-1])
    assert result.step == 1 and all(torch.isfinite(torch.tensor(v)) for k, v in record.items() if k[0].isupper())


def test_fp16_trains_with_grad_scalers_that_resume_exactly(coco_fixture_root, tmp_path):
    """fp16 on the CPU: the G scaler skips the first steps, whose gradients overflow, halving its
    scale until they fit (from step 8 on here); a run resumed at step 5 goes on from the saved
    scales (a fresh scaler would start again at 2**16 and skip G's steps 8-10)."""
    sets = ["train.precision=fp16", "train.save_every=1", "train.keep_last=20"]
    full = train(coco_cfg(coco_fixture_root, *sets, "train.max_steps=10"), tmp_path / "full", progress=False)
    train(coco_cfg(coco_fixture_root, *sets, "train.max_steps=5"), tmp_path / "split", progress=False)
    rest = train(coco_cfg(coco_fixture_root, *sets, "train.max_steps=10"), tmp_path / "split", progress=False)
    _assert_same_state(_states(full.last_checkpoint), _states(rest.last_checkpoint))
    at_5 = read_training_checkpoint(full.last_checkpoint.parent / "step_000000005.pt")
    at_10 = read_training_checkpoint(full.last_checkpoint)
    assert read_training_checkpoint(rest.last_checkpoint)["scaler"] == at_10["scaler"]
    assert at_10["scaler"]["G"]["scale"] < at_5["scaler"]["G"]["scale"] < 2.0**16
    assert any(not torch.equal(v, at_5["nets"]["G"][k]) for k, v in at_10["nets"]["G"].items())  # G did train
    record = json.loads((tmp_path / "split" / "log.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 10 and all(math.isfinite(v) for k, v in record.items() if k[0].isupper())


def test_a_run_can_switch_precision_when_it_resumes(coco_fixture_root, tmp_path):
    """fp32 -> fp16 -> fp32: a run that was not fp16 saved no scaler state, so fp16 starts a
    fresh scale; going back to fp32 leaves the saved scale unused."""
    run = tmp_path / "run"
    for precision, steps in (("fp32", 2), ("fp16", 4), ("fp32", 5)):
        result = train(coco_cfg(coco_fixture_root, f"train.precision={precision}", f"train.max_steps={steps}"),
                       run, progress=False)
        assert result.step == steps
    scalers = [read_training_checkpoint(run / "checkpoints" / f"step_{i:09d}.pt")["scaler"]["G"] for i in (2, 4, 5)]
    assert not scalers[0] and scalers[1]["scale"] < 2.0**16 and not scalers[2]


def test_a_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(
        coco_fixture_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = loop.g_hinge_loss

    def poisoned(preds):
        calls["n"] += 1
        loss = real_loss(preds)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(loop, "g_hinge_loss", poisoned)
    cfg = coco_cfg(coco_fixture_root, "train.save_every=2", "train.max_steps=6")
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 3 .*step_000000002\.pt"):
        train(cfg, tmp_path / "nan", progress=False)
    ckpts = sorted((tmp_path / "nan" / "checkpoints").glob("*"))
    assert [c.name for c in ckpts] == ["step_000000002.pt"]
    assert read_training_checkpoint(ckpts[0])["step"] == 2


def test_out_of_the_box_command_trains_on_builtin_data(tmp_path):
    env = dict(os.environ, CCFPSE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="2")
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "ccfpse", "train", "--max-steps", "3", "--out", str(run_dir), "--no-progress",
         "--set", "data.landscapes_num=24", "--set", "data.landscapes_size=64", "--set", "train.batch_size=2"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr
    assert "built-in 'landscapes'" in out.stdout
    assert (run_dir / "checkpoints" / "step_000000003.pt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    html = (run_dir / "gallery" / "index.html").read_text()
    assert "step_000000003/0.png" in html
    assert json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])["step"] == 3
    cfg, G, E = load_for_inference(run_dir)
    assert cfg.preset == "landscapes" and E is not None


def test_sigterm_writes_a_checkpoint_and_stops_cleanly(coco_fixture_root, tmp_path):
    run_dir = tmp_path / "term"
    proc = subprocess.Popen(_cli_train(run_dir, coco_fixture_root, "--max-steps", "200", "--save-every", "1000"),
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = run_dir / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "stopped by signal" in out
    ckpts = list((run_dir / "checkpoints").glob("step_*.pt"))
    assert len(ckpts) == 1
    step = read_training_checkpoint(ckpts[0])["step"]
    assert 2 <= step < 200
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_compile_flag_compiles_the_discriminator_and_encoder_in_place(coco_fixture_root, tmp_path, monkeypatch):
    # The eager backend checks the wiring (what is compiled, state dicts) without minutes of codegen.
    real_compile, compiled = torch.compile, []

    def fake_compile(fn, **kw):
        compiled.append((type(fn.__self__).__name__, kw.get("dynamic")))
        return real_compile(fn, backend="eager")

    monkeypatch.setattr(torch, "compile", fake_compile)
    result = train(coco_cfg(coco_fixture_root, "train.compile=true", "train.max_steps=1"), tmp_path / "c",
                   progress=False)
    assert sorted(compiled) == [("ConvEncoder", False), ("FPSEDiscriminator", False)]
    nets, _, _ = _states(result.last_checkpoint)
    for name in ("G", "D", "E"):
        assert not any("_orig_mod" in k for k in nets[name]), name


def test_compile_flag_without_a_cxx_compiler_is_one_clear_error(coco_fixture_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-cxx-compiler")
    with pytest.raises(ConfigError, match="--compile on the CPU needs the C\\+\\+ compiler that .CXX names .'no-such-cxx-compiler'"):
        train(coco_cfg(coco_fixture_root, "train.compile=true", "train.max_steps=1"), tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


def test_compile_flag_runs_with_torch_inductor(coco_fixture_root, tmp_path):
    # The real backend (C++ code generation, about two minutes here): it once failed where the
    # eager stand-in above passed.
    missing = loop.cpu_compile_requirements_missing()
    if missing:
        pytest.skip(f"torch.compile's inductor backend needs {missing}")
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        result = train(coco_cfg(coco_fixture_root, "train.compile=true", "train.max_steps=1"), tmp_path / "c",
                       progress=False)
        assert result.step == 1 and result.last_checkpoint.exists()
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    finally:
        torch._dynamo.reset()
    (record,) = [json.loads(line) for line in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    losses = {k: v for k, v in record.items() if k not in ("step", "time", "step_time") and not k.startswith("lr_")}
    assert losses and all(math.isfinite(v) for v in losses.values()), record


def test_a_checkpoint_that_cannot_be_written_is_one_clear_error_naming_the_last_good_one(
        coco_fixture_root, tmp_path, monkeypatch):
    import errno

    from ccfpse.errors import CheckpointError
    from ccfpse.train import checkpoint

    real_save, calls = torch.save, {"n": 0}

    def disk_fills_up(obj, f):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", disk_fills_up)
    with pytest.raises(CheckpointError, match=r"step_000000004\.pt: could not write the checkpoint of step 4 "
                       r"\(No space left on device\); the last good checkpoint is .*step_000000002\.pt"):
        train(coco_cfg(coco_fixture_root, "train.save_every=2", "train.max_steps=6"), tmp_path / "full", progress=False)
    folder = tmp_path / "full" / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["step_000000002.pt"]
    assert read_training_checkpoint(folder / "step_000000002.pt")["step"] == 2


def test_an_unreadable_saved_config_is_one_clear_error(coco_fixture_root, tmp_path, capsys):
    from ccfpse.cli import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"model": {"ngf": 4')
    code = main(_cli_train(run_dir, coco_fixture_root)[3:])
    err = capsys.readouterr().err
    assert code == 2 and "config.json: cannot read this run directory's saved config" in err
    assert "Traceback" not in err


def test_a_cpu_run_hands_back_the_libraries_pages_before_its_first_step(coco_fixture_root, tmp_path, monkeypatch):
    log = tmp_path / "run" / "log.jsonl"
    steps_logged_at_call = []
    monkeypatch.setattr(loop, "release_library_pages", lambda: steps_logged_at_call.append(
        log.read_text().count('"G_gan"') if log.exists() else 0) or 0)
    cfg = coco_cfg(coco_fixture_root, "train.max_steps=2", "train.log_every=1")
    assert train(cfg, tmp_path / "run", device="cpu", progress=False).step == 2
    assert steps_logged_at_call == [0] and log.read_text().count('"G_gan"') == 2
