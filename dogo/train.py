"""One training engine for K >= 1 peers.

K = 1 trains a single SimCLR or SimSiam model (the baseline). K >= 2 is DoGo: in every step each
peer k minimises its loss of ``dogo.objective.cohort_losses``,

    loss_k = ssl_k + w_k * sum_{j != k} KL(P_j (detached) || P_k),

and all peers are updated from the same snapshot (every forward pass happens before any optimizer
step), each with its own optimizer and schedule. Each peer sees its own two augmented views of
every image, as in the method (``augment.share_views`` makes them share). A peer with ``frozen: true``
is never updated: a fixed network (random, from scratch) that the others distil from.
"""

from __future__ import annotations

import math
import random
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed as dist_utils
from .augment import TestTransform, ViewAugment, view_augment_for
from .config import Config, load_config, load_config_from
from .data import ImageDataset, load_dataset
from .errors import CheckpointError, ConfigError, NonFiniteLossError
from .features import extract_features, knn_accuracy
from .models import SSLModel, build_model
from .objective import cohort_losses
from .runlog import (
    CHECKPOINT,
    MetricsWriter,
    environment_record,
    load_checkpoint,
    load_peer_weights,
    read_metrics,
    save_checkpoint,
    truncate_metrics,
)

TERMS = ("ssl", "distill", "total")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) picks CUDA, then Apple's MPS, then the CPU; a ``torch.device`` is returned as is."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_utils.local_rank())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} was asked for but CUDA is not available here")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


STREAMS = ("init", "subset", "order", "views")  # a stream's index in this tuple is part of its seed


def stream_seed(seed: int, stream: str, *ids: int) -> int:
    """The seed (< 2**63) of one random stream of a run with ``train.rng_streams: independent``: a hash of
    (seed, stream, ids) by numpy's ``SeedSequence``, so the streams of one run, and of runs with different
    seeds, share no numbers (unlike consecutive integers given to one generator type). ``ids``: the peer's
    position for "init"; the process rank and ``augment.view_seed`` for "views"."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; choose one of {', '.join(STREAMS)}")
    sequence = np.random.SeedSequence(seed % 2**64, spawn_key=(STREAMS.index(stream), *ids))
    return int(sequence.generate_state(1, np.uint64)[0]) >> 1


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine or constant.

    The authors' code configures a cosine schedule whose minimum equals the base lr, i.e. a
    constant lr; ``schedule: constant`` reproduces that, ``cosine`` is a real decay.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class Peer:
    """One network in the cohort, with its optimizer, schedule and view recipe."""

    name: str
    model: SSLModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    augment: ViewAugment
    distill_weight: float
    module: nn.Module  # what runs the forward pass: the model, or its DDP/compiled wrapper
    frozen: bool = False  # weights never updated: a fixed network that only teaches
    distill_target: str = "peers"  # or "uniform": a control target that holds no information


def scaled_lr(lr: float, batch_size: int, reference_batch: int, rule: str) -> float:
    """The learning rate for ``batch_size`` images per step, given ``lr`` for ``reference_batch``.

    ``linear``: lr * B / B_ref (Goyal et al. 2017, as SimCLR uses for SGD/LARS); ``sqrt``:
    lr * sqrt(B / B_ref) (the usual rule for Adam); ``none``: lr unchanged.
    """
    if rule == "linear":
        return lr * batch_size / reference_batch
    if rule == "sqrt":
        return lr * math.sqrt(batch_size / reference_batch)
    return lr


def build_optimizer(params, name: str, lr: float, weight_decay: float, momentum: float, fused: bool = False):
    """Adam, or SGD with Nesterov momentum. ``fused``: one kernel updates every parameter (instead of
    a few per parameter group), which matters on a GPU where the step is launch-bound."""
    extra = {"fused": True} if fused else {}
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **extra)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True, **extra)


class Trainer:
    """Trains the peers a Config describes, writing everything into one run folder.

    >>> trainer = Trainer(load_config("configs/fashion_mnist_quick.yaml"))   # doctest: +SKIP
    >>> result = trainer.fit()                                               # doctest: +SKIP
    """

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, *, train_data: ImageDataset | None = None,
                 eval_data: tuple[ImageDataset, ImageDataset] | None = None, progress: bool | None = None):
        self.cfg = cfg
        self.distributed = dist_utils.init_from_env("gloo" if cfg.device == "cpu" else None)
        self.is_main = dist_utils.rank() == 0
        self.device = resolve_device(cfg.device)
        self.progress = cfg.train.progress if progress is None else progress
        seed_everything(cfg.seed + dist_utils.rank())
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = not cfg.train.deterministic

        d = cfg.data
        subset_seed = self._stream_seed("subset")
        self.train_data = train_data or load_dataset(d.dataset, "pretrain", d.root, d.limit, d.download, subset_seed)
        self.eval_data = eval_data
        if self.eval_data is None and cfg.train.knn_every > 0:
            bank = load_dataset(d.dataset, "train", d.root, d.eval_limit, d.download, subset_seed)
            if bank.labels.min() < 0:
                bank = bank.subset((bank.labels >= 0).nonzero().flatten())
            queries = load_dataset(d.dataset, "test", d.root, d.eval_limit, d.download, subset_seed)
            self.eval_data = (bank, queries)
        # Shard the data across processes; every process augments on its own device.
        self.images = dist_utils.shard(self.train_data.images).to(self.device)
        if cfg.train.batch_size % dist_utils.world_size():
            raise ConfigError(f"train.batch_size: {cfg.train.batch_size} does not split evenly over "
                              f"{dist_utils.world_size()} processes")
        self.batch_size = cfg.train.batch_size // dist_utils.world_size()
        if self.batch_size < 2:
            raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is fewer than 2 per process")
        self.steps_per_epoch = len(self.images) // self.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is larger than the {len(self.images)} "
                              "training images (drop_last leaves no batch)")
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.test_transform = TestTransform(d.image_size, self.train_data.mean, self.train_data.std)

        self.peers = [self._build_peer(p, k) for k, p in enumerate(cfg.peers)]
        self.amp_dtype = self._amp_dtype()
        self.forward_losses = self._forward_losses
        if cfg.train.compile and cfg.train.compile_scope == "step":
            if self.distributed:
                raise ConfigError("train.compile_scope: 'step' holds the cross-process gather, which one graph "
                                  "cannot; use 'model' under torchrun")
            self.forward_losses = torch.compile(self._forward_losses, mode=cfg.train.compile_mode)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.generator = torch.Generator(device=self.device).manual_seed(self._view_seed())
        self.order_generator = torch.Generator().manual_seed(self._stream_seed("order"))

        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.perm: torch.Tensor | None = None
        self.accum: dict[str, dict[str, torch.Tensor]] = {}
        self.epoch_seconds = 0.0
        self._stop_requested = False

        # Under torchrun every process must agree on one folder: rank 0 names it.
        self.run_dir = Path(run_dir) if run_dir else Path(dist_utils.broadcast_object(str(self._new_run_dir())))
        self.metrics = MetricsWriter(self.run_dir / "metrics.jsonl")

    # ------------------------------------------------------------------ construction

    def _new_run_dir(self) -> Path:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(self.cfg.output_dir) / f"{self.cfg.name}-{stamp}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return path

    def _build_peer(self, p, position: int) -> Peer:
        if self.cfg.train.rng_streams == "independent":
            torch.manual_seed(self._stream_seed("init", position))
        model = build_model(p, self.train_data.channels, self.cfg.data.image_size,
                            self.cfg.train.bn_views).to(self.device)
        if p.frozen:
            # No gradient reaches it, so no graph is kept for its forward; its optimizer never steps.
            model.requires_grad_(False)
        if self.cfg.train.channels_last:  # faster convolutions on CUDA and on the CPU alike
            model = model.to(memory_format=torch.channels_last)
        t = self.cfg.train
        lr = scaled_lr(p.lr if p.lr is not None else t.lr, t.batch_size, t.lr_reference_batch, t.lr_scaling)
        fused = t.fused_optimizer == "on" or (t.fused_optimizer == "auto" and self.device.type == "cuda")
        optimizer = build_optimizer(model.parameters(), t.optimizer, lr, t.weight_decay, t.momentum, fused)
        warmup = int(round(t.warmup_epochs * self.steps_per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, self.total_steps, warmup, t.schedule, t.min_lr_ratio))
        augment = view_augment_for(p.objective, self.cfg.data.image_size, self.train_data.mean,
                                   self.train_data.std, self.cfg.augment)
        if self.distributed and p.frozen:  # DDP refuses a module without trainable parameters
            module = dist_utils.broadcast_module(model)
        elif self.distributed:
            module = dist_utils.wrap(model, self.device, t.sync_batchnorm)
        else:
            module = model
        if t.compile and t.compile_scope == "model":
            module = torch.compile(module, mode=t.compile_mode)
        return Peer(p.name, model, optimizer, scheduler, augment, p.distill_weight, module, p.frozen,
                    p.distill_target)

    def _stream_seed(self, stream: str, *ids: int) -> int:
        """The seed of one random stream: ``cfg.seed`` itself with ``train.rng_streams: shared`` (the global
        generator then draws every peer's initial weights in turn), ``stream_seed`` with ``independent``."""
        if self.cfg.train.rng_streams == "independent":
            return stream_seed(self.cfg.seed, stream, *ids)
        return self.cfg.seed

    def _view_seed(self) -> int:
        """Seed of this process's view generator: distinct per training seed, process and ``augment.view_seed``."""
        if self.cfg.train.rng_streams == "independent":
            return stream_seed(self.cfg.seed, "views", dist_utils.rank(), self.cfg.augment.view_seed)
        return self.cfg.seed + 1000 * dist_utils.rank() + 1_000_003 * self.cfg.augment.view_seed

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.cfg.train.amp
        if amp == "off" or (amp == "auto" and self.device.type != "cuda"):
            return None
        if amp == "fp16":
            return torch.float16
        return torch.bfloat16

    # ------------------------------------------------------------------ one step

    def compute_losses(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Forward every peer on its own two views of ``images`` (uint8, on the device); return each
        peer's ``ssl``, ``distill`` and ``total`` loss (``dogo.objective.cohort_losses``)."""
        views = []
        for k, peer in enumerate(self.peers):
            if self.cfg.augment.share_views and k > 0:
                views.append(views[0])
            else:
                views.append((peer.augment(images, self.generator), peer.augment(images, self.generator)))
        # Augmentation draws from a torch.Generator, which a compiled graph cannot hold: it stays eager.
        return self.forward_losses(views)

    def _forward_losses(self, views: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """Every peer's forward on its two views, then the cohort's losses (compiled as one graph
        with ``train.compile_scope: step``)."""
        outputs = []
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            for peer, (x1, x2) in zip(self.peers, views):
                if self.cfg.train.channels_last:
                    x1 = x1.contiguous(memory_format=torch.channels_last)
                    x2 = x2.contiguous(memory_format=torch.channels_last)
                outputs.append(peer.module(x1, x2))
        # Losses over the global batch: outputs are all-gathered (with gradient) across processes.
        outputs = [dist_utils.gather_outputs(o) for o in outputs] if self.distributed else outputs
        return cohort_losses(outputs, [p.model.objective for p in self.peers], [p.distill_weight for p in self.peers],
                             self.cfg.distill.temperature, self.cfg.distill.reduction,
                             [p.model.temperature for p in self.peers], [p.distill_target for p in self.peers])

    def train_step(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        for peer in self.peers:
            peer.optimizer.zero_grad(set_to_none=True)
        losses = self.compute_losses(images)
        # Peers' graphs are disjoint (targets are detached), so one backward of the sum gives
        # each peer exactly the gradient of its own loss.
        total = sum(loss["total"] for loss in losses)
        if self.distributed:
            # DDP averages gradients over processes; every process computed the global loss.
            total = total * dist_utils.world_size()
        self.scaler.scale(total).backward()
        for peer in self.peers:
            if not peer.frozen:
                self.scaler.step(peer.optimizer)
                peer.scheduler.step()
        self.scaler.update()
        self.global_step += 1
        return losses

    # ------------------------------------------------------------------ monitoring

    def knn_monitor(self) -> dict[str, float]:
        """kNN top-1 (%) of every peer's backbone: train split as the bank, test split as queries."""
        bank, queries = self.eval_data
        t = self.cfg.train
        result = {}
        for peer in self.peers:
            fb = extract_features(peer.model.backbone, bank.images, self.test_transform, device=self.device)
            fq = extract_features(peer.model.backbone, queries.images, self.test_transform, device=self.device)
            result[peer.name] = knn_accuracy(fb, bank.labels, fq, queries.labels, bank.num_classes,
                                             t.knn_k, t.knn_temperature)["top1"]
        return result

    def _check_finite(self) -> None:
        for name, terms in self.accum.items():
            for term in TERMS:
                value = terms[term]
                if not torch.isfinite(value):
                    raise NonFiniteLossError(
                        f"peer {name!r}: the {term} loss became {value.item()} at epoch {self.epoch + 1}, "
                        f"step {self.step_in_epoch}; the last good checkpoint is kept in "
                        f"{self.run_dir / CHECKPOINT} (try a lower lr or a higher temperature)")

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
               "generator": self.generator.get_state(), "order_generator": self.order_generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": 1,
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "perm": self.perm,
            "accum": {n: {t: v.detach().cpu() for t, v in terms.items()} for n, terms in self.accum.items()},
            "epoch_seconds": self.epoch_seconds,
            "peers": {
                p.name: {"model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(),
                         "scheduler": p.scheduler.state_dict(), "objective": p.model.objective,
                         "backbone": self.cfg.peers[i].backbone}
                for i, p in enumerate(self.peers)
            },
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            # The encoder's input: what evaluation needs to feed it as in training (own data included).
            "input": {"mean": list(self.train_data.mean), "std": list(self.train_data.std),
                      "channels": self.train_data.channels, "image_size": self.cfg.data.image_size},
            "finished": self.epoch >= self.cfg.train.epochs,
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        stored = load_peer_weights({p.name: p.model for p in self.peers}, state, source)
        for p in self.peers:
            entry = stored[p.name]
            p.optimizer.load_state_dict(entry["optimizer"])
            p.scheduler.load_state_dict(entry["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.perm = state["global_step"], state["perm"]
        self.accum = {n: {t: v.to(self.device) for t, v in terms.items()} for n, terms in state["accum"].items()}
        self.epoch_seconds = state["epoch_seconds"]
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if dist_utils.rank() == 0:
            self.generator.set_state(rng["generator"])
        else:  # only rank 0's view generator is saved; other ranks draw fresh, distinct views
            self.generator.manual_seed(self._view_seed() + self.global_step)
        self.order_generator.set_state(rng["order_generator"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def save(self) -> Path:
        """Write the checkpoint atomically; never over a good one with non-finite losses since."""
        self._check_finite()
        path = self.run_dir / CHECKPOINT
        if self.is_main:
            save_checkpoint(self.state_dict(), path)
        dist_utils.barrier()
        return path

    # ------------------------------------------------------------------ the loop

    def _write_run_header(self) -> None:
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "figures").mkdir(exist_ok=True)
        (self.run_dir / "config.yaml").write_text(self.cfg.to_yaml())
        import json

        env = environment_record(self.device)
        env["world_size"] = dist_utils.world_size()
        (self.run_dir / "environment.json").write_text(json.dumps(env, indent=2, default=str))

    def _on_sigint(self, signum, frame):
        if self._stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._stop_requested = True

    def fit(self) -> dict[str, Any]:
        """Train to ``train.epochs``; returns the last metrics record plus ``run_dir``.

        Ctrl-C (SIGINT) finishes the current step, saves a checkpoint and returns with
        ``interrupted: True``; ``resume(run_dir)`` continues from there.
        """
        if self.epoch == 0 and self.step_in_epoch == 0 and self.global_step == 0:
            self._write_run_header()
        previous = None
        try:
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not in the main thread: no handler, Ctrl-C behaves as usual
            pass
        try:
            last = self._run_epochs()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if last is None:
            self.save()
            if self.is_main:
                print(f"interrupted: checkpoint saved; continue with `dogo train --resume {self.run_dir}`")
            return {"run_dir": str(self.run_dir), "interrupted": True, "epoch": self.epoch}
        last = dict(last)
        last["run_dir"] = str(self.run_dir)
        return last

    def _run_epochs(self) -> dict[str, Any] | None:
        from tqdm.auto import tqdm

        t = self.cfg.train
        record = None
        while self.epoch < t.epochs:
            if self.perm is None:  # a new epoch (a checkpoint taken mid-epoch keeps its order)
                self.perm = torch.randperm(len(self.images), generator=self.order_generator)
                self.accum = {p.name: {term: torch.zeros((), device=self.device) for term in TERMS}
                              for p in self.peers}
                self.epoch_seconds = 0.0
            for p in self.peers:
                p.model.train()
            bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, disable=not (self.progress and self.is_main),
                       desc=f"epoch {self.epoch + 1}/{t.epochs}", leave=False)
            # The epoch's order goes to the device once: a per-step copy from pageable host memory can
            # make the host wait for the device and stop it queueing the next step ahead.
            order = self.perm.to(self.device)
            started = time.perf_counter()
            while self.step_in_epoch < self.steps_per_epoch:
                if self._stop_requested:
                    bar.close()
                    self.epoch_seconds += time.perf_counter() - started
                    return None
                start = self.step_in_epoch * self.batch_size
                losses = self.train_step(self.images[order[start:start + self.batch_size]])
                for peer, loss in zip(self.peers, losses):
                    for term in TERMS:
                        self.accum[peer.name][term] += loss[term].detach().float()
                self.step_in_epoch += 1
                bar.update(1)
                if self.step_in_epoch % t.log_every == 0:
                    self._check_finite()  # the one host sync, every log_every steps
                    if self.progress:
                        bar.set_postfix({p.name: f"{self.accum[p.name]['total'].item() / self.step_in_epoch:.3f}"
                                         for p in self.peers})
                if t.checkpoint_every_steps and self.global_step % t.checkpoint_every_steps == 0 \
                        and self.step_in_epoch < self.steps_per_epoch:
                    self.epoch_seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    self.save()
            bar.close()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.epoch_seconds += time.perf_counter() - started
            self._check_finite()
            record = self._epoch_record()
            self.epoch += 1
            self.step_in_epoch = 0
            self.perm = None
            if self.is_main:
                self.metrics.write(record)
            if self.epoch % t.checkpoint_every == 0 or self.epoch == t.epochs:
                self.save()
        if record is None:  # resumed at the very end: the last record is already on disk
            records = read_metrics(self.run_dir)
            record = records[-1] if records else {}
        return record

    def _epoch_record(self) -> dict[str, Any]:
        t = self.cfg.train
        images = self.steps_per_epoch * self.batch_size * dist_utils.world_size()
        peers: dict[str, dict[str, float]] = {}
        for p in self.peers:
            sums = self.accum[p.name]
            peers[p.name] = {f"{term}_loss": dist_utils.mean_over_ranks(sums[term]).item() / self.steps_per_epoch
                             for term in TERMS}
            peers[p.name]["lr"] = 0.0 if p.frozen else p.optimizer.param_groups[0]["lr"]
        epoch = self.epoch + 1
        if t.knn_every and (epoch % t.knn_every == 0 or epoch == t.epochs) and self.is_main:
            for name, acc in self.knn_monitor().items():
                peers[name]["knn_top1"] = acc
        return {"epoch": epoch, "step": self.global_step, "images_per_s": images / max(self.epoch_seconds, 1e-9),
                "epoch_seconds": self.epoch_seconds, "peers": peers}


# ---------------------------------------------------------------------- entry points


def train(cfg: Config | str | Path, run_dir: str | Path | None = None, overrides: list[str] | None = None,
          **kwargs) -> dict[str, Any]:
    """Train from a Config or a YAML path; returns the last epoch's metrics and the run folder."""
    if not isinstance(cfg, Config):
        cfg = load_config(cfg, overrides)
    elif overrides:
        cfg = load_config_from(cfg, overrides)
    return Trainer(cfg, run_dir, **kwargs).fit()


def resume(run_dir: str | Path, **kwargs) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its last checkpoint, to the epochs in its config.

    A run that has already finished is not rebuilt: its last metrics record comes back with
    ``already_finished: True``. The one resume of the kit (``dogo train --resume`` and
    ``train_or_reuse`` call it)."""
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.is_file() and (run_dir / "config.yaml").is_file():
        state = load_checkpoint(ckpt_path)
        if state.get("epoch", 0) >= load_config(run_dir / "config.yaml").train.epochs:
            records = read_metrics(run_dir)
            last = dict(records[-1]) if records else {}
            last.update(run_dir=str(run_dir), already_finished=True)
            return last
        del state  # the trainer reads the checkpoint again, onto its own device
    return Trainer.from_run(run_dir, **kwargs).fit()


def _from_run(cls, run_dir: str | Path, **kwargs) -> Trainer:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    ckpt_path = run_dir / CHECKPOINT
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a dogo run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    trainer = cls(cfg, run_dir, **kwargs)
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location=trainer.device)
        trainer.load_state_dict(state, source=str(ckpt_path))
        completed = state["epoch"]
        # Metrics written after the checkpoint (an epoch that will be redone) are dropped.
        if trainer.is_main:
            truncate_metrics(run_dir / "metrics.jsonl", lambda r: r.get("epoch", 0) <= completed)
    return trainer


Trainer.from_run = classmethod(_from_run)
