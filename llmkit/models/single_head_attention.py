"""Rung 2: the bigram model plus one head of causal self-attention.

    ids (B, T) -> token + position embeddings (B, T, C) -> one attention head over the
    positions <= t (B, T, C) -> linear head -> logits (B, T, vocab)

Each position can now gather information from the tokens before it, weighted by how well their
keys match its query. There is no residual connection, norm or MLP yet: those come in later rungs.
"""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.layers.attention import Attention
from llmkit.layers.embedding import Embeddings


class SingleHeadAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = Embeddings(config)
        self.attn = Attention(config, causal=True, n_head=self.heads(config))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)

    @staticmethod
    def heads(config: ModelConfig) -> int:
        return 1  # the single head is C wide: D = C

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) ids -> (B, T, vocab) logits
        return self.lm_head(self.attn(self.embed(idx)))
