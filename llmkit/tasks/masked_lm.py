"""Masked language modeling (BERT): hide some tokens and predict them from both sides.

Of each window's tokens, 15% are chosen for prediction. Of those, 80% are replaced by [MASK], 10%
by a random token and 10% left as they are (so the model cannot assume that only [MASK] positions
matter, since fine-tuning inputs contain no [MASK]). The loss is the cross-entropy at the chosen
positions only (targets -100 elsewhere); the figure reported is the accuracy there.

[MASK] is one extra id after the tokenizer's vocabulary, so the model's vocab_size is one larger.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.config import Recipe
from llmkit.data.shards import ShardSet
from llmkit.data.tokenizer import Tokenizer
from llmkit.layers.cross_entropy import IGNORE, cross_entropy
from llmkit.tasks.language_modeling import LanguageModeling

MASK_RATE = 0.15


def mask_tokens(ids: torch.Tensor, mask_id: int, vocab_size: int, generator: torch.Generator,
                rate: float = MASK_RATE) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids -> (inputs, targets): inputs with BERT's 80/10/10 corruption at the chosen
    positions, targets holding the original ids there and -100 everywhere else."""
    chosen = torch.rand(ids.shape, generator=generator) < rate
    chosen.view(-1)[torch.randint(ids.numel(), (1,), generator=generator)] = True  # never none
    roll = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    inputs = torch.where(chosen & (roll < 0.8), mask_id, ids)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, ids, IGNORE)


class MaskedLM(LanguageModeling):
    generates, labels, scores_text, eval_options = False, None, False, ()
    not_generating = ("an encoder (masked LM): it fills in masks, it does not generate text", "measure it with: llmkit eval {run}")

    def __init__(self, shards: ShardSet, block_size: int):
        super().__init__(shards, block_size)
        self.mask_id = self.tokenizer.vocab_size
        self.vocab_size = self.tokenizer.vocab_size + 1

    @classmethod
    def from_recipe(cls, recipe: Recipe, tokenizer: Tokenizer | None = None) -> MaskedLM:
        from llmkit.data.prepare import ensure_tokens

        return cls(ensure_tokens(recipe.data), recipe.model.block_size)

    def batch(self, split: str, batch_size: int, generator: torch.Generator, training: bool = False):
        stream = self.stream(split)
        starts = torch.randint(len(stream) - self.block_size + 1, (batch_size,), generator=generator)
        ids = torch.from_numpy(stream.windows(starts.numpy(), self.block_size))  # (B, T)
        return mask_tokens(ids, self.mask_id, self.tokenizer.vocab_size, generator)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        inputs, targets = batch
        logits = model(inputs)  # (B, T, V)
        return cross_entropy(logits, targets, reduction="sum")  # IGNORE targets do not count

    def count(self, batch) -> int:
        return int((batch[1] != IGNORE).sum())

    def tokens(self, batch) -> int:
        return batch[0].numel()  # windows of the stream: no padding

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, batch_size: int, device: torch.device) -> dict:
        """Masked-token loss and accuracy over every window of the split, with the masks drawn
        from a fixed seed (the same positions for every model measured)."""
        model.eval()
        stream, T = self.stream(split), self.block_size
        generator = torch.Generator().manual_seed(0)
        nats, correct, count = 0.0, 0, 0
        starts = torch.arange(0, len(stream) - T + 1, T)
        for chunk in starts.split(batch_size):
            ids = torch.from_numpy(stream.windows(chunk.numpy(), T))
            inputs, targets = mask_tokens(ids, self.mask_id, self.tokenizer.vocab_size, generator)
            logits = model(inputs.to(device)).float()
            targets = targets.to(device)
            chosen = targets != IGNORE
            nats += F.cross_entropy(logits[chosen], targets[chosen], reduction="sum").item()
            correct += (logits[chosen].argmax(-1) == targets[chosen]).sum().item()
            count += int(chosen.sum())
        return {"loss": nats / count, "masked_accuracy": correct / count, "masked_tokens": count}

    @torch.no_grad()
    def sample(self, model: nn.Module, device: torch.device, generator: torch.Generator, length: int) -> str:
        """The start of the val split with masks (shown as _), the model's guesses, and the truth."""
        ids = torch.from_numpy(self.stream("val").window(0, self.block_size))[None]  # (1, T)
        inputs, targets = mask_tokens(ids, self.mask_id, self.tokenizer.vocab_size, generator)
        guess = model(inputs.to(device))[..., : self.mask_id].argmax(-1).cpu()  # never [MASK] itself
        filled = torch.where(targets != IGNORE, guess, ids)
        shown = "".join("_" if i == self.mask_id else self.tokenizer.decode([i]) for i in inputs[0].tolist())
        return (f"masked: {shown!r}\nfilled: {self.tokenizer.decode(filled[0].tolist())!r}\n"
                f"truth:  {self.tokenizer.decode(ids[0].tolist())!r}")
