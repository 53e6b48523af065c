"""Transfer: a trained model's weights into a new model, and the choice of which of them train.

A finetuning run (`train.init_from`, which `llmkit finetune --base` sets) builds its model — a
classifier puts a head on top of the base — copies the base's weights in (`load_base`) and
freezes all but what `train.finetune` names (`choose_trainable`): everything; the last block,
the final norm and the head; or LoRA adapters (llmkit/layers/lora.py) and a classifier's new head.
"""

from __future__ import annotations

from torch import nn

from llmkit.config import TrainConfig
from llmkit.errors import LlmkitError
from llmkit.layers.lora import add_lora
from llmkit.models.classifier import SequenceClassifier


def _body(model: nn.Module) -> nn.Module:
    """The language model inside (a classifier's base), whose names the base weights have."""
    return model.base if isinstance(model, SequenceClassifier) else model


def load_base(model: nn.Module, base: nn.Module, where: str) -> None:
    """Copy a trained (or imported) model's weights into `model`, into a classifier's base."""
    try:
        _body(model).load_state_dict(base.state_dict())
    except RuntimeError as e:
        raise LlmkitError(f"{where} does not fit this model: {str(e).splitlines()[0]}",
                          hint="take the model section from the base run (llmkit finetune --base does)") from None


def choose_trainable(model: nn.Module, cfg: TrainConfig) -> None:
    """Freeze what `train.finetune` keeps: nothing (all); all but the last block, the final norm
    and the head (last_block); all but LoRA adapters (lora). A classifier's new head always trains."""
    target, head = _body(model), getattr(model, "head", None)
    if cfg.finetune == "last_block":
        model.requires_grad_(False)
        if head is None:  # a language model's own head; when tied it is the token embedding, which stays frozen
            head = None if target.lm_head.weight is target.embed.wte.weight else target.lm_head
        for part in (target.blocks[-1], target.norm_f, head):
            if part is not None:
                part.requires_grad_(True)
    elif cfg.finetune == "lora":
        add_lora(model, cfg.lora)
        if head is not None:
            head.requires_grad_(True)
