"""`llmkit chat MODEL`: talk with a chat model, turn by turn, the answers streamed.

At a terminal it shows a prompt; from a pipe each line is one user message (a scripted
conversation), and each answer is printed on its own line(s). `/reset` forgets the conversation,
`/quit` (or Ctrl-D) ends it; Ctrl-C stops an answer midway (what was said stays in the history),
and at the prompt ends the chat.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from llmkit.cli.options import (
    Compile,
    Dtype,
    MaxNewTokens,
    MinP,
    Model,
    RepetitionPenalty,
    RunDevice,
    Seed,
    System,
    Temperature,
    TopK,
    TopP,
)

COMMANDS = {"/reset": "forget the conversation so far", "/quit": "end the chat (or Ctrl-D)"}


def chat(
    model: Model,
    system: System = None,
    max_new_tokens: MaxNewTokens = 500,
    temperature: Temperature = 0.8,
    top_k: TopK = 200,
    top_p: TopP = None,
    min_p: MinP = None,
    repetition_penalty: RepetitionPenalty = 1.0,
    seed: Seed = None,
    dtype: Dtype = "fp32",
    compile_step: Compile = False,
    device: RunDevice = "auto",
    checkpoint: Annotated[str, typer.Option(help="best or latest, for a run directory.")] = "best",
) -> None:
    """Talk with a chat model: type a message, read the answer, go on; the history is kept.

    /reset forgets the conversation, /quit or Ctrl-D ends it, Ctrl-C stops an answer. Reads a
    scripted conversation from a pipe, one message per line.
    Examples: llmkit chat smollm2 | printf "Hi!\\nWhat did I just say?\\n" | llmkit chat smollm2 --seed 1
    """
    from llmkit.device import resolve_device
    from llmkit.inference.chat import Conversation
    from llmkit.inference.generation import GenerationSettings
    from llmkit.inference.sampling import Sampling
    from llmkit.loading import load_model

    settings = GenerationSettings(max_new_tokens, Sampling(temperature, top_k, top_p, min_p, repetition_penalty),
                                  context="stop")
    loaded = load_model(model, checkpoint, resolve_device(device), dtype=dtype, compile=compile_step)
    conversation = Conversation(loaded.tokenizer, loaded.path, system)  # refuses a model without a template
    interactive = sys.stdin.isatty()
    if interactive:
        sys.stderr.write(f"chatting with {model}: " + "; ".join(f"{c} to {what}" for c, what in COMMANDS.items()) + "\n")
    turn = 0
    while (text := _read(interactive)) is not None:
        if text in COMMANDS or not text:
            if text == "/quit":
                break
            if text == "/reset":
                conversation.reset()
                sys.stderr.write("(the conversation is forgotten)\n")
            continue
        conversation.ask(text)
        conversation.answered(_answer(loaded, conversation, settings, None if seed is None else seed + turn))
        turn += 1


def _read(interactive: bool) -> str | None:
    """The next message, or None at the end (Ctrl-D, or Ctrl-C at the prompt)."""
    try:
        if interactive:
            sys.stderr.write("you> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return None
    return None if line == "" else line.strip()


def _answer(loaded, conversation, settings, seed: int | None) -> str:
    """Stream the model's answer to stdout; returns its text (as far as it got, after Ctrl-C)."""
    from llmkit.inference.chat import reply

    generation = reply(loaded, conversation, settings, seed)
    try:
        for piece in generation:
            sys.stdout.write(piece.text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stderr.write(" (stopped)")
    text = generation.completions[0].text
    sys.stdout.write("\n")
    sys.stdout.flush()
    return text
