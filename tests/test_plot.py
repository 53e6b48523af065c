"""`llmkit plot`: every kind of picture drawn from a tiny run, at the size its figure asks for and
not blank; the numbers behind the pictures; and clear errors for what cannot be drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llmkit.plots.attention import attention_panel_inches, mask_examples
from llmkit.plots.figures import DPI
from llmkit.plots.positions import position_pictures

from conftest import RECIPES, help_without_torch

PROMPT = "ROMEO:\nBut soft"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny GPT (2 layers, 4 heads) and a bigram, a few steps each, sharing one token directory."""
    from llmkit.config import load_recipe
    from llmkit.training.trainer import train

    root = tmp_path_factory.mktemp("plot_runs")
    common = [f"data.root={root / 'data'}", "train.sample_tokens=0", "train.eval_steps=2", "train.log_interval=2"]
    gpt = load_recipe(RECIPES / "debug.yaml", [*common, f"out_dir={root / 'gpt'}", "train.max_steps=8",
                                               "train.eval_interval=4", "train.warmup_steps=2"])
    bigram = load_recipe(RECIPES / "shakespeare_bigram.yaml", [*common, f"out_dir={root / 'bigram'}",
                                                                "train.max_steps=4", "train.eval_interval=2"])
    return {"gpt": train(gpt), "bigram": train(bigram)}


def assert_picture(path: Path, inches: tuple[float, float]) -> None:
    """The PNG exists, is the figure's size in pixels (give or take rounding), and shows something."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        assert abs(width - inches[0] * DPI) <= 1 and abs(height - inches[1] * DPI) <= 1, (path, image.size, inches)
        gray = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32))
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert gray.std() > 10 and len(colors) > 50, f"{path} looks blank"


def drew(result, path: Path) -> Path:
    assert result.code == 0, result.err
    assert result.out.strip() == str(path)
    return path


def test_loss_curves_of_one_and_several_runs(runs, cli, workdir):
    assert_picture(drew(cli("plot", "loss", runs["gpt"]), runs["gpt"] / "loss.png"), (8, 5))
    overlay = drew(cli("plot", "loss", runs["gpt"], runs["bigram"]), Path("loss.png"))
    assert_picture(workdir / overlay, (8, 5))


def test_learning_rate_of_a_run_and_of_a_recipe(runs, cli, workdir):
    assert_picture(drew(cli("plot", "lr", runs["gpt"]), runs["gpt"] / "lr.png"), (7, 4))
    result = cli("plot", "lr", "shakespeare_char", "train.warmup_steps=500", "--out", "schedule.png")
    assert_picture(workdir / drew(result, Path("schedule.png")), (7, 4))


def test_attention_grid_has_a_row_per_layer_and_a_column_per_head(runs, cli):
    side = attention_panel_inches(len(PROMPT))  # one character, one token
    picture = drew(cli("plot", "attention", runs["gpt"], "--prompt", PROMPT), runs["gpt"] / "attention.png")
    assert_picture(picture, (4 * side + 0.8, 2 * side + 0.4))
    one = cli("plot", "attention", runs["gpt"], "-p", PROMPT, "--layer", "1")
    assert_picture(drew(one, runs["gpt"] / "attention_layer1.png"), (4 * side + 0.8, side + 0.4))


def test_positions_fixed_and_learned(runs, cli, workdir):
    for kind in ("sinusoidal", "rope"):
        result = cli("plot", "positions", "--kind", kind, "--block-size", "32", "--n-embd", "64")
        assert_picture(workdir / drew(result, Path(f"positions_{kind}.png")), (12, 4.5))
    learned = drew(cli("plot", "positions", runs["gpt"]), runs["gpt"] / "positions_learned.png")
    assert_picture(learned, (12, 4.5))


def test_masks_and_embeddings(runs, cli, workdir):
    assert_picture(workdir / drew(cli("plot", "masks"), Path("masks.png")), (3.2 * 4, 4.4))
    for run in runs.values():  # the bigram has a token table too
        assert_picture(drew(cli("plot", "embeddings", run), run / "embeddings.png"), (8, 8))


def test_attention_weights_are_causal_rows_and_sdpa_comes_back(runs):
    from llmkit.layers.attention import Attention
    from llmkit.loading import load_model
    from llmkit.plots.attention import attention_weights

    model = load_model(runs["gpt"]).model
    weights = attention_weights(model, torch.arange(10))
    assert len(weights) == 2 and weights[0].shape == (4, 10, 10)
    for layer in weights:
        assert torch.allclose(layer.sum(dim=-1), torch.ones(4, 10), atol=1e-5)  # each query's weights sum to 1
        assert (layer.triu(diagonal=1) == 0).all()  # and none falls on a later position
    assert not any(m.explicit for m in model.modules() if isinstance(m, Attention))


def test_fixed_positions_make_similarity_depend_on_distance_only():
    for kind in ("sinusoidal", "rope"):
        _, similarity = position_pictures(kind, block_size=16, n_embd=32, n_head=2)
        for offset in range(-15, 16):  # constant along every diagonal t - s = offset
            diagonal = similarity.diagonal(offset)
            assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5), (kind, offset)


def test_mask_examples_are_the_masks_the_models_use():
    causal, bidirectional, left_padded, cached = (mask for _, mask, _ in mask_examples(T=8, pad=3))
    assert torch.equal(causal, torch.ones(8, 8, dtype=torch.bool).tril())
    assert bidirectional[:, :5].all() and not bidirectional[:, 5:].any()
    assert left_padded[5, 3:6].all() and not left_padded[5, :3].any() and left_padded[0, 0]
    assert cached.shape == (2, 8) and cached[1].all() and not cached[0, 7]


def test_what_cannot_be_drawn_is_a_clear_error(runs, cli, workdir):
    for args, message in [
        (("attention", runs["bigram"], "-p", "hi"), "error: a bigram model has no attention"),
        (("attention", runs["gpt"], "-p", "x" * 40), "error: the prompt is 40 tokens, longer than"),
        (("attention", runs["gpt"], "-p", "hi", "--layer", "2"), "error: --layer 2: the model has layers 0 to 1"),
        (("positions", "--kind", "learned"), "error: learned positions are trained weights"),
        (("positions", "--kind", "rope", "--n-embd", "12", "--n-head", "4"), "error: --n-embd 12 must split"),
        (("loss", "runs/nothing"), "error: no run directory at runs/nothing"),
        (("lr", "nothing"), "error: recipe not found: nothing"),
    ]:
        result = cli("plot", *args)
        assert result.code == 2, (args, result.err)
        assert result.err.startswith(message) and "Traceback" not in result.err, result.err
        assert result.out == ""


def test_plot_help_lists_every_kind_without_importing_torch():
    help_text = help_without_torch("plot")
    for kind in ("loss", "lr", "attention", "positions", "masks", "embeddings"):
        assert kind in help_text
