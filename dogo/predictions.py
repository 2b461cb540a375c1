"""Predictions written in a grid file before its seeds ran, and whether the seeds bore them out.

A confirmation grid (``predictions:`` in ``configs/grids/*.yaml``) says which paired differences its fresh
seeds should show: ``lower``, ``higher`` or ``within_noise``; ``confirms:`` names the grid where they were
first seen. A grid of new cells sizes a prediction on an earlier grid's committed results instead
(``sized_on: {grid, baseline, treatment, seeds}``): the difference its planned power was computed from.
``prediction_checks`` gives each prediction its paired difference on these seeds, the earlier difference
(the ``sized_on`` one, or the same comparison on the confirmed grid's results), the power the seeds had
(``dogo.stats.planned_power``) and the verdict; ``dogo report`` prints them as ``predictions_table``,
``dogo ledger`` gathers them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import DogoError
from .grid_file import REPO, CompareSpec, SizedOnSpec
from .results import MIN_SEEDS, Results, format_value, load_results, main_rows, series_of
from .stats import PairedDifference, paired_difference, planned_power


def format_power(power: float | None) -> str:
    """``35 %``, or ``n/a`` where no power applies."""
    return "n/a" if power is None else f"{100 * power:.0f} %"


def interval_side(d: PairedDifference) -> str:
    """Where a 95 % interval lies: ``lower`` or ``higher`` than 0, or ``within_noise`` (it contains 0)."""
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
    side = interval_side(d)
    if side == expect:
        return "confirmed"
    if expect == "within_noise":
        return f"not confirmed: {side}"
    if side == "within_noise":
        return "not confirmed: within noise"
    return f"not confirmed: {side}, the opposite"


def earlier_results(results: Results, cache: dict[Path, Results] | None = None) -> Results | None:
    """The results of the grid this one confirms (a sibling folder ``results/<confirms>``), if any;
    read once per folder when a ``cache`` is given."""
    spec = results.grid.spec if results.grid else None
    if spec is None or not spec.confirms or results.folder is None:
        return None
    return _committed_results(results.folder.parent / spec.confirms, cache)


def _committed_results(folder: Path, cache: dict[Path, Results] | None) -> Results | None:
    """The results in ``folder``, or None when it holds none; read once per folder when a ``cache`` is given."""
    if not folder.is_dir() or not any(folder.glob("*.json")):
        return None
    if cache is None:
        return load_results(folder)
    if folder not in cache:
        cache[folder] = load_results(folder)
    return cache[folder]


def _paired(series: dict, baseline: tuple, treatment: tuple, seeds: list[int] | None = None) -> PairedDifference | None:
    base, treat = series.get(baseline), series.get(treatment)
    if base is None or treat is None:
        return None
    if seeds:
        base, treat = ({s: v for s, v in side.items() if s in seeds} for side in (base, treat))
    return paired_difference(base, treat)


def _sized_on_series(results: Results, sized: SizedOnSpec, cache: dict[Path, Results] | None) -> dict:
    """The main rows of the committed results ``sized_on`` names (a sibling of this grid's folder)."""
    folder = (results.folder.parent if results.folder is not None else REPO / "results") / sized.grid
    found = _committed_results(folder, cache)
    if found is None:
        raise DogoError(f"grid {results.name}: a prediction is sized on {sized.grid}, but {folder} holds no results")
    return series_of(main_rows(found.table))


def prediction_checks(results: Results, cache: dict[Path, Results] | None = None) -> list[dict[str, Any]]:
    """Each of the grid's predictions: its measure, its paired difference on these seeds, the earlier paired
    difference it was sized on (``earlier``: the prediction's ``sized_on`` comparison, or else the same
    comparison on the results of the grid this one confirms), the power these seeds had, and the verdict.
    ``cache``: see ``earlier_results``."""
    spec = results.grid.spec if results.grid else None
    if spec is None or not spec.predictions:
        return []
    earlier = earlier_results(results, cache)
    here = series_of(main_rows(results.table))
    there = series_of(main_rows(earlier.table)) if earlier is not None else {}
    pairs = {pair.label: pair for pair in spec.compare}
    wanted = len(results.wanted_seeds)
    sized_series: dict[str, dict] = {}  # per sized-on grid, its main rows: made once for all its predictions
    out = []
    for prediction in spec.predictions:
        (bc, bp), (tc, tp) = pairs[prediction.comparison].sides
        sized = prediction.sized_on
        if sized is None:
            source, (before_base, before_treat), seeds = there, ((bc, bp), (tc, tp)), None
        else:
            if sized.grid not in sized_series:
                sized_series[sized.grid] = _sized_on_series(results, sized, cache)
            source, seeds = sized_series[sized.grid], sized.seeds
            before_base, before_treat = CompareSpec(sized.baseline, sized.treatment).sides
        row = {"comparison": prediction.comparison, "protocol": prediction.protocol, "expect": prediction.expect,
               "setting": prediction.setting, "metric": "top1", "difference": None, "earlier": None, "power": None,
               "sized_on": f"{sized.treatment} - {sized.baseline}, `{sized.grid}`" if sized is not None else None}
        measures = list(dict.fromkeys((k[3], k[4]) for series, side in ((here, (tc, tp)), (source, before_treat))
                                      for k in series if k[:3] == (*side, prediction.protocol)))
        found = [m for m in measures if m[0] == prediction.setting or (not prediction.setting and len(measures) == 1)]
        if found:
            setting, metric = found[0]
            measure = (prediction.protocol, setting, metric)
            row.update(setting=setting, metric=metric,
                       difference=_paired(here, (bc, bp, *measure), (tc, tp, *measure)),
                       earlier=_paired(source, (*before_base, *measure), (*before_treat, *measure), seeds))
        if sized is not None and (row["earlier"] is None or row["earlier"].n < 2):
            raise DogoError(f"grid {results.name}: the prediction {prediction.comparison!r} is sized on "
                            f"{sized.treatment} - {sized.baseline} in results/{sized.grid}, which has no "
                            f"{prediction.protocol} {row['setting']}".rstrip() + " on two or more shared seeds")
        if not found:
            listed = ", ".join(repr(m[0]) for m in measures)
            row["verdict"] = (f"no measure {prediction.protocol} {prediction.setting!r} in the results (its "
                              f"settings: {listed})" if measures else prediction_verdict(prediction.expect, None, wanted))
        else:
            row["verdict"] = prediction_verdict(prediction.expect, row["difference"], wanted)
            row["power"] = planned_power(prediction.expect, row["earlier"], wanted)
        out.append(row)
    return out


def verdict_counts(checks: list[dict[str, Any]]) -> dict[str, int]:
    """How many checks are confirmed, not confirmed, pending, or without a verdict (too few seeds)."""
    return {kind: sum(c["verdict"].startswith(kind) for c in checks)
            for kind in ("confirmed", "not confirmed", "pending", "no verdict")}


def format_interval(d: PairedDifference | None, metric: str) -> str:
    """``+1.23 [+0.45, +2.01]``: a paired difference and its 95 % interval, as the predictions tables show it."""
    if d is None:
        return "n/a"
    if d.n < 2:
        return f"{format_value(d.mean, metric, True)} (1 seed)"
    low, high = format_value(d.low, metric, True), format_value(d.high, metric, True)
    return f"{format_value(d.mean, metric, True)} [{low}, {high}]"


def predictions_table(results: Results) -> str | None:
    """Markdown: each prediction, the interval that suggested it, the fresh seeds' interval, the verdict."""
    if results.grid is None or not results.grid.spec.predictions:
        return None
    cache: dict[Path, Results] = {}  # the earlier grid's results, read once for the column and its header
    earlier = earlier_results(results, cache)
    checks = prediction_checks(results, cache)
    spec = results.grid.spec
    source = (f"`{spec.confirms}`, seeds {', '.join(map(str, earlier.seeds))}" if earlier is not None
              else f"`{spec.confirms}` (no results found)")
    # A confirmation, or a prediction sized on another grid's results, has a "before" column; predictions
    # from elsewhere without an earlier size do not.
    before = bool(spec.confirms) or any(c["sized_on"] for c in checks)
    header = f"before ({source})" if spec.confirms else "before (the grid it was sized on)"
    lines = ["| comparison | measure | predicted | " + (f"{header} | power | " if before else "")
             + "these seeds | verdict |", "|---|---|---|" + ("---:|---:|" if before else "") + "---:|---|"]
    for c in checks:
        measure = f"{c['protocol']} {c['setting']}".strip()
        where = f" ({c['sized_on']})" if c["sized_on"] and c["earlier"] is not None else ""
        then = f"{format_interval(c['earlier'], c['metric'])}{where} | {format_power(c['power'])} | " if before else ""
        lines.append(f"| {c['comparison']} | {measure} | {c['expect'].replace('_', ' ')} | {then}"
                     f"{format_interval(c['difference'], c['metric'])} | {c['verdict']} |")
    counts = verdict_counts(checks)
    unread = f", {counts['no verdict']} without a verdict" if counts["no verdict"] else ""
    head = (f"Predictions written in `{spec.name}`'s grid file before its seeds ran: {counts['confirmed']} of "
            f"{len(checks)} confirmed, {counts['not confirmed']} not confirmed, {counts['pending']} pending{unread} "
            "(confirmed: the 95 % interval on the predicted side of 0, or containing 0 where no difference was "
            "predicted)." + (" Power: the chance these seeds had to confirm a predicted difference if it were as "
                             "large, and as spread over seeds, as before (optimistic where the earlier size was "
                             "picked by looking)." if before else ""))
    return head + "\n\n" + "\n".join(lines)


__all__ = ["prediction_checks", "prediction_verdict", "predictions_table", "earlier_results", "interval_side",
           "format_interval", "format_power", "verdict_counts"]
