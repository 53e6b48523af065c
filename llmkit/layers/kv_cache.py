"""The KV cache: the keys and values of every position generated so far, kept per layer.

Without it, producing token t+1 re-runs the model over all t tokens before it, although their keys
and values do not change (a causal model's position s never looks past s). With it, each step
feeds only the new token: it computes that position's query, key and value, appends the key and
value to the cache, and attends over everything cached. Per step the work falls from O(t) positions
to one; the price is memory: 2 x n_layer x K x D numbers per position and sequence (K key/value
heads, so grouped-query attention shrinks the cache by H / K).

Rows of a batch may be prompts of different lengths. They are left-padded to one length: row b has
`pad[b]` padding columns in front, which no query may attend to (`key_mask`), and its real tokens
get positions 0, 1, 2, ... from its first real column on (`positions`), so a prompt continues the
same way alone or in a batch.

    cache = KVCache.for_model(model, batch=B, max_len=T, pad=pad)
    logits = model(ids, cache=cache)          # the prompts: fills positions 0 .. T0 - 1
    logits = model(next_ids, cache=cache)     # one new column per step

A server decodes many requests as one batch whose rows come and go between steps
(llmkit/serving/batcher.py). `KVCache.gather` makes the new batch's cache from the old ones: the
rows that stay, and the rows of caches that join, right-aligned so that every row's newest column
is the last one. A shorter row gets more left padding, which is exactly the layout above, so its
next token is the one it would get alone.

`FixedKVCache` is the same cache with shapes that never change from step to step, for compiled
decoding (llmkit/inference/compiled.py): every layer attends over all max_len columns, the ones
not yet written masked out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Pass:
    """The forward pass in progress, as every layer of one cache sees it (set by `KVCache.begin`).
    The layers hold this, not their cache: a layer pointing back at its cache would make every
    cache a reference cycle, whose (often hundreds of MB of) tensors only the garbage collector
    frees, long after the cache is dropped (a server's memory stayed near its peak after a burst)."""

    def __init__(self, device: torch.device):
        self.start = 0  # columns cached before this pass
        self.columns = torch.zeros(0, dtype=torch.long, device=device)  # (T,) the columns it writes
        self.positions = self.columns  # (T,) or (B, T): the new columns' positions
        self.key_mask: torch.Tensor | None = None  # (B, S): False at padding (and at free columns, fixed)
        self.masks: dict = {}  # what every layer's attention masks with in this pass, made once (`LayerCache.mask`)


class LayerCache:
    """One attention layer's keys and values, (B, K, max_len, D), filled up to the cache's length."""

    def __init__(self, now: Pass, keys: torch.Tensor, values: torch.Tensor):
        self.now, self.keys, self.values = now, keys, values

    @property
    def positions(self) -> torch.Tensor:
        return self.now.positions

    @property
    def key_mask(self) -> torch.Tensor | None:
        return self.now.key_mask

    @property
    def first(self) -> torch.Tensor | None:
        """The column of the first new query among those `append` returns; None: the new queries
        are the last columns."""
        return None

    def mask(self, key: tuple, make: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
        """The attention mask `make` builds, built by the first layer of the pass and shared by
        the others (every layer's is the same: with padding, eight rows of a 2-layer char model
        spent some 7% of a step building it again in the second layer)."""
        masks = self.now.masks
        if key not in masks:
            masks[key] = make()
        return masks[key]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' (B, K, T, D) keys and values; return all of them so far."""
        start, end = self.now.start, self.now.start + k.shape[2]
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]


class FixedLayerCache(LayerCache):
    """A layer of a FixedKVCache: keys and values written at the pass's columns (a tensor, not a
    Python number), and every column returned, the free ones masked."""

    @property
    def first(self) -> torch.Tensor:
        return self.now.columns[:1]

    def mask(self, key: tuple, make: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
        return make()  # each layer's own: a compiled graph computes it once anyway, and state here would guard it

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys.index_copy_(2, self.now.columns, k)
        self.values.index_copy_(2, self.now.columns, v)
        return self.keys, self.values


class KVCache:
    layer_type = LayerCache
    # Storage starts uninitialised: only written columns are read, and untouched pages of a long
    # cache cost no memory. (A FixedKVCache reads every column: its free ones must be zeros, since
    # garbage that is NaN stays NaN times a zero attention weight.)
    new_storage = staticmethod(torch.empty)

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device: torch.device, pad: torch.Tensor | None = None,
                 positions: int | None = None):
        """`positions`: how many positions the model knows (its block_size; default max_len).
        A row may hold more columns than that only while it is finished and fed placeholders."""
        shape = (batch, n_kv_head, max_len, head_dim)
        self.now = Pass(torch.device(device))
        self.layers = [self.layer_type(self.now, self.new_storage(shape, dtype=dtype, device=device),
                                       self.new_storage(shape, dtype=dtype, device=device)) for _ in range(n_layer)]
        self.max_len, self.length, self.position_limit = max_len, 0, positions or max_len
        self.batch, self.device = batch, torch.device(device)
        self.pad = pad if pad is not None and bool(pad.any()) else None  # (B,) padding columns per row

    @classmethod
    def for_model(cls, model: nn.Module, batch: int, max_len: int | None = None,
                  pad: torch.Tensor | None = None) -> KVCache:
        config = model.config
        parameter = next(model.parameters())
        return cls(config.n_layer, batch, config.kv_heads, config.n_embd // config.n_head,
                   max_len or config.block_size, parameter.dtype, parameter.device, pad, config.block_size)

    def begin(self, new: int) -> torch.Tensor:
        """Called by the model before a forward pass over `new` columns: returns the new columns'
        positions, (new,) or (B, new) with padding, and sets the key mask over all columns."""
        now = self.now
        now.columns = self._columns(new)
        now.start, now.masks = self.length, {}
        if self.pad is None:
            now.positions = now.columns.clamp_max(self.position_limit - 1)
        else:
            now.positions = (now.columns[None] - self.pad[:, None]).clamp(0, self.position_limit - 1)
            every = torch.arange(self.length + new, device=self.device)
            now.key_mask = every[None] >= self.pad[:, None]  # (B, S): False at padding
        return now.positions

    def _columns(self, new: int) -> torch.Tensor:
        """(new,) the columns a pass over `new` columns writes, refused when they do not fit."""
        if self.length + new > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; {self.length} + {new} do not fit")
        return torch.arange(self.length, self.length + new, device=self.device)

    def row(self, b: int, start: int, end: int) -> torch.Tensor:
        """(n_layer, 2, K, end - start, D): row b's keys and values at columns [start, end), copied
        (what llmkit/inference/prompt_cache.py keeps of a prompt)."""
        return torch.stack([torch.stack((layer.keys[b, :, start:end], layer.values[b, :, start:end]))
                            for layer in self.layers])

    def start_known(self, columns: int, known: list[tuple[int, int, torch.Tensor]]) -> None:
        """Begin an empty cache with its first `columns` columns already computed elsewhere: each
        (b, at, kv) writes kv's (n_layer, 2, K, n, D) keys and values at columns [at, at + n) of
        row b, and the rest of those columns are zeros (padding, masked; never garbage, whose NaN
        survives the mask as NaN * 0). The next forward pass then runs from column `columns` on."""
        if self.length or columns > self.max_len:
            raise ValueError(f"start_known needs an empty cache of at least {columns} columns")
        for i, layer in enumerate(self.layers):
            for which, storage in enumerate((layer.keys, layer.values)):
                storage[:, :, :columns].zero_()
                for b, at, kv in known:
                    storage[b, :, at : at + kv.shape[3]] = kv[i, which]
        self.length = columns

    def end(self, new: int) -> None:
        """Called by the model after the forward pass: the new columns are now cached (and the
        pass's mask is dropped: a long prompt's is (B, 1, T, S), and the cache outlives it)."""
        self.length += new
        self.now.masks = {}

    def padding(self) -> torch.Tensor:
        """(B,) padding columns per row (zeros when there is none)."""
        if self.pad is not None:
            return self.pad
        return torch.zeros(self.batch, dtype=torch.long, device=self.device)

    @staticmethod
    def gather(parts: list[tuple[KVCache, torch.Tensor]], room: int) -> KVCache:
        """A new cache holding, in order, the rows `rows` (B_i,) of each (cache, rows) part, each
        right-aligned to the longest, with `room` more columns free to decode into. Columns that
        are padding in every kept row are dropped, so the cache is only as long as its longest
        real row. New padding is zeros (masked out; never garbage, whose NaN could survive the
        mask as NaN * 0). The new cache is of the first part's kind (KVCache or FixedKVCache)."""
        pads = [cache.padding()[rows] + 0 for cache, rows in parts]
        lengths = [cache.length for cache, _ in parts]
        # Right-align: row b of part i starts at column (L - length_i) + pad_b; drop the common left padding.
        longest = max(lengths)
        starts = torch.cat([pad + (longest - length) for pad, length in zip(pads, lengths)])
        drop = int(starts.min())
        length = longest - drop
        first, _ = parts[0]
        keys0 = first.layers[0].keys
        n_kv, head_dim = keys0.shape[1], keys0.shape[3]
        batch = int(sum(len(rows) for _, rows in parts))
        new = type(first)(len(first.layers), batch, n_kv, head_dim, length + room, keys0.dtype, keys0.device,
                  starts - drop, first.position_limit)
        for layer, new_layer in enumerate(new.layers):
            row = 0
            for (cache, rows), old_length in zip(parts, lengths):
                # Part i's columns [0, old_length) land at [longest - old_length - drop, length).
                src = max(0, drop - (longest - old_length))  # its leading columns that every row pads
                at = longest - old_length - drop + src
                for name in ("keys", "values"):
                    target = getattr(new_layer, name)
                    target[row : row + len(rows), :, :at].zero_()
                    target[row : row + len(rows), :, at:length] = getattr(cache.layers[layer], name)[rows, :, src:old_length]
                row += len(rows)
        new.length = length
        return new


class FixedKVCache(KVCache):
    """The same cache with shapes that do not change from step to step, for a compiled decoding
    step (llmkit/inference/compiled.py): each layer attends over all max_len columns, the free
    ones masked, and new keys and values are written at columns given as a tensor. A compiled
    graph reruns for every step only when nothing it was traced with changes: with KVCache the
    returned keys grow by a column each step, and the write position is a Python number."""

    layer_type = FixedLayerCache
    new_storage = staticmethod(torch.zeros)

    def begin(self, new: int) -> torch.Tensor:
        """Positions (B, new), always per row; the key mask (B, max_len) is True at the real
        columns filled so far and the new ones (`first` tells attention where the queries are)."""
        now, pad = self.now, self.padding()
        now.columns = self._columns(new)
        now.start = self.length
        now.positions = (now.columns[None] - pad[:, None]).clamp(0, self.position_limit - 1)
        every = torch.arange(self.max_len, device=self.device)[None]  # (1, max_len)
        now.key_mask = (every >= pad[:, None]) & (every < self.length + new)
        return now.positions
