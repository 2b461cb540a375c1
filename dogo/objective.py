"""The DoGo objective of a cohort of K >= 1 peers, in one function: ``cohort_losses``.

For peers k = 1..K, each with its own two views of the same B images, peer k minimises

    loss_k = ssl_k + w_k * sum_{j != k} KL(P_j || P_k)

- ``ssl_k``: NT-Xent of the projections (SimCLR, temperature tau_k) or the symmetrised negative
  cosine of predictions against detached projections (SimSiam);
- ``P_k``: row-wise softmax of the cross-view similarity matrix cos(a_k[i], b_k[j]) / tau_kd (B x B),
  where (a_k, b_k) are the head outputs peer k distils: SimCLR its projections z, SimSiam its
  predictions p; when both peers are SimSiam, the peer's side is its projection z (as SimSiam itself
  matches p against z);
- ``P_j`` is a fixed target (detached): no gradient flows into the peer. With the peers' graphs
  disjoint, one backward of sum_k loss_k gives each peer exactly the gradient of its own loss.

A peer whose distillation target is ``"uniform"`` (a control) replaces its sum over the others by one
term towards the uniform distribution: loss_k = ssl_k + w_k * KL(U || P_k), U[i, j] = 1/B
(``uniform_similarity_distill``); the others still distil from it.

K = 1 is the single-model baseline (no distillation term, unless its target is uniform). ``reduction`` is that of
``similarity_distill`` (``"mean"``, the authors', divides the KL sum by B^2; ``"batchmean"`` by B).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import DISTILL_TARGETS
from .losses import nt_xent, similarity_distill, simsiam_loss, uniform_similarity_distill

Tensor = torch.Tensor
OBJECTIVES = ("simclr", "simsiam")


@dataclass
class ViewOutputs:
    """What one model computes for two views of the same batch: features h, projections z, predictions p
    (SimSiam only), each (B, d)."""

    h1: Tensor
    h2: Tensor
    z1: Tensor
    z2: Tensor
    p1: Tensor | None = None
    p2: Tensor | None = None


def ssl_loss(objective: str, out: ViewOutputs, temperature: float = 0.5) -> Tensor:
    """The peer's own self-supervised loss: NT-Xent(z1, z2) for SimCLR, SimSiam's loss otherwise."""
    if objective == "simclr":
        return nt_xent(out.z1.float(), out.z2.float(), temperature)
    if objective == "simsiam":
        return simsiam_loss(out.p1.float(), out.p2.float(), out.z1.float(), out.z2.float())
    raise ValueError(f"unknown objective {objective!r}; choose simclr or simsiam")


def _objective_of(model_or_objective) -> str:
    return model_or_objective if isinstance(model_or_objective, str) else model_or_objective.objective


def distill_pair(own, own_out: ViewOutputs, peer, peer_out: ViewOutputs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The (own1, own2, peer1, peer2) float tensors that ``similarity_distill`` compares for ``own``.

    ``own`` and ``peer`` are objective names (or models with an ``objective``). SimCLR distils its
    projection z, SimSiam its prediction p; a SimSiam own model facing a SimSiam peer is matched
    against the peer's projection z.
    """
    own_objective, peer_objective = _objective_of(own), _objective_of(peer)
    if peer_objective == "simclr" or own_objective == "simsiam":
        peer_views = (peer_out.z1, peer_out.z2)
    else:
        peer_views = (peer_out.p1, peer_out.p2)
    return *distilled_views(own_objective, own_out), peer_views[0].float(), peer_views[1].float()


def distilled_views(own, own_out: ViewOutputs) -> tuple[Tensor, Tensor]:
    """The (own1, own2) float tensors whose similarity distribution ``own`` distils: SimCLR's projections
    z, SimSiam's predictions p."""
    views = (own_out.z1, own_out.z2) if _objective_of(own) == "simclr" else (own_out.p1, own_out.p2)
    return views[0].float(), views[1].float()


def cohort_losses(outputs: Sequence[ViewOutputs], objectives: Sequence[str], weights: Sequence[float],
                  temperature: float = 0.1, reduction: str = "batchmean",
                  ssl_temperatures: Sequence[float] | None = None,
                  targets: Sequence[str] | None = None) -> list[dict[str, Tensor]]:
    """Every peer's ``{"ssl", "distill", "total"}`` (scalar tensors): the formula in the module doc.

    Args:
        outputs: one ``ViewOutputs`` per peer, for the peers' own views of the same B images.
        objectives: ``"simclr"`` or ``"simsiam"`` per peer.
        weights: w_k per peer (the weight of its distillation term).
        temperature: tau_kd of the similarity distributions.
        reduction: of the KL term, see ``similarity_distill``.
        ssl_temperatures: NT-Xent temperature per peer (SimCLR peers; default 0.5).
        targets: what each peer distils towards, ``"peers"`` (default) or ``"uniform"``.
    """
    k_peers = len(outputs)
    if ssl_temperatures is None:
        ssl_temperatures = [0.5] * k_peers
    if targets is None:
        targets = ["peers"] * k_peers
    if not len(objectives) == len(weights) == len(ssl_temperatures) == len(targets) == k_peers:
        raise ValueError(f"cohort_losses: {k_peers} outputs but {len(objectives)} objectives, {len(weights)} "
                         f"weights, {len(ssl_temperatures)} SSL temperatures and {len(targets)} targets")
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ValueError(f"unknown objective {unknown[0]!r}; choose simclr or simsiam")
    unknown = [t for t in targets if t not in DISTILL_TARGETS]
    if unknown:
        raise ValueError(f"unknown distillation target {unknown[0]!r}; choose peers or uniform")
    losses = []
    for k in range(k_peers):
        ssl = ssl_loss(objectives[k], outputs[k], ssl_temperatures[k])
        if targets[k] == "uniform":
            own_views = distilled_views(objectives[k], outputs[k])
            distill = uniform_similarity_distill(*own_views, temperature=temperature, reduction=reduction)
        else:
            distill = torch.zeros((), device=ssl.device, dtype=ssl.dtype)
            for j in range(k_peers):
                if j != k:
                    pair = distill_pair(objectives[k], outputs[k], objectives[j], outputs[j])
                    distill = distill + similarity_distill(*pair, temperature=temperature, reduction=reduction)
        losses.append({"ssl": ssl, "distill": distill, "total": ssl + weights[k] * distill})
    return losses
