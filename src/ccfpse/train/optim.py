"""Adam as the release trains with it, lean in memory.

Same arithmetic as ``torch.optim.Adam`` (no weight decay, no AMSGrad), with two savings:

- With beta1 = 0 (the release's TTUR setting, betas (0, 0.9)) the first moment equals the current
  gradient, so it is not stored: a quarter of the optimiser's memory.
- ``step_in_backward=True`` updates each parameter as soon as its gradient is complete during
  ``backward()`` and frees that gradient, so a full set of gradients never exists at once. Only for
  plain single-process training: DDP all-reduces gradients after they are accumulated and fp16's
  GradScaler must see all gradients before stepping, so the training loop turns it off for both.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class Adam(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        step_in_backward: bool = False,
    ) -> None:
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Adam betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))
        self.step_in_backward = step_in_backward
        self._hooks = []
        if step_in_backward:
            for index, group in enumerate(self.param_groups):
                for p in group["params"]:
                    self._hooks.append(p.register_post_accumulate_grad_hook(self._on_grad(index)))

    def _on_grad(self, group_index: int):
        # By index: load_state_dict replaces the group dicts, and the lr schedule edits the new ones.
        def hook(p: Tensor) -> None:
            self._update(p, self.param_groups[group_index])
            p.grad = None

        return hook

    @torch.no_grad()
    def _update(self, p: Tensor, group: dict) -> None:
        beta1, beta2 = group["betas"]
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError("ccfpse Adam does not support sparse gradients")
        state = self.state[p]
        if not state:
            # A float32 tensor like torch.optim.Adam's, so state dicts stay interchangeable.
            state["step"] = torch.tensor(0.0)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if beta1 > 0:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step = state["step"].item()
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
        if beta1 > 0:
            exp_avg = state["exp_avg"]
            exp_avg.lerp_(grad, 1 - beta1)
            p.addcdiv_(exp_avg, denom, value=-group["lr"] / (1 - beta1**step))
        else:  # exp_avg.lerp_(grad, 1) would be exactly grad
            p.addcdiv_(grad, denom, value=-group["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        """Updates every parameter that still holds a gradient (all of them unless stepping in
        backward, where this catches only gradients that arrived outside a backward pass)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
                    if self.step_in_backward:
                        p.grad = None
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """Also accepts torch.optim.Adam's state (e.g. checkpoints of earlier versions)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            if group["betas"][0] == 0:
                for p in group["params"]:
                    self.state.get(p, {}).pop("exp_avg", None)
