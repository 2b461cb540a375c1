"""The benchmark scripts run on tiny settings, and the reference loop computes the same losses as dogo.

The reference loop (``benchmarks/reference_loop.py``) follows the authors' approach with broadcast
cosine similarities; a speed comparison is only fair if it computes the same numbers as the kit.
"""

from __future__ import annotations

import sys

import pytest
import torch

from dogo.config import PeerConfig
from dogo.losses import nt_xent, similarity_distill
from dogo.models import build_model
from dogo.objective import cohort_losses

from .conftest import write_fashion_mnist
from .helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_levers  # noqa: E402
import bench_losses  # noqa: E402
import bench_train  # noqa: E402
import reference_loop as ref  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models and batches: one thread avoids waiting on a second one on a busy CI machine (10x here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _embeddings(batch: int = 12, dim: int = 7, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, generator=gen, dtype=dtype).requires_grad_() for _ in range(4)]


def _value_and_grads(fn, inputs):
    for t in inputs:
        t.grad = None
    value = fn(*inputs)
    value.backward()
    return value.detach(), [None if t.grad is None else t.grad.clone() for t in inputs]


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_broadcast_nt_xent_equals_dogo_nt_xent_in_value_and_gradient(temperature):
    inputs = _embeddings()
    want, want_grads = _value_and_grads(lambda a, b, *_: nt_xent(a, b, temperature), inputs)
    got, got_grads = _value_and_grads(lambda a, b, *_: ref.broadcast_nt_xent(a, b, temperature), inputs)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads[:2], want_grads[:2]):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_broadcast_nt_xent_of_identical_embeddings_is_log_2b_minus_1():
    z = torch.ones(5, 3)
    assert ref.broadcast_nt_xent(z, z).item() == pytest.approx(torch.log(torch.tensor(9.0)).item(), rel=1e-6)


def test_broadcast_kl_equals_dogo_distill_with_mean_reduction_and_leaves_the_peer_alone():
    inputs = _embeddings()
    inputs[2:] = [t[:, :5].detach().requires_grad_() for t in inputs[2:]]  # the peer may have another width
    want, want_grads = _value_and_grads(
        lambda a, b, c, d: similarity_distill(a, b, c, d, temperature=0.1, reduction="mean"), inputs)
    got, got_grads = _value_and_grads(lambda a, b, c, d: ref.broadcast_similarity_kl(a, b, c, d, 0.1), inputs)
    assert want.item() > 0
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    for g, w in zip(got_grads[:2], want_grads[:2]):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-14)
    assert got_grads[2:] == [None, None]  # no gradient into the peer


def test_reference_step_losses_equal_dogo_losses_on_the_same_views():
    """Per-view forwards (reference) and the concatenated forward (dogo) agree in eval mode, where
    BatchNorm does not depend on how the batch is split; so do all loss terms."""
    torch.manual_seed(0)
    peers = [PeerConfig(name="a", width=2, hidden_dim=16, projection_dim=8),
             PeerConfig(name="b", width=3, objective="simsiam", projection_dim=12, predictor_hidden_dim=6)]
    models = [build_model(p, 1, 12).eval() for p in peers]
    views = [(torch.randn(6, 1, 12, 12), torch.randn(6, 1, 12, 12)) for _ in models]
    weights = (100.0, 1.0)
    got = ref.step_losses(models, [ref.forward_per_view(m, *v) for m, v in zip(models, views)], weights)
    outs = [m(*v) for m, v in zip(models, views)]
    kit = cohort_losses(outs, [m.objective for m in models], weights, 0.1, "mean", [m.temperature for m in models])
    for k in range(len(models)):
        torch.testing.assert_close(got[k]["ssl"], kit[k]["ssl"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[k]["distill"], kit[k]["distill"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got[k]["total"], kit[k]["total"], rtol=1e-5, atol=1e-5)


def test_four_view_dataset_gives_two_normalised_views_per_model():
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    transforms = [ref.authors_transform(20, (0.5,), (0.25,)), ref.authors_transform(20, (0.5,), (0.25,), 0.5)]
    item = ref.FourViewDataset(images, transforms)[1]
    assert len(item) == 4 and all(v.shape == (1, 20, 20) and v.dtype == torch.float32 for v in item)
    assert all(v.min() >= -2.0 and v.max() <= 2.0 for v in item)  # (x - 0.5) / 0.25 with x in [0, 1]
    rgb = ref.FourViewDataset(images.expand(-1, 3, -1, -1).contiguous(), transforms[:1])
    assert [v.shape for v in rgb[0]] == [(3, 20, 20)] * 2
    with pytest.raises(ValueError, match="uint8"):
        ref.FourViewDataset(images.float(), transforms)


def test_loss_memory_guard_refuses_the_broadcast_form_at_4096_but_not_ours():
    gib = 2**30
    # One [8192, 8192, 128] float32 tensor: 32 GiB, more than the whole 24 GiB machine.
    assert bench_losses.largest_tensor_bytes("nt_xent", "broadcast", 4096, 128) == 32 * gib
    assert bench_losses.largest_tensor_bytes("distill", "broadcast", 4096, 128) == 8 * gib
    assert bench_losses.largest_tensor_bytes("nt_xent", "matmul", 4096, 128) == gib // 4
    args = bench_losses.parse_args(["--max-gib", "24"])
    record = bench_losses.run_case(args, "nt_xent", "broadcast", 4096)  # refused before any process starts
    assert record["status"].startswith("out of memory: needs about 224 GiB")
    assert bench_losses.estimated_peak_bytes("nt_xent", "matmul", 4096, 128) < 24 * gib


def test_cpu_bf16_flags_reads_the_native_bf16_instructions_from_cpuinfo(tmp_path):
    from _measure import cpu_bf16_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_tile amx_bf16 avx512_bf16 avx512_vnni\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx512f amx_tile amx_bf16 avx512_bf16 avx512_vnni\n")
    assert cpu_bf16_flags(str(cpuinfo)) == ["amx_bf16", "avx512_bf16"]
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert cpu_bf16_flags(str(cpuinfo)) == []
    assert cpu_bf16_flags(str(tmp_path / "absent")) == []


def test_peak_tflops_table():
    assert bench_train.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench_train.peak_tflops("NVIDIA H200") == 989.0
    assert bench_train.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench_train.peak_tflops("Some CPU") is None


@pytest.mark.slow
def test_bench_levers_times_each_lever_against_eager_and_checks_its_numerics(tmp_path):
    import json

    out = tmp_path / "levers.json"
    assert bench_levers.main(["--case", "cpu", "--levers", "eager_fp32", "fused_adam", "--images", "512",
                              "--warmup", "0", "--steps", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["throughput"]
    assert [(r["lever"], r["status"]) for r in rows] == [("eager_fp32", "ok"), ("fused_adam", "ok")]
    assert rows[0]["speedup"] == 1.0 and rows[1]["images_per_s"] > 0
    # The optimizer acts after the first step's losses: the same seed gives the same losses.
    assert rows[1]["max_rel_loss_diff"] < 1e-6
    with pytest.raises(SystemExit):
        bench_levers.main(["--case", "cpu", "--levers", "no_such_lever"])


@pytest.mark.slow
def test_bench_levers_packs_processes_that_time_the_same_window(tmp_path):
    import json

    out = tmp_path / "pack.json"
    assert bench_levers.main(["--case", "cpu", "--levers", "eager_fp32", "--pack", "2", "--images", "256",
                              "--batch-size", "32", "--warmup", "0", "--steps", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["packing"]
    assert [(r["processes"], r["exit_codes"]) for r in rows] == [(1, [0]), (2, [0, 0])]
    assert rows[1]["total_images_per_s"] == pytest.approx(sum(rows[1]["per_process_images_per_s"]), abs=0.2)
    assert rows[0]["speedup"] == 1.0 and rows[1]["speedup"] > 0


def test_packed_processes_wait_for_each_other(tmp_path):
    import threading

    done = []
    late = threading.Thread(target=lambda: (bench_levers._wait_for_all((tmp_path, 1, 2)), done.append(1)))
    late.start()
    late.join(0.3)
    assert late.is_alive() and not done  # the second of two waits for the first
    bench_levers._wait_for_all((tmp_path, 0, 2))
    late.join(5)
    assert done == [1]
    with pytest.raises(TimeoutError, match="only 2 of 3"):
        bench_levers._wait_for_all((tmp_path, 0, 3), timeout=0.1)


@pytest.mark.slow
def test_bench_levers_keeps_the_rows_measured_before_it_is_stopped(tmp_path, monkeypatch):
    import json

    class StoppedAtSecondLever(bench_levers.Trainer):
        built = 0

        def __init__(self, *args, **kwargs):
            type(self).built += 1
            if type(self).built == 2:  # as a time limit's kill would, mid-benchmark
                raise KeyboardInterrupt
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(bench_levers, "Trainer", StoppedAtSecondLever)
    out = tmp_path / "levers.json"
    with pytest.raises(KeyboardInterrupt):
        bench_levers.main(["--case", "cpu", "--levers", "eager_fp32", "fused_adam", "--images", "512",
                           "--warmup", "0", "--steps", "1", "--out", str(out)])
    assert [r["lever"] for r in json.loads(out.read_text())["throughput"]] == ["eager_fp32"]


@pytest.mark.slow
def test_bench_train_cpu_case_runs_both_sides_on_tiny_settings(tmp_path):
    data = write_fashion_mnist(tmp_path / "fmnist", n_train=256, n_test=4)
    out = tmp_path / "train.json"
    report = bench_train.main(["--case", "cpu", "--images", "256", "--batches", "64", "--widths", "2", "4",
                               "--data-root", str(data.root), "--in-process", "--breakdown", "--breakdown-steps", "1",
                               "--out", str(out)])
    by_side = {r["side"]: r for r in report["results"]}
    assert set(by_side) == {"ours", "reference", "breakdown"}
    assert len(by_side.pop("breakdown")["parts"]) == 5
    for r in by_side.values():
        assert r["images"] == 256 and r["steps"] == 4  # one whole epoch: 256 // 64 batches of 64
        assert r["images_per_s"] > 0 and r["peak_memory_bytes"] > 0 and r["flops_per_step"] > 0
        assert all(v == v for v in r["mean_total_loss"])  # finite losses on both sides
    assert by_side["ours"]["speedup_vs_reference"] == pytest.approx(
        by_side["ours"]["images_per_s"] / by_side["reference"]["images_per_s"])
    assert "| 64 | ours | 256 |" in report["table"] and out.is_file()


def test_loss_measurement_times_forward_and_backward_and_sees_the_memory():
    result = bench_losses.measure_one("distill", "matmul", 64, 8, "cpu", repeats=2)
    assert result["status"] == "ok" and result["seconds"] > 0 and result["peak_extra_bytes"] >= 0


@pytest.mark.slow
def test_bench_losses_measures_in_a_fresh_process(tmp_path):
    # B = 128, d = 128: the broadcast NT-Xent holds [256, 256, 128] float32 tensors (32 MiB each).
    report = bench_losses.main(["--batches", "128", "--repeats", "1", "--threads", "1", "--losses", "nt_xent",
                                "--forms", "broadcast", "--out", str(tmp_path / "losses.json")])
    (record,) = report["results"]
    assert record["status"] == "ok" and record["seconds"] > 0
    # Several of those tensors are alive at the peak: the fresh process's VmHWM rise shows them.
    assert record["peak_extra_bytes"] > 2 * record["largest_tensor_bytes"] == 2 * 32 * 2**20
    assert "| 128 | nt_xent | broadcast |" in report["table"] and (tmp_path / "losses.json").is_file()
