"""Plotting helpers shared by the notebooks: view pairs, similarity matrices, distillation
distributions and training curves from a run's ``metrics.jsonl``.

Every function draws with matplotlib (seaborn for the curves), returns the figure it drew on and
never calls ``plt.show()``: notebooks display the returned figure, scripts save it with
:func:`save_figure`. Functions that draw on one panel take an optional ``ax``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# One colour per role, the same in every figure of the kit:
#   "alone":   the small model trained alone (the baseline);
#   "student": the small model trained beside its peer, the model that receives the gradient;
#   "peer":    the larger model, whose distribution is the detached target.
ROLE_COLORS = {"alone": "#ff7f0e", "student": "#1f77b4", "peer": "#d62728"}
OWN_COLOR = ROLE_COLORS["student"]
PEER_COLOR = ROLE_COLORS["peer"]


def _new_figure(figsize: tuple[float, float], pyplot: bool = True, **kwargs) -> Figure:
    """A figure from pyplot (shown inline by Jupyter) or a free-standing one (for widgets, never
    auto-displayed and never kept alive by pyplot's figure registry)."""
    if pyplot:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize, **kwargs)
    return Figure(figsize=figsize, **kwargs)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def save_figure(fig: Figure, directory: str | Path, name: str, dpi: int = 150) -> Path:
    """Save ``fig`` as ``directory/name`` (``.png`` added if no suffix), creating the folder."""
    path = Path(directory) / name
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """The figure rendered to PNG bytes (for an ``ipywidgets.Image``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ images


def to_display(images: torch.Tensor, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> np.ndarray:
    """Images (N, C, H, W) as (N, H, W, C) floats in [0, 1] for ``imshow``.

    uint8 images are scaled by 1/255; float images are taken as normalised views and mapped back
    with ``x * std + mean`` when ``mean`` and ``std`` are given.
    """
    if images.dtype == torch.uint8:
        x = images.float() / 255
    else:
        x = images.detach().float().cpu()
        if mean is not None and std is not None:
            m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
            s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
            x = x * s + m
    return x.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def _show_image(ax: Axes, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_image_grid(images: torch.Tensor, titles: Sequence[str] | None = None, ncols: int = 10,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    cell: float = 1.1, row_labels: Sequence[str] | None = None) -> Figure:
    """A grid of images, filled row by row, with optional titles (one per image) and row labels."""
    shown = to_display(images, mean, std)
    nrows = int(np.ceil(len(shown) / ncols))
    fig = _new_figure((cell * ncols, cell * nrows + (0.25 * nrows if titles else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(shown):
            _show_image(ax, shown[i])
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
        else:
            ax.axis("off")
    for r, label in enumerate(row_labels or []):
        axes[r, 0].set_ylabel(label, fontsize=9)
    return fig


def plot_view_pairs(originals: torch.Tensor, views1: torch.Tensor, views2: torch.Tensor,
                    mean: Sequence[float], std: Sequence[float], titles: Sequence[str] | None = None,
                    cell: float = 1.1) -> Figure:
    """Each column one image: the original (uint8) on top, its two augmented views below.

    ``views1`` and ``views2`` are normalised float views (N, C, H, W), as the model sees them; they
    are mapped back to [0, 1] with ``mean`` and ``std`` for display. The two views of a column are a
    positive pair; every other image in the figure is a negative for them.
    """
    n = len(originals)
    if not (len(views1) == len(views2) == n):
        raise ValueError(f"need as many views as originals, got {n}, {len(views1)} and {len(views2)}")
    rows = [to_display(originals), to_display(views1, mean, std), to_display(views2, mean, std)]
    fig = _new_figure((cell * n, cell * 3 + 0.4))
    axes = fig.subplots(3, n, squeeze=False)
    for r, (images, label) in enumerate(zip(rows, ("original", "view 1", "view 2"))):
        for c in range(n):
            _show_image(axes[r, c], images[c])
            if c == 0:
                axes[r, c].set_ylabel(label, fontsize=9)
            if r == 0 and titles is not None:
                axes[r, c].set_title(titles[c], fontsize=7)
    return fig


# ------------------------------------------------------------------------- similarity matrices


def plot_similarity_matrix(sim: Any, ax: Axes | None = None, title: str | None = None,
                           positives: str | None = None, cmap: str = "viridis", vmin: float | None = None,
                           vmax: float | None = None, colorbar: bool = True, label: str = "cosine similarity"):
    """Heatmap of a similarity (or probability) matrix; NaN entries (e.g. a masked diagonal) are grey.

    Args:
        sim: (N, M) tensor or array.
        positives: where the positive pairs are, outlined in white: ``"diagonal"`` for a B x B
            cross-view matrix (i <-> i), ``"two_view"`` for the 2B x 2B matrix of SimCLR
            (i <-> i + B, whose two blocks are also separated by lines), or None.

    Returns:
        the figure (the one ``ax`` belongs to when given).
    """
    values = _to_numpy(sim)
    if values.ndim != 2:
        raise ValueError(f"sim must be a matrix, got shape {values.shape}")
    if ax is None:
        fig = _new_figure((4.2, 3.6))
        ax = fig.subplots()
    fig = ax.figure
    cm = matplotlib.colormaps[cmap].with_extremes(bad="0.75")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
    n, m = values.shape
    if positives == "diagonal":
        idx = np.arange(min(n, m))
        ax.scatter(idx, idx, s=max(4, 1600 / n), marker="s", facecolors="none", edgecolors="white", linewidths=1)
    elif positives == "two_view":
        if n != m or n % 2:
            raise ValueError(f"a two-view matrix is 2B x 2B, got {values.shape}")
        half = n // 2
        rows = np.arange(n)
        ax.scatter((rows + half) % n, rows, s=max(4, 1600 / n), marker="s", facecolors="none",
                   edgecolors="white", linewidths=1)
        ax.axhline(half - 0.5, color="white", linewidth=0.8)
        ax.axvline(half - 0.5, color="white", linewidth=0.8)
    elif positives is not None:
        raise ValueError(f"positives must be 'diagonal', 'two_view' or None, got {positives!r}")
    ax.set_xlabel("j")
    ax.set_ylabel("i")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.yaxis.get_major_locator().set_params(integer=True)
    if title:
        ax.set_title(title, fontsize=10)
    if colorbar:
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=label)
    return fig


class DistillFigure:
    """The explorer's figure, four panels drawn once and then updated in place (fast redraws):

    the peer's distribution Q and the student's P (B x B, rows sum to 1, one fixed colour scale
    from 0 to 1 at every temperature, positives on the diagonal outlined), both distributions along
    one row i, and the student's loss terms SSL, w * KL and their sum.

    ``draw(state)`` takes a ``dogo.widgets.DistillState`` (attributes ``P``, ``Q``, ``row``,
    ``temperature``, ``weight``, ``kl``, ``ssl``, ``weighted_kl``, ``total``).
    """

    def __init__(self, fig: Figure | None = None, own_name: str = "student", peer_name: str = "peer"):
        self.fig = fig if fig is not None else _new_figure((13, 3.3))
        self.own_name, self.peer_name = own_name, peer_name
        self.fig.clear()
        # Fixed panel positions (figure fractions) instead of tight_layout: redraws stay cheap and
        # the panels do not jump around while a slider moves.
        self.ax_q = self.fig.add_axes((0.035, 0.17, 0.17, 0.70))
        self.ax_p = self.fig.add_axes((0.235, 0.17, 0.17, 0.70))
        self.ax_bar = self.fig.add_axes((0.41, 0.17, 0.008, 0.70))
        self.ax_row = self.fig.add_axes((0.51, 0.17, 0.235, 0.70))
        self.ax_loss = self.fig.add_axes((0.85, 0.17, 0.13, 0.70))
        self._batch: int | None = None

    def _build(self, state: Any) -> None:
        batch = state.P.shape[0]
        self._batch = batch
        self.images, self.row_lines = [], []
        for ax, matrix, name, letter in ((self.ax_q, state.Q, self.peer_name, "Q"),
                                         (self.ax_p, state.P, self.own_name, "P")):
            ax.clear()
            self.images.append(ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1, interpolation="nearest"))
            idx = np.arange(batch)
            ax.scatter(idx, idx, s=max(4, 1600 / batch), marker="s", facecolors="none", edgecolors="white",
                       linewidths=0.8)
            self.row_lines.append(ax.axhline(state.row, color="white", linewidth=0.7, linestyle=":"))
            ax.set_title(f"{name}: {letter}", fontsize=10)
            ax.set_xlabel("j (view 2)")
            ax.set_ylabel("i (view 1)" if letter == "Q" else "")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.yaxis.get_major_locator().set_params(integer=True)
        self.ax_bar.clear()
        self.fig.colorbar(self.images[1], cax=self.ax_bar)

        ax = self.ax_row
        ax.clear()
        columns = np.arange(batch)
        (self.q_line,) = ax.step(columns, state.Q[state.row], where="mid", color=PEER_COLOR, label=f"{self.peer_name} Q")
        (self.p_line,) = ax.step(columns, state.P[state.row], where="mid", color=OWN_COLOR, label=f"{self.own_name} P")
        self.positive_line = ax.axvline(state.row, color="0.5", linewidth=0.8, linestyle="--", label="positive j = i")
        ax.set_xlim(-0.5, batch - 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("j")
        ax.set_ylabel("probability")
        ax.legend(fontsize=7, loc="upper right", frameon=False)  # the y limit leaves room for it

        ax = self.ax_loss
        ax.clear()
        self.loss_bars = ax.barh([0, 1, 2], [0, 0, 0], color=["0.6", OWN_COLOR, "0.2"])
        ax.set_yticks([0, 1, 2])
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
        self.loss_labels = [ax.text(0, i, "", va="center", fontsize=7) for i in range(3)]

    def draw(self, state: Any) -> Figure:
        if self._batch != state.P.shape[0]:
            self._build(state)
        # The colour scale stays 0..1 (a probability) at every temperature: rescaling it to each
        # state's maximum would make a flat and a peaked distribution look alike.
        for image, matrix, line in zip(self.images, (state.Q, state.P), self.row_lines):
            image.set_data(matrix)
            line.set_ydata([state.row, state.row])
        columns = np.arange(self._batch)
        self.q_line.set_data(columns, state.Q[state.row])
        self.p_line.set_data(columns, state.P[state.row])
        self.positive_line.set_xdata([state.row, state.row])
        row_top = float(max(state.Q[state.row].max(), state.P[state.row].max()))
        self.ax_row.set_ylim(0, max(1e-3, row_top) * 1.45)
        self.ax_row.set_title(f"row i = {state.row} at τ = {state.temperature:.3g}", fontsize=10)

        values = [state.ssl, state.weighted_kl, state.total]
        right = max(values) * 1.45 if max(values) > 0 else 1.0
        for bar, label, value in zip(self.loss_bars, self.loss_labels, values):
            bar.set_width(value)
            label.set_x(value + 0.02 * right)
            label.set_text(f"{value:.4f}")
        self.ax_loss.set_yticklabels(["SSL", f"w·KL (w = {state.weight:.2f})", "total"])
        self.ax_loss.set_xlim(0, right)
        self.ax_loss.set_title(f"KL(Q‖P) = {state.kl:.4f}", fontsize=10)
        return self.fig


def plot_distill_state(state: Any, fig: Figure | None = None, own_name: str = "student",
                       peer_name: str = "peer") -> Figure:
    """Draw one state of the distillation term (see :class:`DistillFigure`); returns the figure."""
    return DistillFigure(fig, own_name, peer_name).draw(state)


# ------------------------------------------------------------------------------ training curves


def metrics_frame(source: str | Path | Iterable[dict]):
    """A run's metrics as a long pandas DataFrame with columns epoch, step, peer, metric, value.

    ``source`` is a run folder, a ``metrics.jsonl`` path, or the records themselves (as returned by
    ``dogo.runlog.read_metrics``). Per-peer values (``peers.<name>.<metric>``) get their peer's
    name; run-wide values (``images_per_s``, ``epoch_seconds``) get peer ``"all"``.
    """
    import pandas as pd

    from .runlog import read_metrics

    records = read_metrics(source) if isinstance(source, (str, Path)) else list(source)
    rows = []
    for rec in records:
        base = {"epoch": rec.get("epoch"), "step": rec.get("step")}
        for key, value in rec.items():
            if key in ("epoch", "step", "peers") or not isinstance(value, (int, float)):
                continue
            rows.append({**base, "peer": "all", "metric": key, "value": float(value)})
        for peer, values in rec.get("peers", {}).items():
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    rows.append({**base, "peer": peer, "metric": key, "value": float(value)})
    return pd.DataFrame(rows, columns=["epoch", "step", "peer", "metric", "value"])


METRIC_LABELS = {
    "ssl_loss": "SSL loss",
    "distill_loss": "distillation KL",
    "total_loss": "total loss",
    "knn_top1": "kNN top-1 (%)",
    "lr": "learning rate",
    "images_per_s": "images / s",
}


def plot_training_curves(source: str | Path | Iterable[dict], metrics: Sequence[str] | None = None,
                         title: str | None = None) -> Figure:
    """One panel per metric against the epoch, one line per peer (seaborn).

    With ``metrics=None`` the panels are the SSL loss, the distillation KL (only when some peer
    distils, i.e. the KL is not all zero) and the kNN top-1 (when the run monitored it).
    """
    import seaborn as sns

    frame = metrics_frame(source)
    if frame.empty:
        raise ValueError("no metrics to plot: the run has not finished an epoch yet")
    if metrics is None:
        metrics = ["ssl_loss"]
        kl = frame[frame.metric == "distill_loss"]
        if len(kl) and (kl.value.abs() > 0).any():
            metrics.append("distill_loss")
        if (frame.metric == "knn_top1").any():
            metrics.append("knn_top1")
    missing = [m for m in metrics if not (frame.metric == m).any()]
    if missing:
        raise ValueError(f"metrics not in this run: {missing}; available: {sorted(frame.metric.unique())}")
    fig = _new_figure((4.2 * len(metrics), 3.2))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    peers = [p for p in frame.peer.unique() if p != "all"]
    palette = dict(zip(peers, sns.color_palette(n_colors=max(1, len(peers))))) | {"all": "0.3"}
    for ax, metric in zip(axes, metrics):
        part = frame[frame.metric == metric]
        sns.lineplot(data=part, x="epoch", y="value", hue="peer", palette=palette, marker="o", ax=ax)
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=10)
        epochs = sorted(part.epoch.unique())
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend() is not None and len(part.peer.unique()) < 2:
            ax.get_legend().remove()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ evaluation figures
# Bare figures (no pyplot): no global state, safe in scripts and threads; notebooks display them.


def _finish(fig: Figure, path: str | Path | None, title: str | None) -> Figure:
    """Add the title, save as PNG when a path is given, return the figure."""
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, Path(path).parent, Path(path).name, dpi=130)
    return fig


def draw_embeddings(panels: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path | None = None, *,
                    class_names: Sequence[str] | None = None, title: str | None = None):
    """Side-by-side scatter plots of 2-D embeddings, one panel per name, coloured by class, one legend."""
    import seaborn as sns

    n = len(panels)
    num_classes = max(int(lab.max()) + 1 for _, lab in panels.values())
    names = list(class_names) if class_names is not None and len(class_names) >= num_classes \
        else [str(i) for i in range(num_classes)]
    legend = num_classes <= 20
    fig = _new_figure((4.2 * n + (2.0 if legend else 0), 4.4), pyplot=False, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    palette = sns.color_palette("tab10" if num_classes <= 10 else "husl", num_classes)
    for i, (ax, (name, (emb, lab))) in enumerate(zip(axes, panels.items())):
        sns.scatterplot(x=emb[:, 0], y=emb[:, 1], hue=[names[c] for c in lab], hue_order=names[:num_classes],
                        palette=palette, s=7, linewidth=0, alpha=0.85, ax=ax, legend=legend and i == n - 1)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    if legend:
        sns.move_legend(axes[-1], "center left", bbox_to_anchor=(1.02, 0.5), title="class", markerscale=2.5,
                        frameon=False)
    return _finish(fig, path, title)


def model_label(df: Any) -> Any:
    """The model column of a results table (a pandas DataFrame): the peer, or "run / peer" when it
    holds several runs."""
    if df["run"].nunique() > 1:
        return df["run"].astype(str) + " / " + df["peer"].astype(str)
    return df["peer"].astype(str)


def plot_summary(df: Any, path: str | Path | None = None, title: str | None = None):
    """One panel per protocol in the table: top-1 (mean, error bars = std over seeds) per model.

    kNN, linear and transfer as bars; limited labels vs label fraction; noisy labels vs noise rate;
    corruptions (mean over types) vs severity, 0 = clean. Returns the Figure (None if nothing to draw).
    """
    import seaborn as sns

    top1 = df[df["metric"] == "top1"].copy()
    if top1.empty:
        return None
    top1["model"] = model_label(top1)
    order = list(dict.fromkeys(top1["model"]))
    panels = []
    bars = top1[top1["protocol"].isin(["knn", "linear", "transfer"])].copy()
    if not bars.empty:
        bars["what"] = np.where(bars["protocol"] == "transfer", "transfer: " + bars["setting"].astype(str),
                                bars["protocol"].astype(str))
        panels.append(("kNN, linear probe, transfer", bars, "bar"))
    for proto, panel_title in (("limited", "limited labels"), ("noisy", "noisy labels")):
        sub = top1[top1["protocol"] == proto]
        if not sub.empty:
            panels.append((panel_title, sub, proto))
    corr = top1[(top1["protocol"] == "corruptions") & top1["group"].isin(["clean", "mean"]) & top1["level"].notna()]
    if not corr.empty:
        panels.append(("corruptions (mean over types)", corr, "corruptions"))
    fig = _new_figure((5.0 * len(panels), 4.2), pyplot=False, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    palette = dict(zip(order, sns.color_palette("colorblind", len(order))))
    for ax, (panel_title, data, kind) in zip(axes, panels):
        if kind == "bar":
            sns.barplot(data=data, x="what", y="value", hue="model", hue_order=order, palette=palette,
                        errorbar="sd", ax=ax)
            ax.set_xlabel("")
            low = max(0.0, float(data["value"].min()) - 10)
            ax.set_ylim(low, 100)
        else:
            x = {"limited": "level", "noisy": "level", "corruptions": "level"}[kind]
            style = "group" if kind == "noisy" and data["group"].nunique() > 1 else None
            sns.lineplot(data=data, x=x, y="value", hue="model", hue_order=order, palette=palette, style=style,
                         marker="o", errorbar="sd", ax=ax)
            if kind == "limited":
                ax.set_xscale("log")
                ax.set_xlabel("fraction of training labels")
            elif kind == "noisy":
                ax.set_xlabel("label noise rate")
            else:
                ax.set_xlabel("severity (0 = clean test set)")
        ax.set_title(panel_title)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend() is not None and ax is not axes[-1]:
            ax.get_legend().remove()
    return _finish(fig, path, title)
