"""The command line as a user meets it: fast help, clear errors, exit codes, stdout for results."""

from __future__ import annotations

from conftest import RECIPES, help_without_torch, run_subprocess


def test_help_does_not_import_torch():
    help_text = help_without_torch()
    for command in ("download", "tokenize", "train", "eval", "generate", "finetune"):
        assert command in help_text


def test_every_command_has_real_help(cli):
    for command in ("download", "tokenize", "train", "eval", "generate", "finetune"):
        result = cli(command, "--help")
        assert result.code == 0 and "Usage: llmkit " + command in result.out


def no_traceback(result):
    assert "Traceback" not in result.err and "Traceback" not in result.out
    return result.err.strip().splitlines()


def test_unknown_key_exits_2_with_a_suggestion_and_no_traceback(workdir):
    result = run_subprocess("train", RECIPES / "debug.yaml", "model.n_layers=3", cwd=workdir)
    assert result.code == 2
    lines = no_traceback(result)
    assert lines[0].startswith("error: recipe ") and lines[0].endswith("has 1 problem:")
    assert lines[1] == "  - unknown key 'model.n_layers' — did you mean 'model.n_layer'?"
    assert not (workdir / "runs").exists()  # nothing was started


def test_bad_type_exits_2_with_one_message(workdir, cli):
    result = cli("train", RECIPES / "debug.yaml", "train.max_steps=lots")
    assert result.code == 2
    assert "  - train.max_steps: expected an integer, got 'lots'" in result.err
    assert result.out == ""


def test_missing_files_exit_2_with_one_message(workdir, cli):
    for args, message in [
        (("train", "recipes/nope.yaml"), "error: recipe not found: recipes/nope.yaml"),
        (("tokenize", "missing.txt"), "error: data.source 'missing.txt' is neither a dataset name nor a file"),
        (("eval", "runs/nothing"), "error: no run directory or checkpoint file at runs/nothing"),
        (("generate", "runs/nothing"), "error: no run directory or checkpoint file at runs/nothing"),
        (("download", "shakespeare", "--source", "nowhere.txt"), "error: --source nowhere.txt: no such file"),
    ]:
        result = cli(*args)
        assert result.code == 2, args
        assert result.err.splitlines()[0].startswith(message), result.err


def test_cuda_asked_for_but_absent_is_a_clear_error(workdir, cli):
    import torch

    if torch.cuda.is_available():
        return
    result = cli("train", RECIPES / "debug.yaml", "--device", "cuda")
    assert result.code == 2
    assert "--device cuda was asked for, but PyTorch" in result.err and "sees no CUDA GPU" in result.err
    assert not (workdir / "runs").exists()


def test_finetune_refuses_unknown_tasks_modes_and_half_a_judge(workdir, cli):
    result = cli("finetune", "summarize")
    assert result.code == 2 and "spam or instruct" in result.err and "Traceback" not in result.err
    assert cli("finetune", "spam", "--mode", "last_block").code == 2  # needs --base
    result = cli("finetune", "spam", "--mode", "adapters")
    assert result.code == 2 and "all, last_block or lora" in result.err
    result = cli("finetune", "instruct", "--judge-url", "http://localhost:11434/v1")
    assert result.code == 2 and "--judge-model" in result.err
    result = cli("finetune", "spam", "--base", "runs/missing")
    assert result.code == 2 and "runs/missing" in result.err


def test_pipeline_commands_print_paths_on_stdout(workdir, cli):
    download = cli("download", "shakespeare")
    assert download.code == 0 and download.out == "data/raw/shakespeare/input.txt\n"
    tokens = cli("tokenize", download.out.strip())
    assert tokens.code == 0 and tokens.out == "data/tokens/shakespeare-char\n"


def test_end_to_end_in_a_shell_pipeline(workdir):
    """download -> train (debug) -> generate from stdin, as separate processes."""
    trained = run_subprocess("train", RECIPES / "debug.yaml", "train.max_steps=20",
                             "train.eval_interval=10", cwd=workdir)
    assert trained.code == 0, trained.err
    assert trained.out == "runs/debug\n"
    assert "parameters" in trained.err and "sample" in trained.err
    generated = run_subprocess("generate", "runs/debug", "-n", "30", "--seed", "3", cwd=workdir,
                               stdin="ROMEO:\n")
    assert generated.code == 0, generated.err
    assert generated.out.startswith("ROMEO:\n") and len(generated.out) == len("ROMEO:\n") + 30 + 1


def test_generate_defaults_match_the_sampling_module():
    import inspect

    from llmkit.cli.generate import generate as command
    from llmkit.inference import sampling as generate

    defaults = inspect.signature(command).parameters
    assert (defaults["temperature"].default, defaults["top_k"].default) == (generate.TEMPERATURE, generate.TOP_K)


def test_readme_opens_with_the_commands_ci_runs():
    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block[0] == "./setup.sh"
    assert block[1].endswith(".venv/bin/llmkit train recipes/shakespeare_char.yaml")
    assert block[2] == ".venv/bin/python -m pytest"
    assert "\n" + block[2] + "\n" in (REPO / ".ci/run").read_text()
