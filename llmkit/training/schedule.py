"""The learning-rate schedule: linear warmup to `lr`, then cosine decay to `min_lr` at the end of the
run, which is `max_steps`, or with a time budget (`max_time`) whichever limit is reached first.

With a budget the decay follows the fraction of the run done, the larger of seconds used of
`max_time` and steps done of `max_steps`, so it reaches `min_lr` as the run ends whatever the
machine's speed. Warmup stays in steps (a number of updates, the same on any machine); during it
the rate ramps linearly towards the decaying curve rather than to `lr`, so nothing jumps when it
ends. Without a budget the schedule depends on the step alone, as it always did.
"""

from __future__ import annotations

import math

from llmkit.config import TrainConfig


def progress(step: int, train: TrainConfig, train_s: float = 0.0) -> float:
    """How far the decay has gone, 0 to 1: steps after warmup of those that remain after it, or
    with a budget the larger of that and the fraction of `max_time` used."""
    steps = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
    seconds = train_s / train.max_time if train.max_time is not None else 0.0
    return min(1.0, max(0.0, steps, seconds))


def learning_rate(step: int, train: TrainConfig, train_s: float = 0.0) -> float:
    """The rate for the update that follows `step` completed updates (step counts from 0), `train_s`
    seconds of training into the run. This is AdamW's rate; other groups (Muon's) are scaled by the
    same factor, `learning_rate(...) / train.lr`."""
    warmup = (step + 1) / train.warmup_steps if step < train.warmup_steps else 1.0
    if train.max_time is None and step < train.warmup_steps:
        return train.lr * warmup
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress(step, train, train_s)))
    return warmup * (train.min_lr + cosine * (train.lr - train.min_lr))
