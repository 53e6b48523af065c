"""Rung 5, GPT: the decoder-only transformer of GPT-2, with the modern parts as recipe switches.

It is the block stack of the previous rung plus what makes it train well at depth and size:
- weight tying: the output head reuses the token embedding (fewer parameters, and one vector
  space for reading and writing tokens);
- GPT-2's initialisation (llmkit/layers/init.py), with residual projections scaled by depth;
- dropout after embeddings, attention and MLP.
Positions, norm, MLP, key/value heads, QK-norm and biases come from ModelConfig, so
`model.positions=rope model.norm=rmsnorm model.mlp=swiglu model.n_kv_head=1` is a Llama-style model.
"""

from __future__ import annotations

from torch import nn

from llmkit.config import ModelConfig
from llmkit.layers.init import init_weights
from llmkit.models.single_block_transformer import SingleBlockTransformer


class GPT(SingleBlockTransformer):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # as GPT-2: no head bias
        self.tie_weights()
        init_weights(self, config.n_layer, config.zero_init_proj)

    def tie_weights(self) -> None:
        """The head and the token embedding become one tensor again (also after weights are
        assigned one by one, which would part them)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embed.wte.weight
