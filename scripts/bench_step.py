"""Milliseconds per training step at one recipe's settings, under the knobs a user could turn.

What is timed: one full step as the trainer takes it (forward, loss, backward, gradient clipping,
optimizer step, zero_grad) of the recipe's model (default: `recipes/shakespeare_gpt.yaml`, nanoGPT's
CPU "baby GPT": 4 layers, 128 channels, batch 12 x 64), on random token batches, under each knob:

- `today`: what llmkit's trainer did before this script: eager, AdamW's for-loop step (PyTorch's
  CPU default), the torch threads it starts with, fp32, fused attention (sdpa);
- `adamw foreach` / `adamw fused`: AdamW's multi-tensor and fused (one kernel per step) updates;
- `torch.compile`: inductor's CPU backend on the model (AdamW for-loop);
- `1 thread`: `torch.set_num_threads(1)` instead of the default;
- `bf16 autocast`: forward and loss in bfloat16 where autocast allows it;
- `attention explicit` / `mlp relu2`: the model switches, for their speed alone.

Every knob has its own model and optimizer from the same initial weights; the steps of all knobs
are interleaved (round robin, the order reversed every other round), so the machine's noise falls
on all alike. The table gives the median ms/step, the spread (25th-75th percentile) and the speed
against `today` (above 1: faster).

    .venv/bin/python scripts/bench_step.py                      # nanoGPT's baby GPT
    .venv/bin/python scripts/bench_step.py --recipe shakespeare_char --steps 100
    .venv/bin/python scripts/bench_step.py --json

Keep the machine otherwise idle while it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from llmkit.config import find_recipe, load_recipe
from llmkit.models import build_model
from llmkit.tasks.language_modeling import lm_loss

SEED = 0


@dataclass
class Knob:
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    threads: int
    bf16: bool
    times: list[float] = dataclasses.field(default_factory=list)


def make_knob(name: str, model_cfg, train_cfg, threads: int, *, compile_model: bool = False, impl: str = "forloop",
              bf16: bool = False, **model_changes) -> Knob:
    torch.manual_seed(SEED)  # the same initial weights for every knob
    model = build_model(dataclasses.replace(model_cfg, **model_changes))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train_cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=train_cfg.lr, betas=(train_cfg.beta1, train_cfg.beta2),
        foreach=impl == "foreach", fused=impl == "fused")
    return Knob(name, torch.compile(model) if compile_model else model, optimizer, threads, bf16)


def step(knob: Knob, x: torch.Tensor, y: torch.Tensor, grad_clip: float) -> float:
    torch.set_num_threads(knob.threads)
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16) if knob.bf16 else nullcontext():
        loss = lm_loss(knob.model(x), y)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(knob.model.parameters(), grad_clip).item()
    knob.optimizer.step()
    knob.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="shakespeare_gpt")
    p.add_argument("--steps", type=int, default=60, help="timed steps per knob")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per knob first (compilation)")
    p.add_argument("--vocab", type=int, default=65, help="vocabulary size where the recipe leaves it to the "
                   "tokenizer (65: Tiny Shakespeare's characters)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    recipe = load_recipe(find_recipe(args.recipe))
    model_cfg = dataclasses.replace(recipe.model, vocab_size=recipe.model.vocab_size or args.vocab)
    train_cfg = recipe.train
    threads = torch.get_num_threads()
    knobs = [
        make_knob("today", model_cfg, train_cfg, threads),
        make_knob("adamw foreach", model_cfg, train_cfg, threads, impl="foreach"),
        make_knob("adamw fused", model_cfg, train_cfg, threads, impl="fused"),
        make_knob("torch.compile", model_cfg, train_cfg, threads, compile_model=True),
        make_knob("1 thread", model_cfg, train_cfg, 1),
        make_knob("bf16 autocast", model_cfg, train_cfg, threads, bf16=True),
        make_knob("attention explicit", model_cfg, train_cfg, threads, attention="explicit"),
        make_knob("mlp relu2", model_cfg, train_cfg, threads, mlp="relu2"),
    ]
    vocab, batch, block = model_cfg.vocab_size, train_cfg.batch_size, model_cfg.block_size
    generator = torch.Generator().manual_seed(SEED)
    for i in range(args.warmup + args.steps):
        tokens = torch.randint(vocab, (batch, block + 1), generator=generator)
        x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        for knob in knobs if i % 2 == 0 else knobs[::-1]:
            seconds = step(knob, x, y, train_cfg.grad_clip)
            if i >= args.warmup:
                knob.times.append(seconds)
    torch.set_num_threads(threads)

    today = statistics.median(knobs[0].times)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown") if os.path.exists("/proc/cpuinfo") else "unknown"
    header = (f"{args.recipe}: {sum(q.numel() for q in knobs[0].model.parameters()):,} parameters, batch {batch} x "
              f"{block}; {args.steps} timed steps per knob after {args.warmup}; {cpu}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, {threads} threads by default")
    rows = []
    for knob in knobs:
        q = statistics.quantiles(knob.times, n=4)
        median = statistics.median(knob.times)
        rows.append({"knob": knob.name, "ms_per_step": round(1e3 * median, 2), "p25_ms": round(1e3 * q[0], 2),
                     "p75_ms": round(1e3 * q[2], 2), "speed_vs_today": round(today / median, 3),
                     "tokens_per_s": round(batch * block / median)})
    if args.json:
        for row in rows:
            print(json.dumps({**row, "recipe": args.recipe, "cpu": cpu, "torch": torch.__version__}))
        return
    print(header)
    print("| knob | ms/step (p25-p75) | tokens/s | vs today |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['knob']} | {row['ms_per_step']:.1f} ({row['p25_ms']:.1f}-{row['p75_ms']:.1f}) | "
              f"{row['tokens_per_s']:,} | {row['speed_vs_today']:.2f}x |")


if __name__ == "__main__":
    main()
