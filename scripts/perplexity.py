"""Sliding-window perplexity of a real model on a text file: `llmkit eval --text --context --stride`
against transformers on the same GGUF file, computed the way the transformers docs describe it
("Perplexity of fixed-length models": windows of `max_length` tokens starting `stride` apart,
each scoring the tokens it is the first to reach, the earlier ones masked with -100).

Two transformers figures are printed:
- docs: the docs' loop exactly (inputs ids[b : b + L]; labels masked before the window's new
  tokens; the model's loss times the number of labels it scored). Its windows predict L - 1
  tokens from L inputs, so a token at a window's end is scored by the next window, with less
  context than llmkit gives it: the two differ by a hair, and are not expected to agree exactly.
- same windows: transformers' logits over llmkit's windows (inputs ids[b : b + L] predicting
  ids[b + 1 : b + L + 1]): the same computation, so it must agree with llmkit to rounding.

    LLMKIT_DATA_MIRROR=../shared/data .venv/bin/python scripts/perplexity.py smollm2 \\
        --text ../shared/data/wikitext-2/test.txt --context 1024 --stride 512
    .venv/bin/python scripts/perplexity.py smollm2 --text FILE --limit-tokens 20000   # a quick look
    .venv/bin/python scripts/perplexity.py smollm2 --text FILE --dtypes fp32,bf16,int8 --llmkit-only
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time

import torch
import transformers

from llmkit.data.shards import TokenStream
from llmkit.loading import load_model
from llmkit.tasks.language_modeling import evaluate_split


@torch.no_grad()
def docs_perplexity(model, ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """The transformers docs' loop; returns (mean nll per scored token, tokens scored)."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    seq_len = ids.shape[1]
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        loss = model(input_ids, labels=target_ids).loss
        scored = int((target_ids[:, 1:] != -100).sum())  # the labels the (shifted) loss averaged over
        nll_sum += loss.item() * scored
        n_tokens += scored
        prev_end = end
        if end == seq_len:
            break
    return nll_sum / n_tokens, n_tokens


class Logits(torch.nn.Module):
    """A transformers model as llmkit's evaluation calls a model: ids (B, T) -> logits (B, T, V)."""

    def __init__(self, hf, config):
        super().__init__()
        self.hf, self.config = hf, config

    def forward(self, ids):
        return self.hf(ids).logits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a GGUF file or registered name (smollm2)")
    p.add_argument("--text", required=True)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--stride", type=int, default=512)
    p.add_argument("--limit-tokens", type=int, help="measure only the text's first N tokens")
    p.add_argument("--skip-same-windows", action="store_true",
                   help="leave out the third row (it costs as much as the first; check it on a prefix instead)")
    p.add_argument("--dtypes", default="fp32", help="llmkit's rows: these dtypes (fp32 first), e.g. fp32,bf16,int8")
    p.add_argument("--llmkit-only", action="store_true", help="leave out the transformers rows")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = {}
    for dtype in args.dtypes.split(","):
        ours = load_model(args.model, dtype=dtype)
        if not rows:
            path = ours.path
            text = open(args.text, encoding="utf-8").read()
            ids = torch.as_tensor(ours.tokenizer.encode(text).astype("int64"))[: args.limit_tokens]
            stream = TokenStream([ids.numpy()])
            nbytes = len(ours.tokenizer.decode(ids[1:].tolist()).encode("utf-8"))
        start = time.perf_counter()
        result = evaluate_split(ours.model, stream, ours.tokenizer, args.context, 4, torch.device("cpu"), args.stride)
        rows["llmkit" if dtype == "fp32" else f"llmkit {dtype}"] = {
            "loss": result["loss"], "tokens": result["tokens"], "seconds": time.perf_counter() - start}
        ours_tokenizer = ours.tokenizer
        del ours
    if args.llmkit_only:
        return _print(args, path, rows, True, nbytes)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    theirs = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])[: args.limit_tokens]
    same_ids = bool(torch.equal(theirs, ids))
    start = time.perf_counter()
    loss, tokens = docs_perplexity(hf, theirs[None], args.context, args.stride)
    rows["transformers (docs)"] = {"loss": loss, "tokens": tokens, "seconds": time.perf_counter() - start}
    if args.skip_same_windows:
        return _print(args, path, rows, same_ids, nbytes)
    start = time.perf_counter()
    same = evaluate_split(Logits(hf, hf.config), stream, ours_tokenizer, args.context, 4,
                          torch.device("cpu"), args.stride)
    rows["transformers (same windows)"] = {"loss": same["loss"], "tokens": same["tokens"],
                                           "seconds": time.perf_counter() - start}
    _print(args, path, rows, same_ids, nbytes)


def _print(args, path, rows: dict, same_ids: bool, nbytes: int) -> None:
    command = shlex.join(sys.orig_argv)
    report = {"model": path.name, "text": args.text, "context": args.context, "stride": args.stride,
              "same_token_ids": same_ids, "bytes": nbytes, "command": command,
              "rows": {name: {**r, "perplexity": math.exp(r["loss"]), "bits_per_byte": r["loss"] * r["tokens"] / math.log(2) / nbytes}
                       for name, r in rows.items()}}
    reference = next(iter(rows))  # the first row: llmkit in fp32, or in --dtypes' first
    for r in report["rows"].values():
        r["relative_to_llmkit"] = r["perplexity"] / report["rows"][reference]["perplexity"] - 1
    if args.json:
        print(json.dumps(report))
        return
    print(f"command: {command}\n{path.name} on {args.text}: context {args.context}, stride {args.stride}, "
          f"{rows[reference]['tokens']:,} tokens scored; token ids identical: {same_ids}")
    for name, r in report["rows"].items():
        print(f"  {name:<28} perplexity {r['perplexity']:.4f}  bits/byte {r['bits_per_byte']:.4f}  "
              f"({r['tokens']:,} tokens, {r['seconds']:.0f} s; {r['relative_to_llmkit']:+.2e} vs {reference})")


if __name__ == "__main__":
    main()
