"""A grid's results as data: the current result files of a grid, one tidy table, the paired differences.

``load_results`` reads a result folder (``dogo.grid`` writes one JSON per (cell, seed)), keeps the results
that are current for the grid file and lists the others as stale with their reasons; ``comparisons`` gives,
for every ``compare`` pair of the grid and every headline measure, the paired difference over the seeds
both sides have (``dogo.stats``). The report (``dogo.report``), its figures (``dogo.grid_figures``) and
the predictions' verdicts (``dogo.predictions``) read only what this module returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import DogoError
from .grid import NUMERICS_VERSION, SCHEMA_VERSION, config_hash, read_result, result_name, stale_reasons
from .grid_file import REPO, Grid, load_grid
from .stats import paired_difference, summarize

MIN_SEEDS = 3  # fewer seeds than this: intervals are printed with a warning
PROTOCOL_ORDER = ("knn", "linear", "limited", "noisy", "transfer", "corruptions", "tsne")
KEYS = ["cell", "peer", "protocol", "setting", "metric"]


@dataclass
class Results:
    """The current results of one grid as a tidy table (one row per run seed after averaging the
    evaluation's seeds), the records themselves, and the stale files with their reasons."""

    name: str
    grid: Grid | None
    table: pd.DataFrame  # columns: cell, seed, peer, protocol, setting, metric, value
    records: list[dict[str, Any]]
    stale: list[tuple[str, list[str]]]
    only_seeds: list[int] | None = None  # a reading of some run seeds (``--seeds``), not the whole grid
    folder: Path | None = None  # where the result files were read

    @property
    def seeds(self) -> list[int]:
        return sorted({r["seed"] for r in self.records})

    @property
    def wanted_seeds(self) -> list[int]:
        """The run seeds this reading asks for: the grid's, or those of ``--seeds`` among them."""
        spec_seeds = self.grid.spec.seeds if self.grid is not None else self.seeds
        return [s for s in spec_seeds if self.only_seeds is None or s in self.only_seeds]

    @classmethod
    def none_yet(cls, grid: Grid, folder: Path | None = None) -> Results:
        """A grid's results before any of its runs: nothing read, every (cell, seed) missing."""
        return cls(grid.name, grid, tidy([]), [], [], folder=folder)


def find_grid_file(name: str) -> Path | None:
    """``configs/grids/NAME.yaml``, where a grid named ``name`` is committed; None if there is none."""
    path = REPO / "configs" / "grids" / f"{name}.yaml"
    return path if path.is_file() else None


def load_results(results_dir: str | Path, grid: Grid | str | Path | None = None,
                 seeds: list[int] | None = None) -> Results:
    """Read every ``*.json`` of a result folder; keep the current ones (for ``grid``, by default
    ``configs/grids/<name>.yaml`` when it exists), list the others as stale. With ``seeds``, only the
    results of those run seeds count (the others are left out, not stale)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise DogoError(f"result folder {results_dir} does not exist")
    files = sorted(results_dir.glob("*.json"))
    records = [(f, read_result(f)) for f in files]
    name = next((r["grid"] for _, r in records if r and "grid" in r), results_dir.name)
    if grid is None:
        found = find_grid_file(name)
        grid = load_grid(found) if found else None
    elif not isinstance(grid, Grid):
        grid = load_grid(grid)
    if grid is not None:
        name = grid.name
    current, stale = [], []
    for f, r in records:
        if r is None:
            stale.append((f.name, ["unreadable"]))
            continue
        if grid is not None:
            reasons = [] if r.get("grid") == grid.name else [f"grid {r.get('grid')!r}, not {grid.name!r}"]
            known = any(c.name == r.get("cell") for c in grid.spec.cells) and r.get("seed") in grid.spec.seeds
            if not known:
                reasons.append("not a (cell, seed) of the grid file")
            else:
                reasons += stale_reasons(r, grid, config_hash(grid.config(r["cell"], r["seed"])))
        else:
            reasons = [] if r.get("grid") == name else [f"grid {r.get('grid')!r}, not {name!r}"]
            if r.get("schema_version") != SCHEMA_VERSION or r.get("numerics_version") != NUMERICS_VERSION:
                reasons.append("schema or numerics version differs from this code's")
        if f.name != f"{result_name(r.get('cell'), r.get('seed'))}.json":
            reasons.append("file name does not match its cell and seed")
        if reasons:
            stale.append((f.name, reasons))
        elif seeds is None or r.get("seed") in seeds:
            current.append(r)
    return Results(name, grid, tidy(current), current, stale, None if seeds is None else sorted(set(seeds)),
                   results_dir)


def tidy(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (cell, run seed, peer, protocol, setting, metric): the value averaged over the
    evaluation's own seeds."""
    frames = []
    for r in records:
        df = pd.DataFrame(r["rows"], columns=r["columns"])
        df["cell"], df["run_seed"] = r["cell"], r["seed"]
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["cell", "seed", "peer", "protocol", "setting", "metric", "value"])
    df = pd.concat(frames, ignore_index=True)
    df["value"] = pd.to_numeric(df["value"])
    out = df.groupby(["cell", "run_seed", "peer", "protocol", "setting", "metric"], sort=False)["value"].mean()
    return out.reset_index().rename(columns={"run_seed": "seed"})


def main_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The headline numbers: top-1 of every protocol (corruptions: clean and the mean over all) and the
    t-SNE silhouette."""
    keep = ((table["metric"] == "top1") & ((table["protocol"] != "corruptions")
                                           | table["setting"].isin(["clean", "mean"])))
    keep |= (table["protocol"] == "tsne") & (table["metric"] == "silhouette")
    return table[keep]


def in_protocol_order(rows) -> list[tuple[str, str, str]]:
    """Distinct (protocol, setting, metric) in first-seen order, then stably by ``PROTOCOL_ORDER``."""
    rows = list(dict.fromkeys(rows))
    return sorted(rows, key=lambda r: PROTOCOL_ORDER.index(r[0]) if r[0] in PROTOCOL_ORDER else len(PROTOCOL_ORDER))


def row_order(table: pd.DataFrame) -> list[tuple[str, str, str]]:
    """A tidy table's (protocol, setting, metric), in the order every table and figure shows them."""
    return in_protocol_order(zip(table["protocol"], table["setting"], table["metric"]))


def format_value(value: float, metric: str, sign: bool = False) -> str:
    """A result number as every table prints it: 2 decimals (points of top-1), 3 for a silhouette,
    ``n/a`` when missing; ``sign``: always signed, as a difference is."""
    if value is None or math.isnan(value):
        return "n/a"
    digits = 3 if metric == "silhouette" else 2
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def columns_of(results: Results) -> list[tuple[str, str]]:
    """(cell, peer) in the grid's cell order, peers in each run's order."""
    order = [c.name for c in results.grid.spec.cells] if results.grid else []
    pairs = list(dict.fromkeys(zip(results.table["cell"], results.table["peer"])))
    return sorted(pairs, key=lambda p: order.index(p[0]) if p[0] in order else len(order))


def series_of(table: pd.DataFrame) -> dict[tuple, dict[int, float]]:
    """{(cell, peer, protocol, setting, metric): {run seed: value}} of a tidy table."""
    return {k: dict(zip(g["seed"], g["value"])) for k, g in table.groupby(KEYS, sort=False)}


def _paired_sides(results: Results):
    """(comparison label, (protocol, setting, metric), baseline {seed: value}, treatment {seed: value}) for
    every compare pair of the grid and every headline measure both sides have."""
    if results.grid is None:
        return
    table = main_rows(results.table)
    series = series_of(table)
    for pair in results.grid.spec.compare:
        (bc, bp), (tc, tp) = pair.sides
        for measure in row_order(table):
            base, treat = series.get((bc, bp, *measure)), series.get((tc, tp, *measure))
            if base is not None and treat is not None:
                yield pair.label, measure, base, treat


def comparisons(results: Results) -> list[dict[str, Any]]:
    """For every compare pair of the grid and every headline row both sides have: the paired difference."""
    out = []
    for label, (protocol, setting, metric), base, treat in _paired_sides(results):
        paired = sorted(set(base) & set(treat))  # the columns show exactly what is differenced
        out.append({"label": label, "protocol": protocol, "setting": setting, "metric": metric,
                    "baseline": summarize(base[s] for s in paired),
                    "treatment": summarize(treat[s] for s in paired),
                    "difference": paired_difference(base, treat)})
    return out


def differences_by_seed(results: Results) -> dict[tuple[str, str, str, str], dict[int, float]]:
    """{(comparison label, protocol, setting, metric): {run seed: treatment - baseline}} over the seeds
    where both sides of the comparison have a result."""
    return {(label, *measure): {s: treat[s] - base[s] for s in sorted(set(base) & set(treat))}
            for label, measure, base, treat in _paired_sides(results)}


def measure_label(protocol: str, setting: str, metric: str) -> str:
    """The short name of a headline measure, as the differences matrix and the forest plot title it."""
    if protocol in ("knn", "linear"):
        return {"knn": "kNN", "linear": "linear"}[protocol]
    if protocol == "noisy":
        return "noisy " + setting.split()[-1]
    if protocol == "corruptions":
        return f"corrupt. {setting}"
    if protocol == "tsne":
        return f"t-SNE {metric}"
    if protocol == "transfer":
        return f"→ {setting}"
    return setting


def seed_span(seeds: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``: runs of consecutive seeds as ranges."""
    spans: list[list[int]] = []
    for s in sorted(set(seeds)):
        if spans and s == spans[-1][1] + 1:
            spans[-1][1] = s
        else:
            spans.append([s, s])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def cross_machine_pairs(results: Results) -> list[tuple[str, int, str, str]]:
    """(comparison, seed, baseline's machine, treatment's machine) for every paired seed whose two cells
    ran on different machines (each result's ``device``). Float kernels differ between CPUs by about as
    much as the smaller effects the study measures, so such a difference mixes machine and treatment."""
    if results.grid is None:
        return []
    device = {(r["cell"], r["seed"]): r.get("device") for r in results.records}
    out = []
    for pair in results.grid.spec.compare:
        (bc, _), (tc, _) = pair.sides
        for seed in results.seeds:
            base, treat = device.get((bc, seed)), device.get((tc, seed))
            if base is not None and treat is not None and base != treat:
                out.append((pair.label, seed, base, treat))
    return out


def missing_runs(results: Results) -> dict[str, list[int]]:
    """The grid's (cell, seeds) without a current result, in the grid's order."""
    if results.grid is None:
        return {}
    have = {(r["cell"], r["seed"]) for r in results.records}
    wanted = results.wanted_seeds
    missing = {c.name: [s for s in wanted if (c.name, s) not in have] for c in results.grid.spec.cells}
    return {cell: seeds for cell, seeds in missing.items() if seeds}


__all__ = ["Results", "load_results", "find_grid_file", "tidy", "main_rows", "comparisons", "differences_by_seed",
           "columns_of", "series_of", "in_protocol_order", "row_order", "measure_label", "format_value",
           "cross_machine_pairs", "missing_runs", "seed_span", "MIN_SEEDS", "PROTOCOL_ORDER", "KEYS"]
