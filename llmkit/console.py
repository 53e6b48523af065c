"""Where llmkit talks to people: stderr, so that stdout carries only results (text, paths, JSON)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False)


def say(message: str) -> None:
    console.print(message, markup=False, soft_wrap=True)
