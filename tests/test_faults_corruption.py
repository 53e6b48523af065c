"""Corruption is detected: a raw file edited after its download, a checkpoint with flipped bytes, a
meta.json that disagrees with its tokenizer, a shard with a flipped byte. Each is exit code 2 with
a message naming the damaged file, never a traceback, never garbage with exit code 0."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from llmkit.data.shards import HEADER_BYTES

from conftest import RECIPES
from faults import clean

SMALL = ("train.sample_tokens=0", "train.max_steps=5", "train.eval_interval=5", "train.eval_steps=2",
         "--device", "cpu")


def flip(path: Path, at: int, count: int = 4, mask: int = 0xFF) -> None:
    """XOR `count` bytes of the file from offset `at` with `mask` (the size stays the same)."""
    data = bytearray(path.read_bytes())
    for i in range(at, at + count):
        data[i] ^= mask
    path.write_bytes(bytes(data))


@pytest.fixture
def shards(tmp_path, cli) -> Path:
    text = tmp_path / "notes.txt"
    text.write_text("It was the best of times, it was the worst of times, it was the age of wisdom.\n" * 100)
    made = cli("tokenize", text, "--out", tmp_path / "shards")
    assert made.code == 0, made.err
    return tmp_path / "shards"


def train_on(cli, tmp_path, shard_dir):
    return cli("train", RECIPES / "debug.yaml", f"data.tokens={shard_dir}", f"out_dir={tmp_path / 'run'}", *SMALL)


# --- (a) a raw file edited after download ------------------------------------------------------------


def test_a_raw_file_edited_after_download_is_refused(tmp_path, cli):
    root = tmp_path / "data"
    fetched = cli("download", "shakespeare", "--data-dir", root)
    assert fetched.code == 0, fetched.err
    raw = root / "raw" / "shakespeare" / "input.txt"
    with open(raw, "ab") as f:
        f.write(b"x")
    tokenized = cli("tokenize", "shakespeare", "--data-dir", root)
    trained = cli("train", RECIPES / "debug.yaml", f"data.root={root}", f"out_dir={tmp_path / 'run'}", *SMALL)
    for result in (tokenized, trained):
        assert result.code == 2, result.err
        assert "has changed since it was downloaded" in result.err and str(raw) in result.err, result.err
        assert f"llmkit download shakespeare --data-dir {root} --force" in result.err and clean(result)
    assert not (root / "tokens").exists() or not any((root / "tokens").rglob("*.bin"))
    assert not (tmp_path / "run").exists()
    # The hint's command repairs it.
    assert cli("download", "shakespeare", "--data-dir", root, "--force").code == 0
    assert cli("tokenize", "shakespeare", "--data-dir", root).code == 0


# --- (b) a checkpoint with flipped bytes --------------------------------------------------------------


@pytest.mark.parametrize("where", [0.5, 0.3, 0.7])
def test_a_checkpoint_with_flipped_weight_bytes_is_refused(debug_run, tmp_path, cli, where):
    run = tmp_path / "run"
    shutil.copytree(debug_run, run)
    best = run / "best.pt"
    flip(best, int(best.stat().st_size * where))
    for result in (cli("generate", run, "-p", "hi", "-n", "5", "--seed", "1"), cli("eval", run)):
        assert result.code == 2, (result.code, result.out, result.err)
        assert "damaged" in result.err or "not a readable checkpoint" in result.err, result.err
        assert str(best) in result.err and result.out == "" and clean(result)
    # The hint's way out: the run's other checkpoint is whole and still generates.
    other = cli("generate", run, "--checkpoint", "latest", "-p", "hi", "-n", "5", "--seed", "1")
    assert other.code == 0 and other.out.strip(), other.err


def test_a_truncated_checkpoint_is_refused(debug_run, tmp_path, cli):
    path = tmp_path / "best.pt"
    data = (debug_run / "best.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result = cli("generate", path, "-p", "hi", "-n", "5")
    assert result.code == 2 and "not a readable checkpoint" in result.err and result.out == "", result.err
    assert clean(result)


def test_a_checkpoint_with_a_flipped_bit_in_its_tokenizer_is_refused(debug_run, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(debug_run, run)
    best = run / "best.pt"
    alphabet = b"abcdefghijklmnopqrstuvwxyz"
    at = best.read_bytes().find(alphabet)  # the char tokenizer's table, inside the pickled metadata
    assert at > 0
    flip(best, at, count=1, mask=0x01)  # 'a' -> '`': one bit
    prompt = ("generate", "-p", "the king", "-n", "40", "--seed", "1")  # no 'a' in it: it would be refused
    intact = cli(prompt[0], debug_run, *prompt[1:])
    assert intact.code == 0, intact.err
    result = cli(prompt[0], run, *prompt[1:])
    assert result.code == 2 and "damaged" in result.err, (result.code, result.out, intact.out)


# --- (c) meta.json edited to disagree -----------------------------------------------------------------


def test_a_meta_json_that_disagrees_with_its_tokenizer_is_refused(shards, tmp_path, cli):
    meta = json.loads((shards / "meta.json").read_text())
    meta["vocab_size"] += 5
    (shards / "meta.json").write_text(json.dumps(meta))
    result = train_on(cli, tmp_path, shards)
    assert result.code == 2, result.err
    assert "meta.json" in result.err and "vocab_size" in result.err and str(shards) in result.err, result.err
    assert clean(result) and not (tmp_path / "run" / "latest.pt").exists()


# --- (d) a shard with a flipped byte --------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_shard_with_a_flipped_byte_is_refused(shards, tmp_path, cli, split):
    shard = shards / f"{split}_000.bin"
    size = shard.stat().st_size
    flip(shard, HEADER_BYTES + 2 * ((size - HEADER_BYTES) // 4), count=1, mask=0x01)  # one id's low bit
    assert shard.stat().st_size == size
    result = train_on(cli, tmp_path, shards)
    assert result.code == 2, result.err
    assert "damaged" in result.err and str(shard) in result.err and "llmkit tokenize" in result.err, result.err
    assert clean(result) and not (tmp_path / "run" / "latest.pt").exists()


# --- (e) what the checksum costs -------------------------------------------------------------------------


def test_loading_a_checkpoint_with_its_checksum_is_fast(debug_run):
    from llmkit.checkpoint import load_checkpoint

    load_checkpoint(debug_run / "best.pt")  # warm the page cache and torch's first-call costs
    started = time.perf_counter()
    checkpoint = load_checkpoint(debug_run / "best.pt")
    elapsed = time.perf_counter() - started
    size = (debug_run / "best.pt").stat().st_size
    print(f"load_checkpoint(best.pt, {size / 1e6:.2f} MB, checksum verified): {elapsed * 1000:.1f} ms")
    assert "weights_crc32" not in checkpoint and checkpoint["model"]  # the checksum was consumed: it was checked
    assert elapsed < 2.0
