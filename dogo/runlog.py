"""Run folders: atomic checkpoints, line-by-line metrics, and the record of what produced a run.

A run folder holds ``config.yaml`` (the resolved config), ``environment.json`` (versions, git
commit, device), ``metrics.jsonl`` (one JSON object per line, appended and fsynced),
``checkpoints/last.pt`` and ``figures/``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

CHECKPOINT = Path("checkpoints") / "last.pt"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """Write through ``write(file)`` to a temporary file, fsync it, then rename over ``path``.

    A kill at any moment leaves either the previous complete file or the new complete file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write_bytes`` of a text, UTF-8."""
    atomic_write_bytes(Path(path), lambda f: f.write(text.encode()))


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location="cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}); "
                              "an earlier complete checkpoint is not available for this run") from None
    if not isinstance(state, dict) or "peers" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a dogo checkpoint (no 'peers' and 'config' entries)")
    return state


def load_peer_weights(models: dict[str, torch.nn.Module], state: dict[str, Any], source: str | Path,
                      describe=None) -> dict[str, dict[str, Any]]:
    """Load every peer's weights from a checkpoint's ``state`` into ``models`` (peer name -> model):
    the one check that a checkpoint matches a config.

    Raises ``CheckpointError`` (one line, naming ``source``) when the checkpoint's peers are not the
    config's, a peer has no weights, or a peer's weights do not fit its model (``describe(name)`` may
    add the peer's architecture to that message). Returns the checkpoint's per-peer entries.
    """
    stored = state.get("peers")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source}: 'peers' is not a mapping of peer name -> state")
    names = list(models)
    if sorted(stored) != sorted(names):
        raise CheckpointError(f"{source} holds peers {sorted(stored)} but its config lists {names}")
    for name, model in models.items():
        entry = stored[name]
        if not isinstance(entry, dict) or "model" not in entry:
            raise CheckpointError(f"{source}: peer {name!r} has no model weights")
        try:
            model.load_state_dict(entry["model"])
        except RuntimeError as exc:
            detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
            what = f" ({describe(name)})" if describe is not None else ""
            raise CheckpointError(f"{source}: peer {name!r} does not match its config{what}: {detail}") from None
    return stored


def find_checkpoint(run_or_file: str | Path) -> Path:
    """The checkpoint of a run folder (``checkpoints/last.pt``), or the file itself."""
    p = Path(run_or_file)
    if p.is_dir():
        ckpt = p / CHECKPOINT
        if not ckpt.is_file():
            raise CheckpointError(f"run folder {p} has no checkpoint yet ({CHECKPOINT} is missing)")
        return ckpt
    if p.is_file():
        return p
    raise CheckpointError(f"run folder or checkpoint {p} does not exist")


class MetricsWriter:
    """Appends one JSON object per line and fsyncs it, so a kill loses at most the line being written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=False) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (or of a run folder's); a torn last line is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the line being written when the process died
            raise CheckpointError(f"{path}: line {i + 1} is not valid JSON") from None
    return records


def truncate_metrics(path: Path, keep) -> None:
    """Rewrite metrics.jsonl atomically, keeping only the records for which ``keep(record)`` is true."""
    records = [r for r in read_metrics(path) if keep(r)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write_text(path, text)


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str]:
    """Python and the libraries whose versions can change a run's numbers."""
    import numpy
    import sklearn
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "sklearn": sklearn.__version__}


def device_name(device: torch.device | str) -> str:
    """The CUDA device's name, or the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_record(device: torch.device) -> dict[str, Any]:
    from . import __version__

    info: dict[str, Any] = {
        "dogo": __version__,
        "git_commit": git_commit(),
        **library_versions(),
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "argv": sys.argv,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
