"""What a model is trained to do, and how it is measured: one Task per training objective.

The trainer only knows the Task interface below; the model's kind picks the task:
- decoders (bigram ... gpt): language modeling, next-token prediction (language_modeling.py);
- encoder: masked language modeling, BERT's fill-in-the-blank (masked_lm.py);
- seq2seq: translation of integers into English words, generated on the fly (numbers.py);
- any of them with model.n_classes: classification, spam or ham (classification.py);
- a decoder on data.source instruct: instruction tuning, the loss on responses only (instruct.py).
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch
from torch import nn

from llmkit.config import DECODERS, Recipe
from llmkit.errors import LlmkitError
from llmkit.tokenizer import Tokenizer

Batch = tuple[torch.Tensor, ...]


class Task(Protocol):
    tokenizer: Tokenizer
    vocab_size: int  # the model's vocabulary: the tokenizer's plus the task's special tokens
    identity: str  # the tokenizer identity, recorded in checkpoints
    data_info: dict  # {"tokens": shard directory or None, "command": how to rebuild the data}

    def describe(self) -> str: ...

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> Batch: ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The loss summed over the batch's targets (divide by `count` for the mean)."""

    def count(self, batch: Batch) -> int:
        """How many targets the batch's loss sums over."""

    def evaluate(self, model: nn.Module, split: str, batch_size: int, device: torch.device) -> dict: ...

    def sample(self, model: nn.Module, device: torch.device, generator: torch.Generator, length: int) -> str: ...

    # Optional: tasks whose batches depend on more than the sampler generator (the epoch sampler's
    # position) define state_dict() / load_state_dict(), saved in and restored from checkpoints.


def make_task(recipe: Recipe) -> Task:
    """The task for a recipe, with its data made ready (download and tokenize when missing)."""
    from llmkit.prepare import ensure_tokens

    name, block = recipe.model.name, recipe.model.block_size
    if recipe.model.n_classes is not None:
        from llmkit.tasks.classification import Classification

        return Classification(recipe)
    if recipe.data.source == "instruct":
        if name not in ("single_block_transformer", "gpt"):
            raise LlmkitError(f"instruction tuning needs a decoder that generates with a cache (gpt), not {name}")
        from llmkit.tasks.instruct import Instruct

        return Instruct(recipe)
    if name == "seq2seq":
        from llmkit.tasks.numbers import NumbersToWords

        return NumbersToWords(block)
    shards = ensure_tokens(recipe.data)
    if name == "encoder":
        from llmkit.tasks.masked_lm import MaskedLM

        return MaskedLM(shards, block)
    assert name in DECODERS, name
    from llmkit.tasks.language_modeling import LanguageModeling

    return LanguageModeling(shards, block, recipe.data.sampler, recipe.train.seed)


def check_tokenizer(task: Task, checkpoint: dict, path) -> None:
    """Refuse to feed a model ids from a tokenizer other than the one it was trained with."""
    if task.identity != checkpoint["tokenizer_identity"]:
        raise LlmkitError(
            f"{path} was trained with tokenizer {checkpoint['tokenizer_identity']}, but the shards in "
            f"{task.data_info['tokens']} hold {task.identity}",
            hint=f"use shards made with the run's tokenizer, or rebuild them: {checkpoint['data']['command']}")


def to_device(batch: Batch, device: torch.device) -> Batch:
    return tuple(t.to(device, non_blocking=True) for t in batch)


@torch.no_grad()
def estimate(task: Task, model: nn.Module, split: str, batch_size: int, steps: int,
             device: torch.device, seed: int, setup=None, autocast=None) -> float:
    """Mean loss per target over `steps` random batches; the same batches every call (fixed
    seed), so the periodic estimates during training are comparable with each other. Under
    torchrun each process scores its rows of each batch and the sums are added up."""
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    nats, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for _ in range(steps):
        batch = task.batch(split, batch_size, generator)
        batch = setup.rows(batch) if setup is not None else batch
        with autocast or contextlib.nullcontext():
            nats += task.loss(model, to_device(batch, device)).double()
        count += task.count(batch)
    model.train(was_training)
    if setup is not None:
        nats = setup.sum(nats)
        count = int(setup.sum(torch.tensor(count, device=device)))
    return nats.item() / count
