"""The model ladder: train every rung on Tiny Shakespeare with the same budget and tabulate them.

Every rung gets the same number of optimizer steps, windows per step and context length (passed
as dotted overrides); each keeps its recipe's own model size and optimizer settings (learning
rate, warmup, weight decay). Everything is measured through the `llmkit` commands a user runs:

- parameters: the "model X: N parameters" line `llmkit train` prints;
- val loss: `llmkit eval RUN --checkpoint latest --batch-size N --json`, every val token, final weights;
- tokens/s: the median of the "tokens_per_s" of the run's metrics.jsonl train records
  (evaluations and checkpoints are not in it);
- wall: the whole `llmkit train` command (start-up, training, evaluations, checkpoints);
- sample: the first non-empty line `llmkit generate RUN -p "ROMEO:" -n 80 --seed 1` continues with.

    scripts/ladder.sh                                    # the defaults (scripts/ladder.sh has them)
    .venv/bin/python scripts/ladder.py --steps 100 --rungs bigram,gpt data.root=/tmp/data

The table goes to stdout as Markdown and to LADDER_DIR/ladder.md; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Short name -> recipe, bottom rung first. shakespeare_char is not a rung of its own: it is the
# tuned 2-layer GPT, the last row for comparison with the 4-layer rung 5.
RUNGS = {
    "bigram": "shakespeare_bigram",
    "single_head": "shakespeare_single_head",
    "multi_head": "shakespeare_multi_head",
    "block": "shakespeare_block",
    "gpt": "shakespeare_gpt",
    "char": "shakespeare_char",
}
PROMPT = "ROMEO:"
PARAMETERS = re.compile(r"^model (\S+): ([\d,]+) parameters", re.MULTILINE)


@dataclass
class Row:
    rung: str
    recipe: str
    model: str
    parameters: int
    val_loss: float
    tokens_per_s: float
    wall_s: float
    sample: str


def llmkit(llmkit_bin: str, *args: str) -> subprocess.CompletedProcess:
    """Run one llmkit command; on failure show its stderr and stop the ladder."""
    proc = subprocess.run([llmkit_bin, *args], check=False, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        sys.exit(f"ladder: `llmkit {' '.join(args)}` failed with exit code {proc.returncode}")
    return proc


def median_tokens_per_s(metrics: Path) -> float:
    records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    rates = [r["tokens_per_s"] for r in records if r.get("kind") == "train"]
    return statistics.median(rates) if rates else math.nan


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def run_rung(args: argparse.Namespace, rung: str, budget: list[str]) -> Row:
    recipe = RUNGS[rung]
    out = Path(args.ladder_dir) / rung
    device = ["--device", args.device]
    start = time.perf_counter()
    trained = llmkit(args.llmkit, "train", str(REPO / "recipes" / f"{recipe}.yaml"), f"out_dir={out}",
                     *budget, *args.overrides, *device, "--overwrite")
    wall_s = time.perf_counter() - start
    found = PARAMETERS.search(trained.stderr)
    if not found:
        sys.exit(f"ladder: no 'model X: N parameters' line in the output of training {recipe}")
    # About 8K tokens per forward pass: eval's default 32 windows is slow for short contexts, and the
    # loss is the same (to rounding) whatever the batch.
    eval_batch = str(max(1, 8192 // args.block_size))
    evaluated = json.loads(llmkit(args.llmkit, "eval", str(out), "--checkpoint", "latest", "--batch-size", eval_batch,
                                  "--json", *device).stdout)
    generated = llmkit(args.llmkit, "generate", str(out), "-p", PROMPT, "-n", "80", "--seed", "1",
                       "--temperature", "0.8", "--checkpoint", "latest", "--json", *device).stdout
    return Row(rung, recipe, found.group(1), int(found.group(2).replace(",", "")), evaluated["loss"],
               median_tokens_per_s(out / "metrics.jsonl"), wall_s, first_line(json.loads(generated)["text"]))


def table(rows: list[Row]) -> str:
    lines = ["| rung | recipe | model | parameters | val loss | tokens/s | wall (s) | sample |",
             "|---|---|---|--:|--:|--:|--:|---|"]
    for i, r in enumerate(rows, 1):
        # A sample is model output: keep it from breaking the table or the code span.
        sample = r.sample.replace("|", "\\|").replace("`", "'")
        lines.append(f"| {i} | `{r.recipe}` | {r.model} | {r.parameters:,} | {r.val_loss:.4f} | "
                     f"{r.tokens_per_s:,.0f} | {r.wall_s:.1f} | `{sample}` |")
    return "\n".join(lines)


def plot_losses(args: argparse.Namespace, rungs: list[str]) -> None:
    """Overlay the rungs' loss curves with `llmkit plot loss`, when this llmkit has it."""
    probe = subprocess.run([args.llmkit, "plot", "loss", "--help"], check=False, capture_output=True, text=True)
    if probe.returncode:
        print("ladder: skipping loss.png: this llmkit has no `plot loss` command", file=sys.stderr)
        return
    out = Path(args.ladder_dir) / "loss.png"
    llmkit(args.llmkit, "plot", "loss", *(str(Path(args.ladder_dir) / r) for r in rungs), "--out", str(out))
    print(f"ladder: loss curves in {out}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per rung")
    parser.add_argument("--batch-size", type=int, default=12, help="windows per step (train.batch_size)")
    parser.add_argument("--block-size", type=int, default=64, help="context length (model.block_size)")
    parser.add_argument("--eval-interval", type=int, help="steps between estimates (default: steps / 5)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--ladder-dir", default="runs/ladder", help="each rung trains into LADDER_DIR/<rung>")
    parser.add_argument("--rungs", default=",".join(RUNGS), help=f"comma-separated, of {', '.join(RUNGS)}")
    parser.add_argument("--llmkit", default=str(REPO / ".venv" / "bin" / "llmkit"), help="the llmkit command")
    parser.add_argument("overrides", nargs="*", help="more dotted overrides for every rung, e.g. data.root=/tmp/d")
    args = parser.parse_args()
    rungs = [r for r in args.rungs.split(",") if r]
    unknown = [r for r in rungs if r not in RUNGS]
    if unknown or not rungs:
        parser.error(f"unknown rung(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(RUNGS)}")

    # The same budget for every rung. eval_steps too, so every run spends the same on estimates;
    # log_interval at most the step count, so even a tiny run logs a tokens/s record.
    eval_interval = args.eval_interval or max(1, args.steps // 5)
    budget = [f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
              f"model.block_size={args.block_size}", f"train.eval_interval={eval_interval}",
              "train.eval_steps=20", f"train.log_interval={min(10, args.steps)}", "train.sample_tokens=0"]
    # Download and tokenize before the clock starts (every rung shares the char shards).
    llmkit(args.llmkit, "tokenize", str(REPO / "recipes" / f"{RUNGS[rungs[0]]}.yaml"), *args.overrides)

    started = time.perf_counter()
    rows = []
    for rung in rungs:
        print(f"ladder: training {rung} ({RUNGS[rung]})", file=sys.stderr, flush=True)
        rows.append(run_rung(args, rung, budget))
        r = rows[-1]
        print(f"ladder: {rung}: {r.parameters:,} parameters, val loss {r.val_loss:.4f}, "
              f"{r.tokens_per_s:,.0f} tokens/s, {r.wall_s:.1f} s", file=sys.stderr, flush=True)
    plot_losses(args, rungs)

    Path(args.ladder_dir).mkdir(parents=True, exist_ok=True)
    report = (f"Budget per rung: {args.steps} steps of {args.batch_size} x {args.block_size} tokens "
              f"({args.steps * args.batch_size * args.block_size:,} tokens), device {args.device}.\n\n"
              f"{table(rows)}\n")
    Path(args.ladder_dir, "ladder.md").write_text(report, encoding="utf-8")
    print(report, end="")
    print(f"ladder: {len(rows)} rungs in {time.perf_counter() - started:.0f} s; table in "
          f"{Path(args.ladder_dir, 'ladder.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
