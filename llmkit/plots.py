"""Pictures of a run, as PNG files (matplotlib, drawn off-screen)."""

from __future__ import annotations

from pathlib import Path

from llmkit.atomic import atomic_open


def _figure(width: float = 7.0, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def save_png(plt, figure, path: str | Path) -> None:
    with atomic_open(path, "wb") as f:
        figure.savefig(f, format="png", bbox_inches="tight")
    plt.close(figure)


def plot_losses(records: list[dict], path: str | Path, title: str) -> None:
    """Train loss (logged steps) and the periodic train/val estimates against the step."""
    plt, figure = _figure()
    ax = figure.add_subplot()
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if train:
        ax.plot(*zip(*train), color="tab:blue", alpha=0.35, linewidth=1, label="train (batch)")
    if evals:
        steps = [r["step"] for r in evals]
        ax.plot(steps, [r["train_loss"] for r in evals], "o-", color="tab:blue", label="train (estimate)")
        ax.plot(steps, [r["val_loss"] for r in evals], "o-", color="tab:orange", label="val (estimate)")
    ax.set(xlabel="step", ylabel="loss (nats per token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(plt, figure, path)
