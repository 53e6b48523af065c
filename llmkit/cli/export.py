"""`llmkit export`: a run in another library's format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit.cli.options import Checkpoint, Model


def export(
    run: Model,
    out: Annotated[Path, typer.Option(help="The directory to write (hf), or the file (gguf; in a directory: "
                                      "model.gguf).", show_default=False)],
    format: Annotated[str, typer.Option(help="hf: a Hugging Face directory (config.json, model.safetensors, "
                                        "tokenizer files); gguf: one GGUF file for llama.cpp and Ollama.")] = "hf",
    checkpoint: Checkpoint = "best",
    force: Annotated[bool, typer.Option("--force", help="Replace what is already at --out.")] = False,
    type: Annotated[str, typer.Option("--type", help="gguf: the weights' type, f32, f16, q8_0 or q4_1 (4-bit blocks; embedding and head q8_0).")] = "f16",
) -> None:
    """Write a GPT-2- or Llama-shaped run in another library's format; prints the files written.

    LoRA adapters are merged into the weights first. hf loads with transformers:
    AutoModelForCausalLM.from_pretrained(DIR) and AutoTokenizer.from_pretrained(DIR); gguf with
    llama.cpp (llama-cli -m FILE), Ollama (FROM ./FILE) or transformers (gguf_file=FILE).
    Examples: llmkit export runs/gpt2_124m --out exports/gpt2_124m | llmkit export smollm2 --format gguf --out s.gguf
    """
    from llmkit.formats.export import check_format, check_out
    from llmkit.formats.export import export as write
    from llmkit.loading import load_model

    check_format(format, type)  # before loading: a typo or an occupied --out fails at once
    check_out(out, format, force)
    for path in write(load_model(run, checkpoint, merge=True), out, format, force, type):
        print(path)
