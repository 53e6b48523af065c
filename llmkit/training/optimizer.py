"""The optimizers: AdamW for every weight, or Muon for the blocks' matrices and AdamW for the rest.

`train.optimizer: muon` follows the speedruns (modded-nanogpt, nanochat): Muon's orthogonalised
update suits the square-ish hidden matrices that multiply activations inside the transformer
blocks (attention q, kv, proj; MLP fc, proj); embeddings, the output head, norm gains and biases
are not such matrices and keep AdamW. Each group keeps its own peak rate in `peak_lr`; the
schedule multiplies every group's by the same factor (`set_learning_rates`).

The trainer holds a list of optimizers (one or two) and steps each; torch's distributed
`get_optimizer_state_dict` / `set_optimizer_state_dict` take such a list and save one state dict,
keyed by parameter names, for all of them.
"""

from __future__ import annotations

import torch
from torch import nn

from llmkit.config import TrainConfig
from llmkit.errors import LlmkitError
from llmkit.layers.block import Block


def muon_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights inside transformer blocks that train: what Muon steps (in model order)."""
    seen, params = set(), []
    for module in model.modules():
        if isinstance(module, Block):
            for p in module.parameters():
                if p.dim() == 2 and p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    return params


def check_distributed(train: TrainConfig, setup) -> None:
    """Refuse Muon under FSDP: its Newton-Schulz iterations need each whole matrix, and FSDP leaves
    every process a slice of it (DDP is fine: every process holds whole matrices and the same
    averaged gradients, so each takes the same Muon step)."""
    if train.optimizer == "muon" and setup.enabled and setup.kind == "fsdp":
        raise LlmkitError("train.optimizer=muon is not supported with train.distributed=fsdp: Muon "
                          "orthogonalises whole weight matrices, and FSDP gives each process a shard of them",
                          hint="use train.distributed=ddp with muon, or train.optimizer=adamw with fsdp")


def make_optimizer(model: nn.Module, train: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    """AdamW with weight decay on matrices and embeddings only (decaying biases and norm gains
    towards zero would only fight the normalisation); with `muon`, Muon takes the blocks' matrices
    out of AdamW's hands first."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizers = []
    if train.optimizer == "muon":
        hidden = muon_parameters(model)
        if not hidden:
            raise LlmkitError(f"train.optimizer=muon steps the weight matrices inside transformer blocks, "
                              f"and this model has none that train ({type(model).__name__})",
                              hint="use train.optimizer=adamw for it")
        optimizers.append(torch.optim.Muon(
            [{"params": hidden, "peak_lr": train.muon_lr}], lr=train.muon_lr, weight_decay=train.muon_weight_decay,
            momentum=train.muon_momentum, nesterov=train.muon_nesterov and train.muon_momentum > 0,
            adjust_lr_fn=train.muon_lr_adjust))
        taken = {id(p) for p in hidden}
        params = [p for p in params if id(p) not in taken]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay, "peak_lr": train.lr},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "peak_lr": train.lr},
    ]
    # The fused kernel (one pass over all weights per step) on CUDA and on CPUs too: 1.05x the steps
    # per second of the for-loop update at nanoGPT's baby GPT here (scripts/bench_step.py).
    optimizers.append(torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2),
                                        fused=device.type in ("cuda", "cpu")))
    return optimizers


def set_learning_rates(optimizers: list[torch.optim.Optimizer], scale: float) -> None:
    """Every group at its own peak rate times the schedule's `scale` (1 at the peak)."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * scale


def settings(optimizers: list[torch.optim.Optimizer]) -> list[dict]:
    """Each group's hyperparameters (all but its parameters), in order: what the recipe set."""
    return [{k: v for k, v in group.items() if k != "params"} for o in optimizers for group in o.param_groups]


def restore_settings(optimizers: list[torch.optim.Optimizer], saved: list[dict]) -> None:
    """Put the recipe's hyperparameters back after loading a checkpoint's state, which carries the
    ones it was saved with: a resumed run takes its rates from the recipe it is resumed with."""
    groups = [group for o in optimizers for group in o.param_groups]
    for group, values in zip(groups, saved, strict=True):
        group.update(values)
