"""What a similarity distribution knows about classes: measures used by the notebooks to explain why a
small model can gain from its peer's soft targets.

Rows are anchors, columns are images of the same batch; for DoGo's cross-view matrices the positive of
row i is column i (the other view of the same image). With labels ``y`` (used only to analyse, never to
train), the peer's distribution Q helps the student beyond NT-Xent's one-hot target when it puts more of
the mass that is not on the positive onto *other images of the same class* than the student's P does.
"""

from __future__ import annotations

import torch


def _check(matrix: torch.Tensor, labels: torch.Tensor) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a B x B matrix, got shape {tuple(matrix.shape)}")
    if labels.shape != (matrix.shape[0],):
        raise ValueError(f"expected {matrix.shape[0]} labels, got shape {tuple(labels.shape)}")


def same_class_mass(probs_or_logits: torch.Tensor, labels: torch.Tensor, *, logits: bool = False,
                    given_negative: bool = False) -> torch.Tensor:
    """Per row i, the probability mass on the other images of i's class, shape (B,):

        m_i = sum_{j != i, y_j = y_i} P_ij

    Args:
        probs_or_logits: (B, B) row-stochastic matrix P, or its logits when ``logits=True`` (then
            ``P = softmax`` along each row, e.g. of cos(a_i, b_j) / tau).
        labels: (B,) class of each image; row i and column i are the same image.
        given_negative: divide by the mass on all other images, ``sum_{j != i} P_ij``: the share of
            the non-positive mass that lands on the same class (compare :func:`chance_same_class_share`).
    """
    _check(probs_or_logits, labels)
    probs = torch.softmax(probs_or_logits, dim=1) if logits else probs_or_logits
    same = labels[:, None] == labels[None, :]
    other = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    mass = (probs * (same & other)).sum(dim=1)
    if given_negative:
        mass = mass / (probs * other).sum(dim=1)
    return mass


def chance_same_class_share(labels: torch.Tensor) -> torch.Tensor:
    """Per row i, the share of a uniform distribution over the other B - 1 images that falls on i's class,
    ``(n_{y_i} - 1) / (B - 1)`` with ``n_c`` the images of class c in the batch, shape (B,)."""
    counts = torch.bincount(labels)
    return (counts[labels] - 1).double() / (len(labels) - 1)


__all__ = ["same_class_mass", "chance_same_class_share"]
