"""Imported configurations are validated: a Hugging Face GPT-2 directory whose config.json is
missing a field, has one of the wrong type or range, disagrees with its weights or asks for a switch
llmkit lacks is refused (exit code 2, naming the field, at once, without allocating the model),
and a switch llmkit does implement (an untied output head) gives transformers' logits."""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")


def make_hf_directory(directory: Path, **config) -> transformers.GPT2LMHeadModel:
    """A tiny random GPT2LMHeadModel saved as `save_pretrained` does, with GPT-2 tokenizer files
    (vocab.json, merges.txt) of a small byte-level BPE; every tensor randomised (HF starts biases
    at zero and norms at one, which would hide mistakes)."""
    from llmkit.data.bpe import save_gpt2_files, train_bpe

    tokenizer = train_bpe(["some text, and some more text about other things. " * 100], 300)
    settings = {"vocab_size": max(97, tokenizer.vocab_size), "n_positions": 32, "n_embd": 48, "n_layer": 2,
                "n_head": 4, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": 0,
                "eos_token_id": 0}
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**settings, **config})).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    hf.save_pretrained(directory)
    save_gpt2_files(tokenizer, directory)
    assert tokenizer.vocab_size <= hf.config.vocab_size
    return hf


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    make_hf_directory(directory)
    return directory


def edited(hf_dir: Path, tmp_path: Path, key: str, value) -> Path:
    """A copy of the directory with config.json's `key` set to `value` (removed for ...)."""
    directory = tmp_path / "edited"
    shutil.copytree(hf_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    if value is ...:
        del config[key]
    else:
        config[key] = value
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def test_the_directory_itself_generates(hf_dir, cli):
    """The control: unedited, the same command works, so each refusal below is the edit's doing."""
    result = cli("generate", hf_dir, "-p", "hi", "-n", "2", "--seed", "1")
    assert result.code == 0 and result.out.startswith("hi"), result.err


@pytest.mark.parametrize(("key", "value", "says"), [
    ("vocab_size", ..., "missing"),
    ("n_layer", "two", "'two'"),
    ("n_layer", 3, "3"),
    ("n_positions", 16, "16"),
    ("vocab_size", 10**9, "1,000,000,000"),
    ("n_head", 5, "n_head=5"),
    ("layer_norm_epsilon", -1, "positive"),
    ("tie_word_embeddings", "yes", "bool"),
    ("scale_attn_by_inverse_layer_idx", True, "not implemented"),
    ("activation_function", "relu", "'relu' is not implemented"),
    ("n_inner", 10, "10 is not implemented"),
    ("add_cross_attention", True, "not implemented"),
    ("model_type", "gpt_neox", "gpt_neox"),
])
def test_a_bad_config_json_is_refused_naming_the_field(hf_dir, tmp_path, cli, key, value, says):
    directory = edited(hf_dir, tmp_path, key, value)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    result = cli("generate", directory, "-p", "hi", "-n", "2")
    elapsed = time.perf_counter() - started
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert result.code == 2, (result.code, result.out, result.err)
    first_line = result.err.splitlines()[0]
    assert first_line.startswith("error: ") and "recipe" not in first_line, result.err
    assert key in result.err and says in result.err, result.err
    assert str(directory) in result.err or "config" in result.err, result.err
    assert "Traceback" not in result.err and result.out == ""
    assert elapsed < 5.0, f"took {elapsed:.1f} s to refuse"
    assert grown_mb < 200, f"the peak memory grew by {grown_mb:.0f} MB before refusing"


def test_an_untied_head_gives_the_logits_of_transformers(tmp_path):
    from llmkit.loading import load_model

    directory = tmp_path / "untied"
    hf = make_hf_directory(directory, tie_word_embeddings=False)
    torch.manual_seed(1)
    hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.transformer.wte.weight) * 0.2)  # a head of its own
    hf.save_pretrained(directory)
    assert json.loads((directory / "config.json").read_text())["tie_word_embeddings"] is False
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    assert not torch.equal(reloaded.lm_head.weight, reloaded.transformer.wte.weight)  # saved untied

    loaded = load_model(directory)
    assert loaded.config.tie_embeddings is False
    ids = torch.randint(hf.config.vocab_size, (2, 32))
    with torch.no_grad():
        expected = reloaded(ids).logits
        torch.testing.assert_close(loaded.model(ids), expected, atol=1e-5, rtol=1e-5)
        # ... and not what the tied head (the embedding) would give
        tied = torch.nn.functional.linear(reloaded.transformer(ids).last_hidden_state, reloaded.transformer.wte.weight)
        assert (loaded.model(ids) - tied).abs().max() > 0.1
