"""The loss functions alone: ``dogo.losses`` (matmul on L2-normalised rows) against the broadcast form.

    python benchmarks/bench_losses.py                      # CPU, B = 256, 1024, 4096, d = 128
    python benchmarks/bench_losses.py --device cuda

For each batch size B, loss and form, the forward and backward pass are timed (best and median
of ``--repeats`` calls after one warm-up) and the extra memory they need is measured: on the CPU in a
fresh process, as the rise of the resident-set high-water mark (VmHWM) over the memory already in
use; on CUDA as ``max_memory_allocated`` over the memory already allocated (peaks reset per case).

- NT-Xent over 2B rows: the broadcast form materialises [2B, 2B, d] tensors (O(B^2 d) memory),
  ours the [2B, 2B] logits (O(B^2)).
- The distillation KL over B rows: [B, B, d] against [B, B], for the own model and the peer.

On the CPU a guard estimates a form's peak from the size of its largest tensor times a factor
measured at small B (``PEAK_FACTORS``) and does not start it when the estimate exceeds the memory
budget (``--max-gib``, by default half of the memory available now): at B = 4096, d = 128 one
[8192, 8192, 128] float32 tensor alone is 32 GiB, and trying would take the machine down. On CUDA
every case is attempted and an out-of-memory error is caught and reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import (  # noqa: E402
    GIB,
    available_memory_bytes,
    current_rss_bytes,
    ensure_repo_on_path,
    machine_description,
    peak_rss_bytes,
    reset_peak_rss,
    run_json_subprocess,
    write_report,
)

ensure_repo_on_path()

import torch  # noqa: E402
from reference_loop import broadcast_nt_xent, broadcast_similarity_kl  # noqa: E402

from dogo.losses import nt_xent, similarity_distill  # noqa: E402

LOSSES = ("nt_xent", "distill")
FORMS = ("matmul", "broadcast")
FLOAT_BYTES = 4
# Peak extra memory of forward + backward as a multiple of the largest tensor (float32), measured
# on the CPU with this script (torch 2.14) and rounded up: the broadcast forms hold several
# [N, M, d] tensors at once (normalised expanded copies, their product, gradients): 6.3 (NT-Xent)
# and 6.8 (KL) at B = 256, 6.2 (KL) at 1024. Ours keeps a few [N, N] matrices (logits, softmax,
# gradients).
# Ours: 3.6 (NT-Xent) and 6.9 (KL) at B = 4096 (at small B the allocator's own overhead dominates).
PEAK_FACTORS = {("nt_xent", "broadcast"): 7.0, ("distill", "broadcast"): 7.0,
                ("nt_xent", "matmul"): 4.0, ("distill", "matmul"): 7.0}


def largest_tensor_bytes(loss: str, form: str, batch: int, dim: int) -> int:
    """Bytes of the biggest intermediate: [N, N, d] for the broadcast forms, [N, N] for ours, with
    N = 2B rows for NT-Xent and N = B for the distillation term."""
    rows = 2 * batch if loss == "nt_xent" else batch
    return rows * rows * (dim if form == "broadcast" else 1) * FLOAT_BYTES


def estimated_peak_bytes(loss: str, form: str, batch: int, dim: int) -> int:
    return int(PEAK_FACTORS[(loss, form)] * largest_tensor_bytes(loss, form, batch, dim))


def loss_fn(loss: str, form: str):
    """A function of the four (B, d) inputs (two views of the own model, two of the peer)."""
    if loss == "nt_xent":
        fn = nt_xent if form == "matmul" else broadcast_nt_xent
        return lambda a1, a2, b1, b2: fn(a1, a2, 0.5)
    if form == "matmul":
        return lambda a1, a2, b1, b2: similarity_distill(a1, a2, b1, b2, temperature=0.1, reduction="mean")
    return lambda a1, a2, b1, b2: broadcast_similarity_kl(a1, a2, b1, b2, temperature=0.1)


def measure_one(loss: str, form: str, batch: int, dim: int, device: str, repeats: int,
                threads: int | None = None) -> dict:
    """Time and extra peak memory of forward + backward, in this (fresh) process."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(batch, dim, generator=gen).to(dev).requires_grad_() for _ in range(4)]
    fn = loss_fn(loss, form)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        reset_peak_rss()
        base = current_rss_bytes()

    def call() -> float:
        for t in inputs:
            t.grad = None
        sync()
        start = time.perf_counter()
        fn(*inputs).backward()
        sync()
        return time.perf_counter() - start

    times = []
    try:
        call()  # warm-up
        times = [call() for _ in range(repeats)]
    except torch.cuda.OutOfMemoryError:
        pass
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else peak_rss_bytes()
    inputs.clear()  # free the tensors (and their gradients) before the next case
    if dev.type == "cuda":
        torch.cuda.empty_cache()  # the next case starts from an empty cache, after an OOM too
    if not times:
        return {"status": "out of memory (CUDA OOM)"}
    return {"status": "ok", "seconds": statistics.median(times), "best_seconds": min(times),
            "peak_extra_bytes": peak - base}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's). On a machine shared with "
                        "other jobs, 1 avoids parallel regions waiting for a descheduled thread")
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    parser.add_argument("--max-gib", type=float, help="CPU memory budget per case (default: half of MemAvailable)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--_one", nargs=3, metavar=("LOSS", "FORM", "B"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def cpu_budget_bytes(max_gib: float | None) -> int:
    if max_gib is not None:
        return int(max_gib * GIB)
    available = available_memory_bytes()
    return int(0.5 * available) if available is not None else 4 * GIB


def run_case(args, loss: str, form: str, batch: int) -> dict:
    record = {"batch": batch, "loss": loss, "form": form, "dim": args.dim,
              "largest_tensor_bytes": largest_tensor_bytes(loss, form, batch, args.dim),
              "estimated_peak_bytes": estimated_peak_bytes(loss, form, batch, args.dim)}
    if not args.device.startswith("cuda"):
        budget = cpu_budget_bytes(args.max_gib)
        if record["estimated_peak_bytes"] > budget:
            record.update(status=f"out of memory: needs about {record['estimated_peak_bytes'] / GIB:.0f} GiB, "
                                 f"budget {budget / GIB:.1f} GiB (not started)")
            return record
        argv = [str(Path(__file__).resolve()), "--_one", loss, form, str(batch), "--dim", str(args.dim),
                "--device", args.device, "--repeats", str(args.repeats)]
        if args.threads:
            argv += ["--threads", str(args.threads)]
        record.update(run_json_subprocess(argv))  # a fresh process: its VmHWM is this case's alone
    else:  # CUDA peaks are reset per case, and an OOM is caught: no new process needed
        record.update(measure_one(loss, form, batch, args.dim, args.device, args.repeats))
    return record


def summarise(args, records: list[dict], machine: dict) -> str:
    threads = f", {args.threads} thread(s)" if args.threads else ""
    lines = [f"loss functions alone, d = {args.dim}, forward + backward, {args.device}{threads}, {machine['date']}, "
             f"{machine.get('gpu', machine['cpu'])}", "",
             "| B | loss | form | time (ms): best / median | peak extra memory (MiB) | largest tensor (MiB) | status |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        ok = r["status"] == "ok"
        lines.append(f"| {r['batch']} | {r['loss']} | {r['form']} | "
                     + (f"{1000 * r['best_seconds']:,.1f} / {1000 * r['seconds']:,.1f}" if ok else "-") + " | "
                     + (f"{r['peak_extra_bytes'] / 2**20:,.0f}" if ok else "-") + " | "
                     + f"{r['largest_tensor_bytes'] / 2**20:,.0f} | {r['status']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args._one:
        loss, form, batch = args._one
        result = measure_one(loss, form, int(batch), args.dim, args.device, args.repeats, args.threads)
        print(json.dumps(result))
        return result
    machine = machine_description(args.device)
    records = []
    for batch in args.batches:
        for loss in args.losses:
            for form in args.forms:
                print(f"B={batch} {loss} {form} ...", file=sys.stderr, flush=True)
                records.append(run_case(args, loss, form, batch))
                if args.out:  # partial results survive a time limit
                    write_report(args.out, {"machine": machine, "results": records, "partial": True})
    table = summarise(args, records, machine)
    print(table)
    report = {"machine": machine, "settings": {k: v for k, v in vars(args).items() if k not in ("out", "_one")},
              "results": records, "table": table}
    if args.out:
        write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
