"""Every number a user can type has a finite range: NaN, infinities, negatives, zeros and
astronomically large values in recipe keys and command-line options are refused with exit 2 and a
message naming the key, before anything is built and within seconds (a hang is a failure)."""

from __future__ import annotations

import dataclasses
import re
import resource
import subprocess
import sys
import time
import typing

import pytest

from conftest import RECIPES, Result
from faults import nothing_built, plain, refused, within

# --- recipe keys ----------------------------------------------------------------------------------

RECIPE_CASES = [
    (("train.lr=nan",), "train.lr"),
    (("train.lr=inf",), "train.lr"),
    (("train.lr=-1",), "train.lr"),
    (("train.seed=99999999999999999999999",), "train.seed"),
    (("model.n_layer=100000000",), "model.n_layer"),
    (("model.n_layer=10000000000000000000000",), "model.n_layer"),
    (("model.n_embd=1e22",), "model.n_embd"),
    (("data.vocab_size=1000000000", "data.tokenizer=bpe"), "data.vocab_size"),
    (("train.batch_size=0",), "train.batch_size"),
    (("train.max_steps=-5",), "train.max_steps"),
    (("train.grad_clip=nan",), "train.grad_clip"),
    (("model.dropout=1.5",), "model.dropout"),
    (("train.max_time=-1",), "train.max_time"),
    (("train.max_time=0",), "train.max_time"),
    (("train.muon_lr=0", "train.optimizer=muon"), "train.muon_lr"),
    (("train.muon_momentum=1.5", "train.optimizer=muon"), "train.muon_momentum"),
    (("train.muon_weight_decay=-0.1", "train.optimizer=muon"), "train.muon_weight_decay"),
]


@pytest.mark.parametrize(("overrides", "key"), RECIPE_CASES, ids=[" ".join(c[0]) for c in RECIPE_CASES])
def test_a_recipe_number_out_of_range(overrides, key, workdir, cli):
    with within(10):
        result = cli("train", RECIPES / "debug.yaml", *overrides, "--device", "cpu")
    assert f"  - {key}: " in "\n".join(refused(result, key))
    nothing_built(workdir)


def _numeric_keys(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    """Every int or float key of the recipe schema, as (dotted path, int or float)."""
    keys, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            keys += _numeric_keys(tp, path + ".")
            continue
        kinds = set(typing.get_args(tp)) or {tp}
        kind = float if float in kinds else int if int in kinds and bool not in kinds else None
        if kind is not None:
            keys.append((path, kind))
    return keys


def _recipe_keys():
    from llmkit.config import Recipe

    for path, kind in _numeric_keys(Recipe):
        if path == "train.seed":  # any 64-bit seed is a seed
            continue
        yield pytest.param(path, kind, id=path)


@pytest.mark.parametrize(("key", "kind"), list(_recipe_keys()))
def test_every_numeric_recipe_key_has_an_upper_bound(key, kind, workdir, cli):
    """A key added to the schema is covered here by itself."""
    value = "1.0e300" if kind is float else str(2**62)
    with within(10):
        result = cli("train", RECIPES / "debug.yaml", f"{key}={value}", "--device", "cpu", "--dry-run")
    refused(result, key)
    nothing_built(workdir)


def test_a_model_too_large_for_memory_is_refused_with_its_size(workdir, cli):
    with within(60):  # downloads and tokenizes the data first (from the mirror)
        result = cli("train", RECIPES / "debug.yaml", "model.n_layer=4096", "model.n_embd=16384", "--dry-run",
                     "--device", "cpu")
    lines = refused(result, "free")
    assert re.search(r"\d{1,3}(,\d{3}){3,} parameters", result.err), lines
    assert not (workdir / "runs").exists()


# --- command-line options -------------------------------------------------------------------------

GENERATE_CASES = [
    (("--temperature", "nan"), "temperature"),
    (("--repetition-penalty", "nan"), "repetition penalty"),
    (("--length-penalty", "nan", "--beam", "2"), "length penalty"),
    (("--top-p", "nan"), "top p"),
    (("--top-p", "1.5"), "top p"),
    (("--min-p", "-1"), "min p"),
    (("--seed", "18446744073709551616"), "seed"),
    (("--seed", "-1"), "seed"),
    (("-n", "99999999999"), "max new tokens"),
    (("--num-samples", "0"), "num samples"),
]


@pytest.mark.parametrize(("options", "name"), GENERATE_CASES, ids=[" ".join(c[0]) for c in GENERATE_CASES])
def test_a_generate_option_out_of_range(options, name, debug_run, workdir, cli):
    with within(10):
        result = cli("generate", debug_run, "-p", "x", "-n", "5", *options)
    refused(result)
    assert name in plain(result.err), result.err
    assert result.out == ""  # not a token was generated


TOKENIZE_CASES = [
    (("--val-fraction", "nan"), "--val-fraction"),
    (("--val-fraction", "1.0"), "--val-fraction"),
    (("--vocab-size", "1000000000", "--tokenizer", "bpe"), "--vocab-size"),
    (("--shard-tokens", "0"), "--shard-tokens"),
]


@pytest.mark.parametrize(("options", "option"), TOKENIZE_CASES,
                         ids=["val-fraction nan", "val-fraction 1.0", "vocab-size 1e9", "shard-tokens 0"])
def test_a_tokenize_option_out_of_range(options, option, workdir, cli):
    (workdir / "text.txt").write_text("hello world\n" * 50)
    with within(10):
        result = cli("tokenize", "text.txt", *options)
    refused(result, option)
    assert "recipe" not in result.err  # the input is a text file: the message speaks of options
    nothing_built(workdir)


EVAL_CASES = [(("--stride", "0"), "--stride"), (("--batch-size", "0"), "--batch-size"),
              (("--context", "99999", "--text", "text.txt"), "--context")]


@pytest.mark.parametrize(("options", "option"), EVAL_CASES, ids=["stride 0", "batch-size 0", "context 99999"])
def test_an_eval_option_out_of_range(options, option, debug_run, workdir, cli):
    (workdir / "text.txt").write_text("To be, or not to be.\n" * 20)
    with within(10):
        result = cli("eval", debug_run, *options)
    refused(result, option)
    assert result.out == ""


def _limited(*args: str, cwd, memory: int = 8 << 30, timeout: float = 120) -> Result:
    """`llmkit ARGS` in a process that may use at most `memory` bytes of address space, so an
    unbounded allocation fails there instead of exhausting this machine."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    proc = subprocess.run([sys.executable, "-m", "llmkit", *map(str, args)], cwd=cwd, capture_output=True, check=False,
                          text=True, timeout=timeout, preexec_fn=limit)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("options", [("--block-size", "100000000"), ("--n-embd", "100000000")],
                         ids=["block-size", "n-embd"])
def test_a_position_picture_too_large_to_draw(options, workdir):
    start = time.monotonic()
    result = _limited("plot", "positions", "--kind", "sinusoidal", *options, "--out", workdir / "p.png", cwd=workdir)
    refused(result, options[0])
    assert time.monotonic() - start < 30
    assert not (workdir / "p.png").exists()
