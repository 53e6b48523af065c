"""The model family; `build_model` turns a ModelConfig into a module.

The ladder, each rung one file adding one idea: bigram -> single_head_attention ->
multi_head_attention -> single_block_transformer -> gpt; then encoder (bidirectional, masked LM)
and seq2seq (encoder-decoder with cross-attention).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.models.bigram import Bigram
from llmkit.models.classifier import SequenceClassifier
from llmkit.models.encoder import Encoder
from llmkit.models.gpt import GPT
from llmkit.models.multi_head_attention import MultiHeadAttention
from llmkit.models.seq2seq import Seq2Seq
from llmkit.models.single_block_transformer import SingleBlockTransformer
from llmkit.models.single_head_attention import SingleHeadAttention

MODELS: dict[str, type[nn.Module]] = {
    "bigram": Bigram,
    "single_head_attention": SingleHeadAttention,
    "multi_head_attention": MultiHeadAttention,
    "single_block_transformer": SingleBlockTransformer,
    "gpt": GPT,
    "encoder": Encoder,
    "seq2seq": Seq2Seq,
}


def build_model(config: ModelConfig) -> nn.Module:
    if config.vocab_size is None:
        raise ValueError("model.vocab_size must be known (from the tokenizer) to build a model")
    if config.n_classes is not None:
        return SequenceClassifier(config, MODELS[config.name](dataclasses.replace(config, n_classes=None)))
    return MODELS[config.name](config)


_INITS = ("normal_", "uniform_", "kaiming_uniform_", "xavier_uniform_", "trunc_normal_", "zeros_", "ones_", "constant_")


def meta_model(config: ModelConfig) -> nn.Module:
    """The model's modules with shapes but no memory (the meta device), for weights that come
    later (assigned from a checkpoint) or never (counting, planning). Random initialisation is
    skipped: on the meta device it only costs time (and imports torch's compiler)."""
    saved = {name: getattr(nn.init, name) for name in _INITS}
    try:
        for name in _INITS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        with torch.device("meta"):
            return build_model(config)
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, each shared tensor once (the tied head is not counted twice)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe(config: ModelConfig) -> str:
    """The sizes that matter for this kind of model, in words."""
    if config.name == "bigram":
        return f"vocab {config.vocab_size}, {config.n_embd} channels"
    heads = 1 if config.name == "single_head_attention" else config.n_head
    layers = "" if config.name in ("single_head_attention", "multi_head_attention") else f"{config.n_layer} layers, "
    kv = f" ({config.kv_heads} key/value)" if config.kv_heads != config.n_head and heads > 1 else ""
    return (f"{layers}{heads} head{'s' if heads > 1 else ''}{kv}, {config.n_embd} channels, "
            f"context {config.block_size}, vocab {config.vocab_size}")
