"""The memory layout of a model's weights while it decodes, chosen for the batch.

Decoding one sequence multiplies each weight matrix W (out, in) by one vector: every weight is read
once per token, so the speed is the speed of that read. nn.Linear stores W row by row, and for a
single vector PyTorch's CPU kernels (MKL, fp32) read that layout at about 10 GB/s; the same
numbers stored column by column (W.t().contiguous().t(): the same tensor, transposed in memory)
are read at about 14 GB/s. Measured on SmolLM2-135M here (scripts/bench_generate.py, 151
matrices, fp32): 55 ms per token for rows, 39 ms for columns.

With several sequences the multiply becomes a small matrix product, (B, in) @ (in, out), and on a
CPU its arithmetic starts to count as much as the read: MKL's kernel for 8 rows reaches about half
of a core's peak. oneDNN (PyTorch's other CPU library) can hold W in its own *blocked* layout,
tile by tile in the order its kernel walks them, so that the product streams the weights without
rearranging them at every call: on SmolLM2's 151 matrices, 8 rows took 61 ms against 87 from
rows, one thread (scripts/bench_kernels.py --rows 8). That copy is `PackedLinear`. Only inference
can use it (oneDNN's kernel has no backward pass), so only a caller that decodes with the model
and nothing else asks for it: the server's batcher, which puts the plain layout back when it stops.

    rows in the batch    the batcher (packed=True)    generate, chat, eval
    1                    columns                      columns
    2                    packed                       columns
    3 or more            packed                       rows

("packed": the matrices of PACKED_MIN weights or more; smaller ones lose more to oneDNN's cost per
call than they gain, and stay in rows. A model with none, such as a char model, is not packed.)

Columns and rows change only the storage: the Parameter objects (and a tied head's sharing with
the embedding) stay, and every result is the same. Packing takes each matrix out of the model
meanwhile and gives it back exactly; its products add in another order, which moved SmolLM2's
logits by at most 9e-5 (of values around 10). A model decoding through compiled blocks
(llmkit/inference/compiled.py) takes the columns layout for one row only, at every step, and is
never packed: its graphs are traced for the weights' strides, and its two graphs (one row, more
rows) then meet one layout each (a server whose batch crosses from one row to two copies the
matrices each time).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from llmkit.heap import return_freed_memory

COLUMNS_UP_TO = 2  # batches this small decode faster from the columns layout (fp32 on a CPU)
PACKED_FROM = 2  # batches this large decode faster from oneDNN's blocked copy (fp32 on a CPU)
PACKED_FOR = 8  # the batch oneDNN tunes its blocks for: measured good from 2 to 16 rows
# Matrices smaller than this stay plain (rows): a call to oneDNN costs some 30 us more than MKL's,
# more than a small matrix gains. Measured on 2 cores, one thread (scripts/bench_kernels.py
# --shapes), packed against plain at 2-8 rows: 128x128 0.17-0.43x as fast, 384x384 0.88-1.31x,
# 576x576 1.09-1.18x, 3072x576 0.91-1.51x (1.48x at 8).
PACKED_MIN = 1 << 18


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinear(nn.Module):
    """An nn.Linear, for inference, with its matrix in oneDNN's blocked layout (an opaque tensor).
    The plain layer is kept to be put back; its weight gives up its storage unless another module
    shares it (a head tied to the embedding, which must still look rows up: then the packed copy is
    extra memory, 113 MB for SmolLM2 in fp32)."""

    def __init__(self, linear: nn.Linear, shared: bool):
        super().__init__()
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_FOR)  # (out, in), blocked
        self.bias = linear.bias  # the same Parameter
        self.plain = (linear,)  # in a tuple: not a submodule, so its weight is out of the model meanwhile
        if not shared:
            linear.weight.data = weight.new_empty(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def unpack(self) -> nn.Linear:
        """The plain layer, its weight back in rows (oneDNN's copy holds every value exactly)."""
        linear = self.plain[0]
        if linear.weight.numel() == 0:
            linear.weight.data = self.packed.to_dense()
        return linear


def layout_for(model: nn.Module, batch: int, packed: bool = False) -> str:
    """"columns", "packed" or "rows": the layout `model` decodes `batch` rows fastest from."""
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        return "rows"
    if getattr(model, "compiled_decoding", False):
        return "columns" if batch == 1 else "rows"
    if packed and batch >= PACKED_FROM and packing_available() and _packs(model):
        return "packed"
    return "columns" if batch <= COLUMNS_UP_TO else "rows"


def _packs(model: nn.Module) -> bool:
    """Whether `model` has a matrix worth packing (a char model's are all too small)."""
    return any(isinstance(m, PackedLinear) or isinstance(m, nn.Linear) and _worth_packing(m) for m in model.modules())


def _worth_packing(linear: nn.Linear) -> bool:
    return linear.weight.numel() >= PACKED_MIN


def prefer_layout(model: nn.Module, batch: int, packed: bool = False) -> None:
    """Store the model's linear weights in the layout that decodes `batch` rows fastest; `packed`
    allows oneDNN's copy (the caller decodes with the model and nothing else until it asks again)."""
    layout = layout_for(model, batch, packed)
    if getattr(model, "_weights_layout", "rows") == layout:
        return
    with torch.no_grad():
        _set_layout(model, layout)
    model._weights_layout = layout


def _set_layout(model: nn.Module, layout: str) -> None:
    """Each matrix in turn from its layout to `layout`, so that only one is ever copied at a time;
    then the heap's freed pages go back (a switch frees and allocates every matrix)."""
    holders = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))  # 2: a tied head
    # (PackedLinear modules are not listed: held here, their copies would outlive their unpacking)
    parents = [m for m in model.modules() if not isinstance(m, PackedLinear)]
    for parent in parents:
        for name, module in list(parent.named_children()):
            if isinstance(module, PackedLinear):
                module = module.unpack()
                setattr(parent, name, module)
            if not isinstance(module, nn.Linear):
                continue
            weight = module.weight.data
            if layout == "packed" and _worth_packing(module):  # (a plain model: none is packed twice)
                setattr(parent, name, PackedLinear(module, shared=holders[id(module.weight)] > 1))
            elif layout == "columns" and weight.is_contiguous():
                module.weight.data = weight.t().contiguous().t()
            elif layout in ("rows", "packed") and not weight.is_contiguous():
                module.weight.data = weight.contiguous()
    return_freed_memory()
