"""The matrix-vector kernels a CPU decode step runs, on the weights of a whole model: each of
SmolLM2-135M's 150 block matrices (30 blocks of q, kv, proj, fc, proj) once, then its head, as one
decoding step reads them: the sum over all matrices is far larger than the caches, so this is the
speed of streaming the weights, not of one matrix sitting in cache. Random weights (speed does
not depend on their values), one row (batch 1) unless --rows; the best of --repeats passes.

Kernels: float32 and bfloat16 dense (`F.linear`), float32 from oneDNN's blocked copy (what the
server's batcher decodes 2 rows or more from: llmkit/inference/layout.py), PyTorch's weight-only int8
(`_weight_int8pack_mm`, bfloat16 input) and int4 (`_weight_int4pack_mm_for_cpu`, groups of 32),
and fbgemm's dynamic int8 linear (activations quantized as well), for reference.

Then the draw that ends each step, over SmolLM2's 49,152-token vocabulary: `torch.multinomial`
(a random number per token) against llmkit's `draw` (one uniform number per row, inverse
transform: llmkit/inference/sampling.py), each with its seeded generator.

With --shapes instead: for matrices of several shapes (a char model's, SmolLM2's, GPT-2's), fp32
from the layout llmkit decodes that many rows from without packing (columns for 1-2 rows, rows
for more) against oneDNN's packed copy, at 1, 2, 4 and 8 rows: per call, each shape streamed
from enough copies (up to 64 MB) that it is read from memory, not cache. This is what sets
PACKED_MIN, the smallest matrix the server's batcher packs.

    .venv/bin/python scripts/bench_kernels.py
    .venv/bin/python scripts/bench_kernels.py --rows 8
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_kernels.py --shapes
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

from llmkit.inference.layout import COLUMNS_UP_TO, PACKED_FOR
from llmkit.inference.sampling import draw

BLOCK = [(576, 576), (384, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in): q, kv, proj, fc, proj
HEAD = (49152, 576)


def best_ms(calls, repeats: int) -> float:
    for call in calls:
        call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for call in calls:
            call()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def kernels(rows: int) -> dict:
    """name -> (make(out, in) -> a call, bytes per weight)."""
    x = {width: torch.randn(rows, width) for width in (576, 1536)}
    xb = {width: t.bfloat16() for width, t in x.items()}

    def fp32(out, width):
        w = torch.randn(out, width)
        return lambda: F.linear(x[width], w)

    def fp32_packed(out, width):
        w = torch.ops.mkldnn._reorder_linear_weight(torch.randn(out, width), PACKED_FOR)
        return lambda: torch.ops.mkldnn._linear_pointwise(x[width], w, None, "none", [], "")

    def bf16(out, width):
        w = torch.randn(out, width).bfloat16()
        return lambda: F.linear(xb[width], w)

    def int8(out, width):
        w, s = torch.randint(-127, 128, (out, width), dtype=torch.int8), torch.rand(out).bfloat16()
        return lambda: torch.ops.aten._weight_int8pack_mm(xb[width], w, s)

    def int4(out, width):
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (out, width), dtype=torch.int32), 1)
        groups = torch.rand(width // 32, out, 2).bfloat16()
        return lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb[width], packed, 32, groups)

    def dynamic_int8(out, width):
        w = torch.randn(out, width)
        scale = (w.abs().amax(1) / 127).double()
        q = torch.quantize_per_channel(w, scale, torch.zeros(out, dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(q, None)
        return lambda: torch.ops.quantized.linear_dynamic(x[width], packed, True)

    return {"fp32": (fp32, 4.0), "fp32 oneDNN packed": (fp32_packed, 4.0), "bf16": (bf16, 2.0), "int8": (int8, 1.0), "int4": (int4, 0.625),
            "fbgemm dynamic int8": (dynamic_int8, 1.0)}


def shapes(repeats: int) -> None:
    """Plain against packed fp32, per matrix shape and rows (module docstring)."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; us per call, plain / packed (speedup)")
    for out, width in [(128, 128), (384, 128), (384, 384), (384, 576), (576, 576), (768, 768), (1536, 384),
                       (576, 1536), (2304, 768), (3072, 576)]:
        copies = max(4, min(64, (64 << 20) // (out * width * 4)))
        weights = [torch.randn(out, width) for _ in range(copies)]
        columns = [w.t().contiguous().t() for w in weights]
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, PACKED_FOR) for w in weights]
        cells = []
        for rows in (1, 2, 4, 8):
            x = torch.randn(rows, 1, width)
            plain_ms = best_ms([lambda w=w: F.linear(x, w) for w in (columns if rows <= COLUMNS_UP_TO else weights)], repeats)
            packed_ms = best_ms([lambda w=w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "") for w in packed],
                                repeats)
            cells.append(f"{rows} rows {plain_ms / copies * 1e3:6.1f} / {packed_ms / copies * 1e3:6.1f} ({plain_ms / packed_ms:4.2f}x)")
        print(f"{out:>5} x {width:<5} {out * width:>9,} weights  " + "  ".join(cells))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shapes", action="store_true", help="plain against packed fp32 per matrix shape, 1-8 rows")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.shapes:
        shapes(args.repeats)
        return
    warnings.filterwarnings("ignore", message=".*quantize_per_channel.*")  # fbgemm's row, kept for reference
    plain = torch.ones(512 << 18)  # 512 MB: a plain read, the bound
    plain.sum()
    read = min(best_ms([plain.sum], 1) for _ in range(5))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rows} row(s); "
          f"a plain read: {plain.numel() * 4 / read / 1e6:.1f} GB/s")
    print("kernel                 blocks ms   GB/s    head ms   GB/s")
    for name, (make, per_weight) in kernels(args.rows).items():
        blocks = [make(out, width) for _ in range(30) for out, width in BLOCK]
        weights = 30 * sum(out * width for out, width in BLOCK)
        ms, head_ms = best_ms(blocks, args.repeats), best_ms([make(*HEAD)], args.repeats)
        print(f"{name:21}  {ms:9.2f}  {weights * per_weight / ms / 1e6:5.1f}  {head_ms:9.2f}  "
              f"{HEAD[0] * HEAD[1] * per_weight / head_ms / 1e6:5.1f}")
    probs = torch.softmax(torch.randn(args.rows, HEAD[0]), dim=-1)
    generator = torch.Generator().manual_seed(0)
    ms = {"torch.multinomial": best_ms([lambda: torch.multinomial(probs, 1, generator=generator)] * 20, args.repeats),
          "llmkit draw": best_ms([lambda: draw(probs, torch.rand(args.rows, 1, dtype=torch.float64,
                                                                   generator=generator))] * 20, args.repeats)}
    print(f"a draw over {HEAD[0]:,} tokens, {args.rows} row(s): " + ", ".join(f"{k} {v / 20:.3f} ms" for k, v in ms.items())
          + f"; {ms['torch.multinomial'] / ms['llmkit draw']:.1f}x")


if __name__ == "__main__":
    main()
