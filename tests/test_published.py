"""Published runs: shipped small (float16, with a manifest), verified by sha256, loaded offline into the
run-folder format ``dogo.evaluate.load_run`` reads, and scoring what their manifest recorded."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import torch

from dogo.config import load_config
from dogo.evaluate import encoder_transform, load_run
from dogo.features import extract_features
from dogo.models import build_model
from dogo.published import (
    MANIFEST,
    PUBLISHED_DIR,
    WEIGHTS,
    PublishedError,
    half_precision,
    knn_check,
    list_published,
    load_published,
    materialise,
    publish,
    read_manifest,
    verify,
)
from dogo.runlog import CHECKPOINT, load_checkpoint

from .helpers import tiny_overrides

SHIPPED = ("fmnist_quick", "fmnist_quick_alone")


@pytest.fixture
def offline(monkeypatch):
    """No network: any attempt to open a socket fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a published run must load without the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def finished_run(tmp_path):
    """A finished run folder of two tiny randomly initialised CNNs (no training needed to test publishing)."""
    cfg = load_config(None, tiny_overrides(tmp_path))
    torch.manual_seed(0)
    models = {p.name: build_model(p, 1, cfg.data.image_size) for p in cfg.peers}
    run = tmp_path / "run"
    (run / CHECKPOINT).parent.mkdir(parents=True)
    torch.save({"config": cfg.to_dict(), "epoch": 2, "finished": True,
                "peers": {name: {"model": m.state_dict()} for name, m in models.items()}}, run / CHECKPOINT)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 2, "step": 16, "peers": {}}) + "\n")
    (run / "config.yaml").write_text(cfg.to_yaml())
    return run, models


def test_half_precision_keeps_integer_buffers():
    model = torch.nn.BatchNorm1d(3)
    half = half_precision(model.state_dict())
    assert half["weight"].dtype == torch.float16 and half["running_var"].dtype == torch.float16
    assert half["num_batches_tracked"].dtype == torch.int64


def test_publish_then_load_gives_the_float16_rounded_models(finished_run, tmp_path, offline):
    run, models = finished_run
    published = tmp_path / "pretrained"
    folder = publish(run, "tiny", produced_by="a test", description="two random CNNs", directory=published)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.yaml", "metrics.jsonl", WEIGHTS, MANIFEST])
    manifest = verify("tiny", published)
    assert manifest["produced_by"] == "a test" and manifest["epoch"] == 2 and manifest["weights_dtype"] == "float16"
    assert set(manifest["knn_check"]["top1"]) == {"small", "large"}
    assert list_published(published) == ["tiny"]

    run_dir = materialise("tiny", published, tmp_path / "cache")
    state = load_checkpoint(run_dir / CHECKPOINT)
    assert state["finished"] and state["epoch"] == 2 and set(state["peers"]) == {"small", "large"}
    loaded = load_published("tiny", directory=published, cache_dir=tmp_path / "cache")
    assert loaded.finished and loaded.epoch == 2 and loaded.run_dir == run_dir
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    transform = encoder_transform(loaded)
    for name, model in models.items():
        got = loaded[name].state_dict()
        for key, tensor in model.state_dict().items():
            want = tensor.half().to(tensor.dtype) if tensor.is_floating_point() else tensor
            assert torch.equal(got[key], want), key  # exactly the float16 value, back in float32
        # Features of the float16 weights equal those of the float32 model up to that rounding.
        original = extract_features(model.eval().backbone, images, transform)
        torch.testing.assert_close(extract_features(loaded[name].backbone, images, transform), original,
                                   rtol=2e-2, atol=2e-2 * original.abs().max().item())
    # A second call reuses the materialised folder.
    assert materialise("tiny", published, tmp_path / "cache") == run_dir


def test_hash_mismatch_and_missing_files_are_refused(tmp_path):
    published = tmp_path / "pretrained"
    shutil.copytree(PUBLISHED_DIR / SHIPPED[1], published / SHIPPED[1])
    weights = published / SHIPPED[1] / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    weights.write_bytes(bytes(data))
    with pytest.raises(PublishedError, match=r"sha256 mismatch for .*weights\.pt"):
        materialise(SHIPPED[1], published, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing materialised from a damaged file
    weights.write_bytes(bytes(data[:-1]))
    with pytest.raises(PublishedError, match="bytes, the manifest says"):
        verify(SHIPPED[1], published)
    weights.unlink()
    with pytest.raises(PublishedError, match="weights.pt is missing"):
        verify(SHIPPED[1], published)
    with pytest.raises(PublishedError, match=r"no published run 'nope'.*available: fmnist_quick_alone"):
        read_manifest("nope", published)


def test_unfinished_runs_are_not_published(finished_run, tmp_path):
    run, _ = finished_run
    state = torch.load(run / CHECKPOINT, weights_only=False)
    torch.save({**state, "finished": False}, run / CHECKPOINT)
    with pytest.raises(PublishedError, match="not a finished run"):
        publish(run, "tiny", produced_by="", description="", directory=tmp_path / "pretrained")


def test_shipped_runs_are_listed_verified_and_small():
    assert set(SHIPPED) <= set(list_published())
    total = 0
    for name in SHIPPED:
        manifest = verify(name)
        total += sum(f["bytes"] for f in manifest["files"].values())
        assert manifest["weights_dtype"] == "float16" and "quickstart" in manifest["produced_by"]
    assert total < 2.5 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_runs_score_their_recorded_knn_check(name, tmp_path, offline):
    manifest = read_manifest(name)
    run = load_published(name, cache_dir=tmp_path / "cache")
    assert load_run(run.run_dir).keys() == run.keys()
    check = manifest["knn_check"]
    got = knn_check(run, check["bank"], check["queries"], check["k"], check["temperature"], check["seed"])
    for peer, recorded in check["top1"].items():
        # Float rounding on another CPU may move a query that sits on a tie; 1 point is 10 of 1,000 queries.
        assert abs(got[peer] - recorded) <= 1.0, (peer, got[peer], recorded)
