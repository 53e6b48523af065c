"""Causal multi-head self-attention.

Shapes (used across llmkit): B batch, T time (tokens), C channels (n_embd), H heads, D head dim,
with C = H * D. Each head attends over the T positions with its own D-dimensional queries, keys and
values; the heads' outputs are concatenated back to C channels and mixed by an output projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.config import ModelConfig


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        # One matrix computes queries, keys and values together: (B, T, C) -> (B, T, 3C).
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.proj_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, H, T, D): each head becomes a batch dimension for the matmuls.
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        # softmax(q k^T / sqrt(D) + causal mask) v, by PyTorch's fused kernel (flash attention
        # on GPUs); the mask keeps position t from seeing positions after t.
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.proj_dropout(self.proj(y))
