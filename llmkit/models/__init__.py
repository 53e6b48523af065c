"""The model family; `build_model` turns a ModelConfig into a module that maps ids to logits."""

from __future__ import annotations

from torch import nn

from llmkit.config import ModelConfig
from llmkit.models.bigram import Bigram
from llmkit.models.gpt import GPT

MODELS: dict[str, type[nn.Module]] = {"bigram": Bigram, "gpt": GPT}


def build_model(config: ModelConfig) -> nn.Module:
    if config.vocab_size is None:
        raise ValueError("model.vocab_size must be known (from the tokenizer) to build a model")
    return MODELS[config.name](config)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, each shared tensor once (the tied head is not counted twice)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe(config: ModelConfig) -> str:
    """The sizes that matter for this kind of model, in words."""
    if config.name == "bigram":
        return f"vocab {config.vocab_size}, {config.n_embd} channels"
    return (f"{config.n_layer} layers, {config.n_head} heads, {config.n_embd} channels, "
            f"context {config.block_size}, vocab {config.vocab_size}")
