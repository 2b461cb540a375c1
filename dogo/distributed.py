"""Several processes (``torchrun --nproc_per_node=N``): DDP wrapping, data sharding and an
all-gather of embeddings so that NT-Xent and the distillation term see the global batch.

Every process gathers all embeddings and computes the same global loss. The gather's backward
returns each process the slice of the gradient that belongs to its own embeddings; DDP then
averages parameter gradients over the N processes, so the engine multiplies the loss by N.
The result equals one process training on the concatenated batch (tested with gloo on the CPU).
Without torchrun's environment every function here is a no-op for one process.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def init_from_env() -> bool:
    """Join the process group torchrun describes (NCCL on CUDA, gloo otherwise); False when alone."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend)
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shard(images: torch.Tensor) -> torch.Tensor:
    """This process's share of the training images (every N-th, starting at its rank)."""
    return images[rank()::world_size()] if is_distributed() else images


def wrap(model: nn.Module, device: torch.device, sync_batchnorm: bool = False) -> nn.Module:
    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; the backward keeps the gradient of this process's own rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every process computed the same global loss, so its local gradient for its own rows is
        # already complete; no reduction is needed here.
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def gather_outputs(out):
    """Gather every tensor field of a ViewOutputs (or any dataclass of tensors) across processes."""
    changes = {f.name: gather_with_grad(getattr(out, f.name)) for f in dataclasses.fields(out)
               if isinstance(getattr(out, f.name), torch.Tensor)}
    return dataclasses.replace(out, **changes)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world_size()
