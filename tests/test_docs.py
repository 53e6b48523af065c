"""The docs stay true to the code: every file and function they point at exists, and every
command they show uses real subcommands and options."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO

PAGES = sorted((REPO / "docs").glob("*.md")) + sorted((REPO / "docs" / "learn").glob("*.md")) + [REPO / "README.md"]
# `llmkit/inference/generation.py`, `beam_search` or `llmkit/inference/generation.py` (`beam_search`): a file and a name in it.
REFERENCE = re.compile(r"`(llmkit/[\w/]+\.py)`[,:]?\s*\(?`([A-Za-z_][\w.]*)`")
PATH = re.compile(r"`(llmkit/[\w/]+\.py)`")


def defines(source: str, name: str) -> bool:
    """`name` (or `Class.method`) is defined in the module's source."""
    *owner, leaf = name.split(".")
    if owner and not re.search(rf"^class {re.escape(owner[-1])}\b", source, re.M):
        return False
    return bool(re.search(rf"^\s*(def|class) {re.escape(leaf)}\b|^{re.escape(leaf)}\s*(:[^=]*)?=", source, re.M))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_code_references_exist(page):
    text = page.read_text(encoding="utf-8")
    for path in PATH.findall(text):
        assert (REPO / path).is_file(), f"{page.name} points at {path}, which does not exist"
    for path, name in REFERENCE.findall(text):
        assert defines((REPO / path).read_text(encoding="utf-8"), name), \
            f"{page.name}: {path} defines no {name}"


def _commands(text: str):
    """`llmkit ...` command lines of the page's shell blocks (continuations joined)."""
    for block in re.findall(r"```(?:bash|console|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" | ")[-1] if "| llmkit" in line or "| .venv/bin/llmkit" in line else line
            line = line.split(" #")[0]
            try:
                words = shlex.split(line)
            except ValueError:  # prose-like lines with a lone quote: plain words are enough here
                words = line.split()
            while words and ("=" in words[0] or words[0] in ("$", "echo", "cat")):
                words = words[1:] if "=" in words[0] or words[0] == "$" else []
            if words and words[0].endswith("llmkit"):
                yield words[1:]


def _options(command) -> set[str]:
    names = set()
    for param in command.params:
        names.update(o for o in getattr(param, "opts", []) + getattr(param, "secondary_opts", []))
    return names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_in_docs_use_real_subcommands_and_options(page):
    import typer.main

    from llmkit.cli import app

    group = typer.main.get_command(app)
    for words in _commands(page.read_text(encoding="utf-8")):
        command, used = group, []
        # Through the groups (llmkit, llmkit plot): each next word names one of the group's commands.
        while hasattr(command, "commands") and words[:1] != ["--help"]:
            assert words and words[0] in command.commands, \
                f"{page.name}: unknown subcommand in llmkit {' '.join(used + words)}"
            command, used, words = command.commands[words[0]], used + words[:1], words[1:]
        known = _options(command) | {"--help"}
        for word in words:
            if word.startswith("--"):
                assert word.split("=")[0] in known, f"{page.name}: llmkit {' '.join(used)} has no option {word}"
