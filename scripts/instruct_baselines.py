"""What the instruction-tuning scores mean: the same scores for answers that need no model, and
for a model as shipped, with no finetuning.

    .venv/bin/python scripts/instruct_baselines.py [RUN/test_responses.json ...]
        [--model smollm2 [--prompt-format chat] [--out shipped_responses.json]] [--show 5 --seed 0]

Scores every test entry's reference against trivial answers (the instruction or the input copied
back, one fixed sentence), so a model's exact match and ROUGE-L can be read against them; given
response files written by `llmkit finetune instruct` / `llmkit eval RUN --split test`, scores those
too, on the same entries. `--model` answers the test entries with a model as it is (greedy, at
most 256 new tokens, as the finetuned runs answer), in its chat template unless --prompt-format
says otherwise, and writes those answers to --out. `--show N` prints N entries picked by
`--seed` (not by hand) with every row's answer. Reads the instruction data from
$LLMKIT_DATA_MIRROR or data/raw.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from llmkit.tasks.instruct import read_entries, split_entries
from llmkit.tasks.scoring import score_responses

BASELINES = {
    "copy the instruction": lambda e: e["instruction"],
    "copy the input (else the instruction)": lambda e: e["input"] or e["instruction"],
    "always 'The sentence is the sentence.'": lambda e: "The sentence is the sentence.",
}


def shipped_answers(model: str, prompt_format: str, out: Path) -> list[dict]:
    """The test answers of `model` with no finetuning, through the instruct task's own answering."""
    from llmkit.config import DataConfig, Recipe
    from llmkit.loading import load_model
    from llmkit.tasks.instruct import Instruct

    lm = load_model(model)
    data = DataConfig(source="instruct", prompt_format=prompt_format,
                      root=str(Path(os.environ.get("LLMKIT_DATA_DIR", "data"))))
    task = Instruct(Recipe(name="shipped", data=data, model=lm.config), lm.tokenizer)
    task.evaluate(lm.model, "test", 16, lm.device, responses=out)
    print(f"{model} as shipped, {task.format.name} prompts: answers in {out}", file=sys.stderr)
    return json.loads(out.read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("responses", nargs="*", help="test_responses.json files to score alongside")
    parser.add_argument("--model", help="also answer with this model as shipped (e.g. smollm2)")
    parser.add_argument("--prompt-format", default="auto", choices=["auto", "alpaca", "chat"])
    parser.add_argument("--out", type=Path, default=Path("shipped_responses.json"))
    parser.add_argument("--show", type=int, default=0, help="print this many entries with every row's answer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    mirror = Path(os.environ.get("LLMKIT_DATA_MIRROR", "data/raw")) / "instruct/instruction-data.json"
    data = mirror if mirror.is_file() else Path("data/raw/instruct/instruction-data.json")
    test = split_entries(read_entries(data))["test"]
    answered = [(name, [{**e, "model_response": answer(e)} for e in test]) for name, answer in BASELINES.items()]
    if args.model:
        answered.append((f"{args.model} as shipped", shipped_answers(args.model, args.prompt_format, args.out)))
    for path in args.responses:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
        if [r["instruction"] for r in records] != [e["instruction"] for e in test]:
            sys.exit(f"{path} does not hold the {len(test)} test entries in order")
        answered.append((path, records))
    print(f"| answers ({len(test)} test entries) | exact match | ROUGE-L F1 |\n|---|---:|---:|")
    for name, records in answered:
        scores = score_responses(records)
        print(f"| {name} | {scores['exact_match']:.2%} | {scores['rouge_l']:.2%} |")
    for i in sorted(random.Random(args.seed).sample(range(len(test)), args.show)):
        entry = test[i]
        print(f"\n**Test entry {i}**: {entry['instruction']}" + (f" `{entry['input']}`" if entry["input"] else ""))
        print(f"- reference: {entry['output']}")
        for name, records in answered[len(BASELINES):]:
            print(f"- {name}: {' '.join(records[i]['model_response'].split())[:300]}")


if __name__ == "__main__":
    main()
