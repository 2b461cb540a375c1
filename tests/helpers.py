"""Small shared pieces for the tests: tiny configs that train in seconds on Fashion-MNIST."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dogo.runlog import CHECKPOINT, load_checkpoint, read_metrics

REPO = Path(__file__).resolve().parent.parent


def tiny_overrides(run_root: Path | str, **extra) -> list[str]:
    """Two tiny CNN peers on 1,024 Fashion-MNIST images: a DoGo run of a few seconds."""
    values = {
        "name": "tiny",
        "output_dir": str(run_root),
        "data.limit": 1024,
        "data.eval_limit": 500,
        "train.epochs": 2,
        "train.batch_size": 128,
        "train.progress": "false",
        "train.knn_every": 1,
        "train.knn_k": 20,
        "train.lr": 0.001,
        "peers": "[{name: small, width: 4}, {name: large, width: 8}]",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None,
            **popen) -> subprocess.CompletedProcess:
    """Run ``python -m dogo ARGS`` in a fresh process."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "dogo", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env, **popen)


def comparable(records: list[dict]) -> list[dict]:
    """Metrics records without wall-clock fields, for run-to-run comparison."""
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k not in ("images_per_s", "epoch_seconds")}
        out.append(r)
    return out


def assert_same_run(run: Path, reference: Path) -> None:
    """The final weights and the logged values agree to float32 rounding.

    Two processes can differ in the last bit of a float32 reduction (PyTorch's vectorised CPU
    reductions depend on memory alignment, and kernels differ between CPUs), so nothing is compared
    bit for bit. A resume that lost the data order, the RNG or the optimizer state changes every
    weight by about the learning rate, far beyond these tolerances.
    """
    final, expected = load_checkpoint(run / CHECKPOINT), load_checkpoint(reference / CHECKPOINT)
    for name, peer in expected["peers"].items():
        for key, tensor in peer["model"].items():
            torch.testing.assert_close(final["peers"][name]["model"][key], tensor, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, key=key, name=name: f"{name}.{key} differs: {m}")
    got, want = comparable(read_metrics(run)), comparable(read_metrics(reference))
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for g, w in zip(got, want):
        assert g["step"] == w["step"]
        for name in w["peers"]:
            assert g["peers"][name] == pytest.approx(w["peers"][name], rel=1e-5, abs=1e-6)
