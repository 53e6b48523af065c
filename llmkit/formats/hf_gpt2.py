"""GPT-2 weights between llmkit and Hugging Face `transformers`, through one name table.

llmkit's `gpt` with learned positions, LayerNorm (eps 1e-5), tanh-GELU, biases and tied embeddings
is GPT-2's architecture, so the same numbers serve both; only names and layouts differ:
- HF fuses queries, keys and values in `attn.c_attn`; llmkit splits queries (`attn.q`) from keys
  and values (`attn.kv`, for GQA and cross-attention): rows [0, C) vs [C, 3C) of one matrix.
- HF's GPT-2 uses `Conv1D`, which stores a linear layer's weight as (in, out): transposed.

`to_hf_state_dict` and `from_hf_state_dict` both read the RULES below, so import and export
cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError


@dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]  # llmkit names (one per slice of the HF tensor); {i} is the layer
    hf: str  # the HF name
    conv1d: bool = False  # stored transposed in HF (Conv1D)


RULES = (
    Rule(("embed.wte.weight",), "transformer.wte.weight"),
    Rule(("embed.wpe.weight",), "transformer.wpe.weight"),
    Rule(("blocks.{i}.norm_1.weight",), "transformer.h.{i}.ln_1.weight"),
    Rule(("blocks.{i}.norm_1.bias",), "transformer.h.{i}.ln_1.bias"),
    Rule(("blocks.{i}.attn.q.weight", "blocks.{i}.attn.kv.weight"), "transformer.h.{i}.attn.c_attn.weight", True),
    Rule(("blocks.{i}.attn.q.bias", "blocks.{i}.attn.kv.bias"), "transformer.h.{i}.attn.c_attn.bias"),
    Rule(("blocks.{i}.attn.proj.weight",), "transformer.h.{i}.attn.c_proj.weight", True),
    Rule(("blocks.{i}.attn.proj.bias",), "transformer.h.{i}.attn.c_proj.bias"),
    Rule(("blocks.{i}.norm_2.weight",), "transformer.h.{i}.ln_2.weight"),
    Rule(("blocks.{i}.norm_2.bias",), "transformer.h.{i}.ln_2.bias"),
    Rule(("blocks.{i}.mlp.fc.weight",), "transformer.h.{i}.mlp.c_fc.weight", True),
    Rule(("blocks.{i}.mlp.fc.bias",), "transformer.h.{i}.mlp.c_fc.bias"),
    Rule(("blocks.{i}.mlp.proj.weight",), "transformer.h.{i}.mlp.c_proj.weight", True),
    Rule(("blocks.{i}.mlp.proj.bias",), "transformer.h.{i}.mlp.c_proj.bias"),
    Rule(("norm_f.weight",), "transformer.ln_f.weight"),
    Rule(("norm_f.bias",), "transformer.ln_f.bias"),
)


def _expand(config: ModelConfig):
    """Every (Rule, our names, HF name) for a model with config.n_layer blocks."""
    for rule in RULES:
        layers = range(config.n_layer) if "{i}" in rule.hf else [None]
        for i in layers:
            yield rule, [n.format(i=i) for n in rule.ours], rule.hf.format(i=i)


def check_gpt2_shape(config: ModelConfig) -> None:
    """GPT-2's architecture is gpt with these switches; anything else has no HF GPT-2 equivalent."""
    wanted = {"name": "gpt", "positions": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True,
              "qk_norm": False, "tie_embeddings": True}
    wrong = [f"model.{k}={getattr(config, k)!r} (GPT-2 has {v!r})" for k, v in wanted.items() if getattr(config, k) != v]
    if config.kv_heads != config.n_head:
        wrong.append(f"model.n_kv_head={config.n_kv_head} (GPT-2 has one key/value head per head)")
    if config.mlp_hidden not in (None, 4 * config.n_embd):
        wrong.append(f"model.mlp_hidden={config.mlp_hidden} (GPT-2 has 4 * n_embd)")
    if wrong:
        raise LlmkitError("this model is not GPT-2-shaped: " + "; ".join(wrong))


def to_hf_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    check_gpt2_shape(config)
    out = {}
    for rule, ours, hf in _expand(config):
        tensor = torch.cat([state[n] for n in ours], dim=0)
        out[hf] = (tensor.t() if rule.conv1d else tensor).contiguous()
    out["lm_head.weight"] = out["transformer.wte.weight"]  # tied
    return out


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    check_gpt2_shape(config)
    C = config.n_embd
    out = {}
    for rule, ours, hf in _expand(config):
        if hf not in hf_state:
            raise LlmkitError(f"the GPT-2 weights have no tensor {hf}")
        tensor = hf_state[hf].t() if rule.conv1d else hf_state[hf]
        sizes = [C, 2 * C] if len(ours) == 2 else [tensor.shape[0]]  # queries | keys and values
        for name, part in zip(ours, torch.split(tensor, sizes, dim=0)):
            out[name] = part.contiguous()
    out["lm_head.weight"] = out["embed.wte.weight"]
    return out


def config_from_hf(hf: dict) -> ModelConfig:
    """A ModelConfig from a GPT-2 `config.json` (as a dict)."""
    if hf.get("model_type") not in (None, "gpt2"):
        raise LlmkitError(f"expected a GPT-2 config, got model_type {hf.get('model_type')!r}")
    return ModelConfig(name="gpt", vocab_size=hf["vocab_size"], block_size=hf["n_positions"],
                       n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], bias=True,
                       norm_eps=hf.get("layer_norm_epsilon", 1e-5), dropout=0.0)


def hf_config_dict(config: ModelConfig) -> dict:
    """The GPT-2 `config.json` for a GPT-2-shaped llmkit model."""
    check_gpt2_shape(config)
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
            "n_head": config.n_head, "n_inner": None, "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps, "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout, "attn_pdrop": config.dropout, "tie_word_embeddings": True}


# --- Hugging Face directories: what `save_pretrained` writes and `from_pretrained` reads ----------

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_PREFIX = "hf:"  # `hf:openai-community/gpt2`: a model on the Hugging Face hub


def is_hf_directory(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def hf_directory(run: str | Path) -> Path | None:
    """The Hugging Face directory `run` names (`hf:REPO_ID` fetched first), or None for anything else."""
    if str(run).startswith(HUB_PREFIX):
        return fetch_from_hub(str(run))
    return Path(run) if is_hf_directory(Path(run)) else None


def fetch_from_hub(name: str) -> Path:
    """Download a GPT-2 model's config, weights and tokenizer files from the hub (cached by
    huggingface_hub); `name` is `hf:REPO_ID`."""
    repo = name[len(HUB_PREFIX):]
    try:
        from huggingface_hub import list_repo_files, snapshot_download

        files = set(list_repo_files(repo))
        weights = next((f for f in WEIGHT_FILES if f in files), None)
        if weights is None:
            raise LlmkitError(f"{repo} on the hub has none of {', '.join(WEIGHT_FILES)}")
        return Path(snapshot_download(repo, allow_patterns=["config.json", weights, "vocab.json", "merges.txt"]))
    except LlmkitError:
        raise
    except Exception as e:  # no network, unknown repo, no huggingface_hub: one message either way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LlmkitError(f"cannot fetch {repo} from the Hugging Face hub: {first}",
                          hint="on a machine without network, give a local directory holding config.json, "
                          "model.safetensors (or pytorch_model.bin), vocab.json and merges.txt") from None


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The state dict of a directory's safetensors or pytorch_model.bin file (loaded without
    running code), with GPT2Model's bare names (`h.0...`) given GPT2LMHeadModel's `transformer.`."""
    path = next(directory / f for f in WEIGHT_FILES if (directory / f).is_file())
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LlmkitError(f"cannot read the weights in {path}: {str(e).strip().splitlines()[0]}") from None
    return {(k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}"): v for k, v in state.items()}


def hf_tokenizer(directory: Path):
    """GPT-2's tokenizer files as a Hugging Face directory names them."""
    from llmkit.data.bpe import gpt2_tokenizer

    return gpt2_tokenizer(directory, "vocab.json", "merges.txt")


def read_hf_directory(directory: Path):
    """A Hugging Face GPT-2 directory as a Checkpoint: config, weights under llmkit's names, and
    the tokenizer; no recipe or training data stands behind these weights."""
    import json

    from llmkit.checkpoint import Checkpoint

    try:
        hf_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LlmkitError(f"cannot read {directory / 'config.json'}: {e}") from None
    config = config_from_hf(hf_config)
    state = from_hf_state_dict(read_hf_weights(directory), config)
    tokenizer = hf_tokenizer(directory)
    if tokenizer.vocab_size > config.vocab_size:
        raise LlmkitError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens, the model only "
                          f"{config.vocab_size}")
    return Checkpoint(config, state, tokenizer, data={"tokens": None, "command": f"(GPT-2 weights from {directory})"},
                      origin={"kind": "imported", "from": str(directory)}, path=directory)


def save_hf_directory(model: torch.nn.Module, config: ModelConfig, tokenizer, directory: Path) -> list[Path]:
    """Write a GPT-2-shaped model as `GPT2LMHeadModel.from_pretrained` reads it: config.json,
    model.safetensors and (for byte-level BPE tokenizers) vocab.json + merges.txt. The tied
    output head is stored once, as transformers itself does."""
    import json

    from safetensors.torch import save

    from llmkit.atomic import atomic_open, atomic_write_text
    from llmkit.data.bpe import BytePairTokenizer, save_gpt2_files

    state = to_hf_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, config)
    del state["lm_head.weight"]
    hf_config = hf_config_dict(config)
    eot = getattr(tokenizer, "eot_id", None)
    if eot is not None:  # GPT2Config assumes 50256, GPT-2's own <|endoftext|>
        hf_config.update(bos_token_id=eot, eos_token_id=eot)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "config.json", json.dumps(hf_config, indent=2) + "\n")
    with atomic_open(directory / "model.safetensors", "wb") as f:
        f.write(save(state, metadata={"format": "pt"}))  # the metadata transformers checks for
    written = [directory / "config.json", directory / "model.safetensors"]
    if isinstance(tokenizer, BytePairTokenizer):
        save_gpt2_files(tokenizer, directory)
        written += [directory / "vocab.json", directory / "merges.txt"]
    return written

