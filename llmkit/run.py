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

from pathlib import Path

from llmkit.errors import LlmkitError

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
