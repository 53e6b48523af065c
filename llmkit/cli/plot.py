"""`llmkit plot KIND`: PNG pictures of runs (loss, lr) and of what models compute (attention,
positions, masks, embeddings), drawn by llmkit/plots/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmkit.cli.options import Checkpoint, Model, Overrides

app = typer.Typer(
    help="Draw PNG pictures of runs and models: loss curves, the learning-rate schedule, attention "
    "heatmaps, position encodings, attention masks, token embeddings.",
    no_args_is_help=True,
)
PlotOut = Annotated[Optional[Path], typer.Option(
    "--out", "-o", help="The PNG file to write (default: in the run directory, or ./KIND.png).",
    show_default=False)]

@app.command("loss")
def _plot_loss(
    runs: Annotated[list[str], typer.Argument(help="One or more run directories.", show_default=False)],
    out: PlotOut = None,
) -> None:
    """Val and train loss of one or several runs overlaid, one colour per run; prints the PNG path.

    Default --out: RUN/loss.png for one run, ./loss.png for several.
    Example: llmkit plot loss runs/shakespeare_char runs/shakespeare_bigram --out ladder.png
    """
    from llmkit.plots.curves import draw_loss

    print(draw_loss(runs, out))


@app.command("lr")
def _plot_lr(
    target: Annotated[str, typer.Argument(help="A run directory, or a recipe (file or name).", show_default=False)],
    overrides: Overrides = None,
    out: PlotOut = None,
) -> None:
    """The learning-rate schedule of a recipe or run (warmup, cosine decay), with the rates a run
    logged as dots; prints the PNG path.

    Default --out: RUN/lr.png, or ./lr.png for a recipe.
    Examples: llmkit plot lr shakespeare_char train.warmup_steps=500 | llmkit plot lr runs/shakespeare_char
    """
    from llmkit.plots.curves import draw_schedule

    print(draw_schedule(target, overrides, out))


@app.command("attention")
def _plot_attention(
    run: Model,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text whose attention to draw "
                                        "(short: every token labels a row and a column).", show_default=False)],
    layer: Annotated[Optional[int], typer.Option(help="Draw only this layer (0 is the first; default: all).",
                                                 show_default=False)] = None,
    checkpoint: Checkpoint = "best",
    out: PlotOut = None,
) -> None:
    """Attention weights of a trained model on a prompt: rows are layers, columns heads, tokens on
    both axes; prints the PNG path.

    Default --out: RUN/attention.png (attention_layerN.png with --layer).
    Example: llmkit plot attention runs/shakespeare_char --prompt $'ROMEO:\\nBut soft' --layer 1
    """
    from llmkit.loading import load_model
    from llmkit.plots.attention import draw_attention

    print(draw_attention(load_model(run, checkpoint), prompt, layer, out))


@app.command("positions")
def _plot_positions(
    run: Annotated[Optional[str], typer.Argument(
        help="A run directory or checkpoint: its learned table, or its sizes (default: none).",
        show_default=False)] = None,
    kind: Annotated[Optional[str], typer.Option(
        help="learned (needs a RUN), sinusoidal or rope (default: the run's, or sinusoidal).",
        show_default=False)] = None,
    block_size: Annotated[Optional[int], typer.Option(
        min=1, help="Positions (default: the run's, or 64).", show_default=False)] = None,
    n_embd: Annotated[Optional[int], typer.Option(
        min=2, help="Channels (default: the run's, or 128).", show_default=False)] = None,
    n_head: Annotated[Optional[int], typer.Option(
        min=1, help="Heads, for rope: it rotates each head's n_embd / n_head channels (default: the run's, or 4).",
        show_default=False)] = None,
    checkpoint: Checkpoint = "best",
    out: PlotOut = None,
) -> None:
    """A position encoding and how similar it makes each pair of positions; prints the PNG path.

    Default --out: RUN/positions_KIND.png, or ./positions_KIND.png.
    Examples: llmkit plot positions --kind rope | llmkit plot positions runs/shakespeare_char
    """
    from llmkit.plots.positions import draw_positions

    loaded = None
    if run is not None:
        from llmkit.loading import load_model

        loaded = load_model(run, checkpoint)
    print(draw_positions(loaded, kind, block_size, n_embd, n_head, out, run))


@app.command("masks")
def _plot_masks(out: PlotOut = None) -> None:
    """The attention masks llmkit builds: causal, bidirectional with padding, causal with left
    padding, and a cached generation step; prints the PNG path (default ./masks.png).

    Example: llmkit plot masks --out docs/images/masks.png
    """
    from llmkit.plots.attention import plot_masks

    print(plot_masks(out or Path("masks.png")))


@app.command("embeddings")
def _plot_embeddings(
    run: Model,
    checkpoint: Checkpoint = "best",
    out: PlotOut = None,
) -> None:
    """The token embeddings of a trained model on their first two principal components, each
    labelled with its text; prints the PNG path (default RUN/embeddings.png).

    Example: llmkit plot embeddings runs/shakespeare_char
    """
    from llmkit.loading import load_model
    from llmkit.plots.embeddings import draw_embeddings

    print(draw_embeddings(load_model(run, checkpoint), out))
