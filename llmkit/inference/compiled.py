"""Decoding through compiled blocks: the forward pass of one transformer block for one new token,
traced once by torch.compile and run as generated code from then on.

Decoding one token of a 30-layer model (SmolLM2) in eager PyTorch is some 1,500 operations, each
called from Python and dispatched on its own: norms, rotations, reshapes, the cache's writes, the
attention and the matrix products. On a CPU the products (which read every weight once,
llmkit/inference/layout.py) take only half to two thirds of the step; the rest is the calls
around them. torch.compile traces a block once into a graph, fuses its element-wise work into a
few loops of generated C++, and leaves the products to the same kernels as before (MKL, oneDNN,
the int8 one).

Why a block, not the whole step: a model's blocks are alike, so one graph serves all of them
(the weights are the graph's inputs), and it compiles in seconds. The whole step traced as one
graph decoded SmolLM2 about a fifth faster, but took 198 s to compile on 2 cores with an empty
cache and 41 s with a warm one, against 26 s and 8 s (scripts/bench_compile.py, docs/benchmarks.md).

A compiled graph is run again only while what it was traced with keeps its shape. The ordinary
KVCache returns keys one column longer at every step and writes at a Python number: a new graph
per step. So compiled decoding uses a FixedKVCache (llmkit/layers/kv_cache.py), whose layers
attend over all their columns with the free ones masked and write at columns given as a tensor.
Its length and batch are marked dynamic, so one graph serves every cache length and a second one
every batch of two rows or more (PyTorch specialises a size of 1). The prompt runs eagerly (its
length changes from call to call), and so does the head.

    llmkit generate smollm2 --dtype int8 --compile -p "Tell me a story"
    llmkit serve smollm2 --dtype int8 --compile
"""

from __future__ import annotations

import torch
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.layers.kv_cache import FixedKVCache, KVCache

_COMPILED: list = []  # the compiled block step, made at first use (importing the compiler takes seconds)


def _block_step(block: nn.Module, x: torch.Tensor, layer) -> torch.Tensor:  # (B, 1, C) -> (B, 1, C)
    return block(x, cache=layer)


def _through(block: nn.Module, x: torch.Tensor, layer) -> torch.Tensor:
    """One block through the compiled graph; the batch is marked dynamic (a row count of 1 keeps a
    graph of its own). The cache's keys and values are marked by `compiled_logits`."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(_block_step, fullgraph=True))
    torch._dynamo.maybe_mark_dynamic(x, 0)
    return _COMPILED[0](block, x, layer)


def compile_decoding(model: nn.Module) -> None:
    """Decode `model` through compiled blocks from now on (llmkit/inference/decoding.py asks
    `compiled(model)`); nothing is compiled until the first step."""
    from llmkit.models.single_block_transformer import SingleBlockTransformer

    if not isinstance(model, SingleBlockTransformer):  # the decoders built from blocks
        raise LlmkitError(f"--compile needs a model that decodes with a KV cache, not {model.config.name}")
    model.compiled_decoding = True


def compiled(model: nn.Module) -> bool:
    return getattr(model, "compiled_decoding", False)


def compiled_logits(model: nn.Module, ids: torch.Tensor, cache: FixedKVCache) -> torch.Tensor:
    """(B, 1) new ids -> (B, V) logits, each block through the compiled graph. The weights' layout
    follows the batch here (llmkit/inference/layout.py): each of the two graphs is traced for one
    layout, and a step in the other would compile a third."""
    from llmkit.inference.layout import prefer_layout

    prefer_layout(model, ids.shape[0])
    if not getattr(cache, "marked_dynamic", False):  # its keys and values, once per cache: batch and length
        for layer in cache.layers:
            for tensor in (layer.keys, layer.values):
                torch._dynamo.maybe_mark_dynamic(tensor, 0)
                torch._dynamo.maybe_mark_dynamic(tensor, 2)
        cache.marked_dynamic = True
    positions = cache.begin(1)
    for tensor, dims in ((positions, (0,)), (cache.now.key_mask, (0, 1))):
        for dim in dims:
            torch._dynamo.maybe_mark_dynamic(tensor, dim)
    logits = model.logits(model.continued(ids, positions, cache.layers, _through)[:, -1])
    cache.end(1)
    return logits


def warm_up(model: nn.Module) -> None:
    """Compile now, not at a user's first request: one step of one row and one of two rows (the
    two graphs), on a few columns of placeholder ids."""
    with torch.no_grad():
        for batch in (1, 2):
            cache = FixedKVCache.for_model(model, batch, 4)
            model.hidden(torch.zeros(batch, 2, dtype=torch.long, device=cache.device), cache=cache)
            compiled_logits(model, torch.zeros(batch, 1, dtype=torch.long, device=cache.device), cache)


def cache_type(model: nn.Module) -> type[KVCache]:
    """The KV cache a model decodes with: a fixed one when its blocks are compiled."""
    return FixedKVCache if compiled(model) else KVCache
