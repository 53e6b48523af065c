"""Does the batcher give memory back after bursts? SmolLM2 decoded by llmkit's Batcher in this
process (no HTTP server), bursts of 16, 16, 4 and 16 concurrent requests (60 sampled tokens
each); after each: the process's RSS, and the bytes of every tensor Python can still reach (what
is kept on purpose, the weights, against what the allocator keeps).

    LLMKIT_DATA_MIRROR=../shared/data .venv/bin/python scripts/batcher_memory.py
"""

from __future__ import annotations

import gc
import os
import threading
import time
import warnings
from pathlib import Path

import torch

from llmkit.heap import return_freed_memory
from llmkit.inference.sampling import Sampling
from llmkit.loading import load_model
from llmkit.serving.batcher import Batcher, Request

GGUF = Path(os.environ.get("LLMKIT_DATA_MIRROR", "../shared/data")) / "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def rss_mb() -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) // 1024


def reachable_tensor_mb() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(o.numel() * o.element_size() for o in gc.get_objects() if torch.is_tensor(o)) >> 20


def main() -> None:
    lm = load_model(GGUF)
    tokenizer = lm.tokenizer
    batcher = Batcher(lm.model, tokenizer, max_batch=16)

    def ask(i: int) -> None:
        ids = tuple(tokenizer.encode(f"Tell me a story, number {i}.").tolist())
        list(batcher.complete(Request(ids, 60, Sampling(temperature=1.0), (), 1, i)))

    print(f"idle: RSS {rss_mb()} MB, reachable tensors {reachable_tensor_mb()} MB")
    try:
        for clients in (16, 16, 4, 16):
            threads = [threading.Thread(target=ask, args=(i,)) for i in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(0.5)
            gc.collect()
            return_freed_memory()
            print(f"after {clients} clients: RSS {rss_mb()} MB, reachable tensors {reachable_tensor_mb()} MB")
    finally:
        batcher.stop()


if __name__ == "__main__":
    main()
