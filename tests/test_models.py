"""The models: shapes, causality, the architecture switches, attention equivalences, parameter
counts of the ladder, and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from llmkit.config import DECODERS, ModelConfig, TrainConfig, load_recipe
from llmkit.layers.attention import Attention
from llmkit.layers.positions import RoPE, sinusoid_table
from llmkit.models import build_model, count_parameters
from llmkit.training.schedule import learning_rate

from conftest import RECIPES

SWITCHES = [
    {},
    {"positions": "sinusoidal"}, {"positions": "rope"}, {"positions": "none"},
    {"norm": "rmsnorm"}, {"mlp": "swiglu"}, {"mlp": "relu2"},
    {"n_kv_head": 2}, {"n_kv_head": 1}, {"qk_norm": True}, {"tie_embeddings": False},
    {"bias": True}, {"attention": "explicit"}, {"dropout": 0.1}, {"logit_softcap": 2.0}, {"zero_init_proj": True},
    {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 1, "qk_norm": True},
]


def tiny(name="gpt", **kw):
    base = dict(name=name, vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=16)
    return ModelConfig(**{**base, **kw})


def changed_after(ids: torch.Tensor, t: int) -> torch.Tensor:
    other = ids.clone()
    other[:, t:] = (other[:, t:] + 1) % 50
    return other


@pytest.mark.parametrize("name", DECODERS)
def test_decoders_are_causal(name):
    torch.manual_seed(0)
    model = build_model(tiny(name)).eval()
    ids = torch.randint(50, (2, 16))
    a, b = model(ids), model(changed_after(ids, 9))
    assert a.shape == (2, 16, 50)
    torch.testing.assert_close(a[:, :9], b[:, :9], atol=1e-6, rtol=0)  # the past ignores the future
    assert not torch.allclose(a[:, 9:], b[:, 9:])  # and the changed positions do see it


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "default")
def test_every_gpt_switch_builds_trains_and_stays_causal(switches):
    torch.manual_seed(0)
    model = build_model(tiny(**switches))
    ids = torch.randint(50, (2, 16))
    logits = model(ids)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    torch.testing.assert_close(model(ids)[:, :7], model(changed_after(ids, 7))[:, :7], atol=1e-6, rtol=0)


def test_soft_capped_logits_are_the_capped_uncapped_ones():
    torch.manual_seed(0)
    plain = build_model(tiny())
    capped = build_model(tiny(logit_softcap=0.05))
    capped.load_state_dict(plain.state_dict())
    ids = torch.randint(50, (2, 16))
    z = plain(ids)
    assert z.abs().max() > 0.05  # so the cap does bind
    torch.testing.assert_close(capped(ids), 0.05 * torch.tanh(z / 0.05))
    assert capped(ids).abs().max() < 0.05


def test_zero_initialised_projections_start_at_zero_and_learn():
    torch.manual_seed(0)
    model = build_model(tiny(zero_init_proj=True))
    projections = [p for n, p in model.named_parameters() if n.endswith("proj.weight")]
    assert len(projections) == 4 and all(bool((p == 0).all()) for p in projections)  # 2 blocks x (attn, mlp)
    ids = torch.randint(50, (2, 16))
    torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
    assert all(p.grad.abs().sum() > 0 for p in projections)  # the zeros get a gradient: they move


def test_encoder_sees_both_directions_and_padding_is_invisible():
    torch.manual_seed(0)
    model = build_model(tiny("encoder")).eval()
    ids = torch.randint(50, (1, 16))
    assert not torch.allclose(model(ids)[:, :9], model(changed_after(ids, 9))[:, :9])
    # Positions 12.. are padding: whatever they hold, the real tokens' outputs are the same.
    mask = torch.arange(16)[None] < 12
    a, b = model(ids, mask), model(changed_after(ids, 12), mask)
    torch.testing.assert_close(a[:, :12], b[:, :12], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.pool(ids, mask), model.hidden(ids, mask)[:, :12].mean(1))


def test_seq2seq_decoder_is_causal_and_reads_the_source():
    torch.manual_seed(0)
    model = build_model(tiny("seq2seq")).eval()
    src, tgt = torch.randint(50, (2, 7)), torch.randint(50, (2, 10))
    a = model(src, tgt)
    assert a.shape == (2, 10, 50)
    torch.testing.assert_close(a[:, :5], model(src, changed_after(tgt, 5))[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(a, model(changed_after(src, 3), tgt))  # cross-attention is used
    mask = torch.arange(7)[None] < 5  # source padding is ignored
    torch.testing.assert_close(model(src, tgt, mask), model(changed_after(src, 5), tgt, mask), atol=1e-6, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_equals_explicit_attention(causal):
    torch.manual_seed(0)
    sdpa = Attention(tiny(n_kv_head=2), causal)
    explicit = Attention(tiny(n_kv_head=2, attention="explicit"), causal)
    explicit.load_state_dict(sdpa.state_dict())
    x, mask = torch.randn(3, 16, 16), torch.rand(3, 16) > 0.3
    mask[:, 0] = True
    torch.testing.assert_close(sdpa(x, key_mask=mask), explicit(x, key_mask=mask), atol=1e-5, rtol=1e-5)
    weights = explicit.weights  # (B, H, T, S), rows sum to one, nothing on masked keys
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 16))
    real = mask[:, None, :, None].expand_as(weights)  # rows of real queries
    assert (weights[real & ~mask[:, None, None, :].expand_as(weights)] == 0).all()
    if causal:
        assert (weights.triu(diagonal=1) == 0).all()
        # A padding query also sees itself (left-padded prompts would give it no key at all: NaN).
        eye = torch.eye(16, dtype=torch.bool).expand_as(weights)
        assert (weights[~real & eye] > 0).all()


def test_gqa_equals_mha_with_each_kv_head_copied():
    """K key/value heads serving H/K query heads each = MHA whose heads share copies of them."""
    torch.manual_seed(0)
    gqa = Attention(tiny(n_kv_head=2), causal=True)
    mha = Attention(tiny(), causal=True)
    state = gqa.state_dict()
    D = 4
    k, v = state["kv.weight"].view(2, 2, D, 16)  # (keys|values, K, D, C)
    state["kv.weight"] = torch.cat([k.repeat_interleave(2, 0), v.repeat_interleave(2, 0)]).reshape(32, 16)
    mha.load_state_dict(state)
    x = torch.randn(2, 16, 16)
    torch.testing.assert_close(gqa(x), mha(x))


def test_rope_scores_depend_on_relative_position_only():
    rope = RoPE(head_dim=8, block_size=32)
    q, k = torch.randn(8), torch.randn(8)

    def score(t, s):
        qs = rope(q.expand(1, 1, 32, 8))[0, 0, t]
        ks = rope(k.expand(1, 1, 32, 8))[0, 0, s]
        return qs @ ks

    torch.testing.assert_close(score(5, 2), score(20, 17))
    torch.testing.assert_close(score(9, 9), q @ k)  # no rotation between equal positions


def test_sinusoidal_table_matches_the_formula():
    table = sinusoid_table(50, 16)
    t, i = 37, 3
    assert table[t, 2 * i] == pytest.approx(math.sin(t / 10000 ** (2 * i / 16)), abs=1e-5)
    assert table[t, 2 * i + 1] == pytest.approx(math.cos(t / 10000 ** (2 * i / 16)), abs=1e-5)


def test_gpt_head_is_tied_to_the_embedding_unless_switched_off():
    model = build_model(tiny())
    assert model.lm_head.weight is model.embed.wte.weight
    untied = build_model(tiny(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embed.wte.weight


def test_gpt_parameter_count_formula():
    # Per block: q and kv 3C^2 + proj C^2 + MLP 8C^2 + two LayerNorm gains 2C (no biases);
    # plus token embedding V*C (shared with the head), positions T*C and the final norm C.
    V, T, C, L = 65, 64, 128, 4
    config = ModelConfig(vocab_size=V, block_size=T, n_embd=C, n_layer=L, n_head=4)
    assert count_parameters(build_model(config)) == L * (12 * C * C + 2 * C) + V * C + T * C + C == 804_096


# The seed's ranges for the rungs (issue 4), with the Tiny Shakespeare vocabulary of 65 characters.
LADDER = {
    "shakespeare_bigram": (4_000, 12_000),  # the seed says "about 10K"; 65 x 32 + 32 x 65 + 65 = 4,225
    "shakespeare_single_head": (10_000, 100_000),
    "shakespeare_multi_head": (10_000, 100_000),
    "shakespeare_block": (100_000, 200_000),
    "shakespeare_gpt": (750_000, 950_000),  # "about 850K"
}


@pytest.mark.parametrize("recipe,bounds", LADDER.items())
def test_rung_parameter_counts_fall_in_the_seed_ranges(recipe, bounds):
    config = load_recipe(RECIPES / f"{recipe}.yaml").model
    count = count_parameters(build_model(dataclasses.replace(config, vocab_size=65)))
    assert bounds[0] <= count <= bounds[1], count


def test_longer_input_than_the_context_is_an_error():
    with pytest.raises(ValueError, match="longer than block_size"):
        build_model(tiny())(torch.zeros(1, 17, dtype=torch.long))


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    rates = [learning_rate(step, cfg) for step in range(111)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))  # monotone decay after warmup
    assert rates[60] == pytest.approx((1e-3 + 1e-4) / 2)  # half way through the cosine
    assert rates[110] == pytest.approx(1e-4)
