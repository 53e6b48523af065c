"""Tokenizers: text <-> token ids, behind one small interface.

Every tokenizer can `encode`, `decode`, tell its `vocab_size`, turn itself into a JSON-able dict
(`to_dict`, saved as tokenizer.json beside the shards, in the run directory and in checkpoints) and
name its `identity`: a hash of that dict. Shards and checkpoints record the identity, so a model is
never fed ids from a different vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from llmkit.errors import LlmkitError
from llmkit.files import atomic_write_text

if TYPE_CHECKING:
    from llmkit.config import DataConfig


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...

    def decode(self, ids) -> str: ...

    def to_dict(self) -> dict: ...


def identity(tokenizer: Tokenizer) -> str:
    """A stable name for a tokenizer's exact vocabulary, e.g. `char-1f0c3a9e5b7d`."""
    canonical = json.dumps(tokenizer.to_dict(), sort_keys=True, ensure_ascii=False)
    return f"{tokenizer.kind}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


class CharTokenizer:
    """One token per Unicode character; the vocabulary is the sorted set of characters seen.

    Encoding is a table lookup on code points done by numpy (no Python loop per character).
    """

    kind = "char"

    def __init__(self, chars: str):
        if not chars:
            raise LlmkitError("a char tokenizer needs at least one character")
        if len(set(chars)) != len(chars):
            raise LlmkitError("a char tokenizer's characters must be distinct")
        self.chars = chars
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)  # id -> code point
        # code point -> id, with -1 for characters outside the vocabulary (the last slot catches
        # every code point above the largest known one: lookups clip to it). int32 ids: half the
        # memory traffic of int64 on a 100 MB text.
        self._ids = np.full(int(self._codepoints.max()) + 2, -1, dtype=np.int32)
        self._ids[self._codepoints] = np.arange(len(chars))

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        try:
            codepoints = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        except UnicodeEncodeError as e:
            raise LlmkitError(f"text is not valid Unicode at character {e.start}") from None
        ids = self._ids.take(codepoints, mode="clip")
        if len(ids) and ids.min() < 0:
            unknown = sorted({text[i] for i in np.flatnonzero(ids < 0)[:1000]})
            raise LlmkitError(
                f"characters not in this tokenizer's vocabulary: {''.join(unknown)!r}",
                hint=f"the vocabulary holds {self.vocab_size} characters: {self.chars!r}",
            )
        return ids

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]  # numpy is already past 100 MB/s on one core

    def decode(self, ids) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        return self._codepoints[ids].astype("<u4").tobytes().decode("utf-32-le")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class WordTokenizer:
    """One token per whitespace-separated word of a fixed vocabulary (the numbers task's digits,
    number words and <pad>/<bos>/<eos>); decode joins the words with single spaces."""

    kind = "words"

    def __init__(self, words: list[str]):
        if len(set(words)) != len(words) or not words:
            raise LlmkitError("a word tokenizer needs distinct words")
        self.words = list(words)
        self._ids = {w: i for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> np.ndarray:
        unknown = sorted({w for w in text.split() if w not in self._ids})
        if unknown:
            raise LlmkitError(f"words not in this tokenizer's vocabulary: {' '.join(unknown[:20])}")
        return np.array([self._ids[w] for w in text.split()], dtype=np.int64)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return " ".join(self.words[int(i)] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "words": self.words}


def tokenizer_from_dict(spec: dict) -> Tokenizer:
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "char" and isinstance(spec.get("chars"), str):
        return CharTokenizer(spec["chars"])
    if kind == "words" and isinstance(spec.get("words"), list):
        return WordTokenizer(spec["words"])
    if kind == "hf" and isinstance(spec.get("json"), str):
        from llmkit.data.hf_tokenizer import HFTokenizer  # HF tokenizers, only for pretrained models

        return HFTokenizer.from_dict(spec)
    if kind in ("bpe", "gpt2") and isinstance(spec.get("tokens"), list):
        from llmkit.data.bpe import BytePairTokenizer  # tiktoken, only when a BPE is used

        return BytePairTokenizer.from_dict(spec)
    raise LlmkitError(f"unrecognised tokenizer description (kind {kind!r})")


def make_tokenizer(data: DataConfig, texts: Iterable[str] = (), alphabet: set[str] | None = None,
                   about: str | None = None) -> Tokenizer:
    """The one tokenizer factory: the data section's tokenizer, learned from `texts` (char: their
    characters, or the `alphabet` already collected; bpe: trained on them, `about` naming them in
    the message) or loaded (gpt2: GPT-2's own files, downloaded when missing)."""
    if data.tokenizer == "char":
        return CharTokenizer("".join(sorted(alphabet if alphabet is not None else set("".join(texts)))))
    if data.tokenizer == "bpe":
        from llmkit.console import say
        from llmkit.data.bpe import train_bpe

        if about:
            say(f"training a byte-level BPE of {data.vocab_size:,} tokens on {about}")
        tokenizer = train_bpe(texts, data.vocab_size)
        if about and tokenizer.vocab_size < data.vocab_size:
            say(f"the text gave only {tokenizer.vocab_size:,} tokens (no more pairs worth merging)")
        return tokenizer
    if data.tokenizer == "gpt2":
        from llmkit.data.bpe import gpt2_tokenizer
        from llmkit.data.sources import ensure_downloaded

        return gpt2_tokenizer(ensure_downloaded("gpt2_tokenizer", data.root, what="GPT-2's tokenizer (gpt2_tokenizer)"))
    raise LlmkitError(f"the {data.tokenizer} tokenizer does not tokenize text files")


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(tokenizer.to_dict(), ensure_ascii=False) + "\n")


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LlmkitError(f"tokenizer file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LlmkitError(f"tokenizer file {path} is not valid JSON") from None
    return tokenizer_from_dict(spec)
