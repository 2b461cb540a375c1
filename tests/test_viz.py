"""The notebooks' plotting helpers: what they compute (metric tables, display images, marker positions)
is checked exactly; that they draw at all is checked by drawing into Agg figures."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from dogo import viz
from dogo.augment import normalize
from dogo.runlog import MetricsWriter
from dogo.widgets import distill_state


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def records(distill: float = 0.25):
    return [
        {"epoch": e, "step": 4 * e, "images_per_s": 100.0 * e, "epoch_seconds": 9.0,
         "peers": {"small": {"ssl_loss": 5.0 - e, "distill_loss": distill, "total_loss": 5.0 - e + distill,
                             "lr": 1e-3, "knn_top1": 50.0 + e},
                   "large": {"ssl_loss": 4.0 - e, "distill_loss": distill, "total_loss": 4.0 - e + distill,
                             "lr": 1e-3, "knn_top1": 60.0 + e}}}
        for e in (1, 2)
    ]


def test_metrics_frame_is_long_format_with_peer_names():
    frame = viz.metrics_frame(records())
    assert list(frame.columns) == ["epoch", "step", "peer", "metric", "value"]
    assert len(frame) == 2 * (2 + 2 * 5)  # per epoch: 2 run-wide values + 2 peers x 5 metrics
    row = frame[(frame.epoch == 2) & (frame.peer == "large") & (frame.metric == "knn_top1")]
    assert row.value.tolist() == [62.0] and row.step.tolist() == [8]
    assert frame[frame.metric == "images_per_s"].peer.unique().tolist() == ["all"]


def test_metrics_frame_reads_a_run_folder(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    for rec in records():
        writer.write(rec)
    assert viz.metrics_frame(tmp_path).equals(viz.metrics_frame(records()))


def panel_titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_training_curves_choose_their_panels():
    fig = viz.plot_training_curves(records())
    assert panel_titles(fig) == ["SSL loss", "distillation KL", "kNN top-1 (%)"]
    fig = viz.plot_training_curves(records(distill=0.0))  # a single model: no distillation panel
    assert panel_titles(fig) == ["SSL loss", "kNN top-1 (%)"]
    ssl_ax = fig.axes[0]
    assert list(ssl_ax.get_xticks()) == [1, 2]
    # one line per peer, through the logged values
    lines = {tuple(line.get_ydata()) for line in ssl_ax.get_lines() if len(line.get_ydata()) == 2}
    assert lines == {(4.0, 3.0), (3.0, 2.0)}


def test_training_curves_reject_unknown_metrics_and_empty_runs():
    with pytest.raises(ValueError, match="metrics not in this run: \\['top5'\\]"):
        viz.plot_training_curves(records(), metrics=["top5"])
    with pytest.raises(ValueError, match="no metrics to plot"):
        viz.plot_training_curves([])


def marker_offsets(ax):
    return ax.collections[0].get_offsets().data.astype(int).tolist()


def test_similarity_matrix_marks_the_positives():
    fig = viz.plot_similarity_matrix(torch.rand(6, 6), positives="two_view")
    assert marker_offsets(fig.axes[0]) == [[3, 0], [4, 1], [5, 2], [0, 3], [1, 4], [2, 5]]
    fig = viz.plot_similarity_matrix(np.eye(4), positives="diagonal", colorbar=False)
    assert marker_offsets(fig.axes[0]) == [[0, 0], [1, 1], [2, 2], [3, 3]]
    assert len(fig.axes) == 1
    with pytest.raises(ValueError, match="2B x 2B"):
        viz.plot_similarity_matrix(torch.rand(5, 5), positives="two_view")
    with pytest.raises(ValueError, match="positives must be"):
        viz.plot_similarity_matrix(torch.rand(4, 4), positives="rows")


def test_to_display_undoes_the_normalisation():
    images = torch.randint(0, 256, (3, 1, 5, 5), dtype=torch.uint8)
    plain = viz.to_display(images)
    assert plain.shape == (3, 5, 5, 1)
    np.testing.assert_allclose(plain, images.permute(0, 2, 3, 1).numpy() / 255, rtol=1e-6)
    views = normalize(images.float() / 255, (0.3,), (0.4,))
    np.testing.assert_allclose(viz.to_display(views, (0.3,), (0.4,)), plain, atol=1e-6)


def test_view_pairs_need_matching_counts():
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    views = torch.zeros(4, 1, 8, 8)
    fig = viz.plot_view_pairs(images, views, views, (0.0,), (1.0,), titles=list("abcd"))
    assert len(fig.axes) == 12
    with pytest.raises(ValueError, match="as many views as originals"):
        viz.plot_view_pairs(images, views[:3], views, (0.0,), (1.0,))


def test_save_figure_adds_png_and_creates_the_folder(tmp_path):
    fig = viz.plot_similarity_matrix(np.eye(3))
    path = viz.save_figure(fig, tmp_path / "new" / "folder", "matrix", dpi=20)
    assert path == tmp_path / "new" / "folder" / "matrix.png"
    assert path.read_bytes().startswith(b"\x89PNG")


def test_distill_figure_updates_in_place():
    g = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(4))
    drawing = viz.DistillFigure()
    first = distill_state(a, b, c, d, temperature=0.1, weight=1.0, ssl=2.0)
    drawing.draw(first)
    axes_before = list(drawing.fig.axes)
    second = distill_state(a, b, c, d, temperature=0.7, weight=3.0, ssl=2.0, row=2)
    drawing.draw(second)
    assert drawing.fig.axes == axes_before  # the same panels, redrawn
    np.testing.assert_array_equal(drawing.images[1].get_array(), second.P)
    np.testing.assert_array_equal(drawing.images[0].get_array(), second.Q)
    np.testing.assert_array_equal(drawing.p_line.get_ydata(), second.P[2])
    assert drawing.ax_loss.get_title() == f"KL(Q‖P) = {second.kl:.4f}"
    assert [bar.get_width() for bar in drawing.loss_bars] == [2.0, 3.0 * second.kl, 2.0 + 3.0 * second.kl]
