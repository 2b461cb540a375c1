"""Reproduction-study grids: every (cell, seed) trained, evaluated and recorded as one small JSON.

A grid file (``dogo.grid_file``) names the seeds, the evaluation, the comparisons and the cells;
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
from typing import Any

from . import __version__
from .config import NOT_AFFECTING_RESULTS, SPEED_ONLY, Config, flatten, is_added_setting_at_default
from .errors import ConfigError, DogoError
from .grid_file import Grid, load_grid

SCHEMA_VERSION = 1
# Bumped whenever a change to training or evaluation can change the numbers a cell produces:
# results recorded under another value are stale.
NUMERICS_VERSION = 1
TSNE_STORED_POINTS = 1000  # at most this many t-SNE points per peer are kept in a result
# Table columns kept in a result (the run's name and folder, and the peer's architecture, are elsewhere).
RESULT_COLUMNS = ["peer", "protocol", "setting", "group", "level", "metric", "value", "seed", "dataset",
                  "n_train", "n_test"]


# ============================================================================ result identity


@functools.cache
def _default_settings() -> dict[str, Any]:
    return flatten(Config().to_dict())


def config_hash(cfg: Config) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the flattened resolved config, without
    the settings in ``NOT_AFFECTING_RESULTS`` (name, device, output folder, logging ...), with the
    speed-only settings at their defaults (``SPEED_ONLY``: compile, fused optimizer, memory layout), and
    without settings added later while they keep their earlier behaviour (``is_added_setting_at_default``)."""
    defaults = _default_settings()
    flat = {k: defaults[k] if k in SPEED_ONLY else v for k, v in flatten(cfg.to_dict()).items()}
    flat = {k: v for k, v in flat.items()
            if k not in NOT_AFFECTING_RESULTS and not is_added_setting_at_default(k, v)}
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


def job_state(grid: Grid, results_dir: Path, cell: str, seed: int) -> Job:
    """One (cell, seed): done, pending or stale, read from its result file (no estimate, no lock)."""
    h = config_hash(grid.config(cell, seed))
    path = results_dir / f"{result_name(cell, seed)}.json"
    if not path.exists():
        return Job(cell, seed, "pending", h)
    record = read_result(path)
    reasons = stale_reasons(record, grid, h)
    seconds = (record or {}).get("seconds", {}).get("total")
    return Job(cell, seed, "stale" if reasons else "done", h, reasons,
               float(seconds) if isinstance(seconds, (int, float)) else None)


def plan(grid: Grid, results_dir: str | Path, *, shard: tuple[int, int] | None = None,
         only: str | None = None) -> list[Job]:
    """The state of every (cell, seed) in the shard and pattern: done, pending or stale, with estimates."""
    results_dir = Path(results_dir)

    def wanted(index: int, cell: str, seed: int) -> bool:
        if shard is not None and index % shard[1] != shard[0] - 1:
            return False
        return not only or fnmatch.fnmatch(result_name(cell, seed), only) or fnmatch.fnmatch(cell, only)

    selected = [(cell, seed) for index, (cell, seed) in enumerate(grid.jobs()) if wanted(index, cell, seed)]
    # Every seed of a selected cell is read once: a slice's estimates use the times of the whole cell.
    cells = {cell for cell, _ in selected}
    states = {(cell, seed): job_state(grid, results_dir, cell, seed) for cell, seed in grid.jobs() if cell in cells}
    jobs = [states[key] for key in selected]
    # Estimates: the median recorded time of the same cell's current results, else its estimate_s.
    for job in jobs:
        if job.status != "done":
            times = [j.seconds for (cell, _), j in states.items()
                     if cell == job.cell and j.status == "done" and j.seconds is not None]
            job.estimate_s = statistics.median(times) if times else grid.cell(job.cell).estimate_s
            job.locked = _is_locked(results_dir, job.key)
    return jobs


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
    import torch

    from .evaluate import clear_cache, evaluate_run
    from .runlog import device_name, git_commit, library_versions, read_metrics
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
    rows = [[_round(row[c]) for c in RESULT_COLUMNS]
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
        "threads": torch.get_num_threads(),  # on a CPU, how many threads split each op (`--parallel` runs 1 each)
        "versions": library_versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = results_dir / f"{result_name(cell, seed)}.json"
    write_result(path, record)
    return path


def write_result(path: Path, record: dict[str, Any]) -> None:
    """A result file: one line of compact JSON (no NaN), written atomically."""
    from .runlog import atomic_write_text

    atomic_write_text(path, json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")


# ============================================================================ results shared between grids


def adopt_results(grid: Grid, results_dir: str | Path, source_dir: str | Path, *, dry_run: bool = False,
                  say=print) -> list[str]:
    """Copy into ``results_dir`` every result of ``source_dir`` (another grid's results) that is the same
    experiment as one of this grid's (cell, seed) without a result: the same config hash and seed, and
    current for this grid (evaluation settings, numerics). The copy names this grid and cell and records
    where it came from (``adopted_from``). Returns the adopted keys (with ``dry_run``: those it would)."""
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
            write_result(results_dir / f"{job.key}.json", record)
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
            current = job_state(grid, results_dir, job.cell, job.seed)
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


__all__ = ["plan", "run_grid", "run_cell", "adopt_results", "config_hash", "result_name", "read_result",
           "stale_reasons", "NUMERICS_VERSION", "SCHEMA_VERSION"]
