"""Decoding: a language model continued one token at a time, as a stream of token ids.

Decoders with blocks (single_block_transformer, gpt) decode with a KV cache (llmkit/layers/kv_cache.py):
the prompt is run once, then each step feeds one new column. Past the context length the model
cannot see everything any more: with context="slide" the last half of the context is run again as
a new prompt and generation goes on; with "stop" it ends there (`ContextFull`).

This is the token level of the one generation engine; llmkit/inference/generation.py turns its ids
into text, stop strings and stop reasons.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.inference.sampling import Sampling, next_token
from llmkit.layers.kv_cache import KVCache


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
