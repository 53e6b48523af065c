"""The models: shapes, causality, parameter counts, and the learning-rate schedule."""

from __future__ import annotations

import pytest
import torch

from llmkit.config import ModelConfig, TrainConfig
from llmkit.models import build_model, count_parameters
from llmkit.schedule import learning_rate



def tiny(name="gpt", **kw):
    return ModelConfig(name=name, vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw)


@pytest.mark.parametrize("name", ["bigram", "gpt"])
def test_logits_shape(name):
    model = build_model(tiny(name))
    assert model(torch.randint(50, (3, 16))).shape == (3, 16, 50)


@pytest.mark.parametrize("name", ["bigram", "gpt"])
def test_output_at_t_ignores_later_tokens(name):
    torch.manual_seed(0)
    model = build_model(tiny(name)).eval()
    ids = torch.randint(50, (1, 16))
    changed = ids.clone()
    changed[0, 9:] = (changed[0, 9:] + 1) % 50
    a, b = model(ids), model(changed)
    assert torch.allclose(a[0, :9], b[0, :9], atol=1e-6)
    if name == "gpt":
        assert not torch.allclose(a[0, 9:], b[0, 9:])  # and the changed positions do see it


def test_gpt_head_is_tied_to_the_embedding():
    model = build_model(tiny())
    assert model.lm_head.weight is model.wte.weight


def test_gpt_parameter_count_formula():
    # Per block: qkv 3C^2 + proj C^2 + MLP 8C^2 + two LayerNorm gains 2C (no biases);
    # plus token embedding V*C (shared with the head), positions T*C and the final norm C.
    V, T, C, L = 65, 64, 128, 4
    config = ModelConfig(vocab_size=V, block_size=T, n_embd=C, n_layer=L, n_head=4)
    assert count_parameters(build_model(config)) == L * (12 * C * C + 2 * C) + V * C + T * C + C == 804_096


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
