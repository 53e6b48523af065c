"""Measuring a loaded model: over every example of a split of the task it was trained for, or a
language model over any text file. `llmkit eval` is this function and a print.

    from llmkit import load_model
    from llmkit.tasks.evaluate import evaluate
    print(evaluate(load_model("runs/shakespeare_char")).text())

Which options apply is asked of the task (`scores_text`, `eval_options`), so a wrong one is
refused with a message instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmkit.errors import LlmkitError
from llmkit.loading import LoadedModel
from llmkit.tasks import task_for
from llmkit.tasks.report import Report
from llmkit.tasks.scoring import Judge


def evaluate(loaded: LoadedModel, split: str = "val", text: Path | None = None, data: Path | None = None,
             batch_size: int = 32, stride: int | None = None, beam: int = 1, judge: Judge | None = None,
             responses: Path | None = None, context: int | None = None) -> Report:
    """The model's measurements on `split` of its task (with the shards in `data` instead of its
    own), or on the UTF-8 file `text`. `stride`: language models, windows that far apart; `beam`:
    seq2seq decoding; `judge` and `responses` (default RUN/SPLIT_responses.json): where an
    instruct run's answers are scored and written."""
    kind, config = loaded.task_type, loaded.config
    if (text is not None or stride is not None or context is not None) and not kind.scores_text:
        raise LlmkitError(f"--text, --stride and --context are for language models, not {config.name}")
    if context is not None and not 1 < context <= config.block_size:
        raise LlmkitError(f"--context {context}: the model reads 2 to {config.block_size} tokens at a time")
    window = context or config.block_size
    if stride is not None and stride > window:
        raise LlmkitError(f"--stride {stride} is longer than the context ({window})")
    if context is not None and text is None:
        raise LlmkitError("--context is for --text: a split is measured in the windows the model trained on")
    if beam > 1 and "beam" not in kind.eval_options:
        raise LlmkitError("--beam is for seq2seq models; a language model's loss does not decode")
    if text is not None:
        if judge is not None:
            raise LlmkitError("--judge-url scores an instruct run's answers on a split, not a text file")
        result, source, split = evaluate_text(loaded, text, batch_size, stride, window), str(text), "text"
    else:
        if judge is not None and "judge" not in kind.eval_options:
            raise LlmkitError(f"--judge-url scores instruction answers; {config.name} has none")
        task = task_for(loaded, data)
        if stride is not None and "stride" not in kind.eval_options:
            raise LlmkitError("--stride is for language models on token shards; an instruct run is scored per answer")
        given = {"stride": stride, "beam": beam, "judge": judge,
                 "responses": responses or loaded.run_dir / f"{split}_responses.json"}
        options = {name: given[name] for name in kind.eval_options}
        result = task.evaluate(loaded.model, split, batch_size, loaded.device, **options)
        source = task.data_info.get("source") or task.data_info["tokens"] or "generated"
    return Report({"checkpoint": str(loaded.path), "step": loaded.checkpoint.state.step, "data": source,
                   "split": split, **result})


@torch.no_grad()
def evaluate_text(loaded: LoadedModel, path: Path, batch_size: int, stride: int | None = None,
                  context: int | None = None) -> dict:
    """A language model's loss, perplexity, bits per byte and accuracy over a whole text file, in
    windows of `context` tokens (default: the model's whole context) starting `stride` apart."""
    from llmkit.data.prepare import read_text
    from llmkit.data.shards import TokenStream
    from llmkit.tasks.language_modeling import evaluate_split

    ids = loaded.tokenizer.encode(read_text(path))
    if len(ids) < 2:
        raise LlmkitError(f"{path} is too short to measure: it needs at least two tokens")
    return evaluate_split(loaded.model, TokenStream([ids]), loaded.tokenizer, context or loaded.config.block_size,
                          batch_size, loaded.device, stride)
