"""The training loop.

Each step asks the task (llmkit/tasks/) for a batch and its loss — next-token prediction for
decoders, masked tokens for the encoder, translation for seq2seq — backpropagates (in micro-batches
when the batch is too big for one pass, on several processes under torchrun), clips the global
gradient norm and steps the optimizers (AdamW, or Muon and AdamW: llmkit/training/optimizer.py) at
the scheduled learning rate. Every `eval_interval` steps it estimates train and val loss and writes
latest.pt (and best.pt when val improves), atomically. The run ends at `max_steps`, or when its
time budget `max_time` (seconds of training, the clock stopped while evaluating) is spent.
Ctrl-C (or SIGTERM) lets the current step finish, writes latest.pt and exits; `llmkit train
RECIPE --resume` continues from it exactly: weights, optimizer state, step, and every random
number generator come back (a time-bounded run continues its budget, but its schedule follows
the clock, so it does not repeat bit for bit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel

from llmkit.checkpoint import Checkpoint, RunState
from llmkit.config import Recipe, TrainConfig, recipe_to_yaml, recipe_with
from llmkit.console import console, say
from llmkit.data.tokenizer import save_tokenizer
from llmkit.device import resolve_device
from llmkit.errors import RUN_FAILED, LlmkitError
from llmkit.files import DirectoryLock, atomic_write_text, clean_stale, make_dir
from llmkit.loading import LoadedModel, load_model
from llmkit.models import build_model, count_parameters, describe
from llmkit.models.transfer import choose_trainable, load_base
from llmkit.plots.curves import plot_losses
from llmkit.run import BEST, LATEST, LOSS_PLOT, METRICS, RECIPE, TOKENIZER
from llmkit.tasks import Task, check_tokenizer, estimate, make_task, to_device
from llmkit.training import precision
from llmkit.training.distributed import Distributed, device_for, from_environment, shutdown, wrap
from llmkit.training.metrics import MetricsLog
from llmkit.training.optimizer import check_distributed, make_optimizer, restore_settings, set_learning_rates, settings
from llmkit.training.planner import check_fits, flops_per_token, peak_flops
from llmkit.training.schedule import learning_rate

INTERRUPTED = 130  # the shell's exit code for a run stopped by Ctrl-C


def _rng_states(sampler: torch.Generator) -> dict:
    numpy_state = np.random.get_state()
    states = {
        "sampler": sampler.get_state(),
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng(states: dict, sampler: torch.Generator) -> None:
    sampler.set_state(states["sampler"])
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class _StopRequest:
    """The first Ctrl-C / SIGTERM / SIGHUP (the terminal closed) asks the loop to stop after the
    current step, and the run saves; a second Ctrl-C stops at once."""

    def __enter__(self) -> _StopRequest:
        self.requested, self._previous = False, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, recipe: Recipe, task: Task, device: torch.device, setup: Distributed = Distributed(),
                 base: LoadedModel | None = None):
        """`base`: the model to finetune from (train.init_from), already loaded; None when
        training from scratch, or when resuming (the run's own latest.pt holds the weights)."""
        self.recipe, self.task, self.device, self.setup = recipe, task, device, setup
        cfg = self.train_cfg = recipe.train
        self.run_dir = recipe.run_dir
        precision.check(cfg.precision, device)
        self.accum_steps = accumulation_steps(cfg, setup.world)
        task.describe()  # checks that both splits can be read, before any model is built
        torch.manual_seed(cfg.seed)
        self.raw_model = build_model(recipe.model).to(device)  # the bare module, for sampling
        if base is not None:
            check_tokenizer(task, base.checkpoint)
            load_base(self.raw_model, base.model, str(base.path))
        if cfg.init_from is not None:
            choose_trainable(self.raw_model, cfg)
        self.raw_model.grad_checkpointing = cfg.grad_checkpointing
        model = wrap(self.raw_model, setup, device)  # DDP or FSDP under torchrun
        self.model = torch.compile(model) if cfg.compile else model
        self.optimizers = make_optimizer(self.model, cfg, device)
        self.settings = settings(self.optimizers)  # the recipe's, put back over a resumed checkpoint's
        self.lr = learning_rate(0, cfg)  # AdamW's rate in the last update, for the log
        self.scaler = precision.grad_scaler(cfg.precision, device)
        self.sampler = torch.Generator().manual_seed(cfg.seed)  # batch positions
        self.state = RunState()
        self.metrics = MetricsLog(self.run_dir / METRICS, tensorboard=setup.is_main) if setup.is_main else None
        peak = peak_flops(device, cfg.precision)
        self.flops_per_s_at_peak = peak  # None when this device's peak is not known
        self.flops_per_token = flops_per_token(recipe.model) if peak else None

    def autocast(self):
        return precision.autocast(self.train_cfg.precision, self.device)

    # --- checkpoints --------------------------------------------------------------------------

    def _checkpoint(self, full: bool) -> Checkpoint:
        """Every process calls this (with FSDP, gathering the full weights is a collective);
        names come out free of wrapper prefixes (`module.`, `_orig_mod.`)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=self.setup.enabled)
        cfg = self.train_cfg
        resume = None
        if full:
            resume = {"optimizer": get_optimizer_state_dict(self.model, self.optimizers, options=options),
                      "scaler": self.scaler.state_dict(), "rng": _rng_states(self.sampler)}
            if hasattr(self.task, "state_dict"):
                resume["task"] = self.task.state_dict()
        origin = ({"kind": "finetuned", "from": cfg.init_from, "mode": cfg.finetune} if cfg.init_from is not None
                  else {"kind": "trained", "from": None})
        return Checkpoint(self.recipe.model, get_model_state_dict(self.model, options=options), self.task.tokenizer,
                          self.recipe, self.task.data_info,
                          # Which adapters the weights include, so a LoRA run loads without its recipe.
                          cfg.lora if cfg.finetune == "lora" else None,
                          origin, dataclasses.replace(self.state), resume)

    def save(self, best: bool = False) -> None:
        if best:
            checkpoint = self._checkpoint(full=False)
            if self.setup.is_main:
                checkpoint.save(self.run_dir / BEST)
        checkpoint = self._checkpoint(full=True)
        if self.setup.is_main:
            checkpoint.save(self.run_dir / LATEST)

    def resume(self, checkpoint: Checkpoint) -> None:
        """Continue from the run's latest.pt: weights, optimizer, scaler, RNGs, task state, step."""
        check_tokenizer(self.task, checkpoint)
        saved, wanted = dataclasses.asdict(checkpoint.model_config), dataclasses.asdict(self.recipe.model)
        changed = [f"model.{k}: {saved.get(k)!r} -> {wanted[k]!r}" for k in wanted if saved.get(k) != wanted[k]]
        if changed:
            raise LlmkitError(f"the recipe's model differs from the checkpoint {checkpoint.path}: {'; '.join(changed)}",
                              hint="a run resumes with the model it was saved with; undo the change "
                              "or start a new run with --overwrite or out_dir=...")
        if checkpoint.resume is None:
            raise LlmkitError(f"{checkpoint.path} holds no optimizer state to resume from")
        saved_optimizer = checkpoint.recipe.train.optimizer if checkpoint.recipe is not None else "adamw"
        if saved_optimizer != self.train_cfg.optimizer:
            raise LlmkitError(f"{checkpoint.path} was trained with train.optimizer={saved_optimizer}, and the "
                              f"recipe now asks for {self.train_cfg.optimizer}: their states do not carry over",
                              hint=f"resume with train.optimizer={saved_optimizer}, or start a new run "
                              "with --overwrite or out_dir=...")
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, checkpoint.weights, options=options)
        set_optimizer_state_dict(self.model, self.optimizers, checkpoint.resume["optimizer"], options=options)
        restore_settings(self.optimizers, self.settings)
        self.scaler.load_state_dict(checkpoint.resume["scaler"])
        _restore_rng(checkpoint.resume["rng"], self.sampler)
        if hasattr(self.task, "load_state_dict"):
            self.task.load_state_dict(checkpoint.resume.get("task", {}))
        self.state = dataclasses.replace(checkpoint.state)
        if self.metrics is not None:
            self.metrics.keep_until(self.state.step)

    # --- the loop -----------------------------------------------------------------------------

    def evaluate(self) -> dict:
        cfg = self.train_cfg
        args = (self.task, self.model)
        kwargs = {"setup": self.setup, "autocast": self.autocast()}
        losses = {
            "train_loss": estimate(*args, "train", cfg.batch_size, cfg.eval_steps, self.device, cfg.seed + 1, **kwargs),
            "val_loss": estimate(*args, "val", cfg.batch_size, cfg.eval_steps, self.device, cfg.seed + 2, **kwargs),
        }
        return {"kind": "eval", "step": self.state.step, **losses, **self._progress()}

    def _progress(self) -> dict:
        """Where the run is, for every record: tokens seen, seconds of training and of wall time."""
        return {"tokens": self.state.tokens, "train_s": round(self.state.train_s, 2), "elapsed_s": round(self.state.elapsed_s, 2)}

    def _no_sync(self, last: bool):
        """DDP averages gradients during every backward; between the micro-batches of one step
        that work is wasted, so it is skipped until the last."""
        ddp = getattr(self.model, "_orig_mod", self.model)
        return ddp.no_sync() if not last and isinstance(ddp, DistributedDataParallel) else contextlib.nullcontext()

    def train_step(self) -> tuple[float, float, int]:
        """One optimizer step: (mean loss, gradient norm before clipping, real input tokens of
        the step over all processes, padding not counted)."""
        cfg = self.train_cfg
        self.lr = learning_rate(self.state.step, cfg, self.state.train_s)
        set_learning_rates(self.optimizers, self.lr / cfg.lr)
        # The same global batch on every process (same sampler seed); each keeps its own rows and
        # splits them into micro-batches.
        rows = self.setup.rows(self.task.batch("train", cfg.batch_size, self.sampler, training=True))
        micro_batches = list(zip(*(t.chunk(self.accum_steps) for t in rows)))
        counts = torch.tensor([sum(self.task.count(m) for m in micro_batches), self.task.tokens(rows)], device=self.device)
        targets, tokens = self.setup.sum(counts)
        # Each micro-batch contributes its summed loss / all targets of the step, so the gradient
        # is exactly the big batch's mean-loss gradient; DDP and FSDP average over processes,
        # hence the factor `world`.
        scale = self.setup.world / targets
        summed = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, part in enumerate(micro_batches):
            with self._no_sync(last=i == len(micro_batches) - 1), self.autocast():
                loss = self.task.loss(self.model, to_device(part, self.device))
            self.scaler.scale(loss * scale).backward()
            summed += loss.detach().double()
        loss_value = (self.setup.sum(summed) / targets).item()
        if not math.isfinite(loss_value):
            saved = (f"{self.run_dir / LATEST} still holds the last good state (from the last evaluation); "
                     if (self.run_dir / LATEST).is_file() else "no checkpoint was written yet; ")
            raise LlmkitError(
                f"the loss became {loss_value} at step {self.state.step + 1}: training diverged",
                hint=f"{saved}lower train.lr or raise train.warmup_steps, then "
                + ("--resume" if (self.run_dir / LATEST).is_file() else "start again"),
                exit_code=RUN_FAILED,
            )
        for optimizer in self.optimizers:
            self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).item()
        for optimizer in self.optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens += int(tokens)
        return loss_value, grad_norm, int(tokens)

    def _agreed(self, requested: bool, train_s: float) -> tuple[bool, float]:
        """Under torchrun every process must stop after the same step (a signal reaches them at
        slightly different times) and schedule by the same clock (or their weights would part),
        so both are shared: a stop any process asked for, and the processes' mean training time."""
        if not self.setup.enabled:
            return requested, train_s
        shared = self.setup.sum(torch.tensor([float(requested), train_s], dtype=torch.float64, device=self.device))
        return bool(shared[0].item()), shared[1].item() / self.setup.world

    def _out_of_time(self) -> bool:
        return self.train_cfg.max_time is not None and self.state.train_s >= self.train_cfg.max_time

    def _log(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(record)

    def fit(self) -> None:
        cfg = self.train_cfg
        # With a time budget the bar counts seconds of training, else steps.
        timed = cfg.max_time is not None
        columns = (TextColumn("[bold]train" + (" (s)" if timed else "")), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:,.0f} tok/s"))
        started, elapsed_before = time.perf_counter(), self.state.elapsed_s
        stopping, out_of_time = False, self._out_of_time()

        def bar() -> dict:
            return {"completed": int(self.state.train_s) if timed else self.state.step}

        with Progress(*columns, console=console, disable=not self.setup.is_main) as progress, _StopRequest() as stop:
            task = progress.add_task("train", total=max(1, int(cfg.max_time)) if timed else cfg.max_steps, **bar(),
                                     loss=math.nan, tps=0)
            # tokens/s is measured over the steps since the last log line or evaluation; the
            # training clock (state.train_s, what max_time spends) runs from `clock`, and is
            # stopped while evaluating and saving.
            window_start, window_tokens = time.perf_counter(), 0
            clock = window_start
            while self.state.step < cfg.max_steps and not stopping and not out_of_time:
                loss, grad_norm, tokens = self.train_step()
                now = time.perf_counter()
                stopping, self.state.train_s = self._agreed(stop.requested, self.state.train_s + now - clock)
                clock = now
                out_of_time = self._out_of_time()
                self.state.elapsed_s = elapsed_before + now - started
                window_tokens += tokens
                tokens_per_s = window_tokens / (now - window_start)
                progress.update(task, **bar(), loss=loss, tps=tokens_per_s)
                step = self.state.step
                if step % cfg.log_interval == 0 or out_of_time:
                    record = {"kind": "train", "step": step, "loss": loss, "lr": self.lr, "grad_norm": grad_norm,
                              "tokens_per_s": round(tokens_per_s, 1), **self._progress()}
                    if self.flops_per_token:
                        record["mfu"] = round(tokens_per_s * self.flops_per_token / self.flops_per_s_at_peak, 4)
                    self._log(record)
                    window_start, window_tokens = time.perf_counter(), 0
                if step % cfg.eval_interval == 0 or step == cfg.max_steps or out_of_time:
                    record = self.evaluate()
                    self._log(record)
                    best = record["val_loss"] < self.state.best_val_loss
                    self.state.best_val_loss = min(self.state.best_val_loss, record["val_loss"])
                    self.save(best=best)
                    if self.metrics is not None:
                        plot_losses(self.metrics.read(), self.run_dir / LOSS_PLOT, self.recipe.name)
                    if self.setup.is_main:
                        progress.console.print(
                            f"step {step:>6}: train loss {record['train_loss']:.4f}, val loss "
                            f"{record['val_loss']:.4f}{'  (best)' if best else ''}  [{record['elapsed_s']:.0f} s]",
                            markup=False)
                    window_start, window_tokens = time.perf_counter(), 0
                    clock = window_start
        if stopping and self.state.step < cfg.max_steps and not out_of_time:
            self.save()
            raise LlmkitError(f"stopped at step {self.state.step}; {self.run_dir / LATEST} is saved",
                              hint="continue with the same command and --resume", exit_code=INTERRUPTED)

    def sample(self, tokens: int) -> str:
        generator = torch.Generator(self.device).manual_seed(self.train_cfg.seed)
        self.raw_model.eval()
        text = self.task.sample(self.raw_model, self.device, generator, tokens)
        self.raw_model.train()
        return text


def accumulation_steps(cfg: TrainConfig, world: int) -> int:
    """Micro-batches per process per step: batch_size = micro_batch_size x steps x processes."""
    if cfg.batch_size % world:
        raise LlmkitError(f"train.batch_size={cfg.batch_size} does not split over {world} processes",
                          hint=f"use a multiple of {world}")
    per_process = cfg.batch_size // world
    micro = min(cfg.micro_batch_size or per_process, per_process)
    if per_process % micro:
        raise LlmkitError(f"each of {world} processes takes {per_process} sequences per step, which "
                          f"train.micro_batch_size={micro} does not divide")
    return per_process // micro


def _check_run_dir(recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a directory that holds a run, unless told to resume or overwrite."""
    run_dir, latest = recipe.run_dir, recipe.run_dir / LATEST
    if resume and overwrite:
        raise LlmkitError("--resume continues a run and --overwrite starts it again: give one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise LlmkitError(f"the run directory {run_dir} is a file", hint=f"choose another: out_dir=runs/{recipe.name}_2")
    if resume and not latest.is_file():
        raise LlmkitError(f"nothing to resume: {latest} does not exist",
                          hint="run the same command without --resume to start training")
    if latest.is_file() and not resume and not overwrite:
        raise LlmkitError(f"{run_dir} already holds a run ({latest.name})",
                          hint="add --resume to continue it, --overwrite to start again, "
                          f"or choose another directory: out_dir=runs/{recipe.name}_2")


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False, base: LoadedModel | None = None) -> Path:
    """Run (or resume) the training a recipe describes; returns the run directory. `base`: the
    model train.init_from names, when the caller has loaded it already. Under torchrun, every
    process calls this; rank 0 alone prepares data, writes files and prints."""
    setup = from_environment(recipe.train.device, recipe.train.distributed)
    console.quiet = not setup.is_main
    try:
        run_dir = _train(recipe, resume, overwrite, setup, base)
        # Leave together: rank 0 still writes the sample while the others would otherwise tear
        # down their connections to it (one gloo rank aborted at shutdown in ~1 of 5 suite runs).
        setup.barrier()
        return run_dir
    finally:
        console.quiet = False
        shutdown(setup)


def _train(recipe: Recipe, resume: bool, overwrite: bool, setup: Distributed, base: LoadedModel | None) -> Path:
    device = device_for(setup, resolve_device(recipe.train.device))
    _check_run_dir(recipe, resume, overwrite)
    check_distributed(recipe.train, setup)
    check_fits(recipe, device)  # before the data: a size typo should not wait for a download
    # One process writes a run at a time (rank 0 under torchrun); kill -9 debris goes first.
    with DirectoryLock(recipe.run_dir, "run") if setup.is_main else contextlib.nullcontext():
        if setup.is_main:
            clean_stale(recipe.run_dir)
        return _train_locked(recipe, resume, setup, base, device)


def _train_locked(recipe: Recipe, resume: bool, setup: Distributed, base: LoadedModel | None,
                  device: torch.device) -> Path:
    # What the model starts from is read once: the run's own latest.pt when resuming (so a
    # finetuned run resumes with its base deleted), else the base to finetune, if any.
    latest = Checkpoint.load(recipe.run_dir / LATEST) if resume else None
    if latest is None and base is None and recipe.train.init_from is not None:
        base = load_model(recipe.train.init_from, merge=True)  # a LoRA base counts with its adapters folded in
    tokenizer = latest.tokenizer if latest is not None else base.tokenizer if base is not None else None
    if not setup.is_main:
        setup.barrier()  # rank 0 downloads and tokenizes first
    task = make_task(recipe, tokenizer)
    if setup.is_main:
        setup.barrier()
    vocab_size = recipe.model.vocab_size or task.vocab_size
    if vocab_size < task.vocab_size:
        raise LlmkitError(f"model.vocab_size={vocab_size} is smaller than the task's {task.vocab_size} "
                          "tokens (the tokenizer's, plus any special tokens)")
    recipe = recipe_with(recipe, model={"vocab_size": vocab_size})
    check_fits(recipe, device)
    trainer = Trainer(recipe, task, device, setup, base if latest is None else None)
    if latest is not None:
        trainer.resume(latest)
    elif setup.is_main:
        # Only now, with data and model in hand, is an overwritten run's history dropped.
        for name in (BEST, METRICS, LOSS_PLOT):
            (recipe.run_dir / name).unlink(missing_ok=True)
    if setup.is_main:
        make_dir(recipe.run_dir)
        atomic_write_text(recipe.run_dir / RECIPE, recipe_to_yaml(recipe))
        save_tokenizer(task.tokenizer, recipe.run_dir / TOKENIZER)

    m, t = recipe.model, recipe.train
    total, trainable = sum(p.numel() for p in trainer.raw_model.parameters()), count_parameters(trainer.raw_model)
    frozen = f", {trainable:,} trainable ({trainable / total:.2%}, {t.finetune})" if trainable < total else ""
    say(f"model {m.name}: {total:,} parameters{frozen} ({describe(m)})")
    say(task.describe())
    micro = f" ({trainer.accum_steps} micro-batches)" if trainer.accum_steps > 1 else ""
    procs = f" over {setup.world} processes ({setup.kind})" if setup.enabled else ""
    length = f"{t.max_steps} steps" if t.max_time is None else f"{t.max_time:g} s (at most {t.max_steps} steps)"
    at = f"resuming at step {trainer.state.step} ({trainer.state.train_s:.0f} s) of" if resume else "training for"
    say(f"{at} {length} of {t.batch_size} sequences of at most {m.block_size} tokens{micro} on {device}{procs}, "
        f"{t.precision}, {t.optimizer}; run directory {recipe.run_dir}")
    trainer.fit()
    state = trainer.state
    say(f"done: {state.step} steps, {state.tokens:,} tokens, in {state.train_s:.0f} s of training "
        f"({state.elapsed_s:.0f} s in all); best val loss {state.best_val_loss:.4f}")
    # Under FSDP no single process holds the whole model, so there is no sample.
    if t.sample_tokens and setup.is_main and not (setup.enabled and setup.kind == "fsdp"):
        console.rule("sample", style="dim")
        say(trainer.sample(t.sample_tokens))
        console.rule(style="dim")
        more = f"more: llmkit generate {recipe.run_dir}    " if task.generates else ""
        say(f"{more}measure: llmkit eval {recipe.run_dir}")
    return recipe.run_dir
