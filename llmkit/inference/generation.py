"""The generation engine: prompts in, text out, streamed piece by piece.

    from llmkit import load_model, generate

    lm = load_model("runs/shakespeare_char")
    for piece in generate(lm, "ROMEO:", max_new_tokens=200, seed=1):
        print(piece.text, end="", flush=True)

Every prompt (times `num_samples`) is one row of one batch: the rows are left-padded to one length
and decoded together (llmkit/inference/decoding.py), or searched with beams (one prompt,
llmkit/inference/beam.py). Each new id of a row goes through that row's `StreamDecoder`, which
turns ids into text and watches for stop strings, and comes out as a `Piece` of text. A row ends
for one of four reasons, its `Completion.stop_reason`:

    eos      the model ended its text: it produced the tokenizer's end-of-text token
    stop     a stop string appeared (the text ends just before it)
    length   max_new_tokens ids were generated
    context  the context filled up, with context="stop"

`llmkit generate`, instruction-tuning answers, and anything built on top (a chat loop, a server)
use this one engine, so a prompt gives the same text whichever of them asks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.inference.beam import beam_search
from llmkit.inference.decoding import CONTEXT_FULL, ContextFull, batch_prompts, generate_batch
from llmkit.inference.sampling import Sampling
from llmkit.inference.stream import StreamDecoder

STOP_REASONS = ("eos", "stop", "length", "context")
MAX_COUNT = 1 << 20  # new tokens, samples or beams: more than any request could use


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 500
    sampling: Sampling = field(default_factory=Sampling)
    stops: tuple[str, ...] = ()  # end the text just before any of these strings
    num_samples: int = 1  # rows per prompt
    beam: int = 1  # > 1: beam search with this many beams (one prompt, one result)
    length_penalty: float = 1.0  # beam search: a finished beam scores sum(log p) / length ** penalty
    context: Literal["slide", "stop"] = "slide"  # past the context: keep going on its last half, or stop
    cache: bool = True  # the KV cache (False recomputes every position at every step)

    def __post_init__(self) -> None:
        if self.context not in ("slide", "stop"):
            raise LlmkitError(f"--context must be slide or stop, got '{self.context}'")
        if self.max_new_tokens < 0 or self.num_samples < 1 or self.beam < 1:
            raise LlmkitError("max_new_tokens must be >= 0, num_samples and beam >= 1")
        if not math.isfinite(self.length_penalty) or abs(self.length_penalty) > 100:
            raise LlmkitError(f"--length-penalty must be a finite number from -100 to 100, got {self.length_penalty}")
        s = self.sampling
        if self.beam > 1 and (s.top_p is not None or s.min_p is not None or s.repetition_penalty != 1.0):
            raise LlmkitError("beam search keeps the most likely continuations: --top-p, --min-p and "
                              "--repetition-penalty do not apply to it", hint="drop them, or sample (--beam 1)")
        if max(self.max_new_tokens, self.num_samples, self.beam) > MAX_COUNT:
            raise LlmkitError(f"max_new_tokens, num_samples and beam must each be at most {MAX_COUNT:,}")


@dataclass(frozen=True)
class Piece:
    row: int  # which row of the batch (prompt p, sample s is row p * num_samples + s)
    text: str


@dataclass
class Completion:
    prompt: str
    sample: int  # 0 .. num_samples - 1
    text: str = ""
    tokens: int = 0  # ids generated, not counting an end-of-text id
    stop_reason: str | None = None  # one of STOP_REASONS once the row has ended

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "sample": self.sample, "text": self.text, "tokens": self.tokens,
                "stop_reason": self.stop_reason}


class RowText:
    """One row's new ids becoming its Completion: the text (through a StreamDecoder, which holds
    back partial characters and watches for stop strings), the token count and the stop reason.
    Generation uses one per row; so does the server's batcher (llmkit/serving/batcher.py), which
    is why a prompt ends the same way in both."""

    def __init__(self, completion: Completion, tokenizer: Tokenizer, stops: tuple[str, ...], end_id: int | None):
        self.completion, self.end_id = completion, end_id
        self.decoder = StreamDecoder(tokenizer, stops)

    @property
    def done(self) -> bool:
        return self.completion.stop_reason is not None

    def push(self, token: int) -> str:
        """Take the row's next id; returns the text it completes (often '', sometimes several
        characters) and sets the stop reason when the row ends (eos or a stop string)."""
        row = self.completion
        if token == self.end_id:
            row.stop_reason = "eos"
            return ""
        row.tokens += 1
        piece = self.decoder.push(token)
        row.text += piece
        if self.decoder.stopped:
            row.stop_reason = "stop"
        return piece

    def finish(self, reason: str) -> str:
        """End the row (with `reason` unless it has one already); returns the text held back:
        the part of a stop string that never came, or an unfinished character."""
        rest = self.decoder.flush()
        self.completion.text += rest
        self.completion.stop_reason = self.completion.stop_reason or reason
        return rest


class Generation:
    """One batch of prompts being continued. Iterate over it for the pieces of text as they are
    made; `completions` holds every row (final once the iteration ends). `seed` makes sampling
    repeatable; without one a seed is drawn and kept in `self.seed`."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, prompts: list[str] | str,
                 settings: GenerationSettings = GenerationSettings(), seed: int | None = None):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise LlmkitError("no prompts to generate from")
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.completions = [Completion(p, s) for p in prompts for s in range(settings.num_samples)]
        if settings.beam > 1 and len(self.completions) > 1:
            raise LlmkitError("beam search takes one prompt and gives one result (no --prompts or --num-samples)")
        if seed is not None and not 0 <= seed < 2**63:
            raise LlmkitError(f"--seed must be a whole number from 0 to {2**63 - 1:,}, got {str(seed)[:40]}")
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")
        self.context_full: str | None = None  # why the context stopped generation, if it did
        self.end_id = getattr(tokenizer, "eot_id", None)

    def _columns(self) -> Iterator[torch.Tensor]:
        """(rows,) new ids per step."""
        model, tokenizer, s = self.model, self.tokenizer, self.settings
        device = next(model.parameters()).device
        ids, pad = batch_prompts(tokenizer, [c.prompt for c in self.completions], device)
        if s.beam > 1:
            block = model.config.block_size

            def step(prefixes: torch.Tensor) -> torch.Tensor:  # (N, t) -> (N, V) next-token log-probs
                logits = model(prefixes[:, -block:].to(device))[:, -1, : tokenizer.vocab_size]
                return torch.log_softmax(logits.float(), dim=-1)
            found = beam_search(step, ids[0].tolist(), s.beam, s.max_new_tokens, self.end_id, s.length_penalty)
            return (torch.tensor([t]) for t in found)
        generator = torch.Generator(device).manual_seed(self.seed)
        return generate_batch(model, ids, s.max_new_tokens, s.sampling, generator, tokenizer.vocab_size,
                              pad, s.cache, s.context)

    def __iter__(self) -> Iterator[Piece]:
        rows = [RowText(c, self.tokenizer, self.settings.stops, self.end_id) for c in self.completions]
        try:
            for column in self._columns():
                for i, token in enumerate(column.tolist()):
                    if rows[i].done:
                        continue
                    if token == CONTEXT_FULL:
                        rows[i].completion.stop_reason = "context"
                        self.context_full = f"reached the context length ({self.model.config.block_size} tokens)"
                        continue
                    piece = rows[i].push(token)
                    if piece:
                        yield Piece(i, piece)
                if all(r.done for r in rows):
                    break
        except ContextFull as e:
            self.context_full = str(e)
            for row in rows:
                row.completion.stop_reason = row.completion.stop_reason or "context"
        for i, row in enumerate(rows):
            rest = row.finish("length")
            if rest:
                yield Piece(i, rest)

    def run(self) -> list[Completion]:
        """Generate to the end without streaming."""
        for _ in self:
            pass
        return self.completions


def generate(lm, prompts: list[str] | str, settings: GenerationSettings | None = None,
             seed: int | None = None, **options) -> Generation:
    """Continue `prompts` with a loaded model (llmkit.load_model). Settings come as a
    GenerationSettings or as its fields (`max_new_tokens=100`, `stops=("\\n",)`,
    `sampling=Sampling(temperature=0)`)."""
    if settings is None:
        settings = GenerationSettings(**options)
    elif options:
        raise TypeError("give either settings or its fields, not both")
    if not lm.generates:
        raise LlmkitError(f"{lm.path} does not generate text")
    return Generation(lm.model, lm.tokenizer, prompts, settings, seed)
