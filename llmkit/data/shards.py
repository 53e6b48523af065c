"""Token shards: binary files of token ids behind a versioned header, plus meta.json.

A shard directory (what `llmkit tokenize` writes):

    meta.json         format version, tokenizer identity, vocab size, dtype, files and token counts
    tokenizer.json    the tokenizer itself (see llmkit/data/tokenizer.py)
    train_000.bin     header + token ids (uint16 when the vocabulary fits, else uint32)
    val_000.bin

Each .bin starts with a 64-byte header: magic `LLMKTOK\\0`, format version, bytes per token and the
token count; the ids follow, little-endian, and are read back with `np.memmap` without copying.
meta.json is written last and removed first when shards are rebuilt, so a directory whose meta.json
is present describes complete shards; every count is checked again when the shards are opened.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.data.tokenizer import Tokenizer, identity, load_tokenizer
from llmkit.errors import LlmkitError
from llmkit.files import atomic_open, atomic_write_text

MAGIC = b"LLMKTOK\x00"
VERSION = 1
HEADER = struct.Struct("<8sIIQ")  # magic, version, bytes per token, token count
HEADER_BYTES = 64  # the header is padded so the ids start 64-byte aligned
META_FORMAT = "llmkit-shards"
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


def dtype_for(vocab_size: int) -> np.dtype:
    return DTYPES[2] if vocab_size <= 1 << 16 else DTYPES[4]


class ShardWriter:
    """Append arrays of ids to one shard file; it appears, complete, only on `close()`."""

    def __init__(self, path: str | Path, dtype: np.dtype):
        self.path, self.dtype, self.count, self.crc32 = Path(path), np.dtype(dtype), 0, 0
        self._context = atomic_open(self.path, "wb")
        self._file = self._context.__enter__()
        self._file.write(bytes(HEADER_BYTES))  # placeholder until the count is known

    def write(self, ids: np.ndarray) -> None:
        if len(ids) and int(ids.max()) > np.iinfo(self.dtype).max:
            raise ValueError(f"token id {int(ids.max())} does not fit {self.dtype}")
        data = np.asarray(ids).astype(self.dtype, copy=False).tobytes()
        self._file.write(data)
        self.crc32 = zlib.crc32(data, self.crc32)  # of the ids, checked when the shard is opened
        self.count += len(ids)

    def close(self) -> None:
        self._file.seek(0)
        self._file.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.count))
        self._context.__exit__(None, None, None)

    def abort(self) -> None:
        self._context.__exit__(RuntimeError, RuntimeError("aborted"), None)


def write_shard(path: str | Path, ids: np.ndarray, dtype: np.dtype) -> int:
    writer = ShardWriter(path, dtype)
    try:
        writer.write(ids)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.count


def open_shard(path: str | Path, rebuild: str) -> np.memmap:
    """Map one shard's ids without reading them, after checking its header against its size."""
    path = Path(path)
    hint = f"rebuild the shards: {rebuild}"
    try:
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise LlmkitError(f"shard {path} is missing", hint=hint) from None
    if len(header) < HEADER_BYTES or header[:8] != MAGIC:
        raise LlmkitError(f"{path} is not an llmkit token shard (bad header)", hint=hint)
    _, version, itemsize, count = HEADER.unpack_from(header)
    if version != VERSION or itemsize not in DTYPES:
        raise LlmkitError(f"shard {path} has format version {version}, token size {itemsize}; "
                          f"this llmkit reads version {VERSION}", hint=hint)
    expected = HEADER_BYTES + count * itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise LlmkitError(f"shard {path} is truncated or corrupt: {actual} bytes, its header "
                          f"promises {expected} ({count} tokens)", hint=hint)
    return np.memmap(path, dtype=DTYPES[itemsize], mode="r", offset=HEADER_BYTES, shape=(count,))


class TokenStream:
    """One split's shards read as a single sequence of ids: `len(s)`, `s.windows(starts, n)`."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])  # start of each part

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """ids[start : start + length] as int64, crossing shard boundaries where needed."""
        pieces, end = [], start + length
        part = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < end:
            local = start - int(self.offsets[part])
            take = min(end - start, len(self.parts[part]) - local)
            pieces.append(self.parts[part][local : local + take])
            start, part = start + take, part + 1
        return np.concatenate(pieces).astype(np.int64)

    def windows(self, starts, length: int) -> np.ndarray:
        """A (len(starts), length) int64 array of windows."""
        if len(self.parts) == 1:  # the common case: one fancy-indexing read from the memmap
            index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length)
            return self.parts[0][index].astype(np.int64)
        return np.stack([self.window(int(s), length) for s in starts])


@dataclass
class ShardSet:
    directory: Path
    meta: dict
    tokenizer: Tokenizer

    @property
    def rebuild(self) -> str:
        return self.meta.get("command", "llmkit tokenize ...")

    @property
    def tokenizer_identity(self) -> str:
        return self.meta["tokenizer"]["identity"]

    def split(self, name: str) -> TokenStream:
        """One split's ids, every shard checked against meta.json: count, dtype, checksum, and
        ids inside the vocabulary (a model would index past its embedding table otherwise)."""
        if name not in self.meta["splits"]:
            raise LlmkitError(f"{self.directory} has no '{name}' split "
                              f"(it has: {', '.join(self.meta['splits'])})")
        info = self.meta["splits"][name]
        parts = []
        checksums = info.get("crc32") or [None] * len(info["files"])  # shards made before llmkit 0.2 have none
        for file, tokens, crc in zip(info["files"], info["tokens"], checksums):
            path = self.directory / file
            part = open_shard(path, self.rebuild)
            hint = f"rebuild the shards: {self.rebuild}"
            if len(part) != tokens or part.dtype != np.dtype(self.meta["dtype"]):
                raise LlmkitError(f"shard {path} does not match meta.json "
                                  f"({len(part)} tokens of {part.dtype}, expected {tokens} of "
                                  f"{self.meta['dtype']})", hint=hint)
            if crc is not None and zlib.crc32(part) != crc:
                raise LlmkitError(f"shard {path} is damaged: its ids do not match the checksum in meta.json", hint=hint)
            if len(part) and int(part.max()) >= self.tokenizer.vocab_size:
                raise LlmkitError(f"shard {path} holds id {int(part.max())}, outside the tokenizer's "
                                  f"{self.tokenizer.vocab_size} tokens", hint=hint)
            parts.append(part)
        return TokenStream(parts)


def load_shards(directory: str | Path) -> ShardSet:
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        what = "does not exist" if not directory.exists() else "has no meta.json (unfinished shards?)"
        raise LlmkitError(f"token shards {directory} {what}",
                          hint="make them with: llmkit tokenize RECIPE_OR_TEXT_FILE")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LlmkitError(f"{meta_path} is not valid JSON", hint="rebuild with llmkit tokenize") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tokenizer"), dict) or not isinstance(meta.get("splits"), dict):
        raise LlmkitError(f"{meta_path} is not a shard description (no tokenizer or splits)",
                          hint="make the shards with: llmkit tokenize RECIPE_OR_TEXT_FILE")
    if meta.get("format") != META_FORMAT or meta.get("version") != VERSION:
        raise LlmkitError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r}"
                          f" is not {META_FORMAT!r} version {VERSION}",
                          hint=f"rebuild the shards: {meta.get('command', 'llmkit tokenize ...')}")
    tokenizer = load_tokenizer(directory / meta["tokenizer"]["file"])
    if identity(tokenizer) != meta["tokenizer"]["identity"] or meta.get("vocab_size") != tokenizer.vocab_size:
        raise LlmkitError(f"{directory}: tokenizer.json does not match meta.json (identity or vocab_size)",
                          hint=f"rebuild the shards: {meta.get('command', 'llmkit tokenize ...')}")
    return ShardSet(directory, meta, tokenizer)


def write_meta(directory: str | Path, meta: dict) -> None:
    atomic_write_text(Path(directory) / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def new_meta(tokenizer: Tokenizer, splits: dict[str, dict], command: str, source: dict) -> dict:
    return {
        "format": META_FORMAT,
        "version": VERSION,
        "tokenizer": {"kind": tokenizer.kind, "identity": identity(tokenizer), "file": "tokenizer.json"},
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype_for(tokenizer.vocab_size).str,
        "splits": splits,
        "source": source,
        "command": command,
    }
