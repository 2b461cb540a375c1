"""Frozen features and the kNN monitor, shared by training (monitoring) and evaluation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .augment import TestTransform


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, transform: TestTransform,
                     batch_size: int = 1024, device: torch.device | str | None = None) -> torch.Tensor:
    """Backbone features (N, D) of uint8 images (N, C, H, W): eval mode, no augmentation, no grad.

    The backbone's train/eval mode is restored afterwards. Features come back as float32 on the CPU.
    """
    if device is None:
        device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = transform(images[start:start + batch_size].to(device, non_blocking=True))
            out.append(backbone(x).float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


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
                 query_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy (in %) of the weighted kNN classifier."""
    scores = knn_predict(bank, bank_labels, queries, num_classes, k, temperature)
    return 100.0 * (scores.argmax(dim=1) == query_labels).float().mean().item()
