"""Pictures of a trained model's tables: token embeddings on their principal components, and
the learned position table. Shapes: V vocabulary, C channels, T positions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.plots.figures import new_figure, save_png, token_texts, visible


def _table(model: nn.Module, name: str) -> torch.Tensor | None:
    """The weight of the module called `name` anywhere in the model (a classifier keeps its
    language model as `base`), or None."""
    for path, module in model.named_modules():
        if path.split(".")[-1] == name and isinstance(getattr(module, "weight", None), torch.Tensor):
            return module.weight.detach().float().cpu()
    return None


def token_embedding(model: nn.Module) -> torch.Tensor:
    """The (V, C) token embedding table (`wte` in every llmkit model)."""
    weight = _table(model, "wte")
    if weight is None:
        raise LlmkitError(f"a {type(model).__name__.lower()} model has no token embedding table (wte) to project")
    return weight


def learned_positions(model: nn.Module) -> torch.Tensor:
    """The (T, C) learned position table (`wpe`) of a model trained with positions: learned."""
    weight = _table(model, "wpe")
    if weight is None:
        raise LlmkitError(f"a {type(model).__name__.lower()} model has no learned position table (wpe)")
    return weight


def principal_components(weight: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, C) -> ((V, k) coordinates on the top-k principal axes, (k,) share of the variance each
    explains). Exact SVD of the centred table; V x C is small for every llmkit vocabulary."""
    centred = weight - weight.mean(dim=0)
    _, singular, axes = torch.linalg.svd(centred, full_matrices=False)  # axes: (min(V, C), C)
    explained = singular[:k] ** 2 / (singular**2).sum()
    return centred @ axes[:k].T, explained


_CLASSES = (("upper case", str.isupper, "tab:red"), ("lower case", str.islower, "tab:blue"),
            ("digit", str.isdigit, "tab:green"), ("space", str.isspace, "tab:gray"))


def plot_embeddings(weight: torch.Tensor, texts: list[str], path: str | Path, title: str,
                    max_labels: int = 300) -> Path:
    """Each token's embedding on the first two principal axes, coloured by what its text starts
    with, and labelled with its text (every token of a small vocabulary, evenly spaced ids of a
    large one)."""
    coords, explained = principal_components(weight)
    plt, figure = new_figure(8.0, 8.0)
    ax = figure.add_subplot()
    for name, _, color in (*_CLASSES, ("other", None, "tab:orange")):
        picked = [i for i, t in enumerate(texts) if _class_of(t) == name]
        if picked:
            ax.scatter(coords[picked, 0], coords[picked, 1], s=14, color=color, alpha=0.6, label=name)
    step = max(1, -(-len(texts) // max_labels))
    for i in range(0, len(texts), step):
        ax.annotate(visible(texts[i]), (coords[i, 0].item(), coords[i, 1].item()), fontsize=8,
                    xytext=(2, 2), textcoords="offset points")
    ax.set(xlabel=f"principal component 1 ({explained[0]:.0%} of the variance)",
           ylabel=f"principal component 2 ({explained[1]:.0%} of the variance)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="token starts with", title_fontsize=8)
    return save_png(plt, figure, path)


def _class_of(text: str) -> str:
    first = text.lstrip(" ")[:1] or text[:1]  # BPE words start with their space: class the word
    return next((name for name, test, _ in _CLASSES if first and test(first)), "other")


def draw_embeddings(loaded, out: Path | None = None) -> Path:
    """`llmkit plot embeddings`: a loaded model's token embeddings (default RUN/embeddings.png)."""
    weight = token_embedding(loaded.model)[: loaded.tokenizer.vocab_size]  # (V, C), without padding rows
    texts = token_texts(loaded.tokenizer, range(weight.shape[0]))
    return plot_embeddings(weight, texts, out or loaded.run_dir / "embeddings.png",
                           f"{loaded.run_dir.name}: {weight.shape[0]} token embeddings of {weight.shape[1]} "
                           "channels,\non their first two principal components")
