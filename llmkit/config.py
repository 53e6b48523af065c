"""Recipes: typed, frozen dataclasses loaded from YAML, with dotted command-line overrides.

A recipe has four parts (`name`/`out_dir`, `data`, `model`, `train`). Loading one checks every key
against these dataclasses and reports all problems at once: unknown keys (with a suggestion),
values of the wrong type, and values out of range. Overrides use the same paths as the YAML:

    llmkit train recipes/shakespeare_char.yaml train.max_steps=100 model.n_layer=2
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from llmkit.errors import LlmkitError

INT_LIMIT = 2**63 - 1  # the largest integer a recipe key takes (what torch and numpy hold)


def at_most(problems: list[str], config: Any, limits: dict[str, float]) -> None:
    """A problem for each field above its upper bound: every number has a finite range."""
    for name, limit in limits.items():
        value = getattr(config, name)
        if value is not None and value > limit:
            problems.append(f"{name}: must be at most {limit:,}, got {value:,}")


class ConfigError(LlmkitError):
    """One or more problems with a recipe, each a line `path: what is wrong`."""

    def __init__(self, problems: list[str], where: str = "recipe", hint: str | None = None):
        self.problems = list(problems)
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{where} has {count}:\n{lines}", hint)


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


@dataclass(frozen=True)
class DataConfig:
    # A dataset name from `llmkit download` (e.g. shakespeare), the path of a UTF-8 text file, or
    # `numbers`: integer -> English words pairs generated on the fly (for the seq2seq model).
    source: str = "shakespeare"
    # char: one token per character; bpe: byte-level BPE trained on the train split (vocab_size
    # tokens); gpt2: GPT-2's own BPE (50,257 tokens); words: the numbers task's fixed vocabulary.
    tokenizer: Literal["char", "bpe", "gpt2", "words"] = "char"
    vocab_size: int = 8192  # for bpe: 256 bytes + <|endoftext|> + merges
    # Train on an existing shard directory (what `llmkit tokenize` printed) instead of `source`.
    tokens: str | None = None
    # The last `val_fraction` of the text is the validation split, as in nanoGPT.
    val_fraction: float = 0.1
    # Raw files go to <root>/raw/<name>/, token shards to <root>/tokens/<name>-<tokenizer>/.
    root: str = "data"
    # Most ids per shard file; a split past it gets several files (train_000.bin, train_001.bin, ...).
    shard_tokens: int = 250_000_000
    # How training windows are drawn: random (uniform offsets, nanoGPT) or epoch (every window of
    # block_size + 1 ids once, in a random order, before any repeats).
    sampler: Literal["random", "epoch"] = "random"
    # Instruction tuning: how an entry becomes a prompt (llmkit/tasks/prompts.py). alpaca: the
    # Alpaca text format; chat: the model's own chat template; auto: chat if it has one.
    prompt_format: Literal["auto", "alpaca", "chat"] = "auto"
    # Tasks with texts of different lengths (spam, instruct): each training batch is batch_size
    # neighbours in length among batch_size x bucket random examples, so less of it is padding
    # (llmkit/data/batches.py, pick_examples); 1: a plain random batch.
    bucket: int = 1

    def __post_init__(self) -> None:
        problems = []
        if not self.source:
            problems.append("source: must name a dataset or a text file")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction: must be between 0 and 1, got {self.val_fraction}")
        if self.tokenizer == "bpe" and self.vocab_size < 258:
            problems.append(f"vocab_size: a byte-level BPE needs at least 258 tokens (256 bytes, "
                            f"<|endoftext|>, one merge), got {self.vocab_size}")
        if self.shard_tokens < 1:
            problems.append(f"shard_tokens: must be at least 1, got {self.shard_tokens}")
        # A BPE trainer holds every token of the vocabulary in memory: past about a million, more
        # than any model uses (GPT-4o has 200K), it is a typo that would exhaust the machine.
        if self.bucket < 1:
            problems.append(f"bucket: must be at least 1, got {self.bucket}")
        at_most(problems, self, {"vocab_size": 1 << 20, "shard_tokens": 1 << 40, "bucket": 1 << 16})
        if (self.source == "numbers") != (self.tokenizer == "words"):
            problems.append("tokenizer: the numbers source goes with the words tokenizer, and only it "
                            f"(source {self.source!r}, tokenizer {self.tokenizer!r})")
        _raise_if(problems)


# The ladder, in order; each name is a file in llmkit/models/.
DECODERS = ("bigram", "single_head_attention", "multi_head_attention", "single_block_transformer", "gpt")
CLASSIFIER_BASES = ("single_block_transformer", "gpt", "encoder")
MODEL_NAMES = Literal["bigram", "single_head_attention", "multi_head_attention",
                      "single_block_transformer", "gpt", "encoder", "seq2seq"]


# Upper bounds of the sizes: each well past any model llmkit can train or load (Llama 3 405B has
# 126 layers, 16,384 channels, 128 heads); whether a size fits this machine is the planner's call.
MODEL_LIMITS = {"block_size": 1 << 20, "n_layer": 1 << 12, "n_head": 1 << 12, "n_kv_head": 1 << 12,
                "n_embd": 1 << 17, "vocab_size": 1 << 24, "mlp_hidden": 1 << 20, "n_classes": 1 << 16}


@dataclass(frozen=True)
class ModelConfig:
    name: MODEL_NAMES = "gpt"
    block_size: int = 64  # context length T
    n_layer: int = 4  # blocks (the encoder and the decoder of seq2seq have n_layer each)
    n_head: int = 4
    n_kv_head: int | None = None  # key/value heads: n_head (MHA), fewer (GQA), 1 (MQA)
    n_embd: int = 128  # channels C; head dim D = n_embd // n_head
    dropout: float = 0.0
    bias: bool = False  # biases in linear layers and LayerNorms (GPT-2 has them)
    vocab_size: int | None = None  # filled in from the tokenizer when not given
    positions: Literal["learned", "sinusoidal", "rope", "none"] = "learned"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "swiglu", "relu2"] = "gelu"
    mlp_hidden: int | None = None  # the MLP's inner width; 4 * n_embd when not given
    attention: Literal["sdpa", "explicit"] = "sdpa"  # explicit keeps the weights for plots
    qk_norm: bool = False  # RMS-normalise queries and keys per head before the dot product
    tie_embeddings: bool = True  # the output head reuses the token embedding (gpt, encoder, seq2seq)
    rope_base: float = 10000.0
    # Two speedrun switches (modded-nanoGPT): the residual projections (attention and MLP `proj`)
    # start at zero, so every block starts as the identity; and the logits pass through
    # cap * tanh(logits / cap), which bounds them to (-cap, cap) (Gemma 2 uses 30).
    zero_init_proj: bool = False
    logit_softcap: float | None = None
    # A classifier: the model's final hidden state at the last real token (decoders) or averaged
    # over the tokens (encoder) goes through a head to n_classes scores (llmkit/models/classifier.py).
    n_classes: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.n_classes is not None and (self.n_classes < 2 or self.name not in CLASSIFIER_BASES):
            problems.append(f"n_classes: needs at least 2 classes and a model among {', '.join(CLASSIFIER_BASES)} "
                            f"(got {self.n_classes} on {self.name})")
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.n_head >= 1 and self.n_embd % self.n_head:
            problems.append(f"n_embd: {self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            problems.append(f"n_kv_head: must divide n_head={self.n_head}, got {self.n_kv_head}")
        if self.positions == "rope" and self.n_head >= 1 and (self.n_embd // self.n_head) % 2:
            problems.append(f"positions: rope needs an even head dim, got {self.n_embd // self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.vocab_size is not None and self.vocab_size < 1:
            problems.append(f"vocab_size: must be at least 1, got {self.vocab_size}")
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            problems.append(f"mlp_hidden: must be at least 1, got {self.mlp_hidden}")
        if self.zero_init_proj and self.name not in ("gpt", "seq2seq"):
            problems.append(f"zero_init_proj: only gpt and seq2seq draw their own initial weights (got {self.name})")
        if self.logit_softcap is not None and self.name not in ("single_block_transformer", "gpt"):
            problems.append(f"logit_softcap: only the single_block_transformer and gpt heads take it (got {self.name})")
        for name in ("norm_eps", "rope_base") + (("logit_softcap",) if self.logit_softcap is not None else ()):
            if getattr(self, name) <= 0:
                problems.append(f"{name}: must be positive, got {getattr(self, name)}")
        at_most(problems, self, {**MODEL_LIMITS, "norm_eps": 1.0, "rope_base": 1e9, "logit_softcap": 1e4})
        _raise_if(problems)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd


DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters for `train.finetune: lora` (llmkit/layers/lora.py)."""

    rank: int = 8  # r: the adapters' inner width
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # on the adapters' input
    # Which linear layers of each block get adapters, by their path inside the block,
    # comma-separated: attn (q, kv and proj), mlp (fc and proj), or single ones like attn.q.
    modules: str = "attn,mlp"

    def __post_init__(self) -> None:
        problems = []
        if self.rank < 1:
            problems.append(f"rank: must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            problems.append(f"alpha: must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout: must be in [0, 1), got {self.dropout}")
        if not self.modules.strip(", "):
            problems.append("modules: name at least one layer (attn, mlp, attn.q, ...)")
        at_most(problems, self, {"rank": 1 << 16, "alpha": 1e6})
        _raise_if(problems)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 12  # sequences per optimizer step, over all processes and micro-batches
    # Sequences per forward pass on each process; batch_size / (micro_batch_size x processes)
    # micro-batches are accumulated into one step. None: the whole batch at once.
    micro_batch_size: int | None = None
    max_steps: int = 2000
    # A time budget in seconds of training (the clock stops for evaluations and checkpoints): the
    # run ends at the first step past it, or at max_steps if that comes first, and the cosine
    # decay follows the fraction of the budget used. None: no budget, max_steps alone.
    max_time: float | None = None
    lr: float = 1e-3  # peak learning rate, reached after warmup
    min_lr: float = 1e-4  # cosine decay ends here, at max_steps or max_time
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on weight matrices and embeddings, not on biases or norm gains
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    # adamw: AdamW for every weight. muon: torch.optim.Muon (momentum, then the update made
    # orthogonal by Newton-Schulz iterations) for the 2-D matrices inside the transformer blocks,
    # and AdamW (lr, weight_decay, beta1, beta2) for the rest: embeddings, head, norms, biases.
    optimizer: Literal["adamw", "muon"] = "adamw"
    muon_lr: float = 0.02  # Muon's peak rate; the schedule scales it by the same factor as lr
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    muon_weight_decay: float = 0.0  # decoupled, times the rate (none, as in the speedruns)
    # Muon's update size per matrix shape (out x in): original, Keller Jordan's sqrt(max(1, out/in));
    # match_rms_adamw, Moonshot's 0.2 sqrt(max(out, in)), an update as large as AdamW's, so that
    # AdamW's lr and weight decay carry over.
    muon_lr_adjust: Literal["original", "match_rms_adamw"] = "original"
    eval_interval: int = 250  # steps between evaluations and checkpoints
    eval_steps: int = 20  # batches per split in each periodic evaluation
    log_interval: int = 10  # steps between lines in metrics.jsonl
    sample_tokens: int = 200  # length of the sample printed when training ends; 0 for none
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16: autocast; fp16 adds loss scaling
    compile: bool = False  # torch.compile the model (slow first step, faster after, on GPUs)
    grad_checkpointing: bool = False  # recompute block activations in backward: less memory, ~30% more time
    # Under torchrun: ddp replicates the model on every process; fsdp shards weights, gradients
    # and optimizer state across them (for models that do not fit one device).
    distributed: Literal["ddp", "fsdp"] = "ddp"
    # Start from the weights of this run directory or checkpoint, or of a Hugging Face GPT-2
    # directory (finetuning); a classifier takes them into its base model. `finetune`: train every
    # weight; only the last block, the final norm and a classifier's head; or LoRA adapters (and
    # a classifier's head), everything else frozen.
    init_from: str | None = None
    finetune: Literal["all", "last_block", "lora"] = "all"
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size <= self.batch_size:
            problems.append(f"micro_batch_size: must be between 1 and batch_size={self.batch_size}, "
                            f"got {self.micro_batch_size}")
        elif self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            problems.append(f"micro_batch_size: {self.micro_batch_size} does not divide batch_size={self.batch_size}")
        for name in ("batch_size", "max_steps", "eval_interval", "eval_steps", "log_interval"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "sample_tokens", "min_lr", "muon_weight_decay"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must not be negative, got {getattr(self, name)}")
        if self.lr <= 0:
            problems.append(f"lr: must be positive, got {self.lr}")
        elif self.min_lr > self.lr:
            problems.append(f"min_lr: {self.min_lr} is above lr={self.lr}")
        if self.muon_lr <= 0:
            problems.append(f"muon_lr: must be positive, got {self.muon_lr}")
        if self.max_time is not None and self.max_time <= 0:
            problems.append(f"max_time: must be a positive number of seconds (or null for none), got {self.max_time}")
        for name in ("beta1", "beta2", "muon_momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        at_most(problems, self, {"batch_size": 1 << 24, "micro_batch_size": 1 << 24, "max_steps": 1 << 40,
                                 "lr": 10.0, "min_lr": 10.0, "warmup_steps": 1 << 40, "weight_decay": 100.0,
                                 "grad_clip": 1e9, "eval_interval": 1 << 40, "eval_steps": 1 << 24,
                                 "log_interval": 1 << 40, "sample_tokens": 1 << 20,
                                 "muon_lr": 10.0, "muon_weight_decay": 100.0, "max_time": 1e9})
        if self.seed < 0:
            problems.append(f"seed: must not be negative, got {self.seed}")
        if not DEVICE.match(self.device):
            problems.append(f"device: expected auto, cpu, cuda, cuda:N or mps, got {excerpt(self.device)}")
        if self.finetune != "all" and self.init_from is None:
            problems.append(f"finetune: {self.finetune} freezes pretrained weights, so it needs init_from "
                            "(a trained run to start from)")
        if self.optimizer == "muon" and self.finetune == "lora":
            # The adapters are 2-D, but Muon would give every direction of their low-rank update
            # the same size, and the speedruns' tuning is for full matrices: AdamW is the known
            # quantity for LoRA, so the recipe says so rather than getting AdamW silently.
            problems.append("optimizer: muon trains full weight matrices; LoRA adapters train with adamw "
                            "(set train.optimizer=adamw, or finetune=all / last_block to use muon)")
        _raise_if(problems)


@dataclass(frozen=True)
class Recipe:
    name: str = "run"
    out_dir: str | None = None  # the run directory; runs/<name> when not given
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        problems = []
        parts = Path(self.name).parts
        if not self.name.strip() or self.name.strip(" ./") == "" or len(self.name) > 200 or ".." in parts \
                or Path(self.name).is_absolute():
            problems.append(f"name: must name a run inside runs/ (runs/NAME), got {excerpt(self.name)}; "
                            "a run elsewhere takes out_dir=PATH")
        if self.out_dir is not None and not self.out_dir.strip():
            problems.append("out_dir: must be a directory, got ''")
        _raise_if(problems)
        # The task follows from the model: decoders predict the next token, the encoder fills in
        # masked tokens, seq2seq translates the generated numbers.
        if (self.model.name == "seq2seq") != (self.data.source == "numbers"):
            _raise_if([f"model.name: {self.model.name} cannot train on data.source {self.data.source!r} "
                       "(seq2seq trains on the numbers source, and the numbers source only trains seq2seq)"])

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir if self.out_dir is not None else f"runs/{self.name}")


# --- building dataclasses from plain data, collecting every problem -------------------------------


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return "null" if tp is type(None) else names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check `value` against the type `tp`; return (ok, value converted where that is lossless).

    YAML 1.1 reads `3e-4` as a string (it wants `3.0e-4`), so numeric strings are accepted for
    numbers: a recipe author should not have to know that.
    """
    origin = get_origin(tp)
    if origin is Literal:
        return value in get_args(tp), value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            ok, converted = _coerce(value, arg)
            if ok:
                return True, converted
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp in (int, float):
        if isinstance(value, bool):
            return False, value
        number = value
        if isinstance(value, str):
            try:  # an integer's digits exactly (float() would round 20-digit seeds)
                number = int(value) if re.fullmatch(r"\s*[+-]?\d+\s*", value) else float(value)
            except ValueError:
                return False, value
        if not isinstance(number, (int, float)):
            return False, value
        if isinstance(number, float) and not math.isfinite(number):
            return False, value  # nan and inf are never a setting
        if tp is float:
            return True, float(number)
        if isinstance(number, float):
            if not number.is_integer():
                return False, value
            number = int(number)
        return (True, number) if abs(number) <= INT_LIMIT else (False, value)
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"recipe field type {tp!r} is not supported")


def _out_of_range(value: Any) -> str | None:
    """Why a number that parses was still refused: not finite, or too large for any setting."""
    try:
        number = int(value) if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value) else float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if isinstance(value, bool):
        return None
    if isinstance(number, float) and not math.isfinite(number):
        return "must be a finite number"
    if abs(number) > INT_LIMIT:
        return f"must be at most {INT_LIMIT:,} in size"
    return None


def _schema_paths(cls: type, prefix: str = "") -> list[str]:
    paths = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            paths += _schema_paths(hints[f.name], f"{path}.")
        else:
            paths.append(path)
    return paths


def _unknown_key(path: str, key: str, section: str, names: list[str]) -> str:
    if len(path) > 80:
        return f"unknown key {excerpt(path)}"
    message = f"unknown key '{path}'"
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"{message} — did you mean '{section + '.' if section else ''}{close[0]}'?"
    # Maybe the key exists, but in another section (`model.lr` for `train.lr`).
    elsewhere = [p for p in _schema_paths(Recipe) if p.rsplit(".", 1)[-1] == key]
    elsewhere = elsewhere or difflib.get_close_matches(key, _schema_paths(Recipe), n=1, cutoff=0.75)
    if elsewhere:
        return f"{message} — did you mean '{elsewhere[0]}'?"
    return f"{message} (known keys here: {', '.join(names)})"


def _build(cls: type, raw: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        got = "nothing" if raw is None else f"{type(raw).__name__} {excerpt(raw)}"
        problems.append(f"{where or 'recipe'}: expected a mapping of keys, got {got}")
        return None
    before = len(problems)
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs, failed = {}, set()
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            problems.append(_unknown_key(path, str(key), where, names))
        elif dataclasses.is_dataclass(hints[key]):
            built = _build(hints[key], value, path, problems)
            if built is None:
                failed.add(key)
            else:
                kwargs[key] = built
        else:
            ok, converted = _coerce(value, hints[key])
            if ok:
                kwargs[key] = converted
                continue
            failed.add(key)
            message = f"{path}: {_out_of_range(value) or 'expected ' + _describe(hints[key])}, got {excerpt(value)}"
            if get_origin(hints[key]) is Literal and isinstance(value, str):
                close = difflib.get_close_matches(value, get_args(hints[key]), n=1)
                message += f" — did you mean '{close[0]}'?" if close else ""
            problems.append(message)
    # Check the values that did parse, even when others did not, so every problem is reported
    # in one go; a failed key is left at its default and its own range checks are skipped.
    try:
        built = cls(**kwargs)
    except ConfigError as e:
        problems += [f"{where}.{p}" if where else p for p in e.problems
                     if p.split(":")[0].split(".")[0] not in failed]
        return None
    return built if len(problems) == before else None


def recipe_from_dict(raw: Any, where: str = "recipe") -> Recipe:
    problems: list[str] = []
    recipe = _build(Recipe, raw, "", problems)
    if problems:
        raise ConfigError(problems, where)
    return recipe


def config_from_dict(cls: type, raw: Any, where: str) -> Any:
    """Build one config section (e.g. the ModelConfig stored in a checkpoint)."""
    problems: list[str] = []
    built = _build(cls, raw, "", problems)
    if problems:
        raise ConfigError(problems, where)
    return built


def recipe_with(recipe: Recipe, **sections: dict | Any) -> Recipe:
    """The recipe with some keys replaced, section by section: recipe_with(r, data={"tokens": d},
    name="x"). Each section is rebuilt, so its own checks run again."""
    changes = {}
    for name, value in sections.items():
        current = getattr(recipe, name)
        changes[name] = dataclasses.replace(current, **value) if dataclasses.is_dataclass(current) else value
    return dataclasses.replace(recipe, **changes)


# --- YAML files and overrides ---------------------------------------------------------------------

MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of settings; anything larger is not one


def excerpt(value: Any, width: int = 60) -> str:
    """A value as an error message quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 4] + " ..."


class RecipeLoader(yaml.SafeLoader):
    """safe_load's loader (no tags that build objects), refusing two things plain YAML allows:
    aliases (`*name`: a few lines of them expand to gigabytes, the "billion laughs"), and a key
    given twice in one mapping (where YAML silently keeps the last)."""

    MAX_DEPTH = 32  # a recipe has sections of keys; deeper is not a recipe (and would overflow the stack)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.constructor.ConstructorError(None, None, "recipes may not use YAML aliases (*name)", mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > self.MAX_DEPTH:
                raise yaml.constructor.ConstructorError(None, None, f"nested more than {self.MAX_DEPTH} levels deep",
                                                        self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {excerpt(key)} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)


def apply_override(raw: dict, override: str) -> None:
    """Set `a.b.c=value` in the nested dict `raw`; the value is parsed as YAML (numbers, true, null)."""
    key, sep, text = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError([f"override {excerpt(override)} must look like section.key=value"], "command line")
    try:
        value = parse_yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # not valid YAML on its own (e.g. `a: b`): take it as a plain string
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            section = ".".join(parts[: i + 1])
            raise ConfigError([f"override '{override}': '{section}' is a value, not a section"],
                              "command line")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LlmkitError(f"recipe not found: {path}", hint=_available_recipes_hint())
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise LlmkitError(f"recipe {path} is {size:,} bytes: too large for a recipe "
                          f"(at most {MAX_RECIPE_BYTES:,})", hint="see recipes/debug.yaml for what one holds")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise LlmkitError(f"recipe {path} is not valid YAML{at}: {problem}") from None
    except UnicodeDecodeError:
        raise LlmkitError(f"recipe {path} is not UTF-8 text") from None
    if raw is None:
        raise LlmkitError(f"recipe {path} is empty", hint="see recipes/debug.yaml for a small example")
    if not isinstance(raw, dict):
        raise LlmkitError(f"recipe {path} must be a mapping of sections, got {type(raw).__name__}")
    return raw


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    raw = read_yaml(path)
    keys = [o.partition("=")[0] for o in overrides]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError([f"{excerpt(k)} is set twice on the command line (--device sets train.device)" for k in twice],
                          "command line")
    for override in overrides:
        apply_override(raw, override)
    recipe = recipe_from_dict(raw, where=f"recipe {path}")
    # Resolve defaults that depend on other keys, so the saved recipe is explicit.
    return dataclasses.replace(recipe, out_dir=str(recipe.run_dir))


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(dataclasses.asdict(recipe), sort_keys=False)


# --- finding recipes by name ----------------------------------------------------------------------

_PACKAGE_RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _recipe_dirs() -> list[Path]:
    dirs = [Path("recipes"), _PACKAGE_RECIPES]
    return [d for d in dict.fromkeys(d.resolve() for d in dirs) if d.is_dir()]


def _available_recipes_hint() -> str | None:
    names = sorted({p.stem for d in _recipe_dirs() for p in d.glob("*.yaml")})
    return f"recipes: {', '.join(names)}" if names else None


def find_recipe(name_or_path: str) -> Path:
    """A recipe file given as a path, or by name (`shakespeare_char`) from a recipes/ directory."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix == "" and len(path.parts) == 1:
        for directory in _recipe_dirs():
            candidate = directory / f"{name_or_path}.yaml"
            if candidate.is_file():
                return candidate
    raise LlmkitError(f"recipe not found: {name_or_path}", hint=_available_recipes_hint())
