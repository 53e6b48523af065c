"""Checkpoints that describe themselves, written atomically and read with `weights_only=True`.

`Checkpoint` owns the format: every reader and writer of a checkpoint goes through it (the
trainer writes one, `llmkit.load_model` reads one, the Hugging Face importer makes one), so the
names of its keys live in this file only. On disk a checkpoint is one dict of plain containers and
tensors:

    format, version     "llmkit-checkpoint", VERSION
    model_config        the ModelConfig as a dict
    model               the weights, with no torch.compile / DDP prefixes
    tokenizer           the tokenizer's full description, so a checkpoint alone can generate
    tokenizer_identity  its hash (llmkit/data/tokenizer.py)
    recipe              the resolved recipe it was trained with (None for imported weights)
    data                {"tokens": shard directory or None, "command": how to rebuild the data, ...}
    lora                the LoRAConfig of the adapters inside `model`, or None
    origin              where the weights came from: {"kind": trained|finetuned|imported, "from": ...}
    step, best_val_loss, elapsed_s, train_s, tokens   the run's progress (train_s: seconds of
                        training steps; tokens: real input tokens trained on)
    optimizer, scaler, rng, task     latest.pt only: what an exact resume needs

`weights_only=True` means loading never runs code from the file: only tensors and plain
containers are accepted.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from llmkit.config import LoRAConfig, ModelConfig, Recipe, config_from_dict, recipe_from_dict
from llmkit.data.tokenizer import Tokenizer, identity, tokenizer_from_dict
from llmkit.errors import LlmkitError
from llmkit.files import atomic_open

FORMAT = "llmkit-checkpoint"
VERSION = 2  # 2: attention q/kv and the models of the ladder (llmkit 0.2)
# Wrappers add these to parameter names: torch.compile (`_orig_mod.`) and DDP (`module.`).
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
RESUME_KEYS = ("optimizer", "scaler", "rng", "task")


def unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "_orig_mod") or hasattr(model, "module"):
        model = getattr(model, "_orig_mod", None) or model.module
    return model


def clean_state_dict(state: dict) -> dict:
    """Parameter names as the bare model has them, however the saving model was wrapped."""
    cleaned = {}
    for name, tensor in state.items():
        for prefix in WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        cleaned[name] = tensor
    return cleaned


def weights_checksum(weights: dict[str, torch.Tensor]) -> int:
    """CRC-32 of every tensor's name, dtype, shape and bytes, in name order: a flipped bit in the
    file changes it. About 2 GB/s, so a 500 MB checkpoint costs a quarter of a second more."""
    crc = 0
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        crc = zlib.crc32(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode(), crc)
        if tensor.numel():
            crc = zlib.crc32(memoryview(tensor.view(torch.uint8).numpy()), crc)
    return crc


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write the on-disk dict (atomically: a reader sees the old file or the whole new one), with
    the checksum of its weights."""
    extra = {"weights_crc32": weights_checksum(state["model"])} if "model" in state else {}
    with atomic_open(path, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **state, **extra}, f)


def load_checkpoint(path: str | Path) -> dict:
    """Read the on-disk dict, checking its format and version, with clean weight names."""
    path = Path(path)
    if not path.is_file():
        raise LlmkitError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run the file's code: never.
        raise LlmkitError(f"{path} is not a readable checkpoint: it holds Python objects other than "
                          "tensors and plain data, which llmkit does not load (loading them could run code)",
                          hint="llmkit checkpoints hold only tensors and plain data; retrain or re-export it") from None
    except Exception as e:  # torch.load fails in many ways on a file that is not a checkpoint
        first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise LlmkitError(f"{path} is not a readable checkpoint (torch.load: {type(e).__name__}: {first_line})",
                          hint="it is truncated or damaged: use the run's other checkpoint (--checkpoint latest "
                          "or best), or train again") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise LlmkitError(f"{path} is not an llmkit checkpoint")
    if checkpoint.get("version") != VERSION:
        raise LlmkitError(f"{path} has checkpoint version {checkpoint.get('version')}; "
                          f"this llmkit reads version {VERSION}")
    if not isinstance(checkpoint.get("model"), dict):
        raise LlmkitError(f"{path} holds no weights")
    expected = checkpoint.pop("weights_crc32", None)  # None: written before llmkit 0.2 checked it
    if expected is not None and weights_checksum(checkpoint["model"]) != expected:
        raise LlmkitError(f"{path} is damaged: its weights do not match the checksum saved with them",
                          hint="use the run's other checkpoint (--checkpoint latest or best), or train again")
    checkpoint["model"] = clean_state_dict(checkpoint["model"])
    return checkpoint


@dataclass
class RunState:
    step: int = 0  # optimizer updates done
    best_val_loss: float = math.inf
    elapsed_s: float = 0.0  # wall time spent in this run, over all its resumptions
    train_s: float = 0.0  # of which training steps (not evaluations or checkpoints): what max_time spends
    tokens: int = 0  # real input tokens trained on (padding not counted), over all processes


@dataclass
class Checkpoint:
    model_config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    recipe: Recipe | None = None  # None: weights from elsewhere, with no recipe behind them
    data: dict = field(default_factory=lambda: {"tokens": None, "command": None})
    lora: LoRAConfig | None = None
    origin: dict = field(default_factory=lambda: {"kind": "trained", "from": None})
    state: RunState = field(default_factory=RunState)
    resume: dict | None = None  # optimizer, scaler, rng, task: what --resume needs (latest.pt)
    path: Path | None = None  # where it was read from

    @property
    def tokenizer_identity(self) -> str:
        return identity(self.tokenizer)

    @property
    def data_command(self) -> str:
        """How to rebuild the data the model was trained on (for hints)."""
        return self.data.get("command") or "(no data: the weights were imported)"

    def without_weights(self) -> Checkpoint:
        """The same description with the weights and resume state dropped (once they are in a model)."""
        return dataclasses.replace(self, weights={}, resume=None)

    def to_dict(self) -> dict:
        state = {
            "model_config": dataclasses.asdict(self.model_config),
            "model": self.weights,
            "tokenizer": self.tokenizer.to_dict(),
            "tokenizer_identity": self.tokenizer_identity,
            "data": self.data,
            "recipe": None if self.recipe is None else dataclasses.asdict(self.recipe),
            "lora": None if self.lora is None else dataclasses.asdict(self.lora),
            "origin": self.origin,
            **dataclasses.asdict(self.state),
        }
        return {**state, **(self.resume or {})}

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict, path: Path | None = None) -> Checkpoint:
        where = str(path) if path else "checkpoint"
        try:
            config = config_from_dict(ModelConfig, raw["model_config"], where=f"{where} model config")
            lora = config_from_dict(LoRAConfig, raw["lora"], where=f"{where} lora") if raw.get("lora") else None
            recipe = recipe_from_dict(raw["recipe"], where=f"{where} recipe") if raw.get("recipe") else None
            tokenizer = tokenizer_from_dict(raw["tokenizer"])
            if raw.get("tokenizer_identity") not in (None, identity(tokenizer)):  # its hash, saved beside it
                raise LlmkitError(f"{where} is damaged: its tokenizer does not match the identity saved with it",
                                  hint="use the run's other checkpoint (--checkpoint latest or best), or train again")
            # Before train_s was saved, the wall time is the nearest there is.
            state = RunState(raw.get("step", 0), raw.get("best_val_loss", math.inf), raw.get("elapsed_s", 0.0),
                             raw.get("train_s", raw.get("elapsed_s", 0.0)), raw.get("tokens", 0))
            resume = {k: raw[k] for k in RESUME_KEYS if k in raw} or None
            return cls(config, raw["model"], tokenizer, recipe, raw.get("data") or {"tokens": None, "command": None},
                       lora, raw.get("origin") or {"kind": "trained", "from": None}, state, resume, path)
        except KeyError as e:
            raise LlmkitError(f"{where} is incomplete: it has no {e.args[0]!r}") from None

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        path = Path(path)
        return cls.from_dict(load_checkpoint(path), path)
