"""The figures of a grid's results: bars per protocol, paired differences (a forest plot), kNN curves, t-SNE.

Each plot takes a ``dogo.results.Results`` and returns a matplotlib ``Figure`` (never pyplot's global state);
``write_figures`` saves them as ``figures/NAME_*.png``, as ``dogo report`` does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .results import Results, columns_of, comparisons, in_protocol_order, main_rows, measure_label, row_order, series_of
from .stats import summarize


def series_styles(results: Results) -> dict[tuple[str, str], dict[str, Any]]:
    """One colour per role, as in every figure of the kit (``viz.ROLE_COLORS``): a peer trained alone,
    the first peer of a cohort (the student) and the other peers; a second series of the same role is
    hatched (bars) and dashed (curves)."""
    from .viz import ROLE_COLORS

    columns = columns_of(results)
    peers_of: dict[str, list[str]] = {}
    for cell, peer in columns:
        peers_of.setdefault(cell, []).append(peer)
    styles, seen = {}, {}
    for cell, peer in columns:
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
    rows = row_order(table)
    columns = columns_of(results)
    fig = Figure(figsize=(max(6.0, 0.9 * len(rows) * max(1, len(columns)) * 0.45 + 2), 4.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(columns))
    series = series_of(table)
    styles = series_styles(results)
    for i, (c, p) in enumerate(columns):
        stats = [summarize(list(series.get((c, p, *row), {}).values())) for row in rows]
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
    panels = in_protocol_order((r["protocol"], r["setting"], r["metric"]) for r in rows)
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
        ax.set_title(measure_label(protocol, setting, metric), fontsize=9)
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


__all__ = ["series_styles", "plot_bars", "plot_differences", "plot_knn_curves", "tsne_panels", "write_figures"]
