"""What the integrity checks cost when a checkpoint or shards are opened: before (reading alone)
and after (reading plus the CRC-32 check llmkit now does), in the same run.

- checkpoint: a GPT-2 124M-shaped model's weights (fp32, ~500 MB) saved as an llmkit checkpoint;
  before = torch.load(weights_only=True), after = llmkit.checkpoint.load_checkpoint (torch.load,
  then the weights' CRC-32 against the one saved with them);
- shards: a split of `--tokens` uint16 ids in one shard; before = open_shard (header and size
  checks, a memory map), after = ShardSet.split (the same, plus the CRC-32 of the ids and the
  check that every id is inside the vocabulary).

    .venv/bin/python scripts/bench_load.py                 # the median of 5 of each
    .venv/bin/python scripts/bench_load.py --tokens 100000000 --json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llmkit.checkpoint import load_checkpoint, save_checkpoint
from llmkit.config import ModelConfig
from llmkit.data.shards import ShardWriter, load_shards, new_meta, open_shard, write_meta
from llmkit.data.tokenizer import CharTokenizer, save_tokenizer
from llmkit.models import build_model


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=50_000_000, help="ids in the shard")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = ModelConfig(name="gpt", n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, bias=True)
        state = build_model(config).state_dict()
        size = sum(t.numel() * t.element_size() for t in state.values())
        save_checkpoint(tmp / "model.pt", {"model": state})
        load_checkpoint(tmp / "model.pt")  # warm the page cache: both measure reading memory, not the disk
        before = median_seconds(lambda: torch.load(tmp / "model.pt", map_location="cpu", weights_only=True), args.repeats)
        after = median_seconds(lambda: load_checkpoint(tmp / "model.pt"), args.repeats)
        rows.append({"what": f"checkpoint, {size / 1e6:,.0f} MB of weights", "before_s": before, "after_s": after})

        tokenizer = CharTokenizer("".join(chr(c) for c in range(32, 32 + 250)))
        writer = ShardWriter(tmp / "shards" / "train_000.bin", np.dtype("<u2"))
        rng = np.random.default_rng(0)
        for start in range(0, args.tokens, 1 << 22):
            writer.write(rng.integers(0, 250, min(1 << 22, args.tokens - start), dtype=np.uint16))
        writer.close()
        save_tokenizer(tokenizer, tmp / "shards" / "tokenizer.json")
        write_meta(tmp / "shards", new_meta(tokenizer, {"train": {"files": ["train_000.bin"], "tokens": [writer.count],
                                                                  "crc32": [writer.crc32]}}, "bench", {}))
        shards = load_shards(tmp / "shards")
        shards.split("train")
        before = median_seconds(lambda: open_shard(tmp / "shards" / "train_000.bin", "bench"), args.repeats)
        after = median_seconds(lambda: shards.split("train"), args.repeats)
        rows.append({"what": f"shards, {args.tokens:,} uint16 ids ({2 * args.tokens / 1e6:,.0f} MB)",
                     "before_s": before, "after_s": after})
    command = shlex.join(sys.orig_argv)
    for row in rows:
        row["command"] = command
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['what']}: {row['before_s'] * 1000:,.1f} ms reading alone, {row['after_s'] * 1000:,.1f} ms "
                  f"with the checks (+{(row['after_s'] - row['before_s']) * 1000:,.1f} ms)")


if __name__ == "__main__":
    main()
