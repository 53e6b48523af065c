"""One way to name a model, wherever a model is read: `load_model(NAME)`.

NAME is any of
- a run directory (`runs/shakespeare_char`: its best.pt, or latest.pt with which="latest");
- a checkpoint file (`runs/shakespeare_char/latest.pt`);
- a Hugging Face directory (config.json + weights + tokenizer files) or `hf:REPO_ID` from the hub.

Each becomes a `Checkpoint` (llmkit/checkpoint.py) — read from disk, or made by an importer
(llmkit/formats/) — and then a model the same way, so nothing downstream knows where the weights
came from. The result says what the model can do (`generates`, `labels`), asked of the task it was
trained for (llmkit/tasks/).

    from llmkit import load_model
    lm = load_model("runs/shakespeare_char")
    lm.model, lm.tokenizer, lm.config, lm.checkpoint.recipe
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmkit.checkpoint import Checkpoint
from llmkit.config import ModelConfig
from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.layers.lora import add_lora, merge_lora
from llmkit.layers.quantized import make_quantized, quantize_model, quantized_names, quantizer, stored_kinds
from llmkit.models import meta_model
from llmkit.run import checkpoint_path


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on its device
    tokenizer: Tokenizer
    checkpoint: Checkpoint  # its description; the weights are in `model`, not here
    path: Path  # the checkpoint file or the directory it came from

    @property
    def config(self) -> ModelConfig:
        return self.checkpoint.model_config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def run_dir(self) -> Path:
        """Where files about this model go by default (plots, answers): its run directory."""
        return self.path.parent if self.path.is_file() else self.path

    @property
    def task_type(self) -> type:
        """The class of the task this model was trained for (llmkit/tasks/): what it can do."""
        from llmkit.tasks import task_type

        recipe = self.checkpoint.recipe
        return task_type(self.config, recipe.data.source if recipe is not None else None)

    @property
    def generates(self) -> bool:
        return self.task_type.generates

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.task_type.labels

    def require(self, capability: str, name: str | Path | None = None) -> None:
        """Refuse, saying what the model does instead, unless it can do `capability` ("generates":
        continue text, or for seq2seq translate lines; "continues": continue text; "labels":
        classify)."""
        kind, name = self.task_type, name or self.path
        if capability in ("generates", "continues") and kind.not_generating is not None:
            what, instead = kind.not_generating
            raise LlmkitError(f"{self.path} is {what}", hint=instead.format(run=name))
        if capability == "continues" and not kind.generates:  # seq2seq: it translates numbers
            raise LlmkitError(f"{self.path} translates, it does not continue text", hint=f"use: llmkit generate {name}")
        if capability == "labels" and kind.labels is None:
            raise LlmkitError(f"{self.path} is not a classifier", hint="make one with: llmkit finetune spam")


# Short names of pretrained models: the dataset that downloads each (llmkit download NAME) and its file.
MODELS = {"smollm2": ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Weight-only formats (llmkit/layers/quantized.py): the matrices in int8 or int4, the rest in float32.
QUANTIZED = ("int8", "int4")


def read_checkpoint(name: str | Path, which: str = "best", dtype: torch.dtype = torch.float32,
                    data_root: str | Path = "data", converter=None) -> Checkpoint:
    """The Checkpoint a model name stands for, weights included, without building the model.
    `converter(config)`, if given, says how to turn a GGUF file's tensors into state-dict entries
    as they are read (int8 rows: the whole model is never in float)."""
    from llmkit.formats.gguf import is_gguf, read_gguf
    from llmkit.formats.hf import hf_directory, read_hf_directory

    if str(name) in MODELS:
        from llmkit.data.sources import ensure_downloaded

        dataset, filename = MODELS[str(name)]
        name = ensure_downloaded(dataset, data_root) / filename
    if is_gguf(name):
        return read_gguf(name, dtype, converter)
    directory = hf_directory(name)
    if directory is not None:
        return read_hf_directory(directory, dtype)
    return Checkpoint.load(checkpoint_path(name, which))


def inference_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """--dtype fp32 | bf16 | fp16 | int8 | int4, refused where this device cannot run it; for int8
    and int4, the dtype of everything but the quantized matrices."""
    if name not in DTYPES and name not in QUANTIZED:
        raise LlmkitError(f"--dtype must be {', '.join([*DTYPES, *QUANTIZED])}, got '{name}'")
    device = torch.device(device)
    if name in QUANTIZED:
        if device.type != "cpu":
            raise LlmkitError(f"--dtype {name} runs on the CPU only (PyTorch's {name} kernel here is a CPU one)",
                              hint="on a GPU use --dtype bf16")
        return torch.float32
    if name == "fp16" and device.type == "cpu":
        raise LlmkitError("--dtype fp16 needs a GPU: CPUs have no fast fp16 matmuls (and PyTorch's are slow)",
                          hint="use --dtype bf16 (half the memory, and fast on recent CPUs) or fp32")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LlmkitError(f"{torch.cuda.get_device_name(device)} does not support bfloat16", hint="use --dtype fp16 or fp32")
    return DTYPES[name]


def model_from_checkpoint(checkpoint: Checkpoint, device: torch.device | str = "cpu", merge: bool = False,
                          dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Build the checkpoint's model with its weights. A LoRA checkpoint comes with its adapters,
    or with them folded into the weights when `merge` is set."""
    model = meta_model(checkpoint.model_config)  # no memory until the weights arrive: assigned, not copied
    quantized = stored_kinds(checkpoint.weights)
    if quantized:  # quantized while read: the modules take int8 rows and scales, or int4 groups
        make_quantized(model, quantized)
    if checkpoint.lora is not None:
        add_lora(model, checkpoint.lora)
    try:
        model.load_state_dict(checkpoint.weights, assign=True)
    except RuntimeError as e:
        raise LlmkitError(f"{checkpoint.path}: the weights do not fit the model its config describes: "
                          f"{str(e).splitlines()[0][:200]}") from None
    for module in model.modules():  # assigning the tied head and embedding one by one parted them
        if hasattr(module, "tie_weights"):
            module.tie_weights()
    if merge:
        merge_lora(model)
    model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, checkpoint.tokenizer, checkpoint.without_weights(), checkpoint.path)


def load_model(name: str | Path, which: str = "best", device: torch.device | str = "cpu",
               merge: bool = False, dtype: str | torch.dtype = torch.float32, compile: bool = False) -> LoadedModel:
    """The model NAME names (see the module docstring), ready to run on `device` in `dtype`
    (torch.float32, or "fp32" | "bf16" | "fp16" | "int8" | "int4"); with `compile`, it decodes through a
    compiled step (llmkit/inference/compiled.py)."""
    if isinstance(dtype, str) and dtype in QUANTIZED:
        loaded = _load_quantized(name, which, device, dtype)
    else:
        dtype = inference_dtype(dtype, device) if isinstance(dtype, str) else dtype
        loaded = model_from_checkpoint(read_checkpoint(name, which, dtype), device, merge, dtype)
    if compile:
        from llmkit.inference.compiled import compile_decoding

        compile_decoding(loaded.model)
    return loaded


def _load_quantized(name: str | Path, which: str, device: torch.device | str, kind: str) -> LoadedModel:
    """The model with its matrices in int8 or int4: quantized tensor by tensor while a GGUF file is
    read, else once the float model is built (a LoRA run merged first: adapters need float weights)."""
    dtype = inference_dtype(kind, device)

    def converter(config: ModelConfig):
        return quantizer(quantized_names(meta_model(config), kind))

    loaded = model_from_checkpoint(read_checkpoint(name, which, dtype, converter=converter), device, True, dtype)
    if not stored_kinds(loaded.model.state_dict()):
        quantize_model(loaded.model, kind)
    return loaded
