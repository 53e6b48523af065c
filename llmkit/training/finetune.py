"""`llmkit finetune TASK`: a task's recipe, trained from scratch or from a base model, then measured
on its test split.

The base (a run, a checkpoint, a Hugging Face directory or hf:REPO) is read once: its model
section becomes the run's (with the task's classes on top for a classifier), its tokenizer the
task's, and its weights the starting point (llmkit/models/transfer.py). The run is named after the
base and the mode (runs/spam_wikitext2_bpe_lora) unless the overrides name it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from llmkit.config import find_recipe, load_recipe
from llmkit.device import resolve_device
from llmkit.errors import LlmkitError
from llmkit.loading import load_model
from llmkit.tasks.evaluate import evaluate
from llmkit.tasks.report import Report
from llmkit.tasks.scoring import Judge
from llmkit.training.trainer import train

TASKS = ("spam", "instruct")  # each the name of its recipe in recipes/
MODES = ("all", "last_block", "lora")


def finetune(task: str, base: str | None = None, mode: str = "all", overrides: list[str] | tuple = (),
             device: str | None = None, overwrite: bool = False, judge: Judge | None = None) -> tuple[Path, Report]:
    """Train the run and measure it on the test split: (run directory, test report)."""
    if task not in TASKS:
        raise LlmkitError(f"llmkit finetune {task} is not available: choose {' or '.join(TASKS)}",
                          hint="llmkit finetune spam")
    if mode not in MODES:
        raise LlmkitError(f"--mode must be {', '.join(MODES[:-1])} or {MODES[-1]}, got '{mode}'")
    if mode != "all" and base is None:
        raise LlmkitError(f"--mode {mode} needs --base RUN (a model trained from scratch has no pretrained weights to keep)")
    if judge is not None and task != "instruct":
        raise LlmkitError(f"--judge-url scores instruction answers; {task} has none")
    first, extra = [], [f"train.device={device}"] if device else []
    loaded = None
    if base is not None:
        loaded = load_model(base, merge=True)  # a LoRA base counts with its adapters folded in
        mode_part = "" if mode == "all" else f"_{mode}"
        if not any(o.startswith(("name=", "out_dir=")) for o in overrides):  # the user's own name wins
            first.append(f"name={task}_{loaded.run_dir.name}{mode_part}")
        extra.append(f"train.init_from={loaded.path}")
    recipe = load_recipe(find_recipe(task), [*first, *overrides, *extra, f"train.finetune={mode}"])
    if loaded is not None:  # the base's model, with the task's classes (if any) on top
        model = dataclasses.replace(loaded.config, n_classes=recipe.model.n_classes, dropout=recipe.model.dropout)
        recipe = dataclasses.replace(recipe, model=model)
    run = train(recipe, overwrite=overwrite, base=loaded)
    tuned = load_model(run, "best", resolve_device("auto"))
    batch_size = 64 if tuned.labels else 16
    return run, evaluate(tuned, "test", batch_size=batch_size, judge=judge, responses=run / "test_responses.json")
