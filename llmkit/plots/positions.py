"""Pictures of position encodings: each kind's vectors, and how similar they make two positions.

Shapes: T positions, C channels, H heads, D head dim.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmkit.errors import LlmkitError
from llmkit.layers.positions import RoPE, sinusoid_table
from llmkit.plots.figures import new_figure, save_png

PICTURE_LIMIT = 8192  # positions or channels: a heatmap wider than this is no longer a picture


def _cosine(rows: torch.Tensor) -> torch.Tensor:
    """(T, C) -> (T, T) cosine similarity of every pair of rows."""
    unit = rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return unit @ unit.T


def position_pictures(kind: str, block_size: int, n_embd: int, n_head: int, rope_base: float = 10000.0,
                      learned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What each kind of position encoding is, as two (rows, columns) tables:
    - the encoding itself, (T, channels): learned and sinusoidal give the (T, C) vector added to
      the token at each position; rope gives cos(angle) of the rotation of each of the D/2
      channel pairs of a head at each position;
    - (T, T) cosine similarity between what position t and position s carry (for rope: a query
      at t and a key at s made from the same vector, so the similarity is what RoPE alone adds
      to the attention score). Sinusoidal and rope depend on t - s only: bands along diagonals."""
    if kind == "learned":
        if learned is None:
            raise LlmkitError("learned positions are trained weights: pass the run's table (`learned_positions`)")
        table = learned.float()  # (T, C), the run's trained weights
        return table, _cosine(table)
    if kind == "sinusoidal":
        table = sinusoid_table(block_size, n_embd)  # (T, C)
        return table, _cosine(table)
    if kind == "rope":
        D = n_embd // n_head
        rope = RoPE(D, block_size, rope_base)
        rotated = rope(torch.ones(1, 1, block_size, D))[0, 0]  # (T, D): one vector at every position
        return rope.tables()[0][:, : D // 2], _cosine(rotated)
    raise LlmkitError(f"--kind must be learned, sinusoidal or rope, got '{kind}'")


def plot_positions(table: torch.Tensor, similarity: torch.Tensor, kind: str, path: str | Path,
                   title: str) -> Path:
    """The two tables of `position_pictures` side by side: the encoding, and the similarity."""
    plt, figure = new_figure(12.0, 4.5)
    left, right = figure.subplots(1, 2, width_ratios=[1.3, 1])
    channels = "rotation pair i (cos of its angle)" if kind == "rope" else "channel"
    image = left.imshow(table.numpy(), cmap="RdBu_r", aspect="auto", interpolation="nearest",
                        vmin=-table.abs().max().item(), vmax=table.abs().max().item())
    left.set(xlabel=channels, ylabel="position t", title=f"{kind}: the encoding of each position")
    figure.colorbar(image, ax=left, shrink=0.8, pad=0.02)
    image = right.imshow(similarity.numpy(), cmap="viridis", interpolation="nearest")
    right.set(xlabel="position s", ylabel="position t", title="cosine similarity of positions t and s")
    figure.colorbar(image, ax=right, shrink=0.8, pad=0.02)
    figure.suptitle(title, fontsize=10)
    return save_png(plt, figure, path)


def draw_positions(loaded=None, kind: str | None = None, block_size: int | None = None, n_embd: int | None = None,
                   n_head: int | None = None, out: Path | None = None, run: str | None = None) -> Path:
    """`llmkit plot positions`: a kind of encoding at the given sizes, or a loaded model's own
    (its learned table, or its kind at its sizes). Default file: RUN/positions_KIND.png, or
    ./positions_KIND.png without a model; `run` is how the user named the model (for hints)."""
    from llmkit.plots.embeddings import learned_positions

    learned, base, where = None, 10000.0, Path(".")
    sizes = {"block_size": 64, "n_embd": 128, "n_head": 4}
    if loaded is not None:
        config, where = loaded.config, loaded.run_dir
        kind, base = kind or config.positions, config.rope_base
        sizes = {name: getattr(config, name) for name in sizes}
        if kind == "learned":
            if config.positions != "learned":
                raise LlmkitError(f"{loaded.path} has {config.positions} positions, not a learned table",
                                  hint=f"llmkit plot positions {run} --kind {config.positions}")
            if any(v is not None for v in (block_size, n_embd, n_head)):
                raise LlmkitError("a learned table has the run's sizes: drop --block-size, --n-embd and --n-head")
            learned = learned_positions(loaded.model)  # (T, C)
    kind = kind or "sinusoidal"
    if kind == "none" and loaded is not None:
        raise LlmkitError(f"{run} uses no position encoding (model.positions: none)",
                          hint="plot a fixed one: llmkit plot positions --kind sinusoidal")
    if kind not in ("learned", "sinusoidal", "rope"):
        raise LlmkitError(f"--kind must be learned, sinusoidal or rope, got '{kind}'")
    if kind == "learned" and learned is None:
        raise LlmkitError("learned positions are trained weights: give a RUN trained with model.positions=learned",
                          hint="llmkit plot positions runs/shakespeare_char --kind learned")
    given = {"block_size": block_size, "n_embd": n_embd, "n_head": n_head}
    sizes.update({name: value for name, value in given.items() if value is not None})
    if max(sizes["block_size"], sizes["n_embd"]) > PICTURE_LIMIT:
        raise LlmkitError(f"a picture of {sizes['block_size']:,} positions x {sizes['n_embd']:,} channels is too "
                          f"large to draw or read: at most {PICTURE_LIMIT:,} of each",
                          hint="--block-size and --n-embd choose smaller sizes")
    if sizes["n_embd"] % sizes["n_head"] or (kind == "rope" and (sizes["n_embd"] // sizes["n_head"]) % 2):
        raise LlmkitError(f"--n-embd {sizes['n_embd']} must split into {sizes['n_head']} heads"
                          + (" of an even size (rope turns channel pairs)" if kind == "rope" else ""))
    table, similarity = position_pictures(kind, **sizes, rope_base=base, learned=learned)
    title = f"{kind} positions, {sizes['block_size']} positions x {sizes['n_embd']} channels" + (
        f" ({sizes['n_head']} heads of {sizes['n_embd'] // sizes['n_head']})" if kind == "rope" else "")
    return plot_positions(table, similarity, kind, out or where / f"positions_{kind}.png", title)
