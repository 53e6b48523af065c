"""A pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x)).

Normalising the input of each sublayer (pre-norm, as GPT-2) leaves the residual stream untouched
from embedding to output, which keeps gradients well scaled in deep stacks. With `cross=True` (the
seq2seq decoder) a cross-attention sublayer sits between the two, reading the encoder's output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmkit.config import ModelConfig
from llmkit.layers.attention import Attention
from llmkit.layers.mlp import MLP
from llmkit.layers.norms import make_norm

if TYPE_CHECKING:
    from llmkit.layers.kv_cache import LayerCache


class Block(nn.Module):
    def __init__(self, config: ModelConfig, causal: bool = True, cross: bool = False):
        super().__init__()
        self.norm_1 = make_norm(config)
        self.attn = Attention(config, causal)
        if cross:
            self.norm_cross = make_norm(config)
            self.cross_attn = Attention(config, causal=False, rotary=False)
        self.norm_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, cache: LayerCache | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); mask (B, T) marks x's real tokens, context (B, S, C) and
        context_mask (B, S) are the encoder's output and its real tokens; `cache` holds this
        layer's keys and values of earlier positions (generation, llmkit/layers/kv_cache.py);
        `positions` (B, T) those of x's tokens when rows are left-padded (default 0 .. T - 1)."""
        x = x + self.attn(self.norm_1(x), key_mask=mask, cache=cache, positions=positions)
        if context is not None:
            x = x + self.cross_attn(self.norm_cross(x), context, context_mask)
        return x + self.mlp(self.norm_2(x))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, checkpointing: bool, *args, **kwargs) -> torch.Tensor:
    """Apply the blocks in order. With `checkpointing` (train.grad_checkpointing), each block's
    inner activations are not kept for backward but recomputed from its input when needed: memory
    for activations falls from every sublayer's to one tensor per block, for about a third more
    compute."""
    for block in blocks:
        if checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, *args, use_reentrant=False, **kwargs)
        else:
            x = block(x, *args, **kwargs)
    return x
