"""Decoding: a language model continued one token at a time, as a stream of token ids.

Decoders with blocks (single_block_transformer, gpt) decode with a KV cache (llmkit/layers/kv_cache.py):
the prompt is run once, then each step feeds one new column. Past the context length the model
cannot see everything any more: with context="slide" the last half of the context is run again as
a new prompt and generation goes on; with "stop" it ends there (`ContextFull`).

This is the token level of the one generation engine; llmkit/inference/generation.py turns its ids
into text, stop strings and stop reasons.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.inference.compiled import cache_type, compiled, compiled_logits
from llmkit.inference.layout import prefer_layout
from llmkit.inference.sampling import Sampling, next_token
from llmkit.layers.kv_cache import FixedKVCache, KVCache


def caches(model: nn.Module) -> bool:
    """Whether the model takes a KV cache (the decoders built from blocks)."""
    from llmkit.models.single_block_transformer import SingleBlockTransformer

    return isinstance(model, SingleBlockTransformer)


def new_cache(model: nn.Module, batch: int, max_len: int, pad: torch.Tensor | None = None) -> KVCache:
    """An empty KV cache for `batch` rows of up to `max_len` columns, of the kind the model
    decodes with (fixed-size when its step is compiled, llmkit/inference/compiled.py)."""
    return cache_type(model).for_model(model, batch, max_len, pad)


def next_logits(model: nn.Module, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """(B, T) ids continuing what `cache` holds -> (B, V) logits for the token after them; one new
    column through the compiled step when there is one."""
    if ids.shape[1] == 1 and compiled(model) and isinstance(cache, FixedKVCache):
        return compiled_logits(model, ids, cache)
    return model.logits(model.hidden(ids, cache=cache)[:, -1])


class ContextFull(Exception):
    """Every row reached the context length, with context="stop"."""


CONTEXT_FULL = -1  # yielded for a row whose context is full (context="stop") while others go on


def _unpadded_history(tokens: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """(B, t) ids for the repetition penalty, with each row's left padding replaced by its own
    first real id: the padding id is not something the row generated, and penalising a token the
    row does hold twice changes nothing (the penalty reads the logits once, then writes)."""
    if pad is None or not bool(pad.any()):
        return tokens
    columns = torch.arange(tokens.shape[1], device=tokens.device)[None]
    first = tokens.gather(1, pad[:, None].clamp_max(tokens.shape[1] - 1))  # (B, 1)
    return torch.where(columns < pad[:, None], first, tokens)


@torch.no_grad()
def generate_batch(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, sampling: Sampling = Sampling(),
                   generator: torch.Generator | None = None, vocab_size: int | None = None,
                   pad: torch.Tensor | None = None, use_cache: bool = True,
                   context: str = "slide") -> Iterator[torch.Tensor]:
    """Yield (B,) new ids per step, continuing the rows of idx (B, T0). `vocab_size` masks ids
    the tokenizer cannot decode (a model's vocabulary may be padded beyond the tokenizer's).
    Rows shorter than T0 are left-padded, `pad[b]` columns each; every row has its own context of
    block_size tokens, so a short prompt batched with a long one gets as far as alone. With
    context="stop" a row whose context is full yields CONTEXT_FULL while the others go on, and
    ContextFull is raised when none can go on."""
    block = model.config.block_size
    cached, stop = caches(model), context == "stop"
    prefer_layout(model, idx.shape[0])
    pad = pad if pad is not None and bool(pad.any()) else None
    pad0 = pad if pad is not None else torch.zeros(idx.shape[0], dtype=torch.long, device=idx.device)
    # Stopping, the cache makes room for the longest row's context plus the others' padding.
    room = block + (int(pad0.max()) if stop else 0)
    tokens, cache = idx, None
    full = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for step in range(max_new_tokens):
        if stop and step:  # a row takes one more token while its real ids fit the context
            full = tokens.shape[1] - pad0 > block
            if bool(full.all()):
                raise ContextFull(f"reached the context length ({block} tokens)")
        if cached and (cache is None or cache.length == cache.max_len or not use_cache):
            sliding = cache is not None and use_cache  # a full context: go on from its last half
            keep = min(tokens.shape[1], block // 2 if sliding else room)
            window_pad = (pad0 - (tokens.shape[1] - keep)).clamp_min(0)
            size = min(room, keep + max_new_tokens - step) if use_cache else keep
            cache = new_cache(model, tokens.shape[0], size, window_pad if bool(window_pad.any()) else None)
            logits = next_logits(model, tokens[:, -keep:], cache)
        elif cached:
            logits = next_logits(model, tokens[:, -1:], cache)
        elif pad is not None:  # no key mask in the small rungs: each row alone, without its padding
            logits = torch.cat([model(tokens[b : b + 1, int(pad0[b]) :][:, -block:])[:, -1]
                                for b in range(tokens.shape[0])])
        else:
            logits = model(tokens[:, -block:])[:, -1]
        previous = _unpadded_history(tokens, pad) if sampling.repetition_penalty != 1.0 else None
        token = next_token(logits, sampling, generator, previous, vocab_size)  # (B, 1)
        token = token.masked_fill(full[:, None], 0)  # a full row is fed a placeholder, never read
        tokens = torch.cat([tokens, token], dim=1)
        yield token[:, 0].masked_fill(full, CONTEXT_FULL)


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
    return left_padded([prompt_ids(tokenizer, t)[0].tolist() for t in texts], device)


def left_padded(rows: list[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids right-aligned in one (B, T0) tensor, with 0 in front of the shorter ones, and
    (B,) how many columns of each row are that padding (a KV cache masks them)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + list(r) for r in rows], dtype=torch.long, device=device)
    return ids, torch.tensor([width - len(r) for r in rows], device=device)
