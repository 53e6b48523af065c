"""Training throughput: llmkit's GPT against Hugging Face's GPT2LMHeadModel, same shape, same run.

What is measured: the wall time of full training steps (forward, loss, backward, AdamW step,
zero_grad) for two models with identical shapes and identical starting weights (HF's are copied
from llmkit's), on the same random token batches, with the same optimizer and the same threads.
The steps of the two models are interleaved, so load from other processes hits both alike. For each
model and precision the table gives the median step time, tokens per second (batch x context /
median) and the ratio to HF (above 1: llmkit is faster).

    .venv/bin/python scripts/bench_train.py                         # small shape, fp32, CPU
    .venv/bin/python scripts/bench_train.py --precision both --steps 20
    .venv/bin/python scripts/bench_train.py --preset gpt2 --device cuda --batch-size 16 --precision bf16
    .venv/bin/python scripts/bench_train.py --json                  # one JSON object per result

Keep the machine otherwise idle while it runs: the numbers are only as quiet as the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import transformers
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from llmkit.config import ModelConfig
from llmkit.formats.hf import hf_config_dict, to_hf_state_dict
from llmkit.models import build_model, count_parameters
from llmkit.tasks.language_modeling import lm_loss

# GPT-2's BPE vocabulary (50257) in both presets: with it the output head and the cross-entropy
# are as large a share of the step as in a real GPT-2 run.
PRESETS = {
    # about 1.3 s per step at batch 8 on 2 CPU cores: quick to run, yet big enough to time
    "small": dict(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=50257),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),  # GPT-2 124M
}
SEED = 0

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def llmkit_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return lm_loss(model(x), y)  # llmkit's models return logits; the loss is the task's


def hf_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # What a HF user writes: pass labels and let the model compute the loss (ForCausalLMLoss, which
    # upcasts logits to fp32 as lm_loss does). labels=x alone would be shifted inside the model and
    # score T-1 positions per row; shift_labels=y hands over the already-shifted targets, so both
    # models score the same B*T positions.
    return model(input_ids=x, labels=x, shift_labels=y).loss


@dataclass
class Contender:
    name: str
    model: nn.Module
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer


def make_contenders(config: ModelConfig, device: torch.device) -> tuple[list[Contender], str]:
    """Both models with llmkit's initial weights, each with its own AdamW; and HF's attention kind."""
    torch.manual_seed(SEED)
    ours = build_model(config)
    # A KV cache is for generation; training does not need one (HF's default would build one).
    hf = GPT2LMHeadModel(GPT2Config(**hf_config_dict(config), use_cache=False))
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), config))  # strict: every tensor must map
    contenders = []
    for name, model, loss_fn in (("llmkit", ours, llmkit_loss), ("HF", hf, hf_loss)):
        model.to(device).train()
        # Plain torch AdamW (default foreach implementation) for both, so the optimizer is not
        # part of what is compared.
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
        contenders.append(Contender(name, model, loss_fn, optimizer))
    return contenders, hf.config._attn_implementation


def make_batches(n: int, batch_size: int, block_size: int, vocab_size: int,
                 device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n (inputs, next-token targets) pairs of uniform random ids: step i of either model gets pair i."""
    generator = torch.Generator().manual_seed(SEED)
    batches = []
    for _ in range(n):
        tokens = torch.randint(vocab_size, (batch_size, block_size + 1), generator=generator)
        # contiguous: HF's loss flattens shift_labels with .view
        batches.append((tokens[:, :-1].contiguous().to(device), tokens[:, 1:].contiguous().to(device)))
    return batches


def check_same_model(contenders: list[Contender], batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Same weights and same loss definition must give the same fp32 loss; otherwise the
    comparison would be between different computations."""
    with torch.no_grad():
        losses = [c.loss_fn(c.model, *batch).item() for c in contenders]
    if abs(losses[0] - losses[1]) > 1e-4 * abs(losses[1]):
        sys.exit(f"the two models disagree on the first batch's loss: {losses} (not the same model?)")


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def timed_step(c: Contender, batch: tuple[torch.Tensor, torch.Tensor], precision: str,
               device: torch.device) -> float:
    """Seconds for one full training step of one model."""
    if device.type == "cuda":
        torch.cuda.synchronize()  # GPU work is asynchronous: start from an idle device ...
    start = time.perf_counter()
    with autocast(precision, device):  # forward and loss in bf16 where autocast allows it
        loss = c.loss_fn(c.model, *batch)
    loss.backward()  # backward runs outside autocast, as PyTorch recommends
    c.optimizer.step()
    c.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()  # ... and stop the clock only when the step has really finished
    return time.perf_counter() - start


def bench(contenders: list[Contender], batches: list, precision: str, warmup: int, steps: int,
          device: torch.device) -> dict[str, list[float]]:
    """Step times per model. Warm-up steps (allocator, caches, compilation) are not timed. Timed
    steps alternate between the models, and which goes first alternates too, so noise from the
    machine and any cost of running right after the other model fall on both alike."""
    for i in range(warmup):
        for c in contenders:
            timed_step(c, batches[i], precision, device)
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for i in range(steps):
        for c in contenders if i % 2 == 0 else contenders[::-1]:
            times[c.name].append(timed_step(c, batches[warmup + i], precision, device))
    return times


def machine(device: torch.device, threads: int) -> dict:
    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "transformers": transformers.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--block-size", type=int, help="context length T (default: the preset's)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per model and precision")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (use 3+ with --compile)")
    p.add_argument("--precision", choices=["fp32", "bf16", "both"], default="fp32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--json", action="store_true", help="print one JSON object per result, nothing else")
    args = p.parse_args()
    if min(args.steps, args.batch_size, args.threads) < 1 or args.warmup < 0:
        p.error("--steps, --batch-size and --threads must be at least 1, --warmup at least 0")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = dict(PRESETS[args.preset], **({"block_size": args.block_size} if args.block_size else {}))
    # GPT-2's architecture in llmkit's switches (biases, learned positions, LayerNorm, tanh-GELU,
    # tied head); dropout 0 in both, since it only adds noise to a speed measurement.
    config = ModelConfig(name="gpt", bias=True, dropout=0.0, **shape)
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    command = shlex.join(sys.orig_argv)  # the interpreter too, so the line can be pasted back
    info = machine(device, torch.get_num_threads())
    tokens_per_step = args.batch_size * config.block_size

    contenders, attn = make_contenders(config, device)
    params = {c.name: count_parameters(c.model) for c in contenders}  # the tied head counted once
    if len(set(params.values())) != 1:
        sys.exit(f"parameter counts differ: {params}")
    batches = make_batches(args.warmup + args.steps, args.batch_size, config.block_size,
                           config.vocab_size, device)
    check_same_model(contenders, batches[0])  # before compiling: no graphs built just for the check
    if args.compile:  # the compiled wrapper shares the module's parameters, so the optimizers still fit
        for c in contenders:
            c.model = torch.compile(c.model)
    if not args.json:
        print(f"command: {command}")
        print("machine: " + " | ".join(f"{k} {v}" for k, v in info.items()))
        print(f"shape:   {config.n_layer} layers, {config.n_head} heads, {config.n_embd} channels, "
              f"context {config.block_size}, vocab {config.vocab_size}; batch {args.batch_size} "
              f"= {tokens_per_step:,} tokens/step")
        print(f"params:  llmkit {params['llmkit']:,} = HF {params['HF']:,} (same weights; same first loss)")
        print(f"HF attention: {attn}{' | torch.compile' if args.compile else ''} | {args.warmup} warm-up + "
              f"{args.steps} timed steps per model and precision, interleaved")
        print(f"\n{'model':<8}{'precision':<11}{'params':>12}{'step ms':>10}{'min':>9}{'max':>9}"
              f"{'tokens/s':>11}{'x HF':>7}")

    for precision in precisions:
        times = bench(contenders, batches, precision, args.warmup, args.steps, device)
        median = {name: statistics.median(t) for name, t in times.items()}
        for name, t in times.items():
            row = {"model": name, "precision": precision, "params": params[name],
                   "step_ms": round(1e3 * median[name], 2), "min_ms": round(1e3 * min(t), 2),
                   "max_ms": round(1e3 * max(t), 2), "tokens_per_s": round(tokens_per_step / median[name], 1),
                   "ratio_vs_hf": round(median["HF"] / median[name], 4)}  # tokens/s over HF's tokens/s
            if args.json:
                print(json.dumps({**row, "preset": args.preset, "batch_size": args.batch_size,
                                  "block_size": config.block_size, "steps": args.steps, "warmup": args.warmup,
                                  "compile": args.compile, "hf_attention": attn, **info, "command": command}))
            else:
                print(f"{name:<8}{precision:<11}{row['params']:>12,}{row['step_ms']:>10.1f}"
                      f"{row['min_ms']:>9.1f}{row['max_ms']:>9.1f}{row['tokens_per_s']:>11,.0f}"
                      f"{row['ratio_vs_hf']:>7.2f}")


if __name__ == "__main__":
    main()
