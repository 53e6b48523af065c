"""scripts/ladder.sh end to end on a tiny budget: a table row per rung, a number in every column."""

from __future__ import annotations

import math
import os
import subprocess
import sys

from conftest import REPO

LADDER = REPO / "scripts" / "ladder.sh"


def run_ladder(tmp_path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LADDER), f"data.root={tmp_path / 'data'}"], check=False, capture_output=True,
                          text=True, env={**os.environ, "LADDER_DIR": str(tmp_path / "ladder"), "PYTHON": sys.executable, **env},
                          timeout=300)


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[1:]]


def test_ladder_tabulates_every_rung(tmp_path):
    proc = run_ladder(tmp_path, STEPS="3", BATCH="4", BLOCK="16", EVAL_INTERVAL="3", DEVICE="cpu",
                      RUNGS="bigram,single_head")
    assert proc.returncode == 0, proc.stderr
    assert "Budget per rung: 3 steps of 4 x 16 tokens" in proc.stdout
    rows = table_rows(proc.stdout)
    assert [row[1] for row in rows] == ["`shakespeare_bigram`", "`shakespeare_single_head`"]
    for number, recipe, model, parameters, loss, tokens_per_s, wall, sample in rows:
        assert int(parameters.replace(",", "")) > 0
        assert math.isfinite(float(loss)) and float(loss) > 0
        assert float(tokens_per_s.replace(",", "")) > 0
        assert float(wall) > 0
        assert sample.startswith("`") and len(sample) > 2
    assert rows[0][2:4] == ["bigram", "4,225"]  # block_size does not change the bigram
    ladder = tmp_path / "ladder"
    assert (ladder / "ladder.md").read_text(encoding="utf-8") == proc.stdout
    from llmkit.checkpoint import load_checkpoint

    assert load_checkpoint(ladder / "single_head" / "latest.pt")["step"] == 3
    assert (ladder / "loss.png").is_file() or "skipping loss.png" in proc.stderr


def test_ladder_names_the_rungs_on_a_typo(tmp_path):
    proc = run_ladder(tmp_path, RUNGS="bigram,gtp")
    assert proc.returncode == 2
    assert "unknown rung(s) gtp; choose from bigram, single_head, multi_head, block, gpt, char" in proc.stderr
    assert not (tmp_path / "ladder").exists()
