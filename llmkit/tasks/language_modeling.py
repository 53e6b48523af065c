"""Language modeling: predict each next token. Loss, perplexity, bits per byte and character.

loss = -mean log p(next token) in nats; perplexity = exp(loss), the number of equally likely
choices the model is as unsure as; bits per byte (or character) = total nats / ln 2 / bytes (or
characters) of the text scored, which compares models whose tokenizers cut the text differently;
accuracy = how often the most likely next token is the right one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llmkit.config import Recipe
from llmkit.data.batches import EpochSampler, epoch_batch, random_batch, sliding_windows
from llmkit.data.shards import ShardSet, TokenStream
from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.layers.cross_entropy import cross_entropy

LOGITS_PER_PASS = 1 << 27


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of (B, T, V) logits against (B, T) target ids; targets of -100 are ignored.
    Computed in fp32 whatever the logits' dtype; backward overwrites the logits (cross_entropy.py)."""
    return cross_entropy(logits, targets, reduction)


@torch.no_grad()
def evaluate_split(model: nn.Module, stream: TokenStream, tokenizer: Tokenizer, block_size: int,
                   batch_size: int, device: torch.device, stride: int | None = None) -> dict:
    """Loss, perplexity, bits per byte and per character, and top-1 next-token accuracy over every
    target of a token stream. Windows of the model's context start `stride` apart (default: the
    context, so windows do not overlap); each target is scored once (llmkit/data/batches.py,
    `sliding_windows`)."""
    model.eval()
    nats, tokens, correct = 0.0, 0, 0
    # A pass's logits are batch x T x V floats: at most ~512 MB of them (a 49K vocabulary and
    # 1,024-token windows take two windows a pass, not 32: 6.4 GB).
    batch_size = max(1, min(batch_size, LOGITS_PER_PASS // (block_size * model.config.vocab_size)))
    for x, y in sliding_windows(stream, block_size, stride or block_size, batch_size):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        nats += lm_loss(logits, y, reduction="sum").item()
        scored = y != -100
        correct += int((logits.argmax(-1)[scored] == y[scored]).sum())
        tokens += int(scored.sum())
    text = tokenizer.decode(stream.window(1, len(stream) - 1))  # the text of the scored targets
    chars, nbytes = len(text), len(text.encode("utf-8"))
    loss = nats / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": nats / math.log(2) / nbytes,
            "bits_per_char": nats / math.log(2) / chars, "accuracy": correct / tokens,
            "tokens": tokens, "chars": chars, "bytes": nbytes, "stride": stride or block_size}


class LanguageModeling:
    generates, labels, scores_text, eval_options = True, None, True, ("stride",)
    not_generating = None

    def __init__(self, shards: ShardSet, block_size: int, sampler: str = "random", seed: int = 0):
        self.shards, self.block_size = shards, block_size
        self.sampler_kind, self.seed = sampler, seed
        self._epochs: EpochSampler | None = None  # the train split's, for sampler: epoch
        self.tokenizer = shards.tokenizer
        self.vocab_size = shards.tokenizer.vocab_size
        self.identity = shards.tokenizer_identity
        self.data_info = {"tokens": str(shards.directory), "command": shards.rebuild}
        self._streams: dict[str, TokenStream] = {}

    @classmethod
    def from_recipe(cls, recipe: Recipe, tokenizer: Tokenizer | None = None) -> LanguageModeling:
        """The tokenizer is the shards' own (a checkpoint's is compared with it: check_tokenizer)."""
        from llmkit.data.prepare import ensure_tokens

        return cls(ensure_tokens(recipe.data), recipe.model.block_size, recipe.data.sampler, recipe.train.seed)

    def stream(self, split: str) -> TokenStream:
        if split not in self._streams:
            stream = self.shards.split(split)
            if len(stream) <= self.block_size:
                raise LlmkitError(
                    f"the {split} split of {self.shards.directory} has {len(stream)} tokens, too few "
                    f"for one window of block_size + 1 = {self.block_size + 1}",
                    hint="use a longer text, or lower model.block_size or data.val_fraction")
            self._streams[split] = stream
        return self._streams[split]

    def describe(self) -> str:
        return (f"data {self.shards.directory}: {len(self.stream('train')):,} train / "
                f"{len(self.stream('val')):,} val tokens")

    def batch(self, split: str, batch_size: int, generator: torch.Generator, training: bool = False):
        if training and self.sampler_kind == "epoch":
            if self._epochs is None:
                self._epochs = EpochSampler(len(self.stream(split)), self.block_size, self.seed)
            return epoch_batch(self.stream(split), self._epochs, batch_size)
        return random_batch(self.stream(split), batch_size, self.block_size, generator)

    def state_dict(self) -> dict:
        """Where the epoch sampler stands (nothing for random windows: the generator is saved)."""
        return {} if self._epochs is None else {"epoch_sampler": self._epochs.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "epoch_sampler" in state:
            self._epochs = EpochSampler(len(self.stream("train")), self.block_size, self.seed)
            self._epochs.load_state_dict(state["epoch_sampler"])

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return lm_loss(model(x), y, reduction="sum")

    def count(self, batch) -> int:
        return int((batch[1] != -100).sum())

    def tokens(self, batch) -> int:
        return batch[0].numel()  # windows of the stream: no padding

    def evaluate(self, model: nn.Module, split: str, batch_size: int, device: torch.device,
                 stride: int | None = None) -> dict:
        return evaluate_split(model, self.stream(split), self.tokenizer, self.block_size, batch_size, device,
                              stride)

    def sample(self, model: nn.Module, device: torch.device, generator: torch.Generator, length: int) -> str:
        from llmkit.inference.decoding import generate, prompt_ids
        from llmkit.inference.sampling import TEMPERATURE, TOP_K

        idx = prompt_ids(self.tokenizer, "", device)
        ids = list(generate(model, idx, length, TEMPERATURE, TOP_K, generator, self.vocab_size))
        return self.tokenizer.decode(ids)
