"""LoRA: finetune a frozen linear layer through a low-rank update (Hu et al., 2021).

A linear layer y = x W^T + b, W (out, in), is finetuned as

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A (r, in), B (out, r)

with W and b frozen. Only A and B train: r * (in + out) numbers instead of in * out (for GPT-2's
768 x 768 query matrix and r = 8, 12,288 instead of 589,824). B starts at zero, so finetuning
starts from exactly the base model; A starts random, so B's gradient is not zero. alpha / r keeps
the update's scale the same when r changes.

Merging folds the update into the weight, W' = W + (alpha / r) B A: one plain linear layer again,
as fast as the base and exported as ordinary weights (`merge_lora`).

`LoRALinear` keeps the replaced layer's `weight` and `bias` under their own names, so a model with
adapters has the base model's parameter names plus `lora_a` / `lora_b`: base checkpoints load into
it, and merged weights load into a plain model.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.config import LoRAConfig
from llmkit.errors import LlmkitError

# A linear layer inside a block: `blocks.3.attn.q` (gpt), `base.blocks.0.mlp.fc` (a classifier),
# `decoder.blocks.1.cross_attn.kv` (seq2seq). Group 1 is its path inside the block (`attn.q`).
IN_BLOCK = re.compile(r"(?:^|\.)blocks\.\d+\.(.+)$")


class LoRALinear(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias  # the base layer's own parameters, frozen
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        out_features, in_features = linear.weight.shape
        factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's own initialisation
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out): the frozen layer plus the scaled low-rank path through r."""
        update = F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b)  # (..., r) -> (..., out)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def merged(self) -> nn.Linear:
        """The plain linear layer with W + (alpha / r) B A."""
        out_features, in_features = self.weight.shape
        linear = nn.Linear(in_features, out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def _targets(model: nn.Module, modules: str) -> list[str]:
    """Names of the linear layers whose path inside their block is one of `modules` (comma-separated)
    or lies under one (`attn` covers attn.q, attn.kv and attn.proj)."""
    wanted = [m.strip() for m in modules.split(",") if m.strip()]
    linears = {name: IN_BLOCK.search(name) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    inside = {name: match.group(1) for name, match in linears.items() if match}
    for pattern in wanted:
        if not any(path == pattern or path.startswith(pattern + ".") for path in inside.values()):
            known = sorted(set(inside.values())) or ["none: this model has no transformer blocks"]
            raise LlmkitError(f"train.lora.modules: '{pattern}' matches no linear layer of the blocks "
                              f"(they have: {', '.join(known)})")
    return [name for name, path in inside.items()
            if any(path == p or path.startswith(p + ".") for p in wanted)]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def add_lora(model: nn.Module, cfg: LoRAConfig) -> int:
    """Freeze every parameter of `model` and wrap the chosen linear layers with adapters, which
    alone train. Returns how many layers got one."""
    model.requires_grad_(False)
    names = _targets(model, cfg.modules)
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), cfg.rank, cfg.alpha, cfg.dropout))
    return len(names)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight (in place); the model is a plain one afterwards."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _replace(model, name, module.merged())
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())
