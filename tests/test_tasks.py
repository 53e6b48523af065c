"""The training objectives beyond next-token prediction — masked LM and number translation —
beam search, and every recipe in recipes/ smoke-trained for 2 steps."""

from __future__ import annotations

import json

import pytest
import torch

from llmkit.config import ConfigError, load_recipe, recipe_from_dict
from llmkit.inference.beam import beam_search
from llmkit.models import build_model
from llmkit.tasks.masked_lm import IGNORE, mask_tokens
from llmkit.tasks.numbers import HELD_OUT, NumbersToWords, held_out, number_words
from llmkit.training.trainer import train

from conftest import RECIPES


@pytest.mark.parametrize("n,words", [
    (0, "zero"), (13, "thirteen"), (20, "twenty"), (21, "twenty one"), (100, "one hundred"),
    (105, "one hundred five"), (1000, "one thousand"), (4021, "four thousand twenty one"),
    (100_000, "one hundred thousand"), (110_011, "one hundred ten thousand eleven"),
    (999_999, "nine hundred ninety nine thousand nine hundred ninety nine"),
])
def test_number_words(n, words):
    assert number_words(n) == words


def test_held_out_numbers_are_never_trained_on():
    task = NumbersToWords(block_size=16)
    val = held_out()
    assert len(set(val)) == HELD_OUT and min(val) >= 1000 and val == task.val
    drawn = task.draw(20_000, torch.Generator().manual_seed(1))
    assert not set(drawn) & set(val)
    assert min(drawn) < 10 and max(drawn) > 100_000  # every length is trained


def test_numbers_batch_is_teacher_forced():
    task = NumbersToWords(block_size=16)
    src, src_mask, tgt_in, tgt_out = task.batch("train", 8, torch.Generator().manual_seed(0))
    assert src.shape == (8, 6) and (src_mask == (src != task.pad)).all()
    assert (tgt_in[:, 0] == task.bos).all()
    real = tgt_out != IGNORE
    # The decoder reads the target shifted right by one: input t + 1 is target t (up to <eos>).
    assert (tgt_in[:, 1:][real[:, 1:]] == tgt_out[:, :-1][real[:, 1:]]).all()
    assert ((tgt_out == task.eos).sum(1) == 1).all()


def test_masking_follows_bert():
    ids = torch.randint(3, 60, (200, 500))
    inputs, targets = mask_tokens(ids, mask_id=64, vocab_size=64, generator=torch.Generator().manual_seed(0))
    chosen = targets != IGNORE
    assert (targets[chosen] == ids[chosen]).all() and (inputs[~chosen] == ids[~chosen]).all()
    assert chosen.float().mean().item() == pytest.approx(0.15, abs=0.005)
    masked = (inputs[chosen] == 64).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.01)
    assert kept == pytest.approx(0.1 + 0.1 / 64, abs=0.01)  # 10% kept, plus random draws that hit the same id


def table_step(table: torch.Tensor):
    """A fixed 'model': log-probs of the next token depend only on the previous token."""
    return lambda prefixes: table[prefixes[:, -1]]


def test_beam_one_without_length_penalty_is_greedy():
    torch.manual_seed(0)
    table = torch.log_softmax(torch.randn(10, 10) * 3, dim=-1)
    greedy, last = [], 0
    for _ in range(12):
        last = int(table[last].argmax())
        greedy.append(last)
        if last == 9:
            break
    assert beam_search(table_step(table), [0], beam=1, max_new_tokens=12, eos=9, length_penalty=0) == greedy


def test_beam_search_finds_what_greedy_misses():
    # From 0, token 1 looks best (0.6) but leads to a flat spread; token 2 (0.4) leads to eos surely.
    probs = torch.full((5, 5), 1e-9)
    probs[0, 1], probs[0, 2] = 0.6, 0.4
    probs[1, :] = 0.2
    probs[2, 4] = 1.0
    table = probs.log()
    assert beam_search(table_step(table), [0], beam=1, max_new_tokens=2, eos=4, length_penalty=0)[0] == 1
    assert beam_search(table_step(table), [0], beam=2, max_new_tokens=2, eos=4, length_penalty=0) == [2, 4]


@pytest.fixture(scope="module")
def numbers_run(tmp_path_factory):
    """seq2seq_numbers at half width and 400 steps (about 6 s)."""
    recipe = load_recipe(RECIPES / "seq2seq_numbers.yaml", [
        f"out_dir={tmp_path_factory.mktemp('numbers') / 'run'}", "train.max_steps=400",
        "train.sample_tokens=0", "model.n_embd=64"])
    return train(recipe)


def test_seq2seq_learns_held_out_numbers(numbers_run, cli):
    result = cli("eval", numbers_run, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    # Numbers never seen in training: the model has learned the rules, not the examples.
    assert report["numbers"] == 1000 and report["exact_match"] >= 0.8, report


def test_seq2seq_generate_translates_each_line(numbers_run, cli):
    result = cli("generate", numbers_run, "--beam", "3", stdin="4021\n7\n")
    assert result.code == 0, result.err
    lines = [line.split("\t") for line in result.out.splitlines()]
    assert [n for n, _ in lines] == ["4021", "7"] and lines[1][1] == "seven"
    bad = cli("generate", numbers_run, stdin="12a\n")
    assert bad.code == 2 and "'12a' is not an integer" in bad.err


def test_encoder_refuses_to_generate(tmp_path, shared_data, cli):
    run = train(load_recipe(RECIPES / "encoder_mlm.yaml", [
        f"out_dir={tmp_path / 'run'}", f"data.root={shared_data}", "train.max_steps=2",
        "train.eval_interval=1", "train.eval_steps=1", "train.sample_tokens=0"]))
    result = cli("generate", run, "--prompt", "x")
    assert result.code == 2 and "is an encoder (masked LM)" in result.err
    report = json.loads(cli("eval", run, "--json").out)
    assert 0 <= report["masked_accuracy"] <= 1 and report["masked_tokens"] > 10_000


@pytest.mark.parametrize("name", ["encoder", "gpt"])
def test_sequence_classifier_ignores_padding(name):
    from llmkit.config import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(name=name, vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8, n_classes=3)
    model = build_model(config).eval()
    ids, mask = torch.randint(20, (2, 8)), torch.arange(8)[None].expand(2, 8) < 5
    other = ids.clone()
    other[:, 5:] = 0
    assert model(ids, mask).shape == (2, 3)
    torch.testing.assert_close(model(ids, mask), model(other, mask))
    # The pooled vector is the last real token's (gpt) or the mean over real tokens (encoder).
    torch.testing.assert_close(model(ids, mask), model(ids[:, :5]))


def test_recipe_pairs_model_and_data():
    with pytest.raises(ConfigError, match="seq2seq cannot train on data.source 'shakespeare'"):
        recipe_from_dict({"model": {"name": "seq2seq"}})
    with pytest.raises(ConfigError, match="numbers source goes with the words tokenizer"):
        recipe_from_dict({"data": {"source": "numbers"}, "model": {"name": "seq2seq"}})


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


# A task's recipe for one finetuning mode (spam_lora.yaml) trains only from a base model:
# tests/test_finetune_llama.py runs each through `llmkit finetune TASK --base ... --mode MODE`.
MODE_RECIPES = {"spam_lora", "spam_last_block", "spam_all", "instruct_lora", "instruct_all"}


@pytest.mark.parametrize("path", sorted(p for p in RECIPES.glob("*.yaml") if p.stem not in MODE_RECIPES),
                         ids=lambda p: p.stem)
def test_every_recipe_trains_for_two_steps(path, tmp_path, shared_data):
    overrides = [f"out_dir={tmp_path / 'run'}", f"data.root={shared_data}", "train.max_steps=2",
                 "train.eval_interval=1", "train.eval_steps=1", "train.sample_tokens=0", "train.device=cpu"]
    if load_recipe(path).data.source in ("wiki2", "wiki103"):
        # GPU recipes on a corpus the offline mirror lacks: the same recipe, its tokenizer and
        # switches, on WikiText-2's valid/test files at a CPU size (no compile: minutes on a CPU).
        overrides += ["data.source=wikitext2", "data.vocab_size=512", "model.n_layer=1", "model.n_embd=32",
                      "model.n_head=2", "model.block_size=32", "train.batch_size=4", "train.micro_batch_size=2",
                      "train.compile=false"]
    recipe = load_recipe(path, overrides)
    run = train(recipe)
    from llmkit.loading import load_model

    trained = load_model(run, "latest")  # the checkpoint describes itself: it builds, with its step
    assert trained.checkpoint.state.step == 2 and trained.config.name == recipe.model.name
    assert load_recipe(run / "recipe.yaml") == trained.checkpoint.recipe
