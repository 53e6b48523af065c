"""The server's batcher alone, without HTTP: what batching gives before any HTTP work is added.

`scripts/load_serve.py` measures `llmkit serve` through its HTTP API, with the load's clients on
the same machine. This runs the same `Batcher` in one process: C client threads each submit
--requests requests in turn and waits for each to finish: load_serve.py's prompts (through the
model's chat template when it has one, as the server's chat endpoint does), --max-tokens new
tokens at temperature 0.8. It prints aggregate tokens/s for each level and its ratio to one client. It also
prints one decoding step's time at 1 and at the largest level's rows, timed apart from the
batcher, and the prompt's time alone: the bound batching has on this model and machine. And per
level, the share of the time the batcher's thread spent on prompts and on steps, and the median
step at the level's most rows.

    .venv/bin/python scripts/bench_batcher.py --model smollm2 --dtype int4 --threads 1
    .venv/bin/python scripts/bench_batcher.py --model runs/shakespeare_char --clients 1,8,16
"""

from __future__ import annotations

import argparse
import threading
import time

import torch
from load_serve import CHAR_PROMPTS, PROMPTS, asked

from llmkit.errors import LlmkitError
from llmkit.inference.chat import chat_template_of, render, special_tokens
from llmkit.inference.decoding import left_padded, new_cache, next_logits, prompt_ids
from llmkit.inference.layout import prefer_layout
from llmkit.inference.prompt_cache import DEFAULT_MB
from llmkit.inference.sampling import Sampling
from llmkit.loading import load_model
from llmkit.serving.batcher import Batcher, Request


def prompts(lm, clients: int = 1, requests: int = 1) -> list[list[tuple[int, ...]]]:
    """load_serve.py's prompts as ids, [client][request]: numbered and chat-templated for a model
    with a template, as load_serve.py sends them to the server's chat endpoint."""
    try:
        template = chat_template_of(lm.tokenizer, "the model")
    except LlmkitError:  # no template: plain continuations, as load_serve.py asks a char model
        template = None

    def ids(i: int, r: int) -> tuple[int, ...]:
        if template is None:
            return tuple(prompt_ids(lm.tokenizer, asked(CHAR_PROMPTS, False, clients, i, r))[0].tolist())
        messages = [{"role": "user", "content": asked(PROMPTS, True, clients, i, r)}]
        return tuple(prompt_ids(lm.tokenizer, render(template, messages, True, **special_tokens(lm.tokenizer)))[0].tolist())

    return [[ids(i, r) for r in range(requests)] for i in range(clients)]


def level(batcher: Batcher, lm, clients: int, requests: int, max_tokens: int) -> tuple[float, float]:
    """(aggregate generated tokens/s, seconds) of `clients` threads, each asking `requests` requests in turn."""
    made, table = [0] * clients, prompts(lm, clients, requests)

    def client(i: int) -> None:
        for r in range(requests):
            choices = batcher.complete(Request(table[i][r], max_tokens, Sampling(0.8, None), (), 1, 1000 * i + r))
            made[i] += sum(c.tokens for c in choices)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return sum(made) / wall, wall


class Breakdown:
    """Where the batcher's thread spends a level: each call of its `_admit` (prompts) and `_step`
    (one decoding step) timed, and the rows of each step."""

    def __init__(self, batcher: Batcher):
        self.admit, self.steps = 0.0, []  # seconds in admissions; (rows, seconds) per step
        admit, step = batcher._admit, batcher._step

        def timed_admit(jobs):
            start = time.perf_counter()
            admit(jobs)
            self.admit += time.perf_counter() - start

        def timed_step():
            rows, start = sum(r.job.request.n for r in batcher._running), time.perf_counter()
            step()
            self.steps.append((rows, time.perf_counter() - start))

        batcher._admit, batcher._step = timed_admit, timed_step

    def report(self, wall: float) -> str:
        """One line on the level just run (`wall` seconds); then starts over for the next."""
        full = max(rows for rows, _ in self.steps)
        at_full = sorted(t for rows, t in self.steps if rows == full)
        line = (f"      prompts {self.admit / wall:.0%} and steps {sum(t for _, t in self.steps) / wall:.0%} of the "
                f"time; {len(at_full)} of {len(self.steps)} steps at {full} rows, median {at_full[len(at_full) // 2] * 1e3:.1f} ms")
        self.admit, self.steps = 0.0, []
        return line


def step_ms(model, ids: torch.Tensor, rows: int, steps: int = 10) -> tuple[float, float]:
    """(prompt ms for one row, decoding step ms at `rows` rows), timed apart from the batcher."""
    with torch.no_grad():
        prefer_layout(model, 1)
        start = time.perf_counter()
        next_logits(model, ids, new_cache(model, 1, ids.shape[1] + 1))
        prompt = time.perf_counter() - start
        prefer_layout(model, rows, packed=True)  # as the batcher does
        cache = new_cache(model, rows, ids.shape[1] + steps + 3)
        next_logits(model, ids.expand(rows, -1), cache)
        last = ids[:, -1:].expand(rows, -1)
        for _ in range(2):
            next_logits(model, last, cache)
        start = time.perf_counter()
        for _ in range(steps):
            next_logits(model, last, cache)
        return prompt * 1e3, (time.perf_counter() - start) / steps * 1e3


def prompts_ms(model, rows: list[tuple[int, ...]]) -> tuple[float, float]:
    """(ms for the prompts one by one, ms for them as one left-padded batch), each in a new cache,
    as the batcher admits requests that arrive apart or together."""
    with torch.no_grad():
        prefer_layout(model, len(rows), packed=True)
        start = time.perf_counter()
        for ids in rows:
            next_logits(model, torch.tensor([ids]), new_cache(model, 1, len(ids) + 1))
        apart = time.perf_counter() - start
        padded, pad = left_padded(rows, "cpu")
        start = time.perf_counter()
        next_logits(model, padded, new_cache(model, padded.shape[0], padded.shape[1] + 1, pad))
        return apart * 1e3, (time.perf_counter() - start) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--clients", default="1,8")
    p.add_argument("--requests", type=int, default=3, help="requests per client, in turn")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-cache", type=int, default=DEFAULT_MB, help="the batcher's prompt cache, MB (0: none)")
    args = p.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    if not 1 <= args.requests <= 100 or not 1 <= args.max_tokens <= 1024 or not levels or max(levels) > 64 or min(levels) < 1:
        raise SystemExit("--requests 1..100, --max-tokens 1..1024, clients 1..64")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, dtype=args.dtype)
    first = [row[0] for row in prompts(lm, 8)]  # 8 clients' first prompts
    ids = torch.tensor([first[0]])
    prompt, one = step_ms(lm.model, ids, 1)
    _, many = step_ms(lm.model, ids, max(levels))
    print(f"{args.model} {args.dtype}, {torch.get_num_threads()} thread(s), a prompt of {ids.shape[1]} tokens: "
          f"prompt {prompt:.1f} ms; a step of 1 row {one:.2f} ms, of {max(levels)} rows {many:.2f} ms "
          f"({max(levels) * one / many:.2f}x the tokens/s of one row)")
    apart, together = prompts_ms(lm.model, first)
    print(f"{len(first)} prompts: one by one {apart:.0f} ms, as one padded batch {together:.0f} ms ({apart / together:.2f}x)")
    batcher = Batcher(lm.model, lm.tokenizer, max_batch=max(levels), prompt_cache_mb=args.prompt_cache)
    try:
        level(batcher, lm, 1, 1, 4)  # warm
        batcher.prompts.clear()  # (the batcher is idle: its thread does not touch the cache now)
        breakdown, single = Breakdown(batcher), None
        for clients in levels:
            rate, wall = level(batcher, lm, clients, args.requests, args.max_tokens)
            single = single or (rate if clients == 1 else None)
            ratio = f"{rate / single:.2f}x one" if single else ""
            print(f"{clients:>3} clients x {args.requests} requests of {args.max_tokens} tokens: {rate:8.1f} tokens/s  {ratio}"
                  f"  (prompt tokens copied from the prompt cache so far: {batcher.prompts.reused})")
            print(breakdown.report(wall))
    finally:
        batcher.stop()


if __name__ == "__main__":
    main()
