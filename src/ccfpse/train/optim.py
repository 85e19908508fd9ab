"""Adam as the release trains with it, lean in memory.

Same arithmetic as ``torch.optim.Adam`` (no weight decay, no AMSGrad) and the same state-dict
format (either loads the other's), with three savings:

- With beta1 = 0 (the release's TTUR setting, betas (0, 0.9)) the first moment equals the current
  gradient, so it is not stored: a quarter of the optimiser's memory.
- ``step_in_backward=True`` updates each parameter as soon as its gradient is complete during
  ``backward()`` and frees that gradient, so a full set of gradients never exists at once. Only for
  plain single-process training: DDP all-reduces gradients after they are accumulated and fp16's
  GradScaler must see all gradients before stepping, so the training loop turns it off for both.
- The moments are allocated when the optimiser is made, not at the first update: made in the
  middle of the first backward pass, these long-lived buffers would be scattered between its
  short-lived tensors and keep the heap fragmented for the rest of training.
- It is not a ``torch.optim.Optimizer``, whose constructor imports torch._dynamo (and Triton):
  ~150 MB of resident memory a training run without ``--compile`` does not need.

float32 parameters on the CPU are updated by one C loop (``ccfpse/csrc/adam.c``): one pass over
parameter, gradient and moments, no temporaries, and no square roots of denormal second moments
(torch's vectorised sqrt is ~30x slower on those; they cannot change the update).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor

from ccfpse import native


class Adam:
    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        step_in_backward: bool = False,
    ) -> None:
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Adam betas must be in [0, 1), got {betas}")
        params = [p for p in params]
        if not params:
            raise ValueError("Adam got an empty parameter list")
        self.defaults = dict(lr=lr, betas=tuple(betas), eps=eps)
        # One group, as torch's state dicts lay it out (the loop edits "lr" between epochs).
        self.param_groups = [dict(self.defaults, params=params)]
        self.state: dict[Tensor, dict] = {}
        # Zeroed moments waiting for each trainable parameter's first update (see the docstring).
        self._fresh = {p: self._zero_moments(p, betas[0]) for p in params if p.requires_grad}
        self.step_in_backward = step_in_backward
        if step_in_backward:
            for p in params:
                if p.requires_grad:
                    p.register_post_accumulate_grad_hook(self._on_grad)

    @staticmethod
    def _zero_moments(p: Tensor, beta1: float) -> dict[str, Tensor]:
        m = {"exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        if beta1 > 0:
            m["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return m

    def _on_grad(self, p: Tensor) -> None:
        self._update(p, self.param_groups[0])
        p.grad = None

    @torch.no_grad()
    def _update(self, p: Tensor, group: dict) -> None:
        beta1, beta2 = group["betas"]
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError("ccfpse Adam does not support sparse gradients")
        state = self.state.setdefault(p, {})
        if not state:
            # A float32 tensor like torch.optim.Adam's, so state dicts stay interchangeable.
            state["step"] = torch.tensor(0.0)
            fresh = self._fresh.pop(p, None)
            state.update(fresh if fresh is not None and ("exp_avg" in fresh) == (beta1 > 0)
                         else self._zero_moments(p, beta1))
        state["step"] = state["step"] + 1
        step = state["step"].item()
        exp_avg_sq = state["exp_avg_sq"]
        lib = _fast_path(p, grad, state)
        if lib is not None:
            m = state.get("exp_avg")
            lib.adam_step_f32(p.data_ptr(), grad.data_ptr(), exp_avg_sq.data_ptr(), None if m is None else m.data_ptr(),
                              p.numel(), group["lr"] / (1 - beta1**step), beta1, beta2, group["eps"],
                              (1 - beta2**step) ** 0.5, native.threads(p.numel()))
            # written through its pointer: let autograd know, as an in-place op would
            torch.autograd.graph.increment_version(p)
            return
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().div_((1 - beta2**step) ** 0.5).add_(group["eps"])
        if beta1 > 0:
            exp_avg = state["exp_avg"]
            exp_avg.lerp_(grad, 1 - beta1)
            p.addcdiv_(exp_avg, denom, value=-group["lr"] / (1 - beta1**step))
        else:  # torch's exp_avg.lerp_(grad, 1) would be exactly grad
            p.addcdiv_(grad, denom, value=-group["lr"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """Updates every parameter that holds a gradient (when stepping in backward, only those
        whose gradients arrived outside a backward pass)."""
        group = self.param_groups[0]
        for p in group["params"]:
            if p.grad is not None:
                self._update(p, group)
                if self.step_in_backward:
                    p.grad = None

    def state_dict(self) -> dict:
        """torch.optim.Optimizer's layout: per-parameter state keyed by position."""
        group = self.param_groups[0]
        index = {id(p): i for i, p in enumerate(group["params"])}
        saved_group = {k: v for k, v in group.items() if k != "params"}
        saved_group["params"] = list(range(len(group["params"])))
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items()}, "param_groups": [saved_group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Also accepts torch.optim.Adam's state (e.g. checkpoints of earlier versions)."""
        groups = state_dict["param_groups"]
        params = self.param_groups[0]["params"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            raise ValueError("optimizer state does not match these parameters (number of parameters differs)")
        saved = groups[0]
        self.param_groups[0].update(lr=saved["lr"], betas=tuple(saved["betas"]), eps=saved["eps"])
        position = {pid: i for i, pid in enumerate(saved["params"])}
        keep_first_moment = self.param_groups[0]["betas"][0] > 0
        self.state = {}
        for pid, s in state_dict["state"].items():
            p = params[position[pid]]
            s = copy.copy(s)
            if not keep_first_moment:
                s.pop("exp_avg", None)
            fresh = self._fresh.pop(p, {})
            for key, value in s.items():
                if key != "step" and torch.is_tensor(value):
                    if key in fresh and fresh[key].shape == value.shape:  # into the buffer made for it
                        s[key] = fresh[key].copy_(value)
                    else:
                        s[key] = value.to(device=p.device, dtype=p.dtype)
            self.state[p] = s


def _fast_path(p: Tensor, grad: Tensor, state: dict):
    """The C library when this parameter's update can run there (contiguous float32 on CPU)."""
    tensors = [p, grad, state["exp_avg_sq"]] + ([state["exp_avg"]] if "exp_avg" in state else [])
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
        return None
    return native.lib()
