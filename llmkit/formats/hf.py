"""Hugging Face directories in and out: what `save_pretrained` writes and `from_pretrained` reads.

A directory is `config.json`, the weights (`model.safetensors`, shards listed in
`model.safetensors.index.json`, or a `pytorch_model.bin` read with weights_only) and the
tokenizer (`tokenizer.json` and `tokenizer_config.json`, or GPT-2's `vocab.json` + `merges.txt`).
Two families map onto llmkit's `gpt`, each through a name table (llmkit/formats/tables.py):

- gpt2: learned positions, LayerNorm, tanh-GELU, biases (GPT2LMHeadModel);
- llama, and mistral where no sliding window cuts the context: RoPE, RMSNorm, SwiGLU, grouped
  key/value heads, no biases (LlamaForCausalLM).

Every field of config.json that llmkit relies on is checked (type, range, and agreement with the
weights), and a switch llmkit does not implement is refused by name instead of loading with
different logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llmkit.config import ConfigError, ModelConfig
from llmkit.errors import LlmkitError
from llmkit.files import read_json
from llmkit.formats.tables import GPT2_HF, LLAMA_HF, shape_of, shapes_of

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
HUB_PREFIX = "hf:"  # `hf:openai-community/gpt2`: a model on the Hugging Face hub
FAMILIES = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama"}
REFUSED = {  # relatives with switches llmkit lacks, and what is missing
    "qwen2": "biases on the query, key and value projections only (llmkit's bias switch covers every linear layer)",
    "qwen3": "RMS-normalised queries and keys per head after projection with its own weights",
    "gemma": "a scaled embedding and (1 + weight) norms", "gemma2": "logit soft-capping and alternating local attention",
    "phi3": "fused projections and LongRoPE scaling", "gpt_neox": "parallel attention and MLP, partial rotary",
}


def is_hf_directory(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def hf_directory(run: str | Path) -> Path | None:
    """The Hugging Face directory `run` names (`hf:REPO_ID` fetched first), or None for anything else."""
    if str(run).startswith(HUB_PREFIX):
        return fetch_from_hub(str(run))
    return Path(run) if is_hf_directory(Path(run)) else None


def fetch_from_hub(name: str) -> Path:
    """Download a model's config, weights and tokenizer files from the hub (cached by
    huggingface_hub); `name` is `hf:REPO_ID`."""
    repo = name[len(HUB_PREFIX):]
    try:
        from huggingface_hub import list_repo_files, snapshot_download

        files = set(list_repo_files(repo))
        weights = next((f for f in WEIGHT_FILES if f in files), None)
        if weights is None:
            raise LlmkitError(f"{repo} on the hub has none of {', '.join(WEIGHT_FILES)}")
        patterns = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "vocab.json", "merges.txt", weights, "model-*.safetensors" if weights.endswith("index.json") else weights]
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except LlmkitError:
        raise
    except Exception as e:  # no network, unknown repo, no huggingface_hub: one message either way
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise LlmkitError(f"cannot fetch {repo} from the Hugging Face hub: {first}",
                          hint="on a machine without network, give a local directory holding config.json, "
                          "the weights and the tokenizer files") from None


# --- config.json ----------------------------------------------------------------------------------


class _Fields:
    """Typed reads of config.json, every problem collected (reported together, like a recipe's)."""

    def __init__(self, raw: dict):
        self.raw, self.problems = raw, []

    def get(self, key: str, kind: type, default=..., check=None, why: str = ""):
        value = self.raw.get(key, default)
        if value is ...:
            self.problems.append(f"{key}: missing")
            return None
        if value is None and default is None:
            return None
        ok = isinstance(value, kind) and not isinstance(value, bool) if kind in (int, float) else isinstance(value, kind)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok or (check is not None and not check(value)):
            self.problems.append(f"{key}: {why or f'expected {kind.__name__}'}, got {str(value)[:40]!r}")
            return None
        return value

    def require(self, key: str, allowed: tuple, why: str) -> None:
        """The key, when present, must be one of `allowed` (the first is its default)."""
        value = self.raw.get(key, allowed[0])
        if value not in allowed:
            self.problems.append(f"{key}: {str(value)[:40]!r} is not implemented by llmkit ({why})")


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """A ModelConfig from a Hugging Face config.json (as a dict), every field checked."""
    model_type = hf.get("model_type") or "gpt2"
    if model_type in REFUSED:
        raise LlmkitError(f"{where}: model_type {model_type!r} needs {REFUSED[model_type]}, which llmkit lacks",
                          hint=f"llmkit reads the model types {', '.join(sorted(FAMILIES))}")
    if model_type not in FAMILIES:
        raise LlmkitError(f"{where}: model_type {str(model_type)[:40]!r} is not one llmkit reads",
                          hint=f"llmkit reads the model types {', '.join(sorted(FAMILIES))}")
    f = _Fields(hf)
    positive = dict(check=lambda v: v > 0, why="expected a positive number")
    settings = _gpt2_settings(f, positive) if FAMILIES[model_type] == "gpt2" else _llama_settings(f, positive, model_type)
    if f.problems:
        raise ConfigError(f.problems, where=where)
    try:
        return ModelConfig(name="gpt", dropout=0.0, **settings)
    except ConfigError as e:
        raise ConfigError(e.problems, where=where) from None


def _gpt2_settings(f: _Fields, positive: dict) -> dict:
    n_embd = f.get("n_embd", int, **positive)
    f.require("activation_function", ("gelu_new", "gelu_pytorch_tanh"), "GPT-2's tanh GELU only")
    f.require("scale_attn_by_inverse_layer_idx", (False,), "attention scaled by the layer index")
    f.require("scale_attn_weights", (True,), "attention scores scaled by 1/sqrt(head dim) only")
    f.require("add_cross_attention", (False,), "cross-attention")
    if f.raw.get("n_inner") not in (None, 4 * (n_embd or 0)):
        f.problems.append(f"n_inner: {str(f.raw['n_inner'])[:20]} is not implemented by llmkit (4 * n_embd only)")
    return {"vocab_size": f.get("vocab_size", int, **positive), "block_size": f.get("n_positions", int, **positive),
            "n_layer": f.get("n_layer", int, **positive), "n_head": f.get("n_head", int, **positive), "n_embd": n_embd,
            "bias": True, "norm_eps": f.get("layer_norm_epsilon", float, 1e-5, **positive),
            "tie_embeddings": f.get("tie_word_embeddings", bool, True)}


def _llama_settings(f: _Fields, positive: dict, model_type: str) -> dict:
    n_embd, n_head = f.get("hidden_size", int, **positive), f.get("num_attention_heads", int, **positive)
    block = f.get("max_position_embeddings", int, **positive)
    rope = f.raw.get("rope_parameters") if isinstance(f.raw.get("rope_parameters"), dict) else {}
    theta = rope.get("rope_theta", f.raw.get("rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default" or f.raw.get("rope_scaling") not in (None, {}):
        f.problems.append(f"rope_scaling: {str(f.raw.get('rope_scaling') or rope)[:60]} is not implemented by llmkit")
    f.require("hidden_act", ("silu",), "SwiGLU's SiLU gate only")
    f.require("pretraining_tp", (1, None), "split projections")
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not theta > 0:
        f.problems.append(f"rope_theta: expected a positive number, got {str(theta)[:40]!r}")
    if n_embd and n_head and f.raw.get("head_dim") not in (None, n_embd // n_head):
        f.problems.append(f"head_dim: {str(f.raw['head_dim'])[:20]} is not hidden_size / num_attention_heads, "
                          "which llmkit needs")
    window = f.raw.get("sliding_window")
    if model_type == "mistral" and window is not None and f.raw.get("use_sliding_window", True) and block and window < block:
        f.problems.append(f"sliding_window: {window} tokens of a {block}-token context is not implemented by llmkit")
    biases = (f.get("attention_bias", bool, False), f.get("mlp_bias", bool, False))
    if biases[0] != biases[1]:
        f.problems.append("attention_bias and mlp_bias: llmkit's bias switch is one for every linear layer")
    return {"vocab_size": f.get("vocab_size", int, **positive), "block_size": block,
            "n_layer": f.get("num_hidden_layers", int, **positive), "n_head": n_head, "n_embd": n_embd,
            "n_kv_head": f.get("num_key_value_heads", int, n_head, **positive),
            "mlp_hidden": f.get("intermediate_size", int, **positive), "positions": "rope", "norm": "rmsnorm",
            "mlp": "swiglu", "bias": bool(biases[0]), "norm_eps": f.get("rms_norm_eps", float, 1e-6, **positive),
            "rope_base": float(theta) if isinstance(theta, (int, float)) and not isinstance(theta, bool) else 1e4,
            "tie_embeddings": f.get("tie_word_embeddings", bool, False)}


def hf_config_dict(config: ModelConfig, tokenizer=None) -> dict:
    """The config.json of a GPT-2- or Llama-shaped llmkit model."""
    ids = {}
    for key, attr in (("bos_token_id", "bos_id"), ("eos_token_id", "eos_id"), ("pad_token_id", "pad_id")):
        value = getattr(tokenizer, attr, None) if tokenizer is not None else None
        value = getattr(tokenizer, "eot_id", None) if value is None and key != "pad_token_id" else value
        if value is not None:
            ids[key] = int(value)
    if shape_of(config) == "gpt2":
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": config.vocab_size,
                "n_positions": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
                "n_head": config.n_head, "n_inner": None, "activation_function": "gelu_new",
                "layer_norm_epsilon": config.norm_eps, "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
                "attn_pdrop": config.dropout, "tie_word_embeddings": config.tie_embeddings, **ids}
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": config.vocab_size,
            "hidden_size": config.n_embd, "intermediate_size": config.hidden, "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head, "num_key_value_heads": config.kv_heads,
            "head_dim": config.head_dim, "max_position_embeddings": config.block_size, "hidden_act": "silu",
            "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_base, "attention_bias": config.bias,
            "mlp_bias": config.bias, "tie_word_embeddings": config.tie_embeddings, "attention_dropout": 0.0, **ids}


def table_for(config: ModelConfig):
    return GPT2_HF if shape_of(config) == "gpt2" else LLAMA_HF


def to_hf_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """llmkit's weights under the Hugging Face names (a tied head under both, as HF's state_dict has it)."""
    out = table_for(config).to_theirs(state, config)
    if config.tie_embeddings:
        out["lm_head.weight"] = out["transformer.wte.weight" if shape_of(config) == "gpt2" else "model.embed_tokens.weight"]
    return out


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    if shape_of(config) == "gpt2":  # GPT2Model's bare names (`h.0...`) are GPT2LMHeadModel's under `transformer.`
        hf_state = {(k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}"): v
                    for k, v in hf_state.items()}
    return table_for(config).to_ours(hf_state, config, shapes_of(config))


# --- reading a directory -----------------------------------------------------------------------------


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The state dict of a directory's safetensors (one file, or the shards an index lists) or
    pytorch_model.bin (loaded without running code)."""
    from safetensors.torch import load_file

    path = next(directory / f for f in WEIGHT_FILES if (directory / f).is_file())
    try:
        if path.name.endswith(".index.json"):
            shards = sorted(set(read_json(path).get("weight_map", {}).values()))
            if not shards or any("/" in s or s.startswith(".") for s in shards):
                raise LlmkitError(f"{path} lists no shards (or shards outside {directory})")
            state = {}
            for shard in shards:
                state.update(load_file(directory / shard))
            return state
        if path.suffix == ".safetensors":
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except LlmkitError:
        raise
    except Exception as e:
        raise LlmkitError(f"cannot read the weights in {path}: {str(e).strip().splitlines()[0][:200]}") from None


def hf_tokenizer(directory: Path, config: dict | None = None):
    """The tokenizer files of a Hugging Face directory: tokenizer.json, or GPT-2's vocab.json + merges.txt."""
    from llmkit.data.bpe import gpt2_tokenizer
    from llmkit.data.hf_tokenizer import HFTokenizer

    if (directory / "tokenizer.json").is_file():
        return HFTokenizer.from_directory(directory, config or read_json(directory / "config.json"))
    return gpt2_tokenizer(directory, "vocab.json", "merges.txt")


def read_hf_directory(directory: Path, dtype: torch.dtype = torch.float32):
    """A Hugging Face directory as a Checkpoint: config, weights under llmkit's names, and the
    tokenizer; no recipe or training data stands behind these weights."""
    from llmkit.checkpoint import Checkpoint

    raw = read_json(directory / "config.json")
    config = config_from_hf(raw, where=str(directory / "config.json"))
    tokenizer = hf_tokenizer(directory, raw)
    if tokenizer.vocab_size > config.vocab_size:
        raise LlmkitError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens, the model only "
                          f"{config.vocab_size}")
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in from_hf_state_dict(read_hf_weights(directory), config).items()}
    return Checkpoint(config, state, tokenizer, data={"tokens": None, "command": f"(weights from {directory})"},
                      origin={"kind": "imported", "from": str(directory), "format": "hf"}, path=directory)


# --- writing a directory -----------------------------------------------------------------------------


def save_hf_directory(model: torch.nn.Module, config: ModelConfig, tokenizer, directory: Path) -> list[Path]:
    """Write a GPT-2- or Llama-shaped model as `AutoModelForCausalLM.from_pretrained` reads it:
    config.json, model.safetensors (a tied head stored once, as transformers does) and the
    tokenizer: tokenizer.json + tokenizer_config.json (and GPT-2's vocab.json + merges.txt for
    llmkit's own byte-level BPE)."""
    from safetensors.torch import save

    from llmkit.data.bpe import BytePairTokenizer, save_gpt2_files
    from llmkit.data.hf_tokenizer import HFTokenizer, from_byte_pair
    from llmkit.files import atomic_open, atomic_write_text, make_dir

    state = table_for(config).to_theirs({k: v.detach().cpu() for k, v in model.state_dict().items()}, config)
    make_dir(directory)
    atomic_write_text(directory / "config.json", json.dumps(hf_config_dict(config, tokenizer), indent=2) + "\n")
    with atomic_open(directory / "model.safetensors", "wb") as f:
        f.write(save(state, metadata={"format": "pt"}))  # the metadata transformers checks for
    written = [directory / "config.json", directory / "model.safetensors"]
    if isinstance(tokenizer, BytePairTokenizer) and shape_of(config) == "gpt2":  # as GPT-2 itself ships it
        save_gpt2_files(tokenizer, directory)
        written += [directory / "vocab.json", directory / "merges.txt"]
    elif isinstance(tokenizer, BytePairTokenizer):  # a Llama-shaped model's tokenizer is a tokenizer.json
        tokenizer = from_byte_pair(tokenizer)
    if isinstance(tokenizer, HFTokenizer):
        atomic_write_text(directory / "tokenizer.json", tokenizer.tokenizer.to_str())
        settings = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                    "add_bos_token": False, "model_max_length": config.block_size}
        for key, attr in (("bos_token", "bos_id"), ("eos_token", "eos_id"), ("pad_token", "pad_id")):
            token_id = getattr(tokenizer, attr)
            if token_id is not None:
                settings[key] = tokenizer.token(token_id)
        if tokenizer.chat_template:
            settings["chat_template"] = tokenizer.chat_template
        atomic_write_text(directory / "tokenizer_config.json", json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
        written += [directory / "tokenizer.json", directory / "tokenizer_config.json"]
    return written
