"""Generation: the KV cache changes nothing but speed; every decoding rule keeps to its set;
stop strings, batches of prompts and the CLI's outputs; eval's metrics."""

from __future__ import annotations

import gc
import json
import math
import weakref

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.data.tokenizer import CharTokenizer
from llmkit.inference.beam import beam_search
from llmkit.inference.decoding import generate_batch
from llmkit.inference.sampling import Rows, Sampling, draw, filter_logits, next_token, next_tokens, penalize_repeats
from llmkit.inference.stream import StreamDecoder
from llmkit.layers.kv_cache import KVCache
from llmkit.models import build_model

SWITCHES = [{}, {"positions": "rope"}, {"n_kv_head": 2}, {"positions": "rope", "n_kv_head": 1},
            {"positions": "sinusoidal", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True}, {"logit_softcap": 3.0}]


def model_with(**switches):
    torch.manual_seed(0)
    config = ModelConfig(name="gpt", vocab_size=61, block_size=96, n_layer=2, n_head=4, n_embd=32, **switches)
    return build_model(config).eval()


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "gpt")
def test_cached_logits_equal_uncached_for_50_steps(switches):
    model = model_with(**switches)
    ids = torch.randint(61, (2, 9))
    cache = KVCache.for_model(model, batch=2)
    with torch.no_grad():
        cached = model(ids, cache=cache)[:, -1]
        for _ in range(50):
            full = model(ids)[:, -1]  # the whole sequence again, no cache
            torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
            token = cached.argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], dim=1)
            cached = model(token, cache=cache)[:, -1]
    greedy = Sampling(temperature=0)
    start = ids[:, :9]
    assert torch.equal(torch.stack(list(generate_batch(model, start, 50, greedy))),
                       torch.stack(list(generate_batch(model, start, 50, greedy, use_cache=False))))


def test_a_dropped_cache_is_freed_at_once_not_by_the_garbage_collector():
    """A cache must not be a reference cycle: its tensors (hundreds of MB on a real model) would
    wait for a garbage collection, and a server's memory stayed near its peak after a burst."""
    model = model_with(n_kv_head=2)
    gc.disable()
    try:
        cache = KVCache.for_model(model, batch=2)
        with torch.no_grad():
            model(torch.randint(61, (2, 5)), cache=cache)
        keys = weakref.ref(cache.layers[0].keys)
        del cache
        assert keys() is None  # freed by its reference count alone
    finally:
        gc.enable()


def test_a_left_padded_prompt_continues_as_it_would_alone():
    model = model_with(positions="rope", n_kv_head=2)
    long, short = torch.randint(61, (1, 12)), torch.randint(61, (1, 5))
    batch = torch.cat([long, torch.cat([torch.zeros(1, 7, dtype=torch.long), short], dim=1)])
    together = torch.stack(list(generate_batch(model, batch, 30, Sampling(temperature=0), pad=torch.tensor([0, 7]))))
    alone = torch.stack(list(generate_batch(model, short, 30, Sampling(temperature=0))))
    assert torch.equal(together[:, 1], alone[:, 0])


def test_a_padded_pass_builds_its_attention_mask_once_and_drops_it_after(monkeypatch):
    """Every layer of a pass masks alike: the first builds the mask, the others take it, and the
    cache keeps none once the pass is over (a long prompt's mask is (B, 1, T, S)). The logits are
    those of each layer building its own."""
    from llmkit.layers import attention

    model = model_with(positions="rope", n_kv_head=2)
    ids, pad = torch.randint(61, (2, 9)), torch.tensor([0, 4])
    built = []
    real = attention.attention_mask
    monkeypatch.setattr(attention, "attention_mask", lambda *a, **k: built.append(1) or real(*a, **k))

    def logits(cache):
        with torch.no_grad():
            first = model.logits(model.hidden(ids, cache=cache)[:, -1])
            return first, model.logits(model.hidden(ids[:, -1:], cache=cache)[:, -1])

    cache = KVCache.for_model(model, 2, 20, pad)
    shared = logits(cache)
    assert len(built) == 2 and cache.now.masks == {}  # one per pass (prompt, step), not one per layer
    monkeypatch.setattr(type(cache.layers[0]), "mask", lambda self, key, make: make())
    each = logits(KVCache.for_model(model, 2, 20, pad))
    assert len(built) == 2 + 2 * model.config.n_layer
    assert all(torch.equal(a, b) for a, b in zip(shared, each))


def test_generation_past_the_context_slides_or_stops():
    model = model_with()
    ids = torch.randint(61, (1, 10))
    assert len(list(generate_batch(model, ids, 200, Sampling(temperature=0)))) == 200  # 2 x block_size
    from llmkit.inference.decoding import ContextFull

    with pytest.raises(ContextFull):
        list(generate_batch(model, ids, 200, Sampling(temperature=0), context="stop"))


def test_beam_of_one_and_top_k_of_one_are_greedy():
    model = model_with()
    ids = torch.randint(61, (1, 6))
    greedy = [int(t) for t in generate_batch(model, ids, 25, Sampling(temperature=0))]
    top1 = [int(t) for t in generate_batch(model, ids, 25, Sampling(temperature=1.0, top_k=1),
                                           torch.Generator().manual_seed(0))]

    def step(prefixes):
        return torch.log_softmax(model(prefixes)[:, -1], dim=-1)

    assert top1 == greedy
    assert beam_search(step, ids[0].tolist(), 1, 25, eos=None) == greedy


def test_a_draw_follows_the_probabilities_and_never_takes_an_impossible_token():
    """Inverse transform sampling: each token as often as its probability says (within 4 standard
    deviations over 40,000 draws), never one of probability 0 (the first, the last, one between)."""
    probs = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    u = torch.rand(40_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    drawn = draw(probs[None].expand(40_000, -1), u)[:, 0]
    assert drawn.shape == (40_000,) and not set(drawn.tolist()) & {0, 2, 6}
    counts = torch.bincount(drawn, minlength=7).double() / 40_000
    assert ((counts - probs.double()).abs() <= 4 * (probs.double() * (1 - probs.double()) / 40_000).sqrt() + 1e-12).all()
    # Sums a little off 1 (a float32 softmax over a large vocabulary) never pass the last possible token.
    skewed = torch.full((3, 49_152), 1 / 49_152) * torch.tensor([[0.999], [1.0], [1.001]])
    skewed[:, -5:] = 0
    assert draw(skewed, torch.full((3, 1), 1 - 2**-53, dtype=torch.float64)).flatten().tolist() == [49_146] * 3


def test_rows_sampled_together_are_sampled_as_alone():
    """A server's step samples many requests at once (`next_tokens`): each group of rows gets the
    ids `next_token` gives it alone with its own generator, whatever its neighbours' settings."""
    logits = torch.randn(9, 50, generator=torch.Generator().manual_seed(0))
    settings = [Sampling(0.8, None), Sampling(0.8, None), Sampling(0, None), Sampling(1.3, 5, top_p=0.9),
                Sampling(0.8, None, repetition_penalty=1.5), Sampling(0.8, None)]
    sizes = [2, 1, 1, 2, 2, 1]
    previous = torch.randint(50, (2, 4), generator=torch.Generator().manual_seed(1))
    for step in range(3):
        groups = [Rows(s, torch.Generator().manual_seed(10 * step + i), n, previous if s.repetition_penalty != 1 else None)
                  for i, (s, n) in enumerate(zip(settings, sizes))]
        together = next_tokens(logits.clone(), groups, vocab_size=45)
        alone, start = [], 0
        for i, (s, n) in enumerate(zip(settings, sizes)):
            g = torch.Generator().manual_seed(10 * step + i)
            alone.append(next_token(logits[start : start + n].clone(), s, g, groups[i].previous, vocab_size=45))
            start += n
        assert together.tolist() == torch.cat(alone).tolist()
        assert (together < 45).all()


def test_top_p_and_min_p_never_sample_outside_their_set():
    probs = torch.tensor([0.40, 0.25, 0.15, 0.10, 0.05, 0.03, 0.02])
    logits = probs.log()[None].expand(4000, -1)
    generator = torch.Generator().manual_seed(0)
    # top-p 0.75: 0.40 + 0.25 = 0.65 < 0.75, so the third token is needed too; never the rest.
    drawn = next_token(logits, Sampling(temperature=1.0, top_k=None, top_p=0.75), generator)
    assert set(drawn.flatten().tolist()) == {0, 1, 2}
    # min-p 0.3: tokens at least 0.3 x 0.40 = 0.12 likely.
    drawn = next_token(logits, Sampling(temperature=1.0, top_k=None, min_p=0.3), generator)
    assert set(drawn.flatten().tolist()) == {0, 1, 2}
    # The kept tokens keep their relative odds (renormalised): 0.40 / 0.80 of draws for token 0.
    assert abs((drawn == 0).float().mean().item() - 0.5) < 0.03
    kept = filter_logits(probs.log()[None], Sampling(temperature=1.0, top_k=2))
    assert torch.isinf(kept[0, 2:]).all() and torch.isfinite(kept[0, :2]).all()


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    out = penalize_repeats(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5]]


def test_stop_strings_end_the_text_just_before_them():
    tokenizer = CharTokenizer.train("abcdefgh.\n ")
    decoder = StreamDecoder(tokenizer, stops=("gh.", "\n\n"))
    pieces = []
    for ch in "abc defgh. more":
        pieces.append(decoder.push(int(tokenizer.encode(ch)[0])))
        if decoder.stopped:
            break
    assert "".join(pieces) + decoder.flush() == "abc def"
    # A held-back tail that never becomes a stop string comes out at the end.
    decoder = StreamDecoder(tokenizer, stops=("gh.",))
    text = "".join(decoder.push(int(t)) for t in tokenizer.encode("abcg")) + decoder.flush()
    assert text == "abcg" and not decoder.stopped


def test_cli_generates_batches_samples_and_json(debug_run, cli, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ROMEO:\nJULIET: O\n\nFirst Citizen:\n")
    result = cli("generate", debug_run, "--prompts", prompts, "-n", "40", "--seed", "1", "--json",
                 "--temperature", "0.9", "--top-p", "0.95", "--min-p", "0.05")
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in result.out.splitlines()]
    assert [r["prompt"] for r in rows] == ["ROMEO:", "JULIET: O", "First Citizen:"]
    assert all(r["tokens"] == 40 and r["stop_reason"] == "length" and len(r["text"]) == 40 for r in rows)
    samples = cli("generate", debug_run, "-p", "ROMEO:", "-n", "30", "--num-samples", "3", "--seed", "2")
    assert samples.code == 0 and samples.out.count("---\n") == 2 and samples.out.count("ROMEO:") >= 3
    again = cli("generate", debug_run, "-p", "ROMEO:", "-n", "30", "--num-samples", "3", "--seed", "2")
    assert again.out == samples.out
    stopped = cli("generate", debug_run, "-p", "ROMEO:", "-n", "200", "--seed", "3", "--stop", "\n", "--json")
    row = json.loads(stopped.out)
    assert row["stop_reason"] == "stop" and "\n" not in row["text"]
    # Within the context (debug: 32), as past it the cache slides by half a context at a time.
    greedy = cli("generate", debug_run, "-p", "ROMEO:", "-n", "26", "--temperature", "0", "--echo")
    no_cache = cli("generate", debug_run, "-p", "ROMEO:", "-n", "26", "--temperature", "0", "--no-cache")
    assert greedy.out == no_cache.out
    beam = cli("generate", debug_run, "-p", "ROMEO:", "-n", "26", "--beam", "3", "--length-penalty", "0.5")
    assert beam.code == 0 and beam.out.startswith("ROMEO:") and "seed" not in beam.err  # not sampled
    bad = cli("generate", debug_run, "--top-p", "1.5")
    assert bad.code != 0 and "top-p" in bad.err


def test_eval_reports_perplexity_as_exp_loss_on_splits_and_texts(debug_run, cli, tmp_path, mirror):
    split = json.loads(cli("eval", debug_run, "--json").out)
    assert math.isclose(split["perplexity"], math.exp(split["loss"]), rel_tol=1e-12)
    assert 0 < split["accuracy"] < 1 and split["bits_per_byte"] <= split["bits_per_char"] + 1e-12
    text = tmp_path / "text.txt"
    text.write_text((mirror / "tinyshakespeare/input.txt").read_text()[:600])
    whole = json.loads(cli("eval", debug_run, "--text", text, "--json").out)
    strided = json.loads(cli("eval", debug_run, "--text", text, "--stride", "8", "--json").out)
    assert whole["tokens"] == strided["tokens"] == 599  # every target once, whatever the stride
    assert math.isclose(whole["perplexity"], math.exp(whole["loss"]), rel_tol=1e-12)
    # By hand: target j is scored by the first window that reaches it, window k covering targets
    # 8k .. 8k + 31 with the ids from 8k on as context (context 32, stride 8).
    from llmkit.loading import load_model

    trained = load_model(debug_run)
    ids = torch.as_tensor(trained.tokenizer.encode(text.read_text()), dtype=torch.long)
    nats = 0.0
    with torch.no_grad():
        for j in range(599):
            start = 8 * max(0, math.ceil((j - 31) / 8))
            logits = trained.model(ids[None, start : j + 1])[0, -1]
            nats -= torch.log_softmax(logits, -1)[ids[j + 1]].item()
    assert math.isclose(strided["loss"], nats / 599, rel_tol=1e-5)
    assert cli("eval", debug_run, "--stride", "999").code != 0


def test_rungs_without_a_cache_take_padded_batches_too():
    torch.manual_seed(0)
    config = ModelConfig(name="single_head_attention", vocab_size=61, block_size=32, n_embd=16)
    model = build_model(config).eval()
    long, short = torch.randint(61, (1, 9)), torch.randint(61, (1, 4))
    batch = torch.cat([long, torch.cat([torch.zeros(1, 5, dtype=torch.long), short], dim=1)])
    together = torch.stack(list(generate_batch(model, batch, 20, Sampling(temperature=0), pad=torch.tensor([0, 5]))))
    alone = torch.stack(list(generate_batch(model, short, 20, Sampling(temperature=0))))
    assert torch.equal(together[:, 1], alone[:, 0])
