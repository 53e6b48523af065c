"""What every picture shares: figures of an exact size, saved atomically as PNG, and token labels.

Every figure is `width x height` inches at DPI dots per inch and is saved at exactly that size
(constrained layout fits the labels inside), so a W x H figure is a (W * DPI) x (H * DPI) PNG.
matplotlib is imported only when a picture is drawn, so that `llmkit --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from llmkit.files import atomic_open

DPI = 100


def new_figure(width: float = 7.0, height: float = 4.0):
    """(pyplot, an empty width x height inch figure). matplotlib is imported here, when a picture
    is drawn, so that importing llmkit (and `llmkit --help`) stays fast."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_png(plt, figure, path: str | Path) -> Path:
    """Write the figure (atomically: a reader never sees half a PNG) and free it."""
    with atomic_open(path, "wb") as f:
        figure.savefig(f, format="png", dpi=DPI)
    plt.close(figure)
    return Path(path)


# Some characters draw as nothing (a space) or break a line; label them with visible stand-ins.
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible(text: str) -> str:
    """A token's text as a label: whitespace made visible, and never empty."""
    return "".join(_VISIBLE.get(ch, ch) for ch in text) or "∅"


def token_texts(tokenizer, ids: Iterable[int]) -> list[str]:
    """Each token's own text (a piece of a character, for byte-level BPE, decodes to U+FFFD)."""
    return [tokenizer.decode([i]) for i in ids]
