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

from .errors import ConfigError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes; False when alone.

    ``backend`` None picks NCCL when CUDA is available and gloo otherwise; pass "gloo" to train on
    the CPU of a machine that has GPUs (DDP with NCCL needs CUDA modules).
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend)
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` (any picklable value) on every process, e.g. a run folder name chosen from the clock."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_module(model: nn.Module) -> nn.Module:
    """Rank 0's parameters and buffers on every process, in place: what DDP does at its start, for a
    model it does not wrap (a frozen peer, which has no gradient to average)."""
    if is_distributed():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor, src=0)
    return model


def cleanup() -> None:
    """Leave the process group (call once at the end of a torchrun job)."""
    if is_distributed():
        dist.destroy_process_group()


def shard(images: torch.Tensor) -> torch.Tensor:
    """This process's share of the training images (every N-th, starting at its rank)."""
    return images[rank()::world_size()] if is_distributed() else images


def wrap(model: nn.Module, device: torch.device, sync_batchnorm: bool = False) -> nn.Module:
    """DistributedDataParallel around ``model``; with ``sync_batchnorm`` the BatchNorm layers of
    ``model`` are replaced in place by SyncBatchNorm (same parameters and buffers, so optimizers
    built before keep working). Without it, each process normalises with its own batch statistics.
    """
    if sync_batchnorm:
        if device.type != "cuda":
            # PyTorch's DDP refuses SyncBatchNorm on CPU modules; say so in config terms.
            raise ConfigError("train.sync_batchnorm: SyncBatchNorm needs CUDA devices; set it to false "
                              f"for {device.type} training")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; the backward keeps the gradient of this process's own rows.

    Forward: N processes each hold x_r (b, d); every process gets X = [x_0; ...; x_{N-1}] (N b, d).
    Backward: every process evaluated the same loss L(X), so dL/dx_r is rows r b .. (r+1) b of its
    own dL/dX; each process returns exactly that. Parameter gradients are then
    sum_r dL/dx_r * dx_r/dtheta = dL/dtheta after DDP's average times N (the engine's loss * N).
    All processes must pass the same shape (drop_last guarantees equal local batches).
    """

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
    """(b, ...) on each of N processes -> (N b, ...) in rank order, with a gradient path to every rank."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def gather_outputs(out):
    """Gather every tensor field of a ViewOutputs (or any dataclass of tensors) across processes."""
    changes = {f.name: gather_with_grad(getattr(out, f.name)) for f in dataclasses.fields(out)
               if isinstance(getattr(out, f.name), torch.Tensor)}
    return dataclasses.replace(out, **changes)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) tensor over processes, for logging."""
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world_size()
