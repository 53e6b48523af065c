"""Batches for language modelling: windows of T+1 ids, inputs x = ids[:-1], targets y = ids[1:]."""

from __future__ import annotations

import numpy as np
import torch

from llmkit.shards import TokenStream


def random_batch(stream: TokenStream, batch_size: int, block_size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """B windows at uniformly random offsets (nanoGPT's sampler): x and y are (B, T) int64."""
    starts = torch.randint(len(stream) - block_size, (batch_size,), generator=generator)
    windows = torch.from_numpy(stream.windows(starts.numpy(), block_size + 1))  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


def sequential_batches(stream: TokenStream, block_size: int, batch_size: int):
    """Every target of the stream exactly once, each predicted from the start of its window of
    at most T targets: yields (x, y) batches of up to B full windows, then the shorter last one."""
    n_targets = len(stream) - 1
    full = n_targets // block_size
    starts = np.arange(full) * block_size
    for i in range(0, full, batch_size):
        windows = torch.from_numpy(stream.windows(starts[i : i + batch_size], block_size + 1))
        yield windows[:, :-1], windows[:, 1:]
    if n_targets > full * block_size:
        last = torch.from_numpy(stream.window(full * block_size, n_targets - full * block_size + 1))
        yield last[None, :-1], last[None, 1:]
