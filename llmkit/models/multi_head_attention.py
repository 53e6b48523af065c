"""Rung 3: several smaller attention heads instead of one wide one.

The C channels are split into H heads of D = C / H each; every head attends with its own queries
and keys (one may track the previous character, another the start of the word), and an output
projection mixes their concatenated results. Same parameters as one head: only the shapes differ.
"""

from __future__ import annotations

from llmkit.config import ModelConfig
from llmkit.models.single_head_attention import SingleHeadAttention


class MultiHeadAttention(SingleHeadAttention):
    @staticmethod
    def heads(config: ModelConfig) -> int:
        return config.n_head
