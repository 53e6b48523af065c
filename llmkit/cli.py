"""The `llmkit` command line.

Each subcommand is a thin layer over one module and imports it (and torch) only when it runs, so
`llmkit --help` stays fast. Results go to stdout (paths, text, JSON), everything else to stderr,
so commands compose in a shell. Errors are one message and a hint, with a non-zero exit code.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
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
JudgeUrl = Annotated[Optional[str], typer.Option(
    help="Also score answers with a judge model at this OpenAI-compatible endpoint (e.g. "
    "http://localhost:11434/v1); the key, if any, comes from $OPENAI_API_KEY.", show_default=False)]
JudgeModel = Annotated[Optional[str], typer.Option(help="The judge's model name (with --judge-url).",
                                                   show_default=False)]


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
    if tokenizer is not None and tokenizer not in ("char", "bpe", "gpt2"):
        raise LlmkitError(f"--tokenizer must be char, bpe or gpt2, not '{tokenizer}'")
    if vocab_size is not None and vocab_size < 258:
        raise LlmkitError(f"--vocab-size {vocab_size} is too small: a byte-level BPE needs at least 258 "
                          "(256 bytes, <|endoftext|>, one merge)")
    if shard_tokens is not None and shard_tokens < 1:
        raise LlmkitError(f"--shard-tokens must be at least 1, got {shard_tokens}")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise LlmkitError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
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
    text: Annotated[Optional[Path], typer.Option(
        help="Measure a language model on this UTF-8 text file instead of a split.", show_default=False)] = None,
    stride: Annotated[Optional[int], typer.Option(
        min=1, help="Start context windows this many tokens apart (default: the context length); "
        "smaller gives each token more context.", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = "auto",
    judge_url: JudgeUrl = None,
    judge_model: JudgeModel = None,
    as_json: JsonFlag = False,
) -> None:
    """Measure a trained model on every example of a split, or on a text file.

    Language models: loss, perplexity, bits per byte and per character, next-token accuracy.
    Encoder: masked-token loss and accuracy. Seq2seq: exact match on the held-out numbers.
    Classifiers: accuracy, precision, recall, F1. Instruction-tuned runs: the loss on responses;
    on the test split also the model's answers (RUN/test_responses.json), exact match and ROUGE-L.
    Examples: llmkit eval runs/shakespeare_char --json | llmkit eval runs/wikitext2_bpe --text notes.txt --stride 64
    """
    from llmkit.device import resolve_device
    from llmkit.run import load_trained, task_for

    target = resolve_device(device)
    trained = load_trained(run, checkpoint, target)
    is_lm = trained.config.name not in ("encoder", "seq2seq") and trained.config.n_classes is None
    if (text is not None or stride is not None) and not is_lm:
        raise LlmkitError(f"--text and --stride are for language models, not {trained.config.name}")
    if stride is not None and stride > trained.config.block_size:
        raise LlmkitError(f"--stride {stride} is longer than the context ({trained.config.block_size})")
    if beam > 1 and trained.config.name != "seq2seq":
        raise LlmkitError("--beam is for seq2seq models; a language model's loss does not decode")
    if text is not None and (judge_url or judge_model):
        raise LlmkitError("--judge-url scores an instruct run's answers on a split, not a text file")
    if text is not None:
        result, source, split = _evaluate_text(trained, text, batch_size, stride, target), str(text), "text"
    else:
        task = task_for(trained, data)
        instruct = task.data_info.get("source") == "instruct"
        judge = _judge(judge_url, judge_model, "instruct" if instruct else trained.config.name)
        if instruct and stride is not None:
            raise LlmkitError("--stride is for language models on token shards; an instruct run is scored per answer")
        extra = {"beam": beam} if trained.config.name == "seq2seq" else {"stride": stride} if is_lm else {}
        if instruct:
            run_dir = trained.path.parent if trained.path.is_file() else trained.path
            extra = {"responses": run_dir / f"{split}_responses.json", "judge": judge}
        result = task.evaluate(trained.model, split, batch_size, target, **extra)
        source = task.data_info.get("source") or task.data_info["tokens"] or "generated"
    result = {"checkpoint": str(trained.path), "step": trained.checkpoint["step"], "data": source,
              "split": split, **result}
    if as_json:
        print(json.dumps(result))
        return
    labels = {"loss": "loss", "perplexity": "perplexity", "bits_per_byte": "bits per byte",
              "bits_per_char": "bits per char", "accuracy": "next-token accuracy",
              "masked_accuracy": "masked-token accuracy", "exact_match": "exact match"}
    labels.update({"precision": "precision (spam)", "recall": "recall (spam)", "f1": "F1 (spam)",
                   "unseen_accuracy": "accuracy, texts not in train", "rouge_l": "ROUGE-L F1",
                   "judge_score": "judge score (0-100)"})
    percent = ("accuracy", "masked_accuracy", "exact_match", "precision", "recall", "f1", "unseen_accuracy", "rouge_l")
    rows = [("checkpoint", f"{result['checkpoint']} (step {result['step']})"),
            ("split", f"{split} of {result['data']}" if split != "text" else result["data"])]
    rows += [(label, f"{result[key]:.2%}" if key in percent else f"{result[key]:.4f}")
             for key, label in labels.items() if key in result]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    if "confusion" in result:
        (tn, fp), (fn, tp) = result["confusion"]
        print(f"confusion (rows: truth; columns: predicted)\n           ham   spam\n  ham  {tn:>6} {fp:>6}\n  spam {fn:>6} {tp:>6}")
    for error in result.get("errors", []):
        print(f"  wrong: {error['number']} -> {error['output']!r} (reference {error['reference']!r})")
    if "responses" in result:
        print(f"{'answers':<{width}}  {result['responses']}")


@app.command()
def generate(
    run: Annotated[str, typer.Argument(help="A run directory or a checkpoint file.", show_default=False)],
    prompt: Annotated[Optional[str], typer.Option(
        "--prompt", "-p", help="Text to continue; '-' reads stdin (also read when stdin is a pipe).",
        show_default=False)] = None,
    prompts: Annotated[Optional[Path], typer.Option(
        help="A file of prompts, one per line, generated as one batch.", show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=0)] = 500,
    # The sampling defaults are llmkit.generate.TEMPERATURE and TOP_K (a test keeps them equal).
    temperature: Annotated[float, typer.Option(min=0.0, help="0 picks the most likely token.")] = 0.8,
    top_k: Annotated[Optional[int], typer.Option(min=1, help="Sample among the k most likely tokens.")] = 200,
    top_p: Annotated[Optional[float], typer.Option(
        help="Sample among the most likely tokens whose probabilities sum to p.", show_default=False)] = None,
    min_p: Annotated[Optional[float], typer.Option(
        help="Drop tokens less than min_p times as likely as the most likely.", show_default=False)] = None,
    repetition_penalty: Annotated[float, typer.Option(help="Above 1 makes repeats less likely.")] = 1.0,
    stop: Annotated[Optional[list[str]], typer.Option(
        help="End the text before this string (repeatable).", show_default=False)] = None,
    num_samples: Annotated[int, typer.Option(min=1, help="Samples per prompt.")] = 1,
    beam: Annotated[int, typer.Option(min=1, help="Beam search with this many beams (1: sample).")] = 1,
    length_penalty: Annotated[float, typer.Option(
        help="Beam search: score / length**penalty (0 favours short outputs).")] = 1.0,
    context: Annotated[str, typer.Option(
        help="Past the context length: slide (keep going on the last half) or stop.")] = "slide",
    cache: Annotated[bool, typer.Option(help="Use the KV cache (--no-cache recomputes every step).")] = True,
    seed: Annotated[Optional[int], typer.Option(help="Make the sample repeatable.", show_default=False)] = None,
    checkpoint: Annotated[str, typer.Option(help="best or latest, for a run directory.")] = "best",
    echo: Annotated[bool, typer.Option(help="Print the prompt before the continuation.")] = True,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per sample, on one line.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = "auto",
) -> None:
    """Continue a prompt with a trained model, streaming the text to stdout.

    A seq2seq run translates instead: each input line is a number, each output line its words.
    Examples: echo "ROMEO:" | llmkit generate runs/shakespeare_char --seed 1
              llmkit generate runs/wikitext2_bpe -p "The city" --top-p 0.9 --stop "." --json
              printf "4021\n77\n" | llmkit generate runs/seq2seq_numbers --beam 4
    """
    from llmkit.device import resolve_device
    from llmkit.generate import Sampling
    from llmkit.run import load_trained

    if context not in ("slide", "stop"):
        raise LlmkitError(f"--context must be slide or stop, got '{context}'")
    sampling = Sampling(temperature, top_k, top_p, min_p, repetition_penalty)  # checks the values
    target = resolve_device(device)
    trained = load_trained(run, checkpoint, target)  # before reading stdin: bad runs fail at once
    if trained.config.name == "encoder":
        raise LlmkitError(f"{trained.path} is an encoder (masked LM): it fills in masks, it does not "
                          "generate text", hint=f"measure it with: llmkit eval {run}")
    if trained.config.n_classes is not None:
        raise LlmkitError(f"{trained.path} is a classifier: it labels texts, it does not generate them",
                          hint=f"echo 'some text' | llmkit classify {run}")
    if prompts is not None:
        if prompt is not None:
            raise LlmkitError("give --prompt or --prompts, not both")
        try:
            texts = [line for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise LlmkitError(f"cannot read the prompts file {prompts}: {e}") from None
        if not texts:
            raise LlmkitError(f"{prompts} holds no prompts (one per line)")
    else:
        if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
            prompt = sys.stdin.read()
        texts = [prompt or ""]
    if trained.config.name == "seq2seq":
        _translate_lines(trained, "\n".join(texts), beam, target)
        return
    options = _GenerateOptions(sampling, max_new_tokens, tuple(stop or ()), num_samples, beam, length_penalty,
                               context, cache, seed, echo, json_output)
    _generate_text(trained, texts, options, target)


@dataclass(frozen=True)
class _GenerateOptions:
    sampling: object
    max_new_tokens: int
    stops: tuple[str, ...]
    num_samples: int
    beam: int
    length_penalty: float
    context: str
    cache: bool
    seed: int | None
    echo: bool
    json: bool


def _generate_text(trained, texts: list[str], o: _GenerateOptions, device) -> None:
    """Sample (or beam-search) continuations of the prompts. One prompt and one sample stream as
    they are made; several are generated as one batch and printed when done, separated by a line
    `---` (or one JSON object each)."""
    import torch

    from llmkit.console import say
    from llmkit.generate import ContextFull, StreamDecoder, batch_prompts, beam_search, generate_batch

    tokenizer, model = trained.tokenizer, trained.model
    eot = getattr(tokenizer, "eot_id", None)
    rows = [t for t in texts for _ in range(o.num_samples)]
    stream = len(rows) == 1 and not o.json
    if o.beam > 1:
        if len(rows) > 1:
            raise LlmkitError("beam search takes one prompt and gives one result (no --prompts or --num-samples)")
        block = trained.config.block_size

        def step(prefixes):  # (N, t) -> (N, V) next-token log-probs
            logits = model(prefixes[:, -block:].to(device))[:, -1, : tokenizer.vocab_size]
            return torch.log_softmax(logits.float(), dim=-1)
        ids, _ = batch_prompts(tokenizer, rows, device)
        columns = (torch.tensor([t]) for t in beam_search(step, ids[0].tolist(), o.beam, o.max_new_tokens,
                                                          eot, o.length_penalty))
    else:
        seed = o.seed
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
            say(f"seed {seed} (pass --seed {seed} to repeat this sample)")
        generator = torch.Generator(device).manual_seed(seed)
        ids, pad = batch_prompts(tokenizer, rows, device)
        columns = generate_batch(model, ids, o.max_new_tokens, o.sampling, generator, tokenizer.vocab_size,
                                 pad, o.cache, o.context)
    decoders = [StreamDecoder(tokenizer, o.stops) for _ in rows]
    texts_out = ["" for _ in rows]
    reasons = ["length" for _ in rows]
    counts = [0 for _ in rows]
    out = sys.stdout
    if stream and o.echo:
        out.write(rows[0])
    try:
        for column in columns:
            for i, token in enumerate(column.tolist()):
                if reasons[i] != "length":
                    continue
                if eot is not None and token == eot:
                    reasons[i] = "eos"
                    continue
                counts[i] += 1
                piece = decoders[i].push(token)
                texts_out[i] += piece
                if decoders[i].stopped:
                    reasons[i] = "stop"
                if stream and piece:
                    out.write(piece)
                    out.flush()
            if all(r != "length" for r in reasons):
                break
    except ContextFull as e:
        say(f"stopped: {e} (--context slide keeps going)")
        reasons = [r if r != "length" else "context" for r in reasons]
    for i, decoder in enumerate(decoders):
        rest = decoder.flush()
        texts_out[i] += rest
        if stream:
            out.write(rest)
    if stream:
        if not (rows[0] + texts_out[0]).endswith("\n"):
            out.write("\n")
        return
    for i, (prompt, text) in enumerate(zip(rows, texts_out)):
        if o.json:
            print(json.dumps({"prompt": prompt, "sample": i % o.num_samples, "text": text,
                              "tokens": counts[i], "stop_reason": reasons[i]}, ensure_ascii=False))
        else:
            if i:
                print("---")
            print((prompt if o.echo else "") + text)


def _evaluate_text(trained, path: Path, batch_size: int, stride: int | None, device) -> dict:
    from llmkit.prepare import read_text
    from llmkit.shards import TokenStream
    from llmkit.tasks.language_modeling import evaluate_split

    ids = trained.tokenizer.encode(read_text(path))
    if len(ids) < 2:
        raise LlmkitError(f"{path} is too short to measure: it needs at least two tokens")
    return evaluate_split(trained.model, TokenStream([ids]), trained.tokenizer, trained.config.block_size,
                          batch_size, device, stride)


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


FINETUNE_TASKS = ("spam", "instruct")


@app.command()
def finetune(
    task: Annotated[str, typer.Argument(help="What to finetune for: spam or instruct.", show_default=False)],
    overrides: Overrides = None,
    base: Annotated[Optional[str], typer.Option(
        help="Start from this trained run or checkpoint, a Hugging Face GPT-2 directory, or hf:REPO_ID "
        "(fetched from the hub): its model and tokenizer. Default: the recipe's model, from scratch.",
        show_default=False)] = None,
    mode: Annotated[str, typer.Option(
        help="What trains: all weights; the last block, final norm and head (last_block); or LoRA "
        "adapters (lora; set train.lora.rank=... train.lora.modules=...).")] = "all",
    device: Device = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start again, replacing the run's checkpoints.")] = False,
    judge_url: JudgeUrl = None,
    judge_model: JudgeModel = None,
) -> None:
    """Finetune for a task, then measure it on the test split; prints the run directory.

    spam: a classifier on the SMS Spam Collection, balanced and split as LLMs-from-scratch does
    (recipes/spam.yaml). instruct: instruction following on 1,100 entries in the Alpaca format
    (recipes/instruct.yaml); the test answers go to RUN/test_responses.json with their scores.
    Examples: llmkit finetune spam | llmkit finetune spam --base runs/wikitext2_bpe --mode lora
    | llmkit finetune instruct --base runs/wikitext2_bpe train.max_steps=200
    """
    import dataclasses

    from llmkit.config import find_recipe, load_recipe
    from llmkit.run import load_trained
    from llmkit.trainer import train

    if task not in FINETUNE_TASKS:
        raise LlmkitError(f"llmkit finetune {task} is not available: choose {' or '.join(FINETUNE_TASKS)}",
                          hint="llmkit finetune spam")
    if mode not in ("all", "last_block", "lora"):
        raise LlmkitError(f"--mode must be all, last_block or lora, got '{mode}'")
    if mode != "all" and base is None:
        raise LlmkitError(f"--mode {mode} needs --base RUN (a model trained from scratch has no pretrained weights to keep)")
    judge = _judge(judge_url, judge_model, task)
    first, extra = [], [f"train.device={device}"] if device else []
    if base is not None:
        trained = load_trained(base)  # its model section (with a 2-class head on top for spam)
        label = trained.path.parent.name if trained.path.is_file() else trained.path.name  # runs/X/best.pt: X
        mode_part = "" if mode == "all" else f"_{mode}"
        first.append(f"name={task}_{label}{mode_part}")  # the user's name= or out_dir= still win
        extra.append(f"train.init_from={trained.path}")
    recipe = load_recipe(find_recipe(task), [*first, *(overrides or []), *extra, f"train.finetune={mode}"])
    if base is not None:
        model = dataclasses.replace(trained.config, n_classes=2 if task == "spam" else None,
                                    dropout=recipe.model.dropout)
        recipe = dataclasses.replace(recipe, model=model)
    run = train(recipe, overwrite=overwrite)
    if task == "spam":
        _report_classifier(run, "test")
    else:
        _report_instruct(run, judge)
    print(run)


def _report_classifier(run, split: str) -> None:
    """Accuracy, precision, recall, F1 and the confusion matrix of a classifier run on a split (stderr)."""
    from llmkit.console import say
    from llmkit.device import resolve_device
    from llmkit.run import load_trained, task_for

    trained = load_trained(run, "best", resolve_device("auto"))
    result = task_for(trained).evaluate(trained.model, split, 64, next(trained.model.parameters()).device)
    (tn, fp), (fn, tp) = result["confusion"]
    say(f"{split}: accuracy {result['accuracy']:.2%} ({result['examples']} messages), precision "
        f"{result['precision']:.2%}, recall {result['recall']:.2%}, F1 {result['f1']:.2%}")
    if "unseen" in result:
        say(f"{split}: accuracy {result['unseen_accuracy']:.2%} on the {result['unseen']} messages that do "
            "not also occur, word for word, in the training split")
    say(f"confusion (rows: truth ham, spam; columns: predicted ham, spam): [[{tn}, {fp}], [{fn}, {tp}]]")


def _judge(url: str | None, model: str | None, task: str):
    if url is None and model is None:
        return None
    if url is None or model is None:
        raise LlmkitError("a judge needs both --judge-url and --judge-model")
    if task != "instruct":
        raise LlmkitError(f"--judge-url scores instruction answers; {task} has none")
    from llmkit.scoring import Judge

    return Judge(url, model, os.environ.get("OPENAI_API_KEY"))


def _report_instruct(run, judge) -> None:
    """Test loss and the scores of the model's test answers (stderr); the answers go to the run."""
    from llmkit.console import say
    from llmkit.device import resolve_device
    from llmkit.run import load_trained, task_for

    trained = load_trained(run, "best", resolve_device("auto"))
    device = next(trained.model.parameters()).device
    result = task_for(trained).evaluate(trained.model, "test", 16, device, Path(run) / "test_responses.json", judge)
    judged = f", judge {result['judge_score']:.1f}/100 ({result['judge']})" if judge else ""
    say(f"test: loss {result['loss']:.4f} on the responses; {result['examples']} answers: exact match "
        f"{result['exact_match']:.2%}, ROUGE-L F1 {result['rouge_l']:.2%}{judged}; written to {result['responses']}")


@app.command()
def classify(
    run: Annotated[str, typer.Argument(help="A classifier run directory or checkpoint.", show_default=False)],
    text: Annotated[Optional[str], typer.Option(help="Classify this text; otherwise each line of stdin.",
                                                show_default=False)] = None,
    checkpoint: Annotated[str, typer.Option(help="best or latest, for a run directory.")] = "best",
    as_json: JsonFlag = False,
) -> None:
    """Label texts with a classifier run: one line in, `label<TAB>probability` out.

    Example: printf "WIN a free prize now!\nsee you at 6\n" | llmkit classify runs/spam
    """
    from llmkit.run import load_trained
    from llmkit.tasks.classification import LABELS, probabilities

    trained = load_trained(run, checkpoint)
    if trained.config.n_classes is None:
        raise LlmkitError(f"{trained.path} is not a classifier", hint="make one with: llmkit finetune spam")
    texts = [text] if text is not None else sys.stdin.read().splitlines()
    if not texts:
        raise LlmkitError("no text to classify", hint="echo 'some text' | llmkit classify RUN")
    probs = probabilities(trained.model, trained.tokenizer, texts, next(trained.model.parameters()).device)
    for line, p in zip(texts, probs.tolist()):
        label = max(range(len(p)), key=p.__getitem__)
        if as_json:
            print(json.dumps({"text": line, "label": LABELS[label], "probability": p[label]}, ensure_ascii=False))
        else:
            print(f"{LABELS[label]}\t{p[label]:.4f}")


plot_app = typer.Typer(
    help="Draw PNG pictures of runs and models: loss curves, the learning-rate schedule, attention "
    "heatmaps, position encodings, attention masks, token embeddings.",
    no_args_is_help=True,
)
app.add_typer(plot_app, name="plot")

PlotOut = Annotated[Optional[Path], typer.Option(
    "--out", "-o", help="The PNG file to write (default: in the run directory, or ./KIND.png).",
    show_default=False)]
PlotCheckpoint = Annotated[str, typer.Option("--checkpoint", help="best or latest, for a run directory.")]


def _run_dir(run: str) -> Path:
    """A run directory given on the command line, or a clear error."""
    path = Path(run)
    if not path.is_dir():
        raise LlmkitError(f"no run directory at {path}",
                          hint="train one first: llmkit train RECIPE (it prints the run directory)")
    return path


@plot_app.command("loss")
def _plot_loss(
    runs: Annotated[list[str], typer.Argument(help="One or more run directories.", show_default=False)],
    out: PlotOut = None,
) -> None:
    """Val and train loss of one or several runs overlaid, one colour per run; prints the PNG path.

    Default --out: RUN/loss.png for one run, ./loss.png for several.
    Example: llmkit plot loss runs/shakespeare_char runs/shakespeare_bigram --out ladder.png
    """
    from llmkit.metrics import MetricsLog
    from llmkit.plots import plot_loss_curves
    from llmkit.run import METRICS

    records = {}
    for run in runs:
        path = _run_dir(run)
        if not (path / METRICS).is_file():
            raise LlmkitError(f"{path} has no {METRICS}", hint="a run logs there as it trains")
        name = path.resolve().name
        records[name if name not in records else str(path)] = MetricsLog(path / METRICS).read()
    default = Path(runs[0]) / "loss.png" if len(runs) == 1 else Path("loss.png")
    print(plot_loss_curves(records, out or default, "loss" if len(runs) > 1 else next(iter(records))))


@plot_app.command("lr")
def _plot_lr(
    target: Annotated[str, typer.Argument(help="A run directory, or a recipe (file or name).", show_default=False)],
    overrides: Overrides = None,
    out: PlotOut = None,
) -> None:
    """The learning-rate schedule of a recipe or run (warmup, cosine decay), with the rates a run
    logged as dots; prints the PNG path.

    Default --out: RUN/lr.png, or ./lr.png for a recipe.
    Examples: llmkit plot lr shakespeare_char train.warmup_steps=500 | llmkit plot lr runs/shakespeare_char
    """
    from llmkit.config import find_recipe, load_recipe
    from llmkit.metrics import MetricsLog
    from llmkit.plots import plot_schedule
    from llmkit.run import METRICS, RECIPE

    path = Path(target)
    if path.is_dir():
        if not (path / RECIPE).is_file():
            raise LlmkitError(f"{path} has no {RECIPE}: it is not a run directory",
                              hint="give a run directory (runs/NAME) or a recipe")
        recipe = load_recipe(path / RECIPE, overrides or [])
        logged, default = MetricsLog(path / METRICS).read(), path / "lr.png"
    else:
        recipe = load_recipe(find_recipe(target), overrides or [])
        logged, default = [], Path("lr.png")
    print(plot_schedule(recipe.train, out or default, recipe.name, logged))


@plot_app.command("attention")
def _plot_attention(
    run: Annotated[str, typer.Argument(help="A run directory or a checkpoint file.", show_default=False)],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text whose attention to draw "
                                        "(short: every token labels a row and a column).", show_default=False)],
    layer: Annotated[Optional[int], typer.Option(help="Draw only this layer (0 is the first; default: all).",
                                                 show_default=False)] = None,
    checkpoint: PlotCheckpoint = "best",
    out: PlotOut = None,
) -> None:
    """Attention weights of a trained model on a prompt: rows are layers, columns heads, tokens on
    both axes; prints the PNG path.

    Default --out: RUN/attention.png (attention_layerN.png with --layer).
    Example: llmkit plot attention runs/shakespeare_char --prompt $'ROMEO:\\nBut soft' --layer 1
    """
    import torch

    from llmkit.plots_model import attention_weights, plot_attention, token_texts
    from llmkit.run import load_trained

    trained = load_trained(run, checkpoint)
    if trained.config.name == "seq2seq":
        raise LlmkitError("attention plots take one sequence; a seq2seq model reads two (source and target)",
                          hint="plot a decoder or encoder run")
    ids = [int(i) for i in trained.tokenizer.encode(prompt)]
    if not ids:
        raise LlmkitError("the prompt is empty", hint="--prompt 'some text'")
    if len(ids) > trained.config.block_size:
        raise LlmkitError(f"the prompt is {len(ids)} tokens, longer than the model's context "
                          f"({trained.config.block_size})", hint="a shorter prompt also gives readable labels")
    weights = attention_weights(trained.model, torch.tensor(ids))
    names = [f"layer {i}" for i in range(len(weights))]
    if layer is not None:
        if not 0 <= layer < len(weights):
            raise LlmkitError(f"--layer {layer}: the model has layers 0 to {len(weights) - 1}")
        weights, names = [weights[layer]], [names[layer]]
    default = trained.path.parent / ("attention.png" if layer is None else f"attention_layer{layer}.png")
    print(plot_attention(weights, token_texts(trained.tokenizer, ids), out or default,
                         f"{trained.path.parent.name} ({trained.config.name})", names))


@plot_app.command("positions")
def _plot_positions(
    run: Annotated[Optional[str], typer.Argument(
        help="A run directory or checkpoint: its learned table, or its sizes (default: none).",
        show_default=False)] = None,
    kind: Annotated[Optional[str], typer.Option(
        help="learned (needs a RUN), sinusoidal or rope (default: the run's, or sinusoidal).",
        show_default=False)] = None,
    block_size: Annotated[Optional[int], typer.Option(
        min=1, help="Positions (default: the run's, or 64).", show_default=False)] = None,
    n_embd: Annotated[Optional[int], typer.Option(
        min=2, help="Channels (default: the run's, or 128).", show_default=False)] = None,
    n_head: Annotated[Optional[int], typer.Option(
        min=1, help="Heads, for rope: it rotates each head's n_embd / n_head channels (default: the run's, or 4).",
        show_default=False)] = None,
    checkpoint: PlotCheckpoint = "best",
    out: PlotOut = None,
) -> None:
    """A position encoding and how similar it makes each pair of positions; prints the PNG path.

    Default --out: RUN/positions_KIND.png, or ./positions_KIND.png.
    Examples: llmkit plot positions --kind rope | llmkit plot positions runs/shakespeare_char
    """
    from llmkit.plots_model import learned_positions, plot_positions, position_pictures

    learned, base, where = None, 10000.0, Path(".")
    sizes = {"block_size": 64, "n_embd": 128, "n_head": 4}
    if run is not None:
        from llmkit.run import load_trained

        trained = load_trained(run, checkpoint)
        config, where = trained.config, trained.path.parent
        kind, base = kind or config.positions, config.rope_base
        sizes = {name: getattr(config, name) for name in sizes}
        if kind == "learned":
            if config.positions != "learned":
                raise LlmkitError(f"{trained.path} has {config.positions} positions, not a learned table",
                                  hint=f"llmkit plot positions {run} --kind {config.positions}")
            if any(v is not None for v in (block_size, n_embd, n_head)):
                raise LlmkitError("a learned table has the run's sizes: drop --block-size, --n-embd and --n-head")
            learned = learned_positions(trained.model)  # (T, C)
    kind = kind or "sinusoidal"
    if kind == "none" and run is not None:
        raise LlmkitError(f"{run} uses no position encoding (model.positions: none)",
                          hint="plot a fixed one: llmkit plot positions --kind sinusoidal")
    if kind not in ("learned", "sinusoidal", "rope"):
        raise LlmkitError(f"--kind must be learned, sinusoidal or rope, got '{kind}'")
    if kind == "learned" and learned is None:
        raise LlmkitError("learned positions are trained weights: give a RUN trained with model.positions=learned",
                          hint="llmkit plot positions runs/shakespeare_char --kind learned")
    given = {"block_size": block_size, "n_embd": n_embd, "n_head": n_head}
    sizes.update({name: value for name, value in given.items() if value is not None})
    if sizes["n_embd"] % sizes["n_head"] or (kind == "rope" and (sizes["n_embd"] // sizes["n_head"]) % 2):
        raise LlmkitError(f"--n-embd {sizes['n_embd']} must split into {sizes['n_head']} heads"
                          + (" of an even size (rope turns channel pairs)" if kind == "rope" else ""))
    table, similarity = position_pictures(kind, **sizes, rope_base=base, learned=learned)
    title = f"{kind} positions, {sizes['block_size']} positions x {sizes['n_embd']} channels" + (
        f" ({sizes['n_head']} heads of {sizes['n_embd'] // sizes['n_head']})" if kind == "rope" else "")
    print(plot_positions(table, similarity, kind, out or where / f"positions_{kind}.png", title))


@plot_app.command("masks")
def _plot_masks(out: PlotOut = None) -> None:
    """The attention masks llmkit builds: causal, bidirectional with padding, causal with left
    padding, and a cached generation step; prints the PNG path (default ./masks.png).

    Example: llmkit plot masks --out docs/images/masks.png
    """
    from llmkit.plots_model import plot_masks

    print(plot_masks(out or Path("masks.png")))


@plot_app.command("embeddings")
def _plot_embeddings(
    run: Annotated[str, typer.Argument(help="A run directory or a checkpoint file.", show_default=False)],
    checkpoint: PlotCheckpoint = "best",
    out: PlotOut = None,
) -> None:
    """The token embeddings of a trained model on their first two principal components, each
    labelled with its text; prints the PNG path (default RUN/embeddings.png).

    Example: llmkit plot embeddings runs/shakespeare_char
    """
    from llmkit.plots_model import plot_embeddings, token_embedding, token_texts
    from llmkit.run import load_trained

    trained = load_trained(run, checkpoint)
    weight = token_embedding(trained.model)[: trained.tokenizer.vocab_size]  # (V, C), without padding rows
    texts = token_texts(trained.tokenizer, range(weight.shape[0]))
    print(plot_embeddings(weight, texts, out or trained.path.parent / "embeddings.png",
                          f"{trained.path.parent.name}: {weight.shape[0]} token embeddings of {weight.shape[1]} "
                          "channels,\non their first two principal components"))


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="A run directory or a checkpoint file.", show_default=False)],
    out: Annotated[Path, typer.Option(help="The directory to write.", show_default=False)],
    format: Annotated[str, typer.Option(help="hf: a Hugging Face GPT-2 directory (config.json, "
                                        "model.safetensors, vocab.json, merges.txt).")] = "hf",
    checkpoint: Annotated[str, typer.Option(help="best or latest, for a run directory.")] = "best",
) -> None:
    """Write a GPT-2-shaped run in another library's format; prints the files written.

    LoRA adapters are merged into the weights first. The result loads with transformers:
    GPT2LMHeadModel.from_pretrained(DIR) and AutoTokenizer.from_pretrained(DIR).
    Example: llmkit export runs/gpt2_124m --out exports/gpt2_124m
    """
    from llmkit.hf_gpt2 import save_hf_directory
    from llmkit.run import load_trained

    if format != "hf":
        raise LlmkitError(f"--format must be hf, got '{format}'")
    trained = load_trained(run, checkpoint, merge=True)
    if trained.config.n_classes is not None:
        raise LlmkitError(f"{trained.path} is a classifier; only language models export to GPT2LMHeadModel")
    if out.exists() and not out.is_dir():
        raise LlmkitError(f"--out {out} is a file, not a directory")
    written = save_hf_directory(trained.model, trained.config, trained.tokenizer, out)
    for path in written:
        print(path)
    if out / "vocab.json" not in written:
        from llmkit.console import say

        say(f"note: the {trained.tokenizer.kind} tokenizer has no Hugging Face GPT-2 form; only the model was written")


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

