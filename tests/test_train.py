"""The training engine: run folder contents, the DoGo step, schedules, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from dogo.config import load_config
from dogo.data import ImageDataset
from dogo.errors import ConfigError
from dogo.runlog import load_checkpoint, read_metrics
from dogo.train import Trainer, lr_factor, resolve_device, train

from .helpers import assert_same_run, comparable, tiny_overrides


def synthetic(n: int = 256, channels: int = 1, size: int = 16, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 4
    return ImageDataset("synthetic", images, labels, tuple("abcd"), (0.5,) * channels, (0.25,) * channels)


def test_dogo_run_writes_a_complete_run_folder(tmp_path):
    result = train(None, overrides=tiny_overrides(tmp_path))
    run = tmp_path / result["run_dir"].split("/")[-1]
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "environment.json", "metrics.jsonl", "checkpoints"}
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert set(r["peers"]) == {"small", "large"}
        for m in r["peers"].values():
            assert m["distill_loss"] > 0
            assert m["total_loss"] == pytest.approx(m["ssl_loss"] + m["distill_loss"], rel=1e-5)
            assert 10.0 < m["knn_top1"] <= 100.0  # beats chance (10 classes)
        assert r["images_per_s"] > 0
    env = json.loads((run / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and "git_commit" in env
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["limit"] == 1024 and len(saved["peers"]) == 2
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["finished"] is True
    assert set(state["peers"]) == {"small", "large"}
    assert {"python", "numpy", "torch", "generator", "order_generator"} <= set(state["rng"])


def test_single_peer_is_the_baseline_without_distillation(tmp_path):
    result = train(None, overrides=tiny_overrides(tmp_path, peers="[{name: solo, width: 4}]", **{"train.epochs": 1}))
    m = result["peers"]["solo"]
    assert m["distill_loss"] == 0.0
    assert m["total_loss"] == m["ssl_loss"]


def test_each_peer_gets_only_the_gradient_of_its_own_loss(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, **{"train.knn_every": 0}))
    trainer = Trainer(cfg, tmp_path / "run", train_data=synthetic(channels=1, size=28))
    small, large = trainer.peers
    losses = trainer.compute_losses(trainer.images[:16])
    # The small model's loss (its SSL term + KL towards the detached large peer) reaches no
    # parameter of the large model, and vice versa.
    for own, other, loss in ((small, large, losses[0]), (large, small, losses[1])):
        grads = torch.autograd.grad(loss["total"], list(other.model.parameters()), allow_unused=True,
                                    retain_graph=True)
        assert all(g is None for g in grads)
        grads = torch.autograd.grad(loss["total"], list(own.model.parameters()), allow_unused=True,
                                    retain_graph=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_peer_that_distils_nothing_trains_the_same_beside_any_partner(tmp_path):
    """The places of a cohort are alike: a peer with distillation weight 0 trains as it would beside a
    partner that distils or not, and the first peer of a cohort where no one distils starts and takes its
    first step as alone (later its views, drawn from one stream with the second peer's, differ from the
    alone run's). configs/grids/null_peer_cnn_12.yaml reads its two networks this way."""
    data = synthetic(channels=1, size=28)

    def trained(run: str, peers: str, steps: int) -> list[list[torch.Tensor]]:
        cfg = load_config(None, tiny_overrides(tmp_path, peers=peers, **{"train.knn_every": 0}))
        trainer = Trainer(cfg, tmp_path / run, train_data=data)
        for start in range(0, 32 * steps, 32):
            trainer.train_step(data.images[start:start + 32])
        return [[p.detach().clone() for p in peer.model.parameters()] for peer in trainer.peers]

    first, second = "{name: first, width: 4, distill_weight: %s}", "{name: second, width: 4, distill_weight: 0.0}"
    twin, one_way = trained("twin", f"[{first % 0.0}, {second}]", 3), trained("one_way", f"[{first % 1.0}, {second}]", 3)
    for a, b in zip(twin[1], one_way[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # The partners did train differently, so the second peer's equality is not that of two identical runs.
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(twin[0], one_way[0]))
    twin, alone = trained("twin_1", f"[{first % 0.0}, {second}]", 1), trained("alone_1", f"[{first % 0.0}]", 1)
    for a, b in zip(twin[0], alone[0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_frozen_peer_never_changes_and_still_teaches(tmp_path):
    """``frozen: true`` keeps a peer at its initial weights (its BatchNorm still keeps running statistics)
    while the student distils from it: the student's first step equals the one beside the same peer
    unfrozen (same weights, same views), and later steps differ because only the unfrozen peer learns.
    configs/grids/frozen_peer_cnn_12.yaml reads the small CNN beside such a fixed random network."""
    data = synthetic(channels=1, size=28)

    def trained(run: str, frozen: bool, steps: int):
        peers = ("[{name: student, width: 4, distill_weight: 1.0}, "
                 f"{{name: teacher, width: 4, distill_weight: 0.0, frozen: {str(frozen).lower()}}}]")
        cfg = load_config(None, tiny_overrides(tmp_path, peers=peers, **{"train.knn_every": 0}))
        trainer = Trainer(cfg, tmp_path / run, train_data=data)
        initial = [p.detach().clone() for p in trainer.peers[1].model.parameters()]
        buffers = [b.detach().clone() for b in trainer.peers[1].model.buffers()]
        for start in range(0, 32 * steps, 32):
            trainer.train_step(data.images[start:start + 32])
        return trainer, initial, buffers

    frozen, initial, buffers = trained("frozen", True, 3)
    assert all(torch.equal(p, p0) for p, p0 in zip(frozen.peers[1].model.parameters(), initial))
    assert not all(torch.equal(b, b0) for b, b0 in zip(frozen.peers[1].model.buffers(), buffers))
    unfrozen, initial_unfrozen, _ = trained("unfrozen", False, 3)
    assert all(torch.equal(a, b) for a, b in zip(initial, initial_unfrozen))
    assert any(not torch.allclose(p, p0, rtol=1e-3, atol=1e-4)
               for p, p0 in zip(unfrozen.peers[1].model.parameters(), initial))
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-4)
               for a, b in zip(frozen.peers[0].model.parameters(), unfrozen.peers[0].model.parameters()))
    one_frozen, _, _ = trained("frozen_1", True, 1)
    one_unfrozen, _, _ = trained("unfrozen_1", False, 1)
    for a, b in zip(one_frozen.peers[0].model.parameters(), one_unfrozen.peers[0].model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_frozen_peer_logs_no_learning_rate_and_every_peer_frozen_is_refused(tmp_path):
    peers = "[{name: small, width: 4, distill_weight: 0.1}, {name: large, width: 4, distill_weight: 0.0, frozen: true}]"
    result = train(None, overrides=tiny_overrides(tmp_path, peers=peers))
    first = read_metrics(tmp_path / Path(result["run_dir"]).name)[0]["peers"]
    assert first["large"]["lr"] == 0.0 and first["small"]["lr"] > 0
    assert 10.0 < first["large"]["knn_top1"] <= 100.0  # a random network's features, evaluated
    with pytest.raises(ConfigError, match="every peer is frozen"):
        load_config(None, tiny_overrides(tmp_path, peers="[{name: solo, width: 4, frozen: true}]"))


def test_a_uniform_target_trains_one_network_towards_even_similarities(tmp_path):
    """``distill_target: uniform`` gives a lone network a distillation term towards U[i, j] = 1/B (logged
    and weighted like a peer's KL); baseline_of still gives the plain SSL run. A misspelt target fails at
    start. configs/grids/uniform_target_cnn_12.yaml reads the small CNN trained this way."""
    from dogo.config import baseline_of

    peers = "[{name: small, width: 4, distill_weight: 0.5, distill_target: uniform}]"
    cfg = load_config(None, tiny_overrides(tmp_path, peers=peers, **{"train.knn_every": 0}))
    data = synthetic(channels=1, size=28)
    trainer = Trainer(cfg, tmp_path / "uniform", train_data=data)
    losses = trainer.compute_losses(data.images[:32])[0]
    assert losses["distill"].item() > 0.1
    torch.testing.assert_close(losses["total"], losses["ssl"] + 0.5 * losses["distill"], rtol=1e-6, atol=1e-6)
    alone = baseline_of(cfg)
    assert [(p.distill_target, p.frozen) for p in alone.peers] == [("peers", False)]
    assert Trainer(alone, tmp_path / "alone", train_data=data).compute_losses(data.images[:32])[0]["distill"].item() == 0

    result = train(None, overrides=tiny_overrides(tmp_path, peers=peers, **{"train.epochs": 1}))
    metrics = read_metrics(tmp_path / Path(result["run_dir"]).name)[0]["peers"]["small"]
    assert metrics["distill_loss"] > 0.1
    assert metrics["total_loss"] == pytest.approx(metrics["ssl_loss"] + 0.5 * metrics["distill_loss"], rel=1e-5)
    with pytest.raises(ConfigError, match=r"peers\[0\]\.distill_target: unknown value 'flat'; choose from peers, uniform"):
        load_config(None, tiny_overrides(tmp_path, peers="[{name: solo, width: 4, distill_target: flat}]"))


def test_step_updates_all_peers_from_the_same_snapshot(tmp_path):
    """One train_step equals: compute each peer's loss on the pre-step weights, then step each."""
    cfg = load_config(None, tiny_overrides(tmp_path, **{"train.knn_every": 0}))
    data = synthetic(channels=1, size=28)
    a = Trainer(cfg, tmp_path / "a", train_data=data)
    b = Trainer(cfg, tmp_path / "b", train_data=data)
    images = a.images[:32]
    a.train_step(images)
    # Manual reference on b: same RNG, gradients of each peer's own loss, then the steps.
    losses = b.compute_losses(images)
    grads = [torch.autograd.grad(loss["total"], list(p.model.parameters()), retain_graph=True)
             for p, loss in zip(b.peers, losses)]
    for p, gs in zip(b.peers, grads):
        for param, g in zip(p.model.parameters(), gs):
            param.grad = g
        p.optimizer.step()
    for pa, pb in zip(a.peers, b.peers):
        for x, y in zip(pa.model.parameters(), pb.model.parameters()):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_template_config_builds_the_authors_pairing(tmp_path):
    cfg = load_config("configs/template.yaml", ["train.knn_every=0", "train.batch_size=4", f"output_dir={tmp_path}"])
    assert [(p.backbone, p.objective) for p in cfg.peers] == [("resnet18", "simclr"), ("resnet18", "simsiam")]
    assert [p.distill_weight for p in cfg.peers] == [100.0, 1.0]
    assert cfg.distill.reduction == "mean" and cfg.distill.temperature == 0.1 and cfg.train.lr == 3e-4
    trainer = Trainer(cfg, tmp_path / "run", train_data=synthetic(n=8, channels=3, size=32))
    losses = trainer.train_step(trainer.images[:4])
    assert all(torch.isfinite(loss["total"]) for loss in losses)
    assert trainer.peers[1].model.predictor[-1].out_features == 2048
    # their details: each view in its own pass (running statistics updated twice per step), and the
    # SimSiam transform's grayscale applied twice
    assert cfg.train.bn_views == "per_view"
    assert all(p.model.backbone.net.bn1.num_batches_tracked.item() == 2 for p in trainer.peers)
    assert [p.augment.grayscale_passes for p in trainer.peers] == [1, 2]


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_learning_rate_schedule(schedule):
    total, warmup = 100, 10
    factors = [lr_factor(s, total, warmup, schedule, 0.1) for s in range(total + 1)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[:10] == sorted(factors[:10])
    if schedule == "constant":
        assert all(f == 1.0 for f in factors[10:])  # the authors' effective schedule
    else:
        assert factors[10] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1)
        assert factors[10:] == sorted(factors[10:], reverse=True)


def test_device_auto_detection_falls_back_to_cpu():
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.slow
def test_same_seed_gives_identical_metrics(tmp_path):
    first = train(None, overrides=tiny_overrides(tmp_path / "a"))
    second = train(None, overrides=tiny_overrides(tmp_path / "b"))
    assert_same_run(Path(second["run_dir"]), Path(first["run_dir"]))
    other = train(None, overrides=tiny_overrides(tmp_path / "c", seed=1))
    assert comparable(read_metrics(other["run_dir"])) != comparable(read_metrics(first["run_dir"]))


@pytest.mark.parametrize("rule,expected", [("none", 1e-3), ("linear", 4e-3), ("sqrt", 2e-3)])
def test_learning_rate_scales_with_the_batch(tmp_path, rule, expected):
    cfg = load_config(None, tiny_overrides(tmp_path, **{"train.lr_scaling": rule, "train.lr_reference_batch": 32,
                                                       "train.knn_every": 0}))
    trainer = Trainer(cfg, tmp_path / rule, train_data=synthetic(channels=1, size=28))
    for peer in trainer.peers:
        assert peer.optimizer.param_groups[0]["initial_lr"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fused_optimizer_takes_the_same_steps(tmp_path, optimizer):
    """The fused kernel is a speed path only: given the same gradients, three steps land on the same weights.

    The gradients are fed, not computed: a training step's gradients depend on the last step's weights, and
    Adam divides a near-zero gradient by its own magnitude, so a one-ulp difference in the weights would grow
    into a difference of the order of the learning rate that says nothing about the kernel."""
    data = synthetic(channels=1, size=28)
    trainers = {}
    for fused in ("off", "on"):
        cfg = load_config(None, tiny_overrides(tmp_path, **{"train.fused_optimizer": fused, "train.knn_every": 0,
                                                           "train.optimizer": optimizer, "train.amp": "off"}))
        trainers[fused] = Trainer(cfg, tmp_path / fused, train_data=data)
        assert trainers[fused].peers[0].optimizer.defaults.get("fused") is (True if fused == "on" else None)
    speed_only = {"fused", "foreach", "params"}
    for off, on in zip(trainers["off"].peers, trainers["on"].peers):
        settings = [{k: v for k, v in g.items() if k not in speed_only} for g in (off.optimizer.param_groups[0],
                                                                                 on.optimizer.param_groups[0])]
        assert settings[0] == settings[1]
        pairs = list(zip(off.model.parameters(), on.model.parameters()))
        assert all(torch.equal(a, b) for a, b in pairs)
        gradients = torch.Generator().manual_seed(0)
        for _ in range(3):
            for a, b in pairs:  # empty_like: a gradient keeps its weight's memory layout, as in training
                a.grad = torch.empty_like(a).copy_(torch.randn(a.shape, generator=gradients))
                b.grad = a.grad.clone()
            off.optimizer.step()
            on.optimizer.step()
        for a, b in pairs:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_view_seed_changes_only_the_views(tmp_path):
    """A paired null comparison: another stream of views, the same initial weights and data order."""
    from dogo.grid import config_hash

    data = synthetic(channels=1, size=28)
    trainers = {}
    for v in (0, 1):
        cfg = load_config(None, tiny_overrides(tmp_path, **{"train.knn_every": 0, "augment.view_seed": v}))
        trainers[v] = Trainer(cfg, tmp_path / f"run{v}", train_data=data)
    first, other = trainers[0], trainers[1]
    for a, b in zip(first.peers, other.peers):
        assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert torch.equal(torch.randperm(100, generator=first.order_generator),
                       torch.randperm(100, generator=other.order_generator))
    images = data.images[:8]
    assert not torch.equal(first.peers[0].augment(images, first.generator), other.peers[0].augment(images, other.generator))
    # Another experiment (results recorded before the setting existed keep their hash: the committed
    # results stay current, tests/test_grid.py), and a negative stream is refused.
    assert config_hash(first.cfg) != config_hash(other.cfg)
    with pytest.raises(ConfigError, match="view_seed"):
        load_config(None, tiny_overrides(tmp_path, **{"augment.view_seed": -1}))


def _initial_weights(trainer: Trainer, position: int) -> list[torch.Tensor]:
    return [t.clone() for t in trainer.peers[position].model.state_dict().values()]


def _built_after(seed: int, cfg, position: int, draws_before: list[int] = ()) -> list[torch.Tensor]:
    """The initial weights of ``cfg.peers[position]`` built right after ``torch.manual_seed(seed)`` (and after
    the peers at ``draws_before``, whose initialisation consumes the generator first)."""
    from dogo.models import build_model

    torch.manual_seed(seed)
    for k in draws_before:
        build_model(cfg.peers[k], 1, cfg.data.image_size, cfg.train.bn_views)
    model = build_model(cfg.peers[position], 1, cfg.data.image_size, cfg.train.bn_views)
    return list(model.state_dict().values())


def test_shared_streams_draw_every_stream_from_the_seed_itself(tmp_path):
    """The default, as every committed result ran: the global generator is seeded with the run's seed and
    draws the peers' initial weights in turn, and the data order and the views start from the same seed,
    so the first peer's weights come from the numbers that also order the data; the second peer's weights
    depend on how many numbers the first one drew."""
    data = synthetic(channels=1, size=28)
    runs = {}
    for first_width in (4, 8):
        peers = f"[{{name: small, width: {first_width}}}, {{name: large, width: 8}}]"
        cfg = load_config(None, tiny_overrides(tmp_path, **{"train.knn_every": 0, "seed": 5, "peers": peers}))
        assert cfg.train.rng_streams == "shared"
        runs[first_width] = trainer = Trainer(cfg, tmp_path / f"shared{first_width}", train_data=data)
        for position in (0, 1):
            expected = _built_after(5, cfg, position, draws_before=range(position))
            assert all(torch.equal(a, b) for a, b in zip(_initial_weights(trainer, position), expected))
        assert torch.equal(torch.rand(64, generator=trainer.order_generator),
                           torch.rand(64, generator=torch.Generator().manual_seed(5)))
        assert torch.equal(torch.rand(64, generator=trainer.generator),
                           torch.rand(64, generator=torch.Generator().manual_seed(5)))
    assert not all(torch.equal(a, b) for a, b in zip(_initial_weights(runs[4], 1), _initial_weights(runs[8], 1)))


def test_independent_streams_share_no_numbers_and_a_peer_depends_on_its_position_only(tmp_path):
    from dogo.config import is_added_setting_at_default
    from dogo.grid import config_hash
    from dogo.train import STREAMS, stream_seed

    data = synthetic(channels=1, size=28)
    runs = {}
    for first_width in (4, 8):
        peers = f"[{{name: small, width: {first_width}}}, {{name: large, width: 8}}]"
        cfg = load_config(None, tiny_overrides(tmp_path, **{"train.knn_every": 0, "seed": 5, "peers": peers,
                                                            "train.rng_streams": "independent"}))
        runs[first_width] = trainer = Trainer(cfg, tmp_path / f"independent{first_width}", train_data=data)
        for position in (0, 1):
            expected = _built_after(stream_seed(5, "init", position), cfg, position)
            assert all(torch.equal(a, b) for a, b in zip(_initial_weights(trainer, position), expected))
        assert torch.equal(torch.rand(64, generator=trainer.order_generator),
                           torch.rand(64, generator=torch.Generator().manual_seed(stream_seed(5, "order"))))
        assert torch.equal(torch.rand(64, generator=trainer.generator),
                           torch.rand(64, generator=torch.Generator().manual_seed(stream_seed(5, "views", 0, 0))))
    # The second peer starts from the same weights whatever the first one is.
    assert all(torch.equal(a, b) for a, b in zip(_initial_weights(runs[4], 1), _initial_weights(runs[8], 1)))
    # Every stream of a run, and of the next seed, starts elsewhere: no two share their first numbers.
    seeds = [stream_seed(s, stream, *ids) for s in (5, 6) for stream, ids in
             [("init", (0,)), ("init", (1,)), ("subset", ()), ("order", ()), ("views", (0, 0)), ("views", (1, 0)),
              ("views", (0, 1))]] + [5, 6]
    firsts = {float(torch.rand(1, generator=torch.Generator().manual_seed(s))) for s in seeds}
    assert len(firsts) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    assert stream_seed(5, "order") == stream_seed(5, "order") and STREAMS == ("init", "subset", "order", "views")
    with pytest.raises(ValueError, match="unknown random stream 'labels'"):
        stream_seed(5, "labels")
    # The subset of the training images is a stream of its own too.
    from dogo.data import load_dataset

    own = Trainer(runs[8].cfg, tmp_path / "own_subset")
    expected = load_dataset("fashion_mnist", "pretrain", None, 1024, False, stream_seed(5, "subset"))
    assert torch.equal(own.train_data.images, expected.images)
    assert not torch.equal(expected.images, load_dataset("fashion_mnist", "pretrain", None, 1024, False, 5).images)
    # Another experiment; results recorded before the setting existed keep their hash.
    assert is_added_setting_at_default("train.rng_streams", "shared")
    assert config_hash(runs[8].cfg) != config_hash(load_config(None, tiny_overrides(tmp_path, seed=5, peers=peers)))
    with pytest.raises(ConfigError, match="rng_streams"):
        load_config(None, tiny_overrides(tmp_path, **{"train.rng_streams": "separate"}))
