"""The learning-rate schedule: linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps`."""

from __future__ import annotations

import math

from llmkit.config import TrainConfig


def learning_rate(step: int, train: TrainConfig) -> float:
    """The rate for the update that follows `step` completed updates (step counts from 0)."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if step >= train.max_steps:
        return train.min_lr
    progress = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
    return train.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (train.lr - train.min_lr)
