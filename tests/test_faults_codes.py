"""The right exit code and the right words: a corrupt download names its sha256, a bad
config.json names config.json (not a recipe), a too-small --vocab-size for char says the option
is for bpe, a pickled checkpoint says it holds Python objects (never how to run them), a run that
diverges before its first checkpoint names no checkpoint, and a device that does not exist is a
message, not a traceback."""

from __future__ import annotations

import fractions
import json

import pytest
import torch

from llmkit.errors import BAD_INPUT, RUN_FAILED

from conftest import RECIPES
from faults import refused


def test_the_codes_are_two_for_input_and_one_for_a_failed_run():
    assert (BAD_INPUT, RUN_FAILED) == (2, 1)


def test_a_download_with_the_wrong_content_names_its_sha256(workdir, cli):
    (workdir / "fake.txt").write_text("not Shakespeare at all\n")
    lines = refused(cli("download", "shakespeare", "--source", "fake.txt"), "sha256", "fake.txt")
    assert any(line.startswith("hint: ") for line in lines), lines
    assert not (workdir / "data" / "raw" / "shakespeare" / "input.txt").exists()  # nothing unverified is kept
    assert not list(workdir.rglob(".*.tmp"))


def test_a_bad_config_json_names_config_json_not_a_recipe(workdir, cli):
    model = workdir / "hf"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": "two", "n_head": 2, "n_embd": 8,
                                                   "n_positions": 16, "vocab_size": 300}))
    (model / "model.safetensors").write_bytes(b"")
    for command in ("generate", "eval"):
        lines = refused(cli(command, model, *(("-p", "x") if command == "generate" else ())), "n_layer")
        first = lines[0]
        assert "config.json" in first and "recipe" not in first, lines


def test_a_small_vocab_size_for_char_is_about_the_option_not_bpe_sizes(workdir, cli):
    (workdir / "text.txt").write_text("hello world\n" * 50)
    result = cli("tokenize", "text.txt", "--tokenizer", "char", "--vocab-size", "5")
    lines = refused(result, "--vocab-size is for the bpe tokenizer")
    assert "258" not in result.err and "too small" not in result.err, lines


class Payload:
    """Any class: unpickling it means importing and running code named by the file."""

    def __init__(self):
        self.command = "echo pwned"


@pytest.mark.parametrize("thing", [fractions.Fraction(1, 3), Payload()], ids=["fraction", "custom class"])
@pytest.mark.parametrize("command", ["generate", "eval", "export"])
def test_a_checkpoint_holding_python_objects_is_refused_without_advice_to_unpickle(thing, command, workdir, cli):
    path = workdir / "evil.pt"
    torch.save({"format": "llmkit-checkpoint", "version": 2, "model": {"w": torch.zeros(2)}, "extra": thing}, path)
    args = {"generate": ("-p", "x"), "eval": (), "export": ("--out", workdir / "out")}[command]
    result = cli(command, path, *args)
    refused(result, "Python objects", "evil.pt")
    assert "weights_only=False" not in result.err + result.out
    assert "weights_only" not in result.err  # torch's advice, in any spelling, is not llmkit's


def test_a_run_that_diverges_before_its_first_checkpoint_names_none(workdir, cli, monkeypatch):
    from llmkit.tasks.language_modeling import LanguageModeling

    original = LanguageModeling.loss

    def poisoned(self, model, batch):  # every training loss is NaN; evaluation is left alone
        loss = original(self, model, batch)
        return loss * float("nan") if model.training else loss

    args = ("train", RECIPES / "debug.yaml", f"out_dir={workdir / 'nan'}", f"data.root={workdir / 'data'}",
            "train.max_steps=20", "train.eval_interval=10", "train.eval_steps=1", "train.sample_tokens=0",
            "--device", "cpu")
    with monkeypatch.context() as patch:
        patch.setattr(LanguageModeling, "loss", poisoned)
        result = cli(*args)
    assert result.code == RUN_FAILED, result.err
    assert "Traceback" not in result.err and "training diverged" in result.err and "at step 1" in result.err
    assert not (workdir / "nan" / "latest.pt").exists()
    hint = [line for line in result.err.splitlines() if line.startswith("hint: ")]
    assert len(hint) == 1 and "latest.pt" not in hint[0] and "--resume" not in hint[0], hint
    # What the hint says to do (start again) works: the directory is not taken for a run.
    again = cli(*args[:-6], "train.max_steps=1", "train.eval_interval=1", "train.eval_steps=1",
                "train.sample_tokens=0", "--device", "cpu")
    assert again.code == 0, again.err
    assert (workdir / "nan" / "latest.pt").is_file()


DEVICE_COMMANDS = {
    "train": lambda run: ("train", RECIPES / "debug.yaml", "--dry-run"),
    "generate": lambda run: ("generate", run, "-p", "x", "-n", "2"),
    "eval": lambda run: ("eval", run),
    "chat": lambda run: ("chat", run),
}


@pytest.mark.parametrize("value", ["bogus", "meta", "cpu:x"])
@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_a_device_that_does_not_exist(command, value, debug_run, workdir, cli):
    result = cli(*DEVICE_COMMANDS[command](debug_run), "--device", value, stdin="hello\n")
    refused(result, "device")
    assert result.out == ""
    assert not (workdir / "runs").exists()
