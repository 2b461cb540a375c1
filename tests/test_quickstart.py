"""The main job: SimCLR alone vs DoGo, probed next to raw pixels."""

from __future__ import annotations

import json

import pytest

from dogo.cli import main
from dogo.config import baseline_of, load_config
from dogo.quickstart import DEFAULT_CONFIG, format_table


def test_baseline_is_the_first_peer_alone_with_identical_settings():
    cfg = load_config(DEFAULT_CONFIG)
    base = baseline_of(cfg)
    assert [p.name for p in base.peers] == ["small"] and base.peers[0] == cfg.peers[0]
    assert base.train == cfg.train and base.data == cfg.data and base.seed == cfg.seed
    assert base.name == "fmnist_quick_alone"


def test_table_reports_the_gain_of_the_small_model():
    rows = [
        {"model": "raw pixels", "training": "none", "knn_top1": 85.0, "linear_top1": 84.0},
        {"model": "small (cnn w16)", "peer": "small", "training": "simclr alone", "knn_top1": 80.0, "linear_top1": 83.0},
        {"model": "small (cnn w16)", "peer": "small", "training": "DoGo", "knn_top1": 81.5, "linear_top1": 82.5},
        {"model": "large (cnn w48)", "peer": "large", "training": "DoGo", "knn_top1": 84.0, "linear_top1": 86.0},
    ]
    table = format_table(rows)
    assert "| raw pixels | none | 85.00 | 84.00 |" in table
    assert "small with its peer vs alone: kNN +1.50 points, linear -0.50 points" in table


@pytest.mark.slow
def test_quickstart_smoke_end_to_end(tmp_path):
    out, figure = tmp_path / "qs", tmp_path / "figures" / "qs.png"
    assert main(["quickstart", "--smoke", "--no-progress", "--output-dir", str(out), "--figure", str(figure)]) == 0
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["model"].split(" ")[0] for r in rows] == ["raw", "small", "small", "large"]
    assert rows[0]["knn_top1"] > 70 and rows[0]["linear_top1"] > 70  # raw pixels on 2,000 test images
    for r in rows[1:]:
        assert 10 < r["knn_top1"] <= 100 and 10 < r["linear_top1"] <= 100  # beats chance
    assert figure.is_file() and figure.stat().st_size > 10_000
    assert (out / "alone" / "metrics.jsonl").is_file() and (out / "dogo" / "checkpoints" / "last.pt").is_file()
