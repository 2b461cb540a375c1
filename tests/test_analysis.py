"""Same-class mass of a similarity distribution, on a hand-made matrix with exact expectations."""

from __future__ import annotations

import pytest
import torch

from dogo.analysis import chance_same_class_share, same_class_mass

# Rows sum to 1; images 0, 1 are class 0 and images 2, 3 class 1; positives on the diagonal.
P = torch.tensor([[0.5, 0.3, 0.1, 0.1],
                  [0.2, 0.4, 0.2, 0.2],
                  [0.25, 0.25, 0.25, 0.25],
                  [0.0, 0.5, 0.4, 0.1]], dtype=torch.float64)
LABELS = torch.tensor([0, 0, 1, 1])


def test_mass_on_the_other_images_of_the_same_class():
    torch.testing.assert_close(same_class_mass(P, LABELS), torch.tensor([0.3, 0.2, 0.25, 0.4], dtype=torch.float64))


def test_share_of_the_non_positive_mass():
    expected = torch.tensor([0.3 / 0.5, 0.2 / 0.6, 0.25 / 0.75, 0.4 / 0.9], dtype=torch.float64)
    torch.testing.assert_close(same_class_mass(P, LABELS, given_negative=True), expected)


def test_logits_are_turned_into_row_softmaxes():
    positive = P.clamp_min(0.05)
    positive = positive / positive.sum(dim=1, keepdim=True)
    logits = positive.log() + torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64)  # a shift per row
    torch.testing.assert_close(same_class_mass(logits, LABELS, logits=True), same_class_mass(positive, LABELS))


def test_chance_share_counts_the_other_images_of_each_class():
    torch.testing.assert_close(chance_same_class_share(LABELS), torch.full((4,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(chance_same_class_share(torch.tensor([0, 0, 0, 1, 2])),
                               torch.tensor([0.5, 0.5, 0.5, 0.0, 0.0], dtype=torch.float64))
    # A uniform distribution over the other images has exactly the chance share.
    uniform = torch.full((4, 4), 0.25, dtype=torch.float64)
    torch.testing.assert_close(same_class_mass(uniform, LABELS, given_negative=True), chance_same_class_share(LABELS))


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="B x B"):
        same_class_mass(torch.ones(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="expected 4 labels"):
        same_class_mass(P, torch.zeros(3, dtype=torch.long))
