"""Debris is cleaned: the temporaries a writer killed with SIGKILL leaves (`.NAME.PID.RANDOM.tmp`)
go at the next command that writes that directory, while a live writer's are kept; a training that
fails before it starts leaves no empty run directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmkit.checkpoint import load_checkpoint

from conftest import RECIPES

SMALL = ("train.sample_tokens=0", "train.eval_steps=1", "--device", "cpu")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    """The PID of another process that is running for the whole test: a writer still at work."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc.pid
    proc.kill()
    proc.wait()


def temporaries(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")}


def plant(directory: Path, *names: str) -> set[str]:
    for name in names:
        (directory / name).write_bytes(b"half a file")
    return set(names)


def kill_while_writing(run_dir: Path, data_root: Path, after_checkpoint: bool) -> tuple[int, set[str]]:
    """Train in a real process (a checkpoint every 2 steps) and SIGKILL it as soon as a temporary
    latest.pt is seen on disk: a checkpoint half written, the first one or one after a latest.pt
    exists. Returns the PID and the temporaries it left. A write too quick to be caught is no
    failure: it is killed between writes instead (the test plants debris of its own as well)."""
    args = [sys.executable, "-m", "llmkit", "train", str(RECIPES / "debug.yaml"), f"out_dir={run_dir}",
            f"data.root={data_root}", "train.max_steps=40", "train.eval_interval=2", "train.log_interval=1", *SMALL]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=run_dir.parent,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline, saves, last = time.time() + 120, 0, None
    try:
        while proc.poll() is None and time.time() < deadline:
            names = os.listdir(run_dir) if run_dir.is_dir() else []
            if "latest.pt" in names:
                with contextlib.suppress(FileNotFoundError):
                    mtime = (run_dir / "latest.pt").stat().st_mtime_ns
                    saves, last = saves + (mtime != last), mtime
            writing = any(n.startswith(".latest.pt.") for n in names)
            if (writing and (saves > 0) == after_checkpoint) or saves >= (8 if after_checkpoint else 1):
                break
            time.sleep(0.0005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return proc.pid, temporaries(run_dir)


# --- (a) a run directory -----------------------------------------------------------------------------


@pytest.mark.parametrize("moment", ["first_checkpoint", "later_checkpoint"])
def test_the_next_training_removes_what_kill_9_left(tmp_path, data_root, dead_pid, live_pid, cli, moment):
    run_dir = tmp_path / "run"
    later = moment == "later_checkpoint"
    killed, left = kill_while_writing(run_dir, data_root, after_checkpoint=later)
    dead = plant(run_dir, f".latest.pt.{dead_pid}.x.tmp", f".loss.png.{dead_pid}.y.tmp",
                 f".best.pt.{killed}.k.tmp", f".metrics.jsonl.{dead_pid}.m.tmp") | left
    alive = plant(run_dir, f".latest.pt.{live_pid}.a.tmp", f".recipe.yaml.{os.getpid()}.b.tmp")
    mine = plant(run_dir, "notes.tmp", ".notes.12.tmp")  # not llmkit's pattern: someone else's files
    assert temporaries(run_dir) >= dead | alive

    # Killed during its first checkpoint there is nothing to resume: the same command starts again.
    resume = ("--resume",) if (run_dir / "latest.pt").is_file() else ()
    assert bool(resume) == later or not left  # a first write caught half done: latest.pt never appeared
    result = cli("train", RECIPES / "debug.yaml", f"out_dir={run_dir}", f"data.root={data_root}",
                 "train.max_steps=30", "train.eval_interval=10", *SMALL, *resume)
    assert result.code == 0, result.err
    assert load_checkpoint(run_dir / "latest.pt")["step"] == 30
    assert temporaries(run_dir) == alive | {".notes.12.tmp"}  # every dead writer's gone, the live ones kept
    assert all((run_dir / name).read_bytes() == b"half a file" for name in alive | mine)


# --- (b) a shard directory ------------------------------------------------------------------------------


def test_the_next_tokenize_removes_a_dead_writers_shards(tmp_path, dead_pid, live_pid, cli):
    text = tmp_path / "notes.txt"
    text.write_text("a shard directory that a killed tokenize wrote into.\n" * 100)
    shards = tmp_path / "shards"
    assert cli("tokenize", text, "--out", shards).code == 0
    dead = plant(shards, f".train_003.bin.{dead_pid}.z.tmp", f".meta.json.{dead_pid}.q.tmp")
    alive = plant(shards, f".train_000.bin.{live_pid}.a.tmp")
    result = cli("tokenize", text, "--out", shards, "--force")
    assert result.code == 0, result.err
    assert temporaries(shards) == alive and not dead & temporaries(shards)
    assert (shards / "meta.json").is_file() and (shards / "train_000.bin").is_file()


# --- (c) plot loss ----------------------------------------------------------------------------------------


def test_plot_loss_removes_a_dead_writers_picture(tmp_path, data_root, dead_pid, live_pid, cli):
    run_dir = tmp_path / "run"
    trained = cli("train", RECIPES / "debug.yaml", f"out_dir={run_dir}", f"data.root={data_root}",
                  "train.max_steps=2", "train.eval_interval=2", *SMALL)
    assert trained.code == 0, trained.err
    (run_dir / "loss.png").unlink()
    dead = plant(run_dir, f".loss.png.{dead_pid}.w.tmp")
    alive = plant(run_dir, f".loss.png.{live_pid}.v.tmp")
    result = cli("plot", "loss", run_dir)
    assert result.code == 0, result.err
    assert result.out.strip() == str(run_dir / "loss.png") and (run_dir / "loss.png").stat().st_size > 1000
    assert temporaries(run_dir) == alive and not dead & temporaries(run_dir)


# --- (d) a training that fails before it starts --------------------------------------------------------------


@pytest.mark.parametrize("bad", ["data.source=missing.txt", "model.vocab_size=10"])
def test_a_failed_training_leaves_no_run_directory(tmp_path, data_root, cli, bad):
    run_dir = tmp_path / "new_run"
    result = cli("train", RECIPES / "debug.yaml", f"out_dir={run_dir}", f"data.root={data_root}", bad,
                 "train.max_steps=2", *SMALL)
    assert result.code == 2 and "Traceback" not in result.err, result.err
    assert ("neither a dataset name nor a file" if "source" in bad else "smaller than the task") in result.err
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())


def test_a_failed_training_leaves_no_empty_parent_directories(workdir, data_root, cli):
    result = cli("train", RECIPES / "debug.yaml", "data.source=missing.txt", f"data.root={data_root}",
                 "train.max_steps=2", *SMALL)  # the default out_dir: runs/debug
    assert result.code == 2 and "neither a dataset name nor a file" in result.err, result.err
    assert not (workdir / "runs" / "debug").exists()
    assert not (workdir / "runs").exists(), "an empty runs/ was left behind"
