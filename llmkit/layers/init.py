"""GPT-2's initialisation: every weight matrix and embedding from N(0, 0.02), biases zero, norm
gains one, and the projections that write into the residual stream (attention and MLP `proj`)
scaled by 1/sqrt(2 * n_layer), so the stream's variance does not grow with depth (two writes per
block). With `zero_proj` (model.zero_init_proj) those projections start at zero instead, as in
modded-nanoGPT: each block then starts as the identity, and its gradient still reaches `proj`
(through the input it multiplies), so the zeros are left after the first step."""

from __future__ import annotations

import math

from torch import nn

from llmkit.layers.positions import LearnedPositions


def init_weights(model: nn.Module, n_layer: int, zero_proj: bool = False) -> None:
    if next(model.parameters()).is_meta:  # shapes only (weights come later, or never): nothing to draw
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding, LearnedPositions)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            if zero_proj:
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
