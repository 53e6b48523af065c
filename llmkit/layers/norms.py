"""Normalisation layers: LayerNorm (GPT-2, BERT) and RMSNorm (Llama and most recent models).

LayerNorm:  y = (x - mean(x)) / sqrt(var(x) + eps) * g + b      over the C channels of each token
RMSNorm:    y = x / sqrt(mean(x^2) + eps) * g                   no centring, no bias: cheaper, and
                                                                 trains as well in practice
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., dim)
        # Normalise in fp32 even under autocast: the mean of squares overflows fp16 easily.
        if x.dtype == self.weight.dtype:  # the same as below, as one fused kernel (which accumulates in fp32)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        rms = torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x.float() * rms).type_as(x) * self.weight


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.n_embd
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)
