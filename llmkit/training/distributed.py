"""Training on several processes: `torchrun --nproc_per_node=N -m llmkit train RECIPE`.

torchrun starts N copies of llmkit with RANK, LOCAL_RANK and WORLD_SIZE set. Each copy builds the
same model from the same seed, draws the same global batch and keeps its own rows of it (so the
N processes together see exactly what one process would with the whole batch), computes gradients
on them, and then
- ddp (DistributedDataParallel): averages the gradients across processes during backward; every
  process keeps a full copy of weights and optimizer state;
- fsdp (FullyShardedDataParallel, `fully_shard`): each process keeps only 1/N of every weight,
  gradient and optimizer tensor, gathering a block's weights just in time for its forward and
  backward — for models that do not fit one device.
Only rank 0 writes files (checkpoints, metrics, plots) and prints. The backend is NCCL for CUDA
and gloo for the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from llmkit.errors import LlmkitError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    kind: str = "ddp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def rows(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """This process's contiguous share of a global batch (dim 0)."""
        if not self.enabled:
            return batch
        size = batch[0].shape[0]
        if size % self.world:
            raise LlmkitError(f"a batch of {size} does not split evenly over {self.world} processes")
        share = size // self.world
        return tuple(t[self.rank * share : (self.rank + 1) * share] for t in batch)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over processes (the value itself on one process)."""
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def from_environment(device_name: str, kind: str) -> Distributed:
    """Join the process group torchrun describes in the environment; one process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed(kind=kind)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Distributed(rank, world, local_rank, kind)


def device_for(setup: Distributed, device: torch.device) -> torch.device:
    """Under torchrun each process takes the GPU of its local rank."""
    if setup.enabled and device.type == "cuda":
        return torch.device("cuda", setup.local_rank)
    return device


def wrap(model: nn.Module, setup: Distributed, device: torch.device) -> nn.Module:
    if not setup.enabled:
        return model
    if setup.kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Shard each block on its own (gathered one at a time), then the rest (embeddings, head).
        for module in model.modules():
            if type(module).__name__ == "Block":
                fully_shard(module)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shutdown(setup: Distributed) -> None:
    if setup.enabled and dist.is_initialized():
        dist.destroy_process_group()
