"""Choosing the next token from a language model's logits.

Each step turns the model's logits for the next position into a choice:
1. repetition penalty (CTRL): the logit of every token already in the sequence is divided by the
   penalty when positive, multiplied when negative, so repeats become less likely;
2. temperature: logits / T; below 1 sharpens the distribution, above 1 flattens it; 0 is greedy
   (always the most likely token);
3. filters, each removing tokens (logit -inf) before sampling:
   top-k keeps the k most likely; top-p (nucleus) keeps the smallest set whose probabilities sum
   to at least p; min-p keeps tokens at least min_p times as likely as the most likely one;
4. softmax and one draw: a uniform number u in [0, 1) per row, from the row's generator, picks
   the first token whose cumulative probability passes u (inverse transform sampling). That is
   one random number per row, where torch.multinomial draws one per token of the vocabulary
   (1.2 ms a row for SmolLM2's 49,152 tokens on one core, against 0.1 ms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmkit.errors import LlmkitError

# Defaults for sampling (the CLI's and the sample printed after training): nanoGPT's choices.
TEMPERATURE, TOP_K = 0.8, 200


@dataclass(frozen=True)
class Sampling:
    temperature: float = TEMPERATURE
    top_k: int | None = TOP_K
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        numbers = (self.temperature, self.repetition_penalty, self.top_p or 0.0, self.min_p or 0.0)
        if not all(math.isfinite(x) for x in numbers) or self.temperature > 1e4 or self.repetition_penalty > 1e4:
            raise LlmkitError("temperature, top-p, min-p and the repetition penalty must be finite numbers "
                              "(temperature and penalty at most 10,000)")
        if self.temperature < 0 or (self.top_k is not None and self.top_k < 1) or self.repetition_penalty <= 0:
            raise LlmkitError("temperature must be >= 0, top-k >= 1 and the repetition penalty > 0")
        for name in ("top_p", "min_p"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise LlmkitError(f"{name.replace('_', '-')} must be in (0, 1], got {value}")


def penalize_repeats(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    """(B, V) logits, (B, t) ids already in each sequence."""
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    seen = logits.gather(1, previous)
    return logits.scatter(1, previous, torch.where(seen > 0, seen / penalty, seen * penalty))


def filter_logits(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """(B, V) temperature-scaled logits with -inf outside the top-k, top-p and min-p sets."""
    if s.top_k is not None and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p is not None and s.top_p < 1.0:
        probs, order = torch.softmax(logits.float(), dim=-1).sort(dim=-1, descending=True)
        # Drop a token when the tokens ranked above it already reach p: the most likely one stays.
        before = probs.cumsum(dim=-1) - probs
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(1, order, before >= s.top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    if s.min_p is not None:
        probs = torch.softmax(logits.float(), dim=-1)
        logits = logits.masked_fill(probs < s.min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None,
               previous: torch.Tensor | None = None, vocab_size: int | None = None) -> torch.Tensor:
    """(B, V) logits -> (B, 1) chosen ids. `vocab_size` masks (in place) the ids the tokenizer
    cannot decode: a model's vocabulary may be padded beyond the tokenizer's."""
    return next_tokens(logits, [Rows(s, generator, logits.shape[0], previous)], vocab_size)


@dataclass(frozen=True)
class Rows:
    """Consecutive rows of a batch's logits that sample alike: their settings, their generator
    (one random number per row per step), how many, and their ids so far (only with a
    repetition penalty)."""

    sampling: Sampling
    generator: torch.Generator | None
    n: int
    previous: torch.Tensor | None = None


def next_tokens(logits: torch.Tensor, groups: list[Rows], vocab_size: int | None = None) -> torch.Tensor:
    """(B, V) logits of consecutive groups of rows -> (B, 1) ids, each group's as `next_token`
    would choose them alone. Groups with the same settings (and no penalty) are filtered,
    softmaxed and drawn as one batch: a server's step samples all its requests in a few
    operations, each still drawing from its own generator."""
    if vocab_size is not None and vocab_size < logits.shape[-1]:
        logits[:, vocab_size:] = float("-inf")
    starts = [0]
    for g in groups:
        starts.append(starts[-1] + g.n)
    together: dict[Sampling, list[int]] = {}  # settings -> the groups that share them
    for i, g in enumerate(groups):
        penalised = g.previous is not None and g.sampling.repetition_penalty != 1.0
        together.setdefault(g.sampling if not penalised else i, []).append(i)  # a penalty: alone
    if len(together) == 1 and len(groups) > 0:
        return _choose(logits, groups, groups[0].sampling)
    chosen = torch.empty(logits.shape[0], 1, dtype=torch.long, device=logits.device)
    for members in together.values():
        rows = torch.cat([torch.arange(starts[i], starts[i + 1], device=logits.device) for i in members])
        chosen[rows] = _choose(logits[rows], [groups[i] for i in members], groups[members[0]].sampling)
    return chosen


def _choose(logits: torch.Tensor, groups: list[Rows], s: Sampling) -> torch.Tensor:
    """(b, V) logits of `groups` (all sampling with `s`) -> (b, 1) ids."""
    if len(groups) == 1 and groups[0].previous is not None:
        logits = penalize_repeats(logits, groups[0].previous, s.repetition_penalty)
    if s.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(filter_logits(logits / s.temperature, s).float(), dim=-1)
    u = [torch.rand(g.n, 1, dtype=torch.float64, generator=g.generator, device=logits.device) for g in groups]
    return draw(probs, u[0] if len(u) == 1 else torch.cat(u))


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, V) probabilities, (B, 1) uniform numbers in [0, 1) -> (B, 1) ids: each row's first
    token whose cumulative probability passes its number."""
    cdf = probs.double().cumsum(dim=-1)  # (B, V); float64, so the sum of 49,152 terms stays exact enough
    total = cdf[:, -1:]  # (B, 1): 1 up to rounding
    # u * total < total, so some token's cumulative probability passes it; a token of probability 0
    # never does first (its cdf equals the one before it), with right=True.
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True)
