"""`llmkit train`: a recipe to a run directory."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from llmkit.cli.options import Device, Overrides


def train(
    recipe: Annotated[str, typer.Argument(
        help="A recipe file, or the name of one in recipes/ (shakespeare_char).", show_default=False)],
    overrides: Overrides = None,
    device: Device = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its latest.pt.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start again, replacing the run's checkpoints.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (parameters, FLOPs, memory, "
                                          "step time) and exit without training.")] = False,
) -> None:
    """Train the model a recipe describes; runs missing download/tokenize steps first.

    Prints the run directory when done. Ctrl-C saves a checkpoint; --resume continues it.
    Several processes: torchrun --nproc_per_node=N -m llmkit train RECIPE.
    Example: llmkit train recipes/shakespeare_char.yaml train.max_steps=500
    """
    from llmkit.config import find_recipe, load_recipe

    overrides = list(overrides or [])
    if device is not None:
        overrides.append(f"train.device={device}")
    loaded = load_recipe(find_recipe(recipe), overrides)
    if dry_run:
        from llmkit.training.planner import dry_run as print_plan

        raise typer.Exit(print_plan(loaded))
    from llmkit.training.trainer import train as run_training

    run_dir = run_training(loaded, resume=resume, overwrite=overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0 only
        print(run_dir)
