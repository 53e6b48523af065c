"""Beam search: instead of one token at a time, keep the few best whole continuations."""

from __future__ import annotations

import torch


@torch.no_grad()
def beam_search(step, start: list[int], beam: int, max_new_tokens: int, eos: int | None,
                length_penalty: float = 1.0) -> list[int]:
    """The most likely continuation of `start` found by keeping the `beam` best prefixes.

    `step(prefixes)` maps (N, t) ids to (N, V) log-probabilities of the next token, so the same
    search serves decoders and the seq2seq decoder. A finished hypothesis (ending in `eos`, or at
    `max_new_tokens`) is scored sum(log p) / length ** length_penalty: 0 ranks by total
    probability (favouring short outputs), 1 by mean per-token log-probability. Returns the new ids
    (with `eos` when it ended there).
    """
    beams = [(0.0, list(start))]  # (sum of log-probs of the new tokens, ids)
    finished: list[tuple[float, list[int]]] = []
    n0 = len(start)

    def normalized(score: float, ids: list[int]) -> float:
        return score / max(1, len(ids) - n0) ** length_penalty

    for t in range(max_new_tokens):
        logp = step(torch.tensor([ids for _, ids in beams]))  # (N, V)
        total = torch.tensor([s for s, _ in beams])[:, None] + logp.float().cpu()
        vocab = total.shape[1]
        top = total.flatten().topk(min(2 * beam, total.numel()))
        live = []
        for score, index in zip(top.values.tolist(), top.indices.tolist()):
            ids = beams[index // vocab][1] + [index % vocab]
            if (eos is not None and ids[-1] == eos) or t == max_new_tokens - 1:
                finished.append((normalized(score, ids), ids))
            elif len(live) < beam:
                live.append((score, ids))
        beams = live
        if not beams:
            break
        # Log-probs are <= 0, so a live prefix can only lose score; its best possible final value
        # is its score now over the most favourable final length: the longest for a penalty >= 0,
        # the shortest (one more token) for a negative one. Stop when no live prefix can win.
        best_length = max(1, max_new_tokens) if length_penalty >= 0 else t + 2
        best_possible = max(s for s, _ in beams) / best_length ** length_penalty
        if finished and max(f for f, _ in finished) >= best_possible:
            break
    if not finished:
        finished = [(normalized(s, ids), ids) for s, ids in beams]
    return max(finished, key=lambda f: f[0])[1][n0:]
