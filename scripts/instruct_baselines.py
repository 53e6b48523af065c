"""What the instruction-tuning scores mean: the same scores for answers that need no model.

    .venv/bin/python scripts/instruct_baselines.py [RUN/test_responses.json ...]

Scores every test entry's reference against trivial answers (the instruction or the input copied
back, one fixed sentence), so a model's exact match and ROUGE-L can be read against them; given
response files written by `llmkit finetune instruct` / `llmkit eval RUN --split test`, scores those
too, on the same entries. Reads the instruction data from $LLMKIT_DATA_MIRROR or data/raw.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from llmkit.tasks.instruct import read_entries, split_entries
from llmkit.tasks.scoring import score_responses

BASELINES = {
    "copy the instruction": lambda e: e["instruction"],
    "copy the input (else the instruction)": lambda e: e["input"] or e["instruction"],
    "always 'The sentence is the sentence.'": lambda e: "The sentence is the sentence.",
}


def main(paths: list[str]) -> None:
    mirror = Path(os.environ.get("LLMKIT_DATA_MIRROR", "data/raw")) / "instruct/instruction-data.json"
    data = mirror if mirror.is_file() else Path("data/raw/instruct/instruction-data.json")
    test = split_entries(read_entries(data))["test"]
    rows = [(name, score_responses([{**e, "model_response": answer(e)} for e in test]))
            for name, answer in BASELINES.items()]
    for path in paths:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
        if [r["instruction"] for r in records] != [e["instruction"] for e in test]:
            sys.exit(f"{path} does not hold the {len(test)} test entries in order")
        rows.append((path, score_responses(records)))
    print(f"| answers ({len(test)} test entries) | exact match | ROUGE-L F1 |\n|---|---:|---:|")
    for name, scores in rows:
        print(f"| {name} | {scores['exact_match']:.2%} | {scores['rouge_l']:.2%} |")


if __name__ == "__main__":
    main(sys.argv[1:])
