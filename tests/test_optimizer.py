"""train.optimizer: Muon steps the blocks' matrices and AdamW the rest, each group at its own rate
under one schedule; a Muon run resumes exactly, runs under DDP like one process, and what Muon
cannot do (FSDP, LoRA, models without blocks) is refused with a message."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from llmkit.checkpoint import load_checkpoint
from llmkit.config import ModelConfig, TrainConfig, load_recipe
from llmkit.errors import LlmkitError
from llmkit.models import build_model
from llmkit.tasks.language_modeling import lm_loss
from llmkit.training.distributed import Distributed
from llmkit.training.optimizer import check_distributed, make_optimizer, set_learning_rates
from llmkit.training.trainer import INTERRUPTED, train

from conftest import RECIPES, assert_same_run, debug_recipe, interrupt_at, losses
from faults import refused

CPU = torch.device("cpu")
MUON = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1)


def tiny_gpt(**changes) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=True,
                         tie_embeddings=False, **changes)
    return build_model(config)


def names_of(model, optimizer) -> set[str]:
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_muon_takes_the_block_matrices_and_adamw_everything_else():
    model = tiny_gpt()
    muon, adamw = make_optimizer(model, MUON, CPU)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    block_matrices = {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert names_of(model, muon) == block_matrices
    assert {n.split(".", 2)[2] for n in block_matrices} == {"attn.q.weight", "attn.kv.weight", "attn.proj.weight",
                                                            "mlp.fc.weight", "mlp.proj.weight"}
    rest = names_of(model, adamw)
    assert rest == {n for n, _ in model.named_parameters()} - block_matrices
    assert {"embed.wte.weight", "lm_head.weight", "norm_f.weight", "blocks.0.attn.q.bias"} <= rest
    # Each group at its own peak: AdamW decays its matrices and embeddings only, Muon by its own key.
    assert [g["peak_lr"] for g in muon.param_groups] == [0.02]
    assert [(g["peak_lr"], g["weight_decay"]) for g in adamw.param_groups] == [(1e-3, 0.1), (1e-3, 0.0)]
    assert muon.param_groups[0]["weight_decay"] == MUON.muon_weight_decay
    assert muon.param_groups[0]["momentum"] == MUON.muon_momentum


def test_the_schedule_scales_every_group_by_the_same_factor():
    optimizers = make_optimizer(tiny_gpt(), MUON, CPU)
    set_learning_rates(optimizers, 0.25)
    assert [g["lr"] for o in optimizers for g in o.param_groups] == [0.02 * 0.25, 1e-3 * 0.25, 1e-3 * 0.25]


def test_adamw_alone_takes_every_weight():
    model = tiny_gpt()
    (adamw,) = make_optimizer(model, TrainConfig(), CPU)
    assert names_of(model, adamw) == {n for n, _ in model.named_parameters()}


def test_each_optimizer_moves_only_its_own_parameters():
    model = tiny_gpt()
    muon, adamw = make_optimizer(model, MUON, CPU)
    ids = torch.randint(50, (4, 16), generator=torch.Generator().manual_seed(0))
    lm_loss(model(ids[:, :-1]), ids[:, 1:]).backward()
    mine = names_of(model, muon)
    for optimizer, moved in ((muon, mine), (adamw, {n for n, _ in model.named_parameters()} - mine)):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer.step()
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed == moved
    # What makes it Muon: the step of a matrix is orthogonalised, its singular values near 1 (times
    # the rate, and Keller Jordan's sqrt(max(1, out/in)) for a tall matrix) where the gradient's
    # spread widely. Five Newton-Schulz iterations with the speedrun coefficients land them in
    # about [0.7, 1.2], and leave the few directions the gradient barely has still small.
    weight = model.blocks[0].mlp.proj.weight  # (C, 4C): wide, no shape factor
    before = weight.detach().clone()
    gradient = torch.linalg.svdvals(weight.grad)
    muon.step()
    singular = torch.linalg.svdvals((before - weight.detach()) / 0.02)
    assert (singular > 0.6).float().mean() >= 0.9 and singular.max() < 1.3, singular
    assert gradient[0] / gradient[len(gradient) // 2] > 2 * singular[0] / singular[len(singular) // 2]


def test_a_model_without_blocks_refuses_muon():
    model = build_model(ModelConfig(name="bigram", vocab_size=50, block_size=16, n_embd=32))
    with pytest.raises(LlmkitError, match="has none that train"):
        make_optimizer(model, MUON, CPU)


def test_muon_under_fsdp_is_refused_and_under_ddp_is_not():
    with pytest.raises(LlmkitError, match="not supported with train.distributed=fsdp"):
        check_distributed(MUON, Distributed(rank=0, world=2, kind="fsdp"))
    check_distributed(MUON, Distributed(rank=0, world=2, kind="ddp"))
    check_distributed(TrainConfig(), Distributed(rank=0, world=2, kind="fsdp"))


def test_muon_with_lora_is_refused(workdir, cli):
    result = cli("train", RECIPES / "debug.yaml", "train.optimizer=muon", "train.finetune=lora",
                 "train.init_from=runs/x", "--device", "cpu")
    refused(result, "train.optimizer: muon trains full weight matrices", "train.optimizer=adamw")


def test_an_interrupted_muon_run_resumes_exactly(workdir, monkeypatch):
    steps = ["train.optimizer=muon", "train.max_steps=40", "train.eval_interval=20", "train.log_interval=5",
             "train.eval_steps=2", "model.dropout=0.1"]
    straight = train(debug_recipe(workdir / "a", *steps))

    interrupt_at(monkeypatch, 25)
    with pytest.raises(LlmkitError) as info:
        train(debug_recipe(workdir / "b", *steps))
    assert info.value.exit_code == INTERRUPTED
    monkeypatch.undo()
    resumed = workdir / "b" / "run"
    saved = load_checkpoint(resumed / "latest.pt")["optimizer"]
    # Both optimizers' state is saved: Muon's momentum buffers and AdamW's moments.
    kinds = {frozenset(state) for state in saved["state"].values()}
    assert frozenset({"momentum_buffer"}) in kinds and any("exp_avg" in k for k in kinds)
    train(debug_recipe(workdir / "b", *steps), resume=True)

    assert_same_run(straight, resumed)  # every logged loss and weight, bit for bit


def test_resume_refuses_another_optimizer(workdir):
    train(debug_recipe(workdir, "train.max_steps=5", "train.eval_interval=5", "train.eval_steps=1"))
    with pytest.raises(LlmkitError, match="trained with train.optimizer=adamw") as info:
        train(debug_recipe(workdir, "train.max_steps=10", "train.optimizer=muon"), resume=True)
    assert "resume with train.optimizer=adamw" in info.value.hint


def test_a_two_process_muon_run_equals_one_process(tmp_path):
    data = tmp_path / "data"
    common = ["train.optimizer=muon", "train.max_steps=6", "train.eval_interval=6", "train.eval_steps=1",
              "train.batch_size=8", "train.sample_tokens=0", "train.log_interval=1", f"data.root={data}"]
    single = train(load_recipe(RECIPES / "debug.yaml", [f"out_dir={tmp_path / 'single'}", *common]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "llmkit", "train", str(RECIPES / "debug.yaml"), f"out_dir={tmp_path / 'multi'}", *common]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    multi = [loss for _, loss in losses(tmp_path / "multi")]
    # Looser than AdamW's 1e-5 (test_engine.py): the two halves' gradients, summed, differ from the
    # whole batch's in the last bits, and orthogonalising lifts the gradient's weakest directions to
    # full size, so those bits reach the update (up to 3e-5 in the loss here, not growing).
    assert multi == pytest.approx([loss for _, loss in losses(single)], abs=1e-4)
    assert len(multi) == 6


def test_an_unknown_optimizer_is_refused_with_the_choices(workdir, cli):
    result = cli("train", RECIPES / "debug.yaml", "train.optimizer=sgd", "--device", "cpu")
    refused(result, "  - train.optimizer: expected one of 'adamw', 'muon', got 'sgd'")
