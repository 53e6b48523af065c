"""`llmkit finetune TASK`: a task's recipe, trained from scratch or from a base model, then measured
on its test split.

The base (a run, a checkpoint, a GGUF file, a Hugging Face directory, hf:REPO or smollm2) is
read once: its model section becomes the run's (with the task's classes on top for a
classifier), its tokenizer the task's, and its weights the starting point
(llmkit/models/transfer.py). It trains with the task's recipe for the mode when there is one
(recipes/spam_lora.yaml: the settings for a pretrained model), else with the task's own. The run is named after the
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


def task_recipe(task: str, mode: str, base: str | None) -> Path:
    """The recipe to train: from a base, the task's recipe for that mode when there is one
    (recipes/spam_lora.yaml: settings for a pretrained model, which differ from training a small
    one from scratch); else the task's own (recipes/spam.yaml)."""
    if base is not None:
        try:
            return find_recipe(f"{task}_{mode}")
        except LlmkitError:
            pass
    return find_recipe(task)


def finetune_recipe(task: str, base: str | None = None, mode: str = "all", overrides: list[str] | tuple = (),
                    device: str | None = None):
    """The recipe a finetuning run trains, and the base it starts from (None from scratch)."""
    if task not in TASKS:
        raise LlmkitError(f"llmkit finetune {task} is not available: choose {' or '.join(TASKS)}",
                          hint="llmkit finetune spam")
    if mode not in MODES:
        raise LlmkitError(f"--mode must be {', '.join(MODES[:-1])} or {MODES[-1]}, got '{mode}'")
    if mode != "all" and base is None:
        raise LlmkitError(f"--mode {mode} needs --base RUN (a model trained from scratch has no pretrained weights to keep)")
    first, extra = [], [f"train.device={device}"] if device else []
    loaded = None
    if base is not None:
        loaded = load_model(base, merge=True)  # a LoRA base counts with its adapters folded in
        mode_part = "" if mode == "all" else f"_{mode}"
        if not any(o.startswith(("name=", "out_dir=")) for o in overrides):  # the user's own name wins
            first.append(f"name={task}_{loaded.run_dir.name}{mode_part}")
        extra.append(f"train.init_from={loaded.path}")
    recipe = load_recipe(task_recipe(task, mode, base), [*first, *overrides, *extra, f"train.finetune={mode}"])
    if loaded is not None:  # the base's model, with the task's classes (if any) on top
        model = dataclasses.replace(loaded.config, n_classes=recipe.model.n_classes, dropout=recipe.model.dropout)
        recipe = dataclasses.replace(recipe, model=model)
    return recipe, loaded


def finetune(task: str, base: str | None = None, mode: str = "all", overrides: list[str] | tuple = (),
             device: str | None = None, overwrite: bool = False, judge: Judge | None = None) -> tuple[Path, Report]:
    """Train the run and measure it on the test split: (run directory, test report)."""
    if judge is not None and task != "instruct":
        raise LlmkitError(f"--judge-url scores instruction answers; {task} has none")
    recipe, loaded = finetune_recipe(task, base, mode, overrides, device)
    run = train(recipe, overwrite=overwrite, base=loaded)
    del loaded  # the base's weights are in the run now; measuring needs only the run's
    tuned = load_model(run, "best", resolve_device("auto"))
    batch_size = 64 if tuned.labels else 16
    return run, evaluate(tuned, "test", batch_size=batch_size, judge=judge, responses=run / "test_responses.json")
