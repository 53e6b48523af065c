"""One way to name a model, wherever a model is read: `load_model(NAME)`.

NAME is any of
- a run directory (`runs/shakespeare_char`: its best.pt, or latest.pt with which="latest");
- a checkpoint file (`runs/shakespeare_char/latest.pt`);
- a Hugging Face directory (config.json + weights + tokenizer files) or `hf:REPO_ID` from the hub.

Each becomes a `Checkpoint` (llmkit/checkpoint.py) — read from disk, or made by an importer
(llmkit/formats/) — and then a model the same way, so nothing downstream knows where the weights
came from. The result says what the model can do (`generates`, `labels`), asked of the task it was
trained for (llmkit/tasks/).

    from llmkit import load_model
    lm = load_model("runs/shakespeare_char")
    lm.model, lm.tokenizer, lm.config, lm.checkpoint.recipe
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmkit.checkpoint import Checkpoint
from llmkit.config import ModelConfig
from llmkit.data.tokenizer import Tokenizer
from llmkit.layers.lora import add_lora, merge_lora
from llmkit.models import build_model
from llmkit.run import checkpoint_path


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on its device
    tokenizer: Tokenizer
    checkpoint: Checkpoint  # its description; the weights are in `model`, not here
    path: Path  # the checkpoint file or the directory it came from

    @property
    def config(self) -> ModelConfig:
        return self.checkpoint.model_config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def run_dir(self) -> Path:
        """Where files about this model go by default (plots, answers): its run directory."""
        return self.path.parent if self.path.is_file() else self.path

    @property
    def task_type(self) -> type:
        """The class of the task this model was trained for (llmkit/tasks/): what it can do."""
        from llmkit.tasks import task_type

        recipe = self.checkpoint.recipe
        return task_type(self.config, recipe.data.source if recipe is not None else None)

    @property
    def generates(self) -> bool:
        return self.task_type.generates

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.task_type.labels


def read_checkpoint(name: str | Path, which: str = "best") -> Checkpoint:
    """The Checkpoint a model name stands for, weights included, without building the model."""
    from llmkit.formats.hf_gpt2 import hf_directory, read_hf_directory

    directory = hf_directory(name)
    if directory is not None:
        return read_hf_directory(directory)
    return Checkpoint.load(checkpoint_path(name, which))


def model_from_checkpoint(checkpoint: Checkpoint, device: torch.device | str = "cpu",
                          merge: bool = False) -> LoadedModel:
    """Build the checkpoint's model with its weights. A LoRA checkpoint comes with its adapters,
    or with them folded into the weights when `merge` is set."""
    model = build_model(checkpoint.model_config)
    if checkpoint.lora is not None:
        add_lora(model, checkpoint.lora)
    model.load_state_dict(checkpoint.weights)
    if merge:
        merge_lora(model)
    model.to(device).eval()
    return LoadedModel(model, checkpoint.tokenizer, checkpoint.without_weights(), checkpoint.path)


def load_model(name: str | Path, which: str = "best", device: torch.device | str = "cpu",
               merge: bool = False) -> LoadedModel:
    """The model NAME names (see the module docstring), ready to run on `device`."""
    return model_from_checkpoint(read_checkpoint(name, which), device, merge)
