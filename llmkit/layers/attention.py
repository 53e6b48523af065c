"""Scaled dot-product attention, one module for every use in llmkit.

Shapes: B batch, T query positions, S key positions, C channels, H query heads, K key/value heads,
D head dim (C = H * D). Each query head takes a softmax-weighted average of value vectors:

    weights = softmax(q k^T / sqrt(D) + mask)    (B, H, T, S)
    out     = weights v                          (B, H, T, D) -> heads concatenated -> (B, T, C)

The same module serves
- causal self-attention (decoders: position t sees positions <= t),
- bidirectional self-attention (the encoder: every position sees every other),
- cross-attention (the seq2seq decoder: queries from the target, keys and values from `context`),
and any of them with a padding mask (B, S) that hides padded key positions. K < H key/value heads
is grouped-query attention (GQA; K = 1 is multi-query, MQA): each key/value head serves H / K query
heads, which shrinks the KV cache by H / K.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.config import ModelConfig
from llmkit.layers.norms import RMSNorm
from llmkit.layers.positions import RoPE

if TYPE_CHECKING:
    from llmkit.layers.kv_cache import LayerCache


def attention_mask(T: int, S: int, causal: bool, key_mask: torch.Tensor | None,
                   device: torch.device, first: torch.Tensor | None = None) -> torch.Tensor | None:
    """Boolean mask broadcastable to (B, H, T, S), True where a query may look; None for "all".

    Query i sits at column first + i of the S keys: by default the T queries are the last T of
    them (first = S - T; S > T when keys come from a cache), while a fixed-size cache has free
    columns after its queries and says where they are (a (1,) tensor). Causal: query i sees keys
    0 .. first + i. With a key mask as well, each query still sees itself: a padding query would
    otherwise see nothing, and its softmax over no keys would be NaN (harmless to itself, but
    NaN * 0 is NaN in later matmuls).
    """
    if not causal and key_mask is None:
        return None
    keys = torch.arange(S, device=device)[None, :]  # (1, S)
    queries = torch.arange(T, device=device)[:, None] + (S - T if first is None else first)  # (T, 1)
    if key_mask is None:
        return keys <= queries
    mask = key_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, S)
    if not causal:
        return mask
    return ((keys <= queries) & mask) | (keys == queries)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, causal: bool, n_head: int | None = None,
                 rotary: bool | None = None):
        """`n_head` overrides the config's (the single-head rung); `rotary` defaults to
        positions == rope, and is off for cross-attention, whose keys are another sequence."""
        super().__init__()
        C = config.n_embd
        self.n_head = n_head or config.n_head
        self.n_kv_head = config.kv_heads if self.n_head == config.n_head else self.n_head
        self.head_dim = C // self.n_head
        self.causal, self.explicit = causal, config.attention == "explicit"
        self.q = nn.Linear(C, self.n_head * self.head_dim, bias=config.bias)
        self.kv = nn.Linear(C, 2 * self.n_kv_head * self.head_dim, bias=config.bias)  # keys, then values
        self.proj = nn.Linear(self.n_head * self.head_dim, C, bias=config.bias)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        rotary = config.positions == "rope" if rotary is None else rotary
        self.rope = RoPE(self.head_dim, config.block_size, config.rope_base) if rotary else None
        self.dropout = config.dropout
        self.proj_dropout = nn.Dropout(config.dropout)
        self.weights: torch.Tensor | None = None  # (B, H, T, S) of the last call, explicit mode only

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, cache: LayerCache | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) gives the queries; context (B, S, C) the keys and values (x itself when None);
        key_mask (B, S) is True at real tokens, False at padding. With a `cache` (generation), x
        holds only the new positions: their keys and values join the cached ones, which the
        queries then attend over, and the cache supplies the positions and the padding mask.
        `positions` (B, T): x's positions without a cache, for left-padded rows (rotary only)."""
        B, T, _ = x.shape
        source = x if context is None else context
        S = source.shape[1]
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k, v = self.kv(source).view(B, S, 2, self.n_kv_head, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, K, S, D) each
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        positions = positions if cache is None else cache.positions
        if self.rope is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, K, S, D): every position so far
            key_mask = cache.key_mask
        y = self._attend(q, k, v, key_mask, cache)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.proj_dropout(self.proj(y))

    def _attend(self, q, k, v, key_mask, cache=None):
        """q (B, H, T, D), k and v (B, K, S, D) -> (B, H, T, D); a `cache` says where the first
        query is (attention_mask) and shares the mask between layers. With GQA (K < H) each
        key/value head serves H / K query heads: the fused kernel reads them in place
        (enable_gqa), the written-out path repeats them."""
        T, S = q.shape[2], k.shape[2]
        dropout = self.dropout if self.training else 0.0
        if not self.explicit:
            # PyTorch's fused kernel (flash attention on GPUs); is_causal is its fast path.
            gqa = {"enable_gqa": True} if self.n_kv_head != self.n_head else {}
            if key_mask is None and self.causal and T == S:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, **gqa)
            if key_mask is None and self.causal and T == 1:  # one new query after a cache sees every key
                return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, **gqa)
            mask = self._mask(T, S, key_mask, q.device, cache)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, **gqa)
        if self.n_kv_head != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        # The same computation written out, keeping the weights for plots.
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, T, S)
        mask = self._mask(T, S, key_mask, q.device, cache)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).type_as(q)
        self.weights = weights.detach()
        return F.dropout(weights, dropout, self.training) @ v

    def _mask(self, T: int, S: int, key_mask, device, cache) -> torch.Tensor | None:
        if cache is None:
            return attention_mask(T, S, self.causal, key_mask, device)
        return cache.mask((T, S, self.causal), lambda: attention_mask(T, S, self.causal, key_mask, device, cache.first))
