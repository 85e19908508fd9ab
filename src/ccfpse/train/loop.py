"""The training loop of CC-FPSE: one generator step, then one discriminator step, per batch.

Read top to bottom: set-up (devices, data, networks, optimizers, resume), then the loop, then
the two steps. Everything that writes files goes through rank 0.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from ccfpse.config import Config, ConfigError
from ccfpse.devices import pick_device
from ccfpse.data.semantics import make_label_map
from ccfpse.errors import CCFPSEError, CheckpointError
from ccfpse.nn import build_networks, reparameterize
from ccfpse.train import checkpoint as ckpt
from ccfpse.train.distributed import (
    DistInfo, broadcast_flag, convert_sync_batchnorm, init_distributed, shutdown_distributed,
)
from ccfpse.train.losses import (
    VGGLoss, d_hinge_loss, feature_matching_loss, g_hinge_loss, kld_loss, load_vgg19_features,
)
from ccfpse.train.memory import keep_freed_memory, release_freed_memory, release_library_pages
from ccfpse.train.optim import Adam
from ccfpse.train.sampler import ResumableSampler, SeededSamples


class TrainingDiverged(CCFPSEError):
    """A loss became NaN or infinite; the last good checkpoint is left as it was."""


@dataclass
class TrainResult:
    step: int
    epoch: int
    run_dir: Path
    last_checkpoint: Path | None
    interrupted: bool = False
    is_main: bool = True  # rank 0 (the process that reports)


class GeneratorWithEncoder(nn.Module):
    """G and E as one module, so that one DDP wrapper synchronises both."""

    def __init__(self, G: nn.Module, E: nn.Module | None) -> None:
        super().__init__()
        self.G, self.E = G, E

    def forward(self, semantics: torch.Tensor, real: torch.Tensor):
        mu = logvar = z = None
        if self.E is not None:
            mu, logvar = self.E(real)
            z = reparameterize(mu, logvar)
        return self.G(semantics, z), mu, logvar

    def set_checkpointing(self, enabled: bool) -> None:
        """What ``--checkpoint-activations`` sets: G's blocks and pyramid, and E (if any),
        recomputed in backward."""
        self.G.set_checkpointing(enabled)
        if self.E is not None:
            self.E.set_checkpointing(enabled)


def learning_rates(cfg: Config, epoch: int) -> tuple[float, float]:
    """(G/E lr, D lr) for a 0-based epoch: constant for niter epochs, then linear decay to zero
    over niter_decay epochs (the release's per-epoch update), halved/doubled by TTUR."""
    t = cfg.train
    decayed = max(0, epoch - t.niter)
    lr = t.lr * max(0.0, 1 - decayed / t.niter_decay) if t.niter_decay > 0 else t.lr
    return (lr, lr) if t.no_ttur else (lr / 2, lr * 2)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def compile_networks(*nets: nn.Module | None) -> None:
    """``torch.compile`` the discriminator and the encoder in place (keys and wrappers stay as
    they are), with static shapes: they are plain conv stacks of one size per run. The
    generator stays eager: its strips, label look-ups and compiled CPU kernels split it into
    hundreds of graphs, one per block and strip size (measured with static shapes: 14 min of
    compilation for 2 steps at ngf 4 on 2 CPU cores), and inductor could not lower the strips'
    index arithmetic with symbolic sizes."""
    for net in nets:
        if net is not None:
            net.compile(dynamic=False)


def cpu_compile_requirements_missing() -> str | None:
    """What inductor's CPU code generation lacks here (its C++ compiler, Python's headers), if anything."""
    if os.environ.get("CXX"):  # inductor's choice of compiler
        if shutil.which(os.environ["CXX"]) is None:
            return f"the C++ compiler that $CXX names ({os.environ['CXX']!r}), which is not found"
    elif shutil.which(default := "clang++" if sys.platform == "darwin" else "g++") is None:
        return f"a C++ compiler ({default!r}, or another one named by $CXX)"
    include = sysconfig.get_path("include")
    if not (Path(include) / "Python.h").exists():
        return f"Python's C headers (Python.h in {include}; e.g. the python3-dev package)"
    return None


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (``compile_networks`` compiles in place, so there
    is no torch.compile wrapper to look through)."""
    return module.module if isinstance(module, DDP) else module


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checkpoints and returns at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: stop right away
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(cfg: Config, run_dir: str | Path, device: str | None = None, progress: bool = True,
          resume_from: str | Path | None = None) -> TrainResult:
    """Train (or resume) the run in ``run_dir``; see ``ccfpse train --help``."""
    try:
        return _train(cfg, run_dir, device, progress, resume_from)
    finally:
        release_freed_memory()  # the networks and optimisers are gone now; CPU runs kept freed memory


def _train(cfg: Config, run_dir: str | Path, device: str | None, progress: bool,
           resume_from: str | Path | None) -> TrainResult:
    from ccfpse.data import build_dataset, validate_dataset
    from ccfpse.train.report import Reporter

    t, m = cfg.train, cfg.model
    if min(m.image_size) < 64:
        raise ConfigError(
            f"images of {m.image_size[1]} x {m.image_size[0]} px are too small to train: the "
            "discriminator's deepest features are 1/32 of the image and need at least 2 x 2 "
            "pixels; use model.crop_size >= 64 (and a smaller model.aspect_ratio)"
        )
    run_dir = Path(run_dir)
    device_ = pick_device(device)
    if t.compile and device_.type == "cpu":
        missing = cpu_compile_requirements_missing()
        if missing:
            raise ConfigError(f"--compile on the CPU needs {missing}: torch.compile's inductor backend "
                              "builds its C++ kernels with it; install it, or train without --compile")
    dist_info = init_distributed(device_.type)
    if dist_info.enabled and device_.type == "cuda":
        device_ = torch.device("cuda", dist_info.local_rank)
    if device_.type == "cpu":
        keep_freed_memory()
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if device_.type == "cuda":
            torch.backends.cudnn.benchmark = False

    # ---- data, checked before any step so that a bad label fails now, not hours in
    dataset = build_dataset(cfg, "train", train=True)
    validate_dataset(dataset).raise_for_problems()
    sampler = ResumableSampler(len(dataset), t.batch_size, t.seed, dist_info.rank, dist_info.world_size)
    if sampler.batches_per_epoch == 0:
        raise CCFPSEError(
            f"the training set has {len(dataset)} samples, fewer than one batch of "
            f"{t.batch_size} x {dist_info.world_size} process(es); lower --batch-size"
        )
    loader = DataLoader(
        SeededSamples(dataset), batch_size=t.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
        drop_last=True, pin_memory=device_.type == "cuda", persistent_workers=False,
        # Its own generator: creating an iterator must not draw from the global RNG, or a run
        # resumed mid-epoch would sample different z than an uninterrupted one.
        generator=torch.Generator().manual_seed(t.seed),
    )

    # ---- networks (same init on every rank; DDP also broadcasts rank 0's weights)
    torch.manual_seed(t.seed)
    G, D, E = build_networks(m)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if t.use_ema else None
    generator = GeneratorWithEncoder(G, E)
    if t.checkpoint_activations:
        generator.set_checkpointing(True)
        if G_ema is not None:  # its samples, too, in strips
            G_ema.set_checkpointing(True)
    generator = generator.to(device_)
    if dist_info.enabled:
        generator = convert_sync_batchnorm(generator, device_.type)  # as the release
    D = D.to(device_)
    if G_ema is not None:
        G_ema.to(device_)
    vgg = None
    if not t.no_vgg_loss:
        vgg = VGGLoss(load_vgg19_features(t.vgg_weights)).to(device_)

    lr_g, lr_d = learning_rates(cfg, 0)
    fp16 = t.precision == "fp16"
    # Update each parameter during backward and free its gradient at once (saves memory), except
    # where all gradients must exist before the step: DDP's all-reduce and fp16's grad scaler.
    in_backward = not dist_info.enabled and not fp16
    opt_G = Adam(generator.parameters(), lr=lr_g, betas=(t.beta1, t.beta2), step_in_backward=in_backward)
    opt_D = Adam(D.parameters(), lr=lr_d, betas=(t.beta1, t.beta2), step_in_backward=in_backward)
    scaler_G = torch.amp.GradScaler(device_.type, enabled=fp16)
    scaler_D = torch.amp.GradScaler(device_.type, enabled=fp16)

    # ---- resume (every rank reads the same file)
    step = 0
    resume_path = Path(resume_from) if resume_from else ckpt.latest_checkpoint(run_dir)
    if resume_path is not None:
        state = ckpt.read_training_checkpoint(resume_path)
        if state["config"]["model"] != cfg.to_dict()["model"]:
            raise CheckpointError(f"{resume_path}: the checkpoint's model config differs from this run's")
        generator.G.load_state_dict(state["nets"]["G"])
        D.load_state_dict(state["nets"]["D"])
        if E is not None:
            E.load_state_dict(state["nets"]["E"])
        if G_ema is not None:
            G_ema.load_state_dict(state["nets"]["G_ema"] or state["nets"]["G"])
        opt_G.load_state_dict(state["optim"]["G"])
        opt_D.load_state_dict(state["optim"]["D"])
        for scaler, saved in ((scaler_G, state["scaler"]["G"]), (scaler_D, state["scaler"]["D"])):
            if saved:  # empty when the run so far was not fp16: a switch to fp16 starts a fresh scale
                scaler.load_state_dict(saved)
        step = state["step"]
        rngs = state["rng"]
        if len(rngs) == dist_info.world_size:
            ckpt.set_rng_state(rngs[dist_info.rank])
        else:
            ckpt.seed_rngs(t.seed + 7919 * dist_info.rank + step)
    else:
        ckpt.seed_rngs(t.seed + 7919 * dist_info.rank)  # ranks draw different z

    if t.compile:
        compile_networks(D, E)
    if dist_info.enabled:
        ids = [device_.index] if device_.type == "cuda" else None
        generator = DDP(generator, device_ids=ids)
        D = DDP(D, device_ids=ids)

    # Evaluation during training: metric networks load now, so missing weights fail at once.
    evaluator = eval_set = None
    if t.eval_every and dist_info.is_main:
        from ccfpse.evaluate import Evaluator

        evaluator = Evaluator.build(device_, t.inception_weights, True, t.segmenter, t.segmenter_weights)
        try:
            eval_set = build_dataset(cfg, "val", train=False)
        except CCFPSEError:
            eval_set = build_dataset(cfg, "train", train=False)
    best_fid = ckpt.best_checkpoint_fid(run_dir) if evaluator is not None else float("inf")

    batches_per_epoch = sampler.batches_per_epoch
    total_steps = (t.niter + t.niter_decay) * batches_per_epoch
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps) if t.niter + t.niter_decay > 0 else t.max_steps
    reporter = Reporter(cfg, run_dir, dist_info, total_steps, step, progress, device_)
    reporter.start(dataset_size=len(dataset), device=device_, resumed_from=resume_path)
    autocast = torch.autocast(device_.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision, torch.float32),
                              enabled=t.precision in ("bf16", "fp16"))

    def to_batch(batch: dict):
        # Class indices (and instance edges), not the one-hot map: the networks look it up.
        label = batch["label"].to(device_, non_blocking=True)
        instance = batch["instance"].to(device_, non_blocking=True) if m.use_instance else None
        return make_label_map(label, m.num_label_channels, instance), batch["image"].to(device_, non_blocking=True)

    def checkpoint_state() -> dict:
        rngs = ckpt.rng_state()
        if dist_info.enabled:
            gathered: list = [None] * dist_info.world_size
            torch.distributed.all_gather_object(gathered, rngs)
            rngs = gathered
        else:
            rngs = [rngs]
        return {
            "config": cfg.to_dict(),
            "epoch": step // batches_per_epoch,
            "nets": {"G": unwrap(generator).G.state_dict(), "D": unwrap(D).state_dict(),
                     "E": E.state_dict() if E is not None else None,
                     "G_ema": G_ema.state_dict() if G_ema is not None else None},
            "optim": {"G": opt_G.state_dict(), "D": opt_D.state_dict()},
            "scaler": {"G": scaler_G.state_dict(), "D": scaler_D.state_dict()},
            "rng": rngs,
        }

    def save() -> Path | None:
        state = checkpoint_state()  # collective: every rank takes part
        if not dist_info.is_main:
            return None
        try:
            path = ckpt.save_checkpoint(run_dir, step, state)
        except OSError as e:  # a full disk, a lost mount: nothing was renamed into place
            raise CheckpointError(
                f"{ckpt.checkpoint_path(run_dir, step)}: could not write the checkpoint of step {step} "
                f"({e.strerror or e}); the last good checkpoint is {last_saved or 'none yet'}, and the "
                "same command resumes from it once there is room"
            ) from None
        ckpt.prune_checkpoints(run_dir, t.keep_last)
        return path

    if device_.type == "cpu":  # last thing before the loop: set-up may have touched them again
        release_library_pages()

    # ---- the loop
    last_saved: Path | None = resume_path
    interrupted = False
    with StopFlag() as stop, reporter:
        while step < total_steps and not interrupted:
            epoch, position = divmod(step, batches_per_epoch)
            sampler.set_position(epoch, position)
            lr_g, lr_d = learning_rates(cfg, epoch)
            for group in opt_G.param_groups:
                group["lr"] = lr_g
            for group in opt_D.param_groups:
                group["lr"] = lr_d
            for batch in loader:
                tic = time.perf_counter()
                semantics, real = to_batch(batch)

                # -- generator step: adversarial + feature matching (+ VGG) (+ KL)
                D_plain = unwrap(D).requires_grad_(False)  # no D gradients, no DDP sync for D here
                with autocast:
                    fake, mu, logvar = generator(semantics, real)
                    # D sees fake and real as the release's one call on their concatenation would
                    # (per-sample InstanceNorm, one spectral-norm power iteration for both), but
                    # the real half, only a feature-matching target, keeps no graph.
                    with parametrize.cached():
                        feats_fake, preds_fake = D_plain(fake, semantics)
                        with torch.no_grad():
                            feats_real, _ = D_plain(real, semantics)
                    losses = {"G_gan": g_hinge_loss(preds_fake)}
                    if not t.no_ganfeat_loss:
                        losses["G_feat"] = t.lambda_feat * feature_matching_loss(feats_fake, feats_real)
                    if vgg is not None:
                        losses["G_vgg"] = t.lambda_vgg * vgg(fake.float(), real)
                    if mu is not None:
                        losses["KLD"] = t.lambda_kld * kld_loss(mu.float(), logvar.float())
                g_loss = sum(losses.values())
                check_finite(g_loss, losses, step, last_saved, dist_info)
                opt_G.zero_grad(set_to_none=True)
                scaler_G.scale(g_loss).backward()
                scaler_G.step(opt_G)
                scaler_G.update()
                unwrap(D).requires_grad_(True)

                # -- discriminator step on a freshly generated fake
                with autocast:
                    with torch.no_grad():
                        fake, _, _ = generator(semantics, real)
                    _, preds = D(torch.cat([fake.detach(), real]), semantics.repeat(2))
                    d_loss = d_hinge_loss([p[len(fake):] for p in preds], [p[: len(fake)] for p in preds])
                losses["D_hinge"] = d_loss
                check_finite(d_loss, losses, step, last_saved, dist_info)
                opt_D.zero_grad(set_to_none=True)
                scaler_D.scale(d_loss).backward()
                scaler_D.step(opt_D)
                scaler_D.update()

                if G_ema is not None:
                    update_ema(G_ema, unwrap(generator).G, t.ema_decay)
                step += 1

                reporter.step(step, {k: float(v.detach()) for k, v in losses.items()}, lr_g, lr_d,
                              time.perf_counter() - tic)
                if (step % batches_per_epoch == 0 or step == total_steps
                        or (t.sample_every and step % t.sample_every == 0)):
                    reporter.samples(step, G_ema if G_ema is not None else unwrap(generator).G, E)
                if (t.save_every and step % t.save_every == 0) or step == total_steps:
                    last_saved = save() or last_saved
                if t.eval_every and step % t.eval_every == 0:
                    improved = False
                    if evaluator is not None:
                        metrics = evaluate_during_training(
                            cfg, evaluator, eval_set, G_ema if G_ema is not None else unwrap(generator).G, E, device_)
                        for key, value in metrics.items():
                            reporter.scalar(f"eval/{key}", value, step)
                        improved = metrics["fid"] < best_fid
                        best_fid = min(best_fid, metrics["fid"])
                        reporter.message(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
                    if broadcast_flag(improved, dist_info, device_):
                        state = checkpoint_state()
                        if dist_info.is_main:
                            ckpt.atomic_save({"format": ckpt.TRAIN_FORMAT, "step": step, "metrics": metrics, **state},
                                             run_dir / "checkpoints" / "best.pt")
                interrupted = broadcast_flag(stop.requested, dist_info, device_)
                if interrupted:
                    if not (t.save_every and step % t.save_every == 0) and step != total_steps:
                        last_saved = save() or last_saved
                    reporter.message(f"stopped by signal at step {step}; checkpoint {last_saved}; "
                                     "run the same command again to resume")
                    break
                if step >= total_steps:
                    break
    if dist_info.enabled:
        shutdown_distributed()
    return TrainResult(step, step // batches_per_epoch, run_dir, last_saved, interrupted, dist_info.is_main)


@torch.no_grad()
def evaluate_during_training(cfg: Config, evaluator, dataset, G: nn.Module, E: nn.Module | None,
                             device: torch.device) -> dict[str, float]:
    """FID (and mIoU) on a fixed validation subset with fixed z; the networks' modes are restored."""
    from ccfpse.synthesize import Synthesizer

    modes = [(m, m.training) for m in (G, E) if m is not None]
    try:
        synth = Synthesizer(cfg, G, E, device)
        result = evaluator.evaluate(synth, dataset, batch_size=cfg.train.batch_size,
                                    num_images=cfg.train.eval_num_images, seed=cfg.train.seed)
    finally:
        for module, training in modes:
            module.train(training)
    return {k: float(v) for k, v in result.items() if k in ("fid", "miou", "accuracy")}


def check_finite(loss: torch.Tensor, losses: dict, step: int, last_saved: Path | None, dist_info: DistInfo) -> None:
    """Stop every rank together when any rank's loss is NaN or infinite."""
    finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if dist_info.enabled:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    if bool(finite.item()):
        return
    terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
    where = f"the last good checkpoint is {last_saved}" if last_saved else "no checkpoint was written yet"
    raise TrainingDiverged(
        f"non-finite loss at step {step + 1} ({terms}); training stopped and {where}. "
        "Try a lower --lr, --precision fp32, or check the data for broken images."
    )
