"""Spam classification: the split as LLMs-from-scratch makes it, the metrics, and a run that learns."""

from __future__ import annotations

import json

import pytest

from llmkit.tasks.classification import balanced_splits, metrics, read_spam

from conftest import REPO


@pytest.fixture(scope="module")
def rows(mirror):
    return read_spam(mirror / "sms_spam/SMSSpamCollection")


def test_lines_split_at_the_first_tab_even_with_quotes(rows, tmp_path):
    assert len(rows) == 5574 and sum(y for _, y in rows) == 747
    assert sum('"' in t for t, _ in rows) == 145  # kept as they are (a CSV reader would mangle them)
    sample = tmp_path / "spam.txt"
    sample.write_text('ham\tsay "hi"\tto her\nspam\t"FREE" entry\n', encoding="utf-8")
    assert read_spam(sample) == [('say "hi"\tto her', 0), ('"FREE" entry', 1)]


def test_split_sizes_balance_and_determinism(rows):
    splits = balanced_splits(rows)
    assert {k: len(v) for k, v in splits.items()} == {"train": 1045, "val": 149, "test": 300}
    everything = [r for split in splits.values() for r in split]
    assert sum(y for _, y in everything) == 747 and len(everything) == 2 * 747  # ham undersampled to 747
    assert balanced_splits(rows) == splits  # same seed, same split
    assert balanced_splits(rows, seed=1) != splits


def test_metrics_by_hand():
    # truth:     1 1 1 0 0 0 0 1
    # predicted: 1 0 1 0 1 0 0 1  -> TP 3, FN 1, FP 1, TN 3
    m = metrics([1, 0, 1, 0, 1, 0, 0, 1], [1, 1, 1, 0, 0, 0, 0, 1])
    assert m["confusion"] == [[3, 1], [1, 3]]
    assert m["accuracy"] == 6 / 8 and m["precision"] == 3 / 4 and m["recall"] == 3 / 4 and m["f1"] == 3 / 4


def test_finetune_spam_learns_and_classifies(workdir, cli):
    result = cli("finetune", "spam", "train.max_steps=60", "train.eval_interval=30", "model.n_layer=1",
                 "model.n_embd=64", "data.vocab_size=512", "--device", "cpu")
    assert result.code == 0, result.err
    run = result.out.strip()
    report = json.loads(cli("eval", run, "--split", "test", "--json").out)
    assert report["examples"] == 300 and report["accuracy"] > 0.85  # chance is 0.5
    assert sum(map(sum, report["confusion"])) == 300 and report["unseen"] < 300
    labels = cli("classify", run, stdin="WINNER!! Claim your FREE prize now, call 09061701461\nok see you at 6 then\n")
    assert labels.code == 0
    first, second = (line.split("\t") for line in labels.out.splitlines())
    assert (first[0], second[0]) == ("spam", "ham") and 0.5 < float(first[1]) <= 1
    refused = cli("generate", run, "-p", "hi")
    assert refused.code == 2 and "classifier" in refused.err


def test_finetune_from_a_base_run_loads_its_weights_and_freezes(workdir, cli):
    import torch

    from llmkit.loading import load_model

    base = cli("train", REPO / "recipes/wikitext2_bpe.yaml", "train.max_steps=4", "train.eval_interval=4",
               "train.eval_steps=1", "train.sample_tokens=0", "model.n_layer=2", "model.n_embd=32",
               "data.vocab_size=300", "--device", "cpu")
    assert base.code == 0, base.err
    base_run = base.out.strip()
    tuned = cli("finetune", "spam", "--base", base_run, "--mode", "last_block", "train.max_steps=3",
                "train.eval_interval=3", "--device", "cpu")
    assert tuned.code == 0, tuned.err
    assert tuned.out.strip() == "runs/spam_wikitext2_bpe_last_block"  # named after the base run and mode
    before, after = load_model(base_run).model, load_model("runs/spam_wikitext2_bpe_last_block").model
    # Frozen: the embeddings and the first block are the base's; trained: the last block.
    assert torch.equal(after.base.embed.wte.weight, before.embed.wte.weight)
    assert torch.equal(after.base.blocks[0].mlp.fc.weight, before.blocks[0].mlp.fc.weight)
    assert not torch.equal(after.base.blocks[-1].mlp.fc.weight, before.blocks[-1].mlp.fc.weight)
