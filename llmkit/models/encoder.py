"""Encoder-only transformer (BERT-style): the GPT stack with bidirectional attention.

Every position sees the whole sequence, so the model cannot be trained to predict the next token
(it would see it); it is trained as a masked language model instead (llmkit/tasks/masked_lm.py):
some input tokens are replaced by [MASK] and the model predicts the originals. Its hidden states
pooled over the real tokens give one vector per sequence, which a classification head can use.
"""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig

from llmkit.models.gpt import GPT


class Encoder(GPT):
    causal = False

    def pool(self, idx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, C): the mean of the final hidden states over the real tokens."""
        h = self.hidden(idx, mask)
        if mask is None:
            return h.mean(dim=1)
        weights = mask.to(h.dtype)[..., None]  # (B, T, 1)
        return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class PooledClassifier(nn.Module):
    """An encoder with a classification head on its pooled output: (B, T) ids -> (B, n_classes)
    logits. Finetuning starts it from a masked-LM run's encoder weights."""

    def __init__(self, config: ModelConfig, n_classes: int):
        super().__init__()
        self.encoder = Encoder(config)
        self.head = nn.Linear(config.n_embd, n_classes)

    def forward(self, idx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder.pool(idx, mask))
