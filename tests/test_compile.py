"""torch.compile paths of the engine keep the eager float32 numbers (on the CPU, with inductor).

``train.compile_scope: model`` compiles each peer's forward; ``step`` compiles every peer's forward
and the cohort's losses as one graph (its backward is then one graph too).
"""

from __future__ import annotations

import pytest
import torch

from dogo.config import ConfigError, from_dict
from dogo.train import Trainer

BATCH = 32


def make_trainer(tmp_path, name, **train):
    cfg = {"device": "cpu", "seed": 3, "data": {"limit": 4 * BATCH},
           "peers": [{"name": "small", "width": 8, "distill_weight": 0.5},
                     {"name": "large", "width": 16, "distill_weight": 0.5}],
           "train": {"epochs": 1, "batch_size": BATCH, "knn_every": 0, "progress": False, "amp": "off", **train}}
    return Trainer(from_dict(cfg), tmp_path / name)


def first_gradients(trainer):
    losses = trainer.compute_losses(trainer.images[:BATCH])
    sum(loss["total"] for loss in losses).backward()
    grads = {f"{p.name}.{n}": q.grad.clone() for p in trainer.peers for n, q in p.model.named_parameters()}
    for p in trainer.peers:
        p.optimizer.zero_grad(set_to_none=True)
    return [float(loss["total"].detach()) for loss in losses], grads


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["model", "step"])
def test_compiled_step_matches_eager(tmp_path, scope):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager = make_trainer(tmp_path, "eager")
    compiled = make_trainer(tmp_path, scope, compile=True, compile_scope=scope)
    assert compiled.peers[0].module is not compiled.peers[0].model if scope == "model" \
        else compiled.forward_losses is not compiled._forward_losses

    # The same seed gives the same weights and the same views: only the compiled numerics differ.
    eager_losses, eager_grads = first_gradients(eager)
    compiled_losses, compiled_grads = first_gradients(compiled)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    # Per peer, the whole gradient vector: float32 re-association moves it by about 1e-5 to 1e-3 of its
    # norm (BatchNorm's backward amplifies it); dropping the distillation term moves it by about 1.
    for peer in ("small", "large"):
        names = [n for n in eager_grads if n.startswith(peer + ".")]
        e = torch.cat([eager_grads[n].flatten() for n in names])
        c = torch.cat([compiled_grads[n].flatten() for n in names])
        assert ((c - e).norm() / e.norm()).item() < 1e-2, peer
    assert counters["stats"]["unique_graphs"] >= 1  # something was compiled
    if scope == "step":
        assert not counters["graph_break"], dict(counters["graph_break"])  # the whole step is one graph

    # A few optimizer steps later the two runs still agree (later losses depend on every update).
    for i in range(1, 4):
        batch = eager.images[i * BATCH:(i + 1) * BATCH]
        a = [float(loss["total"].detach()) for loss in eager.train_step(batch)]
        b = [float(loss["total"].detach()) for loss in compiled.train_step(batch)]
        assert b == pytest.approx(a, rel=1e-3), i


def test_step_scope_is_refused_under_torchrun(tmp_path, monkeypatch):
    import dogo.distributed as dist_utils

    monkeypatch.setattr(dist_utils, "init_from_env", lambda backend=None: True)
    monkeypatch.setattr(dist_utils, "wrap", lambda model, device, sync_bn: model)
    with pytest.raises(ConfigError, match="compile_scope"):
        make_trainer(tmp_path, "ddp", compile=True, compile_scope="step")
