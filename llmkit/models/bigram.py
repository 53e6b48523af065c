"""The bigram model: the next token depends only on the current one.

Each token id looks up an n_embd-vector, and a linear head turns it into logits over the
vocabulary. No token sees any other, so the context length only sets how many positions are
trained at once. It is the baseline every later rung must beat.
"""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig


class Bigram(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) ids -> (B, T, vocab) logits
        return self.lm_head(self.wte(idx))
