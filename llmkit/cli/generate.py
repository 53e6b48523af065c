"""`llmkit generate`: continue prompts with a model, through the library's generation engine."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmkit.cli.options import (
    Checkpoint,
    Compile,
    Dtype,
    MaxNewTokens,
    MinP,
    Model,
    RepetitionPenalty,
    RunDevice,
    Seed,
    Stop,
    System,
    Temperature,
    TopK,
    TopP,
)
from llmkit.errors import LlmkitError


def generate(
    run: Model,
    prompt: Annotated[Optional[str], typer.Option(
        "--prompt", "-p", help="Text to continue; '-' reads stdin (also read when stdin is a pipe).",
        show_default=False)] = None,
    prompts: Annotated[Optional[Path], typer.Option(
        help="A file of prompts, one per line, generated as one batch.", show_default=False)] = None,
    max_new_tokens: MaxNewTokens = 500,
    temperature: Temperature = 0.8,
    top_k: TopK = 200,
    top_p: TopP = None,
    min_p: MinP = None,
    repetition_penalty: RepetitionPenalty = 1.0,
    stop: Stop = None,
    num_samples: Annotated[int, typer.Option(min=1, help="Samples per prompt.")] = 1,
    beam: Annotated[int, typer.Option(min=1, help="Beam search with this many beams (1: sample).")] = 1,
    length_penalty: Annotated[float, typer.Option(
        help="Beam search: score / length**penalty (0 favours short outputs).")] = 1.0,
    context: Annotated[str, typer.Option(
        help="Past the context length: slide (keep going on the last half) or stop.")] = "slide",
    cache: Annotated[bool, typer.Option(help="Use the KV cache (--no-cache recomputes every step).")] = True,
    seed: Seed = None,
    checkpoint: Checkpoint = "best",
    echo: Annotated[bool, typer.Option(help="Print the prompt before the continuation.")] = True,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per sample, on one line.")] = False,
    device: RunDevice = "auto",
    chat: Annotated[bool, typer.Option("--chat", help="Ask a chat model: each prompt is a user's message, put "
                                       "in the model's chat template; prints the answer alone.")] = False,
    system: System = None,
    dtype: Dtype = "fp32",
    compile_step: Compile = False,
) -> None:
    """Continue a prompt with a trained model, streaming the text to stdout.

    A seq2seq run translates instead: each input line is a number, each output line its words.
    Examples: echo "ROMEO:" | llmkit generate runs/shakespeare_char --seed 1
              llmkit generate runs/wikitext2_bpe -p "The city" --top-p 0.9 --stop "." --json
              printf "4021\n77\n" | llmkit generate runs/seq2seq_numbers --beam 4
              echo "What is the capital of France?" | llmkit generate smollm2 --chat --temperature 0
    """
    from llmkit.device import resolve_device
    from llmkit.inference.generation import GenerationSettings
    from llmkit.inference.sampling import Sampling
    from llmkit.loading import load_model

    settings = GenerationSettings(max_new_tokens, Sampling(temperature, top_k, top_p, min_p, repetition_penalty),
                                  tuple(stop or ()), num_samples, beam, length_penalty, context, cache)
    loaded = load_model(run, checkpoint, resolve_device(device), dtype=dtype, compile=compile_step)  # before stdin: bad runs fail at once
    loaded.require("generates", run)
    texts = _read_prompts(prompt, prompts)
    if not loaded.generates:  # a seq2seq run translates each line
        return _translate(loaded, texts, beam)
    chat = chat or system is not None
    asked = _chat_prompts(loaded, texts, system) if chat else texts
    _print_generation(loaded, asked, settings, seed, echo and not chat, json_output, texts)


def _translate(loaded, texts: list[str], beam: int) -> None:
    task = loaded.task_type.from_recipe(loaded.checkpoint.recipe)
    print("\n".join(task.translate_lines(loaded.model, "\n".join(texts), loaded.device, beam)))


def _chat_prompts(loaded, texts: list[str], system: str | None) -> list[str]:
    """Each text as a user's first message (after `system`), in the model's chat template."""
    from llmkit.inference.chat import Conversation

    return [Conversation(loaded.tokenizer, loaded.path, system).ask(text.strip()) for text in texts]


def _read_prompts(prompt: str | None, prompts: Path | None) -> list[str]:
    """--prompts FILE (one per line), --prompt TEXT, or stdin (with --prompt - or a pipe)."""
    if prompts is not None:
        if prompt is not None:
            raise LlmkitError("give --prompt or --prompts, not both")
        try:
            texts = [line for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise LlmkitError(f"cannot read the prompts file {prompts}: {e}") from None
        if not texts:
            raise LlmkitError(f"{prompts} holds no prompts (one per line)")
        return texts
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        prompt = sys.stdin.read()
    return [prompt or ""]


def _print_generation(loaded, texts: list[str], settings, seed: int | None, echo: bool, as_json: bool,
                      shown: list[str]) -> None:
    """One prompt and one sample stream as they are made; several are printed when done,
    separated by a line `---` (or one JSON object each, whose "prompt" is the `shown` text: a
    chat's question rather than its templated form)."""
    from llmkit.console import say
    from llmkit.inference.generation import generate

    generation = generate(loaded, texts, settings, seed)
    if seed is None and settings.beam == 1:
        say(f"seed {generation.seed} (pass --seed {generation.seed} to repeat this sample)")
    rows = generation.completions
    out = sys.stdout
    if len(rows) == 1 and not as_json:
        out.write(rows[0].prompt if echo else "")
        for piece in generation:
            out.write(piece.text)
            out.flush()
    else:
        generation.run()
    if generation.context_full:
        say(f"stopped: {generation.context_full} (--context slide keeps going)")
    if len(rows) == 1 and not as_json:
        if not (rows[0].prompt + rows[0].text).endswith("\n"):
            out.write("\n")
        return
    for i, row in enumerate(rows):
        if as_json:
            print(json.dumps({**row.to_dict(), "prompt": shown[i // settings.num_samples]}, ensure_ascii=False))
        else:
            print(("---\n" if i else "") + (row.prompt if echo else "") + row.text)
