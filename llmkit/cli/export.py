"""`llmkit export`: a run in another library's format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit.cli.options import Checkpoint, Model


def export(
    run: Model,
    out: Annotated[Path, typer.Option(help="The directory to write.", show_default=False)],
    format: Annotated[str, typer.Option(help="hf: a Hugging Face GPT-2 directory (config.json, "
                                        "model.safetensors, vocab.json, merges.txt).")] = "hf",
    checkpoint: Checkpoint = "best",
) -> None:
    """Write a GPT-2-shaped run in another library's format; prints the files written.

    LoRA adapters are merged into the weights first. The result loads with transformers:
    GPT2LMHeadModel.from_pretrained(DIR) and AutoTokenizer.from_pretrained(DIR).
    Example: llmkit export runs/gpt2_124m --out exports/gpt2_124m
    """
    from llmkit.formats.export import check_format
    from llmkit.formats.export import export as write
    from llmkit.loading import load_model

    check_format(format)  # before loading: a typo fails at once
    for path in write(load_model(run, checkpoint, merge=True), out, format):
        print(path)
