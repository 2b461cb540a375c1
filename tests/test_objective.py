"""The DoGo objective of a cohort, checked without a Trainer against a hand-written reference."""

from __future__ import annotations

import math

import pytest
import torch

from dogo.objective import ViewOutputs, cohort_losses


def _outputs(objective: str, seed: int, batch: int = 5, dim: int = 4) -> ViewOutputs:
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(batch, dim, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(6)]
    return ViewOutputs(*t[:4], *(t[4:] if objective == "simsiam" else (None, None)))


def _cos(a, b):
    return torch.stack([torch.stack([torch.dot(x, y) / (x.norm() * y.norm()) for y in b]) for x in a])


def _reference(outputs, objectives, weights, tau_kd, reduction, ssl_taus):
    """The formula written out row by row: NT-Xent / SimSiam and KL(P_j || P_k) of softmax rows."""
    batch = outputs[0].z1.shape[0]

    def ssl(objective, o, tau):
        if objective == "simsiam":
            d = lambda p, z: -torch.stack([torch.dot(p[i], z[i].detach()) / (p[i].norm() * z[i].norm())  # noqa: E731
                                           for i in range(batch)]).mean()
            return (d(o.p1, o.z2) + d(o.p2, o.z1)) / 2
        z = torch.cat([o.z1, o.z2])
        s = _cos(z, z) / tau
        total = 0
        for i in range(2 * batch):
            pos = (i + batch) % (2 * batch)
            total = total - s[i, pos] + torch.logsumexp(torch.cat([s[i, :i], s[i, i + 1:]]), 0)
        return total / (2 * batch)

    def heads(own, other, o_own, o_other):
        a = (o_own.z1, o_own.z2) if own == "simclr" else (o_own.p1, o_own.p2)
        b = (o_other.z1, o_other.z2) if other == "simclr" or own == "simsiam" else (o_other.p1, o_other.p2)
        return a, b

    losses = []
    for k, o in enumerate(outputs):
        kl = 0
        for j, other in enumerate(outputs):
            if j == k:
                continue
            (a1, a2), (b1, b2) = heads(objectives[k], objectives[j], o, other)
            p_k = torch.softmax(_cos(a1, a2) / tau_kd, dim=1)
            p_j = torch.softmax(_cos(b1.detach(), b2.detach()) / tau_kd, dim=1)
            total = (p_j * (p_j.log() - p_k.log())).sum()
            kl = kl + total / {"batchmean": batch, "mean": batch * batch, "sum": 1}[reduction]
        s = ssl(objectives[k], o, ssl_taus[k])
        losses.append({"ssl": s, "distill": kl, "total": s + weights[k] * kl})
    return losses


@pytest.mark.parametrize("objectives, reduction", [
    (["simclr"], "batchmean"),
    (["simsiam"], "mean"),
    (["simclr", "simsiam"], "mean"),
    (["simsiam", "simsiam"], "batchmean"),
    (["simclr", "simclr"], "sum"),
    (["simclr", "simsiam", "simsiam"], "batchmean"),
    (["simsiam", "simclr", "simclr"], "mean"),
])
def test_cohort_losses_match_the_formula(objectives, reduction):
    outputs = [_outputs(obj, seed) for seed, obj in enumerate(objectives)]
    weights = [100.0, 1.0, 0.5][:len(objectives)]
    ssl_taus = [0.5, 0.2, 0.7][:len(objectives)]
    got = cohort_losses(outputs, objectives, weights, 0.1, reduction, ssl_taus)
    want = _reference(outputs, objectives, weights, 0.1, reduction, ssl_taus)
    assert len(got) == len(objectives)
    for g, w in zip(got, want):
        for term in ("ssl", "distill", "total"):
            torch.testing.assert_close(g[term].double(), torch.as_tensor(w[term]).double(), rtol=1e-5, atol=1e-6)
    if len(objectives) == 1:
        assert got[0]["distill"].item() == 0 and got[0]["total"] is not None


def test_each_peer_gets_only_its_own_gradient():
    objectives = ["simclr", "simsiam", "simclr"]
    outputs = [_outputs(obj, 10 + seed) for seed, obj in enumerate(objectives)]
    losses = cohort_losses(outputs, objectives, [1.0, 2.0, 3.0], 0.1, "batchmean")
    losses[1]["total"].backward()
    assert outputs[0].z1.grad is None and outputs[2].z1.grad is None  # peers are detached targets
    assert outputs[1].p1.grad is not None and outputs[1].p1.grad.abs().sum() > 0


def test_cohort_losses_reject_mismatched_lengths_and_objectives():
    outputs = [_outputs("simclr", 0), _outputs("simclr", 1)]
    with pytest.raises(ValueError, match="2 outputs but 1 objectives"):
        cohort_losses(outputs, ["simclr"], [1.0, 1.0])
    with pytest.raises(ValueError, match="unknown objective"):
        cohort_losses(outputs, ["simclr", "byol"], [1.0, 1.0])
    assert math.isfinite(cohort_losses(outputs, ["simclr", "simclr"], [1.0, 1.0])[0]["total"].item())


def test_two_peers_at_half_weight_teach_like_their_mean_distribution_at_full_weight():
    """configs/grids/two_teachers_cnn_12.yaml rests on this: w/2 * (KL(P_a || P) + KL(P_b || P)) differs from
    w * KL((P_a + P_b) / 2 || P) only by the peers' entropies, constants for the student, so the student's
    gradient is that of distilling, at weight w, from the mean of its two peers' similarity distributions."""
    outputs = [_outputs("simclr", 20 + seed, batch=6, dim=5) for seed in range(3)]
    student = outputs[0]

    def student_gradient(loss):
        student.z1.grad = student.z2.grad = None
        loss.backward()
        return torch.cat([student.z1.grad, student.z2.grad])

    def cohort(weight):
        return student_gradient(cohort_losses(outputs, ["simclr"] * 3, [weight, 0.0, 0.0], 0.1, "batchmean")[0]["total"])

    log_p = torch.log_softmax(_cos(student.z1, student.z2) / 0.1, dim=1)
    mean_q = sum(torch.softmax(_cos(o.z1.detach(), o.z2.detach()) / 0.1, dim=1) for o in outputs[1:]) / 2
    own_ssl = cohort_losses(outputs[:1], ["simclr"], [0.0])[0]["ssl"]
    averaged = student_gradient(own_ssl + 0.1 * (mean_q * (mean_q.log() - log_p)).sum() / 6)
    torch.testing.assert_close(cohort(0.05), averaged, rtol=1e-5, atol=1e-6)  # float32 inside cohort_losses
    # The distillation part is far above that tolerance: the full weight on each peer is another gradient.
    assert (cohort(0.1) - averaged).abs().max() > 1e-3


@pytest.mark.parametrize("objectives", [["simclr"], ["simsiam"], ["simclr", "simsiam"], ["simsiam", "simclr", "simclr"]])
def test_a_uniform_target_replaces_the_peers_for_that_peer_only(objectives):
    """A peer with target "uniform" distils towards U[i, j] = 1/B, whatever the others compute (K = 1
    included); the others' terms are those of the cohort without it."""
    outputs = [_outputs(obj, 30 + seed) for seed, obj in enumerate(objectives)]
    weights, taus = [0.3, 1.0, 2.0][:len(objectives)], [0.5, 0.2, 0.7][:len(objectives)]
    targets = ["uniform"] + ["peers"] * (len(objectives) - 1)
    got = cohort_losses(outputs, objectives, weights, 0.1, "batchmean", taus, targets)
    plain = cohort_losses(outputs, objectives, weights, 0.1, "batchmean", taus)
    own = outputs[0]
    a1, a2 = (own.z1, own.z2) if objectives[0] == "simclr" else (own.p1, own.p2)
    log_p = torch.log_softmax(_cos(a1, a2) / 0.1, dim=1)
    expected = (-math.log(5) - log_p).sum() / 5 / 5  # sum_ij 1/B (log 1/B - log P_ij), batchmean
    close = dict(rtol=1e-5, atol=1e-6)  # float32 inside cohort_losses
    torch.testing.assert_close(got[0]["distill"].double(), expected, **close)
    torch.testing.assert_close(got[0]["total"].double(), (plain[0]["ssl"] + 0.3 * expected).double(), **close)
    assert got[0]["distill"].item() > 0.1
    for g, p in zip(got[1:], plain[1:]):
        for term in ("ssl", "distill", "total"):
            torch.testing.assert_close(g[term], p[term], rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown distillation target 'mean'"):
        cohort_losses(outputs, objectives, weights, 0.1, "batchmean", taus, ["mean"] * len(objectives))
    with pytest.raises(ValueError, match="and 2 targets"):
        cohort_losses(outputs[:1], objectives[:1], weights[:1], 0.1, "batchmean", taus[:1], ["peers", "peers"])
