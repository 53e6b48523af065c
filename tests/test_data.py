"""Download (mirror, --source, checksums), the char tokenizer, and token shards on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmkit.config import DataConfig
from llmkit.data.prepare import ensure_tokens, tokenize_file
from llmkit.data.shards import HEADER_BYTES, TokenStream, load_shards, write_shard
from llmkit.data.sources import MIRROR_ENV, download, file_sha256
from llmkit.data.tokenizer import CharTokenizer, identity, load_tokenizer, save_tokenizer
from llmkit.errors import LlmkitError

SHAKESPEARE_SHA = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_download_from_the_mirror_verifies_and_then_has_nothing_to_do(workdir, capsys):
    (path,) = download("shakespeare", "data")
    assert path.resolve() == workdir / "data/raw/shakespeare/input.txt"
    assert file_sha256(path) == SHAKESPEARE_SHA
    capsys.readouterr()
    mtime = path.stat().st_mtime_ns
    assert download("shakespeare", "data") == [path]
    assert "already present and verified: nothing to do" in capsys.readouterr().err
    assert path.stat().st_mtime_ns == mtime


def test_download_replaces_a_corrupted_copy(workdir):
    (path,) = download("shakespeare", "data")
    path.write_text("not shakespeare")
    download("shakespeare", "data")
    assert file_sha256(path) == SHAKESPEARE_SHA


def test_source_with_wrong_content_is_refused_and_leaves_nothing(workdir, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV)
    fake = workdir / "fake.txt"
    fake.write_text("To be or not to be\n")
    with pytest.raises(LlmkitError, match="wrong content.*sha256"):
        download("shakespeare", "data", source=fake)
    raw = workdir / "data/raw/shakespeare"
    assert not any(raw.iterdir())  # no partial or temporary file left behind


def test_source_may_be_a_mirror_directory(workdir, mirror, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV)
    (path,) = download("shakespeare", "data", source=mirror)
    assert file_sha256(path) == SHAKESPEARE_SHA


def test_unknown_dataset_suggests_the_known_one():
    with pytest.raises(LlmkitError) as info:
        download("shakespear", "data")
    assert info.value.hint == "did you mean 'shakespeare'?"


@pytest.mark.parametrize("text", ["hello world", "tabs\tand\r\nCRLF\n", "ünïcødé ✓ 日本語 🙂\n", "a"])
def test_char_tokenizer_round_trip(text):
    tokenizer = CharTokenizer.train(text)
    ids = tokenizer.encode(text)
    assert tokenizer.vocab_size == len(set(text))
    assert tokenizer.decode(ids) == text
    assert list(ids) == [tokenizer.chars.index(c) for c in text]


def test_char_tokenizer_names_unknown_characters():
    tokenizer = CharTokenizer.train("abc")
    with pytest.raises(LlmkitError, match="not in this tokenizer's vocabulary: 'xz'"):
        tokenizer.encode("abxcz")


def test_tokenizer_save_load_keeps_identity(tmp_path):
    tokenizer = CharTokenizer.train("the quick brown fox")
    save_tokenizer(tokenizer, tmp_path / "tok.json")
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert identity(loaded) == identity(tokenizer)
    assert identity(CharTokenizer.train("other text")) != identity(tokenizer)


def test_text_to_shards_to_memmap_to_text(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\r\n¿Qué? — ✓\n" * 50
    source = tmp_path / "corpus.txt"
    source.write_bytes(text.encode("utf-8"))
    shards = tokenize_file(source, tmp_path / "tokens", "char", val_fraction=0.1)
    train, val = shards.split("train"), shards.split("val")
    assert isinstance(train.parts[0], np.memmap)
    assert train.parts[0].dtype == np.uint16
    cut = int(len(text) * 0.9)
    assert shards.tokenizer.decode(train.window(0, len(train))) == text[:cut]
    assert shards.tokenizer.decode(val.window(0, len(val))) == text[cut:]
    meta = json.loads((tmp_path / "tokens/meta.json").read_text())
    assert meta["tokenizer"]["identity"] == identity(shards.tokenizer)
    assert meta["splits"]["train"]["tokens"] == [cut]


def test_shakespeare_split_matches_nanogpt(workdir):
    shards = ensure_tokens(DataConfig(source="shakespeare"))
    # nanoGPT's shakespeare_char/prepare.py: 65 characters, 1,003,854 train and 111,540 val tokens.
    assert shards.tokenizer.vocab_size == 65
    assert (len(shards.split("train")), len(shards.split("val"))) == (1_003_854, 111_540)


def test_stream_reads_several_shards_as_one(tmp_path):
    ids = np.arange(1000) % 300
    bounds = [0, 10, 10, 400, 1000]  # includes an empty shard
    parts = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        write_shard(tmp_path / f"s{i}.bin", ids[a:b], np.dtype("<u2"))
        from llmkit.data.shards import open_shard

        parts.append(open_shard(tmp_path / f"s{i}.bin", "rebuild"))
    stream = TokenStream(parts)
    assert len(stream) == 1000
    assert np.array_equal(stream.window(5, 500), ids[5:505])
    assert np.array_equal(stream.windows([0, 395, 990], 10), np.stack([ids[0:10], ids[395:405], ids[990:1000]]))


def test_truncated_shard_is_refused_with_the_rebuild_command(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text("some text to tokenize, long enough for two splits\n" * 20)
    out = tmp_path / "tokens"
    tokenize_file(source, out, "char")
    shard = out / "train_000.bin"
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(LlmkitError) as info:
        load_shards(out).split("train")
    assert "truncated or corrupt" in info.value.message
    assert info.value.hint == f"rebuild the shards: llmkit tokenize {source} --tokenizer char --val-fraction 0.1 --out {out}"


def test_corrupt_header_is_refused(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text("abcdefghij" * 100)
    tokenize_file(source, tmp_path / "tokens", "char")
    shard = tmp_path / "tokens/val_000.bin"
    shard.write_bytes(b"\0" * HEADER_BYTES + shard.read_bytes()[HEADER_BYTES:])
    with pytest.raises(LlmkitError, match="not an llmkit token shard"):
        load_shards(tmp_path / "tokens").split("val")


def test_interrupted_tokenization_never_looks_complete(tmp_path, monkeypatch):
    source = tmp_path / "corpus.txt"
    source.write_text("hello there\n" * 100)
    out = tmp_path / "tokens"
    tokenize_file(source, out, "char")
    source.write_text("a different text\n" * 100)

    from llmkit.data.tokenizer import CharTokenizer

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process died while writing the val shard

    calls = iter([CharTokenizer.encode_batch, killed])
    monkeypatch.setattr(CharTokenizer, "encode_batch", lambda *a, **k: next(calls)(*a, **k))
    with pytest.raises(KeyboardInterrupt):
        tokenize_file(source, out, "char")
    with pytest.raises(LlmkitError, match="no meta.json"):
        load_shards(out)
    assert not list(out.glob(".*.tmp"))


def test_empty_and_non_utf8_corpora_are_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(LlmkitError, match="is empty"):
        tokenize_file(tmp_path / "empty.txt", tmp_path / "t1")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(LlmkitError, match="not UTF-8"):
        tokenize_file(tmp_path / "latin1.txt", tmp_path / "t2")


def test_ensure_tokens_reuses_current_shards_and_rebuilds_stale_ones(tmp_path, capsys):
    source = tmp_path / "notes.txt"
    source.write_text("version one of the notes\n" * 40)
    data = DataConfig(source=str(source), root=str(tmp_path / "data"))
    first = ensure_tokens(data)
    assert first.directory == tmp_path / "data/tokens/notes-char"
    capsys.readouterr()
    ensure_tokens(data)
    assert "tokenizing" not in capsys.readouterr().err
    source.write_text("version two, with new characters: XYZ\n" * 40)
    second = ensure_tokens(data)
    assert "tokenizing" in capsys.readouterr().err
    assert "X" in second.tokenizer.chars
