"""Classifiers on frozen features and the label manipulations of the evaluation protocols.

Everything here works on precomputed feature tensors (N, D) and integer labels (N,), so one feature
extraction serves every protocol:

- ``linear_probe`` / ``fit_linear_probe``: multinomial logistic regression on frozen features, in two
  protocols. ``fast`` (default): features standardised with the training statistics, full-batch
  L-BFGS (preconditioned by whitening) on  mean_i CE(x_i W + b, y_i) + wd/2 * ||W||^2,  wd chosen
  from five values on a held-out validation split (warm-started from strong to weak
  regularisation), then refit on the whole training set.
  ``authors``: the released code's recipe (raw, un-normalised features, Adam lr 3e-4 with weight decay
  1e-6, batch 64, a stratified 85/15 train/validation split, the best validation epoch is scored on
  test). How it differs from their code: the number of epochs is ``epochs`` (default 100, the T_max
  of their scheduler; their template's ``eval.epochs`` is 2); the test set is scored in full (their
  test loader drops the last batch); validation accuracy is divided by the validation-set size
  (their code divides by a different count); the split is stratified and seeded.
- ``class_balanced_subset``: the 1 % / 10 % label subsets (same count per class, seeded).
- ``symmetric_label_noise`` / ``asymmetric_label_noise``: exact, seeded label corruption. The noisy-label
  protocol flips exactly round(r * N) training labels, each to a different class (never back to its
  own), and the probe's validation split is cut from the same noisy labels (the realistic setting:
  someone training on noisy labels has no clean ones to validate on); the test set stays clean.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .features import report_ks, topk_accuracy

Tensor = torch.Tensor

# Weight decays tried by the fast probe, strongest first (each fit warm-starts the next).
WEIGHT_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
DEFAULT_WEIGHT_DECAY = 1e-2  # used when the labelled set is too small for a validation split
SEARCH_SAMPLES = 15_000  # the weight-decay search fits on at most this many samples (then a full refit)


# Below this many feature values a CPU probe runs on one thread: its operations are too small to
# share, and when other processes hold the cores every thread barrier waits for a descheduled one.
SINGLE_THREAD_BELOW = 4_000_000


def one_thread_is_better(small: bool) -> bool:
    """Whether fine-grained or memory-bound CPU work should run on one thread: when it is small, or
    when torch has two threads or fewer. A second thread then gains little on such work, and when the
    other core is busy every barrier stalls (benchmarks/EVAL_RESULTS.md has the timings)."""
    return small or torch.get_num_threads() <= 2


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Run the block with at most ``n`` CPU threads in torch and in OpenMP/BLAS pools (None: unchanged)."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, before)))
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _num_classes(*label_sets: Tensor) -> int:
    return int(max(int(y.max()) for y in label_sets if len(y)) + 1)


# --------------------------------------------------------------------------------- label subsets


def stratified_split(labels: Tensor, val_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split indices into (fit, validation) with about ``val_fraction`` of every class in validation.

    A class with n images puts round(val_fraction * n) in validation, but keeps at least one image on
    each side when it has two or more; a class with a single image stays in the fit part. Seeded.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    gen = _generator(seed)
    fit, val = [], []
    for cls in torch.unique(labels):
        idx = (labels == cls).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = round(val_fraction * len(idx))
        if len(idx) >= 2 and val_fraction > 0:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return torch.cat(fit).sort().values, torch.cat(val).sort().values


def class_balanced_subset(labels: Tensor, fraction: float, seed: int = 0, num_classes: int | None = None) -> Tensor:
    """Indices of a class-balanced subset holding ``fraction`` of the labels (the 1 % / 10 % protocols).

    Every class gets the same count  m = max(1, round(fraction * N / C))  (a class with fewer images
    gives all it has). The same seed gives the same subset. Returned sorted.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    num_classes = num_classes or _num_classes(labels)
    per_class = max(1, round(fraction * len(labels) / num_classes))
    gen = _generator(seed)
    chosen = []
    for cls in range(num_classes):
        idx = (labels == cls).nonzero().flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(chosen).sort().values


def symmetric_label_noise(labels: Tensor, rate: float, num_classes: int | None = None, seed: int = 0) -> Tensor:
    """Labels with exactly round(rate * N) entries replaced by a different class, chosen uniformly
    among the C - 1 wrong ones. Seeded; the input is not modified.

    (Some papers draw the new label among all C classes, so that part of the "noise" keeps the true
    label; here the stated rate is the exact fraction of wrong labels.)
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    num_classes = num_classes or _num_classes(labels)
    if num_classes < 2:
        raise ValueError("label noise needs at least 2 classes")
    gen = _generator(seed)
    noisy = labels.clone()
    flip = torch.randperm(len(labels), generator=gen)[:round(rate * len(labels))]
    # An offset in 1..C-1 added modulo C is a uniform draw among the wrong classes.
    offset = torch.randint(1, num_classes, (len(flip),), generator=gen)
    noisy[flip] = (labels[flip] + offset) % num_classes
    return noisy


def asymmetric_label_noise(labels: Tensor, rate: float, mapping: Mapping[int, int], seed: int = 0) -> Tensor:
    """Class-dependent noise: in every source class c of ``mapping``, exactly round(rate * n_c) labels
    become ``mapping[c]`` (e.g. truck -> automobile). Classes not in the mapping stay clean. Seeded.

    Rates of 0.5 and above make the wrong class the majority of a source class; use rates below 0.5.
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    gen = _generator(seed)
    noisy = labels.clone()
    for src, dst in sorted(mapping.items()):
        idx = (labels == src).nonzero().flatten()
        flip = idx[torch.randperm(len(idx), generator=gen)[:round(rate * len(idx))]]
        noisy[flip] = dst
    return noisy


# Class-pair flips between visually similar classes, used by the asymmetric noise protocol.
# CIFAR-10: the common benchmark's flips (truck->automobile, bird->airplane, deer->horse, cat<->dog).
FLIP_MAPS: dict[str, dict[int, int]] = {
    "cifar10": {9: 1, 2: 0, 4: 7, 3: 5, 5: 3},
    "cifar10_imbalanced": {9: 1, 2: 0, 4: 7, 3: 5, 5: 3},
    # Fashion-MNIST: T-shirt<->Shirt, Pullover<->Coat, Sandal<->Sneaker.
    "fashion_mnist": {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 7: 5},
}


def flip_map(dataset: str, num_classes: int) -> dict[int, int]:
    """The dataset's class-pair flips, or c -> (c + 1) mod C for datasets without a known map."""
    if dataset in FLIP_MAPS:
        return dict(FLIP_MAPS[dataset])
    return {c: (c + 1) % num_classes for c in range(num_classes)}


# --------------------------------------------------------------------------------- linear probe


@dataclass
class LinearProbe:
    """A trained linear classifier on (optionally standardised) features: scores = ((x - mean) / std) W + b."""

    mean: Tensor  # (D,)
    std: Tensor  # (D,)
    weight: Tensor  # (D, C)
    bias: Tensor  # (C,)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[1]

    @torch.no_grad()
    def scores(self, feats: Tensor, chunk: int = 65536) -> Tensor:
        """Class scores (N, C) on the probe's device."""
        out = []
        for start in range(0, len(feats), chunk):
            x = feats[start:start + chunk].to(self.weight.device, torch.float32)
            out.append(((x - self.mean) / self.std) @ self.weight + self.bias)
        return torch.cat(out) if out else torch.empty(0, self.num_classes, device=self.weight.device)

    def evaluate(self, feats: Tensor, labels: Tensor) -> dict[str, float]:
        """Top-1 (and top-5 where classes > 10) in % on the given set, every sample counted."""
        return topk_accuracy(self.scores(feats), labels, report_ks(self.num_classes))


class _PreconditionedLogistic:
    """Multinomial logistic regression with ridge penalty, solved by full-batch L-BFGS in whitened
    coordinates.

    Objective (x standardised, W (D, C), b (C,)):
        L(W, b) = mean_i CE(x_i W + b, y_i) + wd / 2 * ||W||^2.
    L-BFGS converges slowly when features are correlated (the Hessian inherits the condition number
    of their covariance S). We therefore optimise V with W = P V, where P = (S + eps I)^(-1/2): the
    data term sees whitened inputs x P (well conditioned), and the penalty becomes
    wd / 2 * tr(V^T Q V) with Q = P^2, so the minimiser is the same W as in the plain problem.
    Loss and gradients are written out by hand (grad_V = (x P)^T (softmax - onehot) / N + wd Q V)
    because autograd's transposed matmul of a tall matrix is several times slower on the CPU.
    """

    def __init__(self, x: Tensor, eps: float = 1e-2):
        dim = x.shape[1]
        cov = (x.T @ x) / max(1, len(x) - 1)  # x is centred (standardised)
        # float64 on the CPU: a D x D eigendecomposition is cheap, and MPS has no float64
        evals, evecs = torch.linalg.eigh(cov.double().cpu())
        evals = evals.clamp_min(0) + eps
        self.precond = ((evecs * evals.rsqrt()) @ evecs.T).float().to(x.device)  # P = (S + eps I)^(-1/2)
        self.penalty = ((evecs * evals.reciprocal()) @ evecs.T).float().to(x.device)  # Q = P^2
        self.dim = dim

    def whiten(self, x: Tensor) -> Tensor:
        return x @ self.precond

    def fit(self, xw: Tensor, y: Tensor, v: Tensor, bias: Tensor, wd: float, max_iter: int) -> int:
        """Minimise in place over (v, bias) on whitened inputs ``xw``; returns the L-BFGS iterations."""
        n = len(xw)
        rows = torch.arange(n, device=xw.device)
        opt = torch.optim.LBFGS([v, bias], lr=1.0, max_iter=max_iter, history_size=10,
                                tolerance_grad=1e-5, tolerance_change=1e-9, line_search_fn="strong_wolfe")

        def closure():
            log_p = torch.log_softmax(torch.addmm(bias, xw, v), dim=1)
            qv = self.penalty @ v
            loss = -log_p[rows, y].sum() / n + 0.5 * wd * (v * qv).sum()
            g = log_p.exp_()  # softmax, in place
            g[rows, y] -= 1
            g /= n  # (N, C): d mean-CE / d logits
            v.grad = (torch.mm(g.T, xw).T + wd * qv).contiguous()  # (C, N) @ (N, D): the fast layout
            bias.grad = g.sum(dim=0)
            return loss

        with torch.no_grad():
            opt.step(closure)
        return int(opt.state[opt._params[0]].get("n_iter", 0))


def _fit_fast(feats: Tensor, labels: Tensor, num_classes: int, seed: int, val_fraction: float,
              weight_decays: Sequence[float], max_iter: int, refit: bool, device,
              unlabelled: Tensor | None, search_samples: int | None) -> LinearProbe:
    x = feats.to(device, torch.float32)
    y = labels.to(device)
    # Standardise with training statistics (features only, no labels): one weight-decay grid then
    # suits every backbone, whatever the scale of its features. With few labels, the statistics come
    # from the unlabelled training features when given (estimated from 10 samples they are noise).
    pool = x if unlabelled is None else unlabelled.to(device, torch.float32)
    mean = pool.mean(dim=0)
    std = pool.std(dim=0).clamp_min(1e-6)
    x = (x - mean) / std
    solver = _PreconditionedLogistic(x if unlabelled is None else (pool - mean) / std)
    xw = solver.whiten(x)
    fit_idx, val_idx = stratified_split(labels, val_fraction, seed)
    n_all = len(labels)
    info: dict[str, Any] = {"protocol": "fast", "n_fit": len(fit_idx), "n_val": len(val_idx)}
    if search_samples is not None and len(fit_idx) > search_samples:
        # The search needs the ranking of the weight decays, not the last digit: a stratified subset
        # of the fit split is enough and costs a fraction of the time.
        keep = class_balanced_subset(labels[fit_idx], search_samples / len(fit_idx), seed, num_classes)
        fit_idx = fit_idx[keep]
        info["n_search"] = len(fit_idx)
    fit_idx, val_idx = fit_idx.to(device), val_idx.to(device)
    v = torch.zeros(x.shape[1], num_classes, device=device)
    bias = torch.zeros(num_classes, device=device)
    decays = sorted({float(w) for w in weight_decays}, reverse=True)

    def finish(v_: Tensor, bias_: Tensor) -> LinearProbe:
        return LinearProbe(mean, std, solver.precond @ v_, bias_, info)

    if len(val_idx) == 0 or len(decays) == 1:
        chosen = decays[0] if len(decays) == 1 else DEFAULT_WEIGHT_DECAY
        iters = solver.fit(xw, y, v, bias, chosen, max_iter)
        info.update(weight_decay=chosen, val_top1=float("nan"), iterations=iters)
        return finish(v, bias)
    x_fit, y_fit, x_val, y_val = xw[fit_idx], y[fit_idx], xw[val_idx], y[val_idx]
    # The grid holds weight decays for the final fit on all n_all labels. A fit on n samples uses
    # wd * n_all / n: the same total penalty against a sum of n losses (the Bayesian prior's strength
    # lambda = wd * n_all), so the value chosen on the smaller fit split carries over.
    scale = n_all / len(fit_idx)
    best = (-1.0, None, None, None)
    path, iters = {}, 0
    for wd in decays:  # strongest first; each fit starts from the previous (stronger) solution
        iters += solver.fit(x_fit, y_fit, v, bias, wd * scale, max_iter)
        acc = 100.0 * (torch.addmm(bias, x_val, v).argmax(1) == y_val).float().mean().item()
        path[wd] = acc
        if acc > best[0]:  # strict: on a tie the stronger regularisation wins
            best = (acc, wd, v.clone(), bias.clone())
    val_top1, chosen, v, bias = best
    if refit:  # the chosen weight decay on every training label (fit + validation)
        iters += solver.fit(xw, y, v, bias, chosen, max_iter)
    info.update(weight_decay=chosen, val_top1=val_top1, iterations=iters, val_path=path)
    return finish(v, bias)


def _fit_authors(feats: Tensor, labels: Tensor, num_classes: int, seed: int, val_fraction: float,
                 epochs: int, batch_size: int, lr: float, device, weight_decay: float = 1e-6) -> LinearProbe:
    x = feats.to(device, torch.float32)
    y = labels.to(device)
    fit_idx, val_idx = stratified_split(labels, val_fraction, seed)
    fit_idx, val_idx = fit_idx.to(device), val_idx.to(device)
    gen = _generator(seed)
    layer = torch.nn.Linear(x.shape[1], num_classes)
    bound = 1 / math.sqrt(x.shape[1])  # nn.Linear's own initialisation, drawn from our seeded generator
    with torch.no_grad():
        layer.weight.copy_(torch.empty_like(layer.weight).uniform_(-bound, bound, generator=gen))
        layer.bias.copy_(torch.empty_like(layer.bias).uniform_(-bound, bound, generator=gen))
    layer = layer.to(device)
    opt = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    x_fit, y_fit = x[fit_idx], y[fit_idx]
    best_acc, best_epoch, best_state = -1.0, 0, None
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x_fit), generator=gen).to(device)
        for start in range(0, len(order), batch_size):  # every batch, the last (short) one included
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(layer(x_fit[batch]), y_fit[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if len(val_idx):
            with torch.no_grad():
                # Correct predictions over the number of validation samples (their code divided by a
                # different count).
                acc = 100.0 * (layer(x[val_idx]).argmax(1) == y[val_idx]).float().mean().item()
        else:
            acc = float("nan")
        if best_state is None or acc > best_acc:
            best_acc, best_epoch = acc, epoch
            best_state = (layer.weight.detach().T.clone(), layer.bias.detach().clone())
    weight, bias = best_state
    dim = x.shape[1]
    info = {"protocol": "authors", "n_fit": len(fit_idx), "n_val": len(val_idx), "val_top1": best_acc,
            "best_epoch": best_epoch, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "weight_decay": weight_decay}
    return LinearProbe(torch.zeros(dim, device=device), torch.ones(dim, device=device), weight, bias, info)


def fit_linear_probe(feats: Tensor, labels: Tensor, *, protocol: str = "fast", seed: int = 0,
                     num_classes: int | None = None, val_fraction: float = 0.15,
                     weight_decays: Sequence[float] = WEIGHT_DECAYS, max_iter: int = 30, refit: bool = True,
                     epochs: int = 100, batch_size: int = 64, lr: float = 3e-4,
                     device: torch.device | str | None = None, unlabelled: Tensor | None = None,
                     search_samples: int | None = SEARCH_SAMPLES) -> LinearProbe:
    """Train a linear probe on frozen features (N, D) with labels (N,) in 0..C-1.

    ``protocol="fast"``: standardised features, full-batch L-BFGS (at most ``max_iter`` iterations per
    fit), weight decay chosen from ``weight_decays`` on a stratified ``val_fraction`` split (fitting at
    most ``search_samples`` of the rest, with the decay rescaled to that size), then refit on all N
    (``refit``), warm-started. ``protocol="authors"``: Adam(``lr``, weight decay 1e-6), ``batch_size``,
    ``epochs``, raw features, the best validation epoch kept (see the module doc for how it differs
    from the authors' code). ``info`` records the chosen hyperparameters and validation top-1.
    ``unlabelled``: features of all training images (labels unused), for the fast protocol's
    standardisation statistics when ``feats`` is a small labelled subset of them.
    """
    if len(feats) != len(labels):
        raise ValueError(f"{len(feats)} feature rows but {len(labels)} labels")
    if len(feats) == 0:
        raise ValueError("no training samples for the linear probe")
    num_classes = num_classes or _num_classes(labels)
    device = torch.device(device) if device is not None else feats.device
    labels = labels.long().cpu()
    if protocol not in ("fast", "authors"):
        raise ValueError(f"unknown probe protocol {protocol!r}; choose 'fast' or 'authors'")
    # Mini-batches of 64 and full-batch products over a tall thin matrix: one CPU thread is enough.
    small = protocol == "authors" or feats.numel() < SINGLE_THREAD_BELOW
    with cpu_threads(1 if device.type == "cpu" and one_thread_is_better(small) else None):
        if protocol == "fast":
            return _fit_fast(feats, labels, num_classes, seed, val_fraction, weight_decays, max_iter, refit, device,
                             unlabelled, search_samples)
        return _fit_authors(feats, labels, num_classes, seed, val_fraction, epochs, batch_size, lr, device)


def linear_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor, *,
                 protocol: str = "fast", seed: int = 0, num_classes: int | None = None, **kwargs) -> dict[str, Any]:
    """Train a linear probe (see ``fit_linear_probe``) and score it once on the full test set.

    Returns ``{"top1", ["top5" if classes > 10], "val_top1", <chosen hyperparameters>}``, accuracies in %.
    """
    num_classes = num_classes or _num_classes(train_labels, test_labels)
    probe = fit_linear_probe(train_feats, train_labels, protocol=protocol, seed=seed, num_classes=num_classes,
                             **kwargs)
    result = probe.evaluate(test_feats, test_labels)
    result.update({k: v for k, v in probe.info.items() if k != "val_path"})
    return result
