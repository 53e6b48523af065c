"""A sequence classifier: a language model's body with a small head that scores classes.

    ids (B, T), mask (B, T) -> base.hidden (B, T, C) -> one vector per sequence (B, C) -> head -> (B, n_classes)

Which vector stands for the sequence depends on the base: a causal decoder's last real token is
the only position that has seen the whole message, so its hidden state is used (as in
LLMs-from-scratch, chapter 6); an encoder's positions all see everything, so they are averaged.
The base keeps its language-model head, unused here, so that a pretrained run's weights load into
`base` unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig


class SequenceClassifier(nn.Module):
    def __init__(self, config: ModelConfig, base: nn.Module):
        """`base`: the language model the config names, without the classes (build_model makes it)."""
        super().__init__()
        self.config = config
        self.base = base
        self.head = nn.Linear(config.n_embd, config.n_classes)

    def forward(self, idx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """mask (B, T) is True at real tokens; rows may be padded on the right or on the left."""
        if not self.base.causal:
            return self.head(self.base.pool(idx, mask))  # (B, C): the mean over real tokens
        h = self.base.hidden(idx, mask)  # (B, T, C)
        B, T = idx.shape
        # The last real token of each row: where the running count of real tokens first peaks.
        last = mask.long().cumsum(dim=1).argmax(dim=1) if mask is not None else torch.full((B,), T - 1, device=idx.device)
        return self.head(h[torch.arange(B, device=h.device), last])
