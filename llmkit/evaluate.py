"""Measuring a language model: mean cross-entropy per token, perplexity, bits per character.

loss = -mean log p(next token) in nats; perplexity = exp(loss), the number of equally likely
choices the model is as unsure as; bits per character = total nats / ln 2 / characters, which
compares models whose tokenizers cut the text differently.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.batches import random_batch, sequential_batches
from llmkit.shards import TokenStream
from llmkit.tokenizer import Tokenizer


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of (B, T, V) logits against (B, T) target ids."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)


@torch.no_grad()
def estimate_loss(model: nn.Module, stream: TokenStream, batch_size: int, block_size: int,
                  steps: int, device: torch.device, seed: int) -> float:
    """Mean loss over `steps` random batches; the same batches every call (fixed seed), so the
    periodic estimates during training are comparable with each other."""
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    total = 0.0
    for _ in range(steps):
        x, y = random_batch(stream, batch_size, block_size, generator)
        total += lm_loss(model(x.to(device)), y.to(device)).item()
    model.train(was_training)
    return total / steps


@torch.no_grad()
def evaluate_split(model: nn.Module, stream: TokenStream, tokenizer: Tokenizer, block_size: int,
                   batch_size: int, device: torch.device) -> dict:
    """Loss over every token of a split, in consecutive windows of the model's context."""
    model.eval()
    nats, tokens = 0.0, 0
    for x, y in sequential_batches(stream, block_size, batch_size):
        nats += lm_loss(model(x.to(device)), y.to(device), reduction="sum").item()
        tokens += y.numel()
    chars = len(tokenizer.decode(stream.window(1, len(stream) - 1)))
    loss = nats / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_char": nats / math.log(2) / chars,
        "tokens": tokens,
        "chars": chars,
    }
