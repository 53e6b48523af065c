"""Encoder-decoder transformer (the original "Attention Is All You Need" layout, pre-norm).

    source ids (B, S) -> embeddings -> n_layer bidirectional blocks -> norm -> memory (B, S, C)
    target ids (B, T) -> embeddings -> n_layer decoder blocks: causal self-attention, then
                         cross-attention to the memory, then MLP -> norm -> head -> (B, T, vocab)

Source and target share one vocabulary, one embedding table and the tied output head. Training
uses teacher forcing: the decoder reads the true target shifted right (<bos> w1 w2 ...) and
predicts it unshifted (w1 w2 ... <eos>) at every position at once.
"""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.layers.block import Block, run_blocks
from llmkit.layers.embedding import Embeddings
from llmkit.layers.init import init_weights
from llmkit.layers.norms import make_norm


class Seq2Seq(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = Embeddings(config)
        self.encoder = nn.ModuleList(Block(config, causal=False) for _ in range(config.n_layer))
        self.norm_enc = make_norm(config)
        self.decoder = nn.ModuleList(Block(config, causal=True, cross=True) for _ in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()
        init_weights(self, 2 * config.n_layer, config.zero_init_proj)
        self.grad_checkpointing = False  # set by the trainer (train.grad_checkpointing)

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embed.wte.weight

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = run_blocks(self.encoder, self.embed(src), self.grad_checkpointing, src_mask)  # (B, S, C)
        return self.norm_enc(x)

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        # Target padding sits after <eos>, so the causal mask suffices: no target mask (None).
        x = run_blocks(self.decoder, self.embed(tgt), self.grad_checkpointing, None, memory, src_mask)
        return self.lm_head(self.norm_f(x))  # (B, T, vocab)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(tgt, self.encode(src, src_mask), src_mask)
