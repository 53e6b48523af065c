"""`llmkit export`: a loaded model written in another library's format.

    hf    a Hugging Face directory (config.json, model.safetensors, tokenizer files) that
          transformers' `from_pretrained` loads: GPT2LMHeadModel or LlamaForCausalLM, by the
          model's switches (llmkit/formats/hf.py)
    gguf  one GGUF file (F32, F16 or Q8_0) that llama.cpp, Ollama and transformers' GGUF loader
          read (llmkit/formats/gguf.py)
"""

from __future__ import annotations

from pathlib import Path

from llmkit.console import say
from llmkit.errors import LlmkitError
from llmkit.loading import LoadedModel

FORMATS = ("hf", "gguf")


def check_format(format: str, tensor_type: str = "f16") -> None:
    """--format and --type, before anything is loaded."""
    from llmkit.formats.gguf import WRITE_TYPES

    if format not in FORMATS:
        raise LlmkitError(f"--format must be {' or '.join(FORMATS)}, got '{format}'")
    if tensor_type not in WRITE_TYPES:
        raise LlmkitError(f"--type must be one of {', '.join(WRITE_TYPES)}, got {tensor_type[:20]!r}")
    if format == "hf" and tensor_type != "f16":
        raise LlmkitError(f"--type {tensor_type} is for --format gguf: a Hugging Face directory holds the model's own dtype")


def target(out: Path, format: str) -> Path:
    """Where the export goes: `out` itself (a directory for hf; a file for gguf, or model.gguf in
    `out` when it is a directory)."""
    return out / "model.gguf" if format == "gguf" and out.is_dir() else out


def check_out(out: Path, format: str = "hf", force: bool = False) -> None:
    """An export goes where nothing is: replacing a model someone keeps there (its config.json,
    its weights) takes --force."""
    path = target(out, format)
    if format == "hf":
        if path.exists() and not path.is_dir():
            raise LlmkitError(f"--out {path} is a file, not a directory", hint="hf writes a directory: give a new one")
        if path.is_dir() and any(path.iterdir()) and not force:
            raise LlmkitError(f"--out {path} is not empty: an export would replace the files there",
                              hint="give a new directory, or add --force to replace them")
    elif path.exists() and not force:
        raise LlmkitError(f"--out {path} exists: an export would replace it", hint="give a new file name, or add --force")


def export(loaded: LoadedModel, out: Path, format: str = "hf", force: bool = False,
           tensor_type: str = "f16") -> list[Path]:
    """Write the model (load it with merge=True: LoRA adapters folded in); returns the files."""
    from llmkit.formats.gguf import write_gguf
    from llmkit.formats.hf import save_hf_directory

    check_format(format, tensor_type)
    check_out(out, format, force)
    if loaded.labels is not None:
        raise LlmkitError(f"{loaded.path} is a classifier; only language models export (to GPT2LMHeadModel, "
                          "LlamaForCausalLM or GGUF)")
    if format == "gguf":
        return [write_gguf(loaded.model, loaded.config, loaded.tokenizer, target(out, format), tensor_type,
                           loaded.run_dir.name or "llmkit")]
    written = save_hf_directory(loaded.model, loaded.config, loaded.tokenizer, out)
    if not any(p.name in ("vocab.json", "tokenizer.json") for p in written):
        say(f"note: the {loaded.tokenizer.kind} tokenizer has no Hugging Face form; only the model was written")
    return written
