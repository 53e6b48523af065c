"""What the server's prompt cache (llmkit/inference/prompt_cache.py) saves: time to first token with
it and without it (`llmkit serve --prompt-cache 0`), in the same run, through the server's batcher
(no HTTP, one client at a time).

Two workloads, each run by a batcher without a prompt cache, then by one with it:
- new users: load_serve.py's 8 chat prompts, each sent once. They share the chat template's start
  (SmolLM2's system prompt, 24 tokens), so the cache skips that part of each after the first.
- a conversation: 4 turns, each sending every earlier turn back (as a chat client does) with a new
  message. The cache holds the last turn's prompt and answer, so each turn computes its new
  message and little more.

With --load, the same comparison under load, through HTTP instead: two `llmkit serve` processes of
the model (`--prompt-cache 0` and the default), started together and warmed; then for each of
--rounds rounds and each level of --load clients, load_serve.py's level (streaming clients, 3
requests each, 64 tokens at temperature 0.8) against one server and then the other, the order
alternating by round, so that both meet the machine in the same state, each level after 6 s idle
(a batcher keeps its weights' layout for 5 s: llmkit/inference/layout.py). Each round's prompts are
new (numbered by round), so that nothing is an exact repeat of an earlier round's.

Each request: greedy, --max-tokens new tokens. Printed per request: prompt tokens, tokens copied
from the cache, time to first token without and with the cache, and their ratio. Greedy answers
with and without the cache are compared too (they may differ only where two tokens' logits
meet within float rounding).

    .venv/bin/python scripts/bench_prompt_cache.py --model smollm2 --dtype fp32 --threads 1
    .venv/bin/python scripts/bench_prompt_cache.py --model smollm2 --dtype int4 --load 1,8 --rounds 3
"""

from __future__ import annotations

import argparse
import queue
import time

import torch
from load_serve import PROMPTS

from llmkit.inference.chat import chat_template_of, render, special_tokens
from llmkit.inference.sampling import Sampling
from llmkit.loading import load_model
from llmkit.serving.batcher import LAYOUT_S, Batcher, Done, Failed, Request, Text

TURNS = ["Tell me about the moon.", "How far away is it?", "Who walked on it first?", "What did they bring back?"]


def ask(batcher: Batcher, ids: tuple[int, ...], max_tokens: int) -> tuple[float, str]:
    """(seconds to the first text, the whole answer) of one greedy request."""
    events: queue.SimpleQueue = queue.SimpleQueue()
    start = time.perf_counter()
    batcher.submit(Request(ids, max_tokens, Sampling(temperature=0)), events.put)
    first, text = None, ""
    while not isinstance(event := events.get(timeout=600), Done):
        if isinstance(event, Failed):
            raise SystemExit(event.message)
        if isinstance(event, Text):
            first = first if first is not None else time.perf_counter() - start
            text += event.text
    return first if first is not None else time.perf_counter() - start, text


def workloads(lm, batcher: Batcher, max_tokens: int) -> list[tuple[str, int, int, float, str]]:
    """(workload, prompt tokens, tokens copied, seconds to first text, answer) per request."""
    template, special = chat_template_of(lm.tokenizer, "the model"), special_tokens(lm.tokenizer)

    def ids(messages: list[dict]) -> tuple[int, ...]:
        return tuple(lm.tokenizer.encode(render(template, messages, True, **special)).tolist())

    rows = []
    for text in PROMPTS:
        prompt, before = ids([{"role": "user", "content": text}]), batcher.prompts.reused
        ttft, answer = ask(batcher, prompt, max_tokens)
        rows.append(("new user", len(prompt), batcher.prompts.reused - before, ttft, answer))
    messages: list[dict] = []
    for turn in TURNS:
        messages.append({"role": "user", "content": turn})
        prompt, before = ids(messages), batcher.prompts.reused
        ttft, answer = ask(batcher, prompt, max_tokens)
        messages.append({"role": "assistant", "content": answer})
        rows.append(("conversation", len(prompt), batcher.prompts.reused - before, ttft, answer))
    return rows


def under_load(model: str, dtype: str, levels: list[int], rounds: int) -> None:
    """Tokens/s and median time to first token of each level, with and without the prompt cache,
    alternating servers (module docstring)."""
    import tempfile
    from pathlib import Path

    import load_serve

    names = {0: "prompt cache   0 MB", 128: "prompt cache 128 MB"}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {names[mb]: load_serve.Server(model, ["--name", "m", "--dtype", dtype, "--prompt-cache", str(mb)],
                                                Path(tmp) / f"serve{mb}.log") for mb in (0, 128)}
        try:
            results = load_serve.alternating(servers, levels, rounds, True, load_serve.PROMPTS, 3, settle=LAYOUT_S + 1)
        finally:
            codes = [server.stop() for server in servers.values()]
    print(f"exit codes {codes}")
    by_name = load_serve.mean_tokens_per_s(results)
    mean = {(clients, mb): by_name[clients, names[mb]] for clients in levels for mb in names}
    for clients in levels:
        print(f"{clients} clients, mean tokens/s: {mean[clients, 0]:.1f} without the cache, {mean[clients, 128]:.1f} with it "
              f"({mean[clients, 128] / mean[clients, 0]:.2f}x)")
    if 1 in levels:
        for clients in levels:
            print(f"{clients} clients against 1: {mean[clients, 0] / mean[1, 0]:.2f}x without the cache, "
                  f"{mean[clients, 128] / mean[1, 128]:.2f}x with it")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--load", default=None, help="client levels, e.g. 1,8: compare two servers under load instead")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not 1 <= args.max_tokens <= 512 or not 1 <= args.rounds <= 10:
        raise SystemExit("--max-tokens 1..512, --rounds 1..10")
    if args.load:
        levels = [int(x) for x in args.load.split(",")]
        if min(levels) < 1 or max(levels) > 64:
            raise SystemExit("--load levels 1..64 clients")
        under_load(args.model, args.dtype, levels, args.rounds)
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, dtype=args.dtype)
    results = {}
    for mb in (0, 128):
        batcher = Batcher(lm.model, lm.tokenizer, max_batch=1, prompt_cache_mb=mb)
        try:
            ask(batcher, tuple(lm.tokenizer.encode("Hello").tolist()), 2)  # warm (then forgotten)
            batcher.prompts.clear()
            results[mb] = workloads(lm, batcher, args.max_tokens)
        finally:
            batcher.stop()
    print(f"{args.model} {args.dtype}, {torch.get_num_threads()} thread(s), greedy, {args.max_tokens} new tokens")
    print("workload       prompt  copied  first text: no cache  cache   ratio  same answer")
    sums = {}
    for off, on in zip(results[0], results[128]):
        kind, tokens, copied, ttft, answer = on
        same = "yes" if answer == off[4] else "no"
        print(f"{kind:<13} {tokens:>7} {copied:>7}  {off[3] * 1e3:14.0f} ms {ttft * 1e3:6.0f} ms  {off[3] / ttft:5.2f}x  {same}")
        total = sums.setdefault(kind, [0.0, 0.0])
        total[0], total[1] = total[0] + off[3], total[1] + ttft
    for kind, (off, on) in sums.items():
        print(f"{kind}: time to first text, summed: {off * 1e3:.0f} ms without the cache, {on * 1e3:.0f} ms with it "
              f"({off / on:.2f}x)")


if __name__ == "__main__":
    main()
