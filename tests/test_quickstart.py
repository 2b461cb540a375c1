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


@pytest.mark.parametrize(("cuda", "flags", "backbones", "widths", "said"), [
    (True, [], ["resnet18", "resnet50"], None, "quickstart: the GPU demo: ResNet-18 alone vs ResNet-18 + ResNet-50"),
    (True, ["--cpu"], ["cnn", "cnn"], [16, 48], "quickstart: the CPU demo (--cpu)"),
    (False, [], ["cnn", "cnn"], [16, 48], "quickstart: the CPU demo (no CUDA device)"),
])
def test_quickstart_runs_the_resnet_pairing_when_cuda_is_present(cuda, flags, backbones, widths, said, monkeypatch,
                                                                  capsys):
    import torch

    import dogo.quickstart

    chosen = {}

    def record(cfg, output_dir, figure, eval_limit, progress):
        chosen.update(cfg=cfg, figure=figure)
        return []

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(dogo.quickstart, "run_quickstart", record)
    assert main(["quickstart", *flags, "--no-progress"]) == 0
    cfg = chosen["cfg"]
    assert capsys.readouterr().out.startswith(said)
    assert [p.backbone for p in cfg.peers] == backbones
    if widths is None:  # the paper's pairing at Fashion-MNIST scale
        assert (cfg.data.dataset, cfg.data.image_size, cfg.train.epochs) == ("fashion_mnist", 32, 10)
        assert chosen["figure"] == "figures/quickstart_gpu_comparison.png"
    else:
        assert cfg == load_config(DEFAULT_CONFIG, ["device=cpu"] if "--cpu" in flags else [])
        assert chosen["figure"] == "figures/quickstart_comparison.png"


def test_a_given_config_is_used_as_it_is_even_with_cuda(monkeypatch):
    from dogo.quickstart import choose_demo

    demo = choose_demo("configs/fashion_mnist_simclr.yaml", cpu=False, cuda_available=True)
    assert (str(demo.config), demo.overrides) == ("configs/fashion_mnist_simclr.yaml", [])
