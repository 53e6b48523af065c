"""Compiled decoding (llmkit/inference/compiled.py, `--compile`): the fixed-size KV cache it needs
gives what the growing one gives, and the compiled step gives eager decoding's logits and tokens:
alone, left-padded, sampled, batched in the server's batcher, and on a cache that grows."""

from __future__ import annotations

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.inference.compiled import compile_decoding, compiled
from llmkit.inference.decoding import generate_batch, new_cache, next_logits
from llmkit.inference.sampling import Sampling
from llmkit.layers.kv_cache import FixedKVCache, KVCache
from llmkit.models import build_model

SWITCHES = [{}, {"positions": "rope", "n_kv_head": 2}, {"positions": "sinusoidal", "qk_norm": True},
            {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 1, "logit_softcap": 5.0}]


def model_with(**switches):
    torch.manual_seed(0)
    config = ModelConfig(name="gpt", vocab_size=61, block_size=64, n_layer=2, n_head=4, n_embd=32, dropout=0.0,
                         **switches)
    model = build_model(config).eval()
    with torch.no_grad():  # weights big enough that every earlier token moves the logits
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "gpt")
def test_a_fixed_cache_gives_the_logits_of_a_growing_one(switches):
    """Left-padded rows, a prompt, then 30 steps: each step's logits alike within float rounding
    (the fixed cache attends over its free columns too, masked)."""
    model = model_with(**switches)
    ids = torch.randint(61, (3, 11))
    pad = torch.tensor([0, 4, 9])
    growing, fixed = KVCache.for_model(model, 3, 48, pad), FixedKVCache.for_model(model, 3, 48, pad)
    with torch.no_grad():
        a, b = model(ids, cache=growing)[:, -1], model(ids, cache=fixed)[:, -1]
        for _ in range(30):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
            token = a.argmax(-1, keepdim=True)
            a, b = model(token, cache=growing)[:, -1], model(token, cache=fixed)[:, -1]
    assert fixed.length == growing.length == 41


def test_a_fixed_cache_joins_and_leaves_as_the_server_does():
    """KVCache.gather keeps the kind of cache it is given: rows of two fixed caches joined, one
    left out, then more room made; the logits are those of the growing caches doing the same."""
    model = model_with(positions="rope", n_kv_head=2)
    caches = {}
    with torch.no_grad():
        for kind in (KVCache, FixedKVCache):
            first, second = kind.for_model(model, 2, 12), kind.for_model(model, 1, 7)
            model(torch.randint(61, (2, 9), generator=torch.Generator().manual_seed(1)), cache=first)
            model(torch.randint(61, (1, 5), generator=torch.Generator().manual_seed(2)), cache=second)
            joined = KVCache.gather([(first, torch.tensor([0, 1])), (second, torch.tensor([0]))], 3)
            kept = KVCache.gather([(joined, torch.tensor([0, 2]))], 20)
            assert type(joined) is type(kept) is kind
            caches[kind] = [model(torch.tensor([[5], [6], [7]]), cache=joined)[:, -1],
                            *(model(torch.tensor([[t], [t + 1]]), cache=kept)[:, -1] for t in range(10))]
    for a, b in zip(caches[KVCache], caches[FixedKVCache]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def compiled_model():
    """One model compiled for the tests below (each graph compiles once, for seconds)."""
    torch._dynamo.reset()
    model = model_with(positions="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2)
    eager = model_with(positions="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2)
    compile_decoding(model)
    yield model, eager
    torch._dynamo.reset()


def test_compiled_blocks_give_eager_logits_at_every_step(compiled_model):
    model, eager = compiled_model
    assert compiled(model) and not compiled(eager)
    for batch, pad in ((1, None), (3, torch.tensor([0, 3, 6]))):  # one row, then left-padded rows
        ids = torch.randint(61, (batch, 8), generator=torch.Generator().manual_seed(batch))
        ours, theirs = new_cache(model, batch, 40, pad), new_cache(eager, batch, 40, pad)
        assert isinstance(ours, FixedKVCache) and not isinstance(theirs, FixedKVCache)
        with torch.no_grad():
            a, b = next_logits(model, ids, ours), next_logits(eager, ids, theirs)
            for _ in range(25):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
                token = b.argmax(-1, keepdim=True)
                a, b = next_logits(model, token, ours), next_logits(eager, token, theirs)


def test_compiled_generation_draws_the_tokens_of_eager_generation(compiled_model):
    """Greedy and seeded sampling over prompts of other lengths (one graph for every length), and
    past the cache's end (context=slide makes a new cache)."""
    model, eager = compiled_model
    for length, n, sampling in ((5, 40, Sampling(temperature=0)), (13, 30, Sampling(temperature=1.0, top_k=20)),
                                (20, 90, Sampling(temperature=0))):
        ids = torch.randint(61, (1, length), generator=torch.Generator().manual_seed(length))
        tokens = [list(generate_batch(m, ids, n, sampling, torch.Generator().manual_seed(7))) for m in (model, eager)]
        assert torch.equal(torch.stack(tokens[0]), torch.stack(tokens[1]))
    # Every cache length and every batch of 2 or more rows share a graph: one for 1 row, one for more.
    from torch._dynamo.utils import counters

    assert 1 <= counters["stats"]["unique_graphs"] <= 2


def test_the_batcher_with_compiled_blocks_serves_what_it_serves_eagerly(compiled_model):
    from llmkit.data.tokenizer import CharTokenizer
    from llmkit.serving.batcher import Batcher, Request

    model, eager = compiled_model
    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz .,\n" + "".join(chr(0x100 + i) for i in range(31)))
    requests = [Request(tuple(range(1 + i, 9 + 3 * i)), 12 + 5 * i, Sampling(temperature=0.9, top_k=None), (), 1 + i % 2,
                        seed=i) for i in range(4)]
    served = {}
    for m in (model, eager):
        batcher = Batcher(m, tokenizer, max_batch=6)
        try:
            import queue

            events = [queue.SimpleQueue() for _ in requests]
            with batcher._lock:  # all at once: their prompts run as one padded batch, then share the batch
                for r, q in zip(requests, events):
                    batcher.submit(r, q.put)
            served[m] = [_texts(q, r.n) for r, q in zip(requests, events)]
            # Then a prompt that starts as the first one did: its start copied from the prompt cache
            # into a fixed-size cache (FixedKVCache.start_known), the rest run, the same as eager
            later = Request(tuple(range(1, 14)), 10, Sampling(temperature=0.9, top_k=None), (), 1, seed=7)
            events = queue.SimpleQueue()
            batcher.submit(later, events.put)
            served[m].append(_texts(events, 1))
            assert batcher.prompts.reused >= 8
        finally:
            batcher.stop()
    assert served[model] == served[eager]


def _texts(events, n: int) -> list[tuple[str, int]]:
    """A batcher job's (text, tokens) per choice, from its events."""
    from llmkit.serving.batcher import Done, Failed, Finished, Text

    texts, tokens = [""] * n, [0] * n
    while not isinstance(event := events.get(timeout=600), Done):
        assert not isinstance(event, Failed), event
        if isinstance(event, Text):
            texts[event.choice] += event.text
        elif isinstance(event, Finished):
            tokens[event.choice] = event.tokens
    return list(zip(texts, tokens))


def test_compiling_a_model_without_a_cache_is_refused():
    from llmkit.errors import LlmkitError

    config = ModelConfig(name="bigram", vocab_size=10, block_size=8, n_embd=4)
    with pytest.raises(LlmkitError, match="KV cache"):
        compile_decoding(build_model(config))


def test_generate_and_chat_with_compile_answer_as_without(tmp_path, cli):
    pytest.importorskip("transformers")
    from tiny_llama import tiny_llama

    directory = tmp_path / "tiny-llama"
    tiny_llama(directory)
    torch._dynamo.reset()
    try:
        runs = [cli("generate", directory, "-p", "The city", "-n", "20", "--temperature", "0", *flag)
                for flag in ((), ("--compile",))]
        assert runs[0].code == runs[1].code == 0 and runs[0].out == runs[1].out
        chats = [cli("chat", directory, "--temperature", "0", "-n", "12", *flag, stdin="Hello there\n/quit\n")
                 for flag in ((), ("--compile",))]
        assert chats[0].code == chats[1].code == 0 and chats[0].out == chats[1].out
    finally:
        torch._dynamo.reset()
