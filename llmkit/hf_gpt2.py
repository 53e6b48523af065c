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
