"""Pictures of runs: loss curves of one or several runs, and the learning-rate schedule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.errors import LlmkitError
from llmkit.plots.figures import new_figure, save_png

if TYPE_CHECKING:
    from llmkit.config import TrainConfig


def plot_losses(records: list[dict], path: str | Path, title: str) -> Path:
    """One run's curves (what the trainer redraws as runs/<name>/loss.png)."""
    return plot_loss_curves({title: records}, path, title)


# What a loss curve can be drawn against: a record's key, and its axis label.
X_AXES = {"step": "step", "train_s": "seconds of training", "tokens": "tokens seen"}


def plot_loss_curves(runs: dict[str, list[dict]], path: str | Path, title: str = "loss", x: str = "step") -> Path:
    """The metrics.jsonl records of each named run, one colour per run: the periodic val (solid)
    and train (dashed) estimates, and faintly the loss of each logged batch; against steps, or
    `x` another key of X_AXES (runs on one time budget compare best against seconds)."""
    plt, figure = new_figure(8.0, 5.0)
    ax = figure.add_subplot()
    for (name, records), color in zip(runs.items(), _colors(len(runs))):
        records = [r for r in records if x in r]  # records from before a key was logged have no place
        train = [(r[x], r["loss"]) for r in records if r.get("kind") == "train"]
        evals = [r for r in records if r.get("kind") == "eval"]
        if train:
            ax.plot(*zip(*train), color=color, alpha=0.25, linewidth=1,
                    label=None if evals else f"{name}: train (batch)")
        if evals:
            at = [r[x] for r in evals]
            ax.plot(at, [r["val_loss"] for r in evals], "o-", color=color, label=f"{name}: val")
            ax.plot(at, [r["train_loss"] for r in evals], "o--", color=color, markersize=3,
                    alpha=0.8, label=f"{name}: train")
    ax.set(xlabel=X_AXES[x], ylabel="loss (nats per token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(plt, figure, path)


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "turbo"]
    return [cmap(i) if n <= 10 else cmap(i / max(1, n - 1)) for i in range(n)]


def plot_schedule(train: TrainConfig, path: str | Path, title: str, logged: Sequence[dict] = ()) -> Path:
    """The learning rate of every update of a TrainConfig's schedule (llmkit/training/schedule.py), with
    the rates a run logged in metrics.jsonl as dots on top: they should sit on the line. A
    time-bounded schedule (train.max_time) is drawn against seconds of training, after warmup
    (whose steps take however long this machine takes)."""
    from llmkit.training.schedule import learning_rate

    plt, figure = new_figure(7.0, 4.0)
    ax = figure.add_subplot()
    timed = train.max_time is not None
    if timed:
        seconds = [train.max_time * i / 500 for i in range(501)]
        ax.plot(seconds, [learning_rate(train.warmup_steps, train, s) for s in seconds], color="tab:blue",
                label="schedule (after warmup)")
    else:
        steps = range(1, train.max_steps + 1)  # the update that completes step s uses learning_rate(s - 1)
        ax.plot(steps, [learning_rate(s - 1, train) for s in steps], color="tab:blue", label="schedule")
    x = "train_s" if timed else "step"
    points = [(r[x], r["lr"]) for r in logged if r.get("kind") == "train" and "lr" in r and x in r]
    if points:
        points = points[:: -(-len(points) // 150)]  # at most 150 dots: the line stays visible between them
        ax.plot(*zip(*points), "o", color="tab:orange", markersize=3, label="logged by the run")
    ax.axhline(train.lr, color="gray", linestyle=":", linewidth=1)
    ax.axhline(train.min_lr, color="gray", linestyle=":", linewidth=1)
    if train.warmup_steps and not timed:
        ax.axvline(train.warmup_steps, color="gray", linestyle="--", linewidth=1, label="end of warmup")
    end = f"{train.max_time:g} s" if timed else f"{train.max_steps}"
    ax.set(xlabel="seconds of training" if timed else "step", ylabel="learning rate", ylim=(0, train.lr * 1.08),
           title=f"{title}: warmup {train.warmup_steps}, cosine {train.lr:g} -> {train.min_lr:g} at {end}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(plt, figure, path)


def draw_loss(runs: list[str], out: Path | None = None) -> Path:
    """`llmkit plot loss`: the curves of run directories overlaid (default RUN/loss.png for one
    run, ./loss.png for several)."""
    from llmkit.run import METRICS
    from llmkit.training.metrics import MetricsLog

    records = {}
    for run in runs:
        path = Path(run)
        if not path.is_dir():
            raise LlmkitError(f"no run directory at {path}",
                              hint="train one first: llmkit train RECIPE (it prints the run directory)")
        if not (path / METRICS).is_file():
            raise LlmkitError(f"{path} has no {METRICS}", hint="a run logs there as it trains")
        name = path.resolve().name
        logged = MetricsLog(path / METRICS).read()
        if not any(r.get("kind") in ("train", "eval") for r in logged):
            raise LlmkitError(f"{path / METRICS} holds no losses yet", hint="a run logs every train.log_interval steps")
        records[name if name not in records else str(path)] = logged
    default = Path(runs[0]) / "loss.png" if len(runs) == 1 else Path("loss.png")
    return plot_loss_curves(records, out or default, "loss" if len(runs) > 1 else next(iter(records)))


def draw_schedule(target: str, overrides: list[str] | None = None, out: Path | None = None) -> Path:
    """`llmkit plot lr`: the schedule of a run directory (with its logged rates; default
    RUN/lr.png) or of a recipe (default ./lr.png)."""
    from llmkit.config import find_recipe, load_recipe
    from llmkit.run import METRICS, RECIPE
    from llmkit.training.metrics import MetricsLog

    path = Path(target)
    if path.is_dir():
        if not (path / RECIPE).is_file():
            raise LlmkitError(f"{path} has no {RECIPE}: it is not a run directory",
                              hint="give a run directory (runs/NAME) or a recipe")
        recipe = load_recipe(path / RECIPE, overrides or [])
        logged, default = MetricsLog(path / METRICS).read(), path / "lr.png"
    else:
        recipe = load_recipe(find_recipe(target), overrides or [])
        logged, default = [], Path("lr.png")
    return plot_schedule(recipe.train, out or default, recipe.name, logged)
