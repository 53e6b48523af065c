"""`llmkit export`: a loaded model written in another library's format.

    hf   a Hugging Face directory (config.json, model.safetensors, tokenizer files) that
         transformers' `from_pretrained` loads (llmkit/formats/hf_gpt2.py)
"""

from __future__ import annotations

from pathlib import Path

from llmkit.console import say
from llmkit.errors import LlmkitError
from llmkit.loading import LoadedModel

FORMATS = ("hf",)


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise LlmkitError(f"--format must be {' or '.join(FORMATS)}, got '{format}'")


def export(loaded: LoadedModel, out: Path, format: str = "hf") -> list[Path]:
    """Write the model (load it with merge=True: LoRA adapters folded in) to `out`; returns the files."""
    from llmkit.formats.hf_gpt2 import save_hf_directory

    check_format(format)
    if loaded.labels is not None:
        raise LlmkitError(f"{loaded.path} is a classifier; only language models export to GPT2LMHeadModel")
    if out.exists() and not out.is_dir():
        raise LlmkitError(f"--out {out} is a file, not a directory")
    written = save_hf_directory(loaded.model, loaded.config, loaded.tokenizer, out)
    if out / "vocab.json" not in written:
        say(f"note: the {loaded.tokenizer.kind} tokenizer has no Hugging Face GPT-2 form; only the model was written")
    return written
