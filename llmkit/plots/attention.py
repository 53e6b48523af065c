"""Pictures of attention: a trained model's weights on a prompt, and the masks llmkit builds.

Each picture is drawn from the code the models run (llmkit/layers/attention.py), not from a
re-implementation, so it shows what training and generation actually use. Shapes: T query
positions, S key positions, H heads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.layers.attention import Attention, attention_mask
from llmkit.plots.figures import new_figure, save_png, token_texts, visible


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


def draw_attention(loaded, prompt: str, layer: int | None = None, out: Path | None = None) -> Path:
    """`llmkit plot attention`: the weights of every layer (or one) of a loaded model on a prompt.
    Default file: RUN/attention.png (attention_layerN.png for one layer)."""
    if loaded.config.name == "seq2seq":
        raise LlmkitError("attention plots take one sequence; a seq2seq model reads two (source and target)",
                          hint="plot a decoder or encoder run")
    ids = [int(i) for i in loaded.tokenizer.encode(prompt)]
    if not ids:
        raise LlmkitError("the prompt is empty", hint="--prompt 'some text'")
    if len(ids) > loaded.config.block_size:
        raise LlmkitError(f"the prompt is {len(ids)} tokens, longer than the model's context "
                          f"({loaded.config.block_size})", hint="a shorter prompt also gives readable labels")
    weights = attention_weights(loaded.model, torch.tensor(ids))
    names = [f"layer {i}" for i in range(len(weights))]
    if layer is not None:
        if not 0 <= layer < len(weights):
            raise LlmkitError(f"--layer {layer}: the model has layers 0 to {len(weights) - 1}")
        weights, names = [weights[layer]], [names[layer]]
    default = loaded.run_dir / ("attention.png" if layer is None else f"attention_layer{layer}.png")
    return plot_attention(weights, token_texts(loaded.tokenizer, ids), out or default,
                          f"{loaded.run_dir.name} ({loaded.config.name})", names)


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
    figure.suptitle("attention masks (llmkit/layers/attention.py): blue = the query may look at the key",
                    fontsize=10)
    return save_png(plt, figure, path)
