"""Training-step benchmark: our networks against the official release's networks.

Protocol (issue 4, item 7), identical for both implementations:
- G step: E(real) -> reparameterize z -> G(semantics, z) -> D(concat(fake, real), semantics twice)
  -> hinge G loss + 10 * feature matching + 0.05 * KL -> backward -> Adam on G and E
  (lr 1e-4, betas (0, 0.9)); D's parameters are frozen during this step, as in our training loop
  (``--d-grads-in-g-step`` computes and discards them, as the release's trainer does);
- D step: fake regenerated under no_grad (E and G again) -> D(concat(fake, real)) -> hinge D loss
  -> backward -> Adam on D (lr 4e-4, betas (0, 0.9));
- no VGG loss; fp32; training mode (BatchNorm batch statistics, spectral-norm power iteration as
  each implementation does it); ``torch.set_num_threads(2)``; one warm-up step, then the median
  of ``--steps`` timed steps; peak RSS of the whole process (VmHWM, i.e. ``ru_maxrss`` of this
  process image), so run one implementation/config per process.

"official" is the independent re-implementation of the release in ``tests/reference/official.py``
(unfold DepthConv, four separate predictor convs, old-style spectral norm). Both start from the
same weights (ours initialised as the release does, exported under the official names). The
official encoder is built as for a 256 crop, since the release's encoder has no layer6 below 256
and then cannot run (ours always has six layers).

    python bench/bench_train.py --impl ours --label-nc 150 --size 128 --ngf 32 --batch 2
    python bench/bench_train.py --impl official --label-nc 150 --dontcare --size 256 --ngf 64 --batch 1 --steps 2
    python bench/bench_train.py --all                    # every config, fresh process each; markdown table
    python bench/bench_train.py --impl ours ... --profile  # op table of one step (torch profiler)
    python bench/bench_train.py --impl ours ... --saved    # bytes autograd saves, per module
    python bench/bench_train.py --check                  # same mathematics: one step, both impls
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.reference.official

from ccfpse import compat  # noqa: E402
from ccfpse.config import ModelConfig  # noqa: E402
from ccfpse.data.semantics import make_label_map  # noqa: E402
from ccfpse.nn import build_networks, reparameterize  # noqa: E402
from ccfpse.train.losses import d_hinge_loss, feature_matching_loss, g_hinge_loss, kld_loss  # noqa: E402
from ccfpse.train.loop import GeneratorWithEncoder  # noqa: E402
from ccfpse.train.memory import keep_freed_memory, release_library_pages  # noqa: E402
from ccfpse.train.optim import Adam  # noqa: E402

LAMBDA_FEAT, LAMBDA_KLD = 10.0, 0.05
LR_G, LR_D, BETAS = 1e-4, 4e-4, (0.0, 0.9)

# The configurations and the official figures it quotes (s/step, GB).
CONFIGS = {
    "a": dict(label_nc=150, dontcare=False, size=128, ngf=32, batch=2, ref=(8.5, 3.0)),
    "b": dict(label_nc=150, dontcare=True, size=256, ngf=64, batch=1, ref=(51.0, 6.7)),
}
VARIANTS = {  # name in the table -> extra command-line flags
    "official": ["--impl", "official"],
    "ours": ["--impl", "ours"],
    "ours + checkpointing": ["--impl", "ours", "--checkpointing"],
    # without releasing the libraries' pages (what that release is worth)
    "ours + checkpointing, library pages kept": ["--impl", "ours", "--checkpointing", "--keep-library-pages"],
}
DEFAULT_VARIANTS = ["official", "ours", "ours + checkpointing"]


# ---- inputs -------------------------------------------------------------------------------------


def blocky_labels(n: int, size: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """(n, size, size) class indices shaped like a segmentation: a coarse grid of random classes
    overpainted with random rectangles."""
    cells = max(2, size // 16)
    coarse = torch.randint(num_classes, (n, 1, cells, cells), generator=gen).float()
    labels = F.interpolate(coarse, size=(size, size), mode="nearest").long()[:, 0]
    for b in range(n):
        for _ in range(12):
            h, w = (int(v) for v in torch.randint(size // 8, size // 2, (2,), generator=gen))
            y, x = (int(v) for v in torch.randint(0, size - min(h, w), (2,), generator=gen))
            labels[b, y : y + h, x : x + w] = int(torch.randint(num_classes, (), generator=gen))
    return labels


class Batch:
    """A batch as each implementation's data pipeline hands it over: the release's one-hot map,
    and the class indices ``ccfpse train`` turns into a ``LabelMap`` inside its timed step."""

    def __init__(self, labels: torch.Tensor, semantic_nc: int, real: torch.Tensor) -> None:
        self.labels, self.semantic_nc, self.real = labels, semantic_nc, real

    @functools.cached_property
    def semantics(self) -> torch.Tensor:
        """The one-hot map (made on first use: only the release's step reads it)."""
        return F.one_hot(self.labels, self.semantic_nc).permute(0, 3, 1, 2).float().contiguous()


def make_batch(n: int, size: int, semantic_nc: int, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    labels = blocky_labels(n, size, semantic_nc, gen)
    return Batch(labels, semantic_nc, torch.rand((n, 3, size, size), generator=gen) * 2 - 1)


# ---- networks -----------------------------------------------------------------------------------


def model_config(args) -> ModelConfig:
    return ModelConfig(
        label_nc=args.label_nc, contain_dontcare_label=args.dontcare, use_instance=False,
        ngf=args.ngf, ndf=args.ndf or args.ngf, crop_size=args.size, use_vae=True,
    )


def build(impl: str, cfg: ModelConfig, seed: int = 0):
    """(G, D, E) of ``impl`` with identical weights for every impl (ours initialised as the
    release does, then exported under the official names for the official networks)."""
    torch.manual_seed(seed)
    G, D, E = build_networks(cfg)
    for net in (G, D, E):
        converge_spectral_vectors(net)
    if impl == "ours":
        return G, D, E
    from tests.reference import official as ref

    opt = ref.make_opt(cfg.label_nc, cfg.contain_dontcare_label, not cfg.use_instance, ngf=cfg.ngf,
                       ndf=cfg.ndf, crop_size=cfg.crop_size)
    opt_e = ref.make_opt(cfg.label_nc, cfg.contain_dontcare_label, not cfg.use_instance, ngf=cfg.ngf,
                         ndf=cfg.ndf, crop_size=max(256, cfg.crop_size))
    nets = []
    for ours, theirs, key_map in (
        (G, ref.OfficialGenerator(opt), compat.generator_key_map),
        (D, ref.OfficialDiscriminator(opt), compat.discriminator_key_map),
        (E, ref.OfficialEncoder(opt_e), compat.encoder_key_map),
    ):
        missing, unexpected = theirs.load_state_dict(compat.to_official_state_dict(ours, key_map(ours)), strict=False)
        # Only the release's never-used BatchNorms may be left at their defaults.
        assert not unexpected and all(compat.UNUSED_OFFICIAL_KEYS.search(k) for k in missing), (missing, unexpected)
        nets.append(theirs)
    return tuple(nets)


# ---- the two steps ------------------------------------------------------------------------------


@torch.no_grad()
def converge_spectral_vectors(net: nn.Module) -> None:
    """Set every spectral norm's u, v to the top singular pair of its weight. The release's
    power iteration updates v then u, torch's parametrization u then v; from converged vectors
    both give the same sigma, so ``--check`` compares the rest of the mathematics."""
    for mod in net.modules():
        sn = getattr(getattr(mod, "parametrizations", None), "weight", None)
        if sn is None:
            continue
        w = sn.original.flatten(1).double()
        U, S, Vh = torch.linalg.svd(w, full_matrices=False)
        sn[0]._u.copy_(U[:, 0])
        sn[0]._v.copy_(Vh[0])


class Trainer:
    """One G step and one D step of the protocol. ``official``: as the release's trainer
    (torch.optim.Adam; D on concat(fake, real) in both steps). Otherwise as ``ccfpse train`` runs
    single-process fp32: ``ccfpse.train.optim.Adam`` updating each parameter during backward
    (no first moment since beta1 = 0), and in the G step D's real half without a graph."""

    def __init__(self, G, D, E, official: bool, d_grads_in_g_step: bool = False) -> None:
        self.G, self.D, self.E, self.official = G, D, E, official
        for net in (G, D, E):
            net.train()
        if official:
            make = torch.optim.Adam
        else:
            if d_grads_in_g_step:
                raise ValueError("--d-grads-in-g-step is for the official trainer only")
            make = functools.partial(Adam, step_in_backward=True)
        self.opt_G = make(list(G.parameters()) + list(E.parameters()), lr=LR_G, betas=BETAS)
        self.opt_D = make(D.parameters(), lr=LR_D, betas=BETAS)
        self.d_grads_in_g_step = d_grads_in_g_step

    def generate(self, semantics, real):
        mu, logvar = self.E(real)
        return self.G(semantics, reparameterize(mu, logvar)), mu, logvar

    def g_step(self, batch: Batch) -> dict:
        real = batch.real
        if self.official:
            semantics = batch.semantics
        else:  # as ccfpse train's to_batch: class indices to a LabelMap, once for both steps
            semantics = self.labels = make_label_map(batch.labels, batch.semantic_nc)
        if not self.d_grads_in_g_step:
            self.D.requires_grad_(False)
        fake, mu, logvar = self.generate(semantics, real)
        n = len(fake)
        if self.official:
            feats, preds = self.D(torch.cat([fake, real]), torch.cat([semantics, semantics]))
            feats_fake, feats_real = [f[:n] for f in feats], [f[n:] for f in feats]
            preds_fake = [p[:n] for p in preds]
        else:
            with parametrize.cached():
                feats_fake, preds_fake = self.D(fake, semantics)
                with torch.no_grad():
                    feats_real, _ = self.D(real, semantics)
        losses = {
            "G_gan": g_hinge_loss(preds_fake),
            "G_feat": LAMBDA_FEAT * feature_matching_loss(feats_fake, feats_real),
            "KLD": LAMBDA_KLD * kld_loss(mu, logvar),
        }
        self.opt_G.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        self.opt_G.step()
        self.D.requires_grad_(True)
        return {k: v.item() for k, v in losses.items()}

    def d_step(self, batch: Batch) -> dict:
        real = batch.real
        semantics = batch.semantics if self.official else self.labels
        with torch.no_grad():
            fake, _, _ = self.generate(semantics, real)
        n = len(fake)
        both = torch.cat([semantics, semantics]) if self.official else semantics.repeat(2)
        _, preds = self.D(torch.cat([fake.detach(), real]), both)
        loss = d_hinge_loss([p[n:] for p in preds], [p[:n] for p in preds])
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_D.step()
        return {"D_hinge": loss.item()}


# ---- measurements -------------------------------------------------------------------------------


def peak_rss_gib() -> float:
    """Peak RSS of this process image (VmHWM; what ru_maxrss reports for a fresh process)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def current_rss_gib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 2**20


def param_bytes(*nets) -> int:
    return sum(p.numel() * p.element_size() for net in nets for p in net.parameters())


def set_up(args) -> tuple[Trainer, Batch]:
    """The trainer and batch of a timed or profiled run, set up as ``ccfpse train`` would."""
    cfg = model_config(args)
    G, D, E = build(args.impl, cfg)
    if args.checkpointing:  # what --checkpoint-activations does
        GeneratorWithEncoder(G, E).set_checkpointing(True)
    if args.impl == "ours":  # as ccfpse train does on the CPU
        keep_freed_memory()
    trainer = Trainer(G, D, E, args.impl == "official", args.d_grads_in_g_step)
    batch = make_batch(args.batch, args.size, cfg.semantic_nc)
    if args.impl == "ours" and not args.keep_library_pages:  # as ccfpse train does before its loop
        release_library_pages()
    return trainer, batch


def run(args) -> dict:
    trainer, batch = set_up(args)
    G, D, E = trainer.G, trainer.D, trainer.E
    cfg = model_config(args)
    rss_setup = current_rss_gib()
    times, g_times, cpu_times = [], [], []
    for i in range(1 + args.steps):
        c0 = time.process_time()
        t0 = time.perf_counter()
        losses = trainer.g_step(batch)
        t1 = time.perf_counter()
        losses.update(trainer.d_step(batch))
        t2 = time.perf_counter()
        if i >= 1:
            cpu_times.append(time.process_time() - c0)
            times.append(t2 - t0)
            g_times.append(t1 - t0)
        if args.verbose:
            print(f"step {i}: {t2 - t0:.2f} s (G {t1 - t0:.2f} s)  {losses}", file=sys.stderr, flush=True)
    return {
        "impl": args.impl + (" + checkpointing" if args.checkpointing else "")
        + (" + D grads in G step" if args.d_grads_in_g_step else ""),
        "config": dict(label_nc=args.label_nc, dontcare=args.dontcare, semantic_nc=cfg.semantic_nc,
                       size=args.size, ngf=cfg.ngf, ndf=cfg.ndf, batch=args.batch),
        "median_step_s": statistics.median(times),
        "median_g_step_s": statistics.median(g_times),
        "step_times_s": times,
        # CPU seconds of this process per step (all threads): less sensitive to other load than
        # wall time, but includes OpenMP spin-waiting.
        "median_cpu_s": statistics.median(cpu_times),
        "peak_rss_gib": peak_rss_gib(),
        "ru_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_after_setup_gib": rss_setup,
        "params_gib": param_bytes(G, D, E) / 2**30,
        "loadavg": os.getloadavg(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def profile(args) -> None:
    """Op table (self CPU time and allocated memory) of one step after a warm-up."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    trainer, batch = set_up(args)
    trainer.g_step(batch)
    trainer.d_step(batch)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True, profile_memory=True) as prof:
        trainer.g_step(batch)
        trainer.d_step(batch)
    ka = prof.key_averages()
    print(ka.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=30, max_shapes_column_width=70))


def saved_report(args) -> None:
    """Bytes autograd keeps for backward after the G step's forward, attributed to the innermost
    module running when each tensor was saved (unique storages, first saver wins)."""
    cfg = model_config(args)
    G, D, E = build(args.impl, cfg)
    if args.checkpointing:
        GeneratorWithEncoder(G, E).set_checkpointing(True)  # as --checkpoint-activations
    for net in (G, D, E):
        net.train()
    D.requires_grad_(args.d_grads_in_g_step)
    batch = make_batch(args.batch, args.size, cfg.semantic_nc)
    stack = ["(top)"]
    hooks = []
    for prefix, net in (("G", G), ("D", D), ("E", E)):
        for name, mod in net.named_modules():
            full = f"{prefix}.{name}" if name else prefix
            hooks.append(mod.register_forward_pre_hook(lambda m, a, full=full: stack.append(full)))
            hooks.append(mod.register_forward_hook(lambda m, a, o: stack.pop() and None))
    storages: dict[int, tuple[str, int, tuple]] = {}
    # Parameters saved for backward cost nothing extra; leave them out.
    params = {p.untyped_storage().data_ptr() for net in (G, D, E) for p in net.parameters()}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages.setdefault(s.data_ptr(), (stack[-1], s.nbytes(), tuple(t.shape)))
        return t

    real, semantics = batch.real, batch.semantics
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mu, logvar = E(real)
        fake = G(semantics, reparameterize(mu, logvar))
        feats, preds = D(torch.cat([fake, real]), torch.cat([semantics, semantics]))
    per_module = defaultdict(int)
    for owner, nbytes, _ in storages.values():
        per_module[owner] += nbytes
    total = sum(per_module.values())
    print(f"saved for backward (parameters excluded): {total / 2**30:.3f} GiB in {len(storages)} storages; "
          f"params {param_bytes(G, D, E) / 2**30:.3f} GiB; RSS now {current_rss_gib():.2f} GiB")
    for owner, nbytes in sorted(per_module.items(), key=lambda kv: -kv[1])[: args.rows]:
        print(f"  {nbytes / 2**20:9.1f} MiB  {owner}")
    print("largest storages:")
    for owner, nbytes, shape in sorted(storages.values(), key=lambda v: -v[1])[: args.rows]:
        print(f"  {nbytes / 2**20:9.1f} MiB  {owner}  {shape}")


def g_step_gradients(impl: str, cfg: ModelConfig, batch: Batch, checkpointing: bool) -> dict[str, torch.Tensor]:
    """The gradients of the G step's hinge and KL terms for every G and E parameter, under the
    official names. (Feature matching is left out here: its L1 has a gradient discontinuous
    where fake and real features agree, and at initialisation many nearly do, so rounding
    flips the sign of some terms in either implementation.)"""
    G, D, E = build(impl, cfg)
    if checkpointing:
        GeneratorWithEncoder(G, E).set_checkpointing(True)  # as --checkpoint-activations
    for net in (G, D, E):
        net.train()
    D.requires_grad_(False)
    torch.manual_seed(123)
    mu, logvar = E(batch.real)
    if impl == "official":
        fake = G(batch.semantics, reparameterize(mu, logvar))
        feats, preds = D(torch.cat([fake, batch.real]), torch.cat([batch.semantics, batch.semantics]))
        n = len(fake)
        feats_fake, feats_real, preds_fake = [f[:n] for f in feats], [f[n:] for f in feats], [p[:n] for p in preds]
    else:
        labels = make_label_map(batch.labels, batch.semantic_nc)
        fake = G(labels, reparameterize(mu, logvar))
        with parametrize.cached():
            feats_fake, preds_fake = D(fake, labels)
            with torch.no_grad():
                feats_real, _ = D(batch.real, labels)
    loss = g_hinge_loss(preds_fake) + LAMBDA_KLD * kld_loss(mu, logvar)
    loss.backward()
    grads = {}
    for prefix, net, key_map in (("G.", G, compat.generator_key_map), ("E.", E, compat.encoder_key_map)):
        named = {k: p.grad for k, p in net.named_parameters()}
        if impl == "official":
            grads.update({prefix + k: g for k, g in named.items()})
            continue
        for native, names in key_map(net).items():
            if native not in named:
                continue  # buffers
            names = [names] if isinstance(names, str) else names
            for name, part in zip(names, named[native].chunk(len(names), dim=0)):
                grads[prefix + name] = part
    return grads


def check(args) -> None:
    """Same mathematics: the G step's gradients (hinge and KL terms) of the official networks
    and of ours from the same weights, inputs and z (relative error per tensor,
    ||ours - official|| / ||official||),
    then one G step and one D step of each (losses; largest parameter difference after them,
    which Adam's first step turns into +-lr wherever a gradient is near zero)."""
    cfg = model_config(args)
    batch = make_batch(args.batch, args.size, cfg.semantic_nc)
    ref = {k: g for k, g in g_step_gradients("official", cfg, batch, False).items() if g is not None}
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    noise = g_step_gradients("official", cfg, batch, False)  # the release against itself
    torch.set_num_threads(threads)
    got = g_step_gradients("ours", cfg, batch, args.checkpointing)
    missing = sorted(set(ref) - set(got))
    # Some gradients are zero in exact arithmetic (e.g. SPADE's beta bias before a block whose
    # batch norms remove any per-channel shift), so both sides hold rounding noise there: the
    # error is taken relative to at least 1e-6 of the largest gradient norm.
    top = max(g.double().norm().item() for g in ref.values())

    def errors(other: dict) -> dict[str, float]:
        return {k: ((other[k].double() - ref[k].double()).norm() / max(ref[k].double().norm().item(), 1e-6 * top)).item()
                for k in ref if k in got}

    ours_err, noise_err = errors(got), errors(noise)
    for label, err in ((f"official, {torch.get_num_threads()} vs {1 if threads > 1 else 2} threads (rounding alone)", noise_err),
                       ("ours vs official", ours_err)):
        worst = max(err, key=err.get)
        print(f"G-step gradients, {label}: relative error max {err[worst]:.2e} ({worst}), "
              f"median {statistics.median(err.values()):.2e}")
    if missing:
        print(f"  not compared: {len(missing)} tensors the release never uses (norm_0, conv_*.norm_layer)")
    if args.verbose:
        for k in sorted(ours_err, key=ours_err.get, reverse=True)[: args.rows]:
            print(f"  {ours_err[k]:.2e} (release against itself {noise_err[k]:.2e})  {k}  "
                  f"(gradient norm {ref[k].double().norm().item() / top:.1e} of the largest)")
    results = {}
    for impl in ("official", "ours"):
        G, D, E = build(impl, cfg)
        if impl != "official" and args.checkpointing:
            GeneratorWithEncoder(G, E).set_checkpointing(True)  # as --checkpoint-activations
        trainer = Trainer(G, D, E, impl == "official")
        torch.manual_seed(123)
        losses = trainer.g_step(batch)
        losses.update(trainer.d_step(batch))
        G_params = G.state_dict() if impl == "official" else compat.to_official_state_dict(G, compat.generator_key_map(G))
        results[impl] = (losses, G_params)
        print(impl, {k: f"{v:.6g}" for k, v in losses.items()})
    (lo, po), (lu, pu) = results["official"], results["ours"]
    # Spectral norm's u, v are left out: old-style (release) power iteration updates v then u,
    # the parametrization u then v, so in training mode they differ (same fixed point).
    diffs = {k: (po[k].double() - pu[k].double()).abs().max().item() for k in pu
             if not k.endswith(("weight_u", "weight_v")) and po[k].is_floating_point()}
    print(f"max |loss diff| {max(abs(lo[k] - lu[k]) for k in lo):.3g}; "
          f"max |G/E weight diff| after both steps {max(diffs.values()):.3g}")


# ---- driver -------------------------------------------------------------------------------------


def config_flags(c: dict) -> list[str]:
    flags = ["--label-nc", str(c["label_nc"]), "--size", str(c["size"]), "--ngf", str(c["ngf"]),
             "--batch", str(c["batch"])]
    return flags + (["--dontcare"] if c["dontcare"] else [])


def run_measured(cmd: list[str]) -> tuple[int, str, str, float]:
    """(return code, stdout, stderr, peak RSS in GiB as the kernel reports it for the finished
    child, i.e. what ``/usr/bin/time`` shows) of one bench process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return proc.returncode, out.read(), err.read(), usage.ru_maxrss / 2**20  # KiB on Linux


def drive(args) -> None:
    """Every variant of every config in its own process; with ``--rounds R`` the variants take
    turns R times (the machine's speed drifts, so side by side means interleaved), and the table
    gives the median over the rounds of each process's median step time and peak RSS."""
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.steps or '3 (a) or 2 (b)'} timed steps after 1 warm-up, 2 threads, {args.rounds} round(s)",
          flush=True)
    rows = []
    for name in args.configs:
        c = CONFIGS[name]
        steps = args.steps if args.steps is not None else (3 if name == "a" else 2)
        runs: dict[str, list[dict]] = {v: [] for v in args.variants}
        for rnd in range(args.rounds):
            for variant in args.variants:
                cmd = [sys.executable, os.path.abspath(__file__), *VARIANTS[variant], *config_flags(c),
                       "--steps", str(steps), "--json"]
                load0 = os.getloadavg()[0]
                returncode, stdout, stderr, os_maxrss = run_measured(cmd)
                if returncode != 0:
                    print(f"{name} {variant}: failed\n{stderr[-2000:]}", file=sys.stderr)
                    continue
                r = json.loads(stdout.strip().splitlines()[-1])
                r.update(load=(load0, r["loadavg"][0]), os_maxrss_gib=os_maxrss)
                runs[variant].append(r)
                print(f"  {name} round {rnd + 1} {variant}: {r['median_step_s']:.2f} s/step, {r['peak_rss_gib']:.2f} GiB "
                      f"(the OS: {os_maxrss:.2f}; load {load0:.1f}->{r['loadavg'][0]:.1f})", file=sys.stderr, flush=True)
        for variant, rs in runs.items():
            if rs:
                rows.append(dict(cfg=name, variant=variant, n=len(rs),
                                 step=statistics.median(r["median_step_s"] for r in rs),
                                 g_step=statistics.median(r["median_g_step_s"] for r in rs),
                                 rss=statistics.median(r["peak_rss_gib"] for r in rs),
                                 steps=[round(r["median_step_s"], 2) for r in rs]))
    print("\n| config | implementation | s/step | G step s | peak RSS GiB | vs official: speed, memory | per round s/step |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        off = next((o for o in rows if o["cfg"] == r["cfg"] and o["variant"] == "official"), None)
        ratio = f"{off['step'] / r['step']:.2f}x, {r['rss'] / off['rss']:.2f}" if off else "-"
        print(f"| {r['cfg']} | {r['variant']} | {r['step']:.2f} | {r['g_step']:.2f} | {r['rss']:.2f} | {ratio} | "
              f"{', '.join(map(str, r['steps']))} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=["official", "ours"], default="ours")
    p.add_argument("--label-nc", type=int, default=150)
    p.add_argument("--dontcare", action="store_true", help="add the dontcare channel (ADE20K: 151)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--ndf", type=int, default=None, help="default: ngf")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="timed steps after one warm-up (default 3)")
    p.add_argument("--checkpointing", action="store_true", help="ours: as ccfpse train --checkpoint-activations")
    p.add_argument("--keep-library-pages", action="store_true",
                   help="ours: do not release the libraries' read-only pages (ccfpse train does on the CPU)")
    p.add_argument("--d-grads-in-g-step", action="store_true",
                   help="keep D trainable during the G step (the release's trainer; grads discarded)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("--verbose", action="store_true", help="per-step times and losses on stderr")
    p.add_argument("--profile", action="store_true", help="torch profiler op tables of one step")
    p.add_argument("--saved", action="store_true", help="bytes saved for backward, per module")
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--check", action="store_true", help="compare one step of both impls")
    p.add_argument("--all", action="store_true", help="run the issue's configs, one process each")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--rounds", type=int, default=1, help="--all: let the variants take turns this many times")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS),
                   help="rows of --all (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.all:
        return drive(args)
    if args.checkpointing and args.impl == "official":
        p.error("--checkpointing exists only for our generator")
    if args.profile:
        return profile(args)
    if args.saved:
        return saved_report(args)
    if args.check:
        return check(args)
    args.steps = 3 if args.steps is None else args.steps
    r = run(args)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['impl']}: {r['config']}")
        print(f"  median step {r['median_step_s']:.2f} s (G step {r['median_g_step_s']:.2f} s) over "
              f"{len(r['step_times_s'])} steps {[round(t, 2) for t in r['step_times_s']]}")
        print(f"  median CPU time {r['median_cpu_s']:.2f} s/step (process, all threads)")
        print(f"  peak RSS {r['peak_rss_gib']:.2f} GiB (after set-up {r['rss_after_setup_gib']:.2f}, "
              f"parameters {r['params_gib']:.2f}); load {r['loadavg'][0]:.1f}; torch {r['torch']}")
    # Leave without the shared libraries' exit handlers: on a normal exit the CUDA build's
    # libraries (cuBLASLt, cuSPARSELt, libtorch_cuda) fault in ~125 MiB of their code, which an
    # outside measurement of the process (/usr/bin/time, wait4) would count as the step's peak.
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
