"""A real pretrained model through llmkit: SmolLM2-135M-Instruct from the data mirror's GGUF file,
against transformers' own GGUF loader on the same file. Skipped when the file is absent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

GGUF = Path(os.environ.get("LLMKIT_DATA_MIRROR", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
pytestmark = pytest.mark.skipif(not GGUF.is_file(), reason=f"the SmolLM2 GGUF file is not in the data mirror ({GGUF})")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\nprint([fib(i) for i in range(10)])",
    "In 2024, 12,345 people paid $67.89 each; π ≈ 3.14159 and 1e-5 is small.",
    "Emoji 🙂🚀 and CJK 日本語のテキスト, 中文文本, 한국어 텍스트.",
    "runs   of    spaces\n\n\n\tand tabs\r\n  and newlines  \n",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<|endoftext|>",
]


@pytest.fixture(scope="module")
def pair():
    from llmkit.loading import load_model

    ours = load_model(GGUF)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name,
                                                               dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    return ours, theirs, tokenizer


def test_the_header_becomes_llmkits_switches(pair):
    config = pair[0].config
    assert (config.n_layer, config.n_embd, config.n_head, config.kv_heads, config.hidden) == (30, 576, 9, 3, 1536)
    assert (config.positions, config.norm, config.mlp, config.bias, config.tie_embeddings) == \
        ("rope", "rmsnorm", "swiglu", False, True)
    assert config.rope_base == 100000.0 and config.vocab_size == 49152 and config.block_size == 8192
    assert sum(p.numel() for p in pair[0].model.parameters()) == 134_515_008


def test_logits_and_greedy_tokens_match_transformers(pair):
    ours, theirs, tokenizer = pair
    prompts = [TEXTS[0] * 3, TEXTS[1] * 2, "Once upon a time, in a land far away, there lived a king who"]
    for text in prompts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"][:64]])
        with torch.no_grad():
            difference = (ours.model(ids) - theirs(ids).logits).abs().max().item()
        assert difference <= 1e-3, (text[:20], difference)
    from llmkit.inference.decoding import generate

    ids = torch.tensor([tokenizer(prompts[2], add_special_tokens=False)["input_ids"]])
    expected = theirs.generate(ids, max_new_tokens=64, do_sample=False, pad_token_id=2, eos_token_id=None)
    assert list(generate(ours.model, ids, 64, temperature=0)) == expected[0, ids.shape[1]:].tolist()


def test_tokenizer_ids_equal_transformers(pair):
    ours, _, tokenizer = pair
    for text in TEXTS:
        assert ours.tokenizer.encode(text).tolist() == tokenizer(text, add_special_tokens=False)["input_ids"], text
        assert ours.tokenizer.decode(ours.tokenizer.encode(text)) == text
    assert ours.tokenizer.encode("2024").tolist() == [34, 32, 34, 36]  # every digit its own token (smollm)
    assert (ours.tokenizer.bos_id, ours.tokenizer.eos_id) == (1, 2) and 0 in ours.tokenizer.end_ids


def test_chat_template_renders_byte_equal(pair):
    from llmkit.inference.chat import render, special_tokens

    ours, _, tokenizer = pair
    system = [{"role": "system", "content": "You answer in one word."}]
    turns = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
             {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome."},
             {"role": "user", "content": "Spain?"}]
    for n in (1, 3, 5):
        for head in ([], system):
            messages = head + turns[:n]
            text = render(ours.tokenizer.chat_template, messages, True, **special_tokens(ours.tokenizer))
            assert text == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_download_then_a_chat_answer_names_paris_and_stops_by_itself(workdir, cli):
    fetched = cli("download", "smollm2")
    assert fetched.code == 0 and fetched.out.strip() == "data/raw/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    answer = cli("generate", "smollm2", "--chat", "--temperature", "0", "--json",
                 stdin="What is the capital of France?\n")
    assert answer.code == 0, answer.err
    row = json.loads(answer.out)
    assert "Paris" in row["text"] and row["stop_reason"] == "eos" and row["tokens"] < 40
