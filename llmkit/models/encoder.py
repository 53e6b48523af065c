"""Encoder-only transformer (BERT-style): the GPT stack with bidirectional attention.

Every position sees the whole sequence, so the model cannot be trained to predict the next token
(it would see it); it is trained as a masked language model instead (llmkit/tasks/masked_lm.py):
some input tokens are replaced by [MASK] and the model predicts the originals. Its hidden states
averaged over the real tokens give one vector per sequence, which a classification head can use
(llmkit/models/classifier.py).
"""

from __future__ import annotations

import torch

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
