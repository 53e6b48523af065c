"""llmkit: language models built from scratch in PyTorch, as a command-line tool suite.

The library under the commands, in a few lines:

    from llmkit import load_model, generate
    lm = load_model("runs/shakespeare_char")          # a run, a checkpoint, a Hugging Face directory
    for piece in generate(lm, "ROMEO:", max_new_tokens=100, seed=1):
        print(piece.text, end="")

Importing the package is cheap on purpose: the names below are imported (with torch) only when
first used, so `llmkit --help` starts fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_PUBLIC = {
    "load_model": "llmkit.loading", "LoadedModel": "llmkit.loading",
    "generate": "llmkit.inference.generation", "Generation": "llmkit.inference.generation",
    "GenerationSettings": "llmkit.inference.generation", "Completion": "llmkit.inference.generation",
    "Sampling": "llmkit.inference.sampling",
    "evaluate": "llmkit.tasks.evaluate",
    "train": "llmkit.training.trainer", "finetune": "llmkit.training.finetune",
    "load_recipe": "llmkit.config", "Checkpoint": "llmkit.checkpoint", "LlmkitError": "llmkit.errors",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'llmkit' has no attribute {name!r}")
