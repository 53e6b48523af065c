"""Options several commands share, declared once so their names and help read the same everywhere."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from llmkit.tasks.scoring import Judge

Overrides = Annotated[Optional[list[str]], typer.Argument(
    help="Recipe overrides as dotted keys, e.g. train.lr=3e-4 model.n_layer=2", show_default=False)]
Device = Annotated[Optional[str], typer.Option(
    "--device", help="auto | cpu | cuda | cuda:N | mps (default: the recipe's train.device, or auto)",
    show_default=False)]
RunDevice = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps")]
DataDir = Annotated[Path, typer.Option("--data-dir", help="Root of raw/ and tokens/ directories.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
Model = Annotated[str, typer.Argument(help="A run directory or a checkpoint file.", show_default=False)]
Checkpoint = Annotated[str, typer.Option(help="best or latest, for a run directory.")]
JudgeUrl = Annotated[Optional[str], typer.Option(
    help="Also score answers with a judge model at this OpenAI-compatible endpoint (e.g. "
    "http://localhost:11434/v1); the key, if any, comes from $OPENAI_API_KEY.", show_default=False)]
JudgeModel = Annotated[Optional[str], typer.Option(help="The judge's model name (with --judge-url).",
                                                   show_default=False)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Start again, replacing the run's checkpoints.")]
Dtype = Annotated[str, typer.Option(help="fp32, bf16 (half the memory and the bytes read per token), fp16 "
                                    "(GPUs), int8 (CPU: matrices in int8, a quarter of fp32's bytes) or int4 (CPU: "
                                    "the blocks' matrices in 4-bit groups, a Q4_1 file's own weights): the "
                                    "weights' dtype while generating.")]
Compile = Annotated[bool, typer.Option("--compile", help="Decode through a compiled step (torch.compile): "
                                       "faster per token after a one-off compile of tens of seconds; for long "
                                       "answers and servers.")]

# Sampling, shared by generate and chat. The defaults are llmkit.inference.sampling.TEMPERATURE
# and TOP_K (a test keeps them equal).
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", "-n", min=0)]
Temperature = Annotated[float, typer.Option(min=0.0, help="0 picks the most likely token.")]
TopK = Annotated[Optional[int], typer.Option(min=1, help="Sample among the k most likely tokens.")]
TopP = Annotated[Optional[float], typer.Option(
    help="Sample among the most likely tokens whose probabilities sum to p.", show_default=False)]
MinP = Annotated[Optional[float], typer.Option(
    help="Drop tokens less than min_p times as likely as the most likely.", show_default=False)]
RepetitionPenalty = Annotated[float, typer.Option(help="Above 1 makes repeats less likely.")]
Stop = Annotated[Optional[list[str]], typer.Option(help="End the text before this string (repeatable).",
                                                   show_default=False)]
Seed = Annotated[Optional[int], typer.Option(help="Make the sample repeatable.", show_default=False)]
System = Annotated[Optional[str], typer.Option(help="A system message before the conversation (chat models).",
                                               show_default=False)]


def make_judge(url: str | None, model: str | None) -> Judge | None:
    """The judge --judge-url and --judge-model describe (both or neither)."""
    if url is None and model is None:
        return None
    if url is None or model is None:
        raise LlmkitError("a judge needs both --judge-url and --judge-model")
    from llmkit.tasks.scoring import Judge

    return Judge(url, model, os.environ.get("OPENAI_API_KEY"))
