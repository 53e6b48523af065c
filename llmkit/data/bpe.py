"""Byte-level BPE: the `bpe` tokenizer (trained here, with HF `tokenizers`) and `gpt2` (OpenAI's).

Byte-level BPE encodes text in three steps:
1. a regex cuts the text into pieces: a word with its leading space, a run of digits, a run of
   punctuation, whitespace (GPT-2's pattern, below);
2. each piece becomes its UTF-8 bytes, so any text can be encoded and nothing is "unknown";
3. adjacent parts of a piece are merged, always the pair whose merged token came earliest in
   training (lowest rank) first, until no learned token covers two neighbours.
A token's id is its rank. The single bytes are ranks 0-255 for GPT-2 (1-256 for `bpe`, whose id 0
is `<|endoftext|>`); every merge learned in training adds the next id.

`bpe` and `gpt2` are the same machine with different tables, so one class serves both. The table
is handed to tiktoken, which runs step 1-3 in Rust and releases the GIL, so threads use every core.
HF `tokenizers` trains the table; tiktoken's ids equal HF's when every merged token's rank follows
the order its merge was learned, which `from_hf` checks (the tests compare the two on real text).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from llmkit.errors import LlmkitError

# GPT-2's pre-tokenizer regex, in tiktoken's faster, equivalent form (possessive quantifiers).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT = "<|endoftext|>"  # separates documents


def byte_symbols() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: vocab.bpe, encoder.json and HF's ByteLevel write
    tokens with these characters (printable bytes stand for themselves; the rest get 256 + n)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return symbols


def symbols_to_bytes(token: str, table: dict[str, int]) -> bytes:
    return bytes(table[ch] for ch in token)


class BytePairTokenizer:
    """tokens[id] is the token's bytes (None at special ids); specials maps e.g. EOT to its id."""

    def __init__(self, kind: str, tokens: list[bytes | None], specials: dict[str, int],
                 pattern: str = GPT2_PATTERN):
        import tiktoken

        self.kind, self.tokens, self.specials, self.pattern = kind, tokens, dict(specials), pattern
        ranks = {t: i for i, t in enumerate(tokens) if t is not None}
        if len(ranks) + len(specials) != len(tokens) or any(tokens[i] is not None for i in specials.values()):
            raise LlmkitError(f"{kind} tokenizer: tokens and special ids do not fill 0..{len(tokens) - 1} exactly once")
        self._encoding = tiktoken.Encoding(f"llmkit-{kind}", pat_str=pattern, mergeable_ranks=ranks,
                                           special_tokens=self.specials, explicit_n_vocab=len(tokens))
        self.eot_id = self.specials.get(EOT)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> np.ndarray:
        """(n,) uint32 ids. Special tokens written in the text (the EOT between documents) become
        their ids. The ids come back as one buffer, not a Python list of ints: at 4 bytes of text
        per token, building that list would cost as much as the encoding."""
        return self._encoding.encode_to_numpy(text, allowed_special="all")

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Texts encoded on every core: tiktoken's encoder releases the GIL, so threads run in parallel."""
        if len(texts) < 2:
            return [self.encode(t) for t in texts]
        return list(_pool().map(self.encode, texts))

    def decode(self, ids) -> str:
        # Ids that end inside a multi-byte character decode to U+FFFD rather than failing.
        return self._encoding.decode([int(i) for i in ids])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "pattern": self.pattern, "specials": self.specials,
                "tokens": [None if t is None else base64.b64encode(t).decode("ascii") for t in self.tokens]}

    @classmethod
    def from_dict(cls, spec: dict) -> BytePairTokenizer:
        tokens = [None if t is None else base64.b64decode(t) for t in spec["tokens"]]
        return cls(spec["kind"], tokens, spec["specials"], spec["pattern"])

    @classmethod
    def from_hf(cls, hf_tokenizer, kind: str = "bpe") -> BytePairTokenizer:
        """The table of a trained HF byte-level BPE, checked to give HF's own ids under tiktoken."""
        model = json.loads(hf_tokenizer.to_str())["model"]
        table = {s: b for b, s in byte_symbols().items()}
        specials = {t.content: i for i, t in hf_tokenizer.get_added_tokens_decoder().items()}
        tokens: list[bytes | None] = [None] * len(model["vocab"])
        for symbol, i in model["vocab"].items():
            tokens[i] = None if symbol in specials else symbols_to_bytes(symbol, table)
        previous = -1
        for a, b in (m.split(" ") if isinstance(m, str) else m for m in model["merges"]):
            rank = model["vocab"][a + b]
            if rank <= previous:
                raise LlmkitError(f"the trained BPE's merge {a!r}+{b!r} has id {rank}, not after {previous}: "
                                  "its ids do not follow merge order")
            previous = rank
        return cls(kind, tokens, specials)


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """One thread per core this process may use, kept for the life of the process."""
    global _POOL
    if _POOL is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        _POOL = ThreadPoolExecutor(cores, thread_name_prefix="llmkit-bpe")
    return _POOL


def _without_separators(texts: Iterable[str]) -> Iterator[str]:
    """Documents, not the EOT markers between them: the marker is a special token, not text to learn."""
    for text in texts:
        yield from (part for part in text.split(EOT) if part)


def train_bpe(texts: Iterable[str], vocab_size: int) -> BytePairTokenizer:
    """Learn a byte-level BPE of `vocab_size` tokens (256 bytes, EOT, merges) from an iterable of
    text chunks, streamed: the corpus never has to fit in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 258:
        raise LlmkitError(f"a byte-level BPE needs vocab_size >= 258 (256 bytes, {EOT}, one merge), got {vocab_size}")
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(_without_separators(texts), trainer)
    return BytePairTokenizer.from_hf(hf)


def gpt2_tokenizer(directory: str | Path, vocab: str = "encoder.json", merges: str = "vocab.bpe") -> BytePairTokenizer:
    """GPT-2's tokenizer from its encoder.json (token -> id) and vocab.bpe (the merges, in order).
    A Hugging Face directory holds the same two files as vocab.json and merges.txt."""
    directory = Path(directory)
    try:
        encoder = json.loads((directory / vocab).read_text(encoding="utf-8"))
        lines = (directory / merges).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise LlmkitError(f"GPT-2 tokenizer file missing: {e.filename}",
                          hint="llmkit download gpt2_tokenizer (or --source ../shared/data/gpt2_tokenizer)") from None
    merge_list = [line for line in lines if line and not line.startswith("#version")]
    table = {s: b for b, s in byte_symbols().items()}
    tokens: list[bytes | None] = [None] * len(encoder)
    for symbol, i in encoder.items():
        tokens[i] = None if symbol == EOT else symbols_to_bytes(symbol, table)
    previous = -1
    for n, merge in enumerate(merge_list):  # ids must follow merge order (GPT-2's: 256 + n)
        a, b = merge.split(" ")
        if encoder.get(a + b, -1) <= previous:
            raise LlmkitError(f"{directory}: {vocab} and {merges} disagree at merge {n} ({merge!r})")
        previous = encoder[a + b]
    return BytePairTokenizer("gpt2", tokens, {EOT: encoder[EOT]})


def merges_of(tokenizer: BytePairTokenizer) -> list[tuple[bytes, bytes]]:
    """The merges that build the table, in rank order: for each multi-byte token, the two tokens
    BPE joins last to make it. They follow from the ranks alone: encode the token's bytes with only
    the lower-ranked tokens, which must leave exactly two parts (tiktoken keeps no merge list)."""
    ranks = {t: i for i, t in enumerate(tokenizer.tokens) if t is not None}
    merges = []
    for rank, token in enumerate(tokenizer.tokens):
        if token is None or len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:  # merge the lowest-ranked adjacent pair, as encoding does
            pairs = [(ranks.get(parts[i] + parts[i + 1], rank), i) for i in range(len(parts) - 1)]
            best, i = min(pairs)
            if best >= rank:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise LlmkitError(f"the {tokenizer.kind} table cannot build token {rank} from two earlier tokens")
        merges.append((parts[0], parts[1]))
    return merges


def save_gpt2_files(tokenizer: BytePairTokenizer, directory: str | Path) -> None:
    """vocab.json and merges.txt, the form GPT-2's tokenizer takes in Hugging Face `transformers`."""
    from llmkit.files import atomic_write_text

    symbols = byte_symbols()
    spell = lambda token: "".join(symbols[b] for b in token)  # noqa: E731
    special_names = {i: name for name, i in tokenizer.specials.items()}
    vocab = {special_names[i] if t is None else spell(t): i for i, t in enumerate(tokenizer.tokens)}
    lines = ["#version: 0.2", *(f"{spell(a)} {spell(b)}" for a, b in merges_of(tokenizer))]
    atomic_write_text(Path(directory) / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(Path(directory) / "merges.txt", "\n".join(lines) + "\n")
