"""What each switch of the finetuning recipes does to speed and memory on a CPU: SmolLM2-135M, spam
LoRA (recipes/spam_lora.yaml), the same steps under each switch turned back, each in a fresh
process, one after another.

    LLMKIT_DATA_MIRROR=../shared/data .venv/bin/python scripts/bench_finetune_switches.py [--steps 40]

Rows: the recipe as shipped (bf16 autocast, no dropout, length buckets of 8), then fp32, dropout
0.1 (what the from-scratch spam recipe uses), no buckets (plain random batches), and gradient
checkpointing on. Reported: real (non-padding) tokens/s and padded tokens/s over the steps after
the first 10, ms per step, and the process's peak RSS (VmHWM). Speed of the same steps against
transformers + PEFT is scripts/bench_finetune.py's job. Keep the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = {
    "recipe (bf16, dropout 0, bucket 8)": [],
    "train.precision=fp32": ["train.precision=fp32"],
    "model.dropout=0.1": ["model.dropout=0.1"],
    "data.bucket=1": ["data.bucket=1"],
    "train.grad_checkpointing=true": ["train.grad_checkpointing=true"],
}
WARMUP = 10  # steps left out of the timing (first steps allocate and warm caches)


def one(overrides: list[str], steps: int, out: Path) -> dict:
    """Train `steps` steps in this process; what the trainer logged, and this process's peak RSS."""
    from llmkit.training.finetune import finetune_recipe
    from llmkit.training.trainer import train

    timing = [f"train.max_steps={steps}", f"train.eval_interval={steps}", "train.eval_steps=1", "train.log_interval=1",
              f"out_dir={out}"]
    recipe, base = finetune_recipe("spam", "smollm2", "lora", [*timing, *overrides], device="cpu")
    padded = []
    from llmkit.tasks import classification

    encode = classification.encode

    def counting(tokenizer, texts, block_size):  # the padded width of every batch the trainer draws
        x, mask = encode(tokenizer, texts, block_size)
        padded.append(x.numel())
        return x, mask

    classification.encode = counting
    train(recipe, base=base)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps_logged = [r for r in records if r["kind"] == "train"]
    start, end = steps_logged[WARMUP - 1], steps_logged[-1]
    seconds = end["elapsed_s"] - start["elapsed_s"]
    real = sum(r["tokens_per_s"] for r in steps_logged[WARMUP:]) / len(steps_logged[WARMUP:])
    # Training batches are the ones drawn between evaluations: the last `steps` widths before the
    # final evaluation's, minus the first WARMUP.
    train_padded = padded[:steps][WARMUP:]
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return {"ms_per_step": 1000 * seconds / (steps - WARMUP), "real_tokens_per_s": real,
            "padded_tokens_per_s": sum(train_padded) / seconds, "peak_rss_mb": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one row, in this process
    args = parser.parse_args()
    if args.one is not None:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one(json.loads(args.one), args.steps, Path(tmp) / "run")))
        return
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"{args.steps} steps of batch 8, the first {WARMUP} not timed\n")
    print("| spam LoRA on SmolLM2-135M | ms/step | real tokens/s | padded tokens/s | peak RSS |\n|---|---:|---:|---:|---:|")
    for name, overrides in ROWS.items():
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one", json.dumps(overrides)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{name} failed:\n{proc.stderr[-2000:]}")
        row = json.loads(proc.stdout.splitlines()[-1])
        print(f"| {name} | {row['ms_per_step']:.0f} | {row['real_tokens_per_s']:.0f} | "
              f"{row['padded_tokens_per_s']:.0f} | {row['peak_rss_mb']:,.0f} MB |", flush=True)
        print(f"  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
