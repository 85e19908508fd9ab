"""Activation checkpointing of a whole stage: computed without a graph, recomputed in backward.

For the stages whose activations would otherwise be held through the generator's whole backward
pass (the label pyramid, the image encoder). The conditional blocks have their own strip-wise
version (``blocks._RecomputedBlock``). torch.utils.checkpoint is not used: it imports
torch._dynamo and Triton (~150 MB resident) on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ccfpse.ops import autocast_region, autocast_state


def recompute(run: Callable[..., Sequence[Tensor]], inputs: Sequence[Tensor], params: Sequence[Tensor]
              ) -> tuple[Tensor, ...]:
    """``run(*inputs, recomputing=False)`` without keeping its graph; backward calls
    ``run(*inputs, recomputing=True)`` with one and back-propagates through it. ``params``:
    the parameters ``run`` reads directly (they receive their gradients as inputs of this
    function, so per-parameter hooks and DDP see them as usual). ``run`` must compute the same
    thing both times: it must not update state on the second call (BatchNorm statistics) nor
    read a spectral-norm weight (its power iteration would move; pass such weights in
    ``inputs``, read once)."""
    return _Recompute.apply(run, len(inputs), *inputs, *params)


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, num_inputs: int, *args: Tensor):
        ctx.run, ctx.num_inputs = run, num_inputs
        ctx.params = args[num_inputs:]
        ctx.autocast = autocast_state(args[0].device.type)
        ctx.save_for_backward(*args[:num_inputs])
        with torch.no_grad():
            return tuple(run(*args[:num_inputs], recomputing=False))

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        if torch.is_grad_enabled():
            raise RuntimeError("recompute: double backward is not supported")
        needs = ctx.needs_input_grad[2:]
        inputs = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, needs)]
        amp = autocast_region(ctx.autocast)
        with torch.enable_grad(), amp:
            outputs = ctx.run(*inputs, recomputing=True)
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
        wrt = [t for t, need in zip([*inputs, *ctx.params], needs) if need]
        found = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
                     if pairs and wrt else [None] * len(wrt))
        return (None, None, *[next(found) if need else None for need in needs])
