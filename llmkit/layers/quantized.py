"""Weight-only int8: every linear weight stored as int8, with one scale per output row.

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

Quantizing happens tensor by tensor while a model is read (`quantizer`), so loading never holds
the whole model in float32.
"""

from __future__ import annotations

import torch
from torch import nn

SCALE = "_scale"  # the state-dict suffix of a quantized weight's row scales: `blocks.0.attn.q.weight_scale`
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


class Int8Embedding(nn.Module):
    """Token vectors from int8 rows: row t times its scale (the table a tied head shares)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None):
        super().__init__()
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(num_embeddings, device=device))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].float() * self.weight_scale[ids, None]


def quantized_names(model: nn.Module) -> set[str]:
    """The weights int8 replaces in `model` (a built or meta model): every nn.Linear's, and the
    token embedding's when the head shares it."""
    names = {f"{path}.weight" for path, module in model.named_modules() if isinstance(module, nn.Linear)}
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "embed", None), "wte", None)
    if head is not None and embed is not None and head.weight is embed.weight:
        names.add("embed.wte.weight")
    return names


def quantizer(names: set[str]):
    """A function (name, tensor) -> the state-dict entries it becomes: int8 rows and scales for
    the weights in `names`, the tensor itself for the rest."""
    def convert(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if name not in names or tensor.dim() != 2:
            return {name: tensor}
        q, scale = quantize_rows(tensor)
        return {name: q, name + SCALE: scale}
    return convert


def make_int8(model: nn.Module, names: set[str]) -> None:
    """Swap the modules of the weights `names` for their int8 forms (empty: the state dict fills
    them); a tied head and embedding keep sharing one table."""
    modules = dict(model.named_modules())
    for name in sorted(names):
        path = name.removesuffix(".weight")
        old = modules[path]
        parent_path, _, attr = path.rpartition(".")
        parent = modules[parent_path] if parent_path else model
        device = old.weight.device
        if isinstance(old, nn.Linear):
            new = Int8Linear(old.in_features, old.out_features, old.bias is not None, device)
        else:
            new = Int8Embedding(old.num_embeddings, old.embedding_dim, device)
        setattr(parent, attr, new)


def quantize_model(model: nn.Module) -> nn.Module:
    """A built float model's matrices to int8, in place (a tied head and embedding stay one table)."""
    names = quantized_names(model)
    entries, done = {}, {}
    for key, value in model.state_dict().items():
        if key in names:
            if value.data_ptr() not in done:  # a tied table is quantized once
                done[value.data_ptr()] = quantize_rows(value)
            entries[key], entries[key + SCALE] = done[value.data_ptr()]
        else:
            entries[key] = value
    make_int8(model, names)
    model.load_state_dict(entries, assign=True)
    return model
