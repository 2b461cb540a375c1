"""The distillation explorer without a browser or a kernel: set a slider's ``.value`` and check that the
callback recomputed exactly what ``dogo.losses.similarity_distill`` gives, and redrew."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dogo.losses import nt_xent, similarity_distill
from dogo.widgets import DistillExplorer, distill_state, readout_html, readout_text, similarity_distribution

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 30  # small images: the redraw is the same code, only cheaper


@pytest.fixture
def outputs():
    """Head outputs of a student (d = 8) and a peer (d' = 12) for B = 6 images, float64."""
    g = torch.Generator().manual_seed(3)
    own1, own2 = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(6, 8, generator=g, dtype=torch.float64)
    peer1, peer2 = torch.randn(6, 12, generator=g, dtype=torch.float64), torch.randn(6, 12, generator=g, dtype=torch.float64)
    return own1, own2, peer1, peer2


def numpy_distribution(a: torch.Tensor, b: torch.Tensor, temperature: float) -> np.ndarray:
    """Row-softmax of cos(a_i, b_j) / temperature, written independently in numpy."""
    a, b = a.numpy(), b.numpy()
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    logits = a @ b.T / temperature
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_similarity_distribution_is_the_row_softmax(outputs):
    own1, own2, _, _ = outputs
    p = similarity_distribution(own1, own2, 0.2)
    np.testing.assert_allclose(p.numpy(), numpy_distribution(own1, own2, 0.2), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(p.sum(dim=1).numpy(), np.ones(6), rtol=1e-12)


@pytest.mark.parametrize("reduction", ["batchmean", "mean", "sum"])
def test_distill_state_matches_the_package_loss(outputs, reduction):
    own1, own2, peer1, peer2 = outputs
    state = distill_state(own1, own2, peer1, peer2, temperature=0.3, weight=2.5, ssl=1.25, row=4, reduction=reduction)
    kl = float(similarity_distill(own1, own2, peer1, peer2, temperature=0.3, reduction=reduction))
    assert state.kl == kl
    assert state.weighted_kl == 2.5 * kl
    assert state.total == 1.25 + 2.5 * kl
    assert (state.temperature, state.weight, state.row, state.ssl) == (0.3, 2.5, 4, 1.25)
    np.testing.assert_allclose(state.P, numpy_distribution(own1, own2, 0.3), rtol=1e-12)
    np.testing.assert_allclose(state.Q, numpy_distribution(peer1, peer2, 0.3), rtol=1e-12)
    # The per-row KLs add up to the same loss under each reduction.
    divisor = {"batchmean": 6, "mean": 36, "sum": 1}[reduction]
    assert state.row_kl.sum() / divisor == pytest.approx(kl, rel=1e-12)
    assert (state.row_kl >= 0).all()


def test_distill_state_is_zero_when_student_equals_peer(outputs):
    own1, own2, _, _ = outputs
    state = distill_state(own1, own2, own1.clone(), own2.clone(), temperature=0.1, weight=1.0, ssl=0.0)
    np.testing.assert_allclose(state.P, state.Q, rtol=1e-12)
    # Zero up to rounding: its sign is not defined, so only its size is checked.
    assert abs(state.kl) < 1e-12
    assert abs(state.total) < 1e-12


def test_distill_state_rejects_bad_row_and_weight(outputs):
    with pytest.raises(ValueError, match="row must be in"):
        distill_state(*outputs, temperature=0.1, weight=1.0, ssl=0.0, row=6)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        distill_state(*outputs, temperature=0.1, weight=-1.0, ssl=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distill_state(*outputs, temperature=0.0, weight=1.0, ssl=0.0)


def test_readout_text_format():
    state = distill_state(*[torch.eye(3, dtype=torch.float64)] * 4, temperature=0.5, weight=2.0, ssl=1.5)
    # Rows of cos(e_i, e_j) / 0.5 over 3 orthonormal vectors: one logit 2, two logits 0.
    p_top = math.exp(2) / (math.exp(2) + 2)
    entropy = -(p_top * math.log(p_top) + 2 * (1 - p_top) / 2 * math.log((1 - p_top) / 2))
    assert readout_text(state) == ("τ = 0.500 | KL(Q‖P) = 0.0000 | w·KL = 0.0000 | SSL = 1.5000 | total = 1.5000 | "
                                   f"H(P) = {entropy:.4f} | H(Q) = {entropy:.4f} | log B = {math.log(3):.4f}")
    assert readout_html(state) == f'<span style="font-family: monospace">{readout_text(state)}</span>'


def test_explorer_starts_at_the_defaults(outputs):
    own1, own2, peer1, peer2 = outputs
    explorer = DistillExplorer(own1, own2, peer1, peer2, dpi=DPI)
    state = explorer.state
    assert (explorer.temperature.value, explorer.weight.value, explorer.row.value) == (0.1, 1.0, 0)
    assert explorer.row.max == 5
    assert state.ssl == float(nt_xent(own1, own2, 0.5))  # the student's SSL term, computed once
    assert state.kl == float(similarity_distill(own1, own2, peer1, peer2, temperature=0.1))
    assert state.total == state.ssl + state.kl
    assert explorer.readout.value == readout_html(state)
    assert f"KL(Q‖P) = {state.kl:.4f}" in explorer.readout.value
    assert bytes(explorer.image.value).startswith(PNG_SIGNATURE)
    assert explorer.redraws == 1
    assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()


def test_moving_the_temperature_slider_recomputes_and_redraws(outputs):
    own1, own2, peer1, peer2 = outputs
    explorer = DistillExplorer(own1, own2, peer1, peer2, ssl=2.0, weight=1.5, dpi=DPI)
    before_state, before_readout, before_png = explorer.state, explorer.readout.value, bytes(explorer.image.value)

    explorer.temperature.value = 0.5

    state = explorer.state
    kl = float(similarity_distill(own1, own2, peer1, peer2, temperature=0.5))
    assert state.temperature == 0.5
    assert state.kl == kl and state.kl != before_state.kl
    assert state.total == 2.0 + 1.5 * kl
    np.testing.assert_allclose(state.P, numpy_distribution(own1, own2, 0.5), rtol=1e-12)
    assert not np.allclose(state.P, before_state.P)
    assert explorer.readout.value == readout_html(state) != before_readout
    assert bytes(explorer.image.value) != before_png and bytes(explorer.image.value).startswith(PNG_SIGNATURE)
    assert explorer.redraws == 2


def test_moving_the_weight_slider_changes_the_total_only(outputs):
    explorer = DistillExplorer(*outputs, ssl=2.0, dpi=DPI)
    before, before_png = explorer.state, bytes(explorer.image.value)

    explorer.weight.value = 3.0

    state = explorer.state
    assert state.kl == before.kl  # the KL does not depend on its weight
    np.testing.assert_array_equal(state.P, before.P)
    np.testing.assert_array_equal(state.Q, before.Q)
    assert state.weighted_kl == 3.0 * before.kl
    assert state.total == 2.0 + 3.0 * before.kl
    assert f"w·KL = {3.0 * before.kl:.4f}" in explorer.readout.value
    assert f"total = {2.0 + 3.0 * before.kl:.4f}" in explorer.readout.value
    assert bytes(explorer.image.value) != before_png  # the loss bars moved


def test_row_slider_changes_the_row_only(outputs):
    explorer = DistillExplorer(*outputs, dpi=DPI)
    before, before_png = explorer.state, bytes(explorer.image.value)
    explorer.row.value = 3
    assert explorer.state.row == 3
    assert explorer.state.kl == before.kl
    assert bytes(explorer.image.value) != before_png


def test_sliders_clamp_to_their_ranges(outputs):
    own1, own2, peer1, peer2 = outputs
    explorer = DistillExplorer(own1, own2, peer1, peer2, ssl=1.0, dpi=DPI)
    explorer.temperature.value = 100.0
    assert explorer.temperature.value == pytest.approx(2.0, rel=1e-12)
    assert explorer.state.kl == float(similarity_distill(own1, own2, peer1, peer2, temperature=explorer.temperature.value))
    explorer.weight.value = -1.0
    assert explorer.weight.value == 0.0
    assert explorer.state.total == 1.0


def test_explorer_holds_detached_inputs(outputs):
    own1, own2, peer1, peer2 = (t.clone().requires_grad_(True) for t in outputs)
    explorer = DistillExplorer(own1, own2, peer1, peer2, dpi=DPI)
    explorer.temperature.value = 0.2
    assert not any(t.requires_grad for t in (explorer.own1, explorer.own2, explorer.peer1, explorer.peer2))
    assert all(t.grad is None for t in (own1, own2, peer1, peer2))


def test_entropy_is_the_mean_row_entropy(outputs):
    state = distill_state(*outputs, temperature=0.3, weight=1.0, ssl=0.0)
    for matrix, value in ((state.P, state.entropy_P), (state.Q, state.entropy_Q)):
        assert value == pytest.approx(float(-(matrix * np.log(matrix)).sum(axis=1).mean()), rel=1e-12)
        assert 0 < value < math.log(6)


def test_colour_scale_stays_fixed_when_the_temperature_moves(outputs):
    explorer = DistillExplorer(*outputs, dpi=DPI)
    limits = [image.get_clim() for image in explorer.drawing.images]
    assert limits == [(0, 1), (0, 1)]
    for tau in (0.03, 0.5, 2.0):
        explorer.temperature.value = tau
        assert [image.get_clim() for image in explorer.drawing.images] == limits


def test_entropy_readout_follows_the_temperature(outputs):
    explorer = DistillExplorer(*outputs, dpi=DPI)
    readouts, entropies = [], []
    for tau in (2.0, 0.5, 0.1, 0.03):
        explorer.temperature.value = tau
        readouts.append(explorer.readout.value)
        entropies.append(explorer.state.entropy_P)
        assert f"H(P) = {explorer.state.entropy_P:.4f}" in explorer.readout.value
        assert f"log B = {math.log(6):.4f}" in explorer.readout.value
    assert len(set(readouts)) == len(readouts)
    assert entropies == sorted(entropies, reverse=True)  # colder rows are sharper


@pytest.fixture(scope="module")
def trained_explorer():
    return DistillExplorer.from_published(batch=16, dpi=DPI)


def test_explorer_uses_the_published_trained_pair_by_default(trained_explorer):
    explorer = trained_explorer
    assert explorer.batch.trained and explorer.source == "published run 'fmnist_quick'"
    assert explorer.own1.shape[0] == 16 and explorer.batch.labels.tolist() == sorted(explorer.batch.labels.tolist())
    assert explorer.state.kl == float(similarity_distill(explorer.own1, explorer.own2, explorer.peer1, explorer.peer2,
                                                         temperature=0.1))


def test_entropy_readout_falls_with_the_temperature_on_trained_features(trained_explorer):
    explorer = trained_explorer
    entropies = []
    for tau in (1.0, 0.3, 0.1, 0.03):
        explorer.temperature.value = tau
        entropies.append((explorer.state.entropy_P, explorer.state.entropy_Q))
        assert f"H(Q) = {explorer.state.entropy_Q:.4f}" in explorer.readout.value
    for (p_warm, q_warm), (p_cold, q_cold) in zip(entropies, entropies[1:]):
        assert p_cold < p_warm and q_cold < q_warm
    assert entropies[0][0] > 0.5 * math.log(16) > entropies[-1][0]  # from near uniform to peaked rows


def test_explorer_falls_back_to_random_networks_without_the_published_run(tmp_path):
    explorer = DistillExplorer.from_published(batch=8, directory=tmp_path, dpi=DPI)
    assert not explorer.batch.trained and explorer.source.startswith("random networks")
