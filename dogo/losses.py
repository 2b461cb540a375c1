"""The three losses of DoGo: SimCLR's NT-Xent, SimSiam's negative cosine, and similarity distillation
(with its control, distillation towards the uniform distribution).

All three take float32 or float64 tensors of shape (B, d) with B >= 2 and compute cosine
similarities as a matmul of L2-normalised rows, so memory is O(B^2), never O(B^2 d).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _check_pair(name_a: str, a: Tensor, name_b: str, b: Tensor, same_dim: bool = True) -> None:
    for name, t in ((name_a, a), (name_b, b)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape (B, d), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.shape[0] < 2:
            raise ValueError(f"{name} needs a batch of at least 2 (the loss contrasts samples), got B={t.shape[0]}")
    if a.shape[0] != b.shape[0] or (same_dim and a.shape != b.shape):
        raise ValueError(f"{name_a} and {name_b} must have matching shapes, got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def cosine_similarity_matrix(a: Tensor, b: Tensor) -> Tensor:
    """S[i, j] = cos(a[i], b[j]) for a (N, d) and b (M, d): one matmul of normalised rows, (N, M)."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy.

    With z = [z1; z2] (2B x d) and S[i, j] = cos(z_i, z_j) / temperature, anchor i's positive is its
    other view pos(i) = (i + B) mod 2B, and the 2B - 2 other samples are its negatives::

        loss = 1/(2B) * sum_i  -log( exp(S[i, pos(i)]) / sum_{j != i} exp(S[i, j]) )

    Args:
        z1, z2: projections of two views of the same B images, shape (B, d).
        temperature: tau > 0 (the authors' code uses 0.5).

    Returns:
        scalar tensor. If all embeddings are identical it equals log(2B - 1).
    """
    _check_pair("z1", z1, "z2", z2)
    _check_temperature(temperature)
    batch = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    logits = cosine_similarity_matrix(z, z) / temperature
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = torch.arange(2 * batch, device=z.device).roll(batch)
    return F.cross_entropy(logits, positives)


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """SimSiam's symmetrised negative cosine similarity with stop-gradient on the projections.

    ``D(p, z) = -mean_i cos(p_i, stopgrad(z_i))`` and ``loss = (D(p1, z2) + D(p2, z1)) / 2``,
    in [-1, 1]; -1 when each prediction points along the other view's projection.

    Args:
        p1, p2: predictor outputs of view 1 and view 2, shape (B, d).
        z1, z2: projector outputs of view 1 and view 2, shape (B, d); no gradient flows into them.
    """
    _check_pair("p1", p1, "p2", p2)
    _check_pair("z1", z1, "z2", z2)
    _check_pair("p1", p1, "z1", z1)

    def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
        return -F.cosine_similarity(p, z.detach(), dim=1).mean()

    return (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2


def similarity_log_distribution(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Row-wise log-softmax of the cross-view similarity matrix cos(a_i, b_j) / temperature, (B, B)."""
    return F.log_softmax(cosine_similarity_matrix(a, b) / temperature, dim=1)


def similarity_distill(
    own1: Tensor,
    own2: Tensor,
    peer1: Tensor,
    peer2: Tensor,
    temperature: float = 0.1,
    reduction: str = "batchmean",
) -> Tensor:
    """DoGo's distillation term: match the peer's distribution of cross-view similarities.

    For B images with two views, the own model's similarity distribution is row i of
    ``P = softmax_j( cos(own1_i, own2_j) / temperature )`` and the peer's is
    ``Q = softmax_j( cos(peer1_i, peer2_j) / temperature )`` (both B x B; the diagonal holds the
    positives). The peer is a fixed target (detached), so only the own model gets gradients::

        KL(Q || P) = sum_{i, j} Q[i, j] * (log Q[i, j] - log P[i, j])

    computed with log_softmax for numerical stability.

    Args:
        own1, own2: the own model's head outputs for views 1 and 2, shape (B, d).
        peer1, peer2: the peer's head outputs for its views of the same B images, shape (B, d'),
            d' may differ from d. Never receive a gradient.
        temperature: tau_kd > 0 (0.1 in the authors' template).
        reduction: "batchmean" divides the sum by B (a proper KL per row); "mean" divides by B*B,
            which is PyTorch's default and reproduces the authors' numbers exactly (their weight w
            equals w / B in batchmean units); "sum" returns the sum.

    Returns:
        scalar tensor >= 0; exactly 0 when own and peer outputs give the same distributions.
    """
    _check_pair("own1", own1, "own2", own2)
    _check_pair("peer1", peer1, "peer2", peer2)
    _check_pair("own1", own1, "peer1", peer1, same_dim=False)
    _check_temperature(temperature)
    _check_reduction(reduction)
    log_p = similarity_log_distribution(own1, own2, temperature)
    with torch.no_grad():
        log_q = similarity_log_distribution(peer1.detach(), peer2.detach(), temperature).to(log_p.dtype)
    return _reduced_kl(log_q, log_p, reduction)


def uniform_similarity_distill(own1: Tensor, own2: Tensor, temperature: float = 0.1,
                               reduction: str = "batchmean") -> Tensor:
    """``similarity_distill`` towards a teacher that knows nothing: every image equally similar.

    A control for the distillation term: the target is the uniform distribution U[i, j] = 1/B, so
    the loss only smooths the own similarity distribution P (as in ``similarity_distill``, B x B)::

        KL(U || P) = sum_{i, j} 1/B * (log(1/B) - log P[i, j]) = -B log B - 1/B * sum_{i, j} log P[i, j]

    It equals ``similarity_distill`` with a peer whose outputs are all the same vector.

    Args:
        own1, own2: the own model's head outputs for views 1 and 2, shape (B, d).
        temperature, reduction: as in ``similarity_distill``.

    Returns:
        scalar tensor >= 0; 0 when every row of P is uniform.
    """
    _check_pair("own1", own1, "own2", own2)
    _check_temperature(temperature)
    _check_reduction(reduction)
    log_p = similarity_log_distribution(own1, own2, temperature)
    log_u = torch.full_like(log_p, -math.log(own1.shape[0]))
    return _reduced_kl(log_u, log_p, reduction)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("batchmean", "mean", "sum"):
        raise ValueError(f"reduction must be 'batchmean', 'mean' or 'sum', got {reduction!r}")


def _reduced_kl(log_q: Tensor, log_p: Tensor, reduction: str) -> Tensor:
    """sum_{i, j} Q[i, j] * (log Q[i, j] - log P[i, j]) for (B, B) log-distributions, reduced."""
    # Summed in float64: the float32 result of a vectorised sum can change in its last bit with
    # memory alignment, which would make logged values differ between identical runs.
    total = (log_q.exp() * (log_q - log_p)).sum(dtype=torch.float64).to(log_p.dtype)
    batch = log_p.shape[0]
    if reduction == "batchmean":
        return total / batch
    if reduction == "mean":
        return total / (batch * batch)
    return total
