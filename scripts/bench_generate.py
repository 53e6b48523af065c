"""Generation speed: llmkit's KV cache against Hugging Face's generate(use_cache=True), same run.

What is measured, for GPT-2 124M's shape with random weights (HF's copied from llmkit's, so both
compute the same function), batch 1, a 16-token prompt, greedy decoding:
1. new tokens per second over `--new-tokens` (200) tokens: llmkit's `generate_batch` with its KV
   cache against `GPT2LMHeadModel.generate(use_cache=True)`, runs interleaved, the median of
   `--repeats`; the greedy tokens of both are compared (fp32 on random weights: a near-tie
   between two logits may go either way after many steps, so the length of the common prefix is
   printed rather than required);
2. llmkit with the cache against llmkit without it (every step re-runs the whole sequence) over
   `--long-tokens` (500) new tokens.

    .venv/bin/python scripts/bench_generate.py
    .venv/bin/python scripts/bench_generate.py --new-tokens 50 --long-tokens 100 --repeats 1   # a quick look
    .venv/bin/python scripts/bench_generate.py --device cuda --json

With --model (a GGUF file or a registered name such as smollm2), the same comparison runs on a
real model instead: llmkit and transformers each load the same GGUF file (transformers through
its own GGUF loader), in each --dtypes, on a chat-templated prompt; rows add the memory-bandwidth
bound (the weights' bytes, read once per token, over the bandwidth of a plain read measured in
the same run), and `llmkit generate` itself is timed in a fresh process: load, first token, peak RSS.
Where `llama-cpp-python` is installed (a benchmark-only package, never a dependency: it builds from
source, see docs/benchmarks.md), llama.cpp decodes the same prompt ids from the same file at the
end, with as many threads as torch uses; where it is not, that row is skipped with a message.

    .venv/bin/python scripts/bench_generate.py --model smollm2 --dtypes fp32,bf16,int8,int4 --batches 1,4,8 --compile

With --compile, each dtype is also timed with compiled blocks (llmkit/inference/compiled.py): its
own column, its compile time (the first step of each graph), and its batches.

Keep the machine otherwise idle while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from llmkit.config import ModelConfig
from llmkit.formats.hf import hf_config_dict, to_hf_state_dict
from llmkit.inference.decoding import generate_batch
from llmkit.inference.sampling import Sampling
from llmkit.models import build_model

GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)


def timed(fn, device: torch.device) -> tuple[float, list[int]]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--long-tokens", type=int, default=500, help="new tokens for cached vs uncached")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="runs per contender (median)")
    p.add_argument("--long-repeats", type=int, default=1,
                   help="runs for cached vs uncached (uncached 500 tokens takes minutes on a CPU)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", action="store_true")
    p.add_argument("--model", help="a GGUF file or registered name (smollm2): benchmark a real model instead")
    p.add_argument("--dtypes", default="fp32,bf16,int8,int4", help="with --model: the dtypes to compare in (fp32 first)")
    p.add_argument("--compile", action="store_true", help="with --model: also time llmkit with compiled blocks")
    p.add_argument("--batches", default="1,4,8", help="with --model: llmkit's aggregate tokens/s at these batch sizes")
    p.add_argument("--fresh-only", action="store_true",
                   help="with --model: only the fresh-process figures (first token, peak RSS) per dtype")
    args = p.parse_args()
    if args.model and args.fresh_only:
        for dtype in args.dtypes.split(","):
            print(json.dumps({"model": args.model, "dtype": dtype, **fresh_process(args.model, dtype)}))
        return None
    if args.model:
        return real_model(args)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = ModelConfig(name="gpt", bias=True, dropout=0.0, **GPT2_124M)
    ours = build_model(config).to(device).eval()
    hf = GPT2LMHeadModel(GPT2Config(**hf_config_dict(config)))
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), config))
    hf = hf.to(device).eval()
    prompt = torch.randint(config.vocab_size, (1, args.prompt_tokens), device=device)
    greedy = Sampling(temperature=0)

    def llmkit(n: int, cache: bool = True):
        return lambda: [int(t) for t in generate_batch(ours, prompt, n, greedy, use_cache=cache)]

    def huggingface(n: int):
        def run():
            with torch.no_grad():
                out = hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                                  pad_token_id=0, attention_mask=torch.ones_like(prompt))
            return out[0, prompt.shape[1]:].tolist()
        return run

    results = []
    command = shlex.join(sys.orig_argv)
    machine = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
               f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
               "torch": torch.__version__, "transformers": transformers.__version__}

    def compare(what: str, contenders: dict, n: int, peer: str, repeats: int) -> None:
        for make in contenders.values():  # warm-up: allocator, kernels, HF's generation config
            make(8)()
        times = {name: [] for name in contenders}
        tokens = {}
        for r in range(repeats):
            order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
            for name in order:
                seconds, tokens[name] = timed(contenders[name](n), device)
                times[name].append(seconds)
        speed = {name: n / statistics.median(t) for name, t in times.items()}
        names = list(contenders)
        row = {"what": what, "new_tokens": n, "prompt_tokens": args.prompt_tokens, "batch": 1,
               **{f"{name}_tokens_per_s": round(speed[name], 2) for name in names},
               "ratio": round(speed[names[0]] / speed[peer], 3),
               "same_greedy_prefix": common_prefix(tokens[names[0]], tokens[peer]),
               **machine, "command": command}
        results.append(row)
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{what}: " + ", ".join(f"{name} {speed[name]:,.1f} tokens/s" for name in names)
                  + f" -> {row['ratio']:.2f}x; greedy tokens agree for the first {row['same_greedy_prefix']} of {n}")

    if not args.json:
        print(f"command: {command}")
        print("machine: " + " | ".join(f"{k} {v}" for k, v in machine.items()))
        print(f"model:   GPT-2 124M shape, random weights (HF's copied from llmkit's), fp32, batch 1, "
              f"{args.prompt_tokens}-token prompt, greedy, median of interleaved runs")
    compare(f"{args.new_tokens} new tokens, llmkit (KV cache) vs HF generate(use_cache=True)",
            {"llmkit": llmkit, "HF": huggingface}, args.new_tokens, "HF", args.repeats)
    compare(f"{args.long_tokens} new tokens, llmkit with vs without its KV cache",
            {"cached": llmkit, "uncached": lambda n: llmkit(n, cache=False)}, args.long_tokens, "uncached",
            args.long_repeats)


def bandwidth_gb_s(megabytes: int = 512, repeats: int = 5) -> float:
    """A plain read of a buffer far larger than the caches: the bytes per second decoding can hope for."""
    x = torch.ones(megabytes * (1 << 20) // 4)
    x.sum()
    best = min(timed(lambda: x.sum(), torch.device("cpu"))[0] for _ in range(repeats))
    return x.numel() * 4 / best / 1e9


# Runs `llmkit ARGS...` and, at exit, prints the process's own peak RSS (VmHWM). Not getrusage: a
# child's ru_maxrss keeps the RSS it had between fork and exec, which is this big parent's.
PEAK = ("import atexit, runpy, sys\n"
        "atexit.register(lambda: print('VmHWM', next(l.split()[1] for l in open('/proc/self/status') "
        "if l.startswith('VmHWM')), file=sys.stderr))\n"
        "sys.argv = ['llmkit', *sys.argv[1:]]\nrunpy.run_module('llmkit', run_name='__main__')\n")


def fresh_process(model: str, dtype: str = "fp32") -> dict:
    """`llmkit generate MODEL -n 1 --dtype D` in a new process: wall time to the first token (load
    included) and that process's peak RSS."""
    import subprocess

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, "generate", model, "-p", "Hello", "-n", "1", "--temperature", "0",
                           "--dtype", dtype], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr)
    peak_kb = int(proc.stderr.rsplit("VmHWM", 1)[1].split()[0])
    return {"first_token_s": round(wall, 2), "peak_rss_mb": round(peak_kb / 1024)}


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's weights, each tensor once (a tied table is one), int8 buffers included."""
    seen = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dim() >= 1 and tensor.numel() > 1024:  # matrices and tables, not rotary caches or scalars
            seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def real_model(args) -> None:
    from llmkit.inference.chat import Conversation
    from llmkit.loading import load_model, read_checkpoint

    path = read_checkpoint(args.model).path  # the GGUF file (downloaded first for a registered name)
    command = shlex.join(sys.orig_argv)
    machine = {"device": f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)", "torch": torch.__version__,
               "transformers": transformers.__version__}
    bandwidth = bandwidth_gb_s()
    if not args.json:
        print(f"command: {command}")
        print("machine: " + " | ".join(f"{k} {v}" for k, v in machine.items()) + f" | read bandwidth {bandwidth:.1f} GB/s")
        print(f"model:   {path.name}, batch 1, greedy, {args.new_tokens} new tokens, median of {args.repeats} interleaved runs")
    # transformers has no int8 or int4 of its own on a CPU: llmkit's are compared with its fp32.
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32, "int4": torch.float32}
    reference = None  # llmkit's fp32 greedy tokens, which every dtype's are compared with
    for name in args.dtypes.split(","):
        process = fresh_process(args.model, name)
        ours = load_model(path, dtype=name)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                   dtype=dtypes[name]).eval()
        text = Conversation(ours.tokenizer, path).ask("Write a long story about a cat who learns to fly.")
        prompt = torch.tensor([ours.tokenizer.encode(text).tolist()])
        greedy = Sampling(temperature=0)

        models = {"llmkit": ours.model}
        compile_s = None
        if args.compile:
            models["compiled"] = load_model(path, dtype=name, compile=True).model
            start = time.perf_counter()
            for rows in (prompt, prompt.repeat(2, 1)):  # both graphs: one row, and more
                list(generate_batch(models["compiled"], rows, 2, greedy))
            compile_s = time.perf_counter() - start

        def llmkit(who: str, n: int):
            return lambda: [int(t) for t in generate_batch(models[who], prompt, n, greedy)]

        def huggingface(n: int):
            def run():
                with torch.no_grad():
                    out = theirs.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                                          pad_token_id=2, attention_mask=torch.ones_like(prompt))
                return out[0, prompt.shape[1]:].tolist()
            return run

        def contender(who: str, n: int):
            return huggingface(n) if who == "transformers" else llmkit(who, n)

        names = [*models, "transformers"]
        for who in names:
            contender(who, 8)()
        times, tokens = {who: [] for who in names}, {}
        for r in range(args.repeats):
            for who in (names if r % 2 == 0 else names[::-1]):
                seconds, tokens[who] = timed(contender(who, args.new_tokens), torch.device("cpu"))
                times[who].append(seconds)
        speed = {who: args.new_tokens / statistics.median(t) for who, t in times.items()}
        size = weight_bytes(ours.model)
        reference = reference if reference is not None else tokens["llmkit"]
        batches = {}
        for who in models:
            for batch in (int(b) for b in args.batches.split(",") if b):  # aggregate tokens/s of B rows at once
                rows = prompt.repeat(batch, 1)
                seconds, _ = timed(lambda: list(generate_batch(models[who], rows, args.new_tokens, greedy)), torch.device("cpu"))
                batches[f"{'' if who == 'llmkit' else 'compiled_'}batch_{batch}_tokens_per_s"] = round(batch * args.new_tokens / seconds, 1)
        peer = "fp32" if name in ("int8", "int4") else name
        row = {"what": f"{path.name} {name}", "new_tokens": args.new_tokens, "prompt_tokens": prompt.shape[1], "batch": 1,
               "llmkit_tokens_per_s": round(speed["llmkit"], 2),
               f"transformers_{peer}_tokens_per_s": round(speed["transformers"], 2),
               "ratio": round(speed["llmkit"] / speed["transformers"], 3),
               **({"compiled_tokens_per_s": round(speed["compiled"], 2),
                   "compiled_ratio": round(speed["compiled"] / speed["transformers"], 3),
                   "compile_s": round(compile_s, 1),
                   "compiled_agrees_with_eager": common_prefix(tokens["compiled"], tokens["llmkit"])} if args.compile else {}),
               "bound_tokens_per_s": round(bandwidth * 1e9 / size, 1), "weight_mb": round(size / 1e6),
               "same_greedy_prefix": common_prefix(tokens["llmkit"], tokens["transformers"]),
               "agrees_with_llmkit_fp32": common_prefix(tokens["llmkit"], reference), **batches,
               **process, **machine, "read_bandwidth_gb_s": round(bandwidth, 1), "command": command}
        last = (prompt, reference)
        if args.json:
            print(json.dumps(row))
        else:
            compiled = (f"; compiled {row['compiled_tokens_per_s']:,.1f} tokens/s ({row['compiled_ratio']:.2f}x, "
                        f"compiling {row['compile_s']} s, greedy tokens agree with eager for "
                        f"{row['compiled_agrees_with_eager']})" if args.compile else "")
            print(f"{name}: llmkit {row['llmkit_tokens_per_s']:,.1f} tokens/s, transformers {peer} "
                  f"{speed['transformers']:,.1f} -> {row['ratio']:.2f}x{compiled}; bandwidth bound "
                  f"{row['bound_tokens_per_s']} tokens/s ({row['weight_mb']} MB per token); greedy tokens agree with "
                  f"transformers for the first {row['same_greedy_prefix']} of {args.new_tokens}, with llmkit fp32 for "
                  f"{row['agrees_with_llmkit_fp32']}; " + ", ".join(f"{k.removesuffix('_tokens_per_s').replace('_', ' ')} {v:,.1f}"
                                                                    for k, v in batches.items())
                  + f" tokens/s; fresh process: {process['first_token_s']} s to the first token, "
                  f"peak RSS {process['peak_rss_mb']} MB")
    row = llama_cpp_row(path, *last, args)
    if args.json:
        print(json.dumps(row))
    elif "skipped" in row:
        print(f"llama.cpp: {row['skipped']}")
    else:
        print(f"llama.cpp ({path.name} as it is): {row['llama_cpp_tokens_per_s']:,.1f} tokens/s; greedy tokens agree "
              f"with llmkit fp32 for the first {row['agrees_with_llmkit_fp32']} of {args.new_tokens}")


def llama_cpp_row(path, prompt: torch.Tensor, reference: list[int], args) -> dict:
    """llama.cpp on the same GGUF file and prompt ids, batch 1, greedy (top-k 1), exactly
    `--new-tokens` tokens (its end-of-text token does not stop it), the median of `--repeats`."""
    try:
        from llama_cpp import Llama
    except ImportError as e:
        return {"what": "llama.cpp", "skipped": f"llama-cpp-python is not installed here ({e}); row skipped"}
    llm = Llama(model_path=str(path), n_ctx=prompt.shape[1] + args.new_tokens + 8, n_threads=torch.get_num_threads(),
                n_threads_batch=torch.get_num_threads(), n_batch=512, verbose=False)
    ids = prompt[0].tolist()

    def run(n: int) -> list[int]:
        out = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(token))
            if len(out) == n:
                break
        return out

    run(8)
    times, tokens = [], []
    for _ in range(args.repeats):
        seconds, tokens = timed(lambda: run(args.new_tokens), torch.device("cpu"))
        times.append(seconds)
    return {"what": f"llama.cpp {path.name}", "new_tokens": args.new_tokens, "batch": 1,
            "llama_cpp_tokens_per_s": round(args.new_tokens / statistics.median(times), 2),
            "agrees_with_llmkit_fp32": common_prefix(tokens, reference), "threads": torch.get_num_threads()}



if __name__ == "__main__":
    main()
