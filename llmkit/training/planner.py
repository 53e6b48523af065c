"""Before a run: what will it cost? `llmkit train RECIPE --dry-run` prints this plan.

- FLOPs per token, for training: 6 per matmul weight (2 forward, 4 backward: a multiply and an add
  for each input gradient and weight gradient) plus attention's own matmuls, 12 x n_layer x T x C
  (q.k^T and weights.v, forward and backward, over the full context as PaLM's appendix counts).
- Memory: weights, gradients and AdamW's two moments are 4 bytes per parameter each (16 in all;
  12 for the matrices Muon takes, which keep one momentum buffer);
  activations are what autograd saves for backward. They are counted exactly by running the model once on fake tensors (shapes and dtypes, no data)
  under the run's autocast. Backward needs room on top of them: while it works through a block,
  that block's activation gradients live beside the saved tensors, so the plan adds one block's
  activations (two with gradient checkpointing, which recomputes the block first). Measured
  against real runs in docs/benchmarks.md (scripts/bench_planner.py).
- Step time: the FLOPs of a step divided by this device's matmul speed at the model's shapes is a
  floor; small models spend most of their time elsewhere (elementwise kernels, memory traffic,
  operator overhead), so the estimate times one forward and backward pass of a real micro-batch
  here, multiplies by the accumulation steps and adds a timed clip and optimizer step.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.config import ModelConfig, Recipe
from llmkit.errors import LlmkitError
from llmkit.layers.cross_entropy import cross_entropy

# Dense bf16/fp16 tensor-core peaks (FLOP/s), from the vendors' data sheets, for MFU.
PEAK_FLOPS_16BIT = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12,
                    "L40S": 362e12, "B200": 2250e12}


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's peak for this precision, when known (CUDA data-center GPUs, 16-bit)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS_16BIT.items() if key in name), None)


def _meta_model(config: ModelConfig) -> nn.Module:
    from llmkit.models import meta_model

    return meta_model(config)


def parameters_of(config: ModelConfig) -> int:
    """Parameters of the model a config describes, without building it: counted on meta-device
    models of one and two blocks and extrapolated (the count is linear in n_layer), so that a
    typo like n_layer=100000000 is measured in a millisecond instead of built for hours."""
    one, two = (sum(p.numel() for p in _meta_model(dataclasses.replace(config, n_layer=n)).parameters())
                for n in (1, 2))
    return one + (config.n_layer - 1) * (two - one)


def check_fits(recipe: Recipe, device: torch.device) -> None:
    """Refuse a model whose weights, gradients and AdamW moments (16 bytes a parameter; 4 for a
    frozen one) cannot fit this device's free memory, before anything is built. Before the data
    is ready the vocabulary may be unknown: counted as one token, the rest must fit already."""
    model = recipe.model if recipe.model.vocab_size else dataclasses.replace(recipe.model, vocab_size=1)
    params = parameters_of(model)
    needed = params * (16 if recipe.train.finetune == "all" else 4)
    available = device_memory(device)
    if available is not None and needed > available:
        raise LlmkitError(f"the model has {params:,} parameters: about {_size(needed)} for its weights and "
                          f"training state, and {device} has {_size(available)} free",
                          hint="make it smaller: model.n_layer, model.n_embd, model.vocab_size, model.block_size")


def matmul_parameters(model: nn.Module) -> int:
    """Weights that multiply activations: every Linear (a tied head counts: it is a matmul), but
    not a classifier base's language-model head, which the classifier never runs."""
    unused = {id(model.base.lm_head)} if hasattr(model, "base") and hasattr(model.base, "lm_head") else set()
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in unused)


def flops_per_token(config: ModelConfig) -> float:
    """6 x matmul weights (forward 2, backward 4), plus the attention scores and weighted sums:
    12 T C per attention module (self or cross; the one-layer rungs have one, whatever n_layer)."""
    from llmkit.layers.attention import Attention

    model = _meta_model(config)
    attentions = sum(isinstance(m, Attention) for m in model.modules())
    return 6 * matmul_parameters(model) + 12 * attentions * config.block_size * config.n_embd


class _FusedAttentionShapes(torch.autograd.Function):
    """Stands in for a fused attention kernel on the meta device: the output's shape, and what
    flash attention saves for backward (q, k, v, the output, a log-sum-exp per query row)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def apply_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        return _FusedAttentionShapes.apply(q, k, v)


@dataclass
class ForwardProfile:
    activation_bytes: int  # what autograd saves for backward (fp32)
    ops: int  # PyTorch operator calls in one forward pass


def profile_forward(config: ModelConfig, batch_size: int, grad_checkpointing: bool = False,
                    precision: str = "fp32") -> ForwardProfile:
    """Run one forward pass of `batch_size` windows on fake tensors (shapes and dtypes, no data,
    no memory), under the precision's autocast: count every tensor autograd saves for backward
    once (parameters excluded), and every operator call."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    from llmkit.models import build_model
    from llmkit.training import precision as mixed

    class CountOps(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountOps.calls += 1
            return func(*args, **(kwargs or {}))

    saved: dict[int, int] = {}
    # Fake CPU tensors rather than the meta device, so that autocast applies as it will in the run.
    # PyTorch would pick its math attention here, which keeps the (T, T) weights; the fused
    # kernels used for real keep only the output and a log-sum-exp per row.
    fused = mock.patch.object(F, "scaled_dot_product_attention", _FusedAttentionShapes.apply_sdpa)
    with FakeTensorMode():
        model = build_model(config)
        model.grad_checkpointing = grad_checkpointing
        params = {p.untyped_storage()._cdata for p in model.parameters()}

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = t.untyped_storage()._cdata
            if key not in params:
                saved[key] = t.untyped_storage().nbytes()
            return t

        ids = torch.zeros(batch_size, config.block_size, dtype=torch.long)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), CountOps(), fused, \
                mixed.autocast(precision, torch.device("cpu")):
            logits = model(ids, ids) if config.name == "seq2seq" else model(ids)
            cross_entropy(logits, ids)
    return ForwardProfile(sum(saved.values()), CountOps.calls)


def matmul_flops(device: torch.device, rows: int, n_embd: int, precision: str) -> float:
    """FLOP/s of (rows x C) @ (C x 4C), the MLP's shape, on this device: the best of 5 runs
    (at most 8,192 rows: enough to reach full speed, small enough to fit anywhere)."""
    rows = min(rows, 8192)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a = torch.randn(rows, n_embd, device=device, dtype=dtype)
    b = torch.randn(n_embd, 4 * n_embd, device=device, dtype=dtype)
    return 2 * rows * n_embd * 4 * n_embd / _timed(lambda: a @ b, device)


def _timed(fn, device: torch.device, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def time_step(recipe: Recipe, device: torch.device, micro: int, accum: int) -> float:
    """Seconds for one training step, timed on this device with the recipe's model, precision and
    optimizer: `accum` times a forward and backward pass of a micro-batch of random ids, then
    gradient clipping and the optimizer update (each the fastest of 3, after one warm-up)."""
    from llmkit.models import build_model
    from llmkit.training import precision
    from llmkit.training.optimizer import make_optimizer

    m = recipe.model
    model = build_model(m).to(device)
    model.grad_checkpointing = recipe.train.grad_checkpointing
    optimizers = make_optimizer(model, recipe.train, device)
    ids = torch.randint(m.vocab_size, (micro, m.block_size), device=device)

    def forward_backward() -> None:
        with precision.autocast(recipe.train.precision, device):
            logits = model(ids, ids) if m.name == "seq2seq" else model(ids)
            loss = cross_entropy(logits, ids)
        loss.backward()

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for optimizer in optimizers:
            optimizer.step()  # the gradients stay: the next timed update finds them again

    forward_backward()
    update()  # the first step allocates the optimizers' state
    return accum * _timed(forward_backward, device, repeats=3) + _timed(update, device, repeats=3)


def device_memory(device: torch.device) -> int | None:
    """Bytes free for a new run: free GPU memory, or the RAM the kernel reports available."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Plan:
    parameters: int
    flops_per_token: float
    tokens_per_step: int
    micro_batch: int  # sequences per forward pass
    weights: int  # bytes
    gradients: int
    optimizer: int
    activations: int  # saved for backward
    working: int  # backward's working set: one block's worth of activations
    floor_seconds: float  # the step's FLOPs at this device's matmul speed: a lower bound
    step_seconds: float | None  # a full step timed here (None when it cannot fit)
    available: int | None

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.working

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available


def plan(recipe: Recipe, device: torch.device, world: int = 1) -> Plan:
    from llmkit.models import count_parameters

    m, t = recipe.model, recipe.train
    params = count_parameters(_meta_model(m))
    per_process = t.batch_size // world
    micro = min(t.micro_batch_size or per_process, per_process)
    profile = profile_forward(m, micro, t.grad_checkpointing, t.precision)
    activations = profile.activation_bytes
    # One block's activations, as a block saves them without checkpointing: backward's working
    # set; with checkpointing, the block recomputed for backward holds that much again.
    plain = profile_forward(m, micro, False, t.precision) if t.grad_checkpointing else profile
    deeper = dataclasses.replace(m, n_layer=m.n_layer + 1)
    block = profile_forward(deeper, micro, False, t.precision).activation_bytes - plain.activation_bytes
    working = 2 * block if t.grad_checkpointing else block
    shard = world if t.distributed == "fsdp" else 1  # FSDP splits weights, gradients, optimizer
    # AdamW keeps two moments a parameter; Muon one momentum buffer for the matrices it takes.
    from llmkit.training.optimizer import muon_parameters

    muon = sum(p.numel() for p in muon_parameters(_meta_model(m))) if t.optimizer == "muon" else 0
    accum = per_process // micro
    per_token = flops_per_token(m)
    floor = per_token * per_process * m.block_size / matmul_flops(device, micro * m.block_size, m.n_embd,
                                                                  t.precision)
    result = Plan(params, per_token, t.batch_size * m.block_size, micro, 4 * params // shard,
                  4 * params // shard, (8 * params - 4 * muon) // shard, activations, working, floor, None,
                  device_memory(device))
    if result.fits:
        # The FLOP count gives a floor; what small models actually take is dominated by everything
        # else (elementwise kernels, memory traffic, per-operator overhead), so time the real thing.
        result.step_seconds = time_step(recipe, device, micro, accum)
    return result


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n}"


def describe_plan(p: Plan, recipe: Recipe, device: torch.device) -> list[str]:
    t = recipe.train
    lines = [
        f"parameters        {p.parameters:,}",
        f"FLOPs per token   {p.flops_per_token / 1e6:,.2f} M (training: forward and backward)",
        f"tokens per step   {p.tokens_per_step:,} ({t.batch_size} x {recipe.model.block_size}; "
        f"micro-batch {p.micro_batch})",
        f"memory            weights {_size(p.weights)}, gradients {_size(p.gradients)}, "
        f"{'AdamW' if t.optimizer == 'adamw' else 'Muon + AdamW'} {_size(p.optimizer)}, activations {_size(p.activations)} + {_size(p.working)} for "
        f"backward -> {_size(p.total)}",
        f"device            {device}, {_size(p.available) + ' available' if p.available else 'free memory unknown'}",
        f"compute floor     {p.floor_seconds * 1000:,.1f} ms per step (the FLOPs at this device's matmul speed)",
    ]
    if p.step_seconds is not None:
        # A time-bounded run (train.max_time) takes as many steps as fit its budget, max_steps at most.
        steps = t.max_steps if t.max_time is None else min(t.max_steps, int(t.max_time / p.step_seconds))
        length = (f"{t.max_steps:,} steps: about {p.step_seconds * t.max_steps / 60:,.1f} min" if t.max_time is None
                  else f"time-bounded, {t.max_time:g} s: about {steps:,} steps"
                  + (" (max_steps)" if steps == t.max_steps else ""))
        lines.append(f"step time         about {p.step_seconds * 1000:,.0f} ms, forward, backward and "
                     f"{'AdamW' if t.optimizer == 'adamw' else 'Muon'} timed here "
                     f"({p.tokens_per_step / p.step_seconds:,.0f} tokens/s); {length}")
    return lines


def dry_run(recipe: Recipe) -> int:
    """`llmkit train RECIPE --dry-run`: prepare the data (for the vocabulary), print the plan,
    warn when it will not fit; the exit code is 0, or 1 when it will not fit."""
    import os

    from llmkit.config import recipe_with
    from llmkit.console import say
    from llmkit.device import resolve_device
    from llmkit.loading import read_checkpoint
    from llmkit.tasks import make_task

    device = resolve_device(recipe.train.device)
    check_fits(recipe, device)  # before the data: a size typo should not wait for a download
    if recipe.model.vocab_size is None:
        # A finetuning recipe's tokenizer is its base's (read without building the base).
        tokenizer = read_checkpoint(recipe.train.init_from).tokenizer if recipe.train.init_from else None
        recipe = recipe_with(recipe, model={"vocab_size": make_task(recipe, tokenizer).vocab_size})
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_fits(recipe, device)
    result = plan(recipe, device, world)
    print(f"plan for {recipe.name}: {recipe.model.name}, {recipe.train.precision}"
          + (f", {world} processes ({recipe.train.distributed})" if world > 1 else ""))
    for line in describe_plan(result, recipe, device):
        print("  " + line)
    if not result.fits:
        say(f"warning: about {_size(result.total)} needed but {_size(result.available)} "
            f"available on {device}: lower train.micro_batch_size (gradient accumulation keeps the "
            "batch), set train.grad_checkpointing=true, use bf16, or shard with FSDP")
        return 1
    return 0
