"""metrics.jsonl: one JSON object per line, appended as training goes (`kind` is train or eval);
mirrored as TensorBoard events in <run>/tensorboard/ when the `tensorboard` package is installed
(`tensorboard --logdir runs`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from llmkit.errors import LlmkitError
from llmkit.files import atomic_write_text, os_error

TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    def __init__(self, path: str | Path, tensorboard: bool = False):
        self.path = Path(path)
        self._writer = None
        self._tensorboard = tensorboard and importlib.util.find_spec("tensorboard") is not None

    def write(self, record: dict) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise os_error(e, self.path) from None
        if self._tensorboard:
            self._write_events(record)

    def _write_events(self, record: dict) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.path.parent / TENSORBOARD_DIR))
        for key, value in record.items():
            if key not in ("kind", "step") and isinstance(value, (int, float)):
                self._writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])
        self._writer.flush()

    def read(self) -> list[dict]:
        """Every record. A last line cut short (the process was killed while appending it) is
        dropped; a damaged line before it is an error."""
        if not self.path.is_file():
            return []
        lines = [line for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                if number == len(lines):
                    break
                raise LlmkitError(f"{self.path}, line {number}, is not a JSON record",
                                  hint="the file is damaged: delete that line (or the file, to lose the history)")
            records.append(record)
        return records

    def keep_until(self, step: int) -> None:
        """Drop records after `step`: a resumed run replays those steps and logs them again."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
