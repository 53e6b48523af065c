"""A run directory: what `llmkit train` writes and `llmkit eval` / `llmkit generate` read.

    runs/<name>/recipe.yaml     the resolved recipe (every default filled in)
    runs/<name>/tokenizer.json  the tokenizer the model was trained with
    runs/<name>/metrics.jsonl   one JSON object per logged step or evaluation
    runs/<name>/loss.png        train and val loss curves, redrawn at each evaluation
    runs/<name>/tensorboard/    the same metrics as TensorBoard events (when tensorboard is installed)
    runs/<name>/latest.pt       the newest checkpoint, with optimizer and RNG state for --resume
    runs/<name>/best.pt         the weights with the lowest validation loss so far
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmkit.checkpoint import load_checkpoint
from llmkit.config import LoRAConfig, ModelConfig, config_from_dict
from llmkit.errors import LlmkitError
from llmkit.lora import add_lora, merge_lora
from llmkit.models import build_model
from llmkit.tokenizer import Tokenizer, identity, tokenizer_from_dict

RECIPE, TOKENIZER, METRICS, LOSS_PLOT = "recipe.yaml", "tokenizer.json", "metrics.jsonl", "loss.png"
LATEST, BEST = "latest.pt", "best.pt"


def checkpoint_path(run: str | Path, which: str = "best") -> Path:
    """A checkpoint file given directly, or `best`/`latest` of a run directory (`best` falls back
    to `latest` for runs that never evaluated)."""
    path = Path(run)
    if path.is_file():
        return path
    if not path.is_dir():
        raise LlmkitError(f"no run directory or checkpoint file at {path}",
                          hint="train one first: llmkit train RECIPE (it prints the run directory)")
    if which not in ("best", "latest"):
        raise LlmkitError(f"--checkpoint must be best or latest, got '{which}'")
    for name in ((BEST, LATEST) if which == "best" else (LATEST,)):
        if (path / name).is_file():
            return path / name
    raise LlmkitError(f"{path} holds no checkpoint ({which}.pt)",
                      hint="a run writes its first checkpoint at its first evaluation")


@dataclass
class TrainedModel:
    model: nn.Module
    tokenizer: Tokenizer
    config: ModelConfig
    checkpoint: dict  # everything in the checkpoint but the weights and optimizer state
    path: Path


def load_trained(run: str | Path, which: str = "best", device: torch.device | str = "cpu",
                 merge: bool = False) -> TrainedModel:
    """A trained model: from a run directory or checkpoint, or GPT-2 from a Hugging Face directory
    (`hf:REPO_ID` fetches one from the hub). A LoRA run comes with its adapters, or with them
    folded into the weights when `merge` is set."""
    from llmkit.hf_gpt2 import hf_directory

    directory = hf_directory(run)
    if directory is not None:
        return _load_hf(directory, device)
    path = checkpoint_path(run, which)
    checkpoint = load_checkpoint(path)
    config = config_from_dict(ModelConfig, checkpoint["model_config"], where=f"{path} model config")
    model = build_model(config)
    if checkpoint.get("lora"):
        add_lora(model, config_from_dict(LoRAConfig, checkpoint["lora"], where=f"{path} lora"))
    model.load_state_dict(checkpoint.pop("model"))
    if merge:
        merge_lora(model)
    checkpoint.pop("optimizer", None)
    model.to(device).eval()
    return TrainedModel(model, tokenizer_from_dict(checkpoint["tokenizer"]), config, checkpoint, path)


def _load_hf(directory: Path, device) -> TrainedModel:
    from llmkit.hf_gpt2 import load_hf_directory

    config, state, tokenizer = load_hf_directory(directory)
    model = build_model(config)
    model.load_state_dict(state)
    model.to(device).eval()
    # What a checkpoint would say; there is no training data or recipe behind these weights.
    checkpoint = {"step": 0, "tokenizer": tokenizer.to_dict(), "tokenizer_identity": identity(tokenizer),
                  "recipe": None, "data": {"tokens": None, "command": f"(GPT-2 weights from {directory})"}}
    return TrainedModel(model, tokenizer, config, checkpoint, directory)


def base_tokenizer(run: str | Path) -> Tokenizer:
    """The tokenizer of a run, checkpoint or Hugging Face directory, without building its model."""
    from llmkit.hf_gpt2 import hf_directory, hf_tokenizer

    directory = hf_directory(run)
    if directory is not None:
        return hf_tokenizer(directory)
    return tokenizer_from_dict(load_checkpoint(checkpoint_path(run))["tokenizer"])


def task_for(trained: TrainedModel, data: str | Path | None = None):
    """The task a trained model was trained on, over its own data (or the shards in `data`),
    refusing data made with another tokenizer."""
    from llmkit.config import recipe_from_dict
    from llmkit.tasks import check_tokenizer, make_task

    if trained.checkpoint.get("recipe") is None:
        raise LlmkitError(f"{trained.path} holds imported weights, with no training data to measure on",
                          hint=f"measure it on a text file: llmkit eval {trained.path} --text FILE")
    recipe = recipe_from_dict(trained.checkpoint["recipe"], where=f"{trained.path} recipe")
    tokens = data if data is not None else trained.checkpoint["data"]["tokens"]
    if tokens is not None:
        recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, tokens=str(tokens)))
    task = make_task(recipe)
    check_tokenizer(task, trained.checkpoint, trained.path)
    return task
