"""scripts/ablate.py end to end on a one-second budget: a row per run, the val loss over every val
token, one plot; a bad variant is refused before anything trains."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

ABLATE = REPO / "scripts" / "ablate.py"
VAL_TARGETS = 111_539  # Tiny Shakespeare's val split is 111,540 characters: every one but the first is a target


def ablate(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ABLATE), "debug", "--out", str(tmp_path / "ablate"), *args,
                           f"data.root={tmp_path / 'data'}", "train.device=cpu", "train.eval_steps=2"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_ablation_tabulates_each_variant_on_the_same_budget(tmp_path):
    proc = ablate(tmp_path, "--budget", "1", "--variant", "baseline", "--variant", "muon: train.optimizer=muon")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| baseline", "| muon"]
    out = tmp_path / "ablate"
    results = json.loads((out / "ablation.json").read_text(encoding="utf-8"))
    for r in results:
        assert r["val_tokens"] == VAL_TARGETS  # the full val split, not the trainer's sampled batches
        assert r["train_s"] >= 1 and r["tokens"] == r["steps"] * 32 * 32 and r["parameters"] == 104_832
    assert results[1]["overrides"] == ["train.optimizer=muon"]
    assert (out / "loss.png").is_file() and (out / "ablation.md").read_text(encoding="utf-8").strip() == proc.stdout.strip()


def test_a_bad_variant_is_refused_before_anything_trains(tmp_path):
    proc = ablate(tmp_path, "--budget", "1", "--variant", "baseline", "--variant", "typo: train.optimiser=muon")
    assert proc.returncode == 2
    assert "did you mean 'train.optimizer'?" in proc.stderr
    assert not (tmp_path / "ablate").exists()
