"""metrics.jsonl: one JSON object per line, appended as training goes (`kind` is train or eval)."""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.atomic import atomic_write_text


class MetricsLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def keep_until(self, step: int) -> None:
        """Drop records after `step`: a resumed run replays those steps and logs them again."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
