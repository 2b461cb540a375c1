"""The report of a grid's results: mean +- std over seeds, paired differences with 95 % intervals, figures.

    dogo report results/cpu_fmnist_cnn [--grid configs/grids/cpu_fmnist_cnn.yaml] [--figures figures]
                [--readme README.md]

reads only the result JSONs (``dogo.results``), never a checkpoint. Results that are stale for the grid
file (another config, numerics version or evaluation settings) are listed and left out of every table.

Statistics (``dogo.stats``), per protocol / setting / metric and per (cell, peer): mean +- std over
training seeds, and for each ``compare`` pair the paired difference over the seeds both have with its
95 % interval. An interval that contains 0 is "within noise". Below 3 seeds the interval is printed with
a warning: from 2 seeds it says almost nothing. This module writes the text (tables, README block,
REPORT.md); the figures are ``dogo.grid_figures``', the predictions' verdicts ``dogo.predictions``'.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

from .cli import SeedList
from .errors import DogoError
from .grid import result_name
from .grid_figures import write_figures
from .predictions import format_interval, predictions_table
from .results import (
    KEYS,
    MIN_SEEDS,
    Results,
    columns_of,
    comparisons,
    cross_machine_pairs,
    differences_by_seed,
    format_value,
    in_protocol_order,
    load_results,
    main_rows,
    measure_label,
    missing_runs,
    row_order,
    seed_span,
    series_of,
)
from .stats import Summary, paired_difference, summarize


def _differences_style(results: Results) -> bool:
    """The grid asks for the README's differences matrix (``readme: differences``)."""
    return results.grid is not None and results.grid.spec.readme == "differences"


# ============================================================================ the report text


def _mean_std(s: Summary, metric: str, n_all: int) -> str:
    text = format_value(s.mean, metric)
    if s.n > 1:
        text += f" ± {format_value(s.std, metric)}"
    if s.n != n_all:
        text += f" (n={s.n})"
    return text


def means_table(results: Results) -> str:
    """Markdown: rows = protocol / setting / metric, columns = cell/peer, entries mean ± std over seeds."""
    table = main_rows(results.table)
    if table.empty:
        return "(no current results)"
    columns = columns_of(results)
    n_of = {col: table[(table["cell"] == col[0]) & (table["peer"] == col[1])]["seed"].nunique() for col in columns}
    head = "| protocol | setting | metric | " + " | ".join(f"{c}/{p} (n={n_of[(c, p)]})" for c, p in columns) + " |"
    lines = [head, "|---|---|---|" + "---:|" * len(columns)]
    series = series_of(table)
    for protocol, setting, metric in row_order(table):
        cells = []
        for c, p in columns:
            values = series.get((c, p, protocol, setting, metric))
            cells.append("" if values is None else _mean_std(summarize(list(values.values())), metric, n_of[(c, p)]))
        lines.append(f"| {protocol} | {setting} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons_table(results: Results) -> str:
    """Markdown: one row per (pair, protocol, setting, metric) with the paired difference and its interval."""
    rows = comparisons(results)
    if not rows:
        return "(no comparison with results on both sides)"
    lines = ["| comparison | protocol | setting | baseline | treatment | difference | 95 % CI | n | |",
             "|---|---|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        d, m = r["difference"], r["metric"]
        ci = "n/a" if d.n < 2 else f"[{format_value(d.low, m, True)}, {format_value(d.high, m, True)}]"
        verdict = ("no interval" if d.n < 2 else "within noise" if d.within_noise
                   else "better" if d.mean > 0 else "worse")
        if d.n < MIN_SEEDS:
            verdict += f"; ⚠ {d.n} seed{'s' if d.n != 1 else ''}: interval not meaningful"
        setting = r["setting"] + ("" if m == "top1" else f" ({m})")
        lines.append(f"| {r['label']} | {r['protocol']} | {setting} | {format_value(r['baseline'].mean, m)} | "
                     f"{format_value(r['treatment'].mean, m)} | {format_value(d.mean, m, True)} | {ci} | {d.n} | "
                     f"{verdict} |")
    return "\n".join(lines)


def differences_matrix(results: Results) -> str:
    """Markdown: one row per comparison, one column per headline protocol, each entry the paired
    difference and the half width of its 95 % interval, bold where the interval excludes 0."""
    rows = comparisons(results)
    if not rows:
        return "(no comparison with results on both sides)"
    columns = in_protocol_order((r["protocol"], r["setting"], r["metric"]) for r in rows)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    entry = {(r["label"], r["protocol"], r["setting"], r["metric"]): r["difference"] for r in rows}
    lines = ["| comparison | seeds | " + " | ".join(measure_label(*c) for c in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for label in labels:
        cells, n = [], set()
        for protocol, setting, metric in columns:
            d = entry.get((label, protocol, setting, metric))
            if d is None:
                cells.append("")
                continue
            n.add(d.n)
            text = format_value(d.mean, metric, True)
            if d.n >= 2:
                text += f" ± {format_value((d.high - d.low) / 2, metric)}"
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


def seed_warning(results: Results) -> str | None:
    n = len(results.seeds)
    if 0 < n < MIN_SEEDS:
        return (f"⚠ only {n} seed{'s' if n != 1 else ''} ({', '.join(map(str, results.seeds))}): spreads and "
                f"intervals from fewer than {MIN_SEEDS} seeds are not meaningful; run more seeds before "
                "drawing conclusions.")
    return None


def machine_warning(results: Results) -> str | None:
    pairs = cross_machine_pairs(results)
    if not pairs:
        return None
    # One entry per comparison and pair of machines: a whole batch run elsewhere reads as one line, not 19.
    seeds: dict[tuple[str, str, str], list[int]] = {}
    for label, seed, base, treat in pairs:
        seeds.setdefault((label, base, treat), []).append(seed)
    listed = "; ".join(f"{label}, seed{'s' if len(s) > 1 else ''} {seed_span(s)}: {base} / {treat}"
                       for (label, base, treat), s in seeds.items())
    return (f"⚠ {len(pairs)} paired seed{'s' if len(pairs) != 1 else ''} ran baseline and treatment on different "
            f"machines ({listed}): those differences include the machines' float differences. Rerun one side on "
            "the other's machine to pair them cleanly.")


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
                     f"{format_value(row.value_reference, m)} | {format_value(row.value_rerun, m)} | "
                     f"{format_value(diff, m, True)} | {format_value(std, m)} |")
        if m == "top1" and (worst is None or abs(diff) > abs(worst[0])):
            worst = (diff, f"{result_name(row.cell, row.seed)} {row.peer} {row.protocol} {row.setting}", std)
    head = [f"{len(both)} run(s) in both folders: {', '.join(result_name(c, s) for c, s in both)}."]
    if differing:
        head.append(f"⚠ different config hash (not the same experiment): {', '.join(differing)}.")
    if worst is not None:
        head.append(f"Largest top-1 difference: {worst[0]:+.2f} points ({worst[1]}); the reference's seed-to-seed "
                    f"std of that row is {format_value(worst[2], 'top1')}.")
    return "\n\n".join([" ".join(head), "\n".join(lines)])


# ============================================================================ the same comparison in two grids


def beside_table(results: Results, other: Results) -> str:
    """Markdown: every comparison both grids make (the same label, the same headline measure), its paired
    difference in each grid, and the change from ``other`` to ``results`` paired by run seed: for each
    seed both grids ran, its difference here minus its difference there, with the 95 % interval of the
    mean change. A seed fixes the initial weights and the data order, so pairing by seed takes out what
    the two grids' runs of one seed share; an interval that contains 0 cannot tell the two sizes apart."""
    mine, theirs = differences_by_seed(results), differences_by_seed(other)
    keys = [key for key in mine if key in theirs]
    if not keys:
        return f"(no comparison of the same label and measure in `{results.name}` and `{other.name}`)"
    lines = [f"| comparison | measure | `{other.name}` | `{results.name}` | change | seeds paired |",
             "|---|---|---:|---:|---:|---:|"]
    here, there = ({(c["label"], c["protocol"], c["setting"], c["metric"]): c["difference"] for c in comparisons(g)}
                   for g in (results, other))
    for key in keys:
        label, protocol, setting, metric = key
        change = paired_difference(theirs[key], mine[key])
        lines.append(f"| {label} | {measure_label(protocol, setting, metric)} | "
                     f"{format_interval(there[key], metric)} | {format_interval(here[key], metric)} | "
                     f"{format_interval(change, metric)} | {change.n} |")
    head = [f"Change: the paired difference in `{results.name}` minus the same in `{other.name}`, paired by run "
            "seed over the seeds both have; each grid's column is its own paired difference over its seeds."]
    hashes = {r["config_hash"] for r in other.records} & {r["config_hash"] for r in results.records}
    if hashes:
        head.append(f"⚠ {len(hashes)} run(s) are the same experiment in both grids (one config hash): their seeds "
                    "measure one thing twice, so the change there is 0 by construction.")
    devices = [sorted({r.get("device", "?") for r in g.records}) for g in (other, results)]
    if devices[0] != devices[1]:
        head.append(f"The grids ran on {', '.join(devices[0])} (`{other.name}`) and {', '.join(devices[1])} "
                    f"(`{results.name}`): the change includes the machines' float differences.")
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


def rewrite_marked_block(readme: str | Path | None, markers: tuple[str, str], make_block: Callable[[], str]) -> str:
    """``make_block()``, written in place between the README's two marker lines when ``readme`` is given. The
    README and its markers are checked first: ``make_block`` may read every result before it could fail."""
    from .runlog import atomic_write_text

    text = None
    if readme is not None:
        if not Path(readme).is_file():
            raise DogoError(f"README {readme} does not exist")
        text = Path(readme).read_text()
        replace_between_markers(text, *markers, "")
    block = make_block()
    if text is not None:
        atomic_write_text(Path(readme), replace_between_markers(text, *markers, block))
    return block


# ============================================================================ command line


def write_report(results_dir: str | Path, grid: str | Path | None = None, figures: str | Path | None = "figures",
                 readme: str | Path | None = None) -> tuple[Results, str]:
    """Load the results, write ``REPORT.md`` into the result folder (figures into ``figures``, the block
    into ``readme`` when given); return the results and the report text."""
    from .runlog import atomic_write_text

    results = load_results(results_dir, grid)
    paths = write_figures(results, figures) if figures is not None else []
    block = readme_block(results)  # made once: it reads the confirmed grid's results, for REPORT.md and README
    text = format_report(results, paths, block)
    atomic_write_text(Path(results_dir) / "REPORT.md", text)
    if readme is not None:
        rewrite_marked_block(readme, _markers(results.name), lambda: block)
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
                        help="only these run seeds (3 4, 3,4 or 3-7), e.g. a later batch apart from the first: prints "
                             "the report and writes nothing (no REPORT.md, figures or README block)")
    parser.add_argument("--against", default=None, metavar="REFERENCE_DIR",
                        help="also compare every (cell, seed) found in both folders with the reference's numbers, "
                             "e.g. a re-run of committed cells against results/NAME")
    parser.add_argument("--beside", default=None, metavar="OTHER_DIR",
                        help="print only the comparisons this grid shares with another grid's results (the same "
                             "label and measure), each grid's paired difference and the change between them paired "
                             "by run seed, e.g. results/epochs_cnn_12_19seeds --beside results/small_cnn_15seeds; "
                             "writes nothing")
    parser.add_argument("--beside-grid", default=None, metavar="GRID.yaml",
                        help="the other grid's file (default configs/grids/NAME.yaml of the --beside folder)")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    if args.beside_grid is not None and args.beside is None:
        raise DogoError("--beside-grid names the grid file of a --beside folder: give --beside too")
    if args.seeds is not None or args.beside is not None:
        # A subset of seeds, or two grids side by side, is a reading, not the grid's report: it must not
        # overwrite the committed files.
        flag = "--seeds prints a report of some seeds" if args.beside is None else "--beside prints a table"
        given = [name for name, value in (("--readme", args.readme), ("--figures", args.figures),
                                          ("--against", args.against)) if value]
        if given:
            raise DogoError(f"{flag} and writes nothing: drop {', '.join(given)}")
        results = load_results(args.results, args.grid, seeds=args.seeds)
        missing = sorted(set(args.seeds or []) - set(results.seeds))
        if missing:
            raise DogoError(f"--seeds: no current result in {args.results} has seed {', '.join(map(str, missing))}")
        if args.beside is None:
            print(format_report(results))
        else:
            other = load_results(args.beside, args.beside_grid)
            for found, folder, flag in ((results, args.results, "--grid"), (other, args.beside, "--beside-grid")):
                if found.grid is None:  # no comparisons without the grid file: say so, not an empty table
                    raise DogoError(f"--beside: no grid file configs/grids/{found.name}.yaml for {folder}; give it "
                                    f"with {flag}")
            print(f"## `{results.name}` beside `{other.name}`\n\n" + beside_table(results, other))
        return 0
    figures = args.figures or (None if args.against else "figures")
    results, text = write_report(args.results, args.grid, None if args.no_figures else figures, args.readme)
    print(text)
    if args.against:
        reference = load_results(args.against, results.grid)
        print(f"## Against {args.against}\n\n" + rerun_table(results, reference))
    return 0


__all__ = ["means_table", "comparisons_table", "differences_matrix", "intervals_excluding_zero", "chance_line",
           "seed_warning", "machine_warning", "readme_block", "format_report", "write_report", "rerun_table",
           "beside_table",
           "readme_blocks", "replace_readme_block", "replace_between_markers", "rewrite_marked_block"]
