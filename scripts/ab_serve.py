"""Two versions of llmkit's server under the same load: this checkout against another one (--base),
each serving the same model from this checkout's data/ and runs/, started together; then for each
of --rounds rounds and each level of --levels clients, load_serve.py's level (streaming clients,
64 tokens at temperature 0.8, each round's prompts new) against one server and then the other, the
order reversed every other round, with --settle seconds of idle before each level. Timing noise on
a shared machine is large from minute to minute; alternating puts both versions in the same minutes.

Prints every level, then per version the mean tokens/s of each level, 8 clients (or the largest
level) against one, and this checkout against the base.

    git worktree add /tmp/llmkit-base HEAD~1        # the version to compare against
    .venv/bin/python scripts/ab_serve.py --base /tmp/llmkit-base --model smollm2 --dtype fp32
    .venv/bin/python scripts/ab_serve.py --base /tmp/llmkit-base --model char  # a char model made here
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import load_serve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True, help="another llmkit checkout (its llmkit/ package is served)")
    p.add_argument("--model", default="smollm2", help="smollm2, a run directory, or char (made here)")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--levels", default="1,8")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--settle", type=float, default=6.0, help="idle seconds before each level")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if not (args.base / "llmkit" / "__main__.py").is_file():
        raise SystemExit(f"--base {args.base}: no llmkit/__main__.py there (a checkout of llmkit, e.g. a git worktree)")
    if not 1 <= args.rounds <= 10 or min(levels) < 1 or max(levels) > 64 or not 0 <= args.settle <= 60:
        raise SystemExit("--rounds 1..10, levels 1..64 clients, --settle 0..60 s")
    with tempfile.TemporaryDirectory() as tmp:
        model, chat, prompts, requests = load_serve.workload(args.model, Path(tmp), 3)
        options = ["--name", "m", "--dtype", args.dtype]
        servers = {"base": load_serve.Server(model, options, Path(tmp) / "base.log", code=args.base.resolve()),
                   "this": load_serve.Server(model, options, Path(tmp) / "this.log")}
        try:
            results = load_serve.alternating(servers, levels, args.rounds, chat, prompts, requests, settle=args.settle)
        finally:
            codes = {name: server.stop() for name, server in servers.items()}
    print(f"exit codes {codes}")
    mean = load_serve.mean_tokens_per_s(results)
    top = max(levels)
    for name in servers:
        rates = "; ".join(f"{c} clients {mean[c, name]:.1f}" for c in levels)
        ratio = f", {top} clients {mean[top, name] / mean[1, name]:.2f}x one" if 1 in levels and top > 1 else ""
        print(f"{name}: mean tokens/s {rates}{ratio}")
    print("this against base: " + "; ".join(f"{c} clients {mean[c, 'this'] / mean[c, 'base']:.2f}x" for c in levels))


if __name__ == "__main__":
    main()
