"""The one optimisation loop every training stage uses (VAE, decoder, denoiser, ControlNet), and what it needs:
the warm-up + cosine learning-rate schedule and an exponential moving average of the weights.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def warmup_cosine(steps: int, warmup: int) -> Callable[[int], float]:
    """Learning-rate factor: linear 0 → 1 over `warmup` steps, then cosine 1 → 0.05."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


class ExponentialMovingAverage:
    """Shadow copy of parameters: θ̄ ← d·θ̄ + (1 − d)·θ, with d = min(decay, (1 + n)/(10 + n)) early on."""

    def __init__(self, modules: list[nn.Module], decay: float) -> None:
        self.parameters = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.parameters]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.parameters], 1.0 - decay)

    @torch.no_grad()
    def copy_to_models(self) -> None:
        for shadow, param in zip(self.shadow, self.parameters):
            param.copy_(shadow)


@dataclass(frozen=True)
class Optimisation:
    steps: int
    learning_rate: float
    warmup: int  # linear warm-up steps before the cosine decay
    weight_decay: float = 0.0
    ema_decay: float | None = None  # keep an EMA of the trained modules' weights


def optimise(modules: list[nn.Module], parameters: list[nn.Parameter], step_loss: Callable[[], Tensor],
             options: Optimisation,
             on_step: Callable[[int, float], None] | None = None) -> ExponentialMovingAverage | None:
    """AdamW on `parameters` with `warmup_cosine`, gradients clipped to norm 1, `modules` in train mode while it
    runs; `step_loss()` draws a batch and returns its loss. Returns the EMA of `modules` when one is asked for."""
    optimizer = torch.optim.AdamW(parameters, lr=options.learning_rate, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(options.steps, options.warmup))
    ema = ExponentialMovingAverage(modules, options.ema_decay) if options.ema_decay is not None else None
    for module in modules:
        module.train()
    for step in range(options.steps):
        loss = step_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update()
        if on_step is not None:
            on_step(step, loss.item())
    for module in modules:
        module.eval()
    return ema
