"""What compiling the decoding step buys, and what it costs: eager decoding against compiled blocks
(what `--compile` does, llmkit/inference/compiled.py) and against the whole step compiled as one
graph (the alternative it was chosen over), on a real model, batch 1, greedy.

Each compiled variant runs in a fresh process twice: first with an empty inductor cache (cold:
what a user's first `--compile` costs), then with the cache the first run left (warm: every later
start). A run reports its compile time (the first steps of one row and of two rows: both graphs)
and its tokens/s beside eager decoding in the same process (interleaved, the median of --repeats),
and whether its greedy tokens are eager's.

    LLMKIT_DATA_MIRROR=../shared/data .venv/bin/python scripts/bench_compile.py --dtype int8
    .venv/bin/python scripts/bench_compile.py --model smollm2 --dtype int4 --new-tokens 100 --repeats 1

Keep the machine otherwise idle while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

PROMPT = "Write a long story about a cat who learns to fly."


def one_variant(args) -> dict:
    """In this process: load the model twice (eager and `args.variant`), compile, time both."""
    import torch

    from llmkit.inference import decoding
    from llmkit.inference.chat import Conversation
    from llmkit.inference.compiled import compiled_logits
    from llmkit.inference.decoding import generate_batch
    from llmkit.inference.sampling import Sampling
    from llmkit.loading import load_model

    eager = load_model(args.model, dtype=args.dtype)
    ours = load_model(args.model, dtype=args.dtype, compile=True)
    if args.variant == "whole":  # the alternative: embeddings, every block and the head in one graph
        model = ours.model
        whole = torch.compile(lambda ids, positions, layers: model.logits(model.continued(ids, positions, layers)[:, -1]),
                              fullgraph=True)

        def whole_logits(model, ids, cache):
            positions = cache.begin(1)
            for tensor in (*(layer.keys for layer in cache.layers), *(layer.values for layer in cache.layers)):
                torch._dynamo.maybe_mark_dynamic(tensor, 0)
                torch._dynamo.maybe_mark_dynamic(tensor, 2)
            for tensor, dims in ((ids, (0,)), (positions, (0,)), (cache.now.key_mask, (0, 1))):
                for dim in dims:
                    torch._dynamo.maybe_mark_dynamic(tensor, dim)
            logits = whole(ids, positions, cache.layers)
            cache.end(1)
            return logits
        decoding.compiled_logits = whole_logits
    else:
        assert decoding.compiled_logits is compiled_logits
    text = Conversation(eager.tokenizer, eager.path).ask(PROMPT)
    prompt = torch.tensor([eager.tokenizer.encode(text).tolist()])
    greedy = Sampling(temperature=0)
    start = time.perf_counter()
    for rows in (prompt, prompt.repeat(2, 1)):  # both graphs: one row, and more
        list(generate_batch(ours.model, rows, 2, greedy))
    compile_s = time.perf_counter() - start
    times, tokens = {"eager": [], args.variant: []}, {}
    models = {"eager": eager.model, args.variant: ours.model}
    for who in models:
        list(generate_batch(models[who], prompt, 8, greedy))
    for r in range(args.repeats):
        for who in (list(models) if r % 2 == 0 else list(models)[::-1]):
            start = time.perf_counter()
            tokens[who] = [int(t) for t in generate_batch(models[who], prompt, args.new_tokens, greedy)]
            times[who].append(time.perf_counter() - start)
    speed = {who: args.new_tokens / statistics.median(t) for who, t in times.items()}
    same = next((i for i, (a, b) in enumerate(zip(tokens["eager"], tokens[args.variant])) if a != b), args.new_tokens)
    return {"variant": args.variant, "dtype": args.dtype, "compile_s": round(compile_s, 1),
            "eager_tokens_per_s": round(speed["eager"], 2), "compiled_tokens_per_s": round(speed[args.variant], 2),
            "ratio": round(speed[args.variant] / speed["eager"], 3), "greedy_agree": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--dtype", default="int8")
    p.add_argument("--new-tokens", type=int, default=150)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default="blocks,whole")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # set in the child processes
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.variant:
        print(json.dumps(one_variant(args)))
        return
    command = shlex.join(sys.orig_argv)
    rows = []
    for variant in args.variants.split(","):
        with tempfile.TemporaryDirectory() as cache:
            for start in ("cold", "warm"):
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                child = [sys.executable, __file__, "--model", args.model, "--dtype", args.dtype, "--variant", variant,
                         "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
                out = subprocess.run(child, env=env, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                rows.append({"start": start, **json.loads(out.stdout.strip().splitlines()[-1])})
                if args.json:
                    print(json.dumps({**rows[-1], "command": command}), flush=True)
    if args.json:
        return
    print(f"command: {command}")
    print(f"model {args.model}, {args.dtype}, batch 1, greedy, {args.new_tokens} new tokens, median of {args.repeats}")
    print("variant  start  compile s  eager tok/s  compiled tok/s  ratio  greedy tokens agree")
    for r in rows:
        print(f"{r['variant']:7}  {r['start']:5}  {r['compile_s']:9.1f}  {r['eager_tokens_per_s']:11.1f}  "
              f"{r['compiled_tokens_per_s']:14.1f}  {r['ratio']:5.2f}  {r['greedy_agree']} of {args.new_tokens}")


if __name__ == "__main__":
    main()
