"""The evaluation suite: every protocol, for every peer of every run, as one tidy table.

    >>> from dogo.evaluate import evaluate_run, compare_runs                  # doctest: +SKIP
    >>> df = evaluate_run("runs/dogo-20261126-101500", limit=5000)           # doctest: +SKIP
    >>> both = compare_runs(["runs/alone", "runs/dogo"], out_dir="runs/cmp")  # doctest: +SKIP

or from the command line: ``dogo eval RUN_DIR [RUN_DIR ...] --protocols knn linear --limit 5000``.

Protocols (all on frozen backbone features; the encoder never changes):

- ``knn``: weighted kNN monitor (cosine, k = 200, temperature 0.1, train features as the bank).
- ``linear``: linear probe (``dogo.probes``), ``fast`` or the ``authors`` protocol, scored once on
  the full test set. ``authors``: Adam 3e-4, weight decay 1e-6, batch 64, 85/15 split, best
  validation epoch, ``probe_epochs`` epochs (default 100; their template's ``eval.epochs`` is 2),
  with their defects fixed (full test set, validation accuracy over the validation-set size).
- ``limited``: the probe on class-balanced 1 % and 10 % label subsets, one per seed.
- ``noisy``: the probe on labels with symmetric (and optionally asymmetric) noise, clean test set.
  Exactly round(r * N) training labels are flipped, each to a different class; the probe's
  validation split sees the same noisy labels (the realistic setting).
- ``transfer``: the probe trained and tested on another dataset (Fashion-MNIST -> digits offline).
- ``corruptions``: the clean probe scored on corrupted test sets (8 corruptions x 5 severities), on
  the published CIFAR-10-C severity ladder (``corruption_ladder="cifar10c"``) or the kit's stronger
  one (``"strong"``); every row names its ladder in the ``ladder`` column.
- ``tsne``: a 2-D t-SNE of class-balanced test features, drawn per peer; the silhouette score of the
  same points is computed in feature space (L2-normalised features), not on the t-SNE coordinates.

Features are extracted once per (checkpoint, peer, dataset, split, limit), with the backbone in eval
mode (BatchNorm folded into the convolutions), the test transform, no gradients, on the best device;
they are kept in memory and in ``<run>/eval/features_<peer>_<dataset>_<split>.pt`` so that every
protocol, and the next call, reuses them. The table has one row per (run, peer, protocol, setting,
metric, seed) and is written to ``<run>/eval/results.csv`` and ``results.json`` with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .cli import SeedList
from .config import build_validated, validate
from .data import ImageDataset, load_dataset
from .errors import ConfigError, DataError, DogoError, did_you_mean
from .features import extract_features, fold_batchnorm, knn_accuracy
from .probes import (
    LinearProbe,
    asymmetric_label_noise,
    class_balanced_subset,
    cpu_threads,
    fit_linear_probe,
    flip_map,
    one_thread_is_better,
    symmetric_label_noise,
)
from .runs import LoadedRun, encoder_transform, load_run
from .shift import CORRUPTIONS, DEFAULT_LADDER, LADDERS, TRANSFER_TARGETS, adapt_channels, corrupt
from .viz import draw_embeddings, model_label, plot_summary

PROTOCOLS = ("knn", "linear", "limited", "noisy", "transfer", "corruptions", "tsne")
COLUMNS = ["run", "peer", "protocol", "setting", "group", "level", "metric", "value", "seed", "dataset",
           "n_train", "n_test", "backbone", "width", "objective", "epoch", "run_dir", "ladder"]

# ============================================================================ features, cached

_FEATURES: OrderedDict[tuple, torch.Tensor] = OrderedDict()
MEMORY_BUDGET = 2 * 2**30  # bytes of features kept in memory (least recently used dropped first)
_BACKBONES: OrderedDict[tuple, torch.nn.Module] = OrderedDict()
MAX_BACKBONES = 8  # prepared (folded) backbones kept, least recently used dropped first
_EMBEDDINGS: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
MAX_EMBEDDINGS = 32  # t-SNE embeddings kept


def clear_cache() -> None:
    """Forget the in-memory features, prepared backbones and t-SNE embeddings (the files under
    <run>/eval stay)."""
    _FEATURES.clear()
    _BACKBONES.clear()
    _EMBEDDINGS.clear()


def _keep(cache: OrderedDict, key: tuple, value: Any, max_items: int) -> Any:
    """Store ``value`` as the most recently used entry; drop the least recently used beyond ``max_items``."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > max_items:
        cache.popitem(last=False)
    return value


def _remember(key: tuple, feats: torch.Tensor) -> None:
    _FEATURES[key] = feats
    _FEATURES.move_to_end(key)
    while len(_FEATURES) > 1 and sum(f.numel() * f.element_size() for f in _FEATURES.values()) > MEMORY_BUDGET:
        _FEATURES.popitem(last=False)


def _inference_backbone(run: LoadedRun, peer: str) -> torch.nn.Module:
    """A copy of the peer's backbone for inference: eval mode, BatchNorm folded into the preceding
    convolutions (same numbers, fewer passes over memory), channels-last layout."""
    key = (run.fingerprint, peer, str(run.device))
    if key in _BACKBONES:
        _BACKBONES.move_to_end(key)
        return _BACKBONES[key]
    backbone = fold_batchnorm(run[peer].backbone).to(run.device, memory_format=torch.channels_last)
    return _keep(_BACKBONES, key, backbone, MAX_BACKBONES)


def peer_features(run: LoadedRun, peer: str, data: ImageDataset, *, limit: int | None = None, variant: str = "clean",
             cache_dir: str | Path | None = None, batch_size: int = 1024, remember: bool = True) -> torch.Tensor:
    """Frozen backbone features (N, D), float32 on the CPU, of ``data``'s images for one peer.

    Cached in memory under (checkpoint fingerprint, peer, dataset, split, limit, variant, N) and, when
    ``cache_dir`` is given, in ``cache_dir/features_<peer>_<dataset>_<split>[_n<limit>][_<variant>].pt``
    (reused only while the checkpoint's mtime and size are unchanged).
    """
    if peer not in run:
        raise DogoError(f"run {run.name} has no peer {peer!r}; its peers are {', '.join(run)}")
    key = (run.fingerprint, peer, data.name, data.split, limit, variant, len(data))
    if key in _FEATURES:
        _FEATURES.move_to_end(key)
        return _FEATURES[key]
    file = None
    if cache_dir is not None:
        suffix = (f"_n{limit}" if limit else "") + ("" if variant == "clean" else f"_{variant}")
        file = Path(cache_dir) / f"features_{peer}_{data.name}_{data.split}{suffix}.pt"
        if file.is_file():
            try:
                saved = torch.load(file, map_location="cpu", weights_only=True)
                if tuple(saved["fingerprint"][1:]) == run.fingerprint[1:] and saved["features"].shape[0] == len(data):
                    if remember:
                        _remember(key, saved["features"])
                    return saved["features"]
            except Exception:  # an unreadable cache file is simply recomputed
                pass
    images = adapt_channels(data.images, run.in_channels)
    feats = extract_features(_inference_backbone(run, peer), images, encoder_transform(run), batch_size=batch_size,
                             device=run.device, channels_last=True)
    if remember:
        _remember(key, feats)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"fingerprint": list(run.fingerprint), "features": feats, "labels": data.labels}, file)
    return feats


# ============================================================================ t-SNE and figures


def balanced_indices(labels: torch.Tensor, points: int, seed: int = 0) -> torch.Tensor:
    """About ``points`` indices with the same count per class (seeded), for t-SNE subsets."""
    num_classes = int(labels.max()) + 1
    if points >= len(labels):
        return torch.arange(len(labels))
    return class_balanced_subset(labels, points / len(labels), seed, num_classes)




def tsne_embed(feats: torch.Tensor, labels: torch.Tensor, points: int = 2000, seed: int = 0,
               perplexity: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE (scikit-learn, PCA initialisation, fixed seed) of a class-balanced subset.

    Features are L2-normalised (the geometry the kNN monitor and the SSL losses use) and reduced to 50
    principal components first, the usual speed-up. Returns (embedding (n, 2), labels (n,))."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    idx = balanced_indices(labels, points, seed)
    x = torch.nn.functional.normalize(feats[idx].float(), dim=1).numpy()
    y = labels[idx].numpy()
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    tsne = TSNE(2, perplexity=min(perplexity, (len(x) - 1) / 3), init="pca", learning_rate="auto",
                random_state=seed)
    # Small embeddings, and any with two CPU threads or fewer, run on one thread (see one_thread_is_better).
    with cpu_threads(1 if one_thread_is_better(len(x) <= 2500) else None):
        return tsne.fit_transform(x).astype(np.float32), y


def tsne_plot(features_by_name: dict[str, tuple[torch.Tensor, torch.Tensor]], path: str | Path | None = None, *,
              points: int = 2000, seed: int = 0, class_names: Sequence[str] | None = None,
              title: str | None = None):
    """t-SNE of each (features, labels) pair, drawn side by side (e.g. ``{"alone": ..., "with peer": ...}``),
    saved as PNG at ``path`` if given. Returns the matplotlib Figure (shown inline in notebooks)."""
    panels = {name: tsne_embed(f, y, points, seed) for name, (f, y) in features_by_name.items()}
    return draw_embeddings(panels, path, class_names=class_names, title=title)


# ============================================================================ the protocols


@dataclass
class EvalSettings:
    """Knobs of the protocols, validated like a run config (``config.build_validated``): a wrong name,
    type or value fails with one ``ConfigError`` naming it. Defaults are the field's conventions."""

    probe: str = field(default="fast", metadata=validate(choices=("fast", "authors")))  # fast: L-BFGS, tuned wd
    probe_epochs: int = field(default=100, metadata=validate(ge=1))  # authors' protocol only
    knn_k: int = field(default=200, metadata=validate(ge=1))
    knn_temperature: float = field(default=0.1, metadata=validate(gt=0.0))
    label_fractions: tuple[float, ...] = field(default=(0.01, 0.1), metadata=validate(gt=0.0, le=1.0))
    noise_rates: tuple[float, ...] = field(default=(0.2, 0.4, 0.6, 0.8), metadata=validate(ge=0.0, lt=1.0))
    # add "asymmetric" for class-pair flips (rates < 0.5)
    noise_kinds: tuple[str, ...] = field(default=("symmetric",), metadata=validate(choices=("symmetric", "asymmetric")))
    # None: the defaults for the run's dataset, if present
    transfer_targets: tuple[str, ...] | None = None
    corruptions: tuple[str, ...] = field(default=CORRUPTIONS, metadata=validate(choices=CORRUPTIONS))
    # "cifar10c" (published CIFAR-10-C parameters) or "strong" (the kit's own)
    corruption_ladder: str = field(default=DEFAULT_LADDER, metadata=validate(choices=tuple(LADDERS)))
    severities: tuple[int, ...] = field(default=(1, 2, 3, 4, 5), metadata=validate(choices=(1, 2, 3, 4, 5)))
    # test images used per corruption (None: the whole test set)
    corruption_limit: int | None = field(default=None, metadata=validate(ge=1))
    tsne_points: int = field(default=2000, metadata=validate(ge=10))
    cache: bool = True  # keep features in <out_dir>/features_*.pt


@dataclass
class _Context:
    run: LoadedRun
    train: ImageDataset
    test: ImageDataset
    limit: int | None
    seeds: tuple[int, ...]
    settings: EvalSettings
    out_dir: Path
    progress: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    probes: dict[str, LinearProbe] = field(default_factory=dict)
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    transfer: list[tuple[ImageDataset, ImageDataset]] | None = None  # loaded once, used for every peer

    @property
    def cache_dir(self) -> Path | None:
        return self.out_dir if self.settings.cache else None

    def say(self, message: str) -> None:
        if self.progress:
            print(message, flush=True)

    def add(self, peer: str, protocol: str, setting: str, metrics: dict[str, float], *, group: str = "",
            level: float = math.nan, seed: int | None = None, dataset: str | None = None,
            n_train: int | None = None, n_test: int | None = None, ladder: str = "") -> None:
        peer_cfg = next(p for p in self.run.config.peers if p.name == peer)
        for metric, value in metrics.items():
            if isinstance(value, (dict, str)) or value is None:
                continue
            self.rows.append({
                "run": self.run.name, "peer": peer, "protocol": protocol, "setting": setting, "group": group,
                "level": float(level), "metric": metric, "value": float(value),
                "seed": math.nan if seed is None else int(seed), "dataset": dataset or self.train.name,
                "n_train": n_train if n_train is not None else len(self.train),
                "n_test": n_test if n_test is not None else len(self.test),
                "backbone": peer_cfg.backbone, "width": peer_cfg.width, "objective": peer_cfg.objective,
                "epoch": self.run.epoch, "run_dir": str(self.run.run_dir), "ladder": ladder,
            })

    def probe_kwargs(self) -> dict[str, Any]:
        return {"protocol": self.settings.probe, "epochs": self.settings.probe_epochs, "device": self.run.device}


def _probe_metrics(probe: LinearProbe, feats: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Test top-1/top-5 plus the probe's validation accuracy and chosen hyperparameter."""
    out = probe.evaluate(feats, labels)
    out["val_top1"] = probe.info.get("val_top1", math.nan)
    if "weight_decay" in probe.info:
        out["weight_decay"] = probe.info["weight_decay"]
    if "best_epoch" in probe.info:
        out["best_epoch"] = probe.info["best_epoch"]
    return out


def _clean_probe(ctx: _Context, peer: str, ftr: torch.Tensor) -> LinearProbe:
    """The probe on all clean training labels (first seed), shared by ``linear`` and ``corruptions``."""
    if peer not in ctx.probes:
        ctx.probes[peer] = fit_linear_probe(ftr, ctx.train.labels, seed=ctx.seeds[0],
                                            num_classes=ctx.train.num_classes, **ctx.probe_kwargs())
    return ctx.probes[peer]


def _run_knn(ctx, peer, ftr, fte):
    s = ctx.settings
    metrics = knn_accuracy(ftr, ctx.train.labels, fte, ctx.test.labels, ctx.train.num_classes, s.knn_k, s.knn_temperature)
    ctx.add(peer, "knn", f"k={s.knn_k} T={s.knn_temperature:g}", metrics, level=s.knn_k)


def _run_linear(ctx, peer, ftr, fte):
    probe = _clean_probe(ctx, peer, ftr)
    ctx.add(peer, "linear", ctx.settings.probe, _probe_metrics(probe, fte, ctx.test.labels), seed=ctx.seeds[0])


def _run_limited(ctx, peer, ftr, fte):
    for fraction in ctx.settings.label_fractions:
        for seed in ctx.seeds:
            idx = class_balanced_subset(ctx.train.labels, fraction, seed, ctx.train.num_classes)
            # The unlabelled training features (no labels) give the standardisation statistics.
            probe = fit_linear_probe(ftr[idx], ctx.train.labels[idx], seed=seed, num_classes=ctx.train.num_classes,
                                     unlabelled=ftr, **ctx.probe_kwargs())
            ctx.add(peer, "limited", f"{100 * fraction:g}% labels", _probe_metrics(probe, fte, ctx.test.labels),
                    group="fraction", level=fraction, seed=seed, n_train=len(idx))


def _run_noisy(ctx, peer, ftr, fte):
    labels, num_classes = ctx.train.labels, ctx.train.num_classes
    for kind in ctx.settings.noise_kinds:
        rates = ctx.settings.noise_rates if kind == "symmetric" else [r for r in ctx.settings.noise_rates if r < 0.5]
        for rate in rates:
            for seed in ctx.seeds:
                if kind == "symmetric":
                    noisy = symmetric_label_noise(labels, rate, num_classes, seed)
                else:
                    noisy = asymmetric_label_noise(labels, rate, flip_map(ctx.train.name, num_classes), seed)
                # The validation split (choice of weight decay / epoch) sees the same noisy labels:
                # clean labels are not available to someone training on noisy ones.
                probe = fit_linear_probe(ftr, noisy, seed=seed, num_classes=num_classes, **ctx.probe_kwargs())
                metrics = _probe_metrics(probe, fte, ctx.test.labels)
                metrics["noisy_val_top1"] = metrics.pop("val_top1")
                ctx.add(peer, "noisy", f"{kind} {100 * rate:g}%", metrics, group=kind, level=rate, seed=seed)


def _transfer_data(ctx) -> list[tuple[ImageDataset, ImageDataset]]:
    """(train, test) of every transfer target; default targets that are not on disk are skipped."""
    explicit = ctx.settings.transfer_targets is not None
    targets = ctx.settings.transfer_targets if explicit else TRANSFER_TARGETS.get(ctx.train.name, ())
    cfg = ctx.run.config.data
    out = []
    for name in targets:
        try:
            train = _labelled(load_dataset(name, "train", cfg.root, ctx.limit))
            test = _labelled(load_dataset(name, "test", cfg.root, ctx.limit))
        except DataError as exc:
            if explicit:
                raise
            ctx.notes.append(f"transfer to {name} skipped: {str(exc).split('.')[0]}")
            continue
        out.append((train, test))
    if not out and not explicit:
        ctx.notes.append(f"transfer: no target dataset for {ctx.train.name} is available")
    return out


def _run_transfer(ctx, peer, ftr, fte):
    if ctx.transfer is None:
        ctx.transfer = _transfer_data(ctx)
    for train, test in ctx.transfer:
        limit = ctx.limit
        gtr = peer_features(ctx.run, peer, train, limit=limit, cache_dir=ctx.cache_dir)
        gte = peer_features(ctx.run, peer, test, limit=limit, cache_dir=ctx.cache_dir)
        probe = fit_linear_probe(gtr, train.labels, seed=ctx.seeds[0], num_classes=train.num_classes,
                                 **ctx.probe_kwargs())
        ctx.add(peer, "transfer", train.name, _probe_metrics(probe, gte, test.labels), group=train.name,
                seed=ctx.seeds[0], dataset=train.name, n_train=len(train), n_test=len(test))


def _run_corruptions(ctx, peer, ftr, fte):
    s = ctx.settings
    ladder = s.corruption_ladder
    probe = _clean_probe(ctx, peer, ftr)
    test = ctx.test
    if s.corruption_limit is not None and s.corruption_limit < len(test):
        test = test.subset(balanced_indices(test.labels, s.corruption_limit, seed=0))
        clean = peer_features(ctx.run, peer, test, limit=ctx.limit, variant=f"c{s.corruption_limit}")
    else:
        clean = fte
    n = len(test)
    common = {"seed": ctx.seeds[0], "n_test": n, "ladder": ladder}
    clean_metrics = probe.evaluate(clean, test.labels)
    ctx.add(peer, "corruptions", "clean", clean_metrics, group="clean", level=0, **common)
    per_level: dict[int, list[float]] = {sev: [] for sev in s.severities}
    for name in s.corruptions:
        for sev in s.severities:
            images = corrupt(test.images, name, sev, seed=0, ladder=ladder)
            shifted = ImageDataset(test.name, images, test.labels, test.classes, test.mean, test.std, test.split)
            feats = peer_features(ctx.run, peer, shifted, limit=ctx.limit, variant=f"{ladder}_{name}{sev}_{n}",
                                  remember=False)
            metrics = probe.evaluate(feats, test.labels)
            per_level[sev].append(metrics["top1"])
            ctx.add(peer, "corruptions", f"{name}-{sev}", metrics, group=name, level=sev, **common)
    for sev, accs in per_level.items():
        ctx.add(peer, "corruptions", f"mean-{sev}", {"top1": float(np.mean(accs))}, group="mean", level=sev, **common)
    everything = [a for accs in per_level.values() for a in accs]
    ctx.add(peer, "corruptions", "mean", {"top1": float(np.mean(everything)),
                                          "relative_to_clean": 100 * float(np.mean(everything)) / clean_metrics["top1"]},
            group="mean", **common)


def _run_tsne(ctx, peer, ftr, fte):
    from sklearn.metrics import silhouette_score

    points = ctx.settings.tsne_points
    key = (ctx.run.fingerprint, peer, ctx.test.name, ctx.limit, points, ctx.seeds[0])
    if key in _EMBEDDINGS:
        _EMBEDDINGS.move_to_end(key)
        emb, lab = _EMBEDDINGS[key]
    else:
        emb, lab = _keep(_EMBEDDINGS, key, tsne_embed(fte, ctx.test.labels, points, ctx.seeds[0]), MAX_EMBEDDINGS)
    ctx.embeddings[peer] = (emb, lab)
    # The silhouette is measured on the features of the same points (L2-normalised, the geometry of
    # the kNN and the losses), not on the t-SNE coordinates, whose distances mean little.
    idx = balanced_indices(ctx.test.labels, points, ctx.seeds[0])
    feats = torch.nn.functional.normalize(fte[idx].float(), dim=1).numpy()
    score = silhouette_score(feats, lab) if len(np.unique(lab)) > 1 else math.nan
    ctx.add(peer, "tsne", f"{len(lab)} points", {"silhouette": score}, seed=ctx.seeds[0], n_test=len(lab))


_RUNNERS = {"knn": _run_knn, "linear": _run_linear, "limited": _run_limited, "noisy": _run_noisy,
            "transfer": _run_transfer, "corruptions": _run_corruptions, "tsne": _run_tsne}


def _labelled(data: ImageDataset) -> ImageDataset:
    if len(data) and data.labels.min() < 0:
        return data.subset((data.labels >= 0).nonzero().flatten())
    return data


def check_protocols(protocols: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(protocols, str):
        protocols = [protocols]
    # "knn linear", "knn,linear" and ["knn", "linear"] all name the same protocols
    protocols = tuple(p.strip() for item in protocols for p in str(item).split(",") if p.strip())
    if "all" in protocols:
        return PROTOCOLS
    for p in protocols:
        if p not in PROTOCOLS:
            raise ConfigError(f"protocols: unknown protocol {p!r}{did_you_mean(p, PROTOCOLS)}; "
                              f"choose from {', '.join(PROTOCOLS)}")
    if not protocols:
        raise ConfigError(f"protocols: none given; choose from {', '.join(PROTOCOLS)}")
    return tuple(p for p in PROTOCOLS if p in protocols)  # a fixed order: cheap ones first


def write_table(df: pd.DataFrame, out_dir: str | Path, stem: str = "results") -> tuple[Path, Path]:
    """Write the tidy table as ``<stem>.csv`` and ``<stem>.json`` (a list of records)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, js = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    df.to_csv(csv, index=False)
    records = json.loads(df.to_json(orient="records"))
    js.write_text(json.dumps(records, indent=1) + "\n")
    return csv, js


def evaluate_run(run_dir: str | Path, protocols: Iterable[str] | str = PROTOCOLS, *, dataset: str | None = None,
                 limit: int | None = None, seeds: Sequence[int] = (0, 1, 2), device: str | torch.device | None = None,
                 out_dir: str | Path | None = None, progress: bool = False, figures: bool = True,
                 **settings: Any) -> pd.DataFrame:
    """Evaluate every peer of one run (folder or checkpoint) with the given protocols.

    ``dataset``: evaluate on this dataset instead of the run's own (channels/size are adapted);
    ``limit``: use a fixed random subset of that many train and test images (quick runs);
    ``seeds``: the seeds of the limited-label and noisy-label protocols (others use the first);
    ``settings``: fields of ``EvalSettings`` (probe, knn_k, label_fractions, noise_rates, noise_kinds,
    transfer_targets, corruptions, severities, corruption_limit, tsne_points, cache ...).

    Returns the tidy table (columns ``COLUMNS``) and writes ``results.csv``, ``results.json``,
    ``summary.png`` and ``tsne.png`` to ``out_dir`` (default ``<run>/eval``), replacing those of an
    earlier call (the feature files are kept and reused). ``df.attrs`` holds
    ``notes`` (skipped parts) and ``figures`` (paths).
    """
    protocols = check_protocols(protocols)
    opts = build_validated(EvalSettings, settings)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    if limit is not None and limit < 20:
        raise ConfigError(f"limit: need at least 20 images per split, got {limit}")

    run = load_run(run_dir, device)
    cfg = run.config.data
    name = dataset or cfg.dataset
    train = _labelled(load_dataset(name, "train", cfg.root, limit))
    test = _labelled(load_dataset(name, "test", cfg.root, limit))
    out = Path(out_dir) if out_dir is not None else run.run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    ctx = _Context(run, train, test, limit, seeds, opts, out, progress)
    ctx.say(f"evaluating {run.name} (epoch {run.epoch}, peers {', '.join(run)}) on {name}: "
            f"{len(train)} train / {len(test)} test images, device {run.device}")
    for peer in run:
        started = time.perf_counter()
        ftr = peer_features(run, peer, train, limit=limit, cache_dir=ctx.cache_dir)
        fte = peer_features(run, peer, test, limit=limit, cache_dir=ctx.cache_dir)
        ctx.say(f"  [{peer}] features {tuple(ftr.shape)} + {tuple(fte.shape)}: {time.perf_counter() - started:.1f} s")
        for protocol in protocols:
            started = time.perf_counter()
            _RUNNERS[protocol](ctx, peer, ftr, fte)
            ctx.say(f"  [{peer}] {protocol}: {time.perf_counter() - started:.1f} s")
    df = pd.DataFrame(ctx.rows, columns=COLUMNS)
    write_table(df, out)
    if figures:
        if ctx.embeddings:
            path = out / "tsne.png"
            draw_embeddings(ctx.embeddings, path, class_names=test.classes,
                            title=f"t-SNE of {test.name} test features ({run.name})")
            ctx.figures.append(str(path))
        if plot_summary(df, out / "summary.png", title=f"{run.name} (epoch {run.epoch}) on {name}") is not None:
            ctx.figures.append(str(out / "summary.png"))
    for note in ctx.notes:
        ctx.say(f"  note: {note}")
    df.attrs["notes"] = list(dict.fromkeys(ctx.notes))
    df.attrs["figures"] = ctx.figures
    df.attrs["embeddings"] = {(run.name, p): e for p, e in ctx.embeddings.items()}
    df.attrs["classes"] = list(test.classes)
    return df


def compare_runs(run_dirs: Sequence[str | Path], protocols: Iterable[str] | str = PROTOCOLS, *,
                 out_dir: str | Path | None = None, **kwargs: Any) -> pd.DataFrame:
    """``evaluate_run`` for every run (each writes its own ``<run>/eval``), as one table.

    With ``out_dir``, the combined table (``results.csv``/``.json``), a ``summary.png`` with every
    (run, peer) and, if t-SNE ran, a ``tsne.png`` with one panel per (run, peer) are written there."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise ConfigError("compare_runs: give at least one run folder")
    frames, notes, figures, embeddings, classes = [], [], [], {}, None
    for run_dir in run_dirs:
        df = evaluate_run(run_dir, protocols, **kwargs)
        frames.append(df)
        notes += df.attrs.get("notes", [])
        figures += df.attrs.get("figures", [])
        embeddings.update(df.attrs.get("embeddings", {}))
        classes = df.attrs.get("classes", classes)
    combined = pd.concat(frames, ignore_index=True)
    if out_dir is not None:
        out = Path(out_dir)
        write_table(combined, out)
        if kwargs.get("figures", True):
            if plot_summary(combined, out / "summary.png", title="every run and peer") is not None:
                figures.append(str(out / "summary.png"))
            if embeddings:
                several = len({run for run, _ in embeddings}) > 1
                panels = {(f"{run} / {peer}" if several else peer): e for (run, peer), e in embeddings.items()}
                draw_embeddings(panels, out / "tsne.png", class_names=classes, title="t-SNE of test features")
                figures.append(str(out / "tsne.png"))
    combined.attrs["notes"] = list(dict.fromkeys(notes))
    combined.attrs["figures"] = figures
    return combined


# ============================================================================ reading the table


def summary_over_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count over seeds for every (run, peer, protocol, setting, metric)."""
    df = df.assign(ladder=df["ladder"].fillna("")) if "ladder" in df else df.assign(ladder="")
    keys = ["run", "peer", "protocol", "setting", "ladder", "metric"]
    out = df.groupby(keys, sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"count": "n"})


def format_summary(df: pd.DataFrame) -> str:
    """A readable text summary: one block per protocol, rows = models, columns = settings,
    cells = top-1 % (mean +- std over seeds where there are several); t-SNE shows the silhouette."""
    if df.empty:
        return "(no results)"
    s = summary_over_seeds(df)
    s["model"] = model_label(s)
    blocks = []
    for protocol in [p for p in PROTOCOLS if p in set(s["protocol"])]:
        metric = "silhouette" if protocol == "tsne" else "top1"
        sub = s[(s["protocol"] == protocol) & (s["metric"] == metric)]
        if protocol == "corruptions":  # the per-type rows are in the CSV; show clean and the means
            sub = sub[sub["setting"].isin(["clean", "mean"]) | sub["setting"].str.startswith("mean-")]
            # settings name their severity ladder, so that two ladders never share a column
            sub = sub.assign(setting=sub["setting"] + " (" + sub["ladder"] + ")")
        if sub.empty:
            continue
        fmt = "{:.3f}" if metric == "silhouette" else "{:.2f}"
        cell = [fmt.format(m) + (f" ± {fmt.format(sd)}" if n > 1 else "")
                for m, sd, n in zip(sub["mean"], sub["std"], sub["n"])]
        table = sub.assign(cell=cell).pivot_table(index="model", columns="setting", values="cell", aggfunc="first",
                                                  sort=False)
        table = table.reindex(index=list(dict.fromkeys(sub["model"])), columns=list(dict.fromkeys(sub["setting"])))
        unit = "silhouette in feature space" if metric == "silhouette" else "top-1 %"
        blocks.append(f"{protocol} ({unit})\n{table.to_string()}")
    return "\n\n".join(blocks)


# ============================================================================ command line


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Configure the ``dogo eval`` sub-command; the protocols' defaults are ``EvalSettings``'."""
    d = EvalSettings()
    parser.description = ("Evaluate every peer of one or more runs with frozen-feature protocols: "
                          + ", ".join(PROTOCOLS) + ". Results go to RUN_DIR/eval/ (and --out for a combined table).")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder(s) or checkpoint file(s)")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), metavar="P",
                        help=f"any of {', '.join(PROTOCOLS)} or 'all' (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="use N train and N test images (quick runs)")
    parser.add_argument("--seeds", action=SeedList, default=[0, 1, 2],
                        help="seeds for limited/noisy labels (0 1 2 or 0,1,2)")
    parser.add_argument("--out", default=None, metavar="DIR", help="also write the combined table and figures here")
    parser.add_argument("--dataset", default=None, help="evaluate on this dataset instead of the run's own")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps")
    parser.add_argument("--probe", choices=["fast", "authors"], default=d.probe,
                        help="linear probe protocol: fast (L-BFGS, tuned weight decay) or the authors' (Adam 3e-4, "
                             "weight decay 1e-6, batch 64, 85/15 split, best validation epoch, --probe-epochs "
                             "epochs; their template uses 2; their defects fixed: full test set, validation "
                             "accuracy over the validation-set size)")
    parser.add_argument("--probe-epochs", type=int, default=d.probe_epochs, help="epochs of the authors' probe protocol")
    parser.add_argument("--knn-k", type=int, default=d.knn_k)
    parser.add_argument("--knn-temperature", type=float, default=d.knn_temperature)
    parser.add_argument("--fractions", type=_floats, default=d.label_fractions, help="label fractions, e.g. 0.01,0.1")
    parser.add_argument("--noise-rates", type=_floats, default=d.noise_rates,
                        help="e.g. 0.2,0.4,0.6,0.8: exactly round(r*N) training labels flipped, each to a "
                             "different class; the validation split is noisy too, the test set clean")
    parser.add_argument("--noise", type=_names, default=d.noise_kinds, help="symmetric and/or asymmetric")
    parser.add_argument("--transfer", type=_names, default=d.transfer_targets, metavar="DATASETS",
                        help="transfer targets, e.g. digits or stl10,cifar100 (default: per dataset, if present)")
    parser.add_argument("--corruptions", type=_names, default=d.corruptions, metavar="NAMES",
                        help=f"comma-separated subset of {', '.join(CORRUPTIONS)}")
    parser.add_argument("--corruption-ladder", choices=list(LADDERS), default=d.corruption_ladder,
                        help="severity ladder: cifar10c (published CIFAR-10-C parameters, default) or strong "
                             "(the kit's own, much stronger)")
    parser.add_argument("--corruption-limit", type=int, default=d.corruption_limit, help="test images per corruption")
    parser.add_argument("--tsne-points", type=int, default=d.tsne_points)
    parser.add_argument("--no-cache", action="store_true", help="do not write feature files under RUN_DIR/eval")
    parser.add_argument("--no-progress", action="store_true", help="print only the summary")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """``dogo eval``: evaluate, print the summary table and where the files are."""
    df = compare_runs(
        args.runs, args.protocols, out_dir=args.out, dataset=args.dataset, limit=args.limit, seeds=args.seeds,
        device=args.device, progress=not args.no_progress, probe=args.probe, probe_epochs=args.probe_epochs,
        knn_k=args.knn_k, knn_temperature=args.knn_temperature, label_fractions=args.fractions,
        noise_rates=args.noise_rates, noise_kinds=args.noise, transfer_targets=args.transfer,
        corruptions=args.corruptions, corruption_ladder=args.corruption_ladder,
        corruption_limit=args.corruption_limit, tsne_points=args.tsne_points,
        cache=not args.no_cache)
    print()
    print(format_summary(df))
    print()
    for note in df.attrs.get("notes", []):
        print(f"note: {note}")
    places = [str(Path(r) / "eval") for r in dict.fromkeys(df["run_dir"])]
    if args.out:
        places.append(str(args.out))
    print("results (results.csv, results.json, figures): " + ", ".join(places))
    return 0
