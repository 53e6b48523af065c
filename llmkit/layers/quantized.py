"""Weight-only quantization: linear weights stored as int8 rows or int4 groups, the rest in float32.

## int8

Decoding one token reads every weight once (llmkit/inference/layout.py), so on a CPU the speed of
a decode is the speed of that read, and int8 weights are a quarter of fp32's bytes. Each row w of a
weight W (out, in), the weights of one output feature, is stored as

    s = max|w| / 127,    q = round(w / s)  in [-127, 127]         (q: int8, s: one float per row)

so a weight is off by at most s / 2, and the largest of each row is exact. While decoding, the
product y = x W^T = (x q^T) * s is computed by PyTorch's own kernel
(`torch.ops.aten._weight_int8pack_mm`), which reads the int8 rows directly, with x rounded to
bfloat16 on the way in (the kernel is fast only for that). A long prompt (more than KERNEL_ROWS
rows) is multiplied by the dequantized matrix instead. Norms, attention and the KV cache stay in
float32; only the matrices change.

A tied token embedding is the head's matrix read by rows, and the head's scales are per row (per
token) too: the embedding of token t is q[t] * s[t], so both share one int8 table.

## int4
Each run of GROUP = 32 weights of a row (one output feature) gets its own scale and offset, the
scheme of llama.cpp's Q4_1 blocks:

    s = (max - min) / 15,    q = round((w - min) / s)  in 0 .. 15     (q: 4 bits, two per byte)

so w ~ q * s + min. PyTorch's kernel (`torch.ops.aten._weight_int4pack_mm_for_cpu`) reads the
packed q with one (scale, zero) pair per group, both bfloat16, as w = (q - 8) * scale + zero; so
zero = min + 8 s, which is small for a group centred near 0 and loses little to bfloat16. A Q4_1
file's blocks are exactly this (each holds its own minimum at q = 0 and maximum at q = 15), so
quantizing its dequantized weights again gives back the file's q, s and min: `--dtype int4` of a
Q4_1 GGUF keeps the file's own 4-bit weights. The kernel takes any number of rows (a long prompt
runs through it too, about 2x the time of a float32 product), needs the input width to be a
multiple of 32 and the output width of 16; a matrix that is not stays int8. The head (and the
embedding it shares) stays int8, as a Q4_1 file keeps it at 8 bits (Q8_0).

Quantizing happens tensor by tensor while a model is read (`quantizer`), so loading never holds
the whole model in float32.
"""

from __future__ import annotations

import torch
from torch import nn

SCALE = "_scale"  # the state-dict suffix of an int8 weight's row scales: `blocks.0.attn.q.weight_scale`
GROUPS = "_groups"  # the state-dict suffix of an int4 weight's (in / GROUP, out, 2) scales and zeros
GROUP = 32  # int4: weights per group (along a row), each group with its own scale and zero
# Up to this many rows at once the int8 kernel is used, beyond it a dequantized dense matmul. The
# kernel is vectorised for bfloat16 inputs only (float32 ones take 4-8x longer here), so decoding
# rows go in as bfloat16; its time grows with the rows, the dense one's hardly: measured on
# SmolLM2's shapes on a 2-core AVX-512 CPU, they cross near 100 rows.
KERNEL_ROWS = 64


def quantize_rows(weight: torch.Tensor, slab: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, s): W (out, in) as int8 rows and one float32 scale per row, W ~ q * s[:, None]. Done
    `slab` rows at a time, so the float temporaries are a slab's, not the matrix's (the token
    embedding's would be 113 MB each)."""
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], slab):
        w = weight[start:start + slab].detach().float()
        s = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        q[start:start + slab] = torch.round(w / s[:, None]).clamp_(-127, 127)
        scale[start:start + slab] = s
    return q, scale


def quantize_groups(weight: torch.Tensor, slab: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed, groups): W (out, in) as 4-bit q in the kernel's packed layout, (out, in / 2) uint8,
    and (in / GROUP, out, 2) bfloat16 (scale, zero) pairs, W ~ (q - 8) * scale + zero per group.
    Done `slab` rows at a time, so the float temporaries are a slab's."""
    out, width = weight.shape
    q = torch.empty(out, width, dtype=torch.int32)
    groups = torch.empty(width // GROUP, out, 2, dtype=torch.bfloat16)
    for start in range(0, out, slab):
        w = weight[start:start + slab].detach().float().reshape(-1, width // GROUP, GROUP)  # (rows, groups, 32)
        low, high = w.amin(dim=-1), w.amax(dim=-1)
        scale = ((high - low) / 15).clamp(min=torch.finfo(torch.float32).tiny)
        q[start:start + slab] = torch.round((w - low[..., None]) / scale[..., None]).clamp_(0, 15).reshape(-1, width).int()
        groups[:, start:start + slab] = torch.stack([scale, low + 8 * scale], dim=-1).transpose(0, 1).bfloat16()
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1), groups


def int4_fits(out_features: int, in_features: int) -> bool:
    """Whether the int4 kernel takes a matrix of this shape (else it stays int8)."""
    return in_features % GROUP == 0 and out_features % 16 == 0


class Int8Linear(nn.Module):
    """y = x W^T + b with W held as int8 rows and their scales (buffers `weight`, `weight_scale`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (N, in): the kernel takes 2-D inputs
        if flat.shape[0] <= KERNEL_ROWS:  # decoding: the int8 rows are read as they are
            y = torch.ops.aten._weight_int8pack_mm(flat.to(torch.bfloat16).contiguous(), self.weight,
                                                   self._kernel_scale()).to(x.dtype)
        else:  # a long prompt: the arithmetic dominates, and a dense matmul of the dequantized matrix wins
            y = flat @ (self.weight.to(x.dtype) * self.weight_scale.to(x.dtype)[:, None]).T
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def _kernel_scale(self) -> torch.Tensor:
        """The scales in bfloat16, as the kernel takes them: made once, not at every step."""
        made = self.__dict__.get("_bf16_scale")
        if made is None or made[0] is not self.weight_scale:
            made = self.__dict__["_bf16_scale"] = (self.weight_scale, self.weight_scale.to(torch.bfloat16))
        return made[1]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int4Linear(nn.Module):
    """y = x W^T + b with W held as packed 4-bit groups (buffers `weight`, `weight_groups`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("weight_groups", torch.empty(in_features // GROUP, out_features, 2, dtype=torch.bfloat16,
                                                          device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, in): the kernel is fast for bfloat16 only
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, GROUP, self.weight_groups).to(x.dtype)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def _apply(self, fn, recurse: bool = True):
        """model.to(dtype) converts every float buffer; the groups stay bfloat16, the kernel's dtype."""
        super()._apply(fn, recurse)
        self.weight_groups = self.weight_groups.to(torch.bfloat16)
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4"


class Int8Embedding(nn.Module):
    """Token vectors from int8 rows: row t times its scale (the table a tied head shares)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None):
        super().__init__()
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(num_embeddings, device=device))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].float() * self.weight_scale[ids, None]


def quantized_names(model: nn.Module, kind: str = "int8") -> dict[str, str]:
    """The weights `kind` ("int8" or "int4") replaces in `model` (a built or meta model), each
    with the width it gets: every nn.Linear's, and the token embedding's when the head shares it.
    With int4, the blocks' matrices that the kernel takes are int4 and the rest int8."""
    names = {}
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear):
            four = kind == "int4" and path.startswith("blocks.") and int4_fits(module.out_features, module.in_features)
            names[f"{path}.weight"] = "int4" if four else "int8"
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "embed", None), "wte", None)
    if head is not None and embed is not None and head.weight is embed.weight:
        names["embed.wte.weight"] = "int8"
    return names


def quantizer(names: dict[str, str]):
    """A function (name, tensor) -> the state-dict entries it becomes: int8 rows and scales, or
    int4 groups, for the weights in `names`; the tensor itself for the rest."""
    def convert(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if name not in names or tensor.dim() != 2:
            return {name: tensor}
        if names[name] == "int4":
            packed, groups = quantize_groups(tensor)
            return {name: packed, name + GROUPS: groups}
        q, scale = quantize_rows(tensor)
        return {name: q, name + SCALE: scale}
    return convert


def stored_kinds(weights) -> dict[str, str]:
    """The quantized weights among state-dict `weights` names, each with its kind."""
    kinds = {}
    for name in weights:
        for suffix, kind in ((SCALE, "int8"), (GROUPS, "int4")):
            if name.endswith(suffix):
                kinds[name.removesuffix(suffix)] = kind
    return kinds


def make_quantized(model: nn.Module, names: dict[str, str]) -> None:
    """Swap the modules of the weights `names` for their int8 or int4 forms (empty: the state dict
    fills them); a tied head and embedding keep sharing one table."""
    modules = dict(model.named_modules())
    for name in sorted(names):
        path = name.removesuffix(".weight")
        old = modules[path]
        parent_path, _, attr = path.rpartition(".")
        parent = modules[parent_path] if parent_path else model
        device = old.weight.device
        if isinstance(old, nn.Linear):
            kind = Int4Linear if names[name] == "int4" else Int8Linear
            new = kind(old.in_features, old.out_features, old.bias is not None, device)
        else:
            new = Int8Embedding(old.num_embeddings, old.embedding_dim, device)
        setattr(parent, attr, new)


def quantize_model(model: nn.Module, kind: str = "int8") -> nn.Module:
    """A built float model's matrices to int8 (or int4, `quantized_names`), in place (a tied head
    and embedding stay one table)."""
    names = quantized_names(model, kind)
    convert = quantizer(names)
    entries, done = {}, {}
    for key, value in model.state_dict().items():
        if key in names:
            if value.data_ptr() not in done:  # a tied table is quantized once: {suffix: tensor}
                done[value.data_ptr()] = {name.removeprefix(key): t for name, t in convert(key, value).items()}
            entries.update({key + suffix: tensor for suffix, tensor in done[value.data_ptr()].items()})
        else:
            entries[key] = value
    make_quantized(model, names)
    model.load_state_dict(entries, assign=True)
    return model
