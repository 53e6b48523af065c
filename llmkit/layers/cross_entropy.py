"""Cross-entropy over a large vocabulary, computed in row chunks, its gradient written in place.

For N rows of logits z (N, V) and target ids t (N,), the loss of a row is

    loss_i = logsumexp(z_i) - z_i[t_i]          and its gradient    dloss_i/dz_i = softmax(z_i) - onehot(t_i)

PyTorch's `F.cross_entropy` materialises log_softmax(z) (another N x V tensor), then in backward a
zero-filled N x V gradient for the gather, then the log-softmax gradient: four passes over N x V
floats. With GPT-2's vocabulary that is 2048 x 50257 x 4 bytes = 411 MB per pass for a batch of
2,048 tokens, and on a CPU those passes take about a third of a small model's training step.

Here forward keeps only one float per row (the log-sum-exp), computed a chunk of rows at a time so
each chunk's temporaries stay in cache; backward turns the logits themselves, chunk by chunk, into
softmax - onehot (scaled by the incoming gradient). One read in forward, one read and write in
backward. bf16 logits (autocast) are upcast per chunk, so the loss is computed in fp32 as well.

The price: backward overwrites the logits tensor with its gradient. Nothing in llmkit reads logits
after `loss.backward()`; code that does must pass a copy.
"""

from __future__ import annotations

import torch

IGNORE = -100  # targets equal to this contribute no loss and no gradient (padding, prompts)
CHUNK_ELEMENTS = 1 << 20  # logits per chunk: 4 MB in fp32, small enough to stay in cache


def _chunks(n_rows: int, vocab: int):
    rows = max(1, CHUNK_ELEMENTS // vocab)
    return ((start, min(start + rows, n_rows)) for start in range(0, n_rows, rows))


class _CrossEntropySum(torch.autograd.Function):
    """Summed cross-entropy of (N, V) logits against (N,) targets, ignoring IGNORE."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        keep = targets != IGNORE
        safe = targets.masked_fill(~keep, 0)  # any valid index; its row is masked out below
        acc = torch.promote_types(logits.dtype, torch.float32)  # fp32, or fp64 for fp64 logits
        lse = torch.empty(logits.shape[0], dtype=acc, device=logits.device)
        for a, b in _chunks(*logits.shape):
            lse[a:b] = torch.logsumexp(logits[a:b].to(acc), dim=-1)
        picked = logits.gather(1, safe[:, None]).squeeze(1).to(acc)
        ctx.save_for_backward(logits, safe, keep, lse)
        # where, not a product with keep: an ignored row's logits may be inf (masked), and inf * 0 is NaN.
        return torch.where(keep, lse - picked, 0.0).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, safe, keep, lse = ctx.saved_tensors
        scale = grad.to(lse.dtype) * keep  # (N,): 0 on ignored rows
        for a, b in _chunks(*logits.shape):
            g = (logits[a:b].to(lse.dtype) - lse[a:b, None]).exp_()  # softmax of the chunk
            g.scatter_add_(1, safe[a:b, None], -torch.ones_like(lse[a:b, None]))  # - onehot
            g = torch.where(keep[a:b, None], g.mul_(scale[a:b, None]), 0.0)  # ignored rows: exactly 0
            logits[a:b] = g  # in place: the logits become their gradient
        return logits, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of (..., V) logits against (...) ids, like `F.cross_entropy` with
    ignore_index=-100 and reduction "sum" or "mean" (over the targets that are not ignored)."""
    flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if not flat_logits.is_contiguous():
        flat_logits = flat_logits.contiguous()
    total = _CrossEntropySum.apply(flat_logits, flat_targets)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / (flat_targets != IGNORE).sum()
    raise ValueError(f"reduction must be 'sum' or 'mean', not {reduction!r}")
