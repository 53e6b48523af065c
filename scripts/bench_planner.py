"""The planner (`llmkit train RECIPE --dry-run`) against what a real run measures.

For a recipe (plus dotted overrides), this script
1. trains it for a few steps in this process with llmkit's own Trainer, measuring the memory the
   run adds (peak resident memory, VmHWM, minus the resident memory before the model was built,
   with the data already mapped) and the wall time of each step (batch, forward, backward, clip,
   AdamW);
2. asks the planner for its estimate (weights + gradients + AdamW + activations; step time);
3. prints both and the ratio estimate / measured.

Memory is measured from /proc (Linux, CPU runs): the kernel's high-water mark is reset to the
current size first (`clear_refs` 5), so only this run's peak counts.

    LLMKIT_DATA_MIRROR=../shared/data .venv/bin/python scripts/bench_planner.py recipes/shakespeare_char.yaml
    .venv/bin/python scripts/bench_planner.py recipes/shakespeare_gpt.yaml model.n_embd=256 train.batch_size=32 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from llmkit.config import load_recipe
from llmkit.tasks import make_task
from llmkit.training.planner import plan
from llmkit.training.trainer import Trainer


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now; VmHWM: the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def measure(recipe, steps: int) -> dict:
    task = make_task(recipe)
    task.batch("train", 1, torch.Generator())  # map the data before the baseline is taken
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(
        recipe.model, vocab_size=recipe.model.vocab_size or task.vocab_size))
    device = torch.device("cpu")
    # Warm up on a tiny model of the same kind first: the first forward and backward page in
    # PyTorch's kernels and start its thread pools (100 MB or more of resident memory that any
    # run pays, whatever its size, and that the plan does not count).
    tiny = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, n_layer=1, n_embd=16, n_head=1,
                                                                   n_kv_head=None, mlp_hidden=None),
                               train=dataclasses.replace(recipe.train, batch_size=1, micro_batch_size=None))
    warm = Trainer(tiny, task, device)
    for _ in range(2):
        warm.train_step()
    del warm
    gc.collect()
    baseline = status_kib("VmRSS")
    reset_peak()
    trainer = Trainer(recipe, task, device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()  # what `llmkit train` runs each step, without evaluations and saves
        times.append(time.perf_counter() - start)
    return {"recipe": recipe, "bytes": (status_kib("VmHWM") - baseline) * 1024,
            "step_s": statistics.median(times[2:] if steps > 4 else times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides, as for llmkit train")
    p.add_argument("--steps", type=int, default=10, help="training steps measured (median of all but the first 2)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if sys.platform != "linux":
        sys.exit("this script reads /proc: Linux only")
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(args.recipe, [*args.overrides, f"out_dir={tmp}", "train.device=cpu"])
        measured = measure(recipe, args.steps)
        planned = plan(measured["recipe"], torch.device("cpu"))
    m, t = recipe.model, recipe.train
    row = {
        "recipe": args.recipe, "overrides": args.overrides, "parameters": planned.parameters,
        "shape": f"{m.n_layer}x{m.n_embd}, T {m.block_size}, batch {t.batch_size}"
                 + (f" (micro {t.micro_batch_size})" if t.micro_batch_size else "") + f", {t.precision}"
                 + (", grad checkpointing" if t.grad_checkpointing else ""),
        "memory_planned_mib": round(planned.total / 2**20, 1),
        "memory_measured_mib": round(measured["bytes"] / 2**20, 1),
        "memory_ratio": round(planned.total / measured["bytes"], 3),
        "step_planned_ms": round(planned.step_seconds * 1e3, 1),
        "step_measured_ms": round(measured["step_s"] * 1e3, 1),
        "step_ratio": round(planned.step_seconds / measured["step_s"], 3),
        "threads": torch.get_num_threads(), "command": shlex.join(sys.orig_argv),
    }
    if args.json:
        print(json.dumps(row))
        return
    print(f"{row['recipe']} {' '.join(args.overrides)}: {row['parameters']:,} parameters, {row['shape']}")
    print(f"  memory  planned {row['memory_planned_mib']:>9,.1f} MiB   measured {row['memory_measured_mib']:>9,.1f} MiB"
          f"   planned/measured {row['memory_ratio']:.2f}")
    print(f"  step    planned {row['step_planned_ms']:>9,.1f} ms    measured {row['step_measured_ms']:>9,.1f} ms"
          f"    planned/measured {row['step_ratio']:.2f}")


if __name__ == "__main__":
    main()
