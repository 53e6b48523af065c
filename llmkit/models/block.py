"""A pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x)).

Normalising the input of each sublayer (pre-norm, as GPT-2) leaves the residual stream untouched
from embedding to output, which keeps gradients well scaled in deep stacks.
"""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.models.attention import Attention
from llmkit.models.mlp import MLP


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x
