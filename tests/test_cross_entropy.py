"""llmkit's chunked, in-place cross-entropy equals PyTorch's, in value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from llmkit.layers import cross_entropy as ce


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("chunk", [1 << 20, 64])  # one chunk; many chunks, the last one short
def test_matches_torch_with_ignored_targets(monkeypatch, reduction, chunk):
    monkeypatch.setattr(ce, "CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    z = torch.randn(3, 37, 29, dtype=torch.float64)  # (B, T, V): 111 rows of 29 logits
    t = torch.randint(29, (3, 37))
    t[:, ::5] = ce.IGNORE
    ours, ref = z.clone().requires_grad_(), z.clone().requires_grad_()
    loss = ce.cross_entropy(ours * 1, t, reduction)  # * 1: backward writes into its own input
    expected = F.cross_entropy(ref.flatten(0, 1), t.flatten(), reduction=reduction)
    (2.5 * loss).backward()
    (2.5 * expected).backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-12, atol=1e-12)
    assert ours.grad[:, ::5].abs().max() == 0  # ignored rows get no gradient


def test_bf16_logits_give_the_fp32_loss_of_their_values():
    torch.manual_seed(0)
    z = torch.randn(64, 1000).bfloat16()
    t = torch.randint(1000, (64,))
    ours = z.clone().requires_grad_()
    loss = ce.cross_entropy(ours * 1, t, "sum")
    loss.backward()
    ref = z.float().requires_grad_()
    expected = F.cross_entropy(ref, t, reduction="sum")
    expected.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-4)  # same fp32 arithmetic
    assert ours.grad.dtype == torch.bfloat16  # a gradient in the logits' own dtype
    torch.testing.assert_close(ours.grad.float(), ref.grad, rtol=1e-2, atol=1e-3)  # bf16 rounding


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction"):
        ce.cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), "none")
