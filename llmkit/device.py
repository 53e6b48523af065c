"""Choosing the device: `auto` takes CUDA, then Apple's MPS, then the CPU; an explicit choice that
this machine cannot honour is an error, never a silent fallback."""

from __future__ import annotations

import torch

from llmkit.config import DEVICE
from llmkit.errors import LlmkitError


def resolve_device(name: str) -> torch.device:
    if not isinstance(name, str) or not DEVICE.match(name):  # the same forms a recipe's train.device takes
        raise LlmkitError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {str(name)[:40]!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise LlmkitError(
                f"--device {name} was asked for, but PyTorch {torch.__version__} ({build}) sees no CUDA GPU",
                hint="use --device cpu (or auto); on a machine with an NVIDIA GPU, ./setup.sh installs a CUDA build",
            )
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise LlmkitError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise LlmkitError("--device mps was asked for, but Apple's MPS backend is not available here",
                          hint="use --device cpu (or auto)")
    return torch.device(name)
