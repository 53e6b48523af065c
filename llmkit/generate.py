"""Sampling text from a language model, one token at a time.

At each step the model sees the last `block_size` tokens, its logits for the next token are divided
by the temperature (below 1: sharper, above 1: flatter; 0 means always the most likely token),
optionally cut to the k most likely, turned into probabilities by softmax and sampled.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.tokenizer import Tokenizer

# Defaults for sampling (the CLI's and the sample printed after training): nanoGPT's choices.
TEMPERATURE, TOP_K = 0.8, 200


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
               generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B, 1) sampled ids."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None,
             vocab_size: int | None = None) -> Iterator[int]:
    """Yield `max_new_tokens` ids continuing `idx` (1, T0). `vocab_size` masks ids the tokenizer
    cannot decode (a model's vocabulary may be padded beyond the tokenizer's)."""
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        logits = model(idx[:, -block_size:])[:, -1, :]  # (1, V)
        if vocab_size is not None and vocab_size < logits.shape[-1]:
            logits[:, vocab_size:] = float("-inf")
        token = next_token(logits, temperature, top_k, generator)
        idx = torch.cat([idx, token], dim=1)
        yield int(token)


def prompt_ids(tokenizer: Tokenizer, text: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The prompt as a (1, T0) tensor; an empty prompt starts from a newline (or id 0 when the
    vocabulary has no newline), since the model needs at least one token to condition on."""
    ids = tokenizer.encode(text) if text else []
    if len(ids) == 0:
        try:
            ids = tokenizer.encode("\n")
        except LlmkitError:
            ids = [0]
    return torch.as_tensor(np.asarray(ids), dtype=torch.long, device=device)[None]


class StreamDecoder:
    """Turns ids into text as they arrive, holding back a partial character (for byte-level
    tokenizers, where one character can span several tokens)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[self.emitted :], len(text)
        return new


@torch.no_grad()
def beam_search(step, start: list[int], beam: int, max_new_tokens: int, eos: int | None,
                length_penalty: float = 1.0) -> list[int]:
    """The most likely continuation of `start` found by keeping the `beam` best prefixes.

    `step(prefixes)` maps (N, t) ids to (N, V) log-probabilities of the next token, so the same
    search serves decoders and the seq2seq decoder. A finished hypothesis (ending in `eos`, or at
    `max_new_tokens`) is scored sum(log p) / length ** length_penalty: 0 ranks by total
    probability (favouring short outputs), 1 by mean per-token log-probability. Returns the new ids
    (with `eos` when it ended there).
    """
    beams = [(0.0, list(start))]  # (sum of log-probs of the new tokens, ids)
    finished: list[tuple[float, list[int]]] = []
    n0 = len(start)

    def normalized(score: float, ids: list[int]) -> float:
        return score / max(1, len(ids) - n0) ** length_penalty

    for t in range(max_new_tokens):
        logp = step(torch.tensor([ids for _, ids in beams]))  # (N, V)
        total = torch.tensor([s for s, _ in beams])[:, None] + logp.float().cpu()
        vocab = total.shape[1]
        top = total.flatten().topk(min(2 * beam, total.numel()))
        live = []
        for score, index in zip(top.values.tolist(), top.indices.tolist()):
            ids = beams[index // vocab][1] + [index % vocab]
            if (eos is not None and ids[-1] == eos) or t == max_new_tokens - 1:
                finished.append((normalized(score, ids), ids))
            elif len(live) < beam:
                live.append((score, ids))
        beams = live
        if not beams:
            break
        # Log-probs are <= 0, so a live prefix can only lose score; its best possible final value
        # is its score now spread over the longest length. Stop when no live prefix can win.
        best_possible = max(s for s, _ in beams) / max(1, max_new_tokens) ** length_penalty
        if finished and max(f for f, _ in finished) >= best_possible:
            break
    if not finished:
        finished = [(normalized(s, ids), ids) for s, ids in beams]
    return max(finished, key=lambda f: f[0])[1][n0:]
