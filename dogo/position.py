"""Are the two networks of a pair exchangeable? Their difference by position, pooled over committed runs.

Two peers with the same settings but their names (backbone, width, objective, temperatures, weight, target;
neither frozen) differ only by their position in ``peers``: which one draws its initial weights first, which
one is given its views first. The engine treats them alike, so the second network minus the first should
be zero but for chance, on every measure. ``position_rows`` pools that difference over every such run of
the committed results (a copy adopted into another grid counts once).

Runs with the same training seed share both networks' initial weights, the data order and the views,
whatever else differs between them (a temperature, a weight): they are not independent. So the runs of
one seed are averaged first, and each interval is over training seeds.

    dogo position                               # print the table
    dogo position --exclude peer_tau01_cnn_12   # leave a grid out (e.g. the one where a difference was noticed)
    dogo position --readme STUDY.md             # and rewrite the block between <!-- position --> and <!-- /position -->
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from statistics import fmean
from typing import Any

from .errors import DogoError
from .grid_file import REPO
from .predictions import format_interval
from .results import in_protocol_order, load_results, main_rows, measure_label, row_order, tidy
from .stats import paired_difference

MARKERS = ("<!-- position -->", "<!-- /position -->")
# Read from each run's training curves: the last epoch's value of each network.
CURVE_MEASURES = (("knn_top1", "kNN monitor, last epoch"), ("ssl_loss", "SSL loss, last epoch"))


def is_twin_pair(record: dict[str, Any]) -> bool:
    """Whether a result's run trained exactly two peers whose settings differ only by name, neither frozen."""
    peers = record.get("config", {}).get("peers", [])
    if len(peers) != 2 or any(p.get("frozen") for p in peers):
        return False
    first, second = ({k: v for k, v in p.items() if k != "name"} for p in peers)
    return first == second


def twin_pair_runs(results_root: str | Path = REPO / "results", exclude: tuple[str, ...] = ()) -> list[dict]:
    """The current results under ``results_root`` whose run is a pair of identical networks (``is_twin_pair``);
    one record per (config hash, training seed). ``exclude``: grids left out, their folders and the copies
    other grids adopted from them alike."""
    root = Path(results_root)
    if not root.is_dir():
        raise DogoError(f"result folder {root} does not exist")
    unknown = [name for name in exclude if not (root / name).is_dir()]
    if unknown:
        raise DogoError(f"--exclude: no result folder {root / unknown[0]}")
    runs: dict[tuple[str, int], dict] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in exclude):
        for record in load_results(folder).records:
            if is_twin_pair(record) and grid_of_origin(record) not in exclude:
                key = (record["config_hash"], record["seed"])
                if key not in runs or "adopted_from" in runs[key]:  # the grid that ran it names it
                    runs[key] = record
    return list(runs.values())


def grid_of_origin(record: dict[str, Any]) -> str:
    """The grid that ran a result (an adopted copy names the grid it was copied from)."""
    return (record.get("adopted_from") or {}).get("grid") or record["grid"]


def _by_seed(pairs: list[tuple[int, float, float]]) -> tuple[dict[int, float], dict[int, float]]:
    """(first, second) network's value per training seed, averaged over the runs of that seed."""
    runs: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for seed, first, second in pairs:
        runs[seed].append((first, second))
    return ({seed: fmean(f for f, _ in values) for seed, values in runs.items()},
            {seed: fmean(s for _, s in values) for seed, values in runs.items()})


def position_rows(runs: list[dict]) -> list[dict[str, Any]]:
    """Per measure (every headline evaluation measure, then the training curves' last epoch): the number of
    runs and of training seeds, and the second network minus the first as a paired difference over seeds."""
    measures: dict[tuple[str, str], list[tuple[int, float, float]]] = defaultdict(list)
    order: list[tuple[str, str, str]] = []
    for r in runs:
        first, second = (p["name"] for p in r["config"]["peers"])
        mine = main_rows(tidy([r]))  # one record at a time: two grids may name a cell alike
        order += row_order(mine)
        for (protocol, setting, metric), rows in mine.groupby(["protocol", "setting", "metric"], sort=False):
            value = dict(zip(rows["peer"], rows["value"]))
            measures[(measure_label(protocol, setting, metric), metric)].append((r["seed"], value[first], value[second]))
        curves = r.get("curves", {}).get("peers", {})
        for key, label in CURVE_MEASURES:
            if curves.get(first, {}).get(key) and curves.get(second, {}).get(key):
                measures[(label, key)].append((r["seed"], curves[first][key][-1], curves[second][key][-1]))
    order = [measure_label(*m) for m in in_protocol_order(order)] + [label for _, label in CURVE_MEASURES]
    rows = []
    for (label, metric), pairs in sorted(measures.items(), key=lambda item: order.index(item[0][0])):
        first, second = _by_seed(pairs)
        rows.append({"measure": label, "metric": metric, "runs": len(pairs), "seeds": len(first),
                     "difference": paired_difference(first, second)})
    return rows


def position_table(rows: list[dict[str, Any]], runs: list[dict]) -> str:
    """Markdown: a head line (runs, grids, seeds), then one row per measure."""
    grids = sorted({grid_of_origin(r) for r in runs})
    seeds = len({r["seed"] for r in runs})
    lines = [f"{len(runs)} runs of a pair of identical networks in {len(grids)} grid{'s' * (len(grids) != 1)} "
             f"({', '.join(grids)}), "
             f"{seeds} training seeds; second network minus first, runs of one seed averaged, 95 % interval "
             "over seeds.", "", "| measure | runs | seeds | second - first |", "|---|---:|---:|---:|"]
    for row in rows:
        d = row["difference"]
        shown = (f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]" if row["metric"] == "ssl_loss"
                 else format_interval(d, row["metric"]))
        lines.append(f"| {row['measure']} | {row['runs']} | {row['seeds']} | {shown} |")
    return "\n".join(lines) + "\n"


def position_block(results_root: str | Path = REPO / "results", exclude: tuple[str, ...] = ()) -> str:
    runs = twin_pair_runs(results_root, exclude)
    if not runs:
        raise DogoError(f"no result under {results_root} is a run of a pair of identical networks")
    return position_table(position_rows(runs), runs)


# ============================================================================ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dogo position`` subcommand."""
    parser.description = ("The second network minus the first, pooled over every committed run of a pair of "
                          "identical networks: zero but for chance if the two positions are alike.")
    parser.add_argument("--results", default=str(REPO / "results"), metavar="DIR",
                        help="where the result folders are (default results/)")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="GRID",
                        help="leave these grids out (their result folders and the copies others adopted)")
    parser.add_argument("--readme", default=None, metavar="STUDY.md",
                        help=f"rewrite the block between {MARKERS[0]} and {MARKERS[1]} in place")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    from .report import rewrite_marked_block

    print(rewrite_marked_block(args.readme, MARKERS, lambda: position_block(args.results, tuple(args.exclude))))
    return 0


__all__ = ["is_twin_pair", "twin_pair_runs", "grid_of_origin", "position_rows", "position_table", "position_block",
           "MARKERS"]
