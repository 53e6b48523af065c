"""Name tables: how another library names and lays out the weights of a model llmkit builds.

One mechanism serves every family and direction (Hugging Face GPT-2 and Llama directories, GGUF
files of llama.cpp's `gpt2` and `llama` architectures, in and out). A table is a list of rules;
a rule says that llmkit's tensors `ours`, stacked along their first dimension, hold the same
numbers as the other format's tensors `theirs`, each after its `transform`, stacked the same way:

    Rule(("blocks.{i}.attn.q.weight", "blocks.{i}.attn.kv.weight"), ("h.{i}.attn.c_attn.weight",), ("t",))
        one HF tensor, transposed (GPT-2's Conv1D), is llmkit's queries then keys and values
    Rule(("blocks.{i}.mlp.fc.weight",), ("model.layers.{i}.mlp.gate_proj.weight", "...up_proj.weight"))
        two Llama tensors, one after the other, are llmkit's fused SwiGLU input layer

Transforms (each its own inverse, or paired below):
    t       transpose (HF GPT-2 stores linear layers as Conv1D, (in, out))
    rope_q  GGUF's row order for rotary queries: llama.cpp's converter interleaves each head's two
    rope_k  halves (rotate-half -> pairs); the same for keys, with n_kv_head heads

`when` names a condition on the config: "untied" (an output head of its own), "bias".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.layers.quantized import SCALE

# Tensors some files carry that are not weights: GPT-2's causal-mask buffers, rotary frequencies.
IGNORED = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq", "rope_freqs.weight")


@dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]  # llmkit names; {i} is the block
    theirs: tuple[str, ...]  # the other format's names
    transforms: tuple[str, ...] = ()  # one per name in `theirs` ("" for none)
    when: str = ""  # "", "untied" or "bias"


@dataclass(frozen=True)
class NameTable:
    family: str  # how messages name it: "Hugging Face GPT-2", "GGUF llama", ...
    rules: tuple[Rule, ...]
    keys: tuple[tuple[str, str], ...] = ()  # (ModelConfig field, the format's name for it), for messages

    def _disagreement(self, config: ModelConfig, sizes: set[int]) -> str:
        """Which settings of the config a wrong size may come from: those equal to it."""
        fields = {"n_layer": config.n_layer, "block_size": config.block_size, "n_embd": config.n_embd,
                  "vocab_size": config.vocab_size, "hidden": config.hidden, "n_head": config.n_head,
                  "n_kv_head": config.kv_heads}
        named = dict(self.keys)
        suspects = [named.get(f, f) for f, v in fields.items() if v in sizes]
        return f"the config's {' or '.join(suspects)} disagrees with the weights" if suspects \
            else "the config disagrees with the weights"

    def expand(self, config: ModelConfig) -> Iterator[tuple[Rule, list[str], list[str]]]:
        """Every (rule, our names, their names) for this config's blocks and switches."""
        for rule in self.rules:
            if (rule.when == "untied" and config.tie_embeddings) or (rule.when == "bias" and not config.bias):
                continue
            layers = range(config.n_layer) if any("{i}" in n for n in rule.ours) else [None]
            for i in layers:
                yield rule, [n.format(i=i) for n in rule.ours], [n.format(i=i) for n in rule.theirs]

    def to_ours(self, theirs: dict[str, torch.Tensor], config: ModelConfig,
                shapes: dict[str, torch.Size], convert=None) -> dict[str, torch.Tensor]:
        """llmkit's state dict from the other format's tensors; `shapes` are those of the llmkit
        model being loaded (they say where to cut stacked tensors, and are checked). `convert`
        (name, tensor) -> entries, if given, turns each tensor into its entries as soon as it is
        made (llmkit/layers/quantized.py: int8 while reading, never the whole model in float)."""
        out, used = {}, set()
        for rule, ours, names in self.expand(config):
            missing = [n for n in names if n not in theirs]
            if missing:
                layers = _blocks_in(theirs)
                blocks = f": the config says {config.n_layer} blocks ({dict(self.keys).get('n_layer', 'n_layer')}), " \
                    f"the weights hold {layers}" if layers and layers != config.n_layer else ""
                raise LlmkitError(f"the {self.family} weights have no tensor {missing[0]}{blocks}",
                                  hint="the config disagrees with the weights (or they are incomplete)")
            used.update(names)
            parts = [_apply(t, theirs[n], config, inverse=True) for n, t in zip(names, _transforms(rule))]
            joined = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
            sizes = [shapes[n][0] for n in ours]
            if sum(sizes) != joined.shape[0] or any(tuple(joined.shape[1:]) != tuple(shapes[n][1:]) for n in ours):
                expected = {d for n in ours for d in shapes[n]} - set(joined.shape)
                raise LlmkitError(f"the {self.family} tensor{'s' if len(names) > 1 else ''} {', '.join(names)} "
                                  f"of shape {tuple(joined.shape)} do not fit {', '.join(ours)} "
                                  f"({', '.join(str(tuple(shapes[n])) for n in ours)}): "
                                  f"{self._disagreement(config, expected or set(sizes))}")
            for name, part in zip(ours, torch.split(joined, sizes, dim=0)):
                out.update(convert(name, part.contiguous()) if convert else {name: part.contiguous()})
            del parts, joined
        left = [n for n in theirs if n not in used and not n.endswith(IGNORED)
                and not (config.tie_embeddings and n in ("lm_head.weight", "output.weight"))]
        if left:
            raise LlmkitError(f"the {self.family} weights hold {len(left)} tensor(s) the config does not describe, "
                              f"e.g. {left[0]}", hint="the config disagrees with the weights")
        if config.tie_embeddings and "lm_head.weight" in shapes:
            for suffix in ("", SCALE):  # a quantized table has its row scales beside it
                if "embed.wte.weight" + suffix in out:
                    out["lm_head.weight" + suffix] = out["embed.wte.weight" + suffix]
        return out

    def to_theirs(self, ours: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
        """The other format's tensors from llmkit's state dict (a tied head is not repeated)."""
        out = {}
        for rule, names, theirs in self.expand(config):
            joined = torch.cat([ours[n] for n in names], dim=0) if len(names) > 1 else ours[names[0]]
            parts = torch.chunk(joined, len(theirs), dim=0) if len(theirs) > 1 else (joined,)
            for name, transform, part in zip(theirs, _transforms(rule), parts):
                out[name] = _apply(transform, part, config, inverse=False).contiguous()
        return out


def _blocks_in(names) -> int:
    """How many blocks a format's tensor names hold: the distinct numbers after h., layers. or blk."""
    found = set()
    for name in names:
        parts = name.split(".")
        found.update(int(b) for a, b in zip(parts, parts[1:]) if a in ("h", "layers", "blk") and b.isdigit())
    return len(found)


def _transforms(rule: Rule) -> tuple[str, ...]:
    return rule.transforms or ("",) * len(rule.theirs)


def _apply(transform: str, tensor: torch.Tensor, config: ModelConfig, inverse: bool) -> torch.Tensor:
    """Their layout -> ours (inverse=True) or ours -> theirs."""
    if transform == "":
        return tensor
    if transform == "t":
        return tensor.t()
    heads = config.n_head if transform == "rope_q" else config.kv_heads
    return _interleave(tensor, heads, back=inverse)


def _interleave(w: torch.Tensor, heads: int, back: bool) -> torch.Tensor:
    """Rows of each head in rotate-half order (0..D/2-1 pair with D/2..D-1, as HF's Llama and
    llmkit's RoPE use) -> interleaved pairs (0,1), (2,3)... (llama.cpp's GGUF), or back."""
    rest = w.shape[1:]
    half = w.shape[0] // heads // 2
    if back:
        return w.reshape(heads, half, 2, *rest).transpose(1, 2).reshape(w.shape)
    return w.reshape(heads, 2, half, *rest).transpose(1, 2).reshape(w.shape)


# --- the tables ---------------------------------------------------------------------------------------

_T = ("t",)

_GPT2_KEYS = (("n_layer", "n_layer"), ("block_size", "n_positions"), ("n_embd", "n_embd"), ("n_head", "n_head"),
              ("vocab_size", "vocab_size"), ("hidden", "n_inner"))
_LLAMA_KEYS = (("n_layer", "num_hidden_layers"), ("block_size", "max_position_embeddings"),
               ("n_embd", "hidden_size"), ("n_head", "num_attention_heads"), ("n_kv_head", "num_key_value_heads"),
               ("vocab_size", "vocab_size"), ("hidden", "intermediate_size"))
_GGUF_KEYS = (("n_layer", "block_count"), ("block_size", "context_length"), ("n_embd", "embedding_length"),
              ("n_head", "attention.head_count"), ("n_kv_head", "attention.head_count_kv"),
              ("vocab_size", "vocab_size"), ("hidden", "feed_forward_length"))

GPT2_HF = NameTable("Hugging Face GPT-2", (
    Rule(("embed.wte.weight",), ("transformer.wte.weight",)),
    Rule(("embed.wpe.weight",), ("transformer.wpe.weight",)),
    Rule(("blocks.{i}.norm_1.weight",), ("transformer.h.{i}.ln_1.weight",)),
    Rule(("blocks.{i}.norm_1.bias",), ("transformer.h.{i}.ln_1.bias",)),
    Rule(("blocks.{i}.attn.q.weight", "blocks.{i}.attn.kv.weight"), ("transformer.h.{i}.attn.c_attn.weight",), _T),
    Rule(("blocks.{i}.attn.q.bias", "blocks.{i}.attn.kv.bias"), ("transformer.h.{i}.attn.c_attn.bias",)),
    Rule(("blocks.{i}.attn.proj.weight",), ("transformer.h.{i}.attn.c_proj.weight",), _T),
    Rule(("blocks.{i}.attn.proj.bias",), ("transformer.h.{i}.attn.c_proj.bias",)),
    Rule(("blocks.{i}.norm_2.weight",), ("transformer.h.{i}.ln_2.weight",)),
    Rule(("blocks.{i}.norm_2.bias",), ("transformer.h.{i}.ln_2.bias",)),
    Rule(("blocks.{i}.mlp.fc.weight",), ("transformer.h.{i}.mlp.c_fc.weight",), _T),
    Rule(("blocks.{i}.mlp.fc.bias",), ("transformer.h.{i}.mlp.c_fc.bias",)),
    Rule(("blocks.{i}.mlp.proj.weight",), ("transformer.h.{i}.mlp.c_proj.weight",), _T),
    Rule(("blocks.{i}.mlp.proj.bias",), ("transformer.h.{i}.mlp.c_proj.bias",)),
    Rule(("norm_f.weight",), ("transformer.ln_f.weight",)),
    Rule(("norm_f.bias",), ("transformer.ln_f.bias",)),
    Rule(("lm_head.weight",), ("lm_head.weight",), when="untied"),
), _GPT2_KEYS)

_LAYER = "model.layers.{i}."
LLAMA_HF = NameTable("Hugging Face Llama", (
    Rule(("embed.wte.weight",), ("model.embed_tokens.weight",)),
    Rule(("blocks.{i}.norm_1.weight",), (_LAYER + "input_layernorm.weight",)),
    Rule(("blocks.{i}.attn.q.weight",), (_LAYER + "self_attn.q_proj.weight",)),
    Rule(("blocks.{i}.attn.q.bias",), (_LAYER + "self_attn.q_proj.bias",), when="bias"),
    Rule(("blocks.{i}.attn.kv.weight",), (_LAYER + "self_attn.k_proj.weight", _LAYER + "self_attn.v_proj.weight")),
    Rule(("blocks.{i}.attn.kv.bias",), (_LAYER + "self_attn.k_proj.bias", _LAYER + "self_attn.v_proj.bias"), when="bias"),
    Rule(("blocks.{i}.attn.proj.weight",), (_LAYER + "self_attn.o_proj.weight",)),
    Rule(("blocks.{i}.attn.proj.bias",), (_LAYER + "self_attn.o_proj.bias",), when="bias"),
    Rule(("blocks.{i}.norm_2.weight",), (_LAYER + "post_attention_layernorm.weight",)),
    Rule(("blocks.{i}.mlp.fc.weight",), (_LAYER + "mlp.gate_proj.weight", _LAYER + "mlp.up_proj.weight")),
    Rule(("blocks.{i}.mlp.fc.bias",), (_LAYER + "mlp.gate_proj.bias", _LAYER + "mlp.up_proj.bias"), when="bias"),
    Rule(("blocks.{i}.mlp.proj.weight",), (_LAYER + "mlp.down_proj.weight",)),
    Rule(("blocks.{i}.mlp.proj.bias",), (_LAYER + "mlp.down_proj.bias",), when="bias"),
    Rule(("norm_f.weight",), ("model.norm.weight",)),
    Rule(("lm_head.weight",), ("lm_head.weight",), when="untied"),
), _LLAMA_KEYS)

_BLK = "blk.{i}."
LLAMA_GGUF = NameTable("GGUF llama", (
    Rule(("embed.wte.weight",), ("token_embd.weight",)),
    Rule(("blocks.{i}.norm_1.weight",), (_BLK + "attn_norm.weight",)),
    Rule(("blocks.{i}.attn.q.weight",), (_BLK + "attn_q.weight",), ("rope_q",)),
    Rule(("blocks.{i}.attn.q.bias",), (_BLK + "attn_q.bias",), ("rope_q",), when="bias"),
    Rule(("blocks.{i}.attn.kv.weight",), (_BLK + "attn_k.weight", _BLK + "attn_v.weight"), ("rope_k", "")),
    Rule(("blocks.{i}.attn.kv.bias",), (_BLK + "attn_k.bias", _BLK + "attn_v.bias"), ("rope_k", ""), when="bias"),
    Rule(("blocks.{i}.attn.proj.weight",), (_BLK + "attn_output.weight",)),
    Rule(("blocks.{i}.attn.proj.bias",), (_BLK + "attn_output.bias",), when="bias"),
    Rule(("blocks.{i}.norm_2.weight",), (_BLK + "ffn_norm.weight",)),
    Rule(("blocks.{i}.mlp.fc.weight",), (_BLK + "ffn_gate.weight", _BLK + "ffn_up.weight")),
    Rule(("blocks.{i}.mlp.fc.bias",), (_BLK + "ffn_gate.bias", _BLK + "ffn_up.bias"), when="bias"),
    Rule(("blocks.{i}.mlp.proj.weight",), (_BLK + "ffn_down.weight",)),
    Rule(("blocks.{i}.mlp.proj.bias",), (_BLK + "ffn_down.bias",), when="bias"),
    Rule(("norm_f.weight",), ("output_norm.weight",)),
    Rule(("lm_head.weight",), ("output.weight",), when="untied"),
), _GGUF_KEYS)

GPT2_GGUF = NameTable("GGUF gpt2", (
    Rule(("embed.wte.weight",), ("token_embd.weight",)),
    Rule(("embed.wpe.weight",), ("position_embd.weight",)),
    Rule(("blocks.{i}.norm_1.weight",), (_BLK + "attn_norm.weight",)),
    Rule(("blocks.{i}.norm_1.bias",), (_BLK + "attn_norm.bias",)),
    Rule(("blocks.{i}.attn.q.weight", "blocks.{i}.attn.kv.weight"), (_BLK + "attn_qkv.weight",)),
    Rule(("blocks.{i}.attn.q.bias", "blocks.{i}.attn.kv.bias"), (_BLK + "attn_qkv.bias",)),
    Rule(("blocks.{i}.attn.proj.weight",), (_BLK + "attn_output.weight",)),
    Rule(("blocks.{i}.attn.proj.bias",), (_BLK + "attn_output.bias",)),
    Rule(("blocks.{i}.norm_2.weight",), (_BLK + "ffn_norm.weight",)),
    Rule(("blocks.{i}.norm_2.bias",), (_BLK + "ffn_norm.bias",)),
    Rule(("blocks.{i}.mlp.fc.weight",), (_BLK + "ffn_up.weight",)),
    Rule(("blocks.{i}.mlp.fc.bias",), (_BLK + "ffn_up.bias",)),
    Rule(("blocks.{i}.mlp.proj.weight",), (_BLK + "ffn_down.weight",)),
    Rule(("blocks.{i}.mlp.proj.bias",), (_BLK + "ffn_down.bias",)),
    Rule(("norm_f.weight",), ("output_norm.weight",)),
    Rule(("norm_f.bias",), ("output_norm.bias",)),
    Rule(("lm_head.weight",), ("output.weight",), when="untied"),
), _GGUF_KEYS)


def shape_of(config: ModelConfig) -> str:
    """Which family a config's switches make: "gpt2" (learned positions, LayerNorm, GELU, biases)
    or "llama" (RoPE, RMSNorm, SwiGLU); anything else has no equivalent elsewhere."""
    if config.name != "gpt" or config.qk_norm or config.n_classes is not None or config.logit_softcap is not None:
        wrong = "a classifier" if config.n_classes is not None else f"model.name={config.name!r}" \
            if config.name != "gpt" else "model.qk_norm=True" if config.qk_norm else \
            f"model.logit_softcap={config.logit_softcap}"
        raise LlmkitError(f"this model is neither GPT-2- nor Llama-shaped: {wrong}")
    gpt2 = {"positions": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}
    llama = {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu"}
    if all(getattr(config, k) == v for k, v in gpt2.items()):
        if config.kv_heads != config.n_head or config.mlp_hidden not in (None, 4 * config.n_embd):
            raise LlmkitError("this model is not GPT-2-shaped: GPT-2 has one key/value head per head and an "
                              "MLP of 4 * n_embd")
        return "gpt2"
    if all(getattr(config, k) == v for k, v in llama.items()):
        return "llama"
    wrong = [f"model.{k}={getattr(config, k)!r} (GPT-2 has {v!r})" for k, v in gpt2.items() if getattr(config, k) != v]
    raise LlmkitError("this model is not GPT-2-shaped: " + "; ".join(wrong)
                      + " — nor Llama-shaped (positions rope, norm rmsnorm, mlp swiglu)")


def shapes_of(config: ModelConfig) -> dict[str, torch.Size]:
    """The shape of every tensor of the model a config describes (built on the meta device: no memory)."""
    from llmkit.models import meta_model

    return {name: t.shape for name, t in meta_model(config).state_dict().items()}
