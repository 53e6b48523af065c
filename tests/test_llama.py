"""Llama-family weights in and out, on tiny random models (no download): a LlamaForCausalLM saved
by transformers loads with the same logits and greedy tokens, through save_pretrained directories
(one file or shards) and GGUF files, and llmkit's exports load back in transformers the same."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from tiny_llama import TEMPLATE, TEXT, tiny_llama  # noqa: E402 (after the importorskips)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama") / "tiny-llama"
    return directory, tiny_llama(directory)


def ids_of(loaded, text=TEXT):
    return torch.tensor([loaded.tokenizer.encode(text).tolist()])


@pytest.mark.parametrize("tie,shards", [(True, False), (False, True)], ids=["tied", "untied-sharded"])
def test_hf_llama_directory_loads_with_the_same_logits_and_greedy_tokens(tmp_path, tie, shards):
    from llmkit.inference.decoding import generate
    from llmkit.loading import load_model

    reference = tiny_llama(tmp_path / "m", tie=tie, shards=shards)
    if shards:
        assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    ours = load_model(tmp_path / "m")
    assert ours.config.tie_embeddings == tie and ours.config.kv_heads == 2 and ours.config.rope_base == 50000.0
    ids = ids_of(ours)
    with torch.no_grad():
        torch.testing.assert_close(ours.model(ids), reference(ids).logits, atol=1e-5, rtol=1e-5)
    expected = reference.generate(ids[:, :8], max_new_tokens=20, do_sample=False, pad_token_id=0)[0, 8:].tolist()
    assert list(generate(ours.model, ids[:, :8], 20, temperature=0)) == expected
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "m")
    assert hf_tok(TEXT, add_special_tokens=False)["input_ids"] == ids[0].tolist()


def test_export_hf_and_gguf_round_trip(llama_dir, tmp_path, cli):
    from llmkit.loading import load_model

    directory, reference = llama_dir
    ours = load_model(directory)
    ids = ids_of(ours)
    with torch.no_grad():
        expected = ours.model(ids)
    hf = cli("export", directory, "--out", tmp_path / "hf")
    assert hf.code == 0, hf.err
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(again).__name__ == "LlamaForCausalLM"
    tokens = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokens(TEXT, add_special_tokens=False)["input_ids"] == ids[0].tolist()
    assert tokens.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                      add_generation_prompt=True) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    for kind in ("f32", "f16"):
        path = tmp_path / f"tiny.{kind}.gguf"
        written = cli("export", directory, "--format", "gguf", "--out", path, "--type", kind)
        assert written.code == 0, written.err
        from_gguf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()
        back = load_model(path)
        tolerance = 1e-5 if kind == "f32" else 2e-2
        with torch.no_grad():
            torch.testing.assert_close(again(ids).logits, expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(from_gguf(ids).logits, expected, atol=tolerance, rtol=tolerance)
            torch.testing.assert_close(back.model(ids), expected, atol=tolerance, rtol=tolerance)
        assert back.tokenizer.encode(TEXT).tolist() == ids[0].tolist()
        assert back.tokenizer.chat_template == TEMPLATE
    refused = cli("export", directory, "--format", "gguf", "--out", tmp_path / "tiny.f32.gguf")
    assert refused.code == 2 and "--force" in refused.err


def test_gguf_query_and_key_rows_are_in_llama_cpp_order(llama_dir, tmp_path):
    """llama.cpp's converter interleaves the two halves of each rotary head; a file written with
    llmkit must hold what llama.cpp's own converter would write (its permute), and read back."""
    from llmkit.formats.gguf import write_gguf
    from llmkit.loading import load_model

    directory, reference = llama_dir
    ours = load_model(directory)
    path = write_gguf(ours.model, ours.config, ours.tokenizer, tmp_path / "m.gguf", "f32")
    reader = gguf.GGUFReader(path)
    stored = {t.name: np.array(t.data) for t in reader.tensors}
    q = reference.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    heads = 4
    llama_cpp = q.reshape(heads, 2, q.shape[0] // heads // 2, q.shape[1]).swapaxes(1, 2).reshape(q.shape)
    np.testing.assert_allclose(stored["blk.0.attn_q.weight"], llama_cpp, atol=1e-6)
    k = reference.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    llama_cpp_k = k.reshape(2, 2, k.shape[0] // 2 // 2, k.shape[1]).swapaxes(1, 2).reshape(k.shape)
    np.testing.assert_allclose(stored["blk.0.attn_k.weight"], llama_cpp_k, atol=1e-6)


def test_chat_template_renders_as_transformers_does(llama_dir):
    from llmkit.inference.chat import render, special_tokens
    from llmkit.loading import read_checkpoint

    directory, _ = llama_dir
    tokenizer = read_checkpoint(directory).tokenizer
    reference = transformers.AutoTokenizer.from_pretrained(directory)
    conversations = [[{"role": "user", "content": "Hi"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "2+2?"}]]
    for messages in conversations:
        for prompt in (True, False):
            ours = render(tokenizer.chat_template, messages, prompt, **special_tokens(tokenizer))
            assert ours == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert tokenizer.encode(ours).tolist() == reference(ours, add_special_tokens=False)["input_ids"]


def test_chat_and_dtype_through_the_cli(llama_dir, cli, tmp_path):
    directory, _ = llama_dir
    answer = cli("generate", directory, "--chat", "-n", "5", "--temperature", "0", "--json", stdin="hello\n")
    assert answer.code == 0, answer.err
    row = json.loads(answer.out)
    assert row["prompt"] == "hello\n" and row["stop_reason"] in ("eos", "length")
    half = cli("generate", directory, "-p", "hello", "-n", "5", "--temperature", "0", "--dtype", "bf16", "--json")
    assert half.code == 0, half.err
    refused = cli("generate", directory, "-p", "hi", "--dtype", "fp16", "--device", "cpu")
    assert refused.code == 2 and "fp16 needs a GPU" in refused.err
    chatted = cli("chat", directory, "-n", "4", "--seed", "1", stdin="hello\n/reset\nhow are you?\n/quit\nignored\n")
    assert chatted.code == 0, chatted.err
    assert len(chatted.out.splitlines()) >= 2 and "forgotten" in chatted.err
    (tmp_path / "no-template").mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / "no-template" / name).write_bytes((directory / name).read_bytes())
    refused = cli("generate", tmp_path / "no-template", "--chat", "-p", "hi")
    assert refused.code == 2 and "no chat template" in refused.err and "Traceback" not in refused.err


def test_bf16_logits_stay_close_to_fp32(llama_dir):
    from llmkit.loading import load_model

    directory, _ = llama_dir
    full, half = load_model(directory), load_model(directory, dtype="bf16")
    ids = ids_of(full)
    with torch.no_grad():
        a, b = full.model(ids), half.model(ids).float()
    assert (a - b).abs().max() < 0.05 * a.abs().max()


# --- what is refused, by name ----------------------------------------------------------------------


def edited(llama_dir, tmp_path, **changes):
    directory, _ = llama_dir
    copy = tmp_path / "edited"
    copy.mkdir()
    for path in directory.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("changes,message", [
    ({"model_type": "qwen2"}, "qwen2"),
    ({"model_type": "mamba"}, "not one llmkit reads"),
    ({"vocab_size": None}, "vocab_size: missing"),
    ({"num_hidden_layers": "two"}, "num_hidden_layers: expected a positive number"),
    ({"num_hidden_layers": 4}, "the config disagrees with the weights"),
    ({"num_hidden_layers": 2}, "the config disagrees with the weights"),
    ({"intermediate_size": 128}, "do not fit"),
    ({"vocab_size": 10**9}, "vocab_size: must be at most"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"model_type": "mistral", "sliding_window": 16}, "sliding_window"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_hf_configs_llmkit_does_not_implement_are_refused(llama_dir, tmp_path, cli, changes, message):
    copy = edited(llama_dir, tmp_path, **changes)
    result = cli("generate", copy, "-p", "hi", "-n", "2")
    assert result.code == 2, result.err
    assert message in result.err and "Traceback" not in result.err
    assert "recipe" not in result.err.splitlines()[0]  # a config.json is not a recipe


def write_gguf_file(path, arch):
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_bad_gguf_files_are_refused(tmp_path, cli, llama_dir, monkeypatch):
    from llmkit.formats import gguf as ours
    from llmkit.loading import load_model

    write_gguf_file(tmp_path / "mamba.gguf", arch="mamba")
    result = cli("generate", tmp_path / "mamba.gguf", "-p", "hi")
    assert result.code == 2 and "'mamba'" in result.err and "gpt2, llama" in result.err
    (tmp_path / "fake.gguf").write_bytes(b"GGUF" + bytes(20))
    result = cli("generate", tmp_path / "fake.gguf", "-p", "hi")
    assert result.code == 2 and "not a readable GGUF" in result.err and "Traceback" not in result.err
    loaded = load_model(llama_dir[0])
    whole = ours.write_gguf(loaded.model, loaded.config, loaded.tokenizer, tmp_path / "whole.gguf", "f16")
    (tmp_path / "cut.gguf").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    result = cli("generate", tmp_path / "cut.gguf", "-p", "hi")
    assert result.code == 2 and "Traceback" not in result.err, result.err
    # A quantization the gguf library cannot dequantize (Q8_1: blocks of 32 weights in 40 bytes).
    add_tensor = ours._add_tensor

    def q8_1_embedding(writer, name, array, tensor_type):
        if name != "token_embd.weight":
            return add_tensor(writer, name, array, tensor_type)
        rows, cols = array.shape
        writer.add_tensor(name, np.zeros((rows, cols // 32 * 40), dtype=np.uint8),
                          raw_dtype=gguf.GGMLQuantizationType.Q8_1)

    monkeypatch.setattr(ours, "_add_tensor", q8_1_embedding)
    ours.write_gguf(loaded.model, loaded.config, loaded.tokenizer, tmp_path / "q8_1.gguf", "f16")
    monkeypatch.undo()
    result = cli("generate", tmp_path / "q8_1.gguf", "-p", "hi")
    assert result.code == 2 and "Q8_1" in result.err and "Traceback" not in result.err, result.err


# GGML block types and, for those the gguf library cannot quantize (the K-quants), where their
# fp16 scale fields sit in a block: random blocks get small finite scales there.
K_QUANTS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


@pytest.mark.parametrize("kind", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", *K_QUANTS])
def test_every_tensor_type_dequantizes_as_transformers_does(kind, tmp_path, monkeypatch):
    """A GGUF whose matrices are all stored as `kind`, read by llmkit (the gguf library's
    dequantizer) and by transformers (its own): the same logits."""
    from gguf.constants import GGML_QUANT_SIZES
    from gguf.quants import quantize

    from llmkit.formats import gguf as ours
    from llmkit.loading import load_model

    reference = tiny_llama(tmp_path / "m", hidden_size=256, intermediate_size=512)  # rows of 256: K-quant blocks
    loaded = load_model(tmp_path / "m")
    qtype = gguf.GGMLQuantizationType[kind]
    rng = np.random.default_rng(0)

    def add(writer, name, array, tensor_type):
        if array.ndim != 2:
            return writer.add_tensor(name, array.astype(np.float32))
        if kind not in K_QUANTS:
            return writer.add_tensor(name, quantize(array.astype(np.float32), qtype), raw_dtype=qtype)
        block, size = GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 0x30, (array.shape[0], array.shape[1] // block, size), dtype=np.uint8)
        for offset in K_QUANTS[kind]:  # fp16 scales of about 0.001 .. 0.01
            blocks[..., offset : offset + 2] = np.frombuffer(
                rng.uniform(1e-3, 1e-2, blocks.shape[:2]).astype(np.float16).tobytes(), np.uint8).reshape(*blocks.shape[:2], 2)
        writer.add_tensor(name, blocks.reshape(array.shape[0], -1), raw_dtype=qtype)

    monkeypatch.setattr(ours, "_add_tensor", add)
    path = ours.write_gguf(loaded.model, loaded.config, loaded.tokenizer, tmp_path / f"m.{kind}.gguf")
    monkeypatch.undo()
    mine = load_model(path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()
    ids = ids_of(mine)[:, :32]
    with torch.no_grad():
        a, b = mine.model(ids), theirs(ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    if kind in ("F32", "F16", "BF16", "Q8_0"):  # close to the unquantized model, too
        assert (a - reference(ids).logits).abs().max() < 0.1 * reference(ids).logits.abs().max()


def test_a_hub_name_is_fetched_with_huggingface_hub_then_loaded(llama_dir, monkeypatch):
    """`hf:REPO` asks the hub for the repository's files, fetches the ones a model needs, and loads
    them like a local directory (the hub faked here: no network in tests)."""
    import os

    import huggingface_hub

    from llmkit.loading import load_model

    directory, _ = llama_dir
    asked = {}

    def snapshot_download(repo, allow_patterns):
        asked["repo"], asked["patterns"] = repo, allow_patterns
        return str(directory)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo: os.listdir(directory) + ["README.md"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    hub, local = load_model("hf:someone/tiny-llama"), load_model(directory)
    assert asked["repo"] == "someone/tiny-llama" and "model.safetensors" in asked["patterns"]
    assert "README.md" not in asked["patterns"]
    ids = ids_of(local)
    with torch.no_grad():
        torch.testing.assert_close(hub.model(ids), local.model(ids))
