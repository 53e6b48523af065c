"""Recipes: typed loading, suggestions for unknown keys, every problem reported at once."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from llmkit.config import (
    ConfigError,
    ModelConfig,
    Recipe,
    apply_override,
    find_recipe,
    load_recipe,
    recipe_from_dict,
    recipe_to_yaml,
)
from llmkit.errors import LlmkitError

from conftest import RECIPES


def problems_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(raw)
    return info.value.problems


def test_defaults_build_and_are_frozen():
    recipe = recipe_from_dict({})
    assert recipe.model.n_layer == ModelConfig().n_layer
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.model.n_layer = 3


def test_unknown_key_suggests_the_close_name():
    assert problems_of({"model": {"n_layers": 2}}) == [
        "unknown key 'model.n_layers' — did you mean 'model.n_layer'?"]


def test_key_in_the_wrong_section_suggests_where_it_lives():
    assert problems_of({"model": {"lr": 0.1}}) == ["unknown key 'model.lr' — did you mean 'train.lr'?"]


def test_wrong_types_are_named_with_what_was_expected():
    problems = problems_of({"train": {"max_steps": "many", "batch_size": 2.5}, "model": {"bias": "yes"}})
    assert "train.max_steps: expected an integer, got 'many'" in problems
    assert "train.batch_size: expected an integer, got 2.5" in problems
    assert "model.bias: expected true or false, got 'yes'" in problems


def test_choice_fields_suggest_the_close_choice():
    (problem,) = problems_of({"model": {"name": "gtp"}})
    assert problem.startswith("model.name: expected one of 'bigram', 'single_head_attention', ")
    assert "got 'gtp'" in problem
    assert problem.endswith("did you mean 'gpt'?")


def test_optimizer_and_time_budget_keys_are_checked():
    problems = problems_of({"train": {"optimizer": "adma", "muon_momentum": 1.0, "max_time": -5}})
    assert len(problems) == 3, problems
    assert problems[0].startswith("train.optimizer: expected one of 'adamw', 'muon'")
    assert problems[0].endswith("did you mean 'adamw'?")
    assert "train.max_time: must be a positive number of seconds (or null for none), got -5.0" in problems
    assert "train.muon_momentum: must be in [0, 1), got 1.0" in problems


def test_all_problems_are_reported_at_once():
    problems = problems_of({
        "modle": {},
        "model": {"n_embd": 100, "n_head": 3},
        "train": {"lr": -1.0, "device": "gpu", "warmup_step": 5},
    })
    assert len(problems) == 5, problems
    text = "\n".join(problems)
    for expected in ("'modle'", "n_embd: 100 is not divisible by n_head=3", "train.lr: must be positive",
                     "train.device", "'train.warmup_step' — did you mean 'train.warmup_steps'?"):
        assert expected in text


def test_yaml_1_1_exponent_strings_are_numbers():
    # PyYAML reads `3e-4` (no dot) as a string; a recipe author means a number.
    recipe = recipe_from_dict(yaml.safe_load("train: {lr: 3e-4, min_lr: 1e-5, max_steps: 1e3}"))
    assert recipe.train.lr == pytest.approx(3e-4)
    assert recipe.train.max_steps == 1000 and isinstance(recipe.train.max_steps, int)


def test_dotted_overrides_set_nested_values_with_yaml_types():
    raw = {"model": {"n_layer": 4}}
    for override in ("model.n_layer=2", "train.lr=3e-4", "model.bias=true", "data.tokens=null", "name=x"):
        apply_override(raw, override)
    recipe = recipe_from_dict(raw)
    assert (recipe.model.n_layer, recipe.train.lr, recipe.model.bias, recipe.name) == (2, 3e-4, True, "x")


@pytest.mark.parametrize("bad", ["train.lr", "=3", "train..lr=3", "name.sub=1"])
def test_malformed_overrides_are_refused(bad):
    with pytest.raises(ConfigError):
        apply_override({"name": "x"}, bad)


def test_load_recipe_resolves_out_dir_and_round_trips(tmp_path):
    recipe = load_recipe(RECIPES / "debug.yaml", ["train.max_steps=7"])
    assert recipe.out_dir == "runs/debug" and recipe.train.max_steps == 7
    saved = tmp_path / "recipe.yaml"
    saved.write_text(recipe_to_yaml(recipe))
    assert load_recipe(saved) == recipe


def test_missing_empty_and_invalid_recipe_files(tmp_path):
    with pytest.raises(LlmkitError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(LlmkitError, match="is empty"):
        load_recipe(tmp_path / "empty.yaml")
    (tmp_path / "bad.yaml").write_text("model:\n  n_layer: [1,\n")
    with pytest.raises(LlmkitError, match="not valid YAML at line"):
        load_recipe(tmp_path / "bad.yaml")


def test_recipes_are_found_by_name():
    assert find_recipe("shakespeare_char").resolve() == (RECIPES / "shakespeare_char.yaml").resolve()


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_loads(path):
    assert isinstance(load_recipe(path), Recipe)
