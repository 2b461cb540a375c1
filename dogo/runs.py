"""Run folders as objects: load a run's peers and their input transform, or train, resume or reuse one.

- ``load_run``: every peer of a run (folder or checkpoint file) as a model in eval mode, built from
  the checkpoint's own config, with the normalisation the encoder was trained with.
- ``encoder_transform``: the test transform the encoder expects.
- ``train_or_reuse``: the download-or-train pattern: a run folder that already holds a finished run
  of the same config (trained here earlier, or copied from a GPU machine) is reused, an interrupted
  one is resumed, and otherwise the run is trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .augment import TestTransform
from .config import Config, config_differences, from_dict
from .data import STATS
from .errors import CheckpointError, ConfigError, DogoError
from .models import build_model
from .runlog import CHECKPOINT, find_checkpoint, load_checkpoint, load_peer_weights, truncate_metrics
from .train import Trainer, resolve_device, resume


class LoadedRun(dict):
    """Peer name -> ``SSLModel`` in eval mode, plus what the evaluation needs to know about the run:
    ``config`` (the checkpoint's own ``Config``), ``checkpoint`` and ``run_dir`` paths, ``epoch``,
    ``finished``, ``in_channels``, ``mean`` and ``std`` (the normalisation the encoder was trained with),
    ``device`` and ``fingerprint`` (path, mtime, size: the cache key)."""

    config: Config
    checkpoint: Path
    run_dir: Path
    epoch: int
    finished: bool
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    fingerprint: tuple

    @property
    def name(self) -> str:
        return self.run_dir.name


def _in_channels(state: dict[str, Any], peer_weights: dict[str, torch.Tensor], dataset: str) -> int:
    """Input channels of the encoder: stored in the checkpoint (``input``), else from the first
    convolution's weight (out, in, kh, kw), else the named dataset's."""
    stored = state.get("input")
    if isinstance(stored, dict) and "channels" in stored:
        return int(stored["channels"])
    for key, value in peer_weights.items():
        if key.startswith("backbone.") and getattr(value, "dim", lambda: 0)() == 4:
            return int(value.shape[1])
    return len(STATS.get(dataset, ((0.5,),))[0])


def _input_statistics(state: dict, dataset: str, in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std the encoder was trained with: stored in the checkpoint (under
    ``input``); checkpoints written before that use the named dataset's statistics (0.5 when the
    channel count does not match)."""
    stored = state.get("input")
    if isinstance(stored, dict) and "mean" in stored and "std" in stored:
        return tuple(float(m) for m in stored["mean"]), tuple(float(s) for s in stored["std"])
    mean, std = STATS.get(dataset, ((0.5,), (0.5,)))
    if len(mean) != in_channels:
        mean, std = (0.5,) * in_channels, (0.5,) * in_channels
    return tuple(mean), tuple(std)


def load_run(run_dir_or_checkpoint: str | Path, device: str | torch.device | None = None) -> LoadedRun:
    """Every peer of a run (folder or checkpoint file) as a model in eval mode, built from the
    checkpoint's own config. Raises ``CheckpointError`` (one line) when the checkpoint is missing,
    corrupt, not a dogo checkpoint, or its weights do not match its config."""
    path = find_checkpoint(run_dir_or_checkpoint)
    state = load_checkpoint(path)
    try:
        cfg = from_dict(state["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its stored config is not valid ({exc})") from None
    first = state["peers"].get(cfg.peers[0].name) if isinstance(state["peers"], dict) else None
    weights = first.get("model", {}) if isinstance(first, dict) else {}
    in_channels = _in_channels(state, weights, cfg.data.dataset)
    models = {p.name: build_model(p, in_channels, cfg.data.image_size, cfg.train.bn_views) for p in cfg.peers}

    def describe(name: str) -> str:
        p = next(p for p in cfg.peers if p.name == name)
        return p.backbone + (f" width {p.width}" if p.backbone == "cnn" else "") + f", {p.objective}"

    load_peer_weights(models, state, path, describe)
    dev = resolve_device(device)
    run = LoadedRun({name: model.to(dev).eval() for name, model in models.items()})
    run.config = cfg
    run.checkpoint = path
    run.run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    run.epoch = int(state.get("epoch", 0))
    run.finished = bool(state.get("finished", False))
    run.in_channels = in_channels
    run.mean, run.std = _input_statistics(state, cfg.data.dataset, in_channels)
    run.device = dev
    stat = path.stat()
    run.fingerprint = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    return run


def encoder_transform(run: LoadedRun) -> TestTransform:
    """The test transform the encoder was trained with: its input size and its training data's
    normalisation (from the checkpoint).

    Other datasets (transfer, corruptions) go through the same transform: the encoder is a fixed
    function of its normalised input."""
    return TestTransform(run.config.data.image_size, run.mean, run.std)


def train_or_reuse(cfg: Config, run_dir: str | Path, progress: bool = False, **trainer_kwargs) -> dict[str, Any]:
    """Reuse, resume or train the run ``cfg`` describes in ``run_dir``.

    - ``run_dir`` holds a finished run of the same config: nothing is trained ("reused");
    - it holds an unfinished run of the same config (interrupted, or copied mid-way): training
      continues from its checkpoint ("resumed", through ``dogo.train.resume``);
    - it does not exist or holds no checkpoint: the run is trained ("trained").

    Ctrl-C during training returns early with status "interrupted" (a checkpoint is saved; the next
    call resumes).

    A run of a *different* config raises ``DogoError`` naming the first differing keys: silently
    reusing it would report numbers for settings that were never trained.

    Returns the last epoch's metrics record with ``run_dir`` and ``status`` added.
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        if (run_dir / "metrics.jsonl").is_file():
            # Records of an attempt that died before its first checkpoint: training starts over.
            truncate_metrics(run_dir / "metrics.jsonl", lambda record: False)
        result = Trainer(cfg, run_dir, progress=progress, **trainer_kwargs).fit()
        return {**result, "status": "interrupted" if result.get("interrupted") else "trained"}
    # Through from_dict, the stored config gains the defaults of settings added since it was written.
    diff = config_differences(from_dict(load_checkpoint(ckpt)["config"]).to_dict(), cfg.to_dict())
    if diff:
        shown = "; ".join(f"{k} is {a!r} there, {b!r} here" for k, (a, b) in list(diff.items())[:3])
        raise DogoError(f"{run_dir} holds a run of another config ({shown}); choose another folder or delete it")
    result = resume(run_dir, progress=progress, **trainer_kwargs)
    status = "reused" if result.get("already_finished") else "interrupted" if result.get("interrupted") else "resumed"
    return {**result, "status": status}


__all__ = ["LoadedRun", "load_run", "encoder_transform", "train_or_reuse"]
