"""The report of a grid's results: mean +- std over seeds, paired differences with 95 % intervals, figures.

    dogo report results/cpu_fmnist_cnn [--grid configs/grids/cpu_fmnist_cnn.yaml] [--figures figures]
                [--readme README.md]

reads only the result JSONs (``dogo.grid``), never a checkpoint. Results that are stale for the grid
file (another config, numerics version or evaluation settings) are listed and left out of every table.

Statistics (``dogo.stats``), per protocol / setting / metric and per (cell, peer): mean +- std over
training seeds, and for each ``compare`` pair the paired difference over the seeds both have with its
95 % interval. An interval that contains 0 is "within noise". Below 3 seeds the interval is printed with
a warning: from 2 seeds it says almost nothing.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .cli import SeedList
from .errors import DogoError
from .grid import REPO, Grid, config_hash, load_grid, read_result, result_name, stale_reasons
from .stats import PairedDifference, Summary, paired_difference, planned_power, summarize

MIN_SEEDS = 3  # fewer seeds than this: intervals are printed with a warning
PROTOCOL_ORDER = ("knn", "linear", "limited", "noisy", "transfer", "corruptions", "tsne")
KEYS = ["cell", "peer", "protocol", "setting", "metric"]


# ============================================================================ formatting


def format_power(power: float | None) -> str:
    """``35 %``, or ``n/a`` where no power applies."""
    return "n/a" if power is None else f"{100 * power:.0f} %"


# ============================================================================ loading results


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


def find_grid_file(name: str) -> Path | None:
    path = REPO / "configs" / "grids" / f"{name}.yaml"
    return path if path.is_file() else None


def load_results(results_dir: str | Path, grid: Grid | str | Path | None = None,
                 seeds: list[int] | None = None) -> Results:
    """Read every ``*.json`` of a result folder; keep the current ones (for ``grid``, by default
    ``configs/grids/<name>.yaml`` when it exists), list the others as stale. With ``seeds``, only the
    results of those run seeds count (the others are left out, not stale)."""
    from .grid import NUMERICS_VERSION, SCHEMA_VERSION

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


def _in_protocol_order(rows) -> list[tuple[str, str, str]]:
    """Distinct (protocol, setting, metric) in first-seen order, then stably by ``PROTOCOL_ORDER``."""
    rows = list(dict.fromkeys(rows))
    return sorted(rows, key=lambda r: PROTOCOL_ORDER.index(r[0]) if r[0] in PROTOCOL_ORDER else len(PROTOCOL_ORDER))


def _row_order(table: pd.DataFrame) -> list[tuple[str, str, str]]:
    return _in_protocol_order(zip(table["protocol"], table["setting"], table["metric"]))


def _differences_style(results: Results) -> bool:
    """The grid asks for the README's differences matrix (``readme: differences``)."""
    return results.grid is not None and results.grid.spec.readme == "differences"


# ============================================================================ the report text


def _fmt(value: float, metric: str, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    digits = 3 if metric == "silhouette" else 2
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _mean_std(s: Summary, metric: str, n_all: int) -> str:
    text = _fmt(s.mean, metric)
    if s.n > 1:
        text += f" ± {_fmt(s.std, metric)}"
    if s.n != n_all:
        text += f" (n={s.n})"
    return text


def columns_of(results: Results) -> list[tuple[str, str]]:
    """(cell, peer) in the grid's cell order, peers in each run's order."""
    order = [c.name for c in results.grid.spec.cells] if results.grid else []
    pairs = list(dict.fromkeys(zip(results.table["cell"], results.table["peer"])))
    return sorted(pairs, key=lambda p: order.index(p[0]) if p[0] in order else len(order))


def means_table(results: Results) -> str:
    """Markdown: rows = protocol / setting / metric, columns = cell/peer, entries mean ± std over seeds."""
    table = main_rows(results.table)
    if table.empty:
        return "(no current results)"
    columns = columns_of(results)
    n_of = {col: table[(table["cell"] == col[0]) & (table["peer"] == col[1])]["seed"].nunique() for col in columns}
    head = "| protocol | setting | metric | " + " | ".join(f"{c}/{p} (n={n_of[(c, p)]})" for c, p in columns) + " |"
    lines = [head, "|---|---|---|" + "---:|" * len(columns)]
    groups = {k: g["value"].to_numpy() for k, g in table.groupby(KEYS, sort=False)}
    for protocol, setting, metric in _row_order(table):
        cells = []
        for c, p in columns:
            values = groups.get((c, p, protocol, setting, metric))
            cells.append("" if values is None else _mean_std(summarize(values), metric, n_of[(c, p)]))
        lines.append(f"| {protocol} | {setting} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _series(table: pd.DataFrame) -> dict[tuple, dict[int, float]]:
    """{(cell, peer, protocol, setting, metric): {run seed: value}} of a tidy table."""
    return {k: dict(zip(g["seed"], g["value"])) for k, g in table.groupby(KEYS, sort=False)}


def comparisons(results: Results) -> list[dict[str, Any]]:
    """For every compare pair of the grid and every headline row both sides have: the paired difference."""
    if results.grid is None:
        return []
    table = main_rows(results.table)
    series = _series(table)
    out = []
    for pair in results.grid.spec.compare:
        (bc, bp), (tc, tp) = pair.sides
        for protocol, setting, metric in _row_order(table):
            base, treat = series.get((bc, bp, protocol, setting, metric)), series.get((tc, tp, protocol, setting, metric))
            if base is None or treat is None:
                continue
            paired = sorted(set(base) & set(treat))  # the columns show exactly what is differenced
            out.append({"label": pair.label, "protocol": protocol, "setting": setting, "metric": metric,
                        "baseline": summarize(base[s] for s in paired),
                        "treatment": summarize(treat[s] for s in paired),
                        "difference": paired_difference(base, treat)})
    return out


def comparisons_table(results: Results) -> str:
    """Markdown: one row per (pair, protocol, setting, metric) with the paired difference and its interval."""
    rows = comparisons(results)
    if not rows:
        return "(no comparison with results on both sides)"
    lines = ["| comparison | protocol | setting | baseline | treatment | difference | 95 % CI | n | |",
             "|---|---|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        d, m = r["difference"], r["metric"]
        ci = "n/a" if d.n < 2 else f"[{_fmt(d.low, m, True)}, {_fmt(d.high, m, True)}]"
        verdict = ("no interval" if d.n < 2 else "within noise" if d.within_noise
                   else "better" if d.mean > 0 else "worse")
        if d.n < MIN_SEEDS:
            verdict += f"; ⚠ {d.n} seed{'s' if d.n != 1 else ''}: interval not meaningful"
        setting = r["setting"] + ("" if m == "top1" else f" ({m})")
        lines.append(f"| {r['label']} | {r['protocol']} | {setting} | {_fmt(r['baseline'].mean, m)} | "
                     f"{_fmt(r['treatment'].mean, m)} | {_fmt(d.mean, m, True)} | {ci} | {d.n} | {verdict} |")
    return "\n".join(lines)


def _short_setting(protocol: str, setting: str, metric: str) -> str:
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


def differences_matrix(results: Results) -> str:
    """Markdown: one row per comparison, one column per headline protocol, each entry the paired
    difference and the half width of its 95 % interval, bold where the interval excludes 0."""
    rows = comparisons(results)
    if not rows:
        return "(no comparison with results on both sides)"
    columns = _in_protocol_order((r["protocol"], r["setting"], r["metric"]) for r in rows)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    entry = {(r["label"], r["protocol"], r["setting"], r["metric"]): r["difference"] for r in rows}
    lines = ["| comparison | seeds | " + " | ".join(_short_setting(*c) for c in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for label in labels:
        cells, n = [], set()
        for protocol, setting, metric in columns:
            d = entry.get((label, protocol, setting, metric))
            if d is None:
                cells.append("")
                continue
            n.add(d.n)
            text = _fmt(d.mean, metric, True) + ("" if d.n < 2 else f" ± {_fmt((d.high - d.low) / 2, metric)}")
            cells.append(text if d.within_noise else f"**{text}**")
        lines.append(f"| {label} | {'/'.join(map(str, sorted(n)))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def intervals_excluding_zero(results: Results) -> tuple[int, int]:
    """(intervals that exclude 0, intervals) over every comparison and headline row with 2 or more paired seeds."""
    differences = [c["difference"] for c in comparisons(results) if c["difference"].n >= 2]
    return sum(not d.within_noise for d in differences), len(differences)


def chance_line(results: Results, level: float = 0.95) -> str | None:
    """How many intervals exclude 0, beside how many would by chance alone if no treatment changed anything:
    each 95 % interval excludes 0 with probability 5 % under that null, so many intervals read at once give
    some "effects" that are noise."""
    excluding, total = intervals_excluding_zero(results)
    if total == 0:
        return None
    chance = 1 - level
    return (f"{excluding} of {total} intervals exclude 0 ({100 * excluding / total:.1f} %); if no treatment changed "
            f"anything, {100 * chance:.0f} % of them (about {chance * total:.1f}) would by chance alone.")


def _side(d: PairedDifference) -> str:
    return "lower" if d.high < 0 else "higher" if d.low > 0 else "within_noise"


def prediction_verdict(expect: str, d: PairedDifference | None, seeds_wanted: int) -> str:
    """Whether a prediction held: "confirmed" when the 95 % interval lies on the predicted side of 0
    (or contains 0, for ``within_noise``); "pending" until every seed of the grid is in; no verdict from
    fewer than ``MIN_SEEDS`` seeds, whose intervals are not meaningful."""
    n = 0 if d is None else d.n
    if n < seeds_wanted:
        return f"pending ({n} of {seeds_wanted} seeds)"
    if n < MIN_SEEDS:
        return f"no verdict from {n} seed{'s' if n != 1 else ''}: at least {MIN_SEEDS} are needed"
    side = _side(d)
    if side == expect:
        return "confirmed"
    if expect == "within_noise":
        return f"not confirmed: {side}"
    if side == "within_noise":
        return "not confirmed: within noise"
    return f"not confirmed: {side}, the opposite"


def _confirmed_results(results: Results) -> Results | None:
    """The results of the grid this one confirms (a sibling folder ``results/<confirms>``), if any."""
    spec = results.grid.spec if results.grid else None
    if spec is None or not spec.confirms or results.folder is None:
        return None
    folder = results.folder.parent / spec.confirms
    return load_results(folder) if folder.is_dir() and any(folder.glob("*.json")) else None


def _difference(series: dict, baseline: tuple, treatment: tuple) -> PairedDifference | None:
    base, treat = series.get(baseline), series.get(treatment)
    return None if base is None or treat is None else paired_difference(base, treat)


def prediction_checks(results: Results) -> list[dict[str, Any]]:
    """Each of the grid's predictions: its measure, its paired difference on these seeds, the same
    comparison on the results of the grid it confirms (its cells of the same names), and the verdict."""
    return _prediction_checks(results, _confirmed_results(results))


def _prediction_checks(results: Results, explored: Results | None) -> list[dict[str, Any]]:
    spec = results.grid.spec if results.grid else None
    if spec is None or not spec.predictions:
        return []
    here = _series(main_rows(results.table))
    there = _series(main_rows(explored.table)) if explored is not None else {}
    pairs = {pair.label: pair for pair in spec.compare}
    wanted = len(results.only_seeds if results.only_seeds is not None else spec.seeds)
    out = []
    for prediction in spec.predictions:
        pair = pairs[prediction.comparison]
        (bc, bp), (tc, tp) = pair.sides
        measures = list(dict.fromkeys((k[3], k[4]) for series in (here, there) for k in series
                                      if k[:3] == (tc, tp, prediction.protocol)))
        found = [m for m in measures if m[0] == prediction.setting or (not prediction.setting and len(measures) == 1)]
        row = {"comparison": prediction.comparison, "protocol": prediction.protocol, "expect": prediction.expect,
               "setting": prediction.setting, "metric": "top1", "difference": None, "explored": None, "power": None}
        if not found:
            listed = ", ".join(repr(m[0]) for m in measures)
            row["verdict"] = (f"no measure {prediction.protocol} {prediction.setting!r} in the results (its "
                              f"settings: {listed})" if measures else prediction_verdict(prediction.expect, None, wanted))
            out.append(row)
            continue
        setting, metric = found[0]
        row.update(setting=setting, metric=metric)
        measure = (prediction.protocol, setting, metric)
        row["difference"], row["explored"] = (_difference(series, (bc, bp, *measure), (tc, tp, *measure))
                                              for series in (here, there))
        row["verdict"] = prediction_verdict(prediction.expect, row["difference"], wanted)
        row["power"] = planned_power(prediction.expect, row["explored"], wanted)
        out.append(row)
    return out


def format_interval(d: PairedDifference | None, metric: str) -> str:
    """``+1.23 [+0.45, +2.01]``: a paired difference and its 95 % interval, as the predictions tables show it."""
    if d is None:
        return "n/a"
    if d.n < 2:
        return f"{_fmt(d.mean, metric, True)} (1 seed)"
    return f"{_fmt(d.mean, metric, True)} [{_fmt(d.low, metric, True)}, {_fmt(d.high, metric, True)}]"


def predictions_table(results: Results) -> str | None:
    """Markdown: each prediction, the interval that suggested it, the fresh seeds' interval, the verdict."""
    if results.grid is None or not results.grid.spec.predictions:
        return None
    explored = _confirmed_results(results)  # read once, for the column and its header
    checks = _prediction_checks(results, explored)
    spec = results.grid.spec
    source = (f"`{spec.confirms}`, seeds {', '.join(map(str, explored.seeds))}" if explored is not None
              else f"`{spec.confirms}` (no results found)")

    before = bool(spec.confirms)  # a grid that confirms none (predictions from elsewhere) has no "before" column
    lines = ["| comparison | measure | predicted | " + (f"before ({source}) | power | " if before else "")
             + "these seeds | verdict |", "|---|---|---|" + ("---:|---:|" if before else "") + "---:|---|"]
    for c in checks:
        measure = f"{c['protocol']} {c['setting']}".strip()
        earlier = f"{format_interval(c['explored'], c['metric'])} | {format_power(c['power'])} | " if before else ""
        lines.append(f"| {c['comparison']} | {measure} | {c['expect'].replace('_', ' ')} | {earlier}"
                     f"{format_interval(c['difference'], c['metric'])} | {c['verdict']} |")
    counts = {kind: sum(c["verdict"].startswith(kind) for c in checks)
              for kind in ("confirmed", "not confirmed", "pending", "no verdict")}
    unread = f", {counts['no verdict']} without a verdict" if counts["no verdict"] else ""
    head = (f"Predictions written in `{spec.name}`'s grid file before its seeds ran: {counts['confirmed']} of "
            f"{len(checks)} confirmed, {counts['not confirmed']} not confirmed, {counts['pending']} pending{unread} "
            "(confirmed: the 95 % interval on the predicted side of 0, or containing 0 where no difference was "
            "predicted)." + (" Power: the chance these seeds had to confirm a predicted difference if it were as "
                             "large, and as spread over seeds, as before (optimistic where the earlier size was "
                             "picked by looking)." if before else ""))
    return head + "\n\n" + "\n".join(lines)


def seed_warning(results: Results) -> str | None:
    n = len(results.seeds)
    if 0 < n < MIN_SEEDS:
        return (f"⚠ only {n} seed{'s' if n != 1 else ''} ({', '.join(map(str, results.seeds))}): spreads and "
                f"intervals from fewer than {MIN_SEEDS} seeds are not meaningful; run more seeds before "
                "drawing conclusions.")
    return None


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


def machine_warning(results: Results) -> str | None:
    pairs = cross_machine_pairs(results)
    if not pairs:
        return None
    listed = "; ".join(f"{label}, seed {seed}: {base} / {treat}" for label, seed, base, treat in pairs)
    return (f"⚠ {len(pairs)} paired seed{'s' if len(pairs) != 1 else ''} ran baseline and treatment on different "
            f"machines ({listed}): those differences include the machines' float differences. Rerun one side on "
            "the other's machine to pair them cleanly.")


def missing_runs(results: Results) -> dict[str, list[int]]:
    """The grid's (cell, seeds) without a current result, in the grid's order."""
    if results.grid is None:
        return {}
    have = {(r["cell"], r["seed"]) for r in results.records}
    wanted = [s for s in results.grid.spec.seeds if results.only_seeds is None or s in results.only_seeds]
    missing = {c.name: [s for s in wanted if (c.name, s) not in have] for c in results.grid.spec.cells}
    return {cell: seeds for cell, seeds in missing.items() if seeds}


def readme_block(results: Results) -> str:
    """What goes between the README's ``<!-- report:NAME -->`` markers: the headline tables."""
    matrix = _differences_style(results)
    shown = "paired differences over seeds" if matrix else "mean ± std over seeds"
    if results.only_seeds is None:
        only, command = "", f"`dogo report results/{results.name}` makes this block"
    else:
        listed = ",".join(map(str, results.only_seeds))
        only, command = " only", f"`dogo report results/{results.name} --seeds {listed}` prints it"
    parts = [f"Grid `{results.name}`: {len(results.records)} results, seeds {', '.join(map(str, results.seeds))}{only} "
             f"({shown}; {command})."]
    for warning in (seed_warning(results), machine_warning(results)):
        if warning:
            parts.append(warning)
    missing = missing_runs(results)
    if missing:
        parts.append("Not run yet (no row or comparison for them): " + ", ".join(
            f"{cell} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})" for cell, seeds in missing.items())
            + ".")
    if matrix:
        parts += ["Paired differences treatment - baseline: mean ± half width of the 95 % interval over the "
                  "paired seeds (none with one seed); **bold**: the interval excludes 0. Top-1 in points; "
                  "REPORT.md has the means and the intervals:",
                  differences_matrix(results)]
    else:
        parts += [means_table(results), "Paired differences (treatment - baseline, same seeds):",
                  comparisons_table(results)]
    chance = chance_line(results)
    if chance:
        parts.append(chance)
    predictions = predictions_table(results)
    if predictions:
        parts.append(predictions)
    return "\n\n".join(parts)


def format_report(results: Results, figures: list[Path] | None = None, block: str | None = None) -> str:
    """The whole REPORT.md; ``block``: its ``readme_block``, when the caller already made it."""
    devices = sorted({r.get("device", "?") for r in results.records})
    versions = sorted({f"dogo {r.get('dogo_version')}, numerics {r.get('numerics_version')}" for r in results.records})
    ladder = sorted({str(r.get("corruption_ladder")) for r in results.records})
    subset = "" if results.only_seeds is None else f" (seeds {', '.join(map(str, results.only_seeds))} only)"
    parts = [f"# Report: {results.name}{subset}", readme_block(results) if block is None else block]
    if _differences_style(results):
        parts += ["## Means and every paired difference", means_table(results), comparisons_table(results)]
    details = [f"- devices: {', '.join(devices) or 'none'}", f"- code: {'; '.join(versions) or 'none'}",
               f"- corruption ladder: {', '.join(ladder) or 'none'}"]
    adopted = sorted({r["adopted_from"].get("grid") for r in results.records if r.get("adopted_from")})
    for source in adopted:
        keys = [result_name(r["cell"], r["seed"]) for r in results.records
                if (r.get("adopted_from") or {}).get("grid") == source]
        details.append(f"- adopted from grid `{source}` (the same experiments): {', '.join(keys)}")
    if results.grid is None:
        details.append("- no grid file found: staleness checked against this code's versions only, no comparisons")
    parts.append("## Provenance\n\n" + "\n".join(details))
    if results.stale:
        parts.append("## Stale results (not in any table; re-run with `dogo grid ... --rerun-stale`)\n\n"
                     + "\n".join(f"- {name}: {'; '.join(reasons)}" for name, reasons in results.stale))
    if figures:
        parts.append("## Figures\n\n" + "\n".join(f"- {p}" for p in figures))
    return "\n\n".join(parts) + "\n"


# ============================================================================ figures


def series_styles(results: Results) -> dict[tuple[str, str], dict[str, Any]]:
    """One colour per role, as in every figure of the kit (``viz.ROLE_COLORS``): a peer trained alone,
    the first peer of a cohort (the student) and the other peers; a second series of the same role is
    hatched (bars) and dashed (curves)."""
    from .viz import ROLE_COLORS

    peers_of: dict[str, list[str]] = {}
    for cell, peer in columns_of(results):
        peers_of.setdefault(cell, []).append(peer)
    styles, seen = {}, {}
    for cell, peer in columns_of(results):
        peers = peers_of[cell]
        role = "alone" if len(peers) == 1 else "student" if peer == peers[0] else "peer"
        again = seen.get(role, 0)
        seen[role] = again + 1
        styles[(cell, peer)] = {"color": ROLE_COLORS[role], "hatch": "//" if again else None,
                                "linestyle": "--" if again else "-"}
    return styles


def plot_bars(results: Results):
    """Headline top-1 per protocol and setting: one bar per (cell, peer), error bars = std over seeds."""
    from matplotlib.figure import Figure

    table = main_rows(results.table)
    table = table[table["metric"] == "top1"]
    rows = _row_order(table)
    columns = columns_of(results)
    fig = Figure(figsize=(max(6.0, 0.9 * len(rows) * max(1, len(columns)) * 0.45 + 2), 4.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(columns))
    groups = {k: g["value"].to_numpy() for k, g in table.groupby(KEYS, sort=False)}
    styles = series_styles(results)
    for i, (c, p) in enumerate(columns):
        stats = [summarize(groups.get((c, p, *row), [])) for row in rows]
        x = np.arange(len(rows)) + (i - (len(columns) - 1) / 2) * width
        style = styles[(c, p)]
        ax.bar(x, [s.mean for s in stats], width, yerr=[0 if math.isnan(s.std) else s.std for s in stats],
               capsize=2, label=f"{c}/{p}", color=style["color"], hatch=style["hatch"], edgecolor="white")
    ax.set_xticks(np.arange(len(rows)), [f"{prot}\n{setting}" for prot, setting, _ in rows], fontsize=7)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{results.name}: mean ± std over seeds {', '.join(map(str, results.seeds))}")
    ax.legend(fontsize=7)
    return fig


def plot_differences(results: Results):
    """Paired differences with their 95 % intervals: one panel per headline protocol, one row per
    comparison; filled markers where the interval excludes 0 (a forest plot). None without comparisons."""
    from matplotlib.figure import Figure

    rows = [r for r in comparisons(results) if r["difference"].n >= 2]
    if not rows:
        return None
    labels = list(dict.fromkeys(r["label"] for r in rows))
    panels = _in_protocol_order((r["protocol"], r["setting"], r["metric"]) for r in rows)
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.2 * ncols + 2.5, (0.28 * len(labels) + 0.9) * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    y = {label: i for i, label in enumerate(reversed(labels))}
    for ax, (protocol, setting, metric) in zip(axes, panels):
        for r in (r for r in rows if (r["protocol"], r["setting"], r["metric"]) == (protocol, setting, metric)):
            d = r["difference"]
            colour = "tab:gray" if d.within_noise else ("tab:green" if d.mean > 0 else "tab:red")
            ax.errorbar(d.mean, y[r["label"]], xerr=[[d.mean - d.low], [d.high - d.mean]], fmt="o", color=colour,
                        mfc=colour if not d.within_noise else "white", capsize=2, markersize=4)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.set_title(_short_setting(protocol, setting, metric), fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].set_yticks(list(y.values()), list(y.keys()), fontsize=7)
    fig.suptitle(f"{results.name}: paired difference treatment - baseline, 95 % interval over seeds "
                 "(grey: contains 0)", fontsize=10)
    return fig


def plot_knn_curves(results: Results):
    """The kNN monitor over epochs per (cell, peer): mean over seeds, band = ± std."""
    from matplotlib.figure import Figure

    curves: dict[tuple[str, str], dict[int, list[float]]] = {}
    for r in results.records:
        epochs = r.get("curves", {}).get("epoch", [])
        for peer, values in r.get("curves", {}).get("peers", {}).items():
            for epoch, acc in zip(epochs, values.get("knn_top1", [])):
                if acc is not None:
                    curves.setdefault((r["cell"], peer), {}).setdefault(epoch, []).append(acc)
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    styles = series_styles(results)
    for c, p in columns_of(results):
        points = curves.get((c, p))
        if not points:
            continue
        epochs = sorted(points)
        stats = [summarize(points[e]) for e in epochs]
        mean = np.array([s.mean for s in stats])
        std = np.array([0.0 if math.isnan(s.std) else s.std for s in stats])
        style = styles[(c, p)]
        ax.plot(epochs, mean, marker="o", label=f"{c}/{p}", color=style["color"], linestyle=style["linestyle"])
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=style["color"])
    ax.set(xlabel="epoch", ylabel="kNN top-1 (%)", title=f"{results.name}: kNN monitor (mean ± std over seeds)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    return fig


def tsne_panels(results: Results) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For every compare pair: the stored t-SNE of the baseline and of the treatment peer (first seed
    both have), e.g. alone vs with its peer."""
    by_key = {(r["cell"], r["seed"]): r for r in results.records}
    panels = {}
    pairs = results.grid.spec.compare if results.grid else []
    for pair in pairs:
        (bc, bp), (tc, tp) = pair.sides
        seeds = [s for s in results.seeds if (bc, s) in by_key and (tc, s) in by_key]
        for cell, peer in ((bc, bp), (tc, tp)):
            stored = by_key[(cell, seeds[0])].get("tsne", {}).get(peer) if seeds else None
            if stored:
                panels[f"{cell}/{peer} (seed {seeds[0]})"] = (np.column_stack([stored["x"], stored["y"]]),
                                                              np.asarray(stored["label"]))
    return panels


def write_figures(results: Results, directory: str | Path) -> list[Path]:
    """``NAME_bars.png``, ``NAME_knn_curves.png``, ``NAME_differences.png`` (paired differences, when two
    seeds or more are paired) and, when t-SNE was stored, ``NAME_tsne.png``."""
    from .viz import draw_embeddings, save_figure

    if not results.records:
        return []
    written = [save_figure(plot_bars(results), directory, f"{results.name}_bars.png"),
               save_figure(plot_knn_curves(results), directory, f"{results.name}_knn_curves.png")]
    differences = plot_differences(results)
    if differences is not None:
        written.append(save_figure(differences, directory, f"{results.name}_differences.png"))
    panels = tsne_panels(results)
    if panels:
        classes = next((r.get("classes") for r in results.records if r.get("classes")), None)
        fig = draw_embeddings(panels, None, class_names=classes, title=f"{results.name}: t-SNE of test features")
        written.append(save_figure(fig, directory, f"{results.name}_tsne.png"))
    return written


# ============================================================================ a re-run against the committed results


def rerun_table(rerun: Results, reference: Results) -> str:
    """Markdown: every headline number of the (cell, seed) pairs both folders hold, the reference's value,
    the re-run's and their difference, beside the reference's seed-to-seed standard deviation of that
    row (the scale a re-run on another machine should stay well within)."""
    a, b = main_rows(reference.table), main_rows(rerun.table)
    hashes = {(r["cell"], r["seed"]): r["config_hash"] for r in reference.records}
    both = [(r["cell"], r["seed"]) for r in rerun.records if (r["cell"], r["seed"]) in hashes]
    if not both:
        return "(no (cell, seed) in both folders)"
    differing = [result_name(r["cell"], r["seed"]) for r in rerun.records
                 if hashes.get((r["cell"], r["seed"]), r["config_hash"]) != r["config_hash"]]
    # The inner merge keeps exactly the (cell, seed) pairs both folders hold.
    merged = a.merge(b, on=[*KEYS, "seed"], suffixes=("_reference", "_rerun"))
    spread = {k: g["value"].std(ddof=1) for k, g in a.groupby(KEYS, sort=False)}
    lines = ["| run | peer | protocol | setting | reference | re-run | difference | reference seed std |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    worst = None
    for row in merged.itertuples(index=False):
        m = row.metric
        diff = row.value_rerun - row.value_reference
        std = spread.get((row.cell, row.peer, row.protocol, row.setting, m), float("nan"))
        setting = row.setting + ("" if m == "top1" else f" ({m})")
        lines.append(f"| {result_name(row.cell, row.seed)} | {row.peer} | {row.protocol} | {setting} | "
                     f"{_fmt(row.value_reference, m)} | {_fmt(row.value_rerun, m)} | {_fmt(diff, m, True)} | "
                     f"{_fmt(std, m)} |")
        if m == "top1" and (worst is None or abs(diff) > abs(worst[0])):
            worst = (diff, f"{result_name(row.cell, row.seed)} {row.peer} {row.protocol} {row.setting}", std)
    head = [f"{len(both)} run(s) in both folders: {', '.join(result_name(c, s) for c, s in both)}."]
    if differing:
        head.append(f"⚠ different config hash (not the same experiment): {', '.join(differing)}.")
    if worst is not None:
        head.append(f"Largest top-1 difference: {worst[0]:+.2f} points ({worst[1]}); the reference's seed-to-seed "
                    f"std of that row is {_fmt(worst[2], 'top1')}.")
    return "\n\n".join([" ".join(head), "\n".join(lines)])


# ============================================================================ README block


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- report:{name} -->", f"<!-- /report:{name} -->"


def readme_blocks(text: str) -> dict[str, str]:
    """The marked report blocks of a README: name -> content between the markers (stripped)."""
    pattern = re.compile(r"<!-- report:([A-Za-z0-9_.-]+) -->\n(.*?)\n?<!-- /report:\1 -->", re.S)
    return {m.group(1): m.group(2).strip() for m in pattern.finditer(text)}


def replace_readme_block(text: str, name: str, block: str) -> str:
    """``text`` with the content between ``<!-- report:NAME -->`` and ``<!-- /report:NAME -->`` replaced."""
    return replace_between_markers(text, *_markers(name), block)


def replace_between_markers(text: str, start: str, end: str, block: str) -> str:
    """``text`` with the content between the lines ``start`` and ``end`` replaced by ``block``."""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise DogoError(f"the README has no block {start} ... {end}; add both markers where the table should go")
    return text[: i + len(start)] + "\n" + block.strip() + "\n" + text[j:]


# ============================================================================ command line


def write_report(results_dir: str | Path, grid: str | Path | None = None, figures: str | Path | None = "figures",
                 readme: str | Path | None = None) -> tuple[Results, str]:
    """Load the results, write ``REPORT.md`` into the result folder (figures into ``figures``, the block
    into ``readme`` when given); return the results and the report text."""
    from .runlog import atomic_write_bytes

    results = load_results(results_dir, grid)
    paths = write_figures(results, figures) if figures is not None else []
    block = readme_block(results)  # made once: it reads the confirmed grid's results, for REPORT.md and README
    text = format_report(results, paths, block)
    atomic_write_bytes(Path(results_dir) / "REPORT.md", lambda f: f.write(text.encode()))
    if readme is not None:
        readme = Path(readme)
        if not readme.is_file():
            raise DogoError(f"README {readme} does not exist")
        updated = replace_readme_block(readme.read_text(), results.name, block)
        atomic_write_bytes(readme, lambda f: f.write(updated.encode()))
    return results, text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dogo report`` subcommand."""
    parser.description = ("Summarise a grid's results (mean ± std over seeds, paired differences with 95 % "
                          "intervals), write REPORT.md into the result folder and the figures.")
    parser.add_argument("results", metavar="RESULTS_DIR", help="a grid's result folder, e.g. results/NAME")
    parser.add_argument("--grid", default=None, metavar="GRID.yaml",
                        help="the grid file (default configs/grids/NAME.yaml): decides what is stale and the comparisons")
    parser.add_argument("--figures", default=None, metavar="DIR",
                        help="where NAME_*.png go (default figures/; with --against, none unless given)")
    parser.add_argument("--no-figures", action="store_true", help="write no figures")
    parser.add_argument("--readme", default=None, metavar="README.md",
                        help="rewrite the block between <!-- report:NAME --> and <!-- /report:NAME --> in place")
    parser.add_argument("--seeds", default=None, action=SeedList,
                        help="only these run seeds (3 4 or 3,4), e.g. a later batch apart from the first: prints "
                             "the report and writes nothing (no REPORT.md, figures or README block)")
    parser.add_argument("--against", default=None, metavar="REFERENCE_DIR",
                        help="also compare every (cell, seed) found in both folders with the reference's numbers, "
                             "e.g. a re-run of committed cells against results/NAME")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    if args.seeds is not None:
        # A subset of seeds is a reading, not the grid's report: it must not overwrite the committed files.
        given = [flag for flag, value in (("--readme", args.readme), ("--figures", args.figures),
                                           ("--against", args.against)) if value]
        if given:
            raise DogoError(f"--seeds prints a report of some seeds and writes nothing: drop {', '.join(given)}")
        results = load_results(args.results, args.grid, seeds=args.seeds)
        missing = sorted(set(args.seeds) - set(results.seeds))
        if missing:
            raise DogoError(f"--seeds: no current result in {args.results} has seed {', '.join(map(str, missing))}")
        print(format_report(results))
        return 0
    figures = args.figures or (None if args.against else "figures")
    results, text = write_report(args.results, args.grid, None if args.no_figures else figures, args.readme)
    print(text)
    if args.against:
        reference = load_results(args.against, results.grid)
        print(f"## Against {args.against}\n\n" + rerun_table(results, reference))
    return 0


__all__ = ["load_results", "means_table", "comparisons_table", "readme_block",
           "format_report", "write_report", "write_figures", "readme_blocks", "replace_readme_block", "rerun_table",
           "differences_matrix", "intervals_excluding_zero", "chance_line",
           "prediction_checks", "prediction_verdict", "predictions_table", "format_interval", "replace_between_markers",
           "format_power", "cross_machine_pairs"]
