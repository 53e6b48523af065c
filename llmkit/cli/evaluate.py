"""`llmkit eval`: measure a model on a split of its task, or on a text file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmkit.cli.options import Checkpoint, Dtype, JsonFlag, JudgeModel, JudgeUrl, Model, RunDevice, make_judge


def eval_(
    run: Model,
    split: Annotated[str, typer.Option(help="Which split to measure.")] = "val",
    checkpoint: Checkpoint = "best",
    data: Annotated[Optional[Path], typer.Option(
        help="Token shards to measure on (default: the ones the run was trained on).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per forward pass.")] = 32,
    beam: Annotated[int, typer.Option(min=1, help="Beam width for seq2seq decoding (1: greedy).")] = 1,
    text: Annotated[Optional[Path], typer.Option(
        help="Measure a language model on this UTF-8 text file instead of a split.", show_default=False)] = None,
    stride: Annotated[Optional[int], typer.Option(
        min=1, help="Start context windows this many tokens apart (default: the context length); "
        "smaller gives each token more context.", show_default=False)] = None,
    context: Annotated[Optional[int], typer.Option(
        min=1, help="Tokens per window (default: the model's context length) for --text and --stride.",
        show_default=False)] = None,
    device: RunDevice = "auto",
    dtype: Dtype = "fp32",
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
    | llmkit eval smollm2 --text test.txt --context 1024 --stride 512
    """
    from llmkit.device import resolve_device
    from llmkit.loading import load_model
    from llmkit.tasks.evaluate import evaluate

    judge = make_judge(judge_url, judge_model)
    loaded = load_model(run, checkpoint, resolve_device(device), dtype=dtype)
    report = evaluate(loaded, split, text, data, batch_size, stride, beam, judge, context=context)
    print(report.json() if as_json else report.text())
