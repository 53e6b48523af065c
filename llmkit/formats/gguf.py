"""GGUF, llama.cpp's file format, in and out, through the `gguf` library (llama.cpp's own Python
package: its reader, writer, quantizer and dequantizer).

A GGUF file is metadata (architecture, sizes, the tokenizer, the chat template) and tensors, each
stored as F32, F16, BF16 or a block quantization:

    Q8_0   blocks of 32 weights: one fp16 scale d and 32 int8 q      w = d * q          8.5 bits/weight
    Q4_0   blocks of 32: one fp16 d and 32 4-bit q in 0..15            w = d * (q - 8)    4.5 bits/weight
    Q4_1   blocks of 32: fp16 d and min m, 32 4-bit q                  w = d * q + m      5 bits/weight
    K-quants (Q2_K .. Q6_K): blocks of 256 in sub-blocks, with quantized scales

Reading dequantizes every tensor to the dtype asked for and renames it through a name table
(llmkit/formats/tables.py): llama.cpp's `llama` architecture is llmkit's gpt with RoPE, RMSNorm and
SwiGLU, its `gpt2` is GPT-2. llama.cpp's converter stores the query and key rows of each head in
its own rotary order (pairs instead of halves); the table puts them back (`rope_q`, `rope_k`).
Writing is the reverse, in F32, F16, Q8_0 or Q4_1 (whose token embedding and head stay Q8_0, as
llama.cpp keeps them at 8 bits).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from llmkit.config import ConfigError, ModelConfig
from llmkit.errors import LlmkitError
from llmkit.formats.tables import GPT2_GGUF, LLAMA_GGUF, NameTable, shape_of, shapes_of
from llmkit.heap import return_freed_memory

TABLES: dict[str, NameTable] = {"llama": LLAMA_GGUF, "gpt2": GPT2_GGUF}
WRITE_TYPES = ("f32", "f16", "q8_0", "q4_1")
MAGIC = b"GGUF"
_SLAB_VALUES = 1 << 20  # dequantized a million values (4 MB of float32) at a time
_TRIM_BYTES = 32 << 20  # the heap is trimmed after this much (each trim costs milliseconds)


def _reader(path: Path):
    """The gguf library's reader over the file's bytes as a plain array: slicing numpy's memmap
    subclass costs a Python object per metadata string (3 s for SmolLM2's 98K tokens and merges);
    a plain view of the same mapping reads them in 0.7 s."""
    from gguf import GGUFReader

    class Reader(GGUFReader):
        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = np.asarray(value)  # the same mapped bytes, without the subclass

    return Reader(path)


def is_gguf(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_gguf(path: str | Path, dtype: torch.dtype = torch.float32, converter=None):
    """A GGUF file as a Checkpoint: config, weights under llmkit's names (dequantized), tokenizer.
    `converter(config)`, if given, makes the function each tensor goes through as it is read
    (llmkit/layers/quantized.py: to int8)."""
    from llmkit.checkpoint import Checkpoint
    from llmkit.data.hf_tokenizer import HFTokenizer

    path = Path(path)
    try:
        reader = _reader(path)
        fields = {name: field.contents() for name, field in reader.fields.items()}
    except (ValueError, IndexError, KeyError, OSError, TypeError) as e:
        raise LlmkitError(f"{path} is not a readable GGUF file: {str(e)[:160] or type(e).__name__}",
                          hint="it is truncated or not GGUF; fetch it again (llmkit download NAME --force)") from None
    arch = fields.get("general.architecture")
    if arch not in TABLES:
        raise LlmkitError(f"{path} holds a {arch!r} model; llmkit reads the GGUF architectures "
                          f"{', '.join(sorted(TABLES))}")
    tensors = {t.name: t for t in reader.tensors}
    config = config_from_gguf(arch, fields, tensors, path)
    tokenizer = HFTokenizer.from_gguf(fields, config.vocab_size)
    convert = converter(config) if converter is not None else None
    weights = TABLES[arch].to_ours(_Dequantized(tensors, dtype, path), config, shapes_of(config), convert)
    return_freed_memory()
    quant = sorted({t.tensor_type.name for t in reader.tensors})
    return Checkpoint(config, weights, tokenizer, data={"tokens": None, "command": f"(weights from {path})"},
                      origin={"kind": "imported", "from": str(path), "format": "gguf", "tensor_types": quant},
                      path=path)


class _Dequantized(Mapping):
    """The file's tensors by name, each dequantized when it is looked up (and not kept): the
    memory of the result, not of two copies. (Dequantizing ahead on a second thread gained
    nothing here: the gguf library's dequantizer holds the GIL between its numpy calls.)"""

    def __init__(self, tensors: dict, dtype: torch.dtype, path: Path):
        self.tensors, self.dtype, self.path = tensors, dtype, path
        self.untrimmed = 0  # bytes dequantized since the heap was last trimmed

    def __getitem__(self, name: str) -> torch.Tensor:
        if self.untrimmed > _TRIM_BYTES:  # earlier tensors' float temporaries, before this one's:
            return_freed_memory()  # else loading SmolLM2 in int8 peaked at 720-910 MB, not 640
            self.untrimmed = 0
        values = _dequantize(self.tensors[name], self.dtype, self.path)
        self.untrimmed += values.numel() * values.element_size()
        return values

    def __contains__(self, name: object) -> bool:  # Mapping's would dequantize the tensor to answer
        return name in self.tensors

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


def _dequantize(tensor, dtype: torch.dtype, path: Path) -> torch.Tensor:
    """One tensor in `dtype`, dequantized a slab of rows at a time into its final place: the gguf
    library's dequantizer makes several float temporaries the size of its input, which for the
    token embedding (49,152 x 576) would be hundreds of MB at the peak of loading."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dims fastest first
    kind = GGMLQuantizationType(tensor.tensor_type)
    data = tensor.data  # quantized: (rows..., bytes per row) uint8; F32/F16: the values themselves
    rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
    out = torch.empty(rows.shape[0], math.prod(shape) // rows.shape[0], dtype=dtype)
    step = max(1, _SLAB_VALUES // out.shape[1])
    for start in range(0, rows.shape[0], step):
        try:
            values = dequantize(rows[start:start + step], kind)
        except NotImplementedError:
            raise LlmkitError(f"{path}: tensor {tensor.name} is stored as {kind.name}, which the gguf "
                              "library cannot dequantize", hint="use a file quantized as F16, Q8_0, Q4_0, Q4_1 or a K-quant") from None
        except (ValueError, IndexError) as e:
            raise LlmkitError(f"{path}: tensor {tensor.name} is damaged or truncated: {str(e)[:120]}") from None
        slab = out[start:start + step]
        if values.size != slab.numel():
            raise LlmkitError(f"{path}: tensor {tensor.name} is damaged: its data does not hold {shape}")
        if not values.flags.writeable:  # an F32 tensor comes back as a view of the (read-only) file
            values = values.copy()
        slab.copy_(torch.from_numpy(np.ascontiguousarray(values)).reshape(slab.shape))
    return out.reshape(shape)


def config_from_gguf(arch: str, fields: dict, tensors: dict, path: Path) -> ModelConfig:
    """The ModelConfig a GGUF's metadata describes, every field checked."""
    def get(key: str, default=None, required: bool = True):
        value = fields.get(f"{arch}.{key}", default)
        if value is None and required:
            problems.append(f"{arch}.{key}: missing")
        return value

    problems: list[str] = []
    n_embd, n_head = get("embedding_length"), get("attention.head_count")
    common = {"name": "gpt", "n_layer": get("block_count"), "n_embd": n_embd, "n_head": n_head,
              "block_size": get("context_length"), "dropout": 0.0,
              "vocab_size": get("vocab_size", len(fields.get("tokenizer.ggml.tokens") or []) or None),
              "tie_embeddings": "output.weight" not in tensors, "mlp_hidden": get("feed_forward_length")}
    if arch == "llama":
        head_dim = n_embd // n_head if n_embd and n_head else None
        rope_dim = get("rope.dimension_count", head_dim, required=False)
        if rope_dim != head_dim:
            problems.append(f"llama.rope.dimension_count: {rope_dim} rotates part of a head of {head_dim}; "
                            "llmkit's RoPE turns whole heads")
        if fields.get("llama.rope.scaling.type", "none") not in ("none", None):
            problems.append(f"llama.rope.scaling.type: {fields['llama.rope.scaling.type']} is not implemented")
        biased = {name.rsplit(".", 2)[-2] for name in tensors if name.endswith(".bias")}
        if biased and biased != {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}:
            problems.append(f"biases on {', '.join(sorted(biased))} only: llmkit's bias switch covers every linear layer")
        switches = {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": bool(biased),
                    "n_kv_head": get("attention.head_count_kv", n_head, required=False),
                    "norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5, required=False)),
                    "rope_base": float(get("rope.freq_base", 10000.0, required=False))}
    else:
        switches = {"positions": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True,
                    "norm_eps": float(get("attention.layer_norm_epsilon", 1e-5, required=False))}
    if problems:
        raise ConfigError(problems, where=f"{path} (GGUF metadata)")
    try:
        return ModelConfig(**common, **switches)
    except ConfigError as e:
        raise ConfigError(e.problems, where=f"{path} (GGUF metadata)") from None


# --- writing ------------------------------------------------------------------------------------------


def write_gguf(model: torch.nn.Module, config: ModelConfig, tokenizer, path: Path, tensor_type: str = "f16",
               name: str = "llmkit") -> Path:
    """`model` as a GGUF file that llama.cpp (and transformers' GGUF loader) reads: F32, F16, Q8_0
    or Q4_1 weights (norms and biases stay F32, as llama.cpp's converter keeps them)."""
    import gguf

    from llmkit.files import atomic_path

    if tensor_type not in WRITE_TYPES:
        raise LlmkitError(f"--type must be one of {', '.join(WRITE_TYPES)}, got '{tensor_type}'")
    arch = shape_of(config)
    fields = _tokenizer_fields(tokenizer)
    state = TABLES[arch].to_theirs({k: v.detach().float().cpu() for k, v in model.state_dict().items()}, config)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_name(name)
        writer.add_block_count(config.n_layer)
        writer.add_context_length(config.block_size)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.hidden)
        writer.add_head_count(config.n_head)
        writer.add_vocab_size(config.vocab_size)
        if arch == "llama":
            writer.add_head_count_kv(config.kv_heads)
            writer.add_rope_dimension_count(config.head_dim)
            writer.add_rope_freq_base(config.rope_base)
            writer.add_layer_norm_rms_eps(config.norm_eps)
        else:
            writer.add_layer_norm_eps(config.norm_eps)
        writer.add_file_type({"f32": 0, "f16": 1, "q4_1": 3, "q8_0": 7}[tensor_type])
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(fields["pre"])
        writer.add_token_list(fields["tokens"])
        writer.add_token_types(fields["token_types"])
        writer.add_token_merges(fields["merges"])
        for key, add in (("bos_id", writer.add_bos_token_id), ("eos_id", writer.add_eos_token_id),
                         ("pad_id", writer.add_pad_token_id)):
            if fields[key] is not None:
                add(int(fields[key]))
        writer.add_add_bos_token(False)
        if fields["chat_template"]:
            writer.add_chat_template(fields["chat_template"])
        for tensor_name, tensor in state.items():
            _add_tensor(writer, tensor_name, tensor.numpy(), tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _add_tensor(writer, name: str, array: np.ndarray, tensor_type: str) -> None:
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    matrix = array.ndim == 2
    if tensor_type == "f32" or not matrix:
        writer.add_tensor(name, array.astype(np.float32))
    elif tensor_type == "f16":
        writer.add_tensor(name, array.astype(np.float16))
    elif array.shape[-1] % 32:  # Q8_0 and Q4_1 pack rows in blocks of 32
        writer.add_tensor(name, array.astype(np.float16))
    else:
        eight = tensor_type == "q8_0" or name in ("token_embd.weight", "output.weight")
        kind = GGMLQuantizationType.Q8_0 if eight else GGMLQuantizationType.Q4_1
        writer.add_tensor(name, quantize(array.astype(np.float32), kind), raw_dtype=kind)


def _tokenizer_fields(tokenizer) -> dict:
    from llmkit.data.hf_tokenizer import HFTokenizer, from_byte_pair

    if tokenizer.kind in ("bpe", "gpt2"):
        tokenizer = from_byte_pair(tokenizer)
    if not isinstance(tokenizer, HFTokenizer):
        raise LlmkitError(f"a {tokenizer.kind} tokenizer has no GGUF form: llama.cpp reads byte-level BPE tokenizers",
                          hint="train with data.tokenizer=bpe (or gpt2) to export to GGUF")
    return tokenizer.gguf_fields()
