"""The data steps before training: raw text -> tokenizer -> train/val token shards.

`llmkit tokenize` calls `tokenize_file`; `llmkit train` calls `ensure_tokens`, which runs whichever
of download and tokenize is missing (saying so) and reuses shards that are already up to date.
"""

from __future__ import annotations

from pathlib import Path

from llmkit.config import DataConfig
from llmkit.console import say
from llmkit.errors import LlmkitError
from llmkit.shards import ShardSet, dtype_for, load_shards, new_meta, write_meta, write_shard
from llmkit.sources import DATASETS, download, file_sha256, get_dataset, is_downloaded, raw_dir
from llmkit.tokenizer import TOKENIZERS, save_tokenizer


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise LlmkitError(f"text file not found: {path}")
    try:
        # Bytes, then decode: reading in text mode would turn \r\n into \n and break round trips.
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise LlmkitError(f"{path} is not UTF-8 text (invalid byte at offset {e.start})") from None
    if not text:
        raise LlmkitError(f"{path} is empty: there is nothing to tokenize")
    return text


def default_name(text_path: Path, data_root: str | Path) -> str:
    """data/raw/shakespeare/input.txt -> 'shakespeare'; any other notes.txt -> 'notes'."""
    raw = (Path(data_root) / "raw").resolve()
    return text_path.parent.name if text_path.resolve().parent.parent == raw else text_path.stem


def token_dir(data_root: str | Path, name: str, tokenizer: str) -> Path:
    return Path(data_root) / "tokens" / f"{name}-{tokenizer}"


def tokenize_file(text_path: str | Path, out_dir: str | Path, tokenizer_kind: str = "char",
                  val_fraction: float = 0.1, source_sha256: str | None = None) -> ShardSet:
    """Tokenize a text file into train/val shards; the last `val_fraction` of the text is val."""
    text_path, out_dir = Path(text_path), Path(out_dir)
    if tokenizer_kind not in TOKENIZERS:
        raise LlmkitError(f"unknown tokenizer '{tokenizer_kind}' (known: {', '.join(TOKENIZERS)})")
    if not 0.0 < val_fraction < 1.0:
        raise LlmkitError(f"val fraction must be between 0 and 1, got {val_fraction}")
    text = read_text(text_path)
    command = (f"llmkit tokenize {text_path} --tokenizer {tokenizer_kind} "
               f"--val-fraction {val_fraction} --out {out_dir}")
    tokenizer = TOKENIZERS[tokenizer_kind].train(text)
    dtype = dtype_for(tokenizer.vocab_size)
    cut = int(len(text) * (1 - val_fraction))  # nanoGPT's split: text[:90%] / text[90%:]

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # until rewritten, these shards are not complete
    save_tokenizer(tokenizer, out_dir / "tokenizer.json")
    splits = {}
    for split, part in (("train", text[:cut]), ("val", text[cut:])):
        file = f"{split}_000.bin"
        count = write_shard(out_dir / file, tokenizer.encode(part), dtype)
        splits[split] = {"files": [file], "tokens": [count]}
    source = {"path": str(text_path), "sha256": source_sha256 or file_sha256(text_path),
              "chars": len(text)}
    meta = new_meta(tokenizer, splits, command, source)
    meta["val_fraction"] = val_fraction
    write_meta(out_dir, meta)
    return load_shards(out_dir)


def _is_current(directory: Path, tokenizer: str, val_fraction: float, sha256: str) -> bool:
    try:
        meta = load_shards(directory).meta
    except LlmkitError:
        return False
    return (meta["tokenizer"]["kind"] == tokenizer and meta.get("val_fraction") == val_fraction
            and meta["source"]["sha256"] == sha256)


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
        if not is_downloaded(data.source, data.root):
            say(f"{data.source} is not downloaded yet; running: llmkit download {data.source} --data-dir {data.root}")
            download(data.source, data.root)
        text_path = raw_dir(data.root, dataset) / dataset.text_file
        sha256 = dataset.files[0].sha256
        name = dataset.name
    else:
        text_path = Path(data.source)
        if not text_path.is_file():
            raise LlmkitError(f"data.source '{data.source}' is neither a dataset name nor a file",
                              hint=f"datasets: {', '.join(DATASETS)}; or give the path of a text file")
        sha256 = file_sha256(text_path)
        name = default_name(text_path, data.root)
    out = Path(out) if out is not None else token_dir(data.root, name, data.tokenizer)
    if not force and _is_current(out, data.tokenizer, data.val_fraction, sha256):
        return load_shards(out)
    say(f"tokenizing {text_path} -> {out} ({data.tokenizer} tokenizer, "
        f"last {data.val_fraction:.0%} of the text for validation)")
    return tokenize_file(text_path, out, data.tokenizer, data.val_fraction, sha256)
