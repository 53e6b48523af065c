"""Mixed precision: run the forward pass's matmuls in 16 bits, keep the weights in 32.

- fp32: everything in float32.
- bf16: torch.autocast runs matmuls and attention in bfloat16 (same exponent range as float32,
  fewer mantissa bits), while norms, softmax and the loss stay in float32. Needs no loss scaling.
  On CPUs with AVX-512-BF16 or AMX and on Ampere-or-newer GPUs it is about twice as fast.
- fp16: float16 has a narrow range: small gradients underflow to zero. A GradScaler multiplies the
  loss by a large factor before backward and divides the gradients after, skipping steps whose
  gradients overflowed. CUDA only.
"""

from __future__ import annotations

import contextlib

import torch

from llmkit.errors import LlmkitError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise LlmkitError(f"train.precision=fp16 needs a CUDA GPU (the device is {device})",
                          hint="use train.precision=bf16 (or fp32) on this device")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LlmkitError(f"{torch.cuda.get_device_name(device)} does not support bfloat16",
                          hint="use train.precision=fp16 (with loss scaling) or fp32")


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A scaler that is active for fp16 only (disabled, its calls pass through unchanged)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
