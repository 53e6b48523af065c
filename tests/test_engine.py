"""The training engine: accumulation, distributed runs, compile, precision, NaN and SIGKILL
recovery, gradient checkpointing, the planner, and what a run draws."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from llmkit.checkpoint import load_checkpoint
from llmkit.config import ModelConfig, load_recipe
from llmkit.errors import RUN_FAILED
from llmkit.layers.cross_entropy import cross_entropy
from llmkit.models import build_model
from llmkit.training.metrics import MetricsLog
from llmkit.training.trainer import train

from conftest import RECIPES


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def run(tmp_path, data_root, name, *overrides, recipe="debug", resume=False):
    return train(load_recipe(RECIPES / f"{recipe}.yaml", [
        f"out_dir={tmp_path / name}", f"data.root={data_root}", "train.sample_tokens=0",
        "train.log_interval=1", *overrides]), resume=resume)


def train_losses(run_dir):
    return [r["loss"] for r in MetricsLog(run_dir / "metrics.jsonl").read() if r["kind"] == "train"]


@pytest.mark.parametrize("recipe", ["debug", "encoder_mlm"])
def test_micro_batches_equal_the_big_batch(tmp_path, data_root, recipe):
    # The encoder's micro-batches hold different numbers of masked targets: only a loss summed
    # over targets and divided by the step's total makes accumulation exact.
    common = ("train.max_steps=8", "train.eval_interval=8", "train.eval_steps=1", "train.batch_size=8",
              "model.n_layer=1")
    big = run(tmp_path, data_root, "big", *common, recipe=recipe)
    small = run(tmp_path, data_root, "small", *common, "train.micro_batch_size=4", recipe=recipe)
    assert train_losses(small) == pytest.approx(train_losses(big), abs=1e-6)
    assert len(train_losses(big)) == 8


def torchrun(tmp_path, data_root, name, *overrides):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "llmkit", "train", str(RECIPES / "debug.yaml"), f"out_dir={tmp_path / name}",
               f"data.root={data_root}", "train.sample_tokens=0", "train.log_interval=1", *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_process_run_equals_one_process(tmp_path, data_root, kind):
    common = ("train.max_steps=12", "train.eval_interval=6", "train.eval_steps=2", "train.batch_size=8")
    single = run(tmp_path, data_root, "single", *common)
    result = torchrun(tmp_path, data_root, "multi", *common, f"train.distributed={kind}")
    assert result.returncode == 0, result.stderr[-2000:]
    multi = tmp_path / "multi"
    assert train_losses(multi) == pytest.approx(train_losses(single), abs=1e-5)
    # Only rank 0 logs and prints: one metrics line per step, one run directory on stdout.
    steps = [r["step"] for r in MetricsLog(multi / "metrics.jsonl").read() if r["kind"] == "train"]
    assert steps == list(range(1, 13))
    assert result.stdout.split() == [str(multi)] and result.stderr.count("parameters (") == 1
    assert f"over 2 processes ({kind})" in result.stderr
    # Its checkpoint is an ordinary one: it loads into one process and resumes there.
    resumed = run(tmp_path, data_root, "multi", "train.max_steps=14", *common[1:], resume=True)
    assert load_checkpoint(resumed / "latest.pt")["step"] == 14


def test_compiled_run_checkpoint_loads_into_an_uncompiled_model(tmp_path, data_root):
    run_dir = run(tmp_path, data_root, "compiled", "train.compile=true", "train.max_steps=2",
                  "train.eval_interval=2", "train.eval_steps=1")
    checkpoint = torch.load(run_dir / "latest.pt", weights_only=True)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in checkpoint["model"])
    model = build_model(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])  # strict: every name matches the bare model


def test_prefixed_state_dicts_still_load(tmp_path):
    """A checkpoint written by other tools from a compiled or DDP model loads all the same."""
    from llmkit.checkpoint import save_checkpoint

    config = ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8)
    state = {f"_orig_mod.module.{k}": v for k, v in build_model(config).state_dict().items()}
    save_checkpoint(tmp_path / "x.pt", {"model": state})
    build_model(config).load_state_dict(load_checkpoint(tmp_path / "x.pt")["model"])


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_root, monkeypatch, cli):
    from llmkit.tasks.language_modeling import LanguageModeling

    original = LanguageModeling.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):  # the loss of training step 13 onwards is NaN
        calls["n"] += model.training
        loss = original(self, model, batch)
        return loss * float("nan") if calls["n"] >= 13 else loss

    monkeypatch.setattr(LanguageModeling, "loss", poisoned)
    result = cli("train", RECIPES / "debug.yaml", f"out_dir={tmp_path / 'nan'}", f"data.root={data_root}",
                 "train.max_steps=40", "train.eval_interval=5", "train.eval_steps=1", "train.sample_tokens=0")
    assert result.code == RUN_FAILED and "training diverged" in result.err and "Traceback" not in result.err
    latest = load_checkpoint(tmp_path / "nan" / "latest.pt")
    assert "at step 13" in result.err
    assert latest["step"] == 10 and torch.isfinite(torch.cat([t.flatten() for t in latest["model"].values()])).all()


def test_sigkill_loses_at_most_one_checkpoint_interval(tmp_path, data_root):
    common = ["train.max_steps=120", "train.eval_interval=20", "train.eval_steps=1"]
    args = [sys.executable, "-m", "llmkit", "train", str(RECIPES / "debug.yaml"),
            f"out_dir={tmp_path / 'killed'}", f"data.root={data_root}", "train.sample_tokens=0",
            "train.log_interval=1", *common]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    metrics = MetricsLog(tmp_path / "killed" / "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and not any(r.get("step", 0) >= 50 for r in metrics.read()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(r["step"] for r in metrics.read())
    assert 50 <= killed_at < 120
    saved = load_checkpoint(tmp_path / "killed" / "latest.pt")["step"]
    assert killed_at - saved < 20 + 2  # at most one interval lost (plus steps logged while dying)
    run(tmp_path, data_root, "killed", *common, resume=True)
    whole = run(tmp_path, data_root, "whole", *common)
    assert train_losses(tmp_path / "killed") == pytest.approx(train_losses(whole), abs=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)
    plain, checkpointed = build_model(config), build_model(config)
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.grad_checkpointing = True
    ids = torch.randint(50, (2, 16))
    for model in (plain, checkpointed):
        torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_fp16_needs_cuda_and_bf16_trains_on_cpu(tmp_path, data_root, cli):
    result = cli("train", RECIPES / "debug.yaml", f"out_dir={tmp_path / 'fp16'}", "train.precision=fp16",
                 "--device", "cpu")
    assert result.code == 2 and "fp16 needs a CUDA GPU" in result.err
    common = ("train.max_steps=10", "train.eval_interval=10", "train.eval_steps=1", "train.device=cpu")
    bf16 = train_losses(run(tmp_path, data_root, "bf16", *common, "train.precision=bf16"))
    fp32 = train_losses(run(tmp_path, data_root, "fp32", *common))
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, abs=0.05)


def test_dry_run_prints_the_plan_and_warns_when_it_cannot_fit(tmp_path, data_root, cli):
    result = cli("train", RECIPES / "debug.yaml", f"data.root={data_root}", "--dry-run")
    assert result.code == 0, result.err
    assert "parameters        104,832" in result.out and "activations" in result.out
    assert "step time" in result.out and not (tmp_path / "runs").exists()
    huge = cli("train", RECIPES / "debug.yaml", f"data.root={data_root}", "train.batch_size=4000000", "--dry-run")
    assert huge.code == 1 and "warning: about" in huge.err and "micro_batch_size" in huge.err


def test_planner_counts_activations_like_autograd(monkeypatch):
    """The meta-device count equals what autograd saves when the same model runs for real."""
    from llmkit.training.planner import profile_forward

    config = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)
    model = build_model(config)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(50, (3, 16))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        cross_entropy(model(ids), ids)
    assert profile_forward(config, 3).activation_bytes == sum(saved.values())


def test_a_run_draws_its_loss_curve(debug_run):
    from PIL import Image

    with Image.open(debug_run / "loss.png") as image:
        assert image.width > 300 and image.height > 200
        assert len(image.convert("L").getcolors(maxcolors=1 << 16)) > 10  # not blank


def test_metrics_go_to_tensorboard_when_it_is_installed(debug_run):
    pytest.importorskip("tensorboard")
    assert list((debug_run / "tensorboard").glob("events.out.tfevents.*"))
