"""Load on `llmkit serve`: 1, 4, 8 and 16 concurrent streaming clients, each asking a few requests
in turn, against one server process on a loopback port (started and stopped here).

Per level: requests/s, aggregate generated tokens/s (completion tokens from the streams' usage
over the level's wall time), time to first token and latency p50/p95, errors, the server's
peak RSS (sampled from /proc every 20 ms), the cores the server used and its CPU time per
generated token, and the CPU time per token of the load's own clients (which parse every chunk,
on the same machine); then the ratio of each level's tokens/s to one
client's, measured in the same run (the issue's goal: 8 clients >= 3x one). Bounded: at most
--requests per client and --seconds per level; a level past its time stops taking new requests.

    .venv/bin/python scripts/load_serve.py                      # smollm2 and a char model made here
    .venv/bin/python scripts/load_serve.py --model runs/shakespeare_char --levels 1,8
    .venv/bin/python scripts/load_serve.py --json > load.json
    .venv/bin/python scripts/load_serve.py --model smollm2 --dtype int4 --compile
    .venv/bin/python scripts/load_serve.py --model smollm2 --prompt-cache 0   # no prompt cache

The char model is recipes/shakespeare_char.yaml with a 256-token context, trained 100 steps
(speed does not depend on how well it learned); it answers so fast that it gets ten times
--requests. Keep the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import openai

from llmkit.inference.prompt_cache import DEFAULT_MB
from llmkit.serving.batcher import IDLE_TRIM_S, LAYOUT_S

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["Tell me about the sea.", "What is a good name for a cat?", "Write a short poem about autumn.",
           "How do plants grow?", "Explain what a computer is.", "Why is the sky blue?",
           "Give me three tips for learning to cook.", "What do bees do all day?"]
CHAR_PROMPTS = ["ROMEO:", "JULIET:\nO", "First Citizen:\nWe", "KING RICHARD:", "HAMLET:\nTo be", "MENENIUS:",
                "LADY MACBETH:", "GLOUCESTER:\nNow"]


class Server:
    """`llmkit serve MODEL --port 0 OPTIONS`, run here (its data/ and runs/ as this checkout's),
    with the llmkit code of this checkout or of `code`, another one (scripts/ab_serve.py)."""

    def __init__(self, model: str, options: list[str], log: Path, code: Path | None = None):
        # `code`'s llmkit ahead of this directory's (which `python -m` would put first)
        run = ["-c", f"import runpy, sys; sys.path.insert(0, {str(code)!r}); runpy.run_module('llmkit', "
                     "run_name='__main__', alter_sys=True)"] if code else ["-m", "llmkit"]
        command = [sys.executable, *run, "serve", model, "--port", "0", *options]
        with open(log, "w") as err:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("http://"):
            self.proc.kill()
            raise SystemExit(f"the server did not start: {line!r}\n{log.read_text()[-3000:]}")
        self.url = line.strip()
        self.peak_mb, self._sampling = 0.0, True
        threading.Thread(target=self._sample, daemon=True).start()

    def cpu_s(self) -> float:
        """CPU seconds the server process has used so far (user and system, all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _sample(self) -> None:
        while self._sampling and self.proc.poll() is None:
            try:
                self.peak_mb = max(self.peak_mb, self.rss_mb())
            except OSError:
                return
            time.sleep(0.02)

    def stop(self) -> int:
        self._sampling = False
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def asked(prompts: list[str], chat: bool, clients: int, client: int, r: int, tag: str = "") -> str:
    """The r-th prompt of client `client` of `clients`. A chat prompt is numbered, so that no two
    requests of a run send the same one: the server's prompt cache (llmkit/inference/prompt_cache.py)
    reuses the chat template's start of every prompt, as it would for real users, but an exact
    repeat would skip all of it but its last token, and more often with more clients."""
    text = prompts[(client + r) % len(prompts)]
    return f"Question {tag}{clients}.{client}.{r}: {text}" if chat else text


def one_request(client, model: str, prompt: str, chat: bool, max_tokens: int, seed: int) -> dict:
    """A streamed request: time to first token, latency, tokens (from usage), or the error."""
    start = time.perf_counter()
    first = None
    usage = None
    try:
        common = dict(model=model, max_tokens=max_tokens, temperature=0.8, seed=seed, stream=True,
                      stream_options={"include_usage": True})
        if chat:
            stream = client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
        else:
            stream = client.completions.create(prompt=prompt, **common)
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text = choice.delta.content if chat else choice.text
                if text and first is None:
                    first = time.perf_counter() - start
        return {"ttft": first, "latency": time.perf_counter() - start,
                "tokens": usage.completion_tokens if usage else 0, "error": None}
    except Exception as e:  # counted, not raised: the level goes on
        return {"ttft": None, "latency": time.perf_counter() - start, "tokens": 0, "error": f"{type(e).__name__}: {e}"[:200]}


def level(server: Server, model: str, clients: int, requests: int, seconds: float, chat: bool, prompts: list[str],
          max_tokens: int, tag: str = "") -> dict:
    """One level: `clients` threads, each streaming `requests` requests in turn (`tag` makes the
    prompts of a repeated level new ones)."""
    client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=600)
    results: list[dict] = []
    lock = threading.Lock()
    server.peak_mb = server.rss_mb()
    cpu = server.cpu_s(), _own_cpu_s()
    start = time.perf_counter()

    def worker(i: int) -> None:
        for r in range(requests):
            if time.perf_counter() - start > seconds:
                return
            result = one_request(client, model, asked(prompts, chat, clients, i, r, tag), chat, max_tokens, 1000 * i + r)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    server_cpu, client_cpu = server.cpu_s() - cpu[0], _own_cpu_s() - cpu[1]
    ok = [r for r in results if r["error"] is None]
    tokens = sum(r["tokens"] for r in ok)
    ttfts = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    latencies = sorted(r["latency"] for r in ok)

    def pct(values, q):
        return values[min(len(values) - 1, int(q * len(values)))] if values else None

    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok),
            "first_error": next((r["error"] for r in results if r["error"]), None), "seconds": wall,
            "requests_per_s": len(ok) / wall, "tokens": tokens,
            "tokens_per_s": tokens / wall,
            "ttft_p50": pct(ttfts, 0.5), "ttft_p95": pct(ttfts, 0.95),
            "latency_p50": pct(latencies, 0.5), "latency_p95": pct(latencies, 0.95),
            "peak_rss_mb": server.peak_mb, "server_cores": server_cpu / wall,
            # CPU per generated token: the server's, and the load's own (its clients parse every chunk)
            "server_cpu_ms_per_token": 1000 * server_cpu / max(1, tokens), "client_cpu_ms_per_token": 1000 * client_cpu / max(1, tokens)}


def alternating(servers: dict[str, Server], levels: list[int], rounds: int, chat: bool, prompts: list[str],
                requests: int, max_tokens: int = 64, settle: float = 0.0) -> dict[tuple[int, str], list[dict]]:
    """Each level of `levels` clients against each server (each serving its model as `m`: --name m)
    in turn, for `rounds` rounds, the order of the servers reversed every other round, so that each
    meets the machine in the same states; each round's prompts new ones. `settle` seconds of idle before each level, so that none starts
    in what the one before left (a batcher holds its weights' layout for 5 s). Prints each level;
    returns {(clients, server name): [level(), one per round]}."""
    for server in servers.values():  # warm: the first request of a process pays for its start
        one_request(openai.OpenAI(base_url=server.url, api_key="none", max_retries=0), "m", prompts[0], chat, 4, 0)
    results: dict[tuple[int, str], list[dict]] = {}
    for r in range(rounds):
        for clients in levels:
            for name in list(servers) if r % 2 == 0 else list(servers)[::-1]:
                time.sleep(settle)
                x = level(servers[name], "m", clients, requests, 600, chat, prompts, max_tokens, f"{r}.")
                if x["errors"]:
                    raise SystemExit(f"errors: {x['first_error']}")
                results.setdefault((clients, name), []).append(x)
                print(f"round {r + 1}, {clients} clients, {name}: {x['tokens_per_s']:6.1f} tokens/s, first token p50 "
                      f"{x['ttft_p50']:.2f} s, peak RSS {x['peak_rss_mb']:.0f} MB, CPU ms per token: server "
                      f"{x['server_cpu_ms_per_token']:.2f}, clients {x['client_cpu_ms_per_token']:.2f}", flush=True)
    return results


def mean_tokens_per_s(results: dict[tuple[int, str], list[dict]]) -> dict[tuple[int, str], float]:
    """alternating()'s results as each (clients, server name)'s mean tokens/s over the rounds."""
    return {key: sum(x["tokens_per_s"] for x in runs) / len(runs) for key, runs in results.items()}


def workload(model: str, root: Path, requests: int) -> tuple[str, bool, list[str], int]:
    """(what to serve, chat requests or not, prompts, requests per client) for `model`: "char"
    trains a char model under `root`, which answers in milliseconds, so it gets ten times the
    requests, for a level that lasts long enough to time; SmolLM2 is asked through its chat
    template; any other model continues plain prompts."""
    if model == "char":
        return char_model(root), False, CHAR_PROMPTS, 10 * requests
    return model, model == "smollm2", PROMPTS, requests


def char_model(root: Path) -> str:
    run = root / "char_run"
    command = [sys.executable, "-m", "llmkit", "train", str(REPO / "recipes" / "shakespeare_char.yaml"),
               f"out_dir={run}", f"data.root={root / 'data'}", "model.block_size=256", "train.max_steps=100", "train.warmup_steps=10",
               "train.eval_interval=100", "train.eval_steps=2", "train.sample_tokens=0", "--device", "cpu"]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return str(run)


def measure(model: str, name: str, chat: bool, prompts: list[str], args, root: Path, requests: int) -> dict:
    options = ["--max-batch", str(args.max_batch), "--name", name, "--dtype", args.dtype,
               "--prompt-cache", str(args.prompt_cache), *(["--compile"] if args.compile else [])]
    server = Server(model, options, root / f"{name}.log")
    try:
        one_request(openai.OpenAI(base_url=server.url, api_key="none", max_retries=0), name, prompts[0], chat, 4, 0)
        settle = max(IDLE_TRIM_S, LAYOUT_S) + 2  # an idle batcher hands freed memory back after these
        time.sleep(settle)
        idle_mb = server.rss_mb()
        rows = [level(server, name, c, requests, args.seconds, chat, prompts, args.max_tokens) for c in args.levels]
        time.sleep(settle)
        after_mb = server.rss_mb()
        with urllib.request.urlopen(server.url.removesuffix("/v1") + "/health", timeout=30) as reply:
            kept = json.load(reply).get("prompt_cache", {})
    finally:
        code = server.stop()
    single = rows[0]["tokens_per_s"] if rows and rows[0]["clients"] == 1 else None
    for row in rows:
        row["vs_one_client"] = row["tokens_per_s"] / single if single else None
    return {"model": name, "idle_rss_mb": idle_mb, "rss_after_mb": after_mb, "prompt_cache_mb": kept.get("mb"),
            "prompt_tokens_reused": kept.get("reused_tokens"), "exit_code": code, "levels": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="A model to serve (repeatable; default: smollm2 and a char model)")
    p.add_argument("--levels", default="1,4,8,16")
    p.add_argument("--requests", type=int, default=3, help="requests per client per level")
    p.add_argument("--seconds", type=float, default=120.0, help="a level takes no new requests after this")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--compile", action="store_true", help="serve with --compile (compiled before it listens)")
    p.add_argument("--prompt-cache", type=int, default=DEFAULT_MB, help="serve --prompt-cache MB (0: none)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    if not 1 <= args.requests <= 100 or not 0 < args.seconds <= 3600 or max(args.levels) > 256:
        raise SystemExit("--requests 1..100, --seconds up to 3600, levels up to 256 clients")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = args.model or ["smollm2", "char"]
        reports = []
        for model in models:
            name = "shakespeare_char" if model == "char" else Path(model).name.removesuffix(".gguf")
            served, chat, prompts, requests = workload(model, root, args.requests)
            reports.append(measure(served, name, chat, prompts, args, root, requests))
            print(json.dumps(reports[-1]), file=sys.stderr, flush=True)  # kept if a later model fails
    report = {"command": shlex.join(sys.orig_argv), "cpu": _cpu(), "torch_threads": os.cpu_count(), "models": reports}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    for r in reports:
        print(f"\n{r['model']}: idle RSS {r['idle_rss_mb']:.0f} MB, after the levels {r['rss_after_mb']:.0f} MB "
              f"(of which the prompt cache holds {r['prompt_cache_mb']} MB; it gave {r['prompt_tokens_reused']} prompt "
              f"tokens), exit code {r['exit_code']}")
        print("clients  requests  errors  req/s   tok/s  x one  ttft p50/p95 s   latency p50/p95 s  peak RSS MB"
              "  server cores, CPU ms/token  clients' CPU ms/token")
        for x in r["levels"]:
            def s(key):
                return "-" if x[key] is None else f"{x[key]:.2f}"
            print(f"{x['clients']:>7}  {x['requests']:>8}  {x['errors']:>6}  {x['requests_per_s']:5.2f}  "
                  f"{x['tokens_per_s']:6.1f}  {x['vs_one_client'] or 0:5.2f}  {s('ttft_p50')} / {s('ttft_p95')}"
                  f"      {s('latency_p50')} / {s('latency_p95')}        {x['peak_rss_mb']:.0f}        "
                  f"{x['server_cores']:.2f}, {x['server_cpu_ms_per_token']:.2f}            {x['client_cpu_ms_per_token']:.2f}")
            if x["first_error"]:
                print(f"         first error: {x['first_error']}")


def _own_cpu_s() -> float:
    """CPU seconds this process (the load's clients) has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
