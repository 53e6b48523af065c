"""Finetuning a pretrained Llama-shaped model, as `--base smollm2` does, on a tiny random one saved
as transformers saves it (tests/tiny_llama.py): LoRA changes only the adapters and the head, the
classifier reads the same last real token under either padding, the instruct loss scores only the
response in the chat template as in the Alpaca format, and a finetuned run is a model like any
other (generate --chat, chat, eval, classify, export). One short run on SmolLM2 itself skips
without the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from llmkit.config import ModelConfig  # noqa: E402
from llmkit.layers.cross_entropy import IGNORE  # noqa: E402
from llmkit.loading import load_model, read_checkpoint  # noqa: E402
from llmkit.models import build_model  # noqa: E402
from llmkit.tasks.instruct import collate, encode_example  # noqa: E402
from llmkit.tasks.prompts import PromptFormat  # noqa: E402

from tiny_llama import TEMPLATE, tiny_llama  # noqa: E402 (after the importorskip)

# Absolute: the tests change directory.
SMOLLM2 = (Path(os.environ.get("LLMKIT_DATA_MIRROR", Path(__file__).resolve().parents[2] / "shared" / "data"))
           / "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").resolve()
SHORT = ("train.max_steps=3", "train.eval_interval=3", "train.eval_steps=1", "train.batch_size=4", "--device", "cpu")
ENTRY = {"instruction": "Rewrite the sentence in the past tense.", "input": "He goes home.", "output": "He went home."}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("base") / "tiny-llama"
    tiny_llama(directory, max_position_embeddings=1024)  # room for the instruct prompts in its small vocabulary
    return directory


def test_the_classifier_reads_the_last_real_token_under_left_or_right_padding():
    torch.manual_seed(0)
    config = ModelConfig(name="gpt", vocab_size=40, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                         positions="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_classes=2)
    model = build_model(config).eval()
    texts = [torch.randint(40, (n,)) for n in (5, 9, 2)]
    T = max(len(t) for t in texts)
    right, left = torch.zeros(3, T, dtype=torch.long), torch.zeros(3, T, dtype=torch.long)
    right_mask, left_mask = torch.zeros(3, T, dtype=torch.bool), torch.zeros(3, T, dtype=torch.bool)
    for row, ids in enumerate(texts):
        right[row, : len(ids)], right_mask[row, : len(ids)] = ids, True
        left[row, T - len(ids):], left_mask[row, T - len(ids):] = ids, True
    with torch.no_grad():
        alone = torch.cat([model(ids[None]) for ids in texts])
        torch.testing.assert_close(model(right, right_mask), alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(left, left_mask), alone, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(left), alone, atol=1e-3)  # the mask matters: without it padding is read


def test_merged_lora_equals_the_adapters_on_the_llama_shape():
    from llmkit.config import LoRAConfig
    from llmkit.layers.lora import LoRALinear, add_lora, merge_lora

    torch.manual_seed(0)
    config = ModelConfig(name="gpt", vocab_size=40, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                         positions="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    model = build_model(config).eval()
    assert add_lora(model, LoRAConfig(rank=4, alpha=8.0)) == 2 * 5  # q, kv, proj, fc (gate and up), proj
    with torch.no_grad():  # B starts at zero; make the update real
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.normal_(0.0, 0.5)
        ids = torch.randint(40, (2, 16))
        adapted = model(ids)
        torch.testing.assert_close(merge_lora(model)(ids), adapted, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["alpaca", "chat"])
def test_the_instruct_loss_scores_only_the_response_in_either_format(base, name):
    tokenizer = read_checkpoint(base).tokenizer
    form = PromptFormat(name, tokenizer)
    prompt, response = form.prompt(ENTRY), form.response_ids(ENTRY)
    reference = transformers.AutoTokenizer.from_pretrained(base)
    if name == "chat":  # the model's own template, as transformers renders it
        turn = [{"role": "user", "content": "Rewrite the sentence in the past tense.\n\nHe goes home."}]
        assert prompt == reference.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(response) == "He went home.<|im_end|>"
    else:
        assert prompt.endswith("### Response:\n") and tokenizer.decode(response[:-1]) == "He went home."
    assert response[-1] == tokenizer.eot_id  # the answer ends with the token generation stops at
    short = encode_example(form, {**ENTRY, "output": "No."}, block_size=1024)
    x, y, lengths = collate([encode_example(form, ENTRY, block_size=1024), short], pad=tokenizer.eot_id)
    for row, ids in enumerate(([*tokenizer.encode(prompt), *response], list(short[0]))):
        scored = y[row][y[row] != IGNORE].tolist()
        answer = form.response_ids(ENTRY if row == 0 else {**ENTRY, "output": "No."})
        assert scored == answer and ids[-len(answer):] == answer  # targets: the response, nothing else
        assert lengths[row] == len(ids) - 1 and x[row, : len(ids) - 1].tolist() == ids[:-1]


def test_the_response_loss_runs_the_head_only_where_it_scores(base):
    from llmkit.layers.cross_entropy import cross_entropy
    from llmkit.tasks.instruct import response_loss

    loaded = load_model(base)
    form = PromptFormat("chat", loaded.tokenizer)
    x, y, _ = collate([encode_example(form, ENTRY, 1024), encode_example(form, {**ENTRY, "output": "No."}, 1024)],
                      form.eot)
    model = loaded.model.train()
    fast = response_loss(model, x, y)
    fast.backward()
    fast_grad = model.embed.wte.weight.grad.clone()
    model.zero_grad()
    full = cross_entropy(model(x), y, reduction="sum")  # the head over every position
    full.backward()
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fast_grad, model.embed.wte.weight.grad, atol=1e-5, rtol=1e-4)


def test_auto_picks_chat_for_a_template_and_chat_without_one_is_refused(base, mirror):
    from llmkit.data.bpe import train_bpe
    from llmkit.errors import LlmkitError

    assert PromptFormat("auto", read_checkpoint(base).tokenizer).name == "chat"
    plain = train_bpe(["hello world " * 50], 300)
    assert PromptFormat("auto", plain).name == "alpaca"
    with pytest.raises(LlmkitError, match="needs a tokenizer with a chat template"):
        PromptFormat("chat", plain)


@pytest.mark.parametrize("mode", ["lora", "last_block", "all"])
def test_spam_on_a_pretrained_base_trains_only_what_the_mode_says(base, workdir, cli, mode):
    result = cli("finetune", "spam", "--base", base, "--mode", mode, *SHORT, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    run = Path(report["run"])
    assert run.name == "spam_tiny-llama" + ("" if mode == "all" else f"_{mode}") and 0.0 <= report["accuracy"] <= 1.0
    recipe = read_checkpoint(run).recipe  # recipes/spam_MODE.yaml: the settings for a pretrained base
    assert recipe.train.finetune == mode and recipe.data.bucket == 8 and recipe.model.dropout == 0.0
    assert "sequences of at most 1024 tokens" in result.err and "tok/s" in result.err
    before = {f"base.{k}": v for k, v in load_model(base).model.state_dict().items()}
    after = load_model(run, merge=False).model.state_dict()
    changed = {k for k, v in after.items() if k not in before or not torch.equal(v, before[k])}
    trains = {"lora": (".lora_", "head."), "last_block": ("base.blocks.2.", "base.norm_f.", "head."),  # 3 blocks
              "all": ("",)}[mode]
    assert changed and all(any(part in k for part in trains) for k in changed), sorted(changed)[:5]
    assert any(k.startswith("head.") for k in changed)
    touched = {"lora": "base.blocks.0.attn.q.lora_b", "last_block": "base.blocks.2.mlp.fc.weight",
               "all": "base.blocks.0.attn.q.weight"}[mode]
    assert touched in changed and (mode == "all") == ("base.embed.wte.weight" in changed)
    labelled = cli("classify", run, stdin="WINNER! claim your prize\nsee you at six\n")
    assert labelled.code == 0 and len(labelled.out.splitlines()) == 2, labelled.err
    measured = cli("eval", run, "--split", "val", "--json")
    assert measured.code == 0 and "accuracy" in json.loads(measured.out), measured.err


def test_instruct_lora_in_the_chat_template_is_a_model_like_any_other(base, workdir, cli, tmp_path):
    result = cli("finetune", "instruct", "--base", base, "--mode", "lora", *SHORT, "--json")
    assert result.code == 0, result.err
    run = Path(json.loads(result.out)["run"])
    recipe = read_checkpoint(run).recipe  # recipes/instruct_lora.yaml
    assert "chat prompts" in result.err and recipe.data.prompt_format == "auto" and recipe.data.bucket == 4
    answers = json.loads((run / "test_responses.json").read_text())
    assert len(answers) == 110 and all("model_response" in a for a in answers)
    chatted = cli("generate", run, "--chat", "-n", "4", "--temperature", "0", "--json", stdin="hello\n")
    assert chatted.code == 0, chatted.err
    assert cli("chat", run, "-n", "3", stdin="hello\n/quit\n").code == 0
    assert cli("eval", run, "--text", base / "tokenizer_config.json").code == 0
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    with torch.no_grad():
        ours = load_model(run, merge=True).model(ids)
        adapted = load_model(run, merge=False).model  # merged = unmerged, on the Llama shape
        assert any(".lora_a" in name for name in adapted.state_dict())
        torch.testing.assert_close(adapted(ids), ours, atol=1e-5, rtol=1e-5)
    out = tmp_path / "hf"
    assert cli("export", run, "--format", "hf", "--out", out).code == 0
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours, atol=1e-4, rtol=1e-4)
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == TEMPLATE
    assert cli("export", run, "--format", "gguf", "--out", tmp_path / "tuned.gguf", "--type", "f32").code == 0
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "tuned.gguf").model(ids), ours, atol=1e-4, rtol=1e-4)
    refused = cli("finetune", "spam", "--base", base, "--prompt-format", "chat")
    assert refused.code == 2 and "--prompt-format" in refused.err


@pytest.mark.skipif(not SMOLLM2.is_file(), reason=f"needs {SMOLLM2} (the data mirror's SmolLM2)")
def test_smollm2_spam_lora_steps_and_its_chat_prompts(workdir, cli):
    reference = transformers.AutoTokenizer.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name)
    form = PromptFormat("auto", load_model(SMOLLM2).tokenizer)
    turn = [{"role": "user", "content": "Rewrite the sentence in the past tense.\n\nHe goes home."}]
    assert form.name == "chat"
    assert form.prompt(ENTRY) == reference.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    assert form.tokenizer.decode(form.response_ids(ENTRY)) == "He went home.<|im_end|>"
    # fp32: the recipe's bf16 autocast is several times slower on a CPU without bf16 matmuls, and
    # this test is about LoRA on SmolLM2 and its prompts, not the precision (tests/test_engine.py's)
    result = cli("finetune", "spam", "--base", SMOLLM2, "--mode", "lora", "train.max_steps=2", "train.eval_interval=2",
                 "train.eval_steps=1", "train.batch_size=4", "train.precision=fp32", "--device", "cpu", "--json")
    assert result.code == 0, result.err
    assert "2,166,914 trainable" in result.err and json.loads(result.out)["examples"] == 300
    assert np.isfinite(json.loads(result.out)["loss"])
