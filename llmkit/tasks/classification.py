"""Classification: one label per text. Here, the SMS Spam Collection: spam or ham.

The data as LLMs-from-scratch (chapter 6) prepares it, so results compare: each line is split at
its first tab (`label<TAB>text`; texts may contain quotes, so no CSV reader), ham is undersampled
to as many messages as spam (747 each, a fixed seed), the 1,494 are shuffled and split 70/10/20
(1,045 train, 149 val, 300 test).

Batches are texts right-padded to the longest in the batch (at most block_size tokens) with a mask
of real tokens; the model returns one row of class scores per text (llmkit/models/classifier.py).
Measured: accuracy, and for the positive class (spam) precision = TP / (TP + FP), recall =
TP / (TP + FN), F1 = their harmonic mean, with the confusion matrix [[TN, FP], [FN, TP]].
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmkit.config import Recipe
from llmkit.data.batches import pick_examples
from llmkit.data.tokenizer import Tokenizer, identity, make_tokenizer
from llmkit.errors import LlmkitError
from llmkit.layers.cross_entropy import cross_entropy

LABELS = ("ham", "spam")  # class 1, spam, is the positive class
SPLIT_SEED = 123


def read_spam(path: str | Path) -> list[tuple[str, int]]:
    """(text, label) per line of SMSSpamCollection, split at the first tab."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        label, tab, text = line.partition("\t")
        if not tab or label not in LABELS:
            raise LlmkitError(f"{path}, line {number}: expected 'ham<TAB>text' or 'spam<TAB>text'")
        rows.append((text, LABELS.index(label)))
    return rows


def balanced_splits(rows: list[tuple[str, int]], seed: int = SPLIT_SEED) -> dict[str, list[tuple[str, int]]]:
    """Undersample the larger class to the smaller, shuffle, split 70/10/20."""
    rng = random.Random(seed)
    by_class = [[r for r in rows if r[1] == c] for c in range(len(LABELS))]
    smallest = min(len(c) for c in by_class)
    balanced = [r for c in by_class for r in (c if len(c) == smallest else rng.sample(c, smallest))]
    rng.shuffle(balanced)
    train_end = int(len(balanced) * 0.7)
    val_end = train_end + int(len(balanced) * 0.1)
    return {"train": balanced[:train_end], "val": balanced[train_end:val_end], "test": balanced[val_end:]}


def metrics(predicted: list[int], truth: list[int]) -> dict:
    """Accuracy, and precision, recall and F1 of the positive class, with the confusion matrix."""
    pairs = list(zip(truth, predicted))
    tn, fp, fn, tp = (sum(1 for t, p in pairs if (t, p) == cell) for cell in ((0, 0), (0, 1), (1, 0), (1, 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(pairs), "precision": precision, "recall": recall, "f1": f1,
            "confusion": [[tn, fp], [fn, tp]], "examples": len(pairs)}


def encode(tokenizer: Tokenizer, texts: list[str], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and their (B, T) mask; a text longer than the context keeps its
    beginning, an empty one becomes one token."""
    ids = [np.asarray(tokenizer.encode(t) if t else [0], dtype=np.int64)[:block_size] for t in texts]
    width = max(len(i) for i in ids)
    x = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.bool)
    for row, i in enumerate(ids):
        x[row, : len(i)], mask[row, : len(i)] = torch.from_numpy(i), True
    return x, mask


@torch.no_grad()
def probabilities(model: nn.Module, tokenizer: Tokenizer, texts: list[str], device: torch.device,
                  batch_size: int = 64) -> torch.Tensor:
    """(N, classes) probabilities of a classifier for texts."""
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        x, mask = encode(tokenizer, texts[start : start + batch_size], model.config.block_size)
        out.append(torch.softmax(model(x.to(device), mask.to(device)).float(), dim=-1).cpu())
    return torch.cat(out)


class Classification:
    generates, labels, scores_text, eval_options = False, LABELS, False, ()
    not_generating = ("a classifier: it labels texts, it does not generate them", "echo 'some text' | llmkit classify {run}")

    def __init__(self, recipe: Recipe, tokenizer: Tokenizer | None = None):
        from llmkit.data.sources import ensure_downloaded

        data = recipe.data
        if data.source != "spam":
            raise LlmkitError(f"classification data must be spam (the SMS Spam Collection), got {data.source!r}")
        self.splits = balanced_splits(read_spam(ensure_downloaded("spam", data.root) / "SMSSpamCollection"))
        self.block_size, self.bucket = recipe.model.block_size, data.bucket
        self._lengths: dict[str, np.ndarray] = {}  # tokens per text of a split, counted when first needed
        if tokenizer is None:  # from scratch: one learned from the training texts
            if data.tokenizer not in ("bpe", "gpt2"):  # byte-level: a classifier must take any text
                raise LlmkitError(f"a classifier needs a byte-level tokenizer (bpe or gpt2), not {data.tokenizer}",
                                  hint="data.tokenizer=bpe")
            tokenizer = make_tokenizer(data, [t for t, _ in self.splits["train"]])
        self.tokenizer = tokenizer
        self.vocab_size = self.tokenizer.vocab_size
        self.identity = identity(self.tokenizer)
        self.data_info = {"tokens": None, "source": "spam", "command": "llmkit download spam"}

    @classmethod
    def from_recipe(cls, recipe: Recipe, tokenizer: Tokenizer | None = None) -> Classification:
        return cls(recipe, tokenizer)

    def describe(self) -> str:
        sizes = ", ".join(f"{len(rows):,} {name}" for name, rows in self.splits.items())
        return f"data spam (balanced, seed {SPLIT_SEED}): {sizes} messages"

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode(self.tokenizer, texts, self.block_size)

    def batch(self, split: str, batch_size: int, generator: torch.Generator, training: bool = False):
        rows = self.splits[split]
        if split not in self._lengths:
            self._lengths[split] = np.array([len(self.tokenizer.encode(t)) for t, _ in rows])
        picked = pick_examples(self._lengths[split], batch_size, self.bucket if training else 1, generator)
        x, mask = self.encode([rows[i][0] for i in picked])
        return x, mask, torch.tensor([rows[i][1] for i in picked])

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, mask, y = batch
        return cross_entropy(model(x, mask), y, reduction="sum")

    def count(self, batch) -> int:
        return len(batch[2])

    def tokens(self, batch) -> int:
        return int(batch[1].sum())

    def probabilities(self, model: nn.Module, texts: list[str], device: torch.device,
                      batch_size: int = 64) -> torch.Tensor:
        return probabilities(model, self.tokenizer, texts, device, batch_size)

    def evaluate(self, model: nn.Module, split: str, batch_size: int, device: torch.device) -> dict:
        if split not in self.splits:
            raise LlmkitError(f"no split '{split}': the spam splits are {', '.join(self.splits)}")
        rows = self.splits[split]
        probs = self.probabilities(model, [t for t, _ in rows], device, batch_size)
        truth = torch.tensor([y for _, y in rows])
        loss = -probs[torch.arange(len(rows)), truth].clamp_min(1e-12).log().mean().item()
        predicted = probs.argmax(-1)
        result = {"loss": loss, **metrics(predicted.tolist(), truth.tolist())}
        # The collection repeats some messages word for word, so a few held-out texts also occur
        # in training: the accuracy on the rest says how well the model generalises.
        seen = {t for t, _ in self.splits["train"]}
        unseen = torch.tensor([t not in seen for t, _ in rows])
        if split != "train" and unseen.any():
            result["unseen"] = int(unseen.sum())
            result["unseen_accuracy"] = (predicted[unseen] == truth[unseen]).float().mean().item()
        return result

    def sample(self, model: nn.Module, device: torch.device, generator: torch.Generator, length: int) -> str:
        rows = self.splits["val"][:3]
        probs = self.probabilities(model, [t for t, _ in rows], device)
        return "\n".join(f"{LABELS[int(p.argmax())]} ({float(p.max()):.2f}), truth {LABELS[y]}: {t[:60]}"
                         for p, (t, y) in zip(probs, rows))
