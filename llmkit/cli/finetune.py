"""`llmkit finetune` (a task from scratch or from a base model) and `llmkit classify` (a
finetuned classifier on texts)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from llmkit.cli.options import Checkpoint, Device, JsonFlag, JudgeModel, JudgeUrl, Overrides, Overwrite, make_judge
from llmkit.errors import LlmkitError


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
    prompt_format: Annotated[Optional[str], typer.Option(
        help="instruct: how entries become prompts: chat (the model's own chat template), alpaca (the "
        "Alpaca text format) or auto (chat if the model has a template). Same as data.prompt_format=...",
        show_default=False)] = None,
    device: Device = None,
    overwrite: Overwrite = False,
    judge_url: JudgeUrl = None,
    judge_model: JudgeModel = None,
    as_json: JsonFlag = False,
) -> None:
    """Finetune for a task, then measure it on the test split; prints the run directory (with
    --json: the test report as one JSON line, the run directory in it as "run").

    spam: a classifier on the SMS Spam Collection, balanced and split as LLMs-from-scratch does
    (recipes/spam.yaml). instruct: instruction following on 1,100 entries, in the base model's chat
    template or the Alpaca format (recipes/instruct.yaml); the test answers go to
    RUN/test_responses.json with their scores.
    Examples: llmkit finetune spam | llmkit finetune spam --base runs/wikitext2_bpe --mode lora
    | llmkit finetune instruct --base runs/wikitext2_bpe train.max_steps=200
    """
    from llmkit.console import say
    from llmkit.training.finetune import finetune as run_finetune

    if prompt_format is not None and task != "instruct":
        raise LlmkitError(f"--prompt-format shapes instruction prompts; {task} has none")
    judge = make_judge(judge_url, judge_model)
    overrides = [*(overrides or []), *([f"data.prompt_format={prompt_format}"] if prompt_format else [])]
    run, report = run_finetune(task, base, mode, overrides, device, overwrite, judge)
    for line in report.summary():
        say(line)
    print(json.dumps({"run": str(run), **report}) if as_json else run)


def classify(
    run: Annotated[str, typer.Argument(help="A classifier run directory or checkpoint.", show_default=False)],
    text: Annotated[Optional[str], typer.Option(help="Classify this text; otherwise each line of stdin.",
                                                show_default=False)] = None,
    checkpoint: Checkpoint = "best",
    as_json: JsonFlag = False,
) -> None:
    """Label texts with a classifier run: one line in, `label<TAB>probability` out.

    Example: printf "WIN a free prize now!\nsee you at 6\n" | llmkit classify runs/spam
    """
    from llmkit.loading import load_model
    from llmkit.tasks.classification import probabilities

    loaded = load_model(run, checkpoint)
    loaded.require("labels")
    labels = loaded.labels
    texts = [text] if text is not None else sys.stdin.read().splitlines()
    if not texts:
        raise LlmkitError("no text to classify", hint="echo 'some text' | llmkit classify RUN")
    probs = probabilities(loaded.model, loaded.tokenizer, texts, loaded.device)
    for line, p in zip(texts, probs.tolist()):
        label = max(range(len(p)), key=p.__getitem__)
        if as_json:
            print(json.dumps({"text": line, "label": labels[label], "probability": p[label]}, ensure_ascii=False))
        else:
            print(f"{labels[label]}\t{p[label]:.4f}")
