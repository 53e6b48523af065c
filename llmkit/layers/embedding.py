"""The input layer: token ids -> token vectors plus (for learned or sinusoidal positions) the
vectors of their positions, then dropout. (B, T) ids -> (B, T, C)."""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.layers.positions import LearnedPositions, SinusoidalPositions, check_length


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.block_size = config.block_size
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        kinds = {"learned": LearnedPositions, "sinusoidal": SinusoidalPositions}
        # rope acts inside attention and none adds nothing: no table here for either.
        self.wpe = kinds[config.positions](config.block_size, config.n_embd) if config.positions in kinds else None
        self.drop = nn.Dropout(config.dropout)

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """`positions` of the ids, (T,) or (B, T): 0 .. T - 1 unless continuing a cached sequence."""
        x = self.wte(idx)
        if self.wpe is not None:
            if positions is None:
                check_length(idx.shape[1], self.block_size)
                positions = torch.arange(idx.shape[1], device=idx.device)
            x = x + self.wpe(positions)
        return self.drop(x)
