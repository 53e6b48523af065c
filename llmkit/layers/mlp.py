"""The position-wise feed-forward network: widen each token's vector, apply a non-linearity,
project back. (B, T, C) -> (B, T, H) -> (B, T, C), H = mlp_hidden (4C by default).

- gelu:   proj(gelu(fc(x))), GPT-2's tanh approximation (so GPT-2 weights load unchanged).
- swiglu: proj(silu(a) * b) with [a, b] = fc(x) (Llama): a gate chooses what passes; fc is 2H wide.
- relu2:  proj(relu(fc(x))^2) (Primer, modded-nanoGPT): cheap, and sparse activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.config import ModelConfig


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind, hidden = config.mlp, config.hidden
        width = 2 * hidden if self.kind == "swiglu" else hidden
        self.fc = nn.Linear(config.n_embd, width, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.kind == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h, approximate="tanh")
        return self.dropout(self.proj(h))
