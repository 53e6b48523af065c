"""The input layer: token ids -> token vectors plus (for learned or sinusoidal positions) the
vectors of their positions, then dropout. (B, T) ids -> (B, T, C)."""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.models.positions import LearnedPositions, SinusoidalPositions, _check_length


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.block_size = config.block_size
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        kinds = {"learned": LearnedPositions, "sinusoidal": SinusoidalPositions}
        # rope acts inside attention and none adds nothing: no table here for either.
        self.wpe = kinds[config.positions](config.block_size, config.n_embd) if config.positions in kinds else None
        self.drop = nn.Dropout(config.dropout)

    def forward(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """`start` is the position of idx[:, 0] (non-zero when continuing a cached sequence)."""
        _check_length(start, idx.shape[1], self.block_size)
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(start, idx.shape[1])
        return self.drop(x)
