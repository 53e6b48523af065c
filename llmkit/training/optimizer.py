"""The optimizer: AdamW, with weight decay where it helps."""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import TrainConfig


def make_optimizer(model: nn.Module, train: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only: decaying biases and norm gains
    towards zero would only fight the normalisation."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2),
                             fused=device.type == "cuda")
