"""Finetuning beyond classification: LoRA adapters, instruction tuning and its scoring."""

from __future__ import annotations

import http.server
import json
import threading

import numpy as np
import pytest
import torch

from llmkit.checkpoint import load_checkpoint
from llmkit.config import LoRAConfig, ModelConfig
from llmkit.errors import LlmkitError
from llmkit.layers.cross_entropy import IGNORE
from llmkit.layers.lora import LoRALinear, add_lora, has_lora, merge_lora
from llmkit.models import build_model, count_parameters
from llmkit.tasks.instruct import collate, format_prompt, read_entries, split_entries
from llmkit.tasks.scoring import Judge, exact_match, rouge_l, score_responses

from conftest import REPO

# --- LoRA -------------------------------------------------------------------------------------


def test_merged_lora_gives_the_adapter_model_logits():
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=True)).eval()
    add_lora(model, LoRAConfig(rank=4, alpha=8.0))
    with torch.no_grad():  # B starts at zero (the adapter model is the base); make the update real
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.normal_(0.0, 0.5)
    ids = torch.randint(50, (3, 16))
    with torch.no_grad():
        adapted = model(ids)
        merged = merge_lora(model)(ids)
    assert not has_lora(model)
    assert not torch.allclose(adapted, build_model(model.config).eval()(ids))  # the update matters
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    assert not any("lora" in name for name in model.state_dict())  # a plain model's names again


def test_lora_trains_only_adapters_counts_them_and_reloads(workdir, cli, debug_run):
    from llmkit.loading import load_model

    result = cli("train", REPO / "recipes/debug.yaml", f"train.init_from={debug_run}", "train.finetune=lora",
                 "train.lora.rank=8", "train.max_steps=5", "train.eval_interval=5", "train.eval_steps=2",
                 "train.lr=1e-2", "train.sample_tokens=0", "out_dir=runs/lora", "--device", "cpu")
    assert result.code == 0, result.err
    # debug: 2 blocks of C = 64; r (in + out) for attn.q 64->64, attn.kv 64->128, attn.proj 64->64,
    # mlp.fc 64->256, mlp.proj 256->64, with r = 8: 2 * 8 * (128 + 192 + 128 + 320 + 320)
    assert "17,408 trainable" in result.err
    base = load_checkpoint(debug_run / "best.pt")["model"]
    tuned = load_checkpoint(workdir / "runs/lora/latest.pt")
    assert tuned["lora"]["rank"] == 8
    adapters = [name for name in tuned["model"] if "lora_" in name]
    assert len(adapters) == 2 * 5 * 2  # layers x linears x (A, B)
    for name, tensor in tuned["model"].items():
        if name in adapters:
            assert name.endswith("lora_a") or tensor.abs().sum() > 0, f"{name} did not train"
        else:
            assert torch.equal(tensor, base[name]), f"frozen {name} changed"
    # The run loads with its adapters, merged or not, to the same logits.
    adapted, merged = load_model("runs/lora").model, load_model("runs/lora", merge=True).model
    ids = torch.randint(65, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), adapted(ids), atol=1e-5, rtol=1e-5)
    assert count_parameters(adapted) == 17_408 and not has_lora(merged)
    resumed = cli("train", REPO / "recipes/debug.yaml", f"train.init_from={debug_run}", "train.finetune=lora",
                  "train.max_steps=7", "train.eval_interval=5", "train.eval_steps=2", "train.lr=1e-2",
                  "train.sample_tokens=0", "out_dir=runs/lora", "--device", "cpu", "--resume")
    assert resumed.code == 0, resumed.err
    assert load_checkpoint(workdir / "runs/lora/latest.pt")["step"] == 7


def test_lora_module_names_are_checked():
    model = build_model(ModelConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(LlmkitError, match="'attn.query' matches no linear layer.*attn.q"):
        add_lora(model, LoRAConfig(modules="attn.query"))
    assert add_lora(model, LoRAConfig(modules="attn.q, mlp")) == 3  # attn.q, mlp.fc, mlp.proj


def test_lora_without_a_base_is_refused(workdir, cli):
    result = cli("train", REPO / "recipes/debug.yaml", "train.finetune=lora")
    assert result.code == 2 and "init_from" in result.err and "Traceback" not in result.err
    result = cli("finetune", "spam", "--mode", "lora")
    assert result.code == 2 and "--base" in result.err


# --- instruction tuning -----------------------------------------------------------------------


def test_instruct_split_and_prompt_format(mirror):
    entries = read_entries(mirror / "instruct/instruction-data.json")
    splits = split_entries(entries)
    assert {k: len(v) for k, v in splits.items()} == {"train": 935, "val": 55, "test": 110}
    assert splits["train"][0] == entries[0] and splits["test"][0] == entries[935] and splits["val"][-1] == entries[-1]
    with_input = format_prompt({"instruction": "Add.", "input": "1 and 2", "output": "3"})
    assert with_input == ("Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n1 and 2\n\n### Response:\n")
    assert "### Input" not in format_prompt({"instruction": "Add.", "input": "", "output": "3"})


def test_the_loss_ignores_prompt_and_padding_tokens():
    from llmkit.tasks.instruct import Instruct

    # Two examples: 5 ids with a 2-id prompt, 3 ids with a 2-id prompt; padded with id 0.
    x, y, lengths = collate([(np.array([5, 6, 7, 8, 9]), 2), (np.array([1, 2, 3]), 2)], pad=0)
    assert x.tolist() == [[5, 6, 7, 8], [1, 2, 0, 0]] and lengths.tolist() == [4, 2]
    assert y.tolist() == [[IGNORE, 7, 8, 9], [IGNORE, 3, IGNORE, IGNORE]]
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 10)
    by_hand = -sum(torch.log_softmax(logits[b, t], -1)[target] for b, t, target in
                   [(0, 1, 7), (0, 2, 8), (0, 3, 9), (1, 1, 3)])
    task = Instruct.__new__(Instruct)  # only loss() and count(), which need no data
    def model_of(values):  # a stand-in model: fixed logits, (B, T, V) or at the scored positions only
        return lambda ids, only=None: values.clone() if only is None else values[only]

    loss = task.loss(model_of(logits), (x, y, lengths))
    torch.testing.assert_close(loss, by_hand)
    assert task.count((x, y, lengths)) == 4 and task.tokens((x, y, lengths)) == 6
    changed = logits.clone()
    changed[0, 0], changed[1, 2:] = 100.0, -100.0  # positions whose targets are prompt or padding
    torch.testing.assert_close(task.loss(model_of(changed), (x, y, lengths)), by_hand)


def test_finetune_instruct_learns_and_writes_scored_answers(workdir, cli):
    result = cli("finetune", "instruct", "model.n_layer=1", "model.n_embd=64", "data.vocab_size=512",
                 "train.max_steps=60", "train.eval_interval=20", "train.lr=3e-3", "--device", "cpu")
    assert result.code == 0, result.err
    run = workdir / result.out.strip()
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in evals if r["kind"] == "eval"]
    assert val[-1] < val[0] and val[-1] < 5.2  # a uniform guess over 512 tokens: ln(512) = 6.24
    answers = json.loads((run / "test_responses.json").read_text())
    assert len(answers) == 110 and all({"instruction", "output", "model_response", "rouge_l"} <= a.keys()
                                       for a in answers)
    assert "ROUGE-L" in result.err and "exact match" in result.err
    report = json.loads(cli("eval", run, "--split", "test", "--json").out)
    answers = json.loads((run / "test_responses.json").read_text())  # written again, the same
    assert report["examples"] == 110 and report["responses"].endswith("test_responses.json")
    assert report["rouge_l"] == pytest.approx(sum(a["rouge_l"] for a in answers) / 110)


# --- scoring ----------------------------------------------------------------------------------


def test_scores_by_hand():
    assert exact_match("The capital is Paris.", "the capital  is paris") and not exact_match("Paris", "Rome")
    # LCS of "the cat sat on the mat" and "the cat is on the mat" is "the cat on the mat": 5 words.
    assert rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("dog", "the cat") == 0.0 and rouge_l("", "") == 1.0


class _FakeJudge(http.server.BaseHTTPRequestHandler):
    asked: list[dict] = []
    replies: list[str] = []  # what it answers, in turn; "Score: 73" when empty

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeJudge.asked.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        content = _FakeJudge.replies.pop(0) if _FakeJudge.replies else "Score: 73"
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_a_judge_on_an_openai_compatible_endpoint():
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        judge = Judge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", api_key="k")
        records = [{"instruction": "Say hi.", "input": "", "output": "Hi!", "model_response": "Hello"}]
        scores = score_responses(records, judge)
    finally:
        server.shutdown()
        server.server_close()
    assert scores["judge_score"] == 73 and records[0]["judge_score"] == 73
    asked = _FakeJudge.asked[-1]
    assert asked["path"] == "/v1/chat/completions" and asked["model"] == "judge-model" and asked["auth"] == "Bearer k"
    assert "`Hello`" in asked["messages"][0]["content"] and "`Hi!`" in asked["messages"][0]["content"]
    with pytest.raises(LlmkitError, match="did not answer"):
        Judge(f"http://127.0.0.1:{server.server_port}/v1", "m", timeout_s=2).score(records[0])


def test_a_judge_that_answers_with_prose_is_kept_and_left_out_of_the_mean():
    """A small judge model often answers the question instead of scoring it: such a reply is kept
    in the record, its score is None, and the mean is over the replies that were scores."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    judge = Judge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model")
    records = [{"instruction": f"Q{i}", "input": "", "output": "A", "model_response": "A"} for i in range(3)]
    try:
        _FakeJudge.replies = ["Score: 40", "The answer looks fine to me.", "90"]
        scores = score_responses(records, judge)
        _FakeJudge.replies = ["Well, it depends."] * 3
        none_scored = score_responses([dict(r) for r in records], judge)
    finally:
        _FakeJudge.replies = []
        server.shutdown()
        server.server_close()
    assert [r["judge_score"] for r in records] == [40, None, 90]
    assert records[1]["judge_reply"] == "The answer looks fine to me."
    assert scores["judge_scored"] == 2 and scores["judge_score"] == 65
    assert none_scored["judge_scored"] == 0 and "judge_score" not in none_scored
