"""Benchmark of ``ccfpse.ops.predict_and_apply_kernels`` (kernel map in strips of rows) against the
dense path ``cond_depthwise_conv2d(x, F.conv2d(hidden, weight, bias, padding=1))``.

For each variant: wall time of one forward + backward (x, hidden, weight and bias requiring grad)
and the growth of the peak RSS it causes, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after it
minus before it (inputs and incoming gradient already allocated, kernel compiled and torch warmed
up on a tiny input). Every run is a fresh subprocess, so no peak carries over between variants;
this driver does not import torch, so its own small peak, which a child's ru_maxrss inherits
through fork/exec, stays far below the child's baseline. The variants alternate, so load from
other processes hits both alike. Reports the median (and all values) over ``--runs`` runs.
VmHWM growth from /proc/self/status is printed alongside as a cross-check where it exists.

    /work/venv/bin/python bench/bench_strips.py        # x (1, 128, 256, 256), hidden 128 ch, float32, 2 threads, 3 runs
    /work/venv/bin/python bench/bench_strips.py --shape 1 64 128 128 --hidden 64 --runs 5 --strip-rows 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("dense", "strips")


def _peak_mib(field: str = "ru_maxrss") -> float | None:
    if field == "ru_maxrss":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return None


def child(args) -> None:
    """One measured fwd+bwd in this (fresh) process; prints a JSON line."""
    import torch
    import torch.nn.functional as F

    from ccfpse.ops import cond_depthwise_conv2d, predict_and_apply_kernels

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    def make(n, c, h, w, ch):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((n, c, h, w), generator=gen).to(dtype).requires_grad_()
        hidden = torch.randn((n, ch, h, w), generator=gen).to(dtype).requires_grad_()
        weight = (torch.randn((9 * c, ch, 3, 3), generator=gen) / (3 * ch**0.5)).to(dtype).requires_grad_()
        bias = torch.randn(9 * c, generator=gen).to(dtype).requires_grad_()
        grad = torch.randn((n, c, h, w), generator=gen).to(dtype)
        return (x, hidden, weight, bias), grad

    if args.child == "dense":
        def fn(x, hidden, weight, bias):
            return cond_depthwise_conv2d(x, F.conv2d(hidden, weight, bias, padding=1))
    else:
        def fn(x, hidden, weight, bias):
            return predict_and_apply_kernels(x, hidden, weight, bias, strip_rows=args.strip_rows)

    def fwd_bwd(inputs, grad):
        fn(*inputs).backward(grad)

    tiny, tiny_grad = make(1, 2, 8, 8, 2)
    fwd_bwd(tiny, tiny_grad)  # compile/load the C kernel, initialise torch's conv backends
    inputs, grad = make(*args.shape, args.hidden)
    base, base_hwm = _peak_mib(), _peak_mib("VmHWM")
    t0 = time.perf_counter()
    fwd_bwd(inputs, grad)
    seconds = time.perf_counter() - t0
    peak, peak_hwm = _peak_mib(), _peak_mib("VmHWM")
    print(json.dumps({
        "seconds": seconds,
        "rss_growth_mib": peak - base,
        "hwm_growth_mib": None if base_hwm is None else peak_hwm - base_hwm,
        "torch": torch.__version__,
    }))


def run_child(args, variant: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--dtype", args.dtype,
           "--threads", str(args.threads), "--hidden", str(args.hidden), "--shape", *map(str, args.shape)]
    if args.strip_rows is not None:
        cmd += ["--strip-rows", str(args.strip_rows)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{variant} run failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=4, default=[1, 128, 256, 256], metavar=("N", "C", "H", "W"))
    p.add_argument("--hidden", type=int, default=128, help="channels of hidden (the predictor's input)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3, help="fresh processes per variant")
    p.add_argument("--strip-rows", type=int, default=None, help="strip height (default: the op's own)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    n, c, h, w = args.shape
    item = 4 if args.dtype == "float32" else 8
    print(f"x {tuple(args.shape)}, hidden ({n}, {args.hidden}, {h}, {w}), weight ({9 * c}, {args.hidden}, 3, 3), "
          f"{args.dtype}, {args.threads} threads, {os.cpu_count()} CPUs, load average "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"full kernel map (N, 9*C, H, W): {n * 9 * c * h * w * item / 2**20:.0f} MiB; "
          f"strip rows: {args.strip_rows or 'default (STRIP_BYTES)'}")
    results = {v: [] for v in VARIANTS}
    for _ in range(args.runs):
        for v in VARIANTS:  # alternate
            results[v].append(run_child(args, v))
    print(f"torch {results['dense'][0]['torch']}; median over {args.runs} fresh processes (all runs):")
    for v in VARIANTS:
        secs = [r["seconds"] for r in results[v]]
        rss = [r["rss_growth_mib"] for r in results[v]]
        hwm = [r["hwm_growth_mib"] for r in results[v] if r["hwm_growth_mib"] is not None]
        line = (f"  {v:6s} fwd+bwd {statistics.median(secs):7.2f} s ({', '.join(f'{s:.2f}' for s in secs)})   "
                f"peak RSS growth {statistics.median(rss):7.1f} MiB ({', '.join(f'{m:.0f}' for m in rss)})")
        if hwm:
            line += f"   VmHWM growth {statistics.median(hwm):7.1f} MiB"
        print(line)
    ratio = statistics.median(r["seconds"] for r in results["strips"]) / statistics.median(
        r["seconds"] for r in results["dense"])
    print(f"  strips / dense time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
