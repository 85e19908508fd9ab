"""Benchmark of ``ccfpse.winograd.conv3x3`` (Winograd F(4x4, 3x3) on CPU) against ``F.conv2d``.

For each shape (N, C, K, H, W) (x (N, C, H, W), weight (K, C, 3, 3), bias (K,), float32,
padding 1): median wall time of a forward under ``torch.no_grad()`` (inference) and of a forward +
backward with x, weight and bias requiring grad (training), both implementations timed
alternately in one process so that load from other processes hits both alike, and the speed-up
(median of ``F.conv2d`` / median of ``conv3x3``). The default shapes are the generator's 3x3
convolutions at 256 px (the kernel predictors, their gates, SPADE's gamma/beta and the shared
layers, at each resolution). ``--max-error`` also prints each implementation's max and RMS error
against a float64 ``F.conv2d`` (output and gradients, relative to the reference's max |.| and
RMS), which costs a float64 convolution per shape.

    python bench/bench_winograd.py                                   # default shapes, 2 threads, 5 repeats
    python bench/bench_winograd.py --shape 2 128 576 128 128 --repeats 10 --max-error
    python bench/bench_winograd.py --threads 1 --forward-only
    python bench/bench_winograd.py --force --shape 2 128 576 32 32 --shape 2 128 4608 8 8
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from ccfpse import native, winograd

SHAPES = [
    (2, 128, 576, 128, 128),
    (2, 128, 288, 128, 128),
    (2, 32, 512, 128, 128),
    (2, 128, 64, 128, 128),
    (2, 128, 1152, 64, 64),
    (1, 128, 1152, 256, 256),
    (1, 64, 512, 256, 256),
    (2, 128, 576, 32, 32),
    (2, 128, 4608, 8, 8),
]


def conv2d(x, weight, bias):
    return F.conv2d(x, weight, bias, padding=1)


FORMS = {"F.conv2d": conv2d, "conv3x3": winograd.conv3x3}


def make_inputs(shape, dtype=torch.float32, seed=0):
    n, c, k, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, h, w), generator=gen).to(dtype).requires_grad_()
    # Variance 1/(9C), as initialised layers have: outputs of order 1.
    weight = (torch.randn((k, c, 3, 3), generator=gen) / (9 * c) ** 0.5).to(dtype).requires_grad_()
    bias = (0.1 * torch.randn(k, generator=gen)).to(dtype).requires_grad_()
    grad = torch.randn((n, k, h, w), generator=gen).to(dtype)
    return x, weight, bias, grad


def forward(fn, x, weight, bias, grad):
    with torch.no_grad():
        fn(x, weight, bias)


def fwd_bwd(fn, x, weight, bias, grad):
    x.grad = weight.grad = bias.grad = None
    fn(x, weight, bias).backward(grad)


def time_forms(step, inputs, repeats, warmup):
    """{form: (median, min)} seconds."""
    times = {n: [] for n in FORMS}
    for r in range(warmup + repeats):
        for name, fn in FORMS.items():  # alternate, so load from other processes hits both alike
            t0 = time.perf_counter()
            step(fn, *inputs)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {n: (statistics.median(t), min(t)) for n, t in times.items()}


def errors(shape):
    """{form: [(max rel, RMS rel) of y, grad x, grad weight]} against float64 F.conv2d."""
    x, weight, bias, grad = make_inputs(shape, seed=1)
    leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    y = conv2d(*leaves)
    ref = [y.detach(), *torch.autograd.grad(y, leaves[:2], grad.double())]
    del y
    out = {}
    for name, fn in FORMS.items():
        y = fn(x, weight, bias)
        got = [y.detach(), *torch.autograd.grad(y, (x, weight), grad)]
        del y
        out[name] = []
        for a, r in zip(got, ref):
            err = a.double() - r
            out[name].append(((err.abs().max() / r.abs().max()).item(),
                              (err.pow(2).mean().sqrt() / r.pow(2).mean().sqrt()).item()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=5, action="append", metavar=("N", "C", "K", "H", "W"),
                   help="a shape to time (repeatable; default: the generator's shapes)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per form and measurement")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--forward-only", action="store_true", help="skip the forward + backward timings")
    p.add_argument("--max-error", action="store_true", help="also print errors against float64")
    p.add_argument("--force", action="store_true",
                   help="Winograd path for every size (the winograd.MIN_* thresholds 0), to check them")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    thresholds = [n for n in ("MIN_PIXELS", "MIN_CHANNELS", "MIN_FILTERS") if hasattr(winograd, n)]
    if args.force:
        for name in thresholds:
            setattr(winograd, name, 0)
    shapes = [tuple(s) for s in args.shape] if args.shape else SHAPES

    lib = native.lib() is not None
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"compiled library: {'yes' if lib else 'NO (conv3x3 is F.conv2d)'}; "
          + ", ".join(f"{n} = {getattr(winograd, n)}" for n in thresholds)
          + f"; median (min) of {args.repeats} runs in ms; speed-up = ratio of medians, F.conv2d / conv3x3\n")
    head = "| N, C, K, H, W | Winograd | fwd F.conv2d | fwd conv3x3 | fwd speed-up |"
    if not args.forward_only:
        head += " fwd+bwd F.conv2d | fwd+bwd conv3x3 | fwd+bwd speed-up |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for shape in shapes:
        inputs = make_inputs(shape)
        wino = winograd.uses_winograd(inputs[0], inputs[1])
        row = f"| {', '.join(map(str, shape))} | {'yes' if wino else 'no'} |"
        steps = [forward] if args.forward_only else [forward, fwd_bwd]
        for step in steps:
            t = time_forms(step, inputs, args.repeats, args.warmup)
            row += "".join(f" {t[n][0] * 1e3:.1f} ({t[n][1] * 1e3:.1f}) |" for n in FORMS)
            row += f" {t['F.conv2d'][0] / t['conv3x3'][0]:.2f}x |"
        print(row, flush=True)
        del inputs

    if args.max_error:
        print("\nerror vs float64 F.conv2d: max |err| / max |ref|, RMS err / RMS ref\n")
        print("| N, C, K, H, W | form | y max | y RMS | grad x max | grad x RMS | grad w max | grad w RMS |")
        print("|---|---|---|---|---|---|---|---|")
        for shape in shapes:
            for name, errs in errors(shape).items():
                cells = " | ".join(f"{m:.2e} | {r:.2e}" for m, r in errs)
                print(f"| {', '.join(map(str, shape))} | {name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
