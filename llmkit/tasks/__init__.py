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
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from llmkit.config import DECODERS, ModelConfig, Recipe
from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from llmkit.checkpoint import Checkpoint
    from llmkit.loading import LoadedModel

Batch = tuple[torch.Tensor, ...]


class Task(Protocol):
    # What a model trained on this task can do, asked by the commands instead of the model's kind
    # (class attributes, so they can be asked without building the task):
    generates: bool  # continues text (llmkit generate; chat and serve)
    labels: tuple[str, ...] | None  # the classes it tells apart (llmkit classify), or None
    scores_text: bool  # a next-token loss on any text (llmkit eval --text / --stride)
    eval_options: tuple[str, ...]  # keyword options its evaluate() takes (stride, beam, judge, ...)

    tokenizer: Tokenizer
    vocab_size: int  # the model's vocabulary: the tokenizer's plus the task's special tokens
    identity: str  # the tokenizer identity, recorded in checkpoints
    data_info: dict  # {"tokens": shard directory or None, "command": how to rebuild the data}

    @classmethod
    def from_recipe(cls, recipe: Recipe, tokenizer: Tokenizer | None = None) -> Task:
        """The task over the recipe's data (downloaded and tokenized when missing). `tokenizer`:
        the model's own (a base model's, or a checkpoint's), for tasks that do not take theirs
        from token shards; without it they make one from the data."""

    def describe(self) -> str: ...

    def batch(self, split: str, batch_size: int, generator: torch.Generator, training: bool = False) -> Batch:
        """A batch of `split`. `training`: the trainer's own draw (from data.sampler: epoch
        sampling keeps its place); measurements draw with their generator alone."""

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The loss summed over the batch's targets (divide by `count` for the mean)."""

    def count(self, batch: Batch) -> int:
        """How many targets the batch's loss sums over."""

    def tokens(self, batch: Batch) -> int:
        """How many real input tokens the batch holds, padding not counted (the trainer's tokens/s)."""

    def evaluate(self, model: nn.Module, split: str, batch_size: int, device: torch.device, **options) -> dict: ...

    def sample(self, model: nn.Module, device: torch.device, generator: torch.Generator, length: int) -> str: ...

    # Optional: tasks whose batches depend on more than the sampler generator (the epoch sampler's
    # position) define state_dict() / load_state_dict(), saved in and restored from checkpoints.


def task_type(model: ModelConfig, source: str | None = None) -> type[Task]:
    """The task class for a model (and the data it trains on): the model's kind picks it."""
    if model.n_classes is not None:
        from llmkit.tasks.classification import Classification

        return Classification
    if source == "instruct":
        from llmkit.tasks.instruct import Instruct

        return Instruct
    if model.name == "seq2seq":
        from llmkit.tasks.numbers import NumbersToWords

        return NumbersToWords
    if model.name == "encoder":
        from llmkit.tasks.masked_lm import MaskedLM

        return MaskedLM
    assert model.name in DECODERS, model.name
    from llmkit.tasks.language_modeling import LanguageModeling

    return LanguageModeling


def make_task(recipe: Recipe, tokenizer: Tokenizer | None = None) -> Task:
    """The task for a recipe, with its data made ready (download and tokenize when missing)."""
    return task_type(recipe.model, recipe.data.source).from_recipe(recipe, tokenizer)


def task_for(loaded: LoadedModel, data: str | Path | None = None) -> Task:
    """The task a loaded model was trained on, over its own data (or the shards in `data`), with
    the model's own tokenizer; shards made with another tokenizer are refused."""
    from llmkit.config import recipe_with

    checkpoint = loaded.checkpoint
    if checkpoint.recipe is None:
        raise LlmkitError(f"{loaded.path} holds imported weights, with no training data to measure on",
                          hint=f"measure it on a text file: llmkit eval {loaded.path} --text FILE")
    tokens = data if data is not None else checkpoint.data.get("tokens")
    recipe = checkpoint.recipe if tokens is None else recipe_with(checkpoint.recipe, data={"tokens": str(tokens)})
    task = make_task(recipe, loaded.tokenizer)
    check_tokenizer(task, checkpoint)
    return task


def check_tokenizer(task: Task, checkpoint: Checkpoint) -> None:
    """Refuse to feed a model ids from a tokenizer other than the one it was trained with."""
    if task.identity != checkpoint.tokenizer_identity:
        raise LlmkitError(
            f"{checkpoint.path} was trained with tokenizer {checkpoint.tokenizer_identity}, but the shards in "
            f"{task.data_info['tokens']} hold {task.identity}",
            hint=f"use shards made with the run's tokenizer, or rebuild them: {checkpoint.data_command}")


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
