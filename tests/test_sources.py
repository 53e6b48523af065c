"""The datasets beyond Tiny Shakespeare: zip members, the WikiText hub layout, named splits,
BPE shards in several files, standard input, and the batch samplers."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from llmkit.config import DataConfig
from llmkit.data.batches import (
    EpochSampler,
    epoch_batch,
    sequential_batches,
    sliding_windows,
)
from llmkit.data.prepare import ensure_tokens, tokenize_file
from llmkit.data.shards import TokenStream, load_shards
from llmkit.data.sources import DATASETS, DOCUMENT_SEPARATOR, MIRROR_ENV, download
from llmkit.errors import LlmkitError

SPAM = DATASETS["spam"].files[0]


def test_spam_comes_from_the_mirror_member_by_member(workdir):
    paths = download("spam", "data")
    assert [p.name for p in paths] == ["SMSSpamCollection", "readme"]
    lines = paths[0].read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5574 and sum(line.startswith("spam\t") for line in lines) == 747


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_a_zip_source_is_extracted_by_member_name_only(workdir, mirror, monkeypatch):
    """Members are looked up by their exact names and written under llmkit's names: an archive
    with `../` or absolute paths cannot write outside the data directory."""
    monkeypatch.delenv(MIRROR_ENV)
    real = {m.name: (mirror / "sms_spam" / m.name).read_bytes() for m in SPAM.members}
    hostile = workdir / "hostile.zip"
    _zip(hostile, {**real, "../escaped.txt": b"x", "/tmp/llmkit-escaped.txt": b"x"})
    # Not the published archive (its sha256 differs): refused before anything is extracted.
    with pytest.raises(LlmkitError, match="not the expected archive"):
        download("spam", "data", source=hostile)
    assert not (workdir / "escaped.txt").exists()
    # The members themselves still verify one by one when extraction is asked of them directly.
    from llmkit.data.sources import _extract_members

    _extract_members(hostile, SPAM, workdir / "out", "hostile.zip")
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["SMSSpamCollection", "readme"]
    assert not (workdir / "escaped.txt").exists() and not (workdir.parent / "escaped.txt").exists()


def test_a_zip_member_with_wrong_content_leaves_nothing(workdir, mirror):
    from llmkit.data.sources import _extract_members

    bad = workdir / "bad.zip"
    _zip(bad, {"SMSSpamCollection": b"ham\tnot the real file\n", "readme": b"x"})
    with pytest.raises(LlmkitError, match="wrong content"):
        _extract_members(bad, SPAM, workdir / "out", "bad.zip")
    assert not list((workdir / "out").glob("*")) if (workdir / "out").exists() else True


def _hub_copy(root, config: str, splits: dict[str, list[str]]):
    """A directory laid out like the hub repository Salesforce/wikitext (Parquet per split)."""
    import datasets

    for split, rows in splits.items():
        (root / config).mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict({"text": rows}).to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))


ARTICLE_ROWS = ["", " = First Article = \n", "", " Some text about it . \n", " = = A section = = \n",
                " More text . \n", " = Second Article = \n", "", " Its text . \n"]


def test_wikitext_download_reads_a_local_copy_laid_out_as_the_hub(workdir, cli):
    _hub_copy(workdir / "wikitext", "wikitext-2-raw-v1",
              {"train": ARTICLE_ROWS * 20, "validation": ARTICLE_ROWS * 3, "test": ARTICLE_ROWS})
    result = cli("download", "wiki", "--version", "2", "--source", workdir / "wikitext", "--data-dir", "data")
    assert result.code == 0, result.err
    train = workdir / "data/raw/wiki2/train.txt"
    assert result.out.split() == [str(p) for p in ("data/raw/wiki2/train.txt", "data/raw/wiki2/validation.txt",
                                                    "data/raw/wiki2/test.txt")]
    text = train.read_text()
    # Rows are written as they are; articles (not sections) are separated by the EOT marker.
    assert text.replace(DOCUMENT_SEPARATOR + "\n", "") == "".join(ARTICLE_ROWS * 20)
    assert text.count(DOCUMENT_SEPARATOR) == 2 * 20 - 1
    # Then it tokenizes as named splits: train, val (validation) and test.
    shards = ensure_tokens(DataConfig(source="wiki2", tokenizer="bpe", vocab_size=300, root="data"))
    assert set(shards.meta["splits"]) == {"train", "val", "test"}
    assert shards.tokenizer.decode(shards.split("test").window(0, len(shards.split("test")))) == \
        (workdir / "data/raw/wiki2/test.txt").read_text()


def test_wiki_needs_a_version_and_an_unreachable_hub_is_one_clear_error(workdir, cli):
    assert cli("download", "wiki").code != 0
    missing = cli("download", "wiki", "--version", "103", "--source", workdir)
    assert missing.code != 0 and "wikitext-103-raw-v1" in missing.err and "Traceback" not in missing.err


def test_wikitext2_trains_on_valid_and_measures_on_test(workdir, mirror):
    shards = ensure_tokens(DataConfig(source="wikitext2", tokenizer="bpe", vocab_size=512, root="data"))
    assert shards.meta["splits"]["train"]["chars"] == len((mirror / "wikitext-2/valid.txt").read_text())
    val = shards.split("val")
    assert shards.tokenizer.decode(val.window(0, len(val))) == (mirror / "wikitext-2/test.txt").read_text()
    assert shards.meta["dtype"] == "<u2"


def test_a_split_past_the_shard_size_is_several_files_read_as_one(tmp_path, mirror):
    text = (mirror / "wikitext-2/valid.txt").read_text()[:200_000]
    source = tmp_path / "wiki.txt"
    source.write_text(text)
    shards = tokenize_file(source, tmp_path / "tokens", "bpe", vocab_size=400, shard_tokens=10_000)
    info = shards.meta["splits"]["train"]
    assert len(info["files"]) > 3 and all(n == 10_000 for n in info["tokens"][:-1])
    train, val = shards.split("train"), shards.split("val")
    cut = int(len(text) * 0.9)
    assert shards.tokenizer.decode(train.window(0, len(train))) == text[:cut]
    assert shards.tokenizer.decode(val.window(0, len(val))) == text[cut:]
    # A damaged middle shard is refused, naming the command that rebuilds the set.
    middle = tmp_path / "tokens" / info["files"][1]
    middle.write_bytes(middle.read_bytes()[:-2])
    with pytest.raises(LlmkitError) as error:
        load_shards(tmp_path / "tokens").split("train")
    assert "truncated or corrupt" in error.value.message and "--vocab-size 400" in error.value.hint


def test_tokenize_reads_standard_input(workdir, cli):
    text = "From standard input, tokenized with GPT-2's tokenizer.\n" * 30
    result = cli("tokenize", "-", "--tokenizer", "gpt2", "--out", "tokens", "--data-dir", "data", stdin=text)
    assert result.code == 0, result.err
    shards = load_shards(result.out.strip())
    both = np.concatenate([shards.split(s).window(0, len(shards.split(s))) for s in ("train", "val")])
    assert shards.tokenizer.decode(both) == text
    assert cli("tokenize", "-", stdin=text).code != 0  # no --out: nothing to name the shards by


def test_a_corpus_that_is_not_text_is_refused(workdir):
    with pytest.raises(LlmkitError, match="not a text corpus"):
        ensure_tokens(DataConfig(source="spam", root="data"))


def test_epoch_sampler_visits_every_window_once_per_epoch_and_resumes():
    stream = TokenStream([np.arange(1001) % 60000])
    sampler = EpochSampler(len(stream), 10, seed=3)
    assert sampler.n_windows == 100
    starts = np.concatenate([sampler.starts(7) for _ in range(100 // 7 + 1)])[:100]
    assert sorted(starts.tolist()) == list(range(0, 1000, 10))
    # Stop mid-epoch, restore from the saved position: the same windows follow.
    first = EpochSampler(len(stream), 10, seed=3)
    first.starts(130)
    state = first.state_dict()
    again = EpochSampler(len(stream), 10, seed=3)
    again.load_state_dict(state)
    assert np.array_equal(first.starts(50), again.starts(50))
    x, y = epoch_batch(stream, again, 4)
    assert x.shape == (4, 10) and torch.equal(x[:, 1:], y[:, :-1])


def test_sliding_windows_score_every_target_once_with_more_context():
    ids = np.arange(103)
    stream = TokenStream([ids])
    scored = []
    for x, y in sliding_windows(stream, block_size=16, stride=4, batch_size=5):
        assert x.shape[1] <= 16
        for row_x, row_y in zip(x, y):
            keep = row_y != -100
            assert torch.equal(row_y[keep], row_x[keep] + 1)  # the targets are the next ids
            scored += row_y[keep].tolist()
    assert scored == list(range(1, 103))  # every target exactly once, in order
    # stride = T scores the same targets as consecutive windows do.
    full = [y[y != -100] for _, y in sliding_windows(stream, 16, 16, 100)]
    plain = [y.flatten() for _, y in sequential_batches(stream, 16, 100)]
    assert torch.equal(torch.cat(full), torch.cat(plain))
