"""The memory layout of a model's weights while it decodes, chosen for the batch.

Decoding one sequence multiplies each weight matrix W (out, in) by one vector: every weight is read
once per token, so the speed is the speed of that read. nn.Linear stores W row by row, and for a
single vector PyTorch's CPU kernels (MKL, fp32) read that layout at about 10 GB/s; the same
numbers stored column by column (W.t().contiguous().t(): the same tensor, transposed in memory)
are read at about 14 GB/s. Measured on SmolLM2-135M here (scripts/bench_generate.py, 151
matrices, fp32): 55 ms per token for rows, 39 ms for columns. With four or more sequences the
rows layout is faster again (about 20%), and bf16 gains nothing, so the layout follows the batch.

Only the storage changes: the Parameter objects (and a tied head's sharing with the embedding)
stay, and every result is the same. A model decoding through compiled blocks
(llmkit/inference/compiled.py) takes the columns layout for one row only, at every step: its
graphs are traced for the weights' strides, and its two graphs (one row, more rows) then meet one
layout each (a server whose batch crosses from one row to two copies the matrices each time).
"""

from __future__ import annotations

import torch
from torch import nn

COLUMNS_UP_TO = 2  # batches this small decode faster from the columns layout (fp32 on a CPU)


def prefer_layout(model: nn.Module, batch: int) -> None:
    """Store the model's linear weights in the layout that decodes `batch` rows fastest."""
    parameter = next(model.parameters())
    up_to = 1 if getattr(model, "compiled_decoding", False) else COLUMNS_UP_TO
    columns = parameter.device.type == "cpu" and parameter.dtype == torch.float32 and batch <= up_to
    if getattr(model, "_weights_by_columns", False) == columns:
        return
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                weight = module.weight.data
                if columns and weight.is_contiguous():
                    module.weight.data = weight.t().contiguous().t()
                elif not columns and not weight.is_contiguous():
                    module.weight.data = weight.contiguous()
    model._weights_by_columns = columns
