"""Parity with the reference implementation: Hugging Face's GPT2LMHeadModel on a tiny random
config. Same weights (through the name table) must give the same logits, gradients and tokens."""

from __future__ import annotations

import json

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.formats.hf import config_from_hf, from_hf_state_dict, hf_config_dict, to_hf_state_dict
from llmkit.inference.decoding import generate
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
    capped = ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, bias=True, logit_softcap=30.0)
    with pytest.raises(LlmkitError, match="logit_softcap=30.0"):  # GPT-2 and Llama have no cap
        to_hf_state_dict(build_model(capped).state_dict(), capped)


# --- whole directories: import from `save_pretrained`, export for `from_pretrained` ------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, mirror):
    """A tiny random GPT-2 with GPT-2's real tokenizer files, as `save_pretrained` writes it."""
    import shutil

    torch.manual_seed(1)
    hf_config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.1)
    directory = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    hf.save_pretrained(directory)
    shutil.copy(mirror / "gpt2_tokenizer/encoder.json", directory / "vocab.json")
    shutil.copy(mirror / "gpt2_tokenizer/vocab.bpe", directory / "merges.txt")
    return hf, directory


def test_an_hf_directory_loads_with_transformers_logits(hf_dir, tmp_path, mirror):
    import shutil

    from llmkit.data.bpe import gpt2_tokenizer
    from llmkit.data.tokenizer import identity
    from llmkit.loading import load_model

    hf, directory = hf_dir
    assert (directory / "model.safetensors").is_file()
    ids = torch.randint(50257, (2, 40))
    with torch.no_grad():
        expected = hf(ids).logits
        trained = load_model(directory)
        torch.testing.assert_close(trained.model(ids), expected, atol=1e-5, rtol=1e-5)
    # vocab.json + merges.txt are GPT-2's encoder.json + vocab.bpe: the same tokenizer, same identity
    assert identity(trained.tokenizer) == identity(gpt2_tokenizer(mirror / "gpt2_tokenizer"))
    # pytorch_model.bin holding GPT2Model's bare names (`h.0...`), as older checkpoints do
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("config.json", "vocab.json", "merges.txt"):
        shutil.copy(directory / name, bin_dir / name)
    torch.save(hf.transformer.state_dict(), bin_dir / "pytorch_model.bin")
    with torch.no_grad():
        torch.testing.assert_close(load_model(bin_dir).model(ids), expected, atol=1e-5, rtol=1e-5)


def test_an_hf_directory_generates_and_finetunes_from_the_cli(hf_dir, workdir, cli):
    hf, directory = hf_dir
    prompt = "The meaning of life"
    out = cli("generate", directory, "-p", prompt, "-n", "8", "--temperature", "0", "--no-echo", "--json")
    assert out.code == 0, out.err
    ids = torch.tensor([hf_tokens(directory, prompt)])
    expected = hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    assert json.loads(out.out)["text"] == tokenizer.decode(expected) and len(set(expected)) > 1
    refused = cli("eval", directory)
    assert refused.code == 2 and "--text" in refused.err
    tuned = cli("finetune", "spam", "--base", directory, "--mode", "lora", "train.max_steps=2",
                "train.eval_interval=2", "train.eval_steps=1", "--device", "cpu")
    assert tuned.code == 0, tuned.err
    assert "trainable" in tuned.err and tuned.out.strip() == "runs/spam_tiny-gpt2_lora"


def hf_tokens(directory, text: str) -> list[int]:
    """The ids transformers' own tokenizer gives for text, from the directory's files."""
    return transformers.AutoTokenizer.from_pretrained(directory)(text)["input_ids"]


def test_export_loads_in_from_pretrained_with_the_same_logits_and_tokens(workdir, cli):
    from llmkit.loading import load_model

    base = cli("train", "wikitext2_bpe", "model.bias=true", "model.n_layer=2", "model.n_embd=32",
               "data.vocab_size=300", "train.max_steps=3", "train.eval_interval=3", "train.eval_steps=1",
               "train.sample_tokens=0", "out_dir=runs/small", "--device", "cpu")
    assert base.code == 0, base.err
    lora = cli("train", "wikitext2_bpe", "model.bias=true", "model.n_layer=2", "model.n_embd=32",
               "data.vocab_size=300", "train.max_steps=3", "train.eval_interval=3", "train.eval_steps=1",
               "train.sample_tokens=0", "out_dir=runs/small_lora", "train.init_from=runs/small",
               "train.finetune=lora", "train.lr=0.05", "--device", "cpu")
    assert lora.code == 0, lora.err
    text = "The city of Paris , in 1889 , built a tower."
    for run in ("runs/small", "runs/small_lora"):
        exported = cli("export", run, "--out", f"{run}_hf")
        assert exported.code == 0, exported.err
        assert {p.rsplit("/", 1)[-1] for p in exported.out.split()} == {"config.json", "model.safetensors",
                                                                         "vocab.json", "merges.txt"}
        ours = load_model(run)
        hf = transformers.GPT2LMHeadModel.from_pretrained(f"{run}_hf").eval()
        ids = hf_tokens(f"{run}_hf", text)
        assert ids == ours.tokenizer.encode(text).tolist()
        with torch.no_grad():
            torch.testing.assert_close(hf(torch.tensor([ids])).logits, ours.model(torch.tensor([ids])),
                                       atol=1e-5, rtol=1e-5)
    refused = cli("export", "runs/small", "--out", "x", "--format", "onnx")
    assert refused.code == 2 and "--format" in refused.err


def test_export_refuses_models_gpt2_cannot_hold(debug_run, workdir, cli):
    refused = cli("export", debug_run, "--out", "exported")
    assert refused.code == 2 and "not GPT-2-shaped" in refused.err and "Traceback" not in refused.err


def test_a_gpt2_shaped_run_exports_to_gguf(workdir, cli):
    """llama.cpp's gpt2 architecture: the file reads back in llmkit and in transformers' GGUF
    loader with the run's logits and ids."""
    from llmkit.loading import load_model

    # Context 1024: transformers' GGUF reader takes GPT-2's n_positions from its default (1024), not
    # from gpt2.context_length, so another length would not load there (llmkit reads it back either way).
    base = cli("train", "wikitext2_bpe", "model.bias=true", "model.n_layer=2", "model.n_embd=32",
               "model.block_size=1024", "data.vocab_size=300", "train.max_steps=2", "train.eval_interval=2",
               "train.eval_steps=1", "train.batch_size=2", "train.sample_tokens=0", "out_dir=runs/small", "--device", "cpu")
    assert base.code == 0, base.err
    written = cli("export", "runs/small", "--format", "gguf", "--out", "small.gguf", "--type", "f32")
    assert written.code == 0, written.err
    ours, back = load_model("runs/small"), load_model(workdir / "small.gguf")
    assert back.config.positions == "learned" and back.config.bias and back.config.n_layer == 2
    text = "The city of Paris , in 1889 , built a tower."
    ids = torch.tensor([ours.tokenizer.encode(text).tolist()])
    assert back.tokenizer.encode(text).tolist() == ids[0].tolist()
    hf = transformers.AutoModelForCausalLM.from_pretrained(workdir, gguf_file="small.gguf").eval()
    with torch.no_grad():
        expected = ours.model(ids)
        torch.testing.assert_close(back.model(ids), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hf(ids).logits, expected, atol=1e-4, rtol=1e-4)
