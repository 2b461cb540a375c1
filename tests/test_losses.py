"""The three losses (and the uniform-target control) against independent float64 references written with explicit loops.

The references below use numpy and Python's math on one row at a time, following the formulas of
the method (docs: shared reference, sections 1-3), and share no code with ``dogo.losses``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.utils._python_dispatch import TorchDispatchMode

from dogo import nt_xent, similarity_distill, simsiam_loss, uniform_similarity_distill

# ------------------------------------------------------------------------------- references


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))


def ref_nt_xent(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """Mean over the 2B anchors of -log(exp(s_i,pos) / sum_{j != i} exp(s_ij)), s_ij = cos(z_i, z_j) / tau."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    n, batch = len(z), len(z1)
    total = 0.0
    for i in range(n):
        positive = (i + batch) % n
        logits = [_cos(z[i], z[j]) / tau for j in range(n)]
        denominator = sum(math.exp(logits[j]) for j in range(n) if j != i)
        total += -(logits[positive] - math.log(denominator))
    return total / n


def ref_simsiam(p1, p2, z1, z2) -> float:
    """(D(p1, z2) + D(p2, z1)) / 2 with D(p, z) = -mean_i cos(p_i, z_i)."""
    batch = len(p1)
    d12 = -sum(_cos(p1[i], z2[i]) for i in range(batch)) / batch
    d21 = -sum(_cos(p2[i], z1[i]) for i in range(batch)) / batch
    return (d12 + d21) / 2


def ref_distill_sum(own1, own2, peer1, peer2, tau: float) -> float:
    """sum_i sum_j Q_ij (log Q_ij - log P_ij), rows of P, Q softmax_j(cos(a_i, b_j) / tau)."""
    batch = len(own1)
    total = 0.0
    for i in range(batch):
        own_logits = [_cos(own1[i], own2[j]) / tau for j in range(batch)]
        peer_logits = [_cos(peer1[i], peer2[j]) / tau for j in range(batch)]
        own_norm = math.log(sum(math.exp(v) for v in own_logits))
        peer_norm = math.log(sum(math.exp(v) for v in peer_logits))
        for j in range(batch):
            log_p = own_logits[j] - own_norm
            log_q = peer_logits[j] - peer_norm
            total += math.exp(log_q) * (log_q - log_p)
    return total


def ref_uniform_distill_sum(own1, own2, tau: float) -> float:
    """sum_i sum_j 1/B (log(1/B) - log P_ij), rows of P softmax_j(cos(a_i, b_j) / tau)."""
    batch = len(own1)
    total = 0.0
    for i in range(batch):
        logits = [_cos(own1[i], own2[j]) / tau for j in range(batch)]
        norm = math.log(sum(math.exp(v) for v in logits))
        total += sum((-math.log(batch) - (logits[j] - norm)) / batch for j in range(batch))
    return total


def _randn(*shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _np(*tensors):
    return [t.detach().double().numpy() for t in tensors]


# ------------------------------------------------------------------------------- values


@pytest.mark.parametrize("batch,dim,tau", [(2, 3, 0.5), (5, 7, 0.5), (8, 4, 0.1), (6, 16, 1.0)])
def test_nt_xent_matches_reference(batch, dim, tau):
    z1, z2 = _randn(batch, dim, seed=1), _randn(batch, dim, seed=2)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(ref_nt_xent(*_np(z1, z2), tau), abs=1e-10, rel=1e-10)


def test_nt_xent_default_temperature_is_half():
    z1, z2 = _randn(4, 5, seed=3), _randn(4, 5, seed=4)
    assert nt_xent(z1, z2).item() == pytest.approx(ref_nt_xent(*_np(z1, z2), 0.5), abs=1e-10)


def test_nt_xent_view_swap_symmetric():
    z1, z2 = _randn(6, 5, seed=5), _randn(6, 5, seed=6)
    assert nt_xent(z1, z2).item() == pytest.approx(nt_xent(z2, z1).item(), abs=1e-12)


@pytest.mark.parametrize("batch", [2, 3, 10])
def test_nt_xent_identical_embeddings_give_log_2b_minus_1(batch):
    z = torch.ones(batch, 4, dtype=torch.float64) * 0.3
    assert nt_xent(z, z.clone()).item() == pytest.approx(math.log(2 * batch - 1), abs=1e-12)


@pytest.mark.parametrize("batch,dim", [(2, 3), (5, 8)])
def test_simsiam_matches_reference(batch, dim):
    p1, p2, z1, z2 = (_randn(batch, dim, seed=s) for s in (10, 11, 12, 13))
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(ref_simsiam(*_np(p1, p2, z1, z2)), abs=1e-10)


def test_simsiam_is_minus_one_when_predictions_point_along_projections():
    z1, z2 = _randn(4, 6, seed=14), _randn(4, 6, seed=15)
    assert simsiam_loss(2.5 * z2, 0.5 * z1, z1, z2).item() == pytest.approx(-1.0, abs=1e-12)


@pytest.mark.parametrize("batch,dim,peer_dim,tau", [(2, 3, 3, 0.1), (5, 4, 9, 0.1), (7, 6, 2, 0.5)])
def test_similarity_distill_matches_reference(batch, dim, peer_dim, tau):
    own1, own2 = _randn(batch, dim, seed=20), _randn(batch, dim, seed=21)
    peer1, peer2 = _randn(batch, peer_dim, seed=22), _randn(batch, peer_dim, seed=23)
    expected_sum = ref_distill_sum(*_np(own1, own2, peer1, peer2), tau)
    got = {r: similarity_distill(own1, own2, peer1, peer2, tau, reduction=r).item() for r in ("batchmean", "mean", "sum")}
    assert got["sum"] == pytest.approx(expected_sum, abs=1e-10, rel=1e-10)
    assert got["batchmean"] == pytest.approx(expected_sum / batch, abs=1e-10, rel=1e-10)
    assert got["mean"] == pytest.approx(expected_sum / batch**2, abs=1e-10, rel=1e-10)
    assert got["sum"] > 0


def test_similarity_distill_default_temperature_and_reduction():
    own1, own2, peer1, peer2 = (_randn(4, 3, seed=s) for s in (24, 25, 26, 27))
    expected = ref_distill_sum(*_np(own1, own2, peer1, peer2), 0.1) / 4
    assert similarity_distill(own1, own2, peer1, peer2).item() == pytest.approx(expected, abs=1e-10)


def test_similarity_distill_reductions_are_exact_multiples():
    own1, own2, peer1, peer2 = (_randn(8, 5, seed=s) for s in (30, 31, 32, 33))
    batchmean = similarity_distill(own1, own2, peer1, peer2, reduction="batchmean")
    exact = dict(rtol=1e-14, atol=0.0)  # each call recomputes the sum, which may differ in its last bit
    torch.testing.assert_close(similarity_distill(own1, own2, peer1, peer2, reduction="mean"), batchmean / 8, **exact)
    torch.testing.assert_close(similarity_distill(own1, own2, peer1, peer2, reduction="sum"), batchmean * 8, **exact)


def test_similarity_distill_zero_for_identical_and_rescaled_peer():
    own1, own2 = _randn(6, 5, seed=34), _randn(6, 5, seed=35)
    # Zero up to rounding: its sign is not defined, so only its size is checked.
    assert abs(similarity_distill(own1, own2, own1.clone(), own2.clone()).item()) < 1e-12
    # Cosines ignore a positive scale per row, so the distributions, and the KL, do not change.
    scale1 = torch.rand(6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(36)) * 5 + 0.1
    scale2 = torch.rand(6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(37)) * 5 + 0.1
    assert abs(similarity_distill(own1, own2, own1 * scale1, own2 * scale2).item()) < 1e-12


@pytest.mark.parametrize("batch,dim,tau", [(2, 3, 0.1), (5, 4, 0.1), (7, 6, 0.5)])
def test_uniform_similarity_distill_matches_reference(batch, dim, tau):
    own1, own2 = _randn(batch, dim, seed=50), _randn(batch, dim, seed=51)
    expected_sum = ref_uniform_distill_sum(*_np(own1, own2), tau)
    got = {r: uniform_similarity_distill(own1, own2, tau, reduction=r).item() for r in ("batchmean", "mean", "sum")}
    assert got["sum"] == pytest.approx(expected_sum, abs=1e-10, rel=1e-10)
    assert got["batchmean"] == pytest.approx(expected_sum / batch, abs=1e-10, rel=1e-10)
    assert got["mean"] == pytest.approx(expected_sum / batch**2, abs=1e-10, rel=1e-10)
    assert got["sum"] > 0
    assert uniform_similarity_distill(own1, own2).item() == pytest.approx(
        ref_uniform_distill_sum(*_np(own1, own2), 0.1) / batch, abs=1e-10)  # defaults: tau 0.1, batchmean


def test_uniform_target_is_a_peer_that_sees_every_image_alike():
    """The uniform target is the similarity distribution of a peer whose outputs are all one vector
    (every cosine 1); an own model whose outputs are all one vector is already there (zero loss)."""
    own1, own2 = _randn(6, 5, seed=52), _randn(6, 5, seed=53)
    constant = torch.ones(6, 3, dtype=torch.float64) * torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    for reduction in ("batchmean", "mean", "sum"):
        torch.testing.assert_close(uniform_similarity_distill(own1, own2, 0.2, reduction),
                                   similarity_distill(own1, own2, constant, constant, 0.2, reduction),
                                   rtol=1e-12, atol=1e-12)
    # Zero up to rounding: its sign is not defined, so only its size is checked.
    assert abs(uniform_similarity_distill(constant, constant.clone()).item()) < 1e-12
    with pytest.raises(ValueError, match="reduction"):
        uniform_similarity_distill(own1, own2, reduction="none")
    with pytest.raises(ValueError, match="temperature"):
        uniform_similarity_distill(own1, own2, temperature=0.0)
    with pytest.raises(ValueError, match="matching shapes"):
        uniform_similarity_distill(own1, own2[:, :4])


def test_gradcheck_uniform_similarity_distill():
    own1 = _randn(4, 3, seed=54).requires_grad_()
    own2 = _randn(4, 3, seed=55).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: uniform_similarity_distill(a, b, 0.2), (own1, own2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_losses_accept_float32_and_float64(dtype):
    a, b, c, d = (_randn(5, 6, seed=s, dtype=dtype) for s in (40, 41, 42, 43))
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    values = {
        "nt_xent": (nt_xent(a, b), ref_nt_xent(*_np(a, b), 0.5)),
        "simsiam": (simsiam_loss(a, b, c, d), ref_simsiam(*_np(a, b, c, d))),
        "distill": (similarity_distill(a, b, c, d), ref_distill_sum(*_np(a, b, c, d), 0.1) / 5),
    }
    for name, (got, expected) in values.items():
        assert got.dtype == dtype, name
        assert got.item() == pytest.approx(expected, abs=tol, rel=tol), name


# ------------------------------------------------------------------------------- gradients


def test_similarity_distill_gradient_reaches_own_never_peer():
    own1, own2, peer1, peer2 = (_randn(5, 4, seed=s).requires_grad_() for s in (50, 51, 52, 53))
    similarity_distill(own1, own2, peer1, peer2).backward()
    assert peer1.grad is None and peer2.grad is None
    assert own1.grad is not None and own2.grad is not None
    assert own1.grad.abs().sum() > 0 and own2.grad.abs().sum() > 0


def test_simsiam_gradient_reaches_predictions_never_projections():
    p1, p2, z1, z2 = (_randn(5, 4, seed=s).requires_grad_() for s in (54, 55, 56, 57))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def test_gradcheck_nt_xent():
    z1, z2 = _randn(3, 4, seed=60).requires_grad_(), _randn(3, 4, seed=61).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.5), (z1, z2))


def test_gradcheck_simsiam():
    # z is a stop-gradient constant, so only p is checked (the numerical gradient in z is not zero).
    z1, z2 = _randn(3, 4, seed=62), _randn(3, 4, seed=63)
    p1, p2 = _randn(3, 4, seed=64).requires_grad_(), _randn(3, 4, seed=65).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: simsiam_loss(a, b, z1, z2), (p1, p2))


def test_gradcheck_similarity_distill():
    peer1, peer2 = _randn(4, 5, seed=66), _randn(4, 5, seed=67)
    own1, own2 = _randn(4, 3, seed=68).requires_grad_(), _randn(4, 3, seed=69).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: similarity_distill(a, b, peer1, peer2, 0.1), (own1, own2))


# ------------------------------------------------------------------------------- input checks

_GOOD = torch.zeros(4, 3)


@pytest.mark.parametrize("a,b,match", [
    (torch.zeros(1, 3), torch.zeros(1, 3), "at least 2"),
    (torch.zeros(4, 3), torch.zeros(5, 3), "matching shapes"),
    (torch.zeros(4, 3), torch.zeros(4, 2), "matching shapes"),
    (torch.zeros(4), torch.zeros(4), r"shape \(B, d\)"),
    (torch.zeros(4, 3, 2), torch.zeros(4, 3, 2), r"shape \(B, d\)"),
    (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3, dtype=torch.long), "floating-point"),
    (np.zeros((4, 3)), np.zeros((4, 3)), "must be a tensor"),
])
def test_bad_inputs_raise_value_error(a, b, match):
    with pytest.raises(ValueError, match=match):
        nt_xent(a, b)
    with pytest.raises(ValueError, match=match):
        simsiam_loss(a, b, a, b)
    with pytest.raises(ValueError, match=match):
        similarity_distill(a, b, a, b)


def test_mismatched_peer_batch_raises_but_peer_width_may_differ():
    with pytest.raises(ValueError, match="matching shapes"):
        similarity_distill(_GOOD, _GOOD, torch.zeros(5, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="matching shapes"):
        simsiam_loss(_GOOD, _GOOD, torch.zeros(4, 2), torch.zeros(4, 2))
    assert similarity_distill(_GOOD + 1, _GOOD + 1, torch.ones(4, 7), torch.ones(4, 7)).abs().item() < 1e-6


@pytest.mark.parametrize("tau", [0.0, -0.5, float("nan")])
def test_non_positive_temperature_raises(tau):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        nt_xent(_GOOD, _GOOD, tau)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        similarity_distill(_GOOD, _GOOD, _GOOD, _GOOD, temperature=tau)


def test_bad_reduction_raises():
    with pytest.raises(ValueError, match="reduction must be"):
        similarity_distill(_GOOD, _GOOD, _GOOD, _GOOD, reduction="none")


# ------------------------------------------------------------------------------- memory


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _largest_tensors(loss_fn, *inputs) -> tuple[int, int]:
    """(largest tensor saved for backward, largest tensor any op produced) for forward + backward."""
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with saved_tensors_hooks(pack, lambda t: t), _LargestTensor() as mode:
        loss_fn(*inputs).backward()
    return max(saved), mode.largest


def test_memory_is_quadratic_in_batch_not_cubic():
    """A broadcast [2B, 2B, d] cosine would need B*B*d floats; the matmul form needs at most 4 B^2.

    B = 2048, d = 2048 in float32 (a broadcast form would need 137 GB) on the ``meta`` device, which
    computes every shape but allocates nothing: every tensor saved for backward, and every tensor any
    op produces in forward and backward, is checked against its O(B^2) (or O(B d)) bound.
    """
    batch, dim = 2048, 2048
    a, b, c, d = (torch.empty(batch, dim, device="meta").requires_grad_() for _ in range(4))
    cases = {
        "nt_xent": (lambda x, y: nt_xent(x, y), (2 * batch) ** 2),
        "similarity_distill": (lambda x, y: similarity_distill(x, y, c, d), max(batch**2, batch * dim)),
        "simsiam_loss": (lambda x, y: simsiam_loss(x, y, c, d), batch * dim),
    }
    for name, (fn, bound) in cases.items():
        largest_saved, largest_any = _largest_tensors(fn, a, b)
        assert largest_saved <= bound, name
        # nt_xent concatenates the views (2B x d); nothing comes near B*B*d = 8.6e9 elements.
        assert largest_any <= max(bound, 2 * batch * dim), name


def test_memory_check_detects_a_broadcast_cosine():
    """The accounting above does see a [2B, 2B, d] tensor when an implementation builds one."""

    def broadcast_nt_xent(z1, z2):
        z = torch.cat([z1, z2])
        sim = torch.nn.functional.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2)
        return sim.sum()

    batch, dim = 8, 16
    z1, z2 = torch.randn(batch, dim, requires_grad=True), torch.randn(batch, dim, requires_grad=True)
    largest_saved, largest_any = _largest_tensors(broadcast_nt_xent, z1, z2)
    assert largest_any >= (2 * batch) ** 2 * dim
    assert largest_saved >= (2 * batch) ** 2 * dim
