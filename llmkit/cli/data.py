"""Commands for data: `llmkit download` and `llmkit tokenize`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmkit.cli.options import DataDir, Overrides


def download(
    name: Annotated[str, typer.Argument(
        help="Dataset: shakespeare, wiki (with --version), wikitext2, spam, instruct, gpt2_tokenizer.",
        show_default=False)],
    version: Annotated[Optional[str], typer.Option(
        help="For wiki: 2 or 103 (WikiText-2 or WikiText-103, raw, through HF datasets).",
        show_default=False)] = None,
    source: Annotated[Optional[Path], typer.Option(
        help="Take the data from this file (or a directory laid out like the mirror) instead of "
        "the network. Without it, $LLMKIT_DATA_MIRROR is tried, then the original URL.",
        show_default=False)] = None,
    data_dir: DataDir = Path("data"),
    force: Annotated[bool, typer.Option("--force", help="Fetch again even if present and verified.")] = False,
) -> None:
    """Fetch a dataset into DATA_DIR/raw/NAME/, checking its sha256; prints the file paths.

    Examples: llmkit download shakespeare | llmkit download wiki --version 103
    | llmkit download spam --source ../shared/data
    """
    from llmkit.data.sources import dataset_name
    from llmkit.data.sources import download as fetch

    for path in fetch(dataset_name(name, version), data_dir, source=source, force=force):
        print(path)


def tokenize(
    input: Annotated[str, typer.Argument(
        help="A recipe (.yaml), a dataset name (shakespeare, wiki103, wikitext2), a UTF-8 text file, "
        "or - for standard input.", show_default=False)],
    overrides: Overrides = None,
    tokenizer: Annotated[Optional[str], typer.Option(
        help="char (default), bpe (trained on the train split) or gpt2.", show_default=False)] = None,
    vocab_size: Annotated[Optional[int], typer.Option(
        help="Tokens of a bpe tokenizer (default 8192).", show_default=False)] = None,
    val_fraction: Annotated[Optional[float], typer.Option(
        help="Fraction of the text, from its end, kept for validation (default 0.1).", show_default=False)] = None,
    shard_tokens: Annotated[Optional[int], typer.Option(
        help="Most ids per shard file (default 250,000,000).", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output directory (default DATA_DIR/tokens/NAME-TOKENIZER; required with -).", show_default=False)] = None,
    data_dir: DataDir = Path("data"),
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the shards are up to date.")] = False,
) -> None:
    """Turn text into train/val token shards and a saved tokenizer; prints the shard directory.

    Examples: llmkit tokenize recipes/shakespeare_char.yaml | llmkit tokenize notes.txt --tokenizer bpe
    | cat corpus.txt | llmkit tokenize - --tokenizer gpt2 --out data/tokens/corpus
    """
    from llmkit.data.prepare import tokenize_input

    shards = tokenize_input(input, overrides, out, data_dir, force, tokenizer=tokenizer, vocab_size=vocab_size,
                            val_fraction=val_fraction, shard_tokens=shard_tokens)
    print(shards.directory)
