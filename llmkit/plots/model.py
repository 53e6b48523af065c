"""Pictures of what a model computes, as PNG files: attention weights on a prompt, position
encodings, attention masks, and the token embeddings projected to 2-D.

Each picture is drawn from the code the models run (llmkit/models/), not from a re-implementation,
so it shows what training and generation actually use. Shapes: T query positions, S key
positions, C channels, H heads, D head dim, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.models.attention import Attention, attention_mask
from llmkit.models.positions import RoPE, sinusoid_table
from llmkit.plots import new_figure, save_png

# Some characters draw as nothing (a space) or break a line; label them with visible stand-ins.
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible(text: str) -> str:
    """A token's text as a label: whitespace made visible, and never empty."""
    return "".join(_VISIBLE.get(ch, ch) for ch in text) or "∅"


def token_texts(tokenizer, ids: Iterable[int]) -> list[str]:
    """Each token's own text (a piece of a character, for byte-level BPE, decodes to U+FFFD)."""
    return [tokenizer.decode([i]) for i in ids]


# --- attention ---------------------------------------------------------------------------------------


def attention_weights(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """(T,) ids -> one (H, T, T) tensor of attention weights per attention layer, in the order
    the forward pass runs them. A model trained with the fused kernel (attention: sdpa) is switched
    to the explicit computation for this one pass: the same numbers, but the weights are kept."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if not layers:
        raise LlmkitError(f"a {type(model).__name__.lower()} model has no attention: each token is "
                          "predicted from itself alone, so there are no weights to draw",
                          hint="plot a model with attention, e.g. a run of recipes/shakespeare_char.yaml")
    before = [m.explicit for m in layers]
    try:
        for m in layers:
            m.explicit = True
        with torch.no_grad():
            model(ids[None].to(next(model.parameters()).device))
        return [m.weights[0].float().cpu() for m in layers]  # (H, T, T) each
    finally:
        for m, explicit in zip(layers, before):
            m.explicit = explicit


def attention_panel_inches(T: int) -> float:
    """Side of one head's heatmap: room for T token labels, and never too small to read."""
    return max(2.0, 0.16 * T + 0.6)


def plot_attention(weights: list[torch.Tensor], texts: list[str], path: str | Path, title: str,
                   layer_names: list[str]) -> Path:
    """A grid of heatmaps, one row per layer and one column per head, tokens on both axes: row t
    of a heatmap is how query t spreads its attention over the keys (each row sums to 1)."""
    rows, cols, T = len(weights), weights[0].shape[0], len(texts)
    labels = [visible(text) for text in texts]
    rotation = 0 if max(map(len, labels)) <= 2 else 90  # characters fit under their column; words do not
    side = attention_panel_inches(T)
    plt, figure = new_figure(cols * side + 0.8, rows * side + 0.4)
    axes = figure.subplots(rows, cols, squeeze=False)
    for r, (layer, name) in enumerate(zip(weights, layer_names)):
        for h in range(cols):
            ax = axes[r][h]
            image = ax.imshow(layer[h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"{name}, head {h}", fontsize=9)
            ax.set_xticks(range(T), labels if r == rows - 1 else [""] * T, fontsize=7, rotation=rotation)
            ax.set_yticks(range(T), labels if h == 0 else [""] * T, fontsize=7)
            ax.tick_params(length=0)
    figure.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    figure.suptitle(f"{title}: rows are queries, columns the keys they attend to", fontsize=10)
    return save_png(plt, figure, path)


# --- positions ---------------------------------------------------------------------------------------


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
        return rope.cos[:, : D // 2], _cosine(rotated)
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


# --- masks -------------------------------------------------------------------------------------------


def mask_examples(T: int = 8, pad: int = 3) -> list[tuple[str, torch.Tensor, list[str]]]:
    """(title, (T or fewer, S) bool mask, key labels) for the four ways llmkit masks attention,
    each built by `attention_mask` as the models build it."""
    cpu = torch.device("cpu")
    right_padded = torch.tensor([[True] * (T - pad) + [False] * pad])  # (1, S): an encoder batch row
    left_padded = torch.tensor([[False] * pad + [True] * (T - pad)])  # (1, S): a batched prompt
    keys = [str(s) for s in range(T)]
    new = 2  # queries of one cached generation step (more than one: a prompt's last tokens)
    return [
        ("causal (decoder)", attention_mask(T, T, True, None, cpu), keys),
        ("bidirectional, right padding\n(encoder batch row)",
         attention_mask(T, T, False, right_padded, cpu)[0, 0].expand(T, T), keys[: T - pad] + ["pad"] * pad),
        ("causal, left padding\n(batched prompts)",
         attention_mask(T, T, True, left_padded, cpu)[0, 0], ["pad"] * pad + keys[pad:]),
        (f"causal with a KV cache\n({new} new queries, {T} keys)", attention_mask(new, T, True, None, cpu), keys),
    ]


def plot_masks(path: str | Path) -> Path:
    """The masks of `mask_examples` side by side, one cell per (query, key) pair."""
    examples = mask_examples()
    plt, figure = new_figure(3.2 * len(examples), 4.4)
    from matplotlib.colors import ListedColormap

    for ax, (title, mask, keys) in zip(figure.subplots(1, len(examples)), examples):
        T, S = mask.shape
        ax.imshow(mask.numpy(), cmap=ListedColormap(["#eeeeee", "#1f77b4"]), vmin=0, vmax=1)
        ax.set_xticks(range(S), keys, fontsize=7)
        ax.set_yticks(range(T), [str(S - T + t) for t in range(T)], fontsize=7)
        ax.set_xticks([x - 0.5 for x in range(1, S)], minor=True)
        ax.set_yticks([y - 0.5 for y in range(1, T)], minor=True)
        ax.grid(which="minor", color="white", linewidth=1)
        ax.tick_params(which="both", length=0)
        ax.set(title=title, xlabel="key position s", ylabel="query position t")
        ax.title.set_fontsize(9)
    figure.suptitle("attention masks (llmkit/models/attention.py): blue = the query may look at the key",
                    fontsize=10)
    return save_png(plt, figure, path)


# --- a trained model's tables: token embeddings, learned positions -----------------------------------


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
