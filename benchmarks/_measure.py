"""Small measuring helpers shared by the benchmark scripts: the machine, process memory, subprocesses.

Peak memory on the CPU is the process's resident-set high-water mark (``VmHWM`` in
``/proc/self/status``): PyTorch's CPU allocations are invisible to ``tracemalloc``. Each measurement
runs in a fresh process so that one measurement's peak never hides another's.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 2**30


def ensure_repo_on_path() -> None:
    """Make ``import dogo`` work from a bare checkout (e.g. a GPU machine where nothing is installed)."""
    try:
        import dogo  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO))


def _proc_value_kib(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory so far (VmHWM), in bytes; None where /proc is missing."""
    kib = _proc_value_kib("/proc/self/status", "VmHWM")
    if kib is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024
    return kib * 1024


def current_rss_bytes() -> int | None:
    kib = _proc_value_kib("/proc/self/status", "VmRSS")
    return None if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def children_peak_rss_bytes() -> int:
    """The largest peak RSS among this process's finished children (e.g. DataLoader workers)."""
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def available_memory_bytes() -> int | None:
    """Memory the kernel could hand out now without swapping (MemAvailable), in bytes."""
    kib = _proc_value_kib("/proc/meminfo", "MemAvailable")
    return None if kib is None else kib * 1024


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The CPU's native bf16 instructions (Linux flags ``avx512_bf16``, ``amx_bf16``): whether bf16
    autocast can pay on this CPU depends on them (benchmarks/RESULTS.md). Empty where unknown."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted({"avx512_bf16", "amx_bf16"} & set(flags))


def machine_description(device: str = "cpu") -> dict:
    """Date, CPU, cores, memory, versions and the GPU (if ``device`` is CUDA) of this run."""
    import torch
    import torchvision

    from dogo.runlog import device_name

    total_kib = _proc_value_kib("/proc/meminfo", "MemTotal")
    info = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": device_name("cpu"),
        "cpu_bf16": cpu_bf16_flags(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": None if total_kib is None else round(total_kib / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1), cuda=torch.version.cuda)
    return info


def run_json_subprocess(argv: list[str], timeout: float = 1800) -> dict:
    """Run ``python ARGV`` in a fresh process; its last stdout line is a JSON object, returned here."""
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=dict(os.environ))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


def write_report(path, report: dict) -> None:
    """Write a benchmark report as indented JSON, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
