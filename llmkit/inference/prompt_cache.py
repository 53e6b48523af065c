"""The prompt cache: recent prompts' keys and values, kept so that a prompt starting the same way
computes only the rest.

A causal model's keys and values at position t depend on tokens 0 .. t alone, so two prompts that
share their first m tokens have the same keys and values at those m positions. Prompts share a lot:
every chat request through SmolLM2's template starts with the same 24 tokens (its system prompt),
an application's requests start with its own instructions, and each turn of a conversation repeats
every turn before it. A server that keeps the keys and values of recent prompts copies the longest
shared part into a new prompt's KV cache and runs the model only over the rest. llama.cpp's server
does this per slot (`cache_prompt`); vLLM keeps blocks of 16 tokens by their hash (automatic prefix
caching).

Here the cache holds whole prompts, each as one (n_layer, 2, K, n, D) tensor of keys and values
(K key/value heads, D head dim; `KVCache.row`), within a budget of bytes and at most MAX_PROMPTS of
them; the least recently used goes first. `longest(ids)` finds the prompt sharing the most leading
tokens with ids, and reuses at most len(ids) - 1 of them: the model must run the last token at
least, for the next one's logits.

Copied keys and values equal computed ones only up to float rounding (a matrix product's sums are
ordered by the shape of its batch), as for a batch against a row alone: a sampled token can differ
only where two tokens' probabilities meet within that rounding. That rounding is larger in int8
and int4, whose kernels round their inputs to bfloat16: scripts/bench_prompt_cache.py found 2 of
12 greedy SmolLM2 answers changed in int4, none in fp32.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only in annotations: the CLI reads DEFAULT_MB without importing torch
    import torch

DEFAULT_MB = 128  # `llmkit serve --prompt-cache`: SmolLM2 fp32 keeps 45 KB per token, so about 2,900 tokens
MAX_PROMPTS = 64  # and at most this many prompts: each new prompt is compared with every one kept


def shared(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids a and b have in common."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    """Keys and values of recent prompts, up to `budget` bytes (0: none kept)."""

    def __init__(self, budget: int):
        if budget < 0:
            raise ValueError(f"a prompt cache's budget is 0 bytes or more, got {budget}")
        self.budget, self.bytes = budget, 0
        self.reused = 0  # prompt tokens whose keys and values were copied, not computed (for tests and benchmarks)
        self._prompts: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()  # oldest use first

    def __len__(self) -> int:
        return len(self._prompts)

    def longest(self, ids: Sequence[int]) -> tuple[torch.Tensor | None, int]:
        """(kv, m): the kept prompt sharing the most leading ids with `ids`, and how many of its
        columns to reuse, m <= len(ids) - 1; (None, 0) when none shares any."""
        best, length = None, 0
        for prompt in self._prompts:
            if (m := shared(prompt, ids)) > length:
                best, length = prompt, m
        if best is None or (length := min(length, len(ids) - 1)) == 0:
            return None, 0
        self._prompts.move_to_end(best)
        return self._prompts[best], length

    def holds(self, ids: Sequence[int]) -> bool:
        """Whether a kept prompt starts with all of `ids` (keeping ids would add nothing)."""
        ids = tuple(ids)
        return any(len(prompt) >= len(ids) and prompt[: len(ids)] == ids for prompt in self._prompts)

    def add(self, ids: Sequence[int], kv: torch.Tensor) -> None:
        """Keep `kv`, the (n_layer, 2, K, len(ids), D) keys and values of prompt `ids`, in place of
        kept prompts it starts with; the least recently used go until the bounds hold."""
        ids, size = tuple(ids), kv.numel() * kv.element_size()
        if size > self.budget or self.holds(ids):
            return
        for prompt in [p for p in self._prompts if ids[: len(p)] == p]:
            self._drop(prompt)
        self._prompts[ids] = kv
        self.bytes += size
        while self.bytes > self.budget or len(self._prompts) > MAX_PROMPTS:
            self._drop(next(iter(self._prompts)))

    def clear(self) -> None:
        for prompt in list(self._prompts):
            self._drop(prompt)

    def _drop(self, prompt: tuple[int, ...]) -> None:
        kv = self._prompts.pop(prompt)
        self.bytes -= kv.numel() * kv.element_size()
