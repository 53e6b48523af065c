"""Generating text from a language model, one token at a time, and the ways to pick each token.

Each step turns the model's logits for the next position into a choice:
1. repetition penalty (CTRL): the logit of every token already in the sequence is divided by the
   penalty when positive, multiplied when negative, so repeats become less likely;
2. temperature: logits / T; below 1 sharpens the distribution, above 1 flattens it; 0 is greedy
   (always the most likely token);
3. filters, each removing tokens (logit -inf) before sampling:
   top-k keeps the k most likely; top-p (nucleus) keeps the smallest set whose probabilities sum
   to at least p; min-p keeps tokens at least min_p times as likely as the most likely one;
4. softmax and one draw.
Beam search (`beam_search`) instead keeps the best few whole continuations.

Decoders with blocks (single_block_transformer, gpt) generate with a KV cache (llmkit/kv_cache.py):
the prompt is run once, then each step feeds one new column. Past the context length the model
cannot see everything any more: with context="slide" the last half of the context is run again as
a new prompt and generation goes on; with "stop" it ends there (the reason is reported).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.kv_cache import KVCache
from llmkit.tokenizer import Tokenizer

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
               previous: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) logits -> (B, 1) chosen ids."""
    if previous is not None:
        logits = penalize_repeats(logits, previous, s.repetition_penalty)
    if s.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(filter_logits(logits / s.temperature, s).float(), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def caches(model: nn.Module) -> bool:
    """Whether the model takes a KV cache (the decoders built from blocks)."""
    from llmkit.models.single_block_transformer import SingleBlockTransformer

    return isinstance(model, SingleBlockTransformer)


class ContextFull(Exception):
    """Generation reached the context length with context="stop"."""


@torch.no_grad()
def generate_batch(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, sampling: Sampling = Sampling(),
                   generator: torch.Generator | None = None, vocab_size: int | None = None,
                   pad: torch.Tensor | None = None, use_cache: bool = True,
                   context: str = "slide") -> Iterator[torch.Tensor]:
    """Yield (B,) new ids per step, continuing the rows of idx (B, T0). `vocab_size` masks ids
    the tokenizer cannot decode (a model's vocabulary may be padded beyond the tokenizer's).
    Rows shorter than T0 are left-padded, `pad[b]` columns each."""
    block = model.config.block_size
    cached = caches(model)
    padded = pad is not None and bool(pad.any())
    tokens, cache = idx, None
    for _ in range(max_new_tokens):
        if cached and (cache is None or cache.length == block or not use_cache):
            if cache is not None and cache.length == block and context == "stop":
                raise ContextFull(f"reached the context length ({block} tokens)")
            # (Re)start: the prompt, or after a full context its last half, runs as a prompt.
            keep = min(tokens.shape[1], block if cache is None or not use_cache else block // 2)
            dropped = tokens.shape[1] - keep
            rows_pad = None if pad is None else (pad - dropped).clamp_min(0)
            cache = KVCache.for_model(model, tokens.shape[0], block, rows_pad)
            logits = model.lm_head(model.hidden(tokens[:, -keep:], cache=cache)[:, -1])
        elif cached:
            logits = model.lm_head(model.hidden(tokens[:, -1:], cache=cache)[:, -1])
        else:
            if tokens.shape[1] > block and context == "stop":
                raise ContextFull(f"reached the context length ({block} tokens)")
            if padded:  # no key mask in the small rungs: each row without its padding
                logits = torch.cat([model(tokens[b : b + 1, int(pad[b]) :][:, -block:])[:, -1]
                                    for b in range(tokens.shape[0])])
            else:
                logits = model(tokens[:, -block:])[:, -1]
        if vocab_size is not None and vocab_size < logits.shape[-1]:
            logits[:, vocab_size:] = float("-inf")
        previous = tokens if sampling.repetition_penalty != 1.0 else None
        token = next_token(logits, sampling, generator, previous)  # (B, 1)
        tokens = torch.cat([tokens, token], dim=1)
        yield token[:, 0]


def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None,
             vocab_size: int | None = None, **options) -> Iterator[int]:
    """Yield `max_new_tokens` ids continuing the single row idx (1, T0)."""
    sampling = Sampling(temperature, top_k, options.pop("top_p", None), options.pop("min_p", None),
                        options.pop("repetition_penalty", 1.0))
    for column in generate_batch(model, idx, max_new_tokens, sampling, generator, vocab_size, **options):
        yield int(column[0])


def prompt_ids(tokenizer: Tokenizer, text: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The prompt as a (1, T0) tensor; an empty prompt starts from a newline (or id 0 when the
    vocabulary has no newline), since the model needs at least one token to condition on."""
    ids = tokenizer.encode(text) if text else []
    if len(ids) == 0:
        try:
            ids = tokenizer.encode("\n")
        except LlmkitError:
            ids = [0]
    return torch.as_tensor(np.asarray(ids, dtype=np.int64), dtype=torch.long, device=device)[None]


def batch_prompts(tokenizer: Tokenizer, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded to one length: (B, T0) ids and (B,) padding columns per row."""
    rows = [prompt_ids(tokenizer, t)[0] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
    return ids.to(device), torch.tensor([width - len(r) for r in rows], device=device)


class StreamDecoder:
    """Turns ids into text as they arrive. It holds back a partial character (byte-level
    tokenizers can split one across tokens) and any tail that could be the start of a stop
    string; when a stop string appears, the text ends just before it and `stopped` is set."""

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...] = ()):
        self.tokenizer, self.stops = tokenizer, tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.emitted, self.stopped = 0, False

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids)
        found = [i for i in (text.find(s, max(0, self.emitted - len(s))) for s in self.stops) if i >= 0]
        if found:
            self.stopped = True
            return self._emit(text, min(found))
        if text.endswith("\ufffd"):
            return ""
        hold = max((len(s) - 1 for s in self.stops), default=0)
        return self._emit(text, len(text) - hold)

    def flush(self) -> str:
        """What is still held back, at the end of generation (nothing after a stop string)."""
        return "" if self.stopped else self._emit(self.tokenizer.decode(self.ids), None)

    def _emit(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        if end <= self.emitted:
            return ""
        new, self.emitted = text[self.emitted : end], end
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
