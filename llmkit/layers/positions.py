"""Telling the model where each token is. Attention alone is blind to order (it sees a set), so
position information is either added to the token vectors or rotated into queries and keys.

- learned:    a trainable (block_size, C) table, row t added to the token at position t (GPT-2).
- sinusoidal: the fixed table of "Attention Is All You Need": channel pair (2i, 2i+1) at position
              t holds sin(t / 10000^(2i/C)), cos(t / 10000^(2i/C)); nothing to train.
- rope:       rotary embeddings (RoFormer, Llama): each (x_i, x_{i+D/2}) pair of a query or key is
              rotated by the angle t * base^(-2i/D), so q_t . k_s depends on t - s only.
- none:       no positions; a causal model can still infer some order from the mask.
"""

from __future__ import annotations

import torch
from torch import nn


def check_length(length: int, block_size: int) -> None:
    if length > block_size:
        raise ValueError(f"sequence of {length} tokens is longer than block_size {block_size}")


# `positions` below is a LongTensor of positions, (T,) or (B, T) when rows of a batch start at
# different places (left-padded prompts in llmkit/layers/kv_cache.py). Callers keep them < block_size.


class LearnedPositions(nn.Module):
    def __init__(self, block_size: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(block_size, dim))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # -> (T, C) or (B, T, C)
        return self.weight[positions]


def sinusoid_table(block_size: int, dim: int) -> torch.Tensor:
    """(block_size, dim): even channels sin, odd channels cos, wavelengths from 2pi to 10000*2pi."""
    position = torch.arange(block_size, dtype=torch.float32)[:, None]  # (T, 1)
    frequency = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (ceil(C/2),)
    angles = position * frequency  # (T, ceil(C/2))
    table = torch.zeros(block_size, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


_TABLES: dict[tuple, tuple[torch.Tensor, ...]] = {}  # (kind, block_size, dim, base, device) -> tables


def _fixed_table(kind: str, block_size: int, dim: int, base: float, device: str) -> tuple[torch.Tensor, ...]:
    """The fixed tables of a model's positions, made once per shape and device and shared by every
    layer (a 30-layer model with 8,192 positions would otherwise hold 30 copies of its RoPE table).
    A plain dict, not functools.lru_cache: torch.compile reads a dict's tensors as constants of the
    graph, but traces through an lru_cache and would compute the table again at every step."""
    key = (kind, block_size, dim, base, device)
    made = _TABLES.get(key)
    if made is None:
        made = _TABLES[key] = _make_table(kind, block_size, dim, base, device)
    return made


def _make_table(kind: str, block_size: int, dim: int, base: float, device: str) -> tuple[torch.Tensor, ...]:
    if kind == "sinusoidal":
        return (sinusoid_table(block_size, dim).to(device),)
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (D/2,)
    angles = torch.arange(block_size, dtype=torch.float32)[:, None] * inv_freq  # (T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, D): channel i and i + D/2 share an angle
    return angles.cos().to(device), angles.sin().to(device)


class SinusoidalPositions(nn.Module):
    """Not a parameter and not saved: the table is computed from the shape (and shared)."""

    def __init__(self, block_size: int, dim: int):
        super().__init__()
        self.block_size, self.dim = block_size, dim

    @property
    def table(self) -> torch.Tensor:  # (block_size, dim)
        return _fixed_table("sinusoidal", self.block_size, self.dim, 0.0, "cpu")[0]

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # -> (T, C) or (B, T, C)
        return _fixed_table("sinusoidal", self.block_size, self.dim, 0.0, str(positions.device))[0][positions]


_LAST_ANGLES: list = [None]  # (positions tensor, key, (cos, sin)) of the last lookup


class RoPE(nn.Module):
    """Rotary position embedding for (B, H, T, D) queries or keys, in the rotate-half layout
    (the first D/2 channels pair with the last D/2), as Llama's Hugging Face port uses."""

    def __init__(self, head_dim: int, block_size: int, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.block_size, self.base = head_dim, block_size, base

    def tables(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (block_size, D): the angle of every channel at every position."""
        return _fixed_table("rope", self.block_size, self.head_dim, self.base, str(device))

    def angles(self, x: torch.Tensor, positions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at the positions, in x's dtype: (T, D), or (B, 1, T, D) for (B, T)
        positions. The last answer is kept, since every layer (and keys as well as queries) asks
        for the same positions in one forward pass: one lookup per step instead of 4 per layer."""
        key = (self.head_dim, self.block_size, self.base, x.device, x.dtype, x.shape[-2])
        # Compiled (torch.compile), the lookup is fused into the graph and costs nothing, and the
        # memo must not be used: the graph would keep whichever angles it was traced with (seen:
        # a compiled SmolLM2 lost the greedy tokens from the third decoding step on).
        memo = not torch.compiler.is_compiling()
        last = _LAST_ANGLES[0] if memo else None
        if last is not None and last[0] is positions and last[1] == key:
            return last[2]
        cos, sin = self.tables(x.device)
        if positions is None:
            check_length(x.shape[-2], self.block_size)
            cos, sin = cos[: x.shape[-2]], sin[: x.shape[-2]]
        else:
            cos, sin = cos[positions], sin[positions]
            if positions.dim() == 2:  # (B, T, D) -> (B, 1, T, D): the same angles for every head
                cos, sin = cos[:, None], sin[:, None]
        angles = cos.to(x.dtype), sin.to(x.dtype)
        if memo:
            _LAST_ANGLES[0] = (positions, key, angles)
        return angles

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, H, T, D); positions (T,) or (B, T), default 0 .. T - 1."""
        cos, sin = self.angles(x, positions)
        first, second = x.chunk(2, dim=-1)
        rotated = torch.cat([-second, first], dim=-1)  # (x1, x2) -> (-x2, x1): a 90-degree turn
        return x * cos + rotated * sin
