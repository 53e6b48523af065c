"""The data steps before training: raw text -> tokenizer -> token shards, streamed.

`llmkit tokenize` calls `tokenize_spans` (through `tokenize_file` or `ensure_tokens`); `llmkit
train` calls `ensure_tokens`, which runs whichever of download and tokenize is missing (saying so)
and reuses shards that are already up to date.

Any corpus size fits in bounded memory: the text is read in blocks of CHUNK_BYTES, each cut where
the tokenizer would cut anyway (see `_cut`), encoded on every core, and appended to shard files of
at most `shard_tokens` ids. The passes over the text:
1. count its characters (where the val split starts) and, for `char`, collect its alphabet;
2. for `bpe`, train the tokenizer on the train split's chunks;
3. encode each split into its shards.
"""

from __future__ import annotations

import bisect
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from llmkit.config import DataConfig
from llmkit.console import console, say
from llmkit.data.shards import ShardSet, ShardWriter, dtype_for, load_shards, new_meta, write_meta
from llmkit.data.sources import DATASETS, ensure_downloaded, file_sha256, get_dataset
from llmkit.data.tokenizer import Tokenizer, make_tokenizer, save_tokenizer
from llmkit.errors import LlmkitError
from llmkit.files import DirectoryLock, clean_stale, make_dir, os_error

CHUNK_BYTES = 1 << 20
# A safe place to cut text for GPT-2-style pre-tokenization: before a space that sits between two
# printable ASCII characters. Pieces never span such a space (a piece may begin with one space,
# never end with one), so the two halves tokenize exactly as the whole would.
_SAFE_CUT = re.compile(rb"(?<=[!-~]) (?=[!-~])")
_CUT_SEARCH = 1 << 16  # look for a cut in the last 64 KiB of a block
TRAIN_CHUNK_BYTES = 1 << 16  # the pieces of text fed to the BPE trainer
BATCH_CHUNKS = 8  # chunks encoded together: about 8 MB of text in memory at a time
# A block with no safe cut is carried into the next, up to this size; past it, it is cut at a
# character boundary (which may change the ids of the one piece cut in two, once per 64 MiB).
MAX_CARRY = 64 << 20


@dataclass(frozen=True)
class Span:
    """Bytes [start, end) of a file: the text of one split."""
    path: Path
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def _cut(data: bytes, anywhere: bool) -> int:
    """Where to end this block: after the last safe cut, or (`anywhere`, for char tokenizers) at
    the last character boundary. 0 means carry the whole block over to the next one."""
    if not anywhere:
        last = None
        for last in _SAFE_CUT.finditer(data, max(0, len(data) - _CUT_SEARCH)):
            pass
        if last is not None:
            return last.start()
        # Text without spaces (Chinese, Japanese, code minified onto one line): a newline between
        # two characters that are not whitespace is safe too (it is a piece of its own, whole
        # or not); failing that, the block is carried over, up to MAX_CARRY.
        newline = _line_cut(data)
        if newline or len(data) < MAX_CARRY:
            return newline
    i = len(data)  # the last character boundary: a byte that does not continue a character
    while i > 0 and data[i - 1] & 0xC0 == 0x80:
        i -= 1
    return i - 1 if i > 0 and data[i - 1] >= 0xC0 else len(data)


def _line_cut(data: bytes) -> int:
    """The position after the last `\n` in the block's tail whose neighbours are not whitespace."""
    start = max(0, len(data) - _CUT_SEARCH)
    at = data.rfind(b"\n", start)
    while at > start:
        before = data[max(0, at - 4) : at].decode("utf-8", "ignore")[-1:]
        after = data[at + 1 : at + 5].decode("utf-8", "ignore")[:1]
        if before and after and not before.isspace() and not after.isspace():
            return at + 1
        at = data.rfind(b"\n", start, at)
    return 0


def read_chunks(span: Span, anywhere: bool = False, on_bytes: Callable[[int], None] | None = None,
                chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, str]]:
    """(byte offset, text) of consecutive chunks of about `chunk_bytes` covering the span exactly."""
    with open(span.path, "rb") as f:
        f.seek(span.start)
        offset, remaining, carry = span.start, span.size, b""
        while remaining > 0 or carry:
            block = f.read(min(chunk_bytes, remaining)) if remaining > 0 else b""
            remaining -= len(block)
            data = carry + block
            cut = _cut(data, anywhere) if remaining > 0 else len(data)
            data, carry = data[:cut], data[cut:]
            if data:
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise LlmkitError(f"{span.path} is not UTF-8 text (invalid byte at offset {offset + e.start})") from None
                yield offset, text
                offset += len(data)
            if on_bytes is not None and block:
                on_bytes(len(block))


def _progress(what: str) -> Progress:
    return Progress(TextColumn(f"[bold]{what}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


def _scan(spans: list[Span], collect_chars: bool) -> tuple[list[int], set[str], list[tuple[int, int]]]:
    """Pass 1: characters per span, the alphabet, and (chars so far, byte offset) at each chunk
    start of the first span (to find the val cut without a second pass)."""
    counts, alphabet, marks = [], set(), []
    total = sum(s.size for s in spans)
    with _progress("reading") as progress:
        task = progress.add_task("reading", total=total)
        for i, span in enumerate(spans):
            chars = 0
            for offset, text in read_chunks(span, True, lambda n: progress.advance(task, n)):
                if i == 0:
                    marks.append((chars, offset))
                chars += len(text)
                if collect_chars:
                    alphabet.update(text)
            counts.append(chars)
    return counts, alphabet, marks


def _char_offset(span: Span, marks: list[tuple[int, int]], char: int) -> int:
    """The byte offset of character number `char` of the span."""
    k = bisect.bisect_right([c for c, _ in marks], char) - 1
    chars, offset = marks[k]
    end = marks[k + 1][1] if k + 1 < len(marks) else span.end
    with open(span.path, "rb") as f:
        f.seek(offset)
        text = f.read(end - offset).decode("utf-8")
    return offset + len(text[: char - chars].encode("utf-8"))


def _encode_split(tokenizer: Tokenizer, span: Span, out_dir: Path, split: str, shard_tokens: int,
                  anywhere: bool, progress: Progress, task) -> dict:
    """Pass 3 for one split: encode its chunks BATCH_CHUNKS at a time (several per core, so every
    core stays busy) into shard files of at most `shard_tokens` ids."""
    dtype = dtype_for(tokenizer.vocab_size)
    files, counts, checksums, writer = [], [], [], None

    def open_next() -> ShardWriter:
        files.append(f"{split}_{len(files):03d}.bin")
        return ShardWriter(out_dir / files[-1], dtype)

    def finish(w: ShardWriter) -> None:
        w.close()
        counts.append(w.count)
        checksums.append(w.crc32)

    def write(ids) -> None:
        nonlocal writer
        while len(ids):
            writer = writer or open_next()
            room = shard_tokens - writer.count
            writer.write(ids[:room])
            ids = ids[room:]
            if writer.count == shard_tokens:
                finish(writer)
                writer = None

    batch: list[str] = []
    try:
        for _, text in read_chunks(span, anywhere, lambda n: progress.advance(task, n)):
            batch.append(text)
            if len(batch) == BATCH_CHUNKS:
                for ids in tokenizer.encode_batch(batch):
                    write(ids)
                batch = []
        for ids in tokenizer.encode_batch(batch):
            write(ids)
        if writer is not None or not files:  # the last shard, partly filled (or an empty split)
            finish(writer or open_next())
            writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return {"files": files, "tokens": counts, "crc32": checksums}


def tokenize_spans(splits: dict[str, Span] | Span, out_dir: str | Path, data: DataConfig, command: str,
                   source: dict) -> ShardSet:
    """Tokenize named splits ({"train": span, "val": span, ...}), or one span whose last
    `data.val_fraction` of characters becomes val (nanoGPT's split), into shards in `out_dir`."""
    out_dir = Path(out_dir)
    whole = isinstance(splits, Span)
    spans = [splits] if whole else list(splits.values())
    _check_shard_dir(out_dir)  # before any work: a wrong --out fails at once
    if sum(s.size for s in spans) == 0:
        raise LlmkitError(f"{spans[0].path} is empty: there is nothing to tokenize")
    counts, alphabet, marks = _scan(spans, collect_chars=data.tokenizer == "char")
    if whole:
        train_chars = int(counts[0] * (1 - data.val_fraction))  # nanoGPT's split: text[:90%] / text[90%:]
        cut = _char_offset(splits, marks, train_chars)
        splits = {"train": Span(splits.path, splits.start, cut), "val": Span(splits.path, cut, splits.end)}
        counts = [train_chars, counts[0] - train_chars]
    train = splits["train"]
    # 64 KiB pieces for the BPE trainer: HF's trainer buffers a few hundred items ahead of its
    # threads, so 1 MiB chunks would hold hundreds of MB of text in memory at once.
    texts = (text for _, text in read_chunks(train, chunk_bytes=TRAIN_CHUNK_BYTES))
    tokenizer = make_tokenizer(data, texts, alphabet, about=f"{train.path} ({train.size / 1e6:,.1f} MB)")

    with DirectoryLock(out_dir, "shard directory"):
        clean_stale(out_dir)
        return _write_shards(splits, out_dir, data, command, source, tokenizer, counts, whole)


def _check_shard_dir(out_dir: Path) -> None:
    """Shards go into a new directory or one that holds shards: never over someone's other files
    (a run directory's tokenizer.json, say)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise LlmkitError(f"--out {out_dir} is a file, not a directory", hint="give --out a directory (new, or one "
                          "llmkit tokenize wrote)")
    ours = re.compile(r"^(meta\.json|tokenizer\.json|\w+_\d{3}\.bin|\.lock|\.stdin|\..*\.tmp)$")
    others = sorted(p.name for p in out_dir.iterdir() if not ours.match(p.name)) if out_dir.is_dir() else []
    if others:
        raise LlmkitError(f"{out_dir} is not a shard directory: it holds {', '.join(others[:3])}"
                          + (" ..." if len(others) > 3 else ""),
                          hint="give --out a new directory (or one llmkit tokenize wrote)")


def _write_shards(splits: dict[str, Span], out_dir: Path, data: DataConfig, command: str, source: dict,
                  tokenizer: Tokenizer, counts: list[int], whole: bool) -> ShardSet:
    (out_dir / "meta.json").unlink(missing_ok=True)  # until rewritten, these shards are not complete
    for old in out_dir.glob("*.bin"):
        old.unlink()
    save_tokenizer(tokenizer, out_dir / "tokenizer.json")
    anywhere = data.tokenizer == "char"
    total = sum(s.size for s in splits.values())
    shard_info = {}
    with _progress("tokenizing") as progress:
        task = progress.add_task("tokenizing", total=total)
        for name, span in splits.items():
            shard_info[name] = _encode_split(tokenizer, span, out_dir, name, data.shard_tokens, anywhere,
                                             progress, task)
    for (name, info), chars in zip(shard_info.items(), counts):
        info["chars"] = chars
    meta = new_meta(tokenizer, shard_info, command, source)
    meta["val_fraction"] = data.val_fraction if whole else None
    meta["settings"] = _settings(data)
    write_meta(out_dir, meta)
    return load_shards(out_dir)


def _settings(data: DataConfig) -> dict:
    """What, besides the text, decides the shards' content."""
    return {"tokenizer": data.tokenizer, "vocab_size": data.vocab_size if data.tokenizer == "bpe" else None,
            "shard_tokens": data.shard_tokens}


def tokenize_file(text_path: str | Path, out_dir: str | Path, tokenizer_kind: str = "char",
                  val_fraction: float = 0.1, source_sha256: str | None = None, **settings) -> ShardSet:
    """Tokenize one text file into train/val shards; the last `val_fraction` of the text is val."""
    text_path, out_dir = Path(text_path), Path(out_dir)
    if not text_path.is_file():
        raise LlmkitError(f"text file not found: {text_path}")
    data = DataConfig(source=str(text_path), tokenizer=tokenizer_kind, val_fraction=val_fraction, **settings)
    source = {"path": str(text_path), "sha256": source_sha256 or file_sha256(text_path)}
    return tokenize_spans(Span(text_path, 0, text_path.stat().st_size), out_dir, data,
                          rebuild_command(str(text_path), data, out_dir, whole=True), source)


def rebuild_command(shown: str, data: DataConfig, out: Path, whole: bool) -> str:
    """The `llmkit tokenize` command that makes these shards again (named in meta.json and in
    the message when a shard is damaged)."""
    command = f"llmkit tokenize {shown} --tokenizer {data.tokenizer}"
    if data.tokenizer == "bpe":
        command += f" --vocab-size {data.vocab_size}"
    if whole:
        command += f" --val-fraction {data.val_fraction}"
    return f"{command} --out {out}"


def spool_stdin(directory: Path) -> Path:
    """`llmkit tokenize -`: copy stdin to a file first (block by block), since the passes above
    read the text more than once."""
    path = make_dir(directory) / "stdin.txt"
    binary = getattr(sys.stdin, "buffer", None)
    try:
        with open(path, "wb") as out:
            if binary is not None:
                shutil.copyfileobj(binary, out, CHUNK_BYTES)
            else:  # a text stream without bytes underneath (embedding, tests)
                for block in iter(lambda: sys.stdin.read(CHUNK_BYTES), ""):
                    out.write(block.encode("utf-8"))
    except OSError as e:
        raise os_error(e, path) from None
    return path


def read_text(path: str | Path) -> str:
    """A whole UTF-8 text file (for texts measured or prompted, not corpora: those stream)."""
    path = Path(path)
    if not path.is_file():
        raise LlmkitError(f"text file not found: {path}")
    try:
        # Bytes, then decode: reading in text mode would turn \r\n into \n and break round trips.
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise LlmkitError(f"{path} is not UTF-8 text (invalid byte at offset {e.start})") from None
    if not text:
        raise LlmkitError(f"{path} is empty")
    return text


def default_name(text_path: Path, data_root: str | Path) -> str:
    """data/raw/shakespeare/input.txt -> 'shakespeare'; any other notes.txt -> 'notes'."""
    raw = (Path(data_root) / "raw").resolve()
    return text_path.parent.name if text_path.resolve().parent.parent == raw else text_path.stem


def token_dir(data_root: str | Path, name: str, tokenizer: str) -> Path:
    return Path(data_root) / "tokens" / f"{name}-{tokenizer}"


def _is_current(directory: Path, data: DataConfig, whole: bool, sha256: str) -> bool:
    try:
        meta = load_shards(directory).meta
    except LlmkitError:
        return False
    return (meta.get("settings") == _settings(data) and meta["source"]["sha256"] == sha256
            and meta.get("val_fraction") == (data.val_fraction if whole else None))


def ensure_tokens(data: DataConfig, out: str | Path | None = None, force: bool = False) -> ShardSet:
    """Shards for a data section, running the missing download/tokenize steps; shards already
    made from the same text with the same settings are reused unless `force`."""
    if data.tokens is not None:
        return load_shards(data.tokens)
    if data.source == "numbers":
        raise LlmkitError("the numbers source is generated while training: there is nothing to tokenize",
                          hint="train it directly: llmkit train recipes/seq2seq_numbers.yaml")
    if data.source in DATASETS:
        dataset = get_dataset(data.source)
        if not dataset.text:
            raise LlmkitError(f"{data.source} is not a text corpus: there is nothing to tokenize",
                              hint="text corpora: " + ", ".join(n for n, d in DATASETS.items() if d.text))
        directory = ensure_downloaded(data.source, data.root)
        paths = {split: directory / name for split, name in dataset.text}
        splits = (Span(paths[""], 0, paths[""].stat().st_size) if "" in paths
                  else {split: Span(p, 0, p.stat().st_size) for split, p in paths.items()})
        known = {m.filename: m.sha256 for f in dataset.files for m in f.targets}
        hashes = [file_sha256(p) for p in paths.values()]  # re-verified: a raw file may have been edited since
        for path, digest in zip(paths.values(), hashes):
            if path.name in known and digest != known[path.name]:
                raise LlmkitError(f"{path} has changed since it was downloaded (sha256 {digest[:12]}…, "
                                  f"expected {known[path.name][:12]}…)",
                                  hint=f"fetch it again: llmkit download {data.source} --data-dir {data.root} --force")
        sha256 = "+".join(hashes)
        name, shown = dataset.name, data.source
    else:
        text_path = Path(data.source)
        if not text_path.is_file():
            raise LlmkitError(f"data.source '{data.source}' is neither a dataset name nor a file",
                              hint="datasets: " + ", ".join(n for n, d in DATASETS.items() if d.text)
                              + "; or give the path of a text file")
        splits = Span(text_path, 0, text_path.stat().st_size)
        sha256 = file_sha256(text_path)
        name, shown = default_name(text_path, data.root), str(text_path)
    whole = isinstance(splits, Span)
    out = Path(out) if out is not None else token_dir(data.root, name, data.tokenizer)
    if not force and _is_current(out, data, whole, sha256):
        return load_shards(out)
    _check_shard_dir(out)  # before announcing any work
    how = (f"last {data.val_fraction:.0%} of the text for validation" if whole
           else "splits " + ", ".join(f"{s} <- {sp.path.name}" for s, sp in splits.items()))
    say(f"tokenizing {shown} -> {out} ({data.tokenizer} tokenizer, {how})")
    return tokenize_spans(splits, out, data, rebuild_command(shown, data, out, whole),
                          {"path": shown, "sha256": sha256})


def tokenize_input(input: str, overrides: list[str] | None = None, out: str | Path | None = None,
                   data_root: str | Path = "data", force: bool = False, **options) -> ShardSet:
    """`llmkit tokenize INPUT`: a recipe (with overrides), a dataset name, a text file or `-`
    (stdin) into shards. `options` are the data keys a text input takes (tokenizer, vocab_size,
    val_fraction, shard_tokens); with a recipe they are overrides instead."""
    import dataclasses

    from llmkit.config import find_recipe, load_recipe

    given = {k: v for k, v in options.items() if v is not None}
    if input.endswith((".yaml", ".yml")):
        if given:
            raise LlmkitError(f"--{next(iter(given)).replace('_', '-')} is for text files and datasets; with a "
                              "recipe use overrides: data.tokenizer=... data.vocab_size=...")
        return ensure_tokens(load_recipe(find_recipe(input), overrides or []).data, force=force)
    if overrides:
        raise LlmkitError(f"overrides ({overrides[0]} ...) need a recipe as the input")
    _check_options(**given)
    data = DataConfig(source=input, root=str(data_root), **given)
    if input != "-":
        return ensure_tokens(data, out=out, force=force)
    if out is None:
        raise LlmkitError("tokenizing standard input needs --out DIR (there is no file name to name it by)")
    out = Path(out)
    data = dataclasses.replace(data, source=str(spool_stdin(out / ".stdin")))
    try:
        return ensure_tokens(data, out=out, force=True)
    finally:
        shutil.rmtree(out / ".stdin", ignore_errors=True)


def _check_options(tokenizer: str | None = None, vocab_size: int | None = None, val_fraction: float | None = None,
                   shard_tokens: int | None = None) -> None:
    """The tokenize command's options, checked with messages that name them as typed."""
    if tokenizer is not None and tokenizer not in ("char", "bpe", "gpt2"):
        raise LlmkitError(f"--tokenizer must be char, bpe or gpt2, not '{tokenizer}'")
    if vocab_size is not None and (tokenizer or "char") != "bpe":
        raise LlmkitError(f"--vocab-size is for the bpe tokenizer; {tokenizer or 'char'} has a fixed vocabulary",
                          hint="add --tokenizer bpe, or drop --vocab-size")
    if vocab_size is not None and vocab_size > 1 << 20:
        raise LlmkitError(f"--vocab-size {vocab_size:,} is too large: at most {1 << 20:,} (no model uses more "
                          "than a few hundred thousand tokens, and a BPE trainer holds them all in memory)")
    if vocab_size is not None and vocab_size < 258:
        raise LlmkitError(f"--vocab-size {vocab_size} is too small: a byte-level BPE needs at least 258 "
                          "(256 bytes, <|endoftext|>, one merge)")
    if shard_tokens is not None and shard_tokens < 1:
        raise LlmkitError(f"--shard-tokens must be at least 1, got {shard_tokens}")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise LlmkitError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
