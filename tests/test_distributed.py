"""Several processes on the CPU (gloo backend, 2 processes) give the same losses and gradients as one
process on the concatenated batch, and ``torchrun`` runs the real training command.

Two levels are checked in one pair of spawned processes (starting processes is the slow part):

1. The functions: two small MLPs (no BatchNorm, whose batch statistics are per process by design)
   wrapped in DDP; every process gathers its embeddings with ``gather_with_grad``, computes NT-Xent
   and the distillation term over the global batch, multiplies by the world size (the engine's
   convention) and runs backward. Loss and every parameter gradient must equal one process's on the
   concatenated batch.
2. The engine: ``Trainer.train_step`` under DDP with two peers (SimCLR and SimSiam, so the gather of
   projections *and* predictions is exercised), deterministic views and BatchNorm frozen at the whole
   batch's statistics, against a single-process Trainer on the concatenated batch. The distillation
   term is large in this setup, and the test checks that it changes the gradients far beyond the
   tolerance, so a DDP path without it would fail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from dogo import distributed as dist_utils
from dogo.augment import normalize, to_float
from dogo.config import from_dict
from dogo.data import ImageDataset
from dogo.losses import nt_xent, similarity_distill
from dogo.runlog import load_checkpoint, read_metrics

from .conftest import write_fashion_mnist
from .helpers import REPO

WORLD = 2
LOCAL_BATCH = 6  # rows per process; the global batch is WORLD * LOCAL_BATCH
TOL = dict(rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ level 1: the functions


def _mlp(out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, out_dim))


def _function_setup():
    """Two fixed MLPs and two views of a global batch of WORLD * LOCAL_BATCH rows."""
    torch.manual_seed(0)
    model_a, model_b = _mlp(8), _mlp(5)
    x1 = torch.randn(WORLD * LOCAL_BATCH, 10)
    x2 = x1 + 0.3 * torch.randn_like(x1)
    return model_a, model_b, x1, x2


def _function_loss(a, b, x1, x2, gather):
    """NT-Xent for both models plus the distillation of each towards the other, over the gathered batch."""
    za1, za2, zb1, zb2 = (gather(t) for t in (a(x1), a(x2), b(x1), b(x2)))
    return (nt_xent(za1, za2) + nt_xent(zb1, zb2, temperature=0.2)
            + 0.7 * similarity_distill(za1, za2, zb1, zb2) + similarity_distill(zb1, zb2, za1, za2, reduction="mean"))


def _grads(*models) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for m in models for p in m.parameters()]


# ------------------------------------------------------------------ level 2: the engine


class _FixedViews:
    """Deterministic stand-in for a peer's augmentation: the first call of each pair returns the image
    (scaled by ``gain``), the second its horizontal mirror. Depends on each image alone, so views of a
    shard are the rows of the views of the whole batch."""

    def __init__(self, gain: float):
        self.gain, self.calls = gain, 0

    def __call__(self, images, generator):
        self.calls += 1
        x = to_float(images) * self.gain
        if self.calls % 2 == 0:
            x = x.flip(-1)
        return normalize(x, (0.3,), (0.35,))


def _engine_config():
    return from_dict({
        "device": "cpu", "seed": 3,
        "data": {"image_size": 12},
        "peers": [
            {"name": "small", "width": 2, "hidden_dim": 16, "projection_dim": 8, "distill_weight": 0.5},
            {"name": "large", "width": 3, "objective": "simsiam", "projection_dim": 12,
             "predictor_hidden_dim": 6, "distill_weight": 2.0},
        ],
        "train": {"batch_size": WORLD * LOCAL_BATCH, "epochs": 1, "knn_every": 0, "progress": False,
                  "channels_last": False},
    })


def _engine_images() -> torch.Tensor:
    return torch.randint(0, 256, (WORLD * LOCAL_BATCH, 1, 12, 12), generator=torch.Generator().manual_seed(5),
                         dtype=torch.uint8)


def _engine_data() -> ImageDataset:
    """The engine tests' training set: every process's images, unlabelled."""
    full = _engine_images()
    return ImageDataset("fashion_mnist", full, torch.zeros(len(full), dtype=torch.long), ("x",), (0.3,), (0.35,))


@torch.no_grad()
def _freeze_batchnorm_at_batch_statistics(model: nn.Module, views: _FixedViews, images: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of the whole batch, then switch to eval mode.

    Eval mode makes the statistics the same on every process (batch statistics are per process by
    design). With the initial running statistics (mean 0, variance 1) the random networks map every
    image to nearly the same direction, both peers' similarity distributions are uniform and the
    distillation term is zero up to rounding; centred features make it large.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0  # the running statistics become this batch's
    model.train()
    model(views(images, None), views(images, None))
    views.calls = 0
    model.eval()


def _engine_step(run_dir: Path, images: torch.Tensor, distill: bool = True):
    """One Trainer.train_step with fixed views and BatchNorm in eval mode; losses and gradients.

    ``distill=False`` sets every distillation weight to 0 (the reference without the KL term)."""
    from dogo.train import Trainer

    data = _engine_data()
    cfg = _engine_config()
    if not distill:
        for peer_cfg in cfg.peers:
            peer_cfg.distill_weight = 0.0
    trainer = Trainer(cfg, run_dir, train_data=data, progress=False)
    for k, peer in enumerate(trainer.peers):
        peer.augment = _FixedViews(gain=1.0 - 0.2 * k)
        _freeze_batchnorm_at_batch_statistics(peer.model, peer.augment, data.images)
    losses = trainer.train_step(images)
    values = [{term: v.detach().item() for term, v in peer_losses.items()} for peer_losses in losses]
    return values, _grads(*(p.model for p in trainer.peers))


def _frozen_peer_after_a_step(run_dir: Path, images: torch.Tensor) -> list[torch.Tensor]:
    """The engine's pair with its second peer frozen, after one train_step: that peer's weights."""
    from dogo.train import Trainer

    cfg = _engine_config()
    cfg.peers[1].frozen = True
    trainer = Trainer(cfg, run_dir, train_data=_engine_data(), progress=False)
    if len(images):
        trainer.train_step(images)
    return [p.detach().clone() for p in trainer.peers[1].model.parameters()]


# ------------------------------------------------------------------ the spawned processes


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert dist_utils.init_from_env()
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)

    model_a, model_b, x1, x2 = _function_setup()
    ddp_a = dist_utils.wrap(model_a, torch.device("cpu"))
    ddp_b = dist_utils.wrap(model_b, torch.device("cpu"))
    loss = _function_loss(ddp_a, ddp_b, x1[rows], x2[rows], dist_utils.gather_with_grad)
    (loss * dist_utils.world_size()).backward()
    function_result = {"loss": loss.item(), "grads": _grads(model_a, model_b)}

    engine_losses, engine_grads = _engine_step(Path(out_dir) / "run", _engine_images()[rows])
    frozen = _frozen_peer_after_a_step(Path(out_dir) / f"frozen{rank}", _engine_images()[rows])
    torch.save({"function": function_result, "engine": {"losses": engine_losses, "grads": engine_grads},
                "frozen": frozen}, Path(out_dir) / f"rank{rank}.pt")
    dist_utils.cleanup()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.slow
def test_gathered_losses_and_gradients_equal_one_process_on_the_whole_batch(two_process_results):
    model_a, model_b, x1, x2 = _function_setup()
    loss = _function_loss(model_a, model_b, x1, x2, lambda t: t)
    loss.backward()
    expected = _grads(model_a, model_b)
    for rank, result in enumerate(two_process_results):
        got = result["function"]
        assert got["loss"] == pytest.approx(loss.item(), rel=1e-6), f"rank {rank}"
        assert len(got["grads"]) == len(expected)
        for g, e in zip(got["grads"], expected):
            torch.testing.assert_close(g, e, **TOL)


@pytest.mark.slow
def test_engine_step_under_ddp_equals_one_process(two_process_results, tmp_path):
    losses, grads = _engine_step(tmp_path / "single", _engine_images())
    # The distillation term is large here (about 3 for each peer with this setup), and it changes the
    # gradients far beyond the tolerance: a DDP path that dropped it could not match.
    assert all(v["distill"] > 0.1 for v in losses), losses
    _, grads_without_distill = _engine_step(tmp_path / "no_distill", _engine_images(), distill=False)
    largest_change = max((g - g0).abs().max().item() for g, g0 in zip(grads, grads_without_distill))
    largest_grad = max(g.abs().max().item() for g in grads)
    assert largest_change > 1e-2 * largest_grad
    for rank, result in enumerate(two_process_results):
        got = result["engine"]
        for got_peer, want_peer in zip(got["losses"], losses):
            for term, value in want_peer.items():
                assert got_peer[term] == pytest.approx(value, rel=1e-5, abs=1e-6), f"rank {rank} {term}"
        assert len(got["grads"]) == len(grads)
        for g, e in zip(got["grads"], grads):
            # float32 sums in another order: an error relative to the tensor's scale, 100x below the
            # distillation term's share of the gradient checked above.
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())


@pytest.mark.slow
def test_a_frozen_peer_holds_rank_0s_weights_on_every_process(two_process_results, tmp_path):
    """DDP cannot wrap a peer with no trainable parameter; the engine broadcasts it instead. Each process
    seeds its own initialisation (seed + rank), so without the broadcast rank 1's peer would differ; a
    frozen peer is rank 0's (the single process's) initial network on every process, after a step too."""
    initial = _frozen_peer_after_a_step(tmp_path / "single", _engine_images()[:0])
    for rank, result in enumerate(two_process_results):
        assert len(result["frozen"]) == len(initial)
        assert all(torch.equal(got, want) for got, want in zip(result["frozen"], initial)), f"rank {rank}"


def test_without_a_process_group_everything_is_a_single_process_no_op():
    x = torch.randn(4, 3, requires_grad=True)
    assert not dist_utils.is_distributed()
    assert (dist_utils.rank(), dist_utils.world_size()) == (0, 1)
    assert dist_utils.gather_with_grad(x) is x
    assert dist_utils.shard(x) is x
    assert dist_utils.broadcast_object("run-1") == "run-1"
    assert dist_utils.mean_over_ranks(torch.tensor(2.5)).item() == 2.5


def test_sync_batchnorm_on_the_cpu_is_a_config_error():
    from dogo.errors import ConfigError

    with pytest.raises(ConfigError, match="train.sync_batchnorm"):
        dist_utils.wrap(nn.BatchNorm1d(3), torch.device("cpu"), sync_batchnorm=True)


# ------------------------------------------------------------------ end to end with torchrun


@pytest.mark.slow
def test_torchrun_two_processes_trains_and_only_rank_zero_writes(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=256, n_test=10)
    run_dir = tmp_path / "run"
    overrides = [
        f"data.root={data.root}", "device=cpu", "train.epochs=2", "train.batch_size=64", "train.knn_every=0",
        "train.log_every=2", "peers=[{name: small, width: 4}, {name: large, width: 8}]",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           "-m", "dogo", "train", "--run-dir", str(run_dir), "--no-progress", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    records = read_metrics(run_dir)
    # 256 images, 128 per process, 32 per process and step: 4 steps per epoch.
    assert [r["epoch"] for r in records] == [1, 2]  # one line per epoch: rank 1 wrote none
    assert [r["step"] for r in records] == [4, 8]
    for r in records:
        for peer in ("small", "large"):
            assert all(isinstance(v, float) and v == v for v in r["peers"][peer].values())
    assert json.loads((run_dir / "environment.json").read_text())["world_size"] == WORLD
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["global_step"] == 8
    keys = list(state["peers"]["small"]["model"])
    assert keys and not any(k.startswith("module.") for k in keys)  # the unwrapped model was saved
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.yaml", "environment.json",
                                                          "figures", "metrics.jsonl"]
    assert proc.stdout.count("run folder:") == 1  # the summary is printed by rank 0 only
