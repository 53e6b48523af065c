"""Instruction finetuning: a language model learns to answer instructions (LLMs-from-scratch, ch. 7).

Data: instruction-data.json, 1,100 {instruction, input, output} entries, split in file order as
LLMs-from-scratch does: the first 85% train (935), the next 10% test (110), the last 5% val (55).

Each entry becomes one text, a prompt and its response, in the Alpaca format or in the model's
own chat template (data.prompt_format, llmkit/tasks/prompts.py), and the model is trained on it as
a language model, except that only the response (and the end token that closes it) is scored:
targets inside the prompt are IGNORE, so the loss teaches answering, not retelling instructions.
A batch is padded only to its longest example; padding targets are IGNORE as well.

Measured: the loss over a split's response tokens, and on the test split the model's own answers
(greedy, in the same format, stopping at the end token), saved as JSON and scored against the references by exact
match and ROUGE-L (llmkit/tasks/scoring.py), optionally by a judge model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmkit.config import Recipe
from llmkit.data.batches import pick_examples
from llmkit.data.tokenizer import Tokenizer, identity, make_tokenizer
from llmkit.errors import LlmkitError
from llmkit.layers.cross_entropy import IGNORE, cross_entropy
from llmkit.tasks.prompts import PromptFormat, format_prompt

FIELDS = ("instruction", "input", "output")


def read_entries(path: str | Path) -> list[dict]:
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LlmkitError(f"cannot read the instruction data {path}: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise LlmkitError(f"{path}: expected a JSON list of {{instruction, input, output}} entries")
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(f, ""), str) for f in FIELDS) \
                or not entry.get("instruction") or "output" not in entry:
            raise LlmkitError(f"{path}, entry {number}: expected string fields instruction, input (optional), output")
    return entries


def split_entries(entries: list[dict]) -> dict[str, list[dict]]:
    """85% train, 10% test, 5% val, in file order (LLMs-from-scratch's split)."""
    train_end = int(len(entries) * 0.85)
    test_end = train_end + int(len(entries) * 0.1)
    return {"train": entries[:train_end], "val": entries[test_end:], "test": entries[train_end:test_end]}


def encode_example(form: PromptFormat, entry: dict, block_size: int) -> tuple[np.ndarray, int]:
    """(ids of prompt + response + end token, cut to block_size + 1; how many of them are prompt)."""
    text = form.prompt(entry)
    prompt = form.tokenizer.encode(text)
    ids = np.concatenate([prompt, form.response_ids(entry, text)]).astype(np.int64)[: block_size + 1]
    return ids, len(prompt)


def collate(examples: list[tuple[np.ndarray, int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs (B, T), targets (B, T) and each row's real length (B,), T = the longest example - 1:
    the targets are the inputs shifted by one, IGNORE wherever the next token is still prompt or
    is padding."""
    T = max(len(ids) for ids, _ in examples) - 1
    x = torch.full((len(examples), T), pad, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    lengths = torch.tensor([len(ids) - 1 for ids, _ in examples])
    for row, (ids, prompt) in enumerate(examples):
        ids = torch.from_numpy(ids)
        n = len(ids) - 1
        x[row, :n], y[row, :n] = ids[:-1], ids[1:]
        y[row, : prompt - 1] = IGNORE  # target t is token t + 1: prompt tokens 1 .. prompt-1
    return x, y, lengths


def response_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The summed loss of (B, T) targets y given inputs x, the head run only where a target is
    scored: the same sum as over every position's logits, for less than half the head's work."""
    scored = y != IGNORE
    return cross_entropy(model(x, only=scored), y[scored], reduction="sum")


class Instruct:
    generates, labels, scores_text, eval_options = True, None, True, ("responses", "judge")
    not_generating = None

    def __init__(self, recipe: Recipe, tokenizer: Tokenizer | None = None):
        from llmkit.data.sources import ensure_downloaded

        data = recipe.data
        self.splits = split_entries(read_entries(ensure_downloaded("instruct", data.root) / "instruction-data.json"))
        self.block_size = recipe.model.block_size
        if tokenizer is None:  # from scratch: one learned from the training texts
            tokenizer = make_tokenizer(data, [format_prompt(e) + e["output"] for e in self.splits["train"]])
        self.tokenizer = tokenizer
        self.format = PromptFormat(data.prompt_format, tokenizer)
        self.eot = self.format.eot
        self.vocab_size = self.tokenizer.vocab_size
        self.identity = identity(self.tokenizer)
        self.data_info = {"tokens": None, "source": "instruct", "command": "llmkit download instruct"}
        self.examples = {name: [encode_example(self.format, e, self.block_size) for e in rows]
                         for name, rows in self.splits.items()}
        self.lengths = {name: np.array([len(ids) for ids, _ in rows]) for name, rows in self.examples.items()}
        self.bucket = data.bucket
        too_long = [name for name, rows in self.examples.items() for ids, prompt in rows if prompt >= len(ids)]
        if too_long:
            raise LlmkitError(f"{len(too_long)} prompts do not fit the context of {self.block_size} tokens, "
                              "so their responses cannot be learned", hint="raise model.block_size")

    @classmethod
    def from_recipe(cls, recipe: Recipe, tokenizer: Tokenizer | None = None) -> Instruct:
        if recipe.model.name not in ("single_block_transformer", "gpt"):
            raise LlmkitError(f"instruction tuning needs a decoder that generates with a cache (gpt), not {recipe.model.name}")
        return cls(recipe, tokenizer)

    def describe(self) -> str:
        sizes = ", ".join(f"{len(rows):,} {name}" for name, rows in self.splits.items())
        return f"data instruct ({self.format.name} prompts, loss on responses only): {sizes} entries"

    def batch(self, split: str, batch_size: int, generator: torch.Generator, training: bool = False):
        rows = self.examples[split]
        lengths = self.lengths[split]
        picked = pick_examples(lengths, batch_size, self.bucket if training else 1, generator)
        return collate([rows[i] for i in picked], self.eot)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y, _ = batch
        return response_loss(model, x, y)

    def count(self, batch) -> int:
        return int((batch[1] != IGNORE).sum())

    def tokens(self, batch) -> int:
        return int(batch[2].sum())

    @torch.no_grad()
    def answer(self, model: nn.Module, entries: list[dict], max_new_tokens: int = 256, batch_size: int = 16) -> list[str]:
        """The model's greedy responses to entries' prompts, in the format it was trained with,
        each ending at the end token (or where the context is full), through the generation engine."""
        from llmkit.inference.generation import Generation, GenerationSettings
        from llmkit.inference.sampling import Sampling

        model.eval()
        settings = GenerationSettings(max_new_tokens, Sampling(temperature=0.0), context="stop")
        answers = []
        for start in range(0, len(entries), batch_size):
            prompts = [self.format.prompt(e) for e in entries[start : start + batch_size]]
            answers += [c.text.strip() for c in Generation(model, self.tokenizer, prompts, settings, seed=0).run()]
        return answers

    def evaluate(self, model: nn.Module, split: str, batch_size: int, device: torch.device,
                 responses: Path | None = None, judge=None) -> dict:
        """The mean loss per response token over the split; on the test split (or whenever
        `responses` is given) also the model's answers, scored and written to `responses`."""
        from llmkit.tasks.scoring import score_responses

        if split not in self.splits:
            raise LlmkitError(f"no split '{split}': the instruct splits are {', '.join(self.splits)}")
        model.eval()
        rows, nats, count = self.examples[split], 0.0, 0
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size], self.eot)
            nats += self.loss(model, tuple(t.to(device) for t in batch)).item()
            count += self.count(batch)
        result = {"loss": nats / count, "perplexity": float(np.exp(nats / count)), "examples": len(rows)}
        if split == "test" or responses is not None:
            entries = self.splits[split]
            answers = self.answer(model, entries)
            records = [{**e, "model_response": a} for e, a in zip(entries, answers)]
            result.update(score_responses(records))
            if responses is not None:  # written before any judge is asked: a judge that fails loses nothing
                _write_responses(responses, records)
                result["responses"] = str(responses)
            if judge is not None:
                result.update(score_responses(records, judge))
                if responses is not None:
                    _write_responses(responses, records)
        return result

    def sample(self, model: nn.Module, device: torch.device, generator: torch.Generator, length: int) -> str:
        entries = self.splits["val"][:2]
        answers = self.answer(model, entries, max_new_tokens=min(length, 100))
        return "\n".join(f"{e['instruction']} -> {a!r} (reference {e['output']!r})" for e, a in zip(entries, answers))


def _write_responses(path: Path, records: list[dict]) -> None:
    from llmkit.files import atomic_write_text

    atomic_write_text(path, json.dumps(records, indent=1, ensure_ascii=False) + "\n")
