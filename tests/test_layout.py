"""The weights' layouts while decoding (llmkit/inference/layout.py): every layout gives the plain
model's logits, and the packed one (oneDNN's blocked copy, which the server's batcher takes for two
rows or more) gives every matrix back exactly, in the same Parameter objects, a tied head still tied."""

from __future__ import annotations

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.inference import layout
from llmkit.inference.decoding import new_cache, next_logits
from llmkit.inference.layout import PackedLinear, layout_for, packing_available, prefer_layout
from llmkit.models import build_model

pytestmark = pytest.mark.skipif(not packing_available(), reason="this PyTorch has no oneDNN")


def tiny(bias: bool, tie: bool):
    torch.manual_seed(0)
    config = ModelConfig(name="gpt", vocab_size=50, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                         positions="rope", bias=bias, tie_embeddings=tie)
    model = build_model(config).eval()
    with torch.no_grad():  # biases too: zeros would hide a bias the packed product dropped
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def decode(model, batch: int) -> torch.Tensor:
    """Logits of a left-padded prompt pass and then three one-token steps, (4, batch, V)."""
    ids = torch.randint(0, 50, (batch, 7), generator=torch.Generator().manual_seed(1))
    pad = torch.arange(batch) % 3  # rows of different lengths: the packed product meets masks too
    with torch.no_grad():
        cache = new_cache(model, batch, 12, pad)
        out = [next_logits(model, ids, cache)]
        for step in range(3):
            out.append(next_logits(model, ids[:, step : step + 1], cache))
    return torch.stack(out)


@pytest.fixture
def pack_all(monkeypatch):
    """Pack every matrix of these tiny models (they are all below PACKED_MIN)."""
    monkeypatch.setattr(layout, "PACKED_MIN", 0)


@pytest.mark.parametrize("bias,tie", [(False, True), (True, False)])
def test_every_layout_decodes_as_the_plain_model_and_packing_gives_the_weights_back(bias, tie, pack_all):
    model = tiny(bias, tie)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parameters = [id(p) for p in model.parameters()]
    plain = decode(model, 5)
    for batch, packed, wanted in [(5, True, "packed"), (1, False, "columns"), (5, True, "packed"), (5, False, "rows")]:
        prefer_layout(model, batch, packed)
        assert model._weights_layout == wanted
        torch.testing.assert_close(decode(model, 5), plain, rtol=1e-5, atol=1e-5)
        if wanted == "packed":
            linears = [m for m in model.modules() if isinstance(m, PackedLinear)]
            assert len(linears) == 2 * 5 + 1  # q, kv, proj, fc, proj in each block, and the head
            for m in linears:  # a matrix no one else holds gives up its plain storage; a tied head keeps it
                assert (m.plain[0].weight.numel() > 0) == (tie and m is model.lm_head)
            if tie:  # the embedding still reads the table
                assert model.lm_head.plain[0].weight is model.embed.wte.weight and model.embed.wte.weight.numel() == 50 * 32
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert [id(p) for p in model.parameters()] == parameters
    assert (model.lm_head.weight is model.embed.wte.weight) == tie
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_the_layout_follows_the_batch_device_dtype_and_caller(monkeypatch):
    model = tiny(False, True)
    assert [layout_for(model, b) for b in (1, 2, 3, 8)] == ["columns", "columns", "rows", "rows"]
    # a model with no matrix worth packing decodes as any caller's would
    assert [layout_for(model, b, packed=True) for b in (1, 2, 3, 8)] == ["columns", "columns", "rows", "rows"]
    monkeypatch.setattr(layout, "PACKED_MIN", 0)
    assert [layout_for(model, b, packed=True) for b in (1, 2, 3, 8)] == ["columns", "packed", "packed", "packed"]
    model.compiled_decoding = True  # compiled graphs are traced for one layout each, never packed
    assert [layout_for(model, b, packed=True) for b in (1, 2, 8)] == ["columns", "rows", "rows"]
    assert layout_for(tiny(False, True).to(torch.bfloat16), 8, packed=True) == "rows"


def test_a_packed_model_is_out_of_the_optimizers_reach_until_unpacked(pack_all):
    """Packed matrices are not the model's parameters meanwhile (only inference can use oneDNN's
    copy): a state dict taken then misses them, loudly, instead of saving empty tensors."""
    model = tiny(False, False)
    prefer_layout(model, 4, packed=True)
    assert "blocks.0.attn.q.weight" not in model.state_dict()
    prefer_layout(model, 1)
    assert model.state_dict()["blocks.0.attn.q.weight"].shape == (32, 32)


def test_the_batcher_batches_from_the_packed_copy_goes_back_to_one_rows_layout_when_idle_and_plain_when_it_stops(
        pack_all, monkeypatch):
    import queue
    import string
    import time

    from llmkit.data.tokenizer import CharTokenizer
    from llmkit.inference.sampling import Sampling
    from llmkit.serving import batcher as batching
    from llmkit.serving.batcher import Batcher, Done, Request

    monkeypatch.setattr(batching, "LAYOUT_S", 1.0)  # (5 s in a server)
    monkeypatch.setattr(batching, "IDLE_TRIM_S", 0.2)

    model, tokenizer = tiny(True, True), CharTokenizer(string.printable[:50])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batcher = Batcher(model, tokenizer, max_batch=4)
    try:
        events: queue.SimpleQueue = queue.SimpleQueue()
        for seed, prompt in enumerate(["abc", "hello", "xy"]):  # queued together: admitted as one batch of 3 rows
            batcher.submit(Request(tuple(tokenizer.encode(prompt).tolist()), 8, Sampling(0.8), (), 1, seed), events.put)
        done = 0
        while done < 3:
            done += isinstance(events.get(timeout=30), Done)
        assert model._weights_layout == "packed"
        end = time.monotonic() + 30  # idle for LAYOUT_S: one row's layout, the packed copies freed
        while model._weights_layout == "packed" and time.monotonic() < end:
            time.sleep(0.05)
        assert model._weights_layout == "columns" and not any(isinstance(m, PackedLinear) for m in model.modules())
        batcher.submit(Request(tuple(tokenizer.encode("again").tolist()), 4, Sampling(0.8), (), 1, 9), events.put)
        while not isinstance(events.get(timeout=30), Done):
            pass
    finally:
        batcher.stop()
    assert model._weights_layout == "columns" and not any(isinstance(m, PackedLinear) for m in model.modules())
    assert model.lm_head.weight is model.embed.wte.weight
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_only_matrices_of_packed_min_weights_or_more_are_packed_the_rest_in_rows(monkeypatch):
    model = tiny(False, False)
    sizes = sorted({m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)})
    monkeypatch.setattr(layout, "PACKED_MIN", sizes[1])  # the smallest size stays plain
    prefer_layout(model, 1)  # columns first: a small matrix must come back to rows
    prefer_layout(model, 4, packed=True)
    plain = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert plain and packed and all(m.weight.numel() == sizes[0] and m.weight.is_contiguous() for m in plain)
