"""Nothing bad is silently accepted: a key given twice, contradictory flags, names that are not
names, options that do not apply, a judge's reply that is not a score, a run with no losses. Each
is refused (exit 2, a message naming the fix), or, for options another one makes moot, at least
said aloud."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmkit.errors import LlmkitError
from llmkit.tasks.scoring import parse_score

from conftest import RECIPES
from faults import nothing_built, refused


@pytest.mark.parametrize("text", [
    "name: a\nname: b\n",
    "name: a\ntrain:\n  lr: 1.0e-3\n  max_steps: 5\n  lr: 2.0e-3\n",
    "name: a\ntrain:\n  lr: 1.0e-3\ntrain:\n  max_steps: 5\n",
], ids=["top level", "nested", "a section"])
def test_a_key_given_twice_in_a_recipe(text, workdir, cli):
    (workdir / "twice.yaml").write_text(text)
    lines = refused(cli("train", "twice.yaml"), "given twice", "twice.yaml")
    assert "line" in lines[0]  # where, so it can be found
    nothing_built(workdir)


def test_resume_and_overwrite_together(workdir, cli):
    result = cli("train", RECIPES / "debug.yaml", "--resume", "--overwrite", "--device", "cpu")
    refused(result, "--resume", "--overwrite")
    nothing_built(workdir)


@pytest.mark.parametrize("name", [
    "", ".", "..", "../..", "/",
    "../escape",
])
def test_a_name_that_names_no_run(name, workdir, cli):
    result = cli("train", RECIPES / "debug.yaml", f"name={name}", "--device", "cpu", "--dry-run")
    assert "  - name: " in "\n".join(refused(result, "name"))
    nothing_built(workdir)


@pytest.mark.parametrize("options", [
    ("--vocab-size", "500"),
    ("--tokenizer", "char", "--vocab-size", "500"),
    ("--tokenizer", "gpt2", "--vocab-size", "500"),
], ids=["char by default", "char", "gpt2"])
def test_a_vocab_size_for_a_tokenizer_that_has_a_fixed_one(options, workdir, cli):
    (workdir / "text.txt").write_text("hello world\n" * 50)
    lines = refused(cli("tokenize", "text.txt", *options), "--vocab-size is for the bpe tokenizer")
    assert any(line.startswith("hint: ") and "--tokenizer bpe" in line for line in lines), lines
    nothing_built(workdir)


@pytest.mark.parametrize("reply", ["1e309", "-3", "150", "nan", "inf", "", "85.5", "Score: -1", "eighty-five"])
def test_a_judge_reply_that_is_not_a_score(reply):
    with pytest.raises(LlmkitError, match="not a score from 0 to 100"):
        parse_score(reply)


@pytest.mark.parametrize("reply", ["85", "Score: 85", "85.0", " 85\n", "85/100"])
def test_a_judge_reply_that_is_a_score(reply):
    assert parse_score(reply) == 85


@pytest.fixture
def copied_run(debug_run, tmp_path) -> Path:
    """A copy of the debug run, to damage."""
    return Path(shutil.copytree(debug_run, tmp_path / "copy", ignore=shutil.ignore_patterns(".lock")))


@pytest.mark.parametrize(("metrics", "words"), [
    ("", ("holds no losses",)),
    ("\n\n", ("holds no losses",)),
    ("not json\n{\"step\": 1}\n", ("metrics.jsonl", "line 1")),
], ids=["empty", "blank lines", "not json"])
def test_plot_loss_of_a_run_with_no_losses(metrics, words, copied_run, workdir, cli):
    (copied_run / "metrics.jsonl").write_text(metrics)
    (copied_run / "loss.png").unlink(missing_ok=True)
    lines = refused(cli("plot", "loss", copied_run), *words)
    assert any(line.startswith("hint: ") for line in lines), lines
    assert not (copied_run / "loss.png").exists()  # no empty picture either


def said(result, option: str) -> bool:
    """Refused naming `option`, or done with a word about it on stderr."""
    assert "Traceback" not in result.err + result.out, result.err[-3000:]
    return result.code in (0, 2) and option in result.err


@pytest.mark.parametrize("option", [("--top-p", "0.5"), ("--min-p", "0.1"), ("--repetition-penalty", "1.3")],
                         ids=["top-p", "min-p", "repetition-penalty"])
def test_sampling_options_with_beam_search(option, debug_run, workdir, cli):
    assert said(cli("generate", debug_run, "-p", "x", "-n", "3", "--beam", "2", *option), option[0])


@pytest.mark.parametrize("kind", ["q8_0", "bogus"])
def test_a_gguf_type_for_a_hugging_face_export(kind, export_run, workdir, cli):
    result = cli("export", export_run, "--out", workdir / "hf", "--type", kind)
    assert said(result, "--type"), result.err
    assert kind != "bogus" or result.code == 2
