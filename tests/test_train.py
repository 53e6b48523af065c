"""Training for real on Tiny Shakespeare: it learns, it resumes exactly, it refuses what would
silently go wrong, and what it saved serves eval and generate."""

from __future__ import annotations

import json
import math

import pytest

from llmkit.checkpoint import load_checkpoint
from llmkit.config import load_recipe
from llmkit.errors import LlmkitError
from llmkit.training.trainer import INTERRUPTED, train

from conftest import assert_same_run, debug_recipe, interrupt_at, losses

# A character model that has learned nothing predicts uniformly: ln(65) = 4.17 nats. Knowing the
# character frequencies gives 3.35 on the val split (the train split's unigram distribution), and
# counting character pairs (add-one smoothed bigram) 2.48. A model below 2.45 is therefore using
# more than the previous character. The debug recipe ends at 2.34-2.39 (seeds 1, 2, 3, 1337).
DEBUG_VAL_LOSS_BOUND = 2.45


def test_debug_recipe_learns(debug_run):
    evals = losses(debug_run, "eval")
    assert evals[0][1] < math.log(65)
    assert evals[-1][1] < DEBUG_VAL_LOSS_BOUND, evals
    assert evals[-1][1] < evals[0][1]


def test_run_directory_is_self_describing(debug_run):
    assert load_recipe(debug_run / "recipe.yaml").model.vocab_size == 65
    best, latest = load_checkpoint(debug_run / "best.pt"), load_checkpoint(debug_run / "latest.pt")
    assert "optimizer" in latest and "optimizer" not in best
    assert latest["tokenizer"]["kind"] == "char" and latest["model_config"]["n_layer"] == 2
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in latest["model"])


def test_sigint_saves_and_resume_equals_an_uninterrupted_run(workdir, monkeypatch):
    steps = ["train.max_steps=60", "train.eval_interval=20", "train.log_interval=5", "model.dropout=0.1"]
    straight = train(debug_recipe(workdir / "a", *steps))

    interrupt_at(monkeypatch, 30)  # between checkpoints: Ctrl-C must save the step it reached
    with pytest.raises(LlmkitError) as info:
        train(debug_recipe(workdir / "b", *steps))
    assert info.value.exit_code == INTERRUPTED
    resumed_dir = workdir / "b" / "run"
    saved = load_checkpoint(resumed_dir / "latest.pt")
    assert saved["step"] == 30
    monkeypatch.undo()

    # The saved optimizer state is the one training had: AdamW has taken 30 steps.
    assert all(state["step"].item() == 30 for state in saved["optimizer"]["state"].values())
    train(debug_recipe(workdir / "b", *steps), resume=True)

    assert_same_run(straight, resumed_dir)  # every logged loss and weight, bit for bit


def test_resume_continues_from_the_saved_step(workdir):
    run = train(debug_recipe(workdir, "train.max_steps=20", "train.eval_interval=10"))
    train(debug_recipe(workdir, "train.max_steps=40", "train.eval_interval=10"), resume=True)
    steps = [step for step, _ in losses(run)]
    assert steps == [10, 20, 30, 40]  # no step trained twice, none skipped
    assert load_checkpoint(run / "latest.pt")["step"] == 40


def test_an_existing_run_is_not_overwritten_by_accident(workdir):
    train(debug_recipe(workdir, "train.max_steps=10", "train.eval_interval=10"))
    with pytest.raises(LlmkitError, match="already holds a run") as info:
        train(debug_recipe(workdir, "train.max_steps=10"))
    assert "--resume" in info.value.hint and "--overwrite" in info.value.hint
    with pytest.raises(LlmkitError, match="nothing to resume"):
        train(debug_recipe(workdir / "elsewhere", "train.max_steps=10"), resume=True)


def test_overwrite_keeps_the_old_run_until_the_new_one_can_start(workdir):
    run = train(debug_recipe(workdir, "train.max_steps=10", "train.eval_interval=10"))
    with pytest.raises(LlmkitError, match="neither a dataset name nor a file"):
        train(debug_recipe(workdir, "data.source=missing.txt"), overwrite=True)
    assert load_checkpoint(run / "latest.pt")["step"] == 10 and (run / "best.pt").is_file()
    train(debug_recipe(workdir, "train.max_steps=5", "train.eval_interval=5"), overwrite=True)
    assert load_checkpoint(run / "latest.pt")["step"] == 5
    assert [step for step, _ in losses(run, "eval")] == [5]


def test_resume_refuses_a_changed_model(workdir):
    train(debug_recipe(workdir, "train.max_steps=10", "train.eval_interval=10"))
    with pytest.raises(LlmkitError, match=r"model.n_layer: 2 -> 3"):
        train(debug_recipe(workdir, "train.max_steps=20", "model.n_layer=3"), resume=True)


def mismatched_shards(workdir, cli):
    other = workdir / "other.txt"
    other.write_text("a much smaller alphabet here\n" * 200)
    result = cli("tokenize", other, "--out", workdir / "other_tokens")
    assert result.code == 0
    return workdir / "other_tokens"


def test_checkpoint_with_another_tokenizer_is_refused(workdir, debug_run, cli):
    shards = mismatched_shards(workdir, cli)
    result = cli("eval", debug_run, "--data", shards)
    assert result.code == 2
    assert "was trained with tokenizer char-" in result.err and "but the shards in" in result.err
    assert "hint: use shards made with the run's tokenizer, or rebuild them: llmkit tokenize" in result.err


def test_resume_onto_shards_with_another_tokenizer_is_refused(workdir, cli):
    train(debug_recipe(workdir, "train.max_steps=10", "train.eval_interval=10"))
    shards = mismatched_shards(workdir, cli)
    with pytest.raises(LlmkitError, match="was trained with tokenizer") as info:
        train(debug_recipe(workdir, "train.max_steps=20", f"data.tokens={shards}"), resume=True)
    assert info.value.hint.startswith("use shards made with the run's tokenizer, or rebuild them: llmkit tokenize")


def test_eval_reports_perplexity_as_exp_of_loss(debug_run, cli):
    result = cli("eval", debug_run, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]), rel=1e-12)
    assert report["bits_per_char"] == pytest.approx(report["loss"] / math.log(2), rel=1e-9)
    assert report["tokens"] == 111_540 - 1  # every val target once
    assert report["loss"] < DEBUG_VAL_LOSS_BOUND


def test_generate_is_repeatable_under_a_seed(debug_run, cli):
    args = ("generate", debug_run, "--prompt", "ROMEO:", "-n", "80")
    first, second = cli(*args, "--seed", "7"), cli(*args, "--seed", "7")
    other = cli(*args, "--seed", "8")
    assert first.code == 0, first.err
    assert first.out == second.out != other.out
    assert first.out.startswith("ROMEO:") and len(first.out) == len("ROMEO:") + 80 + 1  # + final newline


def test_generate_reads_the_prompt_from_stdin(debug_run, cli):
    result = cli("generate", debug_run, "-n", "20", "--seed", "1", "--no-echo", stdin="JULIET:\n")
    assert result.code == 0, result.err
    assert len(result.out) == 21 and not result.out.startswith("JULIET")
