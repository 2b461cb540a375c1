"""Reproduction-study grids: every (cell, seed) trained, evaluated and recorded as one small JSON.

A grid file (YAML, validated like a run config) names the seeds, the evaluation (protocols and the
settings passed to ``dogo.evaluate.evaluate_run``), optional comparisons for ``dogo report`` and the
cells, each a run config with overrides::

    name: cpu_fmnist_cnn
    seeds: [0, 1, 2]
    eval: {protocols: [knn, linear], limit: 5000, seeds: [0, 1, 2]}
    compare:
      - {label: "small CNN: DoGo - alone", baseline: small_alone/small, treatment: dogo/small}
    cells:
      - {name: small_alone, config: configs/fashion_mnist_quick.yaml, overrides: ["peers=[...]"], estimate_s: 120}

A confirmation grid runs an earlier grid's cells on fresh seeds and states, before they run, what they
should show; ``dogo report`` gives each prediction its verdict beside the earlier grid's interval::

    confirms: cpu_fmnist_cnn
    predictions:
      - {comparison: "large CNN: DoGo - alone", protocol: corruptions, setting: mean, expect: lower}

``dogo grid GRID.yaml`` runs every (cell, seed) without a current result and skips the others, so an
interrupted grid, or one split over machines (``--shard I/N``), continues where it stopped. Each
finished (cell, seed) writes ``<results>/<cell>-s<seed>.json`` atomically; its run folder (checkpoint,
features) goes to ``<runs>/<cell>-s<seed>-<config hash>``, where an interrupted training resumes.

A result is *current* when its config hash, ``NUMERICS_VERSION`` and evaluation settings equal the
grid file's; otherwise it is *stale*: listed, never mixed into a table, re-run only with
``--rerun-stale``. One lock file per (cell, seed), held with ``fcntl.flock`` while it runs, keeps two
processes off the same cell; the kernel releases it when a process dies, so a kill leaves nothing stuck.

``--adopt DIR`` copies another grid's results that are the same experiments (config hash, seed and
evaluation settings), e.g. an ablation grid's baseline cells from the main study.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fcntl
import fnmatch
import functools
import hashlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from . import __version__
from .config import ADDED_SETTINGS_DEFAULTS, NOT_AFFECTING_RESULTS, SPEED_ONLY, Config, build_validated, flatten, load_config
from .errors import ConfigError, DogoError

REPO = Path(__file__).resolve().parent.parent
SCHEMA_VERSION = 1
# Bumped whenever a change to training or evaluation can change the numbers a cell produces:
# results recorded under another value are stale.
NUMERICS_VERSION = 1
TSNE_STORED_POINTS = 1000  # at most this many t-SNE points per peer are kept in a result
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Table columns kept in a result (the run's name and folder, and the peer's architecture, are elsewhere).
RESULT_COLUMNS = ["peer", "protocol", "setting", "group", "level", "metric", "value", "seed", "dataset",
                  "n_train", "n_test"]


# ============================================================================ the grid file


@dataclass
class CellSpec:
    name: str
    config: str  # a run config, relative to the repository
    overrides: list[str] = field(default_factory=list)  # key=value, as `dogo train`
    estimate_s: float | None = field(default=None, metadata={"rules": {"ge": 0.0}})


@dataclass
class CompareSpec:
    baseline: str  # "cell/peer"
    treatment: str  # "cell/peer"
    label: str = ""

    @property
    def sides(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """((baseline cell, peer), (treatment cell, peer))."""
        (bc, _, bp), (tc, _, tp) = self.baseline.partition("/"), self.treatment.partition("/")
        return (bc, bp), (tc, tp)


@dataclass
class PredictionSpec:
    """A result expected before the seeds ran: one comparison's paired difference on one measure."""

    comparison: str  # the label of one of the grid's comparisons
    protocol: str  # knn, linear, limited, noisy, transfer, corruptions, tsne
    expect: Literal["lower", "higher", "within_noise"]  # the treatment below, above, or not apart from the baseline
    setting: str = ""  # e.g. "1% labels" or "mean"; may be left out where the protocol has one headline setting


@dataclass
class GridSpec:
    name: str
    seeds: list[int]
    cells: list[CellSpec]
    eval: dict[str, Any] = field(default_factory=dict)  # checked by _resolve_eval
    compare: list[CompareSpec] = field(default_factory=list)
    # What `dogo report --readme` puts in the README: "tables" (means and paired differences, as
    # REPORT.md) or "differences" (one row of paired differences per comparison: many comparisons).
    readme: Literal["tables", "differences"] = "tables"
    # A confirmation: the grid whose findings these (fresh) seeds test, and what they are predicted to show;
    # `dogo report` sets each prediction's interval beside that grid's and says whether it held.
    confirms: str = ""
    predictions: list[PredictionSpec] = field(default_factory=list)


@dataclass
class Grid:
    """A validated grid: the spec, each cell's config per seed, and the resolved evaluation settings."""

    spec: GridSpec
    path: Path | None
    eval_kwargs: dict[str, Any]  # passed to evaluate_run
    eval_settings: dict[str, Any]  # what a result records and must match (every setting, defaults filled)
    speed: list[str] = field(default_factory=list)  # speed-only overrides applied to every cell (--speed)

    @property
    def name(self) -> str:
        return self.spec.name

    def cell(self, name: str) -> CellSpec:
        return next(c for c in self.spec.cells if c.name == name)

    def config(self, cell: str | CellSpec, seed: int) -> Config:
        spec = self.cell(cell) if isinstance(cell, str) else cell
        path = Path(spec.config)
        return load_config(path if path.is_absolute() else REPO / path, [*spec.overrides, *self.speed, f"seed={seed}"])

    def with_speed(self, settings: list[str]) -> Grid:
        """This grid with speed-only overrides (``train.compile=true`` ...) on every cell: the same
        experiments, run faster; any other key is refused."""
        for item in settings:
            key = item.partition("=")[0].strip()
            if "=" not in item or key not in SPEED_ONLY:
                raise ConfigError(f"--speed: {item!r} is not KEY=VALUE with a speed-only key; those are "
                                  f"{', '.join(SPEED_ONLY)} (other settings make other experiments: edit the grid file)")
        grid = dataclasses.replace(self, speed=[*self.speed, *settings])
        for cell in grid.spec.cells:  # a wrong value fails now, not in the middle of the grid
            grid.config(cell, grid.spec.seeds[0])
        return grid

    def jobs(self) -> list[tuple[str, int]]:
        """Every (cell, seed), seed by seed, so that the first seeds of all cells finish first."""
        return [(c.name, s) for s in self.spec.seeds for c in self.spec.cells]


def _check_name(value: str, key: str) -> None:
    if not _NAME.match(value):
        raise ConfigError(f"{key}: {value!r} must be letters, digits, '_', '-' or '.' (it names files)")


def _resolve_eval(data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the ``eval`` section with the evaluation's own rules; return (kwargs, recorded settings)."""
    from .evaluate import PROTOCOLS, EvalSettings, check_protocols

    if not isinstance(data, dict):
        raise ConfigError(f"eval: expected a mapping of evaluation settings, got {data!r}")
    kwargs = dict(data)
    protocols = kwargs.pop("protocols", list(PROTOCOLS))
    if isinstance(protocols, str):
        protocols = [protocols]
    if not isinstance(protocols, list) or not all(isinstance(p, str) for p in protocols):
        raise ConfigError(f"eval.protocols: expected a list of protocol names, got {protocols!r}")
    protocols = list(PROTOCOLS) if "all" in protocols else protocols
    limit = kwargs.pop("limit", None)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
        raise ConfigError(f"eval.limit: expected an integer or null, got {limit!r}")
    seeds = kwargs.pop("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"eval.seeds: expected a list of integers, got {seeds!r}")
    for key in ("device", "out_dir", "progress", "figures", "dataset", "cache"):
        if key in kwargs:
            raise ConfigError(f"eval.{key}: set by the grid runner, not by the grid file")
    if limit is not None and limit < 20:
        raise ConfigError(f"eval.limit: need at least 20 images per split, got {limit}")
    if not seeds:
        raise ConfigError("eval.seeds: give at least one seed")
    fields = {f.name: f.default for f in dataclasses.fields(EvalSettings)}
    build_validated(EvalSettings, kwargs, "eval")
    try:
        protocols = list(check_protocols(protocols))
    except ConfigError as exc:
        raise ConfigError(f"eval.{exc}") from None
    settings = {k: v for k, v in fields.items() if k != "cache"}
    settings.update(kwargs)
    recorded = json.loads(json.dumps({"protocols": protocols, "limit": limit, "seeds": seeds, **settings},
                                     default=list))
    return {"protocols": protocols, "limit": limit, "seeds": seeds, **kwargs}, recorded


def load_grid(path: str | Path | None = None, data: dict[str, Any] | None = None) -> Grid:
    """Read and validate a grid file (or plain ``data``): every cell's config is resolved for the
    first seed, so a bad key anywhere fails here with one ``ConfigError`` naming it."""
    if data is None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"grid file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"grid file {str(path)!r} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"grid: expected a mapping at the top level, got {type(data).__name__}")
    for key in ("name", "seeds", "cells"):
        if key not in data:
            raise ConfigError(f"{key}: missing (a grid names its name, seeds and cells)")
    data = dict(data)
    eval_data = data.pop("eval", {})
    spec = build_validated(GridSpec, data)
    spec.eval = eval_data
    _check_name(spec.name, "name")
    if not spec.seeds:
        raise ConfigError("seeds: give at least one seed")
    if len(set(spec.seeds)) != len(spec.seeds) or min(spec.seeds) < 0:
        raise ConfigError(f"seeds: must be distinct non-negative integers, got {spec.seeds}")
    if not spec.cells:
        raise ConfigError("cells: give at least one cell")
    names = [c.name for c in spec.cells]
    for i, name in enumerate(names):
        _check_name(name, f"cells[{i}].name")
        if names.index(name) != i:
            raise ConfigError(f"cells[{i}].name: {name!r} is used twice")
    eval_kwargs, eval_settings = _resolve_eval(spec.eval)
    grid = Grid(spec, Path(path) if path is not None else None, eval_kwargs, eval_settings)
    peers = {}
    for i, cell in enumerate(spec.cells):
        try:
            cfg = grid.config(cell, spec.seeds[0])
        except ConfigError as exc:
            raise ConfigError(f"cells[{i}] ({cell.name}): {exc}") from None
        peers[cell.name] = [p.name for p in cfg.peers]
    for i, pair in enumerate(spec.compare):
        for side in ("baseline", "treatment"):
            ref = getattr(pair, side)
            cell, _, peer = ref.partition("/")
            if cell not in peers:
                raise ConfigError(f"compare[{i}].{side}: no cell {cell!r}; cells are {', '.join(peers)}")
            if peer not in peers[cell]:
                raise ConfigError(f"compare[{i}].{side}: cell {cell!r} has no peer {peer!r} "
                                  f"(write cell/peer; its peers are {', '.join(peers[cell])})")
        if not pair.label:
            pair.label = f"{pair.treatment} - {pair.baseline}"
    _check_predictions(spec, eval_settings["protocols"])
    return grid


def _check_predictions(spec: GridSpec, protocols: list[str]) -> None:
    if spec.confirms:
        _check_name(spec.confirms, "confirms")
        if spec.confirms == spec.name:
            raise ConfigError("confirms: a grid confirms another grid's findings, not its own")
    labels = [pair.label for pair in spec.compare]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"compare: labels must be unique, got {labels}")
    seen = set()
    for i, prediction in enumerate(spec.predictions):
        if prediction.comparison not in labels:
            raise ConfigError(f"predictions[{i}].comparison: no comparison labelled {prediction.comparison!r}; "
                              f"the grid's are {', '.join(map(repr, labels)) or 'none'}")
        if prediction.protocol not in protocols:
            raise ConfigError(f"predictions[{i}].protocol: {prediction.protocol!r} is not one of the grid's "
                              f"protocols ({', '.join(protocols)})")
        key = (prediction.comparison, prediction.protocol, prediction.setting)
        if key in seen:
            measure = f"{prediction.protocol} {prediction.setting}".strip()
            raise ConfigError(f"predictions[{i}]: {prediction.comparison!r} on {measure} is predicted twice")
        seen.add(key)


# ============================================================================ result identity


_NO_DEFAULT = object()


@functools.cache
def _default_settings() -> dict[str, Any]:
    return flatten(Config().to_dict())


def config_hash(cfg: Config) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the flattened resolved config, without
    the settings in ``NOT_AFFECTING_RESULTS`` (name, device, output folder, logging ...), with the
    speed-only settings at their defaults (``SPEED_ONLY``: compile, fused optimizer, memory layout), and
    without settings added later while they keep their earlier behaviour (``ADDED_SETTINGS_DEFAULTS``)."""
    defaults = _default_settings()
    flat = {k: defaults[k] if k in SPEED_ONLY else v for k, v in flatten(cfg.to_dict()).items()}
    flat = {k: v for k, v in flat.items()
            if k not in NOT_AFFECTING_RESULTS and ADDED_SETTINGS_DEFAULTS.get(k, _NO_DEFAULT) != v}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def result_name(cell: str, seed: int) -> str:
    return f"{cell}-s{seed}"


def default_results_dir(grid: Grid) -> Path:
    return Path("results") / grid.name


def default_runs_dir(grid: Grid) -> Path:
    return Path("runs") / "grid" / grid.name


def read_result(path: str | Path) -> dict[str, Any] | None:
    """A result file's content, or None when it cannot be read as a JSON object."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def stale_reasons(record: dict[str, Any] | None, grid: Grid, cfg_hash: str) -> list[str]:
    """Why a recorded result does not count for this grid (empty: it is current)."""
    if record is None:
        return ["unreadable"]
    reasons = []
    if record.get("schema_version") != SCHEMA_VERSION:
        reasons.append(f"schema version {record.get('schema_version')} (now {SCHEMA_VERSION})")
    if record.get("numerics_version") != NUMERICS_VERSION:
        reasons.append(f"numerics version {record.get('numerics_version')} (now {NUMERICS_VERSION})")
    if record.get("config_hash") != cfg_hash:
        reasons.append("config changed")
    recorded = record.get("eval_settings") or {}
    changed = sorted(k for k in set(recorded) | set(grid.eval_settings) if recorded.get(k) != grid.eval_settings.get(k))
    if changed:
        reasons.append("eval settings changed: " + ", ".join(changed))
    return reasons


@dataclass
class Job:
    cell: str
    seed: int
    status: str  # "done", "pending", "stale"
    config_hash: str
    reasons: list[str] = field(default_factory=list)
    seconds: float | None = None  # recorded time of a done job
    estimate_s: float | None = None  # expected time of a job still to run
    locked: bool = False  # another process holds its lock now

    @property
    def key(self) -> str:
        return result_name(self.cell, self.seed)


def _lock_path(results_dir: Path, key: str) -> Path:
    return results_dir / f".{key}.lock"


def _is_locked(results_dir: Path, key: str) -> bool:
    """Whether another process holds the lock (without creating a lock file)."""
    path = _lock_path(results_dir, key)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock this check took
    return False


def plan(grid: Grid, results_dir: str | Path, *, shard: tuple[int, int] | None = None,
         only: str | None = None) -> list[Job]:
    """The state of every (cell, seed) in the shard and pattern: done, pending or stale, with estimates."""
    results_dir = Path(results_dir)
    jobs = []
    for index, (cell, seed) in enumerate(grid.jobs()):
        if shard is not None and index % shard[1] != shard[0] - 1:
            continue
        key = result_name(cell, seed)
        if only and not (fnmatch.fnmatch(key, only) or fnmatch.fnmatch(cell, only)):
            continue
        h = config_hash(grid.config(cell, seed))
        path = results_dir / f"{key}.json"
        if not path.exists():
            jobs.append(Job(cell, seed, "pending", h))
            continue
        record = read_result(path)
        reasons = stale_reasons(record, grid, h)
        seconds = (record or {}).get("seconds", {}).get("total")
        jobs.append(Job(cell, seed, "stale" if reasons else "done", h, reasons, seconds))
    # Estimates: the median recorded time of the same cell's current results, else its estimate_s.
    for job in jobs:
        if job.status != "done":
            times = _recorded_times(grid, results_dir, job.cell)
            job.estimate_s = statistics.median(times) if times else grid.cell(job.cell).estimate_s
            job.locked = _is_locked(results_dir, job.key)
    return jobs


def _recorded_times(grid: Grid, results_dir: Path, cell: str) -> list[float]:
    times = []
    for seed in grid.spec.seeds:
        record = read_result(results_dir / f"{result_name(cell, seed)}.json")
        if record and not stale_reasons(record, grid, config_hash(grid.config(cell, seed))):
            seconds = record.get("seconds", {}).get("total")
            if isinstance(seconds, (int, float)):
                times.append(float(seconds))
    return times


def format_plan(jobs: list[Job]) -> str:
    """The --dry-run listing: one line per (cell, seed) and the estimated time of what is left."""
    def fmt(seconds: float | None) -> str:
        return "unknown" if seconds is None else f"{seconds:.0f} s"

    lines = []
    for job in jobs:
        if job.status == "done":
            lines.append(f"  done     {job.key:<32} ({fmt(job.seconds)})")
        else:
            note = " [running elsewhere]" if job.locked else ""
            why = f" ({'; '.join(job.reasons)})" if job.reasons else ""
            lines.append(f"  {job.status:<8} {job.key:<32} estimate {fmt(job.estimate_s)}{why}{note}")
    left = [j for j in jobs if j.status == "pending"]
    stale = [j for j in jobs if j.status == "stale"]
    known = sum(j.estimate_s for j in left if j.estimate_s is not None)
    unknown = sum(j.estimate_s is None for j in left)
    total = f"{known:.0f} s" + (f" + {unknown} of unknown time" if unknown else "")
    lines.append(f"{sum(j.status == 'done' for j in jobs)} done, {len(left)} pending (about {total}), "
                 f"{len(stale)} stale" + (" (re-run with --rerun-stale)" if stale else ""))
    return "\n".join(lines)


# ============================================================================ running one cell


class CellLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<results>/.<cell>-s<seed>.lock``; the kernel drops
    it when the holder exits or is killed. ``acquired`` is False when another process holds it."""

    def __init__(self, results_dir: Path, key: str):
        self.path = _lock_path(results_dir, key)
        self.fd: int | None = None
        self.acquired = False

    def __enter__(self) -> CellLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.acquired = True
        except OSError:
            self.acquired = False
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _round(value: Any, digits: int = 6) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.{digits}g}")
    return value


def _curves(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-epoch kNN accuracy and losses of every peer from metrics.jsonl records (None where absent)."""
    peers = {}
    names = list(dict.fromkeys(p for r in records for p in r.get("peers", {})))
    metrics = ("knn_top1", "total_loss", "ssl_loss", "distill_loss", "lr")
    for peer in names:
        peers[peer] = {m: [_round(r.get("peers", {}).get(peer, {}).get(m)) for r in records] for m in metrics}
    return {"epoch": [r.get("epoch") for r in records], "epoch_seconds": [_round(r.get("epoch_seconds"), 4)
                                                                          for r in records], "peers": peers}


def _tsne_points(df) -> dict[str, Any]:
    """The stored t-SNE: per peer, rounded 2-D coordinates and labels of at most TSNE_STORED_POINTS
    class-balanced points of evaluate_run's embedding."""
    import torch

    from .evaluate import balanced_indices

    out = {}
    for (_, peer), (emb, lab) in df.attrs.get("embeddings", {}).items():
        idx = balanced_indices(torch.as_tensor(lab), TSNE_STORED_POINTS, seed=0).numpy()
        out[peer] = {"x": [round(float(v), 2) for v in emb[idx, 0]], "y": [round(float(v), 2) for v in emb[idx, 1]],
                     "label": [int(v) for v in lab[idx]]}
    return out


def run_cell(grid: Grid, cell: str, seed: int, results_dir: str | Path, runs_dir: str | Path,
             progress: bool = False) -> Path | None:
    """Train (or resume) one (cell, seed), evaluate it on the same device, write its result atomically.

    Returns the result path, or None when training was interrupted (its checkpoint stays for later)."""
    from .evaluate import clear_cache, evaluate_run
    from .runlog import atomic_write_bytes, device_name, git_commit, library_versions, read_metrics
    from .runs import train_or_reuse
    from .train import resolve_device

    results_dir, runs_dir = Path(results_dir), Path(runs_dir)
    cfg = grid.config(cell, seed)
    h = config_hash(cfg)
    run_dir = runs_dir / f"{result_name(cell, seed)}-{h[:12]}"
    started = time.perf_counter()
    trained = train_or_reuse(cfg, run_dir, progress=progress)
    if trained.get("status") == "interrupted":
        return None
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    e = grid.eval_kwargs
    df = evaluate_run(run_dir, e["protocols"], limit=e["limit"], seeds=e["seeds"], device=cfg.device,
                      progress=progress, figures=False,
                      **{k: v for k, v in e.items() if k not in ("protocols", "limit", "seeds")})
    eval_s = time.perf_counter() - started
    clear_cache()  # the next cell's checkpoints are new: its features are its own
    records = read_metrics(run_dir)
    rows = [[_round(row[c]) if not isinstance(row[c], str) else row[c] for c in RESULT_COLUMNS]
            for row in df[RESULT_COLUMNS].to_dict("records")]
    record = {
        "schema_version": SCHEMA_VERSION,
        "grid": grid.name,
        "cell": cell,
        "seed": seed,
        "config_hash": h,
        "numerics_version": NUMERICS_VERSION,
        "dogo_version": __version__,
        "git_commit": git_commit(),
        "eval_settings": grid.eval_settings,
        "corruption_ladder": grid.eval_settings["corruption_ladder"],
        "config": cfg.to_dict(),
        "peers": {p.name: {"backbone": p.backbone, "width": p.width, "objective": p.objective} for p in cfg.peers},
        "columns": RESULT_COLUMNS,
        "rows": rows,
        "classes": list(df.attrs.get("classes", [])),
        "tsne": _tsne_points(df),
        "curves": _curves(records),
        "seconds": {"train": round(train_s, 2), "train_epochs": round(sum(r.get("epoch_seconds", 0) for r in records), 2),
                    "eval": round(eval_s, 2), "total": round(train_s + eval_s, 2)},
        "training_status": trained.get("status"),
        "device": device_name(resolve_device(cfg.device)),
        "versions": library_versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    data = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
    path = results_dir / f"{result_name(cell, seed)}.json"
    atomic_write_bytes(path, lambda f: f.write(data))
    return path


# ============================================================================ results shared between grids


def adopt_results(grid: Grid, results_dir: str | Path, source_dir: str | Path, *, dry_run: bool = False,
                  say=print) -> list[str]:
    """Copy into ``results_dir`` every result of ``source_dir`` (another grid's results) that is the same
    experiment as one of this grid's (cell, seed) without a result: the same config hash and seed, and
    current for this grid (evaluation settings, numerics). The copy names this grid and cell and records
    where it came from (``adopted_from``). Returns the adopted keys (with ``dry_run``: those it would)."""
    from .runlog import atomic_write_bytes

    results_dir, source_dir = Path(results_dir), Path(source_dir)
    if not source_dir.is_dir():
        raise ConfigError(f"--adopt: {source_dir} is not a folder of grid results")
    if source_dir.resolve() == results_dir.resolve():
        return []
    sources = [(path, read_result(path)) for path in sorted(source_dir.glob("*.json"))]
    adopted = []
    for job in plan(grid, results_dir):
        if job.status != "pending":
            continue
        match = next(((path, record) for path, record in sources if record and record.get("seed") == job.seed
                      and record.get("config_hash") == job.config_hash and not stale_reasons(record, grid, job.config_hash)),
                     None)
        if match is None:
            continue
        source_path, record = match[0], dict(match[1])
        record["adopted_from"] = {"grid": record.get("grid"), "cell": record.get("cell"), "file": source_path.name}
        record["grid"], record["cell"] = grid.name, job.cell
        if not dry_run:
            data = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
            atomic_write_bytes(results_dir / f"{job.key}.json", lambda f, data=data: f.write(data))
        say(f"{'would adopt' if dry_run else 'adopted'} {job.key} from {source_path}")
        adopted.append(job.key)
    return adopted


# ============================================================================ the loop


def run_grid(grid: Grid, results_dir: str | Path | None = None, runs_dir: str | Path | None = None, *,
             shard: tuple[int, int] | None = None, only: str | None = None, rerun_stale: bool = False,
             time_budget: float | None = None, progress: bool = False, say=print) -> dict[str, list[str]]:
    """Run pending (and, with ``rerun_stale``, stale) jobs one after another until none is left.

    Each job is taken under its lock: a job another process runs is skipped. With ``time_budget``
    (seconds from now), a job whose estimate does not fit in the time left (or is unknown) is not
    started. Returns the keys ``ran``, ``skipped`` (locked elsewhere), ``not_started`` (budget),
    ``failed`` and ``interrupted``."""
    results_dir = Path(results_dir) if results_dir is not None else default_results_dir(grid)
    runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir(grid)
    deadline = None if time_budget is None else time.monotonic() + time_budget
    outcome: dict[str, list[str]] = {"ran": [], "skipped": [], "not_started": [], "failed": [], "interrupted": []}
    settled: set[str] = set()  # jobs this process will not try again
    while True:
        todo = [j for j in plan(grid, results_dir, shard=shard, only=only)
                if (j.status == "pending" or (rerun_stale and j.status == "stale")) and j.key not in settled]
        if not todo:
            break
        job = todo[0]
        settled.add(job.key)
        if deadline is not None:
            left = deadline - time.monotonic()
            if job.estimate_s is None or job.estimate_s > left:
                why = "unknown estimate" if job.estimate_s is None else f"estimate {job.estimate_s:.0f} s"
                say(f"not starting {job.key}: {why}, {max(left, 0):.0f} s of the time budget left")
                outcome["not_started"].append(job.key)
                continue
        with CellLock(results_dir, job.key) as lock:
            if not lock.acquired:
                say(f"skipping {job.key}: another process runs it")
                outcome["skipped"].append(job.key)
                continue
            # Another process may have finished it between the plan and the lock.
            current = next(j for j in plan(grid, results_dir, only=job.key) if j.seed == job.seed)
            if current.status == "done" or (current.status == "stale" and not rerun_stale):
                continue
            say(f"running {job.key}" + (f" (estimate {job.estimate_s:.0f} s)" if job.estimate_s else ""))
            try:
                path = run_cell(grid, job.cell, job.seed, results_dir, runs_dir, progress=progress)
            except DogoError as exc:
                say(f"failed {job.key}: {exc}")
                outcome["failed"].append(job.key)
                continue
            except Exception:  # e.g. out of device memory: the other cells may still run
                say(f"failed {job.key}:\n{traceback.format_exc()}")
                outcome["failed"].append(job.key)
                continue
            if path is None:
                say(f"interrupted {job.key}: its checkpoint is kept; run the grid again to continue")
                outcome["interrupted"].append(job.key)
                break
            say(f"finished {job.key}: {path}")
            outcome["ran"].append(job.key)
    return outcome


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--shard: expected I/N with 1 <= I <= N (e.g. 2/3), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dogo grid`` subcommand."""
    parser.description = ("Run a reproduction-study grid: every (cell, seed) without a current result is "
                          "trained and evaluated, one JSON per (cell, seed); finished ones are skipped.")
    parser.add_argument("grid", metavar="GRID.yaml", help="grid file (see configs/grids/)")
    parser.add_argument("--results", default=None, metavar="DIR", help="result folder (default results/NAME)")
    parser.add_argument("--runs", default=None, metavar="DIR", help="run folders (default runs/grid/NAME)")
    parser.add_argument("--dry-run", action="store_true", help="list what is done, pending and stale; run nothing")
    parser.add_argument("--shard", default=None, metavar="I/N", help="take the I-th of N disjoint slices of the grid")
    parser.add_argument("--parallel", type=int, default=1, metavar="N", help="N worker processes (one device)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="start no cell whose estimate does not fit in the time left (nor one of unknown "
                             "estimate: give the cell an estimate_s)")
    parser.add_argument("--only", default=None, metavar="PATTERN", help="cells or CELL-sSEED matching this glob")
    parser.add_argument("--rerun-stale", action="store_true", help="also re-run stale results")
    parser.add_argument("--speed", nargs="+", default=[], metavar="KEY=VALUE",
                        help="speed-only settings for every cell (" + ", ".join(SPEED_ONLY) + "): the same "
                             "experiments, so results keep their config hash")
    parser.add_argument("--adopt", action="append", default=[], metavar="DIR",
                        help="first copy the results of another grid (DIR) that are the same experiment as a "
                             "(cell, seed) of this one: same config hash, seed and evaluation settings")
    parser.add_argument("--progress", action="store_true", help="progress bars and evaluation messages")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    grid = load_grid(args.grid)
    if args.speed:
        grid = grid.with_speed(args.speed)
    shard = _parse_shard(args.shard)
    if args.parallel < 1:
        raise ConfigError(f"--parallel: must be >= 1, got {args.parallel}")
    if args.time_budget is not None and args.time_budget < 0:
        raise ConfigError(f"--time-budget: must be >= 0, got {args.time_budget}")
    results = Path(args.results) if args.results else default_results_dir(grid)
    runs = Path(args.runs) if args.runs else default_runs_dir(grid)
    for source in args.adopt:
        adopt_results(grid, results, source, dry_run=args.dry_run)
    if args.dry_run:
        print(f"grid {grid.name}: results {results}, runs {runs}")
        print(format_plan(plan(grid, results, shard=shard, only=args.only)))
        return 0
    if args.worker:
        import torch

        tag = f"[worker {os.getpid()}, {torch.get_num_threads()} threads] "
    else:
        tag = ""
    if not args.worker:
        print(f"grid {grid.name}: results {results}, runs {runs}; "
              + format_plan(plan(grid, results, shard=shard, only=args.only)).splitlines()[-1], flush=True)
        if grid.speed:
            print(f"speed settings for every cell: {' '.join(grid.speed)}", flush=True)
    if args.parallel == 1:
        outcome = run_grid(grid, results, runs, shard=shard, only=args.only, rerun_stale=args.rerun_stale,
                           time_budget=args.time_budget, progress=args.progress,
                           say=lambda message: print(tag + message, flush=True))
        print(f"{tag}ran {len(outcome['ran'])}, skipped {len(outcome['skipped'])} (running elsewhere), "
              f"not started {len(outcome['not_started'])} (time budget), failed {len(outcome['failed'])}")
        if outcome["interrupted"]:
            return 130
        return 1 if outcome["failed"] else 0
    argv = [sys.executable, "-m", "dogo", "grid", str(args.grid), "--results", str(results), "--runs", str(runs),
            "--worker"]
    for flag, value in (("--shard", args.shard), ("--only", args.only), ("--time-budget", args.time_budget)):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--rerun-stale"] * args.rerun_stale + ["--progress"] * args.progress
    argv += ["--speed", *args.speed] if args.speed else []
    # The workers share the CPU cores (their probes run there even when training runs on a GPU).
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.parallel)))
    workers = []
    for i in range(args.parallel):
        workers.append(subprocess.Popen(argv, env=env))
        time.sleep(1.0 if i + 1 < args.parallel else 0)  # stagger, so that they take different cells first
    codes = [w.wait() for w in workers]
    print(f"{args.parallel} workers finished with exit codes {codes}")
    return max(codes)


__all__ = ["load_grid", "Grid", "plan", "run_grid", "run_cell", "adopt_results", "config_hash", "read_result",
           "stale_reasons", "NUMERICS_VERSION", "SCHEMA_VERSION"]
