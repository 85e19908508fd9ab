"""Benchmark of ``ccfpse.ops.cond_depthwise_conv2d`` against the release's unfold form.

Reports, for forward + backward with both inputs requiring grad: median wall time of each form
(timed alternately in one process, so both see the same machine load), their speed ratio, the
bytes autograd saves for backward (unique storages seen by ``saved_tensors_hooks``), the peak RSS
increase of one fwd+bwd in a fresh subprocess, and float64 max abs errors against the unfold form.

Forms: ``unfold`` (the release), ``ccfpse`` (the compiled kernel from ``ccfpse/csrc``, built by
``ccfpse.native``, for float32/float64 on CPU; else the eager path), ``eager`` (the pure-PyTorch
path, ``--eager``) and ``strips`` (``--strip-rows R``: the output in strips of R rows, each from
a window view of x's rows with its halo rows, ``x_offset``, then concatenated; its time includes
the copies autograd makes to assemble the strips' gradients).

    python bench/bench_ops.py                      # x (2, 64, 128, 128) float32, 2 threads
    python bench/bench_ops.py --shape 1 32 256 256 --repeats 30 --eager
    python bench/bench_ops.py --repeats 5 --no-rss --strip-rows 16
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from ccfpse import ops

FORMS = {
    "unfold": ops.cond_depthwise_conv2d_unfold,
    "ccfpse": ops.cond_depthwise_conv2d,
    "eager": ops.cond_depthwise_conv2d_eager,
}


def strips_form(rows: int):
    """``cond_depthwise_conv2d`` on strips of ``rows`` output rows: each reads a window of x
    (a view, with one halo row above and below where the image has them)."""

    def fn(x, weight):
        h = weight.shape[2]
        parts = []
        # split, not slices, for the kernel map: its backward is one cat, where each slice's
        # would be a zero-filled gradient of the whole map.
        for a, w_strip in zip(range(0, h, rows), weight.split(rows, 2)):
            b = a + w_strip.shape[2]
            lo, hi = max(0, a - 1), min(h, b + 1)
            parts.append(ops.cond_depthwise_conv2d(x[:, :, lo:hi], w_strip, a - lo))
        return torch.cat(parts, 2)

    return fn


def make_inputs(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=gen).to(dtype).requires_grad_()
    weight = torch.randn((n, c * 9, h, w), generator=gen).to(dtype).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(dtype)
    return x, weight, grad


def fwd_bwd(fn, x, weight, grad):
    x.grad = weight.grad = None
    fn(x, weight).backward(grad)


def time_forms(names, x, weight, grad, repeats, warmup):
    times = {n: [] for n in names}
    for r in range(warmup + repeats):
        for n in names:  # alternate, so load from other processes hits all forms alike
            t0 = time.perf_counter()
            fwd_bwd(FORMS[n], x, weight, grad)
            if r >= warmup:
                times[n].append(time.perf_counter() - t0)
    return times


def saved_bytes(fn, x, weight):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, weight)
    return sum(storages.values())


def _peak_rss_mib() -> float:
    # VmHWM belongs to this process image; ru_maxrss would inherit the parent's peak through fork.
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_rss_child(args):
    """Run in a subprocess: peak RSS growth (MiB) of one fwd+bwd beyond inputs and a warm-up."""
    x, weight, grad = make_inputs(args.shape, getattr(torch, args.dtype))
    fn = FORMS[args.rss_child]
    fwd_bwd(fn, *make_inputs((1, 1, 8, 8), x.dtype))  # load/compile outside the measurement
    base = _peak_rss_mib()
    fwd_bwd(fn, x, weight, grad)
    print(_peak_rss_mib() - base)


def peak_rss(args, name):
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", name, "--dtype", args.dtype]
    if args.strip_rows:
        cmd += ["--strip-rows", str(args.strip_rows)]
    cmd += ["--shape"]
    res = subprocess.run(cmd + [str(s) for s in args.shape], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def float64_errors(shape, name):
    x, weight, grad = make_inputs(shape, torch.float64, seed=1)
    outs = []
    for fn in (FORMS["unfold"], FORMS[name]):
        y = fn(x, weight)
        outs.append((y, *torch.autograd.grad(y, (x, weight), grad)))
    return [(a - b).abs().max().item() for a, b in zip(*outs)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=4, default=[2, 64, 128, 128], metavar=("N", "C", "H", "W"))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--repeats", type=int, default=15, help="timed fwd+bwd runs per form")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eager", action="store_true", help="also time the pure-PyTorch fallback path")
    p.add_argument("--strip-rows", type=int, default=0, help="also time the op on strips of this many rows")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--rss-child", choices=list(FORMS) + ["strips"], help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.strip_rows:
        FORMS["strips"] = strips_form(args.strip_rows)
    if args.rss_child:
        return peak_rss_child(args)

    dtype = getattr(torch, args.dtype)
    kernel = ops._kernel_for(torch.empty(0, dtype=dtype)) is not None
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads")
    print(f"x {tuple(args.shape)} {args.dtype}; ccfpse path: {'compiled kernel' if kernel else 'eager'}"
          + (f"; strips of {args.strip_rows} rows" if args.strip_rows else ""))
    names = ["unfold", "ccfpse"] + (["eager"] if args.eager else []) + (["strips"] if args.strip_rows else [])
    x, weight, grad = make_inputs(args.shape, dtype)
    times = time_forms(names, x, weight, grad, args.repeats, args.warmup)
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"\nfwd+bwd median / min over {args.repeats} runs:")
    for n in names:
        ratio = med["unfold"] / med[n]
        print(f"  {n:7s} {med[n] * 1e3:8.1f} ms / {min(times[n]) * 1e3:8.1f} ms   speed-up {ratio:5.2f}x")
    for n in names[1:]:
        paired = statistics.median(u / t for u, t in zip(times["unfold"], times[n]))
        print(f"  median of paired ratios unfold/{n}: {paired:.2f}x")

    print("\nsaved for backward (unique storages):")
    ref = saved_bytes(FORMS["unfold"], x, weight)
    for n in names:
        b = saved_bytes(FORMS[n], x, weight)
        print(f"  {n:7s} {b / 2**20:8.1f} MiB   ratio {b / ref:.3f}")

    if not args.no_rss:
        print("\npeak RSS growth of one fwd+bwd (fresh process):")
        for n in names:
            print(f"  {n:7s} {peak_rss(args, n):8.1f} MiB")

    print("\nfloat64 max abs error vs unfold (value, grad x, grad weight):")
    for n in names[1:]:
        print(f"  {n:7s} " + "  ".join(f"{e:.3g}" for e in float64_errors(args.shape, n)))


if __name__ == "__main__":
    main()
