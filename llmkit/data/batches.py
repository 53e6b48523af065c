"""Batches for language modelling: windows of T+1 ids, inputs x = ids[:-1], targets y = ids[1:].
And for tasks whose examples differ in length (classification, instructions), which examples
make up a batch (`pick_examples`)."""

from __future__ import annotations

import numpy as np
import torch

from llmkit.data.shards import TokenStream


def random_batch(stream: TokenStream, batch_size: int, block_size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """B windows at uniformly random offsets (nanoGPT's sampler): x and y are (B, T) int64."""
    starts = torch.randint(len(stream) - block_size, (batch_size,), generator=generator)
    windows = torch.from_numpy(stream.windows(starts.numpy(), block_size + 1))  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


def pick_examples(lengths: np.ndarray, batch_size: int, bucket: int, generator: torch.Generator) -> list[int]:
    """Indices of a training batch of examples with these lengths, each example as likely as any.

    A batch is padded to its longest example, so a random batch of short and long texts is mostly
    padding. With `bucket` > 1, batch_size x bucket examples are drawn at random, sorted by length,
    and one run of batch_size neighbours among them is taken, chosen at random: every example is
    still equally likely, but the batch holds texts of similar length (for spam messages, padding
    falls from about half the batch to a tenth). bucket = 1 is a plain random batch. The price:
    a batch's examples are more alike than chance (long SMS are mostly spam), which the
    measurements in docs/benchmarks.md weigh."""
    pool = torch.randint(len(lengths), (batch_size * bucket,), generator=generator)
    if bucket == 1:
        return pool.tolist()
    ordered = pool[torch.from_numpy(np.argsort(lengths[pool.numpy()], kind="stable"))]
    first = int(torch.randint(bucket, (1,), generator=generator)) * batch_size
    return ordered[first : first + batch_size].tolist()


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


class EpochSampler:
    """Windows without replacement: each epoch draws every window of a split once, in a fresh
    random order. Window i is ids[i*T : i*T + T + 1], so the windows' targets cover the split
    exactly once per epoch. An epoch's order comes from the run's seed and the epoch number, so
    where the sampler stands (epoch, index) is all a checkpoint needs to carry on exactly."""

    def __init__(self, n_tokens: int, block_size: int, seed: int):
        self.block_size, self.seed = block_size, seed
        self.n_windows = (n_tokens - 1) // block_size
        self.epoch, self.index = 0, 0
        self._order: torch.Tensor | None = None

    def _current_order(self) -> torch.Tensor:
        if self._order is None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._order = torch.randperm(self.n_windows, generator=generator)
        return self._order

    def starts(self, count: int) -> np.ndarray:
        """The start offsets of the next `count` windows (crossing into the next epoch if needed)."""
        picked = []
        while count:
            take = min(count, self.n_windows - self.index)
            picked.append(self._current_order()[self.index : self.index + take])
            self.index, count = self.index + take, count - take
            if self.index == self.n_windows:
                self.epoch, self.index, self._order = self.epoch + 1, 0, None
        return (torch.cat(picked) * self.block_size).numpy()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self._order = state["epoch"], state["index"], None


def epoch_batch(stream: TokenStream, sampler: EpochSampler, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    windows = torch.from_numpy(stream.windows(sampler.starts(batch_size), sampler.block_size + 1))
    return windows[:, :-1], windows[:, 1:]


def sliding_windows(stream: TokenStream, block_size: int, stride: int, batch_size: int):
    """Score every target of a stream with as much context as the model can take: windows of up
    to T targets, each starting `stride` after the last; a window scores only the targets the
    previous one did not (the last `stride`, all of them in the first), the rest are context.
    Yields (x, y) with unscored targets set to -100 (ignored by the loss). stride = T is
    `sequential_batches`; a smaller stride costs T / stride times more compute for lower loss."""
    if not 0 < stride <= block_size:
        raise ValueError(f"stride must be in 1..{block_size}, got {stride}")
    n_targets, rows, scored = len(stream) - 1, [], 0
    for start in range(0, max(n_targets - block_size, 0) + stride, stride):
        end = min(start + block_size, n_targets)
        if end <= scored:
            break
        window = torch.from_numpy(stream.window(start, end - start + 1))
        y = window[1:].clone()
        y[: scored - start] = -100  # already scored by an earlier window: context only
        rows.append((window[:-1], y))
        scored = end
        if len(rows) == batch_size:
            yield _stack(rows)
            rows = []
    if rows:
        yield _stack(rows)


def _stack(rows):
    """Rows of possibly different lengths (only the last window can be short) as padded (B, T)."""
    width = max(len(x) for x, _ in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (xi, yi) in enumerate(rows):
        x[i, : len(xi)], y[i, : len(yi)] = xi, yi
    return x, y
