"""The study's ledger: every prediction a grid file wrote down before its seeds ran, and what became of it.

A confirmation grid (``predictions:`` in ``configs/grids/*.yaml``) states which paired differences its
fresh seeds should show: ``lower``, ``higher`` or ``within_noise``. Each grid's own report judges its
predictions (``dogo.predictions.prediction_checks``); the ledger gathers those same verdicts from every grid
into one table, so a reader sees all that the study predicted, the failures included, in one place.

    dogo ledger                         # print the table
    dogo ledger --readme STUDY.md       # and rewrite the block between <!-- ledger --> and <!-- /ledger -->

Rows follow the order of the grids' report blocks in the document given with ``--readme`` (STUDY.md
holds them in the order the study ran them); grids without a block there come last, by name. Directional
predictions and "within noise" ones (controls) are counted apart: a directional prediction is confirmed
only when its 95 % interval excludes 0 on the predicted side, while a control holds whenever its
interval contains 0, which fewer seeds make easier.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import DogoError
from .grid_file import REPO, Grid, load_grid
from .predictions import format_interval, format_power, prediction_checks, verdict_counts
from .report import readme_blocks
from .results import Results, load_results, seed_span

MARKERS = ("<!-- ledger -->", "<!-- /ledger -->")
# A failed test with this much power speaks against the difference; one with less than WEAK_POWER says little.
STRONG_POWER, WEAK_POWER = 0.8, 0.5


def grids_with_predictions(grids_dir: str | Path = REPO / "configs" / "grids",
                           order: list[str] | None = None) -> list[Grid]:
    """The grid files of ``grids_dir`` that make predictions: those named in ``order`` first, in its
    order, then the others by name."""
    grids = [load_grid(p) for p in sorted(Path(grids_dir).glob("*.yaml"))]
    grids = [g for g in grids if g.spec.predictions]
    rank = {name: i for i, name in enumerate(order or [])}
    return sorted(grids, key=lambda g: (rank.get(g.name, len(rank)), g.name))


def ledger_rows(grids: list[Grid], results_root: str | Path = REPO / "results") -> list[dict[str, Any]]:
    """One row per prediction: its grid and seeds, the comparison and measure, what was predicted, the
    fresh seeds' paired difference (None before they ran) and the verdict of the grid's own report."""
    rows = []
    earlier: dict[Path, Results] = {}  # a grid confirmed by several is read once
    for grid in grids:
        folder = Path(results_root) / grid.name
        # A grid not run anywhere yet has no folder: no results, so every prediction is pending (its
        # power, from the grid it confirms or the results it is sized on, is known before its seeds run).
        results = load_results(folder, grid) if folder.is_dir() else Results.none_yet(grid, folder)
        rows += [{"grid": grid.name, "seeds": seed_span(grid.spec.seeds), **c} for c in prediction_checks(results, earlier)]
    return rows


def ledger_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: a head line with the counts, then one row per prediction."""
    directional = [r for r in rows if r["expect"] != "within_noise"]
    controls = [r for r in rows if r["expect"] == "within_noise"]
    d, c = verdict_counts(directional), verdict_counts(controls)
    # Too few seeds for a verdict, or a measure the results lack: the table says which.
    other = len(rows) - sum(d[k] + c[k] for k in ("confirmed", "not confirmed", "pending"))
    grids = list(dict.fromkeys(r["grid"] for r in rows))
    head = (f"{len(rows)} predictions in {len(grids)} grid files, each committed before its seeds ran (the "
            f"verdicts of each grid's own report). A difference predicted (lower or higher): {d['confirmed']} of "
            f"{len(directional)} confirmed, {d['not confirmed']} not confirmed, {d['pending']} pending. No "
            f"difference predicted (controls): {c['confirmed']} of {len(controls)} held, {c['not confirmed']} did "
            f"not, {c['pending']} pending; a control that holds found no difference on its seeds, which is not "
            "proof that there is none.")
    if other:
        head += f" {other} without a verdict (see the table)."
    failed = [r for r in directional if r["verdict"].startswith("not confirmed")]
    if failed:
        sized = [r for r in failed if r["power"] is not None]
        strong = sum(r["power"] >= STRONG_POWER for r in sized)
        weak = sum(r["power"] < WEAK_POWER for r in sized)
        without = f", no earlier size in {len(failed) - len(sized)}" if len(sized) < len(failed) else ""
        head += (f" Power of the {len(failed)} not confirmed: at least {100 * STRONG_POWER:.0f} % in {strong}, less "
                 f"than {100 * WEAK_POWER:.0f} % in {weak}{without}; power is the chance the seeds had to confirm a "
                 "difference as large, and as spread over seeds, as where it was first seen, or as the earlier result its "
                 "grid file sized it on (optimistic where it was picked by looking).")
    lines = ["| grid | seeds | comparison | measure | predicted | power | these seeds | verdict |",
             "|---|---|---|---|---|---:|---:|---|"]
    for r in rows:
        measure = f"{r['protocol']} {r['setting']}".strip()
        lines.append(f"| `{r['grid']}` | {r['seeds']} | {r['comparison']} | {measure} | "
                     f"{r['expect'].replace('_', ' ')} | {format_power(r['power'])} | "
                     f"{format_interval(r['difference'], r['metric'])} | {r['verdict']} |")
    return head + "\n\n" + "\n".join(lines)


def readme_order(readme: str | Path) -> list[str]:
    """The grid names of a README's report blocks, in the order they appear."""
    return list(readme_blocks(Path(readme).read_text()))


def ledger_block(grids_dir: str | Path = REPO / "configs" / "grids", results_root: str | Path = REPO / "results",
                 readme: str | Path | None = None) -> str:
    """The ledger as the README shows it (rows in the README's order of report blocks, when given)."""
    order = readme_order(readme) if readme is not None else None
    return ledger_table(ledger_rows(grids_with_predictions(grids_dir, order), results_root))


# ============================================================================ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dogo ledger`` subcommand."""
    parser.description = ("Every prediction of the grid files (configs/grids/*.yaml), committed before their seeds "
                          "ran, with the verdict of each grid's report: one table for the whole study.")
    parser.add_argument("--grids", default=str(REPO / "configs" / "grids"), metavar="DIR",
                        help="where the grid files are (default configs/grids)")
    parser.add_argument("--results", default=str(REPO / "results"), metavar="DIR",
                        help="where the result folders are (default results/)")
    parser.add_argument("--readme", default=None, metavar="README.md",
                        help="order the rows as the README's report blocks and rewrite the block between "
                             f"{MARKERS[0]} and {MARKERS[1]} in place")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    from .report import rewrite_marked_block

    if not Path(args.grids).is_dir():
        raise DogoError(f"grid folder {args.grids} does not exist")
    print(rewrite_marked_block(args.readme, MARKERS, lambda: ledger_block(args.grids, args.results, args.readme)))
    return 0


__all__ = ["ledger_rows", "ledger_table", "ledger_block", "grids_with_predictions", "readme_order",
           "MARKERS"]
