"""Published runs: trained models shipped with the kit, the "download" of download-or-train.

A published run is a small folder in the repository, ``pretrained/<name>/``::

    manifest.json   what it is, how and when it was produced, on which machine; the size and sha256
                    of every other file
    config.yaml     the run's resolved config
    metrics.jsonl   the run's per-epoch metrics, as training wrote them
    weights.pt      {peer name: model state_dict}, floating-point tensors in float16

Float16 halves the size of the weights; a float16 state_dict loads into the float32 models
``build_model`` makes (``load_state_dict`` copies and casts), so the features differ from those of
the trained float32 model only by the rounding of the weights (relative 2^-11).

:func:`materialise` turns a published run into a run folder that :func:`dogo.evaluate.load_run`,
the notebooks and ``dogo eval`` read like any other (``config.yaml``, ``metrics.jsonl`` and
``checkpoints/last.pt`` holding ``config``, ``epoch``, ``finished`` and ``peers[name]['model']``),
in a cache folder (``$DOGO_CACHE`` or ``~/.cache/dogo``). Everything is offline: the files are in
the repository, and every file is checked against the manifest's sha256 before it is used.

    >>> from dogo.published import list_published, load_published   # doctest: +SKIP
    >>> list_published()
    ['fmnist_quick', 'fmnist_quick_alone']
    >>> models = load_published("fmnist_quick")      # a LoadedRun: {"small": SSLModel, "large": SSLModel}
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import CheckpointError
from .runlog import CHECKPOINT, load_checkpoint, read_metrics

PUBLISHED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"
FILES = ("config.yaml", "metrics.jsonl", WEIGHTS)
# The published kNN check: a fixed subset, small enough to run in seconds on a CPU.
CHECK_BANK, CHECK_QUERIES, CHECK_K, CHECK_TEMPERATURE = 2000, 1000, 50, 0.1


class PublishedError(CheckpointError):
    """A published run is missing, incomplete, or a file does not match its manifest."""


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_published(directory: str | Path = PUBLISHED_DIR) -> list[str]:
    """Names of the published runs in ``directory`` (folders with a manifest), sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if (p / MANIFEST).is_file())


def read_manifest(name: str, directory: str | Path = PUBLISHED_DIR) -> dict[str, Any]:
    """The manifest of published run ``name``; ``PublishedError`` if there is none."""
    path = Path(directory) / name / MANIFEST
    if not path.is_file():
        available = ", ".join(list_published(directory)) or "none"
        raise PublishedError(f"no published run {name!r} in {Path(directory)} (available: {available})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PublishedError(f"{path} is not valid JSON ({exc})") from None


def verify(name: str, directory: str | Path = PUBLISHED_DIR) -> dict[str, Any]:
    """Check every file of published run ``name`` against its manifest (present, size, sha256).

    Returns the manifest; raises ``PublishedError`` naming the first file that is missing or differs.
    """
    manifest = read_manifest(name, directory)
    folder = Path(directory) / name
    files = manifest.get("files", {})
    for required in FILES:
        if required not in files:
            raise PublishedError(f"{folder / MANIFEST} lists no {required}")
    for file, expected in files.items():
        path = folder / file
        if not path.is_file():
            raise PublishedError(f"published run {name!r}: {path} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise PublishedError(f"published run {name!r}: {path} has {size} bytes, the manifest says "
                                 f"{expected['bytes']}")
        digest = sha256_of(path)
        if digest != expected["sha256"]:
            raise PublishedError(f"published run {name!r}: sha256 mismatch for {path} (file {digest[:12]}..., "
                                 f"manifest {expected['sha256'][:12]}...); the file is damaged or was changed")
    return manifest


def default_cache_dir() -> Path:
    """Where published runs are materialised: ``$DOGO_CACHE``, else ``~/.cache/dogo``."""
    return Path(os.environ.get("DOGO_CACHE") or Path.home() / ".cache" / "dogo")


def materialise(name: str, directory: str | Path = PUBLISHED_DIR, cache_dir: str | Path | None = None) -> Path:
    """A run folder holding published run ``name``, readable by ``dogo.evaluate.load_run``.

    The files are verified first. The folder is ``<cache>/published/<name>-<sha256 of weights, 12 hex>``:
    a new version of the weights gets a new folder, and an existing complete folder is reused. It is
    built in a temporary folder and renamed into place, so an interrupted call leaves nothing half-written.
    """
    manifest = verify(name, directory)
    source = Path(directory) / name
    key = manifest["files"][WEIGHTS]["sha256"][:12]
    target = Path(cache_dir or default_cache_dir()) / "published" / f"{name}-{key}"
    if (target / CHECKPOINT).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    (building / CHECKPOINT).parent.mkdir(parents=True)
    for file in ("config.yaml", "metrics.jsonl"):
        shutil.copyfile(source / file, building / file)
    weights = torch.load(source / WEIGHTS, map_location="cpu", weights_only=True)
    config = yaml.safe_load((source / "config.yaml").read_text())
    state = {"format": 1, "config": config, "epoch": int(manifest["epoch"]), "finished": True,
             "peers": {peer: {"model": weights[peer]} for peer in weights},
             "published": {"name": name, "manifest": manifest}}
    torch.save(state, building / CHECKPOINT)
    (building / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    try:
        os.replace(building, target)
    except OSError:  # another process finished first: use its folder
        shutil.rmtree(building, ignore_errors=True)
        if not (target / CHECKPOINT).is_file():
            raise
    return target


def load_published(name: str, device: str | torch.device | None = None, directory: str | Path = PUBLISHED_DIR,
                   cache_dir: str | Path | None = None):
    """Every peer of published run ``name`` as a model in eval mode (a ``dogo.runs.LoadedRun``)."""
    from .runs import load_run

    return load_run(materialise(name, directory, cache_dir), device)


# ------------------------------------------------------------------------------ publishing


def half_precision(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors in float16, others (e.g. BatchNorm's ``num_batches_tracked``) unchanged."""
    return {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu() for k, v in state_dict.items()}


def knn_check(run, bank: int = CHECK_BANK, queries: int = CHECK_QUERIES, k: int = CHECK_K,
              temperature: float = CHECK_TEMPERATURE, seed: int = 0) -> dict[str, float]:
    """kNN top-1 (%) of every peer of a loaded run on a fixed subset of its dataset: ``bank`` training
    images as the bank, ``queries`` test images as queries (fixed random subsets drawn with ``seed``)."""
    from .data import load_dataset
    from .evaluate import encoder_transform
    from .features import extract_features, knn_accuracy

    d = run.config.data
    train = load_dataset(d.dataset, "train", d.root, bank, seed=seed)
    test = load_dataset(d.dataset, "test", d.root, queries, seed=seed)
    transform = encoder_transform(run)
    out = {}
    for name, model in run.items():
        fb = extract_features(model.backbone, train.images, transform)
        fq = extract_features(model.backbone, test.images, transform)
        out[name] = knn_accuracy(fb, train.labels, fq, test.labels, train.num_classes, k, temperature)["top1"]
    return out


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def publish(run_dir: str | Path, name: str, produced_by: str, description: str,
            directory: str | Path = PUBLISHED_DIR) -> Path:
    """Write finished run ``run_dir`` as published run ``name`` (see the module docstring).

    The manifest records ``produced_by`` (the command that trained it), ``description``, the date, this
    machine, the run's environment record, and the kNN check (:func:`knn_check`) of the float16
    weights as loaded back, which ``tests/test_published.py`` recomputes.
    """
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT)
    if not state.get("finished"):
        raise PublishedError(f"{run_dir} is not a finished run (epoch {state.get('epoch')}); publish finished runs only")
    folder = Path(directory) / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(state["config"], sort_keys=False))
    records = read_metrics(run_dir)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    torch.save({peer: half_precision(entry["model"]) for peer, entry in state["peers"].items()}, folder / WEIGHTS)
    environment = run_dir / "environment.json"
    manifest: dict[str, Any] = {
        "name": name,
        "description": description,
        "produced_by": produced_by,
        "epoch": int(state["epoch"]),
        "peers": list(state["peers"]),
        "weights_dtype": "float16",
        "published": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": _machine(),
        "training_environment": json.loads(environment.read_text()) if environment.is_file() else None,
        "files": {},
    }
    for file in FILES:
        manifest["files"][file] = {"bytes": (folder / file).stat().st_size, "sha256": sha256_of(folder / file)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    # The check is measured on the weights as a user gets them: float16, materialised and loaded.
    with_check = dict(manifest)
    scratch = folder.parent / f".{name}.check-{os.getpid()}"
    try:
        run = load_published(name, directory=directory, cache_dir=scratch)
        with_check["knn_check"] = {"bank": CHECK_BANK, "queries": CHECK_QUERIES, "k": CHECK_K,
                                   "temperature": CHECK_TEMPERATURE, "seed": 0, "top1": knn_check(run)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (folder / MANIFEST).write_text(json.dumps(with_check, indent=2) + "\n")
    return folder


__all__ = ["PUBLISHED_DIR", "PublishedError", "list_published", "read_manifest", "verify", "materialise",
           "load_published", "publish", "half_precision", "knn_check", "sha256_of"]
