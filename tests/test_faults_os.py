"""Operating-system errors on outputs, as a hostile user provokes them: every command that writes,
pointed at a path under a regular file, a name too long for the file system, a directory where a
file goes (and a file where a directory goes), and a full standard output. Each is exit 2, one
message naming the path with a hint, no traceback, and no temporary file left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RECIPES, REPO, run_subprocess
from faults import refused

LONG = "a" * 300  # past NAME_MAX (255) on every common file system


def names_the_path_and_the_fix(lines: list[str], path=None) -> None:
    """The first error line says what could not be done (or names the path); a hint follows."""
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, lines
    assert errors[0].startswith("error: cannot") or (path is not None and str(path) in errors[0]), lines
    assert any(line.startswith("hint: ") for line in lines[lines.index(errors[0]) + 1:]), lines


def no_debris(*directories: Path) -> None:
    for directory in directories:
        left = [p for p in Path(directory).rglob(".*.tmp")]
        assert not left, f"temporary files left behind: {left}"


@pytest.fixture
def scene(workdir) -> Path:
    """The working directory with a text file to tokenize, a regular file and a directory."""
    (workdir / "text.txt").write_text("To be, or not to be: that is the question.\n" * 20)
    (workdir / "afile").write_text("keep me\n")
    (workdir / "adir").mkdir()
    return workdir


# Each command that writes: its arguments with OUT as the path it writes. `run` gives a fixture
# (debug_run, export_run) only to the commands that need one.
WRITERS = {
    "download": lambda out, run: ("download", "shakespeare", "--data-dir", out),
    "tokenize": lambda out, run: ("tokenize", "text.txt", "--out", out),
    "train": lambda out, run: ("train", RECIPES / "debug.yaml", f"out_dir={out}", "train.max_steps=1",
                               "train.sample_tokens=0", "--device", "cpu"),
    "plot masks": lambda out, run: ("plot", "masks", "--out", out),
    "plot loss": lambda out, run: ("plot", "loss", run("debug_run"), "--out", out),
    "plot lr": lambda out, run: ("plot", "lr", "debug", "--out", out),
    "export": lambda out, run: ("export", run("export_run"), "--out", out),
}
PLOTS = [name for name in WRITERS if name.startswith("plot")]
DIRECTORY_WRITERS = ["download", "tokenize", "train", "export"]  # their OUT is a directory


@pytest.mark.parametrize("command", [
    name for name in WRITERS])
def test_a_path_under_a_regular_file(command, scene, cli, request):
    args = WRITERS[command](scene / "afile" / "x", request.getfixturevalue)
    names_the_path_and_the_fix(refused(cli(*args)), scene / "afile")
    assert (scene / "afile").read_text() == "keep me\n"
    no_debris(scene)


@pytest.mark.parametrize("command", WRITERS)
def test_a_name_of_300_characters(command, scene, request):
    """A real process: what the shell shows (the in-process runner has no file descriptors)."""
    out = LONG + (".png" if command.startswith("plot") else "")
    args = WRITERS[command](out, request.getfixturevalue)
    lines = refused(run_subprocess(*args, cwd=scene))
    names_the_path_and_the_fix(lines)
    assert "too long" in "\n".join(lines)
    no_debris(scene)


@pytest.mark.parametrize("command", PLOTS)
def test_a_directory_where_the_picture_goes(command, scene, cli, request):
    args = WRITERS[command](scene / "adir", request.getfixturevalue)
    names_the_path_and_the_fix(refused(cli(*args)), scene / "adir")
    assert list((scene / "adir").iterdir()) == []  # nothing written into it either


@pytest.mark.parametrize("command", [
    name for name in DIRECTORY_WRITERS])
def test_a_regular_file_where_the_directory_goes(command, scene, cli, request):
    args = WRITERS[command](scene / "afile", request.getfixturevalue)
    names_the_path_and_the_fix(refused(cli(*args)), scene / "afile")
    assert (scene / "afile").read_text() == "keep me\n"
    no_debris(scene)


def test_export_to_an_existing_gguf_file_is_not_replaced(export_run, scene, cli):
    names_the_path_and_the_fix(refused(cli("export", export_run, "--out", "afile", "--format", "gguf")), "afile")
    assert (scene / "afile").read_text() == "keep me\n"


def test_an_unnamed_os_error_is_one_message_in_process_too(scene, cli):
    names_the_path_and_the_fix(refused(cli("plot", "masks", "--out", LONG + ".png")))


FULL_OUTPUT = {
    "generate": lambda run, tmp: ("generate", run("debug_run"), "-p", "x", "-n", "5", "--seed", "1"),
    "plot masks": lambda run, tmp: ("plot", "masks", "--out", tmp / "masks.png"),
    "download": lambda run, tmp: ("download", "shakespeare", "--data-dir", tmp / "data"),
}


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("command", FULL_OUTPUT)
def test_a_full_standard_output_is_one_message(command, tmp_path, request):
    args = FULL_OUTPUT[command](request.getfixturevalue, tmp_path)
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "llmkit", *map(str, args)], cwd=REPO, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "error: cannot write standard output: No space left on device" in lines, lines
    assert any(line.startswith("hint: ") for line in lines), lines
    no_debris(tmp_path)
