"""Shared fixtures: the local data mirror, a scratch working directory, and the CLI in-process.

Tests never touch the network: Tiny Shakespeare comes from $LLMKIT_DATA_MIRROR, by default the
workspace's ../shared/data beside the repository.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
DEFAULT_MIRROR = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def mirror() -> Path:
    # Absolute, since tests change directory: `LLMKIT_DATA_MIRROR=../shared/data pytest` must work.
    path = Path(os.environ.get("LLMKIT_DATA_MIRROR", str(DEFAULT_MIRROR))).resolve()
    os.environ["LLMKIT_DATA_MIRROR"] = str(path)
    if not (path / "tinyshakespeare" / "input.txt").is_file():
        pytest.fail(f"the tests need the data mirror: set LLMKIT_DATA_MIRROR (tried {path})")
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh current directory: runs/ and data/ land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `llmkit ARGS...` in this process (fast: torch is imported once) and return its exit
    code, stdout and stderr."""
    from llmkit.cli import main

    def run(*args: str, stdin: str = "") -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["llmkit", *map(str, args)])
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))  # as if piped: not a terminal
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def help_without_torch(*args: str) -> str:
    """`llmkit ARGS --help` in a fresh interpreter; fails if it imported torch. Returns the help text."""
    code = ("import sys; from llmkit.cli import app\n"
            f"try:\n    app({[*args, '--help']!r})\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'llmkit --help imported torch'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def run_subprocess(*args: str, cwd: Path | None = None, stdin: str | None = None,
                   env: dict | None = None) -> Result:
    """Run the real console entry point in a new process (for what in-process runs cannot show:
    import cost, tracebacks, exit codes as the shell sees them)."""
    proc = subprocess.run([sys.executable, "-m", "llmkit", *map(str, args)], cwd=cwd, input=stdin,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def debug_run(tmp_path_factory) -> Path:
    """The debug recipe trained once for the session; tests that only read it share it."""
    from llmkit.config import load_recipe
    from llmkit.training.trainer import train

    root = tmp_path_factory.mktemp("debug_run")
    recipe = load_recipe(RECIPES / "debug.yaml", [f"out_dir={root / 'run'}", f"data.root={root / 'data'}",
                                                  "train.sample_tokens=0"])
    return train(recipe)


@pytest.fixture(scope="session")
def export_run(tmp_path_factory) -> Path:
    """A GPT-2-shaped run (biases on), two steps: small, but one that `llmkit export` writes."""
    from llmkit.config import load_recipe
    from llmkit.training.trainer import train

    root = tmp_path_factory.mktemp("export_run")
    return train(load_recipe(RECIPES / "debug.yaml", [
        f"out_dir={root / 'run'}", f"data.root={root / 'data'}", "model.bias=true", "train.max_steps=2",
        "train.eval_interval=2", "train.eval_steps=1", "train.sample_tokens=0", "train.device=cpu"]))


# --- training runs, for the tests of training (test_train, test_optimizer, test_time_budget) -------


def debug_recipe(tmp_path, *overrides):
    """The debug recipe, run in tmp_path/run, with no sample at the end."""
    from llmkit.config import load_recipe

    return load_recipe(RECIPES / "debug.yaml", [f"out_dir={tmp_path / 'run'}", "train.sample_tokens=0",
                                                *overrides])


def losses(run_dir, kind="train"):
    """(step, loss) of each train record, or (step, val loss) of each eval record."""
    from llmkit.training.metrics import MetricsLog

    return [(r["step"], r["loss" if kind == "train" else "val_loss"])
            for r in MetricsLog(run_dir / "metrics.jsonl").read() if r["kind"] == kind]


def assert_same_run(straight, resumed):
    """An interrupted-and-resumed run is the uninterrupted one: every logged loss and every final
    weight, bit for bit."""
    import torch

    from llmkit.checkpoint import load_checkpoint

    assert losses(resumed) == losses(straight)
    assert losses(resumed, "eval") == losses(straight, "eval")
    a, b = load_checkpoint(straight / "latest.pt"), load_checkpoint(resumed / "latest.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def interrupt_at(monkeypatch, step):
    """Deliver a real SIGINT to this process once training reaches `step`."""
    import signal

    from llmkit.training.trainer import Trainer

    original = Trainer.train_step

    def train_step(self):
        result = original(self)
        if self.state.step == step:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(Trainer, "train_step", train_step)
