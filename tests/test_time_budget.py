"""train.max_time: a run spends a budget of seconds of training, stops within a step of it (well
within one evaluation interval), evaluates at the end, decays its rate to min_lr as the budget
runs out, and a resumed run continues the budget it had."""

from __future__ import annotations

import math

import pytest

from llmkit.config import TrainConfig
from llmkit.errors import LlmkitError
from llmkit.training.metrics import MetricsLog
from llmkit.training.schedule import learning_rate
from llmkit.training.trainer import INTERRUPTED, train

from conftest import RECIPES, debug_recipe, interrupt_at

BUDGET = ["train.max_time=2", "train.max_steps=1000000", "train.eval_interval=1000", "train.eval_steps=2",
          "train.log_interval=1"]


def records(run_dir, kind):
    return [r for r in MetricsLog(run_dir / "metrics.jsonl").read() if r["kind"] == kind]


def test_the_schedule_follows_the_fraction_of_the_budget():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=10**6, max_time=100.0)
    # One step a second: warmup ramps towards the decaying curve, so it ends without a jump.
    rates = [learning_rate(step, cfg, float(step)) for step in range(101)]
    assert rates[0] == pytest.approx(1e-4)
    assert rates[10] == pytest.approx(rates[9], rel=0.01)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[50] == pytest.approx((1e-3 + 1e-4) / 2)  # half the budget: half way down the cosine
    assert rates[100] == learning_rate(10**5, cfg, 1e4) == pytest.approx(1e-4)  # and min_lr when spent
    # max_steps still caps, and the schedule follows whichever limit is nearer.
    capped = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=0, max_steps=100, max_time=1e6)
    assert learning_rate(50, capped, 1.0) == pytest.approx((1e-3 + 1e-4) / 2)
    assert learning_rate(100, capped, 1.0) == pytest.approx(1e-4)


def test_a_time_budget_stops_the_run_within_a_step_and_ends_at_min_lr(workdir):
    # Warmup of 2 steps: a loaded machine may fit only a handful of steps in 2 s.
    recipe = debug_recipe(workdir, *BUDGET, "train.warmup_steps=2")
    run = train(recipe)
    steps = records(run, "train")
    last, before = steps[-1], steps[-2]
    # The first step past the budget is the last: the one before it still had budget left (the
    # records round to 10 ms, so "left" reads <= there).
    assert before["train_s"] <= 2 <= last["train_s"] and last["train_s"] - before["train_s"] < 0.5
    assert [r["step"] for r in steps] == list(range(1, last["step"] + 1))
    # Evaluated at the end, far short of eval_interval; steps, tokens and time recorded.
    (final,) = records(run, "eval")
    assert final["step"] == last["step"] < 1000
    assert final["tokens"] == last["step"] * 32 * 32  # batch x context of the debug recipe
    assert final["train_s"] == last["train_s"] and final["elapsed_s"] >= final["train_s"]
    # The last update ran at the end of the cosine: the rate at the fraction of the budget spent
    # before it (near min_lr, the closer the shorter the step; the 10 ms rounding moves it < 1%).
    assert 2e-4 <= last["lr"] == pytest.approx(learning_rate(before["step"], recipe.train, before["train_s"]), rel=0.02)
    assert last["lr"] < 2e-4 + 0.5 * (2e-3 - 2e-4) * (1 + math.cos(math.pi * 0.75))  # past 3/4 of the cosine
    assert min(r["lr"] for r in steps[2:]) == last["lr"]  # after warmup, the lowest


def test_a_resumed_time_budget_continues_the_budget(workdir, monkeypatch):
    interrupt_at(monkeypatch, 20)
    with pytest.raises(LlmkitError) as info:
        train(debug_recipe(workdir, *BUDGET))
    assert info.value.exit_code == INTERRUPTED
    monkeypatch.undo()
    spent = records(workdir / "run", "train")[-1]["train_s"]
    assert 0 < spent < 2
    run = train(debug_recipe(workdir, *BUDGET), resume=True)
    steps = records(run, "train")
    assert [r["step"] for r in steps] == list(range(1, steps[-1]["step"] + 1))  # no step repeated or lost
    assert steps[-2]["train_s"] <= 2 <= steps[-1]["train_s"]  # the budget over both parts, not 2 s more
    assert steps[20]["train_s"] >= spent


def test_the_plan_of_a_time_bounded_run(workdir, cli):
    result = cli("train", RECIPES / "debug.yaml", "train.max_time=60", "--device", "cpu", "--dry-run")
    assert result.code == 0, result.err
    assert "time-bounded, 60 s: about" in result.out
