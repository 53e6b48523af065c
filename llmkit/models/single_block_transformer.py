"""Rung 4: the transformer block. Attention (communication between positions) is followed by an
MLP (computation within each position), each wrapped in a residual connection with a norm before
it; `n_layer` such blocks are stacked, and a final norm precedes the output head.

    ids (B, T) -> embeddings (B, T, C) -> n_layer x Block (B, T, C) -> norm -> head (B, T, vocab)

The same stack with `causal=False` is the encoder (llmkit/models/encoder.py).
"""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.layers.block import Block, run_blocks
from llmkit.layers.embedding import Embeddings
from llmkit.layers.kv_cache import KVCache
from llmkit.layers.norms import make_norm


def real_positions(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) positions counted from each row's first real token when some row is left-padded,
    so that a text reads the same with padding before it as after it; None (0 .. T - 1 for every
    row) when no row is. Padding columns get position 0: no real token attends to them."""
    if mask is None or bool(mask[:, 0].all()):
        return None
    return (mask.long().cumsum(dim=1) - 1).clamp_min(0)


class SingleBlockTransformer(nn.Module):
    causal = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = Embeddings(config)
        self.blocks = nn.ModuleList(Block(config, causal=self.causal) for _ in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        self.grad_checkpointing = False  # set by the trainer (train.grad_checkpointing)

    def hidden(self, idx: torch.Tensor, mask: torch.Tensor | None = None,
               cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, C) final hidden states; mask (B, T) is True at real tokens. With a
        `cache`, idx are the next T columns after those cached (llmkit/layers/kv_cache.py)."""
        if cache is None:
            positions = real_positions(mask)
            x = self.embed(idx, positions)
            return self.norm_f(run_blocks(self.blocks, x, self.grad_checkpointing, mask, positions=positions))
        x = self.continued(idx, cache.begin(idx.shape[1]), cache.layers)
        cache.end(idx.shape[1])
        return x

    def continued(self, idx: torch.Tensor, positions: torch.Tensor, layers: list, through=None) -> torch.Tensor:
        """hidden() over new columns whose keys and values join `layers` (one LayerCache per
        block), the cache's bookkeeping left to the caller. `through(block, x, layer)`, if given,
        runs each block instead of calling it: a compiled block (llmkit/inference/compiled.py)."""
        x = self.embed(idx, positions)
        for block, layer in zip(self.blocks, layers):
            x = block(x, cache=layer) if through is None else through(block, x, layer)
        return self.norm_f(x)

    def forward(self, idx: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, only: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, vocab) logits; with `only` (B, T) True where a target is scored, (N, vocab) for
        just those N positions: instruction tuning scores the responses alone, and over a real
        model's vocabulary the head is a fifth of a step (SmolLM2: 49,152 x 576 per position)."""
        h = self.hidden(idx, mask, cache)
        return self.logits(h if only is None else h[only])

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., C) final hidden states -> (..., vocab) logits, soft-capped when model.logit_softcap
        is set: cap * tanh(z / cap) is z near zero and never beyond +-cap, so no logit can run away."""
        z = self.lm_head(h)
        cap = self.config.logit_softcap
        return z if cap is None else cap * torch.tanh(z / cap)
