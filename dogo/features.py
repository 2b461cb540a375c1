"""Frozen features and the kNN classifier: the one extraction and the one kNN of the kit, shared by
training (the kNN monitor), evaluation and the quickstart."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def fold_batchnorm(backbone: nn.Module) -> nn.Module:
    """An eval-mode copy of ``backbone`` with every BatchNorm folded into the convolution before it:
    the same function (up to float rounding) with fewer passes over memory. A backbone that
    ``torch.fx`` cannot trace comes back as an unfused eval-mode copy."""
    backbone = copy.deepcopy(backbone).eval()
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(backbone)
    except Exception:
        return backbone


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor],
                     batch_size: int = 1024, device: torch.device | str | None = None, *,
                     fold_bn: bool = False, channels_last: bool = False) -> torch.Tensor:
    """Backbone features (N, D) of uint8 images (N, C, H, W): eval mode, ``transform`` (e.g. a
    ``TestTransform``: no augmentation, the encoder's normalisation), no grad.

    ``fold_bn``: run a BatchNorm-folded copy (``fold_batchnorm``; pass an already folded backbone to
    reuse one). ``channels_last``: feed channels-last inputs. The backbone's train/eval mode is
    restored afterwards. Features come back as float32 on the CPU.
    """
    if device is None:
        device = next(backbone.parameters()).device
    net = fold_batchnorm(backbone).to(device) if fold_bn else backbone
    was_training = net.training
    net.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = transform(images[start:start + batch_size].to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(net(x).float().cpu())
    finally:
        net.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in % for each k in ``ks`` that is smaller than the number of classes
    (top-k with k >= classes is always 100 % and says nothing), plus top-1 always.

    ``scores`` (N, C), ``labels`` (N,). Returns e.g. ``{"top1": 91.2, "top5": 99.5}``.
    """
    labels = labels.to(scores.device)
    num_classes = scores.shape[1]
    out = {}
    ranked = scores.topk(min(max(ks), num_classes), dim=1).indices
    for k in ks:
        if k == 1 or k < num_classes:
            hit = (ranked[:, :k] == labels.view(-1, 1)).any(dim=1)
            out[f"top{k}"] = 100.0 * hit.float().mean().item() if len(labels) else float("nan")
    return out


def report_ks(num_classes: int) -> tuple[int, ...]:
    """Top-1 always; top-5 too where there are more than 10 classes (the field's convention)."""
    return (1, 5) if num_classes > 10 else (1,)


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.1, chunk: int = 1024,
                exclude_self: bool = False) -> torch.Tensor:
    """Weighted kNN vote (the MoCo/InstDisc monitor): cosine similarity on L2-normalised features,
    the k nearest bank entries vote for their label with weight exp(similarity / temperature).

    Returns class scores (Q, num_classes). Queries are processed in chunks, so memory is O(chunk x N).
    ``exclude_self`` drops an exact self-match when the queries are the bank itself.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    k = min(k, len(bank) - (1 if exclude_self else 0))
    scores = torch.zeros(len(queries), num_classes)
    for start in range(0, len(queries), chunk):
        sim = queries[start:start + chunk] @ bank.T
        if exclude_self:
            rows = torch.arange(sim.shape[0])
            sim[rows, rows + start] = -float("inf")
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        scores[start:start + chunk] = votes
    return scores


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, num_classes: int | None = None, k: int = 200,
                 temperature: float = 0.1) -> dict[str, float]:
    """The weighted kNN classifier (``knn_predict``) scored on labelled queries: ``{"top1"}`` in %, plus
    ``"top5"`` where there are more than 10 classes."""
    if num_classes is None:
        num_classes = int(max(int(y.max()) for y in (bank_labels, query_labels) if len(y)) + 1)
    scores = knn_predict(bank, bank_labels, queries, num_classes, k, temperature)
    return topk_accuracy(scores, query_labels, report_ks(num_classes))
