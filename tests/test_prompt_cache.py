"""The prompt cache (llmkit/inference/prompt_cache.py): which kept prompt a new one reuses, how
much of it, and what is kept within the bounds. (That reused keys and values give the tokens a
prompt gets alone is tests/test_batcher.py's.)"""

from __future__ import annotations

import pytest
import torch

from llmkit.inference import prompt_cache
from llmkit.inference.prompt_cache import PromptCache, shared
from llmkit.layers.kv_cache import KVCache


def kv(ids, layers: int = 2) -> torch.Tensor:
    """(layers, 2, 1, n, 1) keys and values that tell which ids made them."""
    column = torch.tensor(ids, dtype=torch.float32)
    return column.view(1, 1, 1, -1, 1).expand(layers, 2, 1, -1, 1).clone()


def test_shared_counts_the_leading_ids_in_common():
    assert shared((1, 2, 3), (1, 2, 4)) == 2
    assert shared((1, 2), (1, 2, 3)) == 2
    assert shared((5,), (1, 2)) == 0
    assert shared((), (1,)) == 0


def test_the_prompt_sharing_most_is_reused_but_never_the_last_id():
    cache = PromptCache(1 << 20)
    cache.add((1, 2, 3, 4), kv((1, 2, 3, 4)))
    cache.add((1, 2, 9), kv((1, 2, 9)))
    found, m = cache.longest((1, 2, 3, 7, 8))
    assert m == 3 and found[0, 0, 0, :, 0].tolist() == [1, 2, 3, 4]
    assert cache.longest((1, 2, 3, 4))[1] == 3  # all of it kept: the last id still runs, for its logits
    assert cache.longest((1, 2, 3, 4, 5))[1] == 4
    assert cache.longest((7, 1, 2)) == (None, 0)
    assert cache.longest((1,)) == (None, 0)  # one id: nothing to skip


def test_a_prompt_replaces_those_it_starts_with_and_adds_nothing_when_kept_already():
    cache = PromptCache(1 << 20)
    cache.add((1, 2), kv((1, 2)))
    cache.add((1, 2, 3), kv((1, 2, 3)))
    assert len(cache) == 1 and cache.holds((1, 2)) and cache.holds((1, 2, 3))
    cache.add((1,), kv((1,)))  # (1, 2, 3) says all it would
    assert len(cache) == 1 and cache.bytes == kv((1, 2, 3)).numel() * 4
    assert not cache.holds((1, 2, 3, 4))


def test_the_least_recently_used_go_first_within_the_budget_and_the_count(monkeypatch):
    size = kv((1, 2, 3)).numel() * 4
    cache = PromptCache(3 * size)
    for first in (1, 2, 3):
        cache.add((first, 0, 0), kv((first, 0, 0)))
    cache.longest((1, 0, 5))  # 1 is used: 2 is now the oldest
    cache.add((4, 0, 0), kv((4, 0, 0)))
    assert [cache.holds((f, 0, 0)) for f in (1, 2, 3, 4)] == [True, False, True, True]
    assert cache.bytes == 3 * size
    cache.add(tuple(range(10, 20)), kv(range(10, 20)))  # over the whole budget alone: not kept
    assert len(cache) == 3
    monkeypatch.setattr(prompt_cache, "MAX_PROMPTS", 2)
    cache.add((5, 0, 0), kv((5, 0, 0)))
    assert len(cache) == 2 and cache.holds((5, 0, 0))
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0
    none = PromptCache(0)
    none.add((1, 2), kv((1, 2)))
    assert len(none) == 0
    with pytest.raises(ValueError):
        PromptCache(-1)


def test_a_cache_started_with_known_columns_holds_them_at_each_rows_padding():
    cache = KVCache(n_layer=2, batch=2, n_kv_head=1, head_dim=1, max_len=6, dtype=torch.float32, device="cpu",
                    pad=torch.tensor([0, 2]))
    for layer in cache.layers:  # garbage, as torch.empty may leave: what is not written must be zeros
        layer.keys.fill_(float("nan"))
        layer.values.fill_(float("nan"))
    cache.start_known(3, [(0, 0, kv((1, 2, 3))), (1, 2, kv((7,)))])
    assert cache.length == 3
    for layer in cache.layers:
        assert layer.keys[:, 0, :3, 0].tolist() == [[1, 2, 3], [0, 0, 7]]
        assert layer.values[:, 0, :3, 0].tolist() == [[1, 2, 3], [0, 0, 7]]
    assert cache.row(0, 1, 3)[:, :, 0, :, 0].tolist() == [[[2, 3], [2, 3]]] * 2
    with pytest.raises(ValueError):
        cache.start_known(1, [])  # no longer empty
