"""What a step's number decides: its random seeds, its learning rate and the EMA model's rate.

Each is a function of the step alone (and the run's settings), never of what ran before, so a
run resumed from a checkpoint replays exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed Python, numpy and torch (all devices) for one step of one process."""
    value = (seed * 1_000_003 + step * 65_537 + rank) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int, power: float) -> float:
    """Linear warm-up from ~0 to 1, then polynomial decay to 0 at ``total_steps`` (DAFormer's schedule)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 1.0 - progress) ** power


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, step: int, max_alpha: float) -> None:
    """ema = α·ema + (1 − α)·model with α = min(1 − 1/(step + 1), max_alpha) (DAFormer/Mean Teacher)."""
    alpha = min(1.0 - 1.0 / (step + 1), max_alpha)
    for ema_param, param in zip(ema_model.parameters(), model.parameters()):
        ema_param.mul_(alpha).add_(param.detach(), alpha=1.0 - alpha)
    for ema_buffer, buffer in zip(ema_model.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)
