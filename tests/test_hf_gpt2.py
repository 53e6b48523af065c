"""Parity with the reference implementation: Hugging Face's GPT2LMHeadModel on a tiny random
config. Same weights (through the name table) must give the same logits, gradients and tokens."""

from __future__ import annotations

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.generate import generate
from llmkit.hf_gpt2 import config_from_hf, from_hf_state_dict, hf_config_dict, to_hf_state_dict
from llmkit.models import build_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=3, n_head=4,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                        bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():  # HF zeroes biases and sets LayerNorms to 1: randomise every tensor
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    config = config_from_hf(hf_config.to_dict())
    ours = build_model(config).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), config))
    return hf, ours, config


def test_logits_match(pair):
    hf, ours, _ = pair
    ids = torch.randint(97, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-5, rtol=1e-5)


def test_gradients_match(pair):
    hf, ours, config = pair
    ids = torch.randint(97, (2, 20))
    hf.zero_grad(), ours.zero_grad()
    hf(ids, labels=ids).loss.backward()
    logits = ours(ids)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    hf_grads = {name: p.grad for name, p in hf.named_parameters()}
    ours_grads = to_hf_state_dict({n: p.grad for n, p in ours.named_parameters()}, config)
    for name, grad in hf_grads.items():
        torch.testing.assert_close(ours_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_greedy_tokens_match(pair):
    hf, ours, _ = pair
    prompt = torch.randint(97, (1, 5))
    expected = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)[0, 5:].tolist()
    assert list(generate(ours, prompt, 20, temperature=0)) == expected


def test_export_round_trip_loads_in_transformers(pair):
    hf, ours, config = pair
    fresh = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config_dict(config))).eval()
    missing, unexpected = fresh.load_state_dict(to_hf_state_dict(ours.state_dict(), config), strict=False)
    assert not unexpected and all(name.endswith("attn.bias") or name.endswith("masked_bias") for name in missing)
    ids = torch.randint(97, (1, 32))
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)


def test_non_gpt2_shapes_are_refused():
    config = ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, positions="rope")
    with pytest.raises(LlmkitError, match="positions='rope'"):
        to_hf_state_dict(build_model(config).state_dict(), config)
