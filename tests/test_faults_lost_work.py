"""Faults that could lose someone's work: two trainings into one run, an export or a tokenize over
a directory that holds other files, shards with impossible ids, a terminal closed under a run, a
metrics line cut by a kill, and a judge that does not answer after the answers were computed.
Every refusal is exit code 2, one message, no traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from llmkit.checkpoint import load_checkpoint
from llmkit.training.metrics import MetricsLog

from conftest import RECIPES
from faults import clean

SMALL = ("train.sample_tokens=0", "train.eval_steps=2", "--device", "cpu")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def start_training(run_dir: Path, data_root: Path, *overrides: str) -> subprocess.Popen:
    """A real `llmkit train` process on the debug recipe; its stderr goes to a file beside the run
    (a pipe nobody reads could fill and stall it), read back by `finish`."""
    args = [sys.executable, "-m", "llmkit", "train", str(RECIPES / "debug.yaml"), f"out_dir={run_dir}",
            f"data.root={data_root}", "train.log_interval=1", *SMALL, *overrides]
    with open(run_dir.parent / f"{run_dir.name}.stderr", "w") as err:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, cwd=run_dir.parent,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(proc: subprocess.Popen, run_dir: Path, timeout: float = 300) -> str:
    """Wait for the process to end (killing it if it does not) and return its stderr."""
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return (run_dir.parent / f"{run_dir.name}.stderr").read_text(errors="replace")


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the training process ended (rc {proc.returncode}) before {what}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in MetricsLog(run_dir / "metrics.jsonl").read() if r["kind"] == "train"]


def lock_holder(run_dir: Path) -> str:
    try:
        return (run_dir / ".lock").read_text().strip()
    except OSError:
        return ""


# --- (a) two trainings into one run directory ---------------------------------------------------------


def test_a_second_training_into_a_running_run_is_refused_and_the_first_finishes(tmp_path, data_root, cli):
    import llmkit.training.trainer  # noqa: F401  (imported now, so the refused attempts below take a second)

    run_dir = tmp_path / "shared_run"
    first = start_training(run_dir, data_root, "train.max_steps=150", "train.eval_interval=150")
    try:
        wait_for(lambda: lock_holder(run_dir) == str(first.pid), first, what="the first run took its lock")
        # Plainly (no checkpoint exists yet, so only the lock can stop it) and with --overwrite,
        # which would otherwise delete the running run's history.
        for extra in ((), ("--overwrite",)):
            second = cli("train", RECIPES / "debug.yaml", f"out_dir={run_dir}", f"data.root={data_root}",
                         "train.max_steps=5", "train.eval_interval=5", *SMALL, *extra)
            assert second.code == 2, second.err
            assert f"process {first.pid}" in second.err and "in use" in second.err, second.err
            assert clean(second)
        assert first.poll() is None, "the first run ended before the second was tried: the test proved nothing"
    finally:
        err = finish(first, run_dir)
    assert first.returncode == 0, err[-2000:]
    assert load_checkpoint(run_dir / "latest.pt")["step"] == 150
    assert train_steps(run_dir) == list(range(1, 151))  # nothing interleaved, nothing lost
    assert lock_holder(run_dir) == str(first.pid)  # no one else ever held it


# --- (b) export over a user's directory ----------------------------------------------------------------


def test_export_does_not_replace_a_users_files_without_force(tmp_path, data_root, cli):
    run_dir = tmp_path / "gpt2_shaped"
    trained = cli("train", RECIPES / "wikitext2_bpe.yaml", "model.bias=true", "model.n_layer=1", "model.n_embd=32",
                  "data.vocab_size=300", "train.max_steps=2", "train.eval_interval=2", "train.eval_steps=1",
                  "train.sample_tokens=0", f"out_dir={run_dir}", f"data.root={data_root}", "--device", "cpu")
    assert trained.code == 0, trained.err
    out = tmp_path / "my_model"
    out.mkdir()
    mine = '{"model_type": "gpt2", "note": "my own model, trained for a week"}\n'
    (out / "config.json").write_text(mine)
    refused = cli("export", run_dir, "--out", out)
    assert refused.code == 2 and "not empty" in refused.err and "--force" in refused.err, refused.err
    assert clean(refused)
    assert (out / "config.json").read_text() == mine and sorted(p.name for p in out.iterdir()) == ["config.json"]

    forced = cli("export", run_dir, "--out", out, "--force")
    assert forced.code == 0, forced.err
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == "gpt2" and written["n_layer"] == 1 and written["n_embd"] == 32
    assert (out / "model.safetensors").is_file() and (out / "vocab.json").is_file()
    assert sorted(Path(p).name for p in forced.out.split()) == ["config.json", "merges.txt", "model.safetensors",
                                                                "vocab.json"]


# --- (c) tokenize into a run directory ---------------------------------------------------------------


def test_tokenize_refuses_to_write_shards_into_a_run_directory(tmp_path, data_root, cli):
    run_dir = tmp_path / "run"
    trained = cli("train", RECIPES / "debug.yaml", f"out_dir={run_dir}", f"data.root={data_root}",
                  "train.max_steps=2", "train.eval_interval=2", *SMALL)
    assert trained.code == 0, trained.err
    tokenizer = (run_dir / "tokenizer.json").read_bytes()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    text = tmp_path / "notes.txt"
    text.write_text("some notes to tokenize, long enough to split into train and val.\n" * 50)
    refused = cli("tokenize", text, "--out", run_dir)
    assert refused.code == 2 and "is not a shard directory" in refused.err, refused.err
    assert "best.pt" in refused.err and clean(refused)
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before  # tokenizer.json and everything else untouched, nothing added
    assert (run_dir / "tokenizer.json").read_bytes() == tokenizer and b'"char"' in tokenizer


# --- (d) shards whose ids are outside the vocabulary ------------------------------------------------------


def test_shards_with_ids_outside_the_vocabulary_are_refused_before_training(tmp_path, data_root, cli):
    from llmkit.data.shards import load_shards, open_shard, write_shard

    text = tmp_path / "notes.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    shards = tmp_path / "shards"
    made = cli("tokenize", text, "--out", shards)
    assert made.code == 0, made.err
    meta = json.loads((shards / "meta.json").read_text())
    vocab = meta["vocab_size"]
    ids = np.array(open_shard(shards / "train_000.bin", ""), dtype=np.int64)
    ids[len(ids) // 2] = vocab + 7  # one id past the table; the rest as they were
    dtype = np.dtype(meta["dtype"])
    count = write_shard(shards / "train_000.bin", ids, dtype)
    # meta.json made to agree (count and checksum), so that only the range check can catch it
    meta["splits"]["train"]["tokens"][0] = count
    meta["splits"]["train"]["crc32"][0] = zlib.crc32(ids.astype(dtype).tobytes())
    (shards / "meta.json").write_text(json.dumps(meta))
    load_shards(shards)  # the directory itself reads: the damage is inside the ids

    run_dir = tmp_path / "run"
    refused = cli("train", RECIPES / "debug.yaml", f"data.tokens={shards}", f"out_dir={run_dir}",
                  "train.max_steps=5", "train.eval_interval=5", *SMALL)
    assert refused.code == 2, refused.err
    assert "outside the tokenizer" in refused.err and f"id {vocab + 7}" in refused.err, refused.err
    assert "damaged" not in refused.err and clean(refused)
    assert "training for" not in refused.err  # refused before training started
    assert not (run_dir / "latest.pt").exists()


# --- (e) the terminal closes under a run ---------------------------------------------------------------


def test_sighup_saves_the_run_and_resume_finishes_it(tmp_path, data_root, cli):
    run_dir = tmp_path / "hup"
    common = ("train.max_steps=60", "train.eval_interval=40")
    proc = start_training(run_dir, data_root, *common)
    try:
        wait_for(lambda: any(s >= 15 for s in train_steps(run_dir)), proc, what="step 15")
        proc.send_signal(signal.SIGHUP)
    finally:
        err = finish(proc, run_dir)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped at step" in err and "--resume" in err and "Traceback" not in err
    stopped = max(train_steps(run_dir))
    saved = load_checkpoint(run_dir / "latest.pt")
    assert 15 <= saved["step"] < 60 and saved["step"] == stopped  # the step it reached, not the last eval
    assert f"stopped at step {stopped}" in err

    resumed = cli("train", RECIPES / "debug.yaml", f"out_dir={run_dir}", f"data.root={data_root}",
                  "train.log_interval=1", *common, *SMALL, "--resume")
    assert resumed.code == 0, resumed.err
    assert f"resuming at step {stopped}" in resumed.err
    assert load_checkpoint(run_dir / "latest.pt")["step"] == 60
    assert train_steps(run_dir) == list(range(1, 61))


# --- (f) a metrics line cut by a kill --------------------------------------------------------------------


def test_a_cut_last_metrics_line_does_not_stop_resume(tmp_path, data_root, cli):
    run_dir = tmp_path / "cut"
    args = ("train", RECIPES / "debug.yaml", f"out_dir={run_dir}", f"data.root={data_root}", "train.log_interval=5",
            "train.eval_interval=10", *SMALL)
    first = cli(*args, "train.max_steps=20")
    assert first.code == 0, first.err
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"kind": "tra')  # what kill -9 in the middle of an append leaves
    assert train_steps(run_dir) == [5, 10, 15, 20]  # the cut line is dropped, not an error

    resumed = cli(*args, "train.max_steps=30", "--resume")
    assert resumed.code == 0, resumed.err
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # every line of the file is whole again
    assert all(isinstance(r, dict) and "kind" in r and "step" in r for r in records)
    assert [r["step"] for r in records if r["kind"] == "train"] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [10, 20, 30]
    assert MetricsLog(run_dir / "metrics.jsonl").read() == records


# --- (g) a judge that does not answer ----------------------------------------------------------------------


def test_an_unreachable_judge_loses_no_answers(workdir, data_root, cli):
    result = cli("finetune", "instruct", "train.max_steps=1", "train.eval_interval=1", "train.eval_steps=1",
                 "train.sample_tokens=0", "model.n_layer=1", "model.n_embd=32", "data.vocab_size=300",
                 f"data.root={data_root}", "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m",
                 "--device", "cpu")
    assert result.code == 2, result.err
    assert "did not answer" in result.err and "127.0.0.1:9" in result.err and clean(result)
    responses = workdir / "runs" / "instruct" / "test_responses.json"
    assert responses.is_file()
    records = json.loads(responses.read_text(encoding="utf-8"))
    assert len(records) == 110
    assert all(isinstance(r.get("model_response"), str) and r["instruction"] for r in records)
    assert all("rouge_l" in r and "judge_score" not in r for r in records)
