"""The `llmkit` command line.

Each subcommand is a thin layer over one module and imports it (and torch) only when it runs, so
`llmkit --help` stays fast. Results go to stdout (paths, text, JSON), everything else to stderr,
so commands compose in a shell. Errors are one message and a hint, with a non-zero exit code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmkit import __version__
from llmkit.errors import LlmkitError

app = typer.Typer(
    name="llmkit",
    help="Language models from scratch: download -> tokenize -> train -> eval / generate.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

Overrides = Annotated[Optional[list[str]], typer.Argument(
    help="Recipe overrides as dotted keys, e.g. train.lr=3e-4 model.n_layer=2", show_default=False)]
Device = Annotated[Optional[str], typer.Option(
    "--device", help="auto | cpu | cuda | cuda:N | mps (default: the recipe's train.device, or auto)",
    show_default=False)]
DataDir = Annotated[Path, typer.Option("--data-dir", help="Root of raw/ and tokens/ directories.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


def _version(value: bool) -> None:
    if value:
        print(f"llmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Language models from scratch: download -> tokenize -> train -> eval / generate.

    Start with: llmkit train recipes/shakespeare_char.yaml
    """


@app.command()
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
    from llmkit.sources import download as fetch

    if name == "wiki":
        if version not in ("2", "103"):
            raise LlmkitError("wiki needs --version 2 or --version 103")
        name = f"wiki{version}"
    elif version is not None:
        raise LlmkitError(f"--version is for wiki, not {name}")
    for path in fetch(name, data_dir, source=source, force=force):
        print(path)


@app.command()
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
    import dataclasses

    from llmkit.config import DataConfig, find_recipe, load_recipe
    from llmkit.prepare import ensure_tokens, spool_stdin

    options = {"tokenizer": tokenizer, "vocab_size": vocab_size, "val_fraction": val_fraction,
               "shard_tokens": shard_tokens}
    given = {k: v for k, v in options.items() if v is not None}
    if input.endswith((".yaml", ".yml")):
        if given:
            raise LlmkitError(f"--{next(iter(given)).replace('_', '-')} is for text files and datasets; with a "
                              "recipe use overrides: data.tokenizer=... data.vocab_size=...")
        print(ensure_tokens(load_recipe(find_recipe(input), overrides or []).data, force=force).directory)
        return
    if overrides:
        raise LlmkitError(f"overrides ({overrides[0]} ...) need a recipe as the input")
    data = DataConfig(source=input, root=str(data_dir), **given)
    if input == "-":
        if out is None:
            raise LlmkitError("tokenizing standard input needs --out DIR (there is no file name to name it by)")
        data = dataclasses.replace(data, source=str(spool_stdin(out / ".stdin")))
        try:
            print(ensure_tokens(data, out=out, force=True).directory)
        finally:
            import shutil

            shutil.rmtree(out / ".stdin", ignore_errors=True)
        return
    print(ensure_tokens(data, out=out, force=force).directory)


@app.command()
def train(
    recipe: Annotated[str, typer.Argument(
        help="A recipe file, or the name of one in recipes/ (shakespeare_char).", show_default=False)],
    overrides: Overrides = None,
    device: Device = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its latest.pt.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start again, replacing the run's checkpoints.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (parameters, FLOPs, memory, "
                                          "step time) and exit without training.")] = False,
) -> None:
    """Train the model a recipe describes; runs missing download/tokenize steps first.

    Prints the run directory when done. Ctrl-C saves a checkpoint; --resume continues it.
    Several processes: torchrun --nproc_per_node=N -m llmkit train RECIPE.
    Example: llmkit train recipes/shakespeare_char.yaml train.max_steps=500
    """
    from llmkit.config import find_recipe, load_recipe

    overrides = list(overrides or [])
    if device is not None:
        overrides.append(f"train.device={device}")
    loaded = load_recipe(find_recipe(recipe), overrides)
    if dry_run:
        from llmkit.planner import dry_run as print_plan

        raise typer.Exit(print_plan(loaded))
    from llmkit.trainer import train as run_training

    run_dir = run_training(loaded, resume=resume, overwrite=overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0 only
        print(run_dir)


@app.command("eval")
def eval_(
    run: Annotated[str, typer.Argument(help="A run directory or a checkpoint file.", show_default=False)],
    split: Annotated[str, typer.Option(help="Which split to measure.")] = "val",
    checkpoint: Annotated[str, typer.Option(help="best or latest, for a run directory.")] = "best",
    data: Annotated[Optional[Path], typer.Option(
        help="Token shards to measure on (default: the ones the run was trained on).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per forward pass.")] = 32,
    beam: Annotated[int, typer.Option(min=1, help="Beam width for seq2seq decoding (1: greedy).")] = 1,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Measure a trained model on every example of a split.

    Language models: loss, perplexity, bits per character. Encoder: masked-token loss and accuracy.
    Seq2seq: exact match on the held-out numbers. Example: llmkit eval runs/shakespeare_char --json
    """
    from llmkit.device import resolve_device
    from llmkit.run import load_trained, task_for

    target = resolve_device(device)
    trained = load_trained(run, checkpoint, target)
    task = task_for(trained, data)
    extra = {"beam": beam} if trained.config.name == "seq2seq" else {}
    if beam > 1 and not extra:
        raise LlmkitError("--beam is for seq2seq models; a language model's loss does not decode")
    result = task.evaluate(trained.model, split, batch_size, target, **extra)
    result = {"checkpoint": str(trained.path), "step": trained.checkpoint["step"],
              "data": task.data_info["tokens"] or "generated", "split": split, **result}
    if as_json:
        print(json.dumps(result))
        return
    labels = {"loss": "loss", "perplexity": "perplexity", "bits_per_char": "bits per char",
              "masked_accuracy": "masked-token accuracy", "exact_match": "exact match"}
    rows = [("checkpoint", f"{result['checkpoint']} (step {result['step']})"),
            ("split", f"{split} of {result['data']}")]
    rows += [(label, f"{result[key]:.2%}" if key in ("masked_accuracy", "exact_match") else f"{result[key]:.4f}")
             for key, label in labels.items() if key in result]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    for error in result.get("errors", []):
        print(f"  wrong: {error['number']} -> {error['output']!r} (reference {error['reference']!r})")


@app.command()
def generate(
    run: Annotated[str, typer.Argument(help="A run directory or a checkpoint file.", show_default=False)],
    prompt: Annotated[Optional[str], typer.Option(
        "--prompt", "-p", help="Text to continue; '-' reads stdin (also read when stdin is a pipe).",
        show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=0)] = 500,
    # The sampling defaults are llmkit.generate.TEMPERATURE and TOP_K (a test keeps them equal).
    temperature: Annotated[float, typer.Option(min=0.0, help="0 picks the most likely token.")] = 0.8,
    top_k: Annotated[Optional[int], typer.Option(min=1, help="Sample among the k most likely tokens.")] = 200,
    beam: Annotated[int, typer.Option(min=1, help="Beam search with this many beams (1: sample).")] = 1,
    seed: Annotated[Optional[int], typer.Option(help="Make the sample repeatable.", show_default=False)] = None,
    checkpoint: Annotated[str, typer.Option(help="best or latest, for a run directory.")] = "best",
    echo: Annotated[bool, typer.Option(help="Print the prompt before the continuation.")] = True,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = "auto",
) -> None:
    """Continue a prompt with a trained model, streaming the text to stdout.

    A seq2seq run translates instead: each input line is a number, each output line its words.
    Examples: echo "ROMEO:" | llmkit generate runs/shakespeare_char --seed 1
              printf "4021\n77\n" | llmkit generate runs/seq2seq_numbers --beam 4
    """
    import torch

    from llmkit.console import say
    from llmkit.device import resolve_device
    from llmkit.generate import StreamDecoder, beam_search, generate as sample, prompt_ids
    from llmkit.run import load_trained

    target = resolve_device(device)
    trained = load_trained(run, checkpoint, target)  # before reading stdin: bad runs fail at once
    if trained.config.name == "encoder":
        raise LlmkitError(f"{trained.path} is an encoder (masked LM): it fills in masks, it does not "
                          "generate text", hint=f"measure it with: llmkit eval {run}")
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        prompt = sys.stdin.read()
    prompt = prompt or ""
    if trained.config.name == "seq2seq":
        _translate_lines(trained, prompt, beam, target)
        return
    idx = prompt_ids(trained.tokenizer, prompt, target)
    out = sys.stdout
    if echo:
        out.write(prompt)
    if beam > 1:
        model, block = trained.model, trained.config.block_size

        def step(prefixes):  # (N, t) -> (N, V) next-token log-probs
            logits = model(prefixes[:, -block:].to(target))[:, -1, : trained.tokenizer.vocab_size]
            return torch.log_softmax(logits.float(), dim=-1)
        tokens = beam_search(step, idx[0].tolist(), beam, max_new_tokens, eos=None)
    else:
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
            say(f"seed {seed} (pass --seed {seed} to repeat this sample)")
        generator = torch.Generator(target).manual_seed(seed)
        tokens = sample(trained.model, idx, max_new_tokens, temperature, top_k, generator,
                        trained.tokenizer.vocab_size)
    decoder, text = StreamDecoder(trained.tokenizer), prompt
    for token in tokens:
        piece = decoder.push(token)
        text += piece
        out.write(piece)
        out.flush()
    if not text.endswith("\n"):
        out.write("\n")


def _translate_lines(trained, text: str, beam: int, device) -> None:
    from llmkit.tasks.numbers import LIMIT, NumbersToWords

    task = NumbersToWords(trained.config.block_size)
    numbers = []
    for line in text.split():
        if not line.isdigit() or int(line) >= LIMIT:
            raise LlmkitError(f"'{line}' is not an integer from 0 to {LIMIT - 1:,}",
                              hint="a seq2seq_numbers run reads one number per line")
        numbers.append(int(line))
    if not numbers:
        raise LlmkitError("no numbers to translate", hint="echo 4021 | llmkit generate RUN")
    for number, words in zip(numbers, task.translate(trained.model, numbers, device, beam)):
        print(f"{number}\t{words}")


@app.command()
def finetune() -> None:
    """Finetune a model (spam classification, instruction following, LoRA): not available yet."""
    raise LlmkitError("llmkit finetune is not available yet in this version",
                      hint="pretraining works today: llmkit train recipes/shakespeare_char.yaml")


def main() -> None:
    try:
        app(prog_name="llmkit")
    except LlmkitError as e:
        sys.stderr.write(f"error: {e.message}\n")
        if e.hint:
            sys.stderr.write(f"hint: {e.hint}\n")
        sys.exit(e.exit_code)
    except BrokenPipeError:
        # The reader went away (`llmkit generate ... | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)

