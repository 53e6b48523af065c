"""One recipe under several sets of overrides, each on the same time budget: which switch helps?

Each variant (and seed) is trained in turn, in this process, with `train.max_time=BUDGET` (and
`train.max_steps` lifted so that the budget, not the step count, ends it, unless the overrides set
it), into OUT/NAME_sSEED. Then the final weights (latest.pt) are measured over every token of the
val split (`llmkit eval`'s full pass: llmkit/tasks/evaluate.py, not the trainer's sampled
estimate), and the script prints a markdown table and draws the val curves of all runs against
seconds of training in OUT/loss.png (llmkit/plots/curves.py, `plot_loss_curves`).

    LLMKIT_DATA_MIRROR=../shared/data .venv/bin/python scripts/ablate.py shakespeare_char --budget 20 \\
        --variant baseline --variant "muon: train.optimizer=muon" --variant "relu2: model.mlp=relu2" \\
        --seeds 1337 1

A variant is `NAME: KEY=VALUE KEY=VALUE ...` (just `NAME` for the recipe as it is); overrides
after the options apply to every variant. Runs go one after another, never side by side: they
share this machine's cores, and a time budget measures the machine as much as the recipe. The
table also goes to OUT/ablation.md, the numbers to OUT/ablation.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from llmkit.config import find_recipe, load_recipe
from llmkit.device import resolve_device
from llmkit.errors import LlmkitError
from llmkit.loading import load_model
from llmkit.plots.curves import plot_loss_curves
from llmkit.run import METRICS
from llmkit.tasks.evaluate import evaluate
from llmkit.training.metrics import MetricsLog
from llmkit.training.trainer import train

UNBOUNDED_STEPS = 1 << 40  # max_steps when the budget alone should end a run


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, _, overrides = text.partition(":")
        name = name.strip()
        if not name or any(c in name for c in "/ \t"):
            raise LlmkitError(f"--variant {text!r}: start with a name (letters, digits, _ or -), then ': KEY=VALUE ...'")
        return cls(name, tuple(shlex.split(overrides)))


def run_one(recipe_path: Path, variant: Variant, seed: int, budget: float, common: list[str], out: Path) -> dict:
    """Train one variant with one seed on the budget, then measure it over the whole val split."""
    overrides = [*common, *variant.overrides]
    steps = [] if any(o.startswith("train.max_steps=") for o in overrides) else [f"train.max_steps={UNBOUNDED_STEPS}"]
    run_dir = out / f"{variant.name}_s{seed}"
    recipe = load_recipe(recipe_path, [*steps, *overrides, f"train.max_time={budget}", f"train.seed={seed}",
                                       "train.sample_tokens=0", f"out_dir={run_dir}"])
    train(recipe, overwrite=True)
    loaded = load_model(run_dir, "latest", resolve_device(recipe.train.device))
    report = evaluate(loaded, "val")
    records = MetricsLog(run_dir / METRICS).read()
    state = loaded.checkpoint.state
    tokens = state.tokens  # real input tokens trained on, padding not counted
    return {"name": variant.name, "seed": seed, "overrides": list(variant.overrides), "run": str(run_dir),
            "parameters": sum(p.numel() for p in loaded.model.parameters()), "steps": state.step,
            "tokens": tokens, "val_loss": report["loss"], "val_tokens": report["tokens"],
            "train_s": state.train_s, "wall_s": state.elapsed_s, "tokens_per_s": tokens / max(state.train_s, 1e-9),
            "records": records}


def table(results: list[dict], budget: float) -> str:
    """One row per run, and per variant with several seeds a mean row (val loss ± its spread)."""
    lines = [f"Budget {budget:g} s of training per run; val loss over every val token of the final weights.", "",
             "| run | seed | parameters | steps | tokens seen | val loss | tokens/s | train s | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys(r["name"] for r in results):
        runs = [r for r in results if r["name"] == name]
        for r in runs:
            lines.append(f"| {name} | {r['seed']} | {r['parameters']:,} | {r['steps']:,} | {r['tokens']:,} | "
                         f"{r['val_loss']:.4f} | {r['tokens_per_s']:,.0f} | {r['train_s']:.1f} | {r['wall_s']:.1f} |")
        if len(runs) > 1:
            losses = [r["val_loss"] for r in runs]
            lines.append(f"| **{name}, mean of {len(runs)}** | | | | {statistics.mean(r['tokens'] for r in runs):,.0f} | "
                         f"**{statistics.mean(losses):.4f}** ± {statistics.stdev(losses):.4f} | "
                         f"{statistics.mean(r['tokens_per_s'] for r in runs):,.0f} | | |")
    overrides = {r["name"]: " ".join(r["overrides"]) or "(the recipe)" for r in results}
    lines += [""] + [f"- {name}: `{text}`" for name, text in overrides.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a recipe name (shakespeare_char) or file")
    parser.add_argument("--budget", type=float, required=True, help="seconds of training per run (train.max_time)")
    parser.add_argument("--variant", action="append", required=True, help="'NAME: KEY=VALUE ...', once per variant")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337], help="train.seed values, each run per variant")
    parser.add_argument("--out", type=Path, default=Path("runs/ablate"), help="where the runs, table and plot go")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides for every variant")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    try:
        if not 0 < args.budget <= 1e9:
            raise LlmkitError(f"--budget must be a positive number of seconds, got {args.budget}")
        variants = [Variant.parse(v) for v in args.variant]
        names = [v.name for v in variants]
        if len(set(names)) < len(names):
            raise LlmkitError(f"two variants share a name: {', '.join(names)}")
        recipe_path = find_recipe(args.recipe)
        # Every variant's recipe is checked before the first trains: a typo in the last should not
        # wait for all the others.
        for v in variants:
            load_recipe(recipe_path, [*args.overrides, *v.overrides, f"train.max_time={args.budget}"])
        results = []
        for v in variants:
            for seed in args.seeds:
                print(f"--- {v.name}, seed {seed}", file=sys.stderr)
                results.append(run_one(recipe_path, v, seed, args.budget, args.overrides, args.out))
    except LlmkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    text = table(results, args.budget)
    curves = {f"{r['name']} s{r['seed']}": r["records"] for r in results}
    picture = plot_loss_curves(curves, args.out / "loss.png", f"{Path(args.recipe).stem}: {args.budget:g} s each",
                               x="train_s")
    (args.out / "ablation.md").write_text(text + "\n", encoding="utf-8")
    (args.out / "ablation.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "records"}
                                                        for r in results], indent=1) + "\n", encoding="utf-8")
    print(text)
    print(f"\nplot: {picture}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
