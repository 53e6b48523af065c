"""Checkpoints that describe themselves, written atomically and read with `weights_only=True`.

A checkpoint is one dict: format and version, the model config, the tokenizer (its full
description, so a checkpoint alone can generate), the weights, and for `latest.pt` everything an
exact resume needs (optimizer, step, RNG states). `weights_only=True` means loading never runs
code from the file: only tensors and plain containers are accepted.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from llmkit.atomic import atomic_open
from llmkit.errors import LlmkitError

FORMAT = "llmkit-checkpoint"
VERSION = 2  # 2: attention q/kv and the models of the ladder (llmkit 0.2)
# Wrappers add these to parameter names: torch.compile (`_orig_mod.`) and DDP (`module.`).
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


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


def save_checkpoint(path: str | Path, state: dict) -> None:
    with atomic_open(path, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **state}, f)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LlmkitError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LlmkitError(f"{path} is not a readable checkpoint: {first_line}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise LlmkitError(f"{path} is not an llmkit checkpoint")
    if checkpoint.get("version") != VERSION:
        raise LlmkitError(f"{path} has checkpoint version {checkpoint.get('version')}; "
                          f"this llmkit reads version {VERSION}")
    checkpoint["model"] = clean_state_dict(checkpoint["model"])
    return checkpoint
