"""The grid runner: one JSON per (cell, seed), resumable, locked, sharded, stale results kept apart.

A tiny grid (two cells, two seeds, 256 Fashion-MNIST images, one epoch, kNN + linear + t-SNE on 100
images) is run once per module; tests that need more runs restrict them with ``only``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

import dogo
import dogo.grid
from dogo.cli import main
from dogo.errors import ConfigError
from dogo.grid import NUMERICS_VERSION, SCHEMA_VERSION, adopt_results, config_hash, plan, run_grid
from dogo.grid_file import REPO, load_grid
from dogo.shift import DEFAULT_LADDER

from .helpers import run_cli

TINY = ["data.limit=256", "data.eval_limit=200", "train.epochs=1", "train.batch_size=128", "train.knn_k=20",
        "train.progress=false"]


def tiny_grid_data(**changes) -> dict:
    data = {
        "name": "tiny",
        "seeds": [0, 1],
        "eval": {"protocols": ["knn", "linear", "tsne"], "limit": 100, "seeds": [0], "tsne_points": 30},
        "compare": [{"label": "small: DoGo - alone", "baseline": "alone/small", "treatment": "dogo/small"}],
        "cells": [
            {"name": "alone", "config": "configs/fashion_mnist_quick.yaml", "estimate_s": 1,
             "overrides": [*TINY, "peers=[{name: small, width: 4}]"]},
            {"name": "dogo", "config": "configs/fashion_mnist_quick.yaml", "estimate_s": 1,
             "overrides": [*TINY, "peers=[{name: small, width: 4}, {name: large, width: 8}]"]},
        ],
    }
    data.update(changes)
    return data


def write_grid(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny grid run to the end once (under a generous time budget): its results and run folders."""
    root = tmp_path_factory.mktemp("grid")
    grid = load_grid(data=tiny_grid_data())
    outcome = run_grid(grid, root / "results", root / "runs", time_budget=3600)
    return grid, root, outcome


def copy_of(finished, tmp_path: Path, drop: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A copy of the finished grid's results and run folders, without the results named in ``drop``."""
    _, root, _ = finished
    results, runs = tmp_path / "results", tmp_path / "runs"
    shutil.copytree(root / "results", results)
    shutil.copytree(root / "runs", runs)
    for key in drop:
        (results / f"{key}.json").unlink()
    return results, runs


def test_grid_writes_one_small_json_per_cell_and_seed(finished):
    grid, root, outcome = finished
    assert sorted(outcome["ran"]) == ["alone-s0", "alone-s1", "dogo-s0", "dogo-s1"]
    files = sorted(p.name for p in (root / "results").glob("*.json"))
    assert files == ["alone-s0.json", "alone-s1.json", "dogo-s0.json", "dogo-s1.json"]
    for path in (root / "results").glob("*.json"):
        text = path.read_text()
        assert len(text.encode()) < 200_000
        assert socket.gethostname() not in text
        r = json.loads(text)
        cfg = grid.config(r["cell"], r["seed"])
        assert r["schema_version"] == SCHEMA_VERSION and r["numerics_version"] == NUMERICS_VERSION
        assert r["grid"] == "tiny" and path.name == f"{r['cell']}-s{r['seed']}.json"
        assert r["config"] == cfg.to_dict() and r["config"]["seed"] == r["seed"]
        assert r["config_hash"] == config_hash(cfg)
        assert r["dogo_version"] == dogo.__version__ and "git_commit" in r
        assert r["eval_settings"] == grid.eval_settings and r["corruption_ladder"] == DEFAULT_LADDER
        assert r["eval_settings"]["protocols"] == ["knn", "linear", "tsne"] and r["eval_settings"]["limit"] == 100
        rows = [dict(zip(r["columns"], row)) for row in r["rows"]]
        peers = [p.name for p in cfg.peers]
        assert {(x["peer"], x["protocol"]) for x in rows} == {(p, q) for p in peers for q in ("knn", "linear", "tsne")}
        assert all(x["n_test"] == 100 for x in rows if x["protocol"] != "tsne")
        assert set(r["curves"]["peers"]) == set(peers) and r["curves"]["epoch"] == [1]
        for curve in r["curves"]["peers"].values():
            assert len(curve["knn_top1"]) == 1 and curve["knn_top1"][0] is not None
            assert len(curve["ssl_loss"]) == 1 and curve["ssl_loss"][0] is not None
        assert set(r["tsne"]) == set(peers)
        for points in r["tsne"].values():
            assert 10 <= len(points["x"]) == len(points["y"]) == len(points["label"]) <= 1000
        assert r["classes"][0] == "T-shirt/top"
        assert r["seconds"]["total"] == pytest.approx(r["seconds"]["train"] + r["seconds"]["eval"], abs=0.02)
        assert set(r["versions"]) >= {"torch", "torchvision", "numpy", "sklearn"} and r["device"] and r["date"]
        assert r["threads"] == torch.get_num_threads()


def test_second_invocation_runs_nothing(finished, tmp_path):
    grid, _, _ = finished
    results, runs = copy_of(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in results.glob("*.json")}
    assert run_grid(grid, results, runs)["ran"] == []
    assert {p.name: p.read_bytes() for p in results.glob("*.json")} == before
    assert [j.status for j in plan(grid, results)] == ["done"] * 4


def test_adopt_copies_the_same_experiments_of_another_grid_and_nothing_else(finished, tmp_path, capsys):
    _, root, _ = finished
    data = tiny_grid_data(name="ablation")
    # "baseline" is the tiny grid's "alone" under another name; "wider" is a new experiment.
    data["cells"] = [dict(data["cells"][0], name="baseline"),
                     dict(data["cells"][1], name="wider", overrides=[*TINY, "peers=[{name: small, width: 4}, "
                                                                             "{name: large, width: 16}]"]),
                     data["cells"][1]]
    data["compare"] = [{"baseline": "baseline/small", "treatment": "wider/small"}]
    grid_file = write_grid(tmp_path / "ablation.yaml", data)
    results = tmp_path / "ablation-results"
    assert main(["grid", str(grid_file), "--results", str(results), "--adopt", str(root / "results"),
                 "--dry-run"]) == 0
    assert "would adopt baseline-s0" in capsys.readouterr().out and not results.exists()

    grid = load_grid(grid_file)
    adopted = adopt_results(grid, results, root / "results", say=lambda m: None)
    assert sorted(adopted) == ["baseline-s0", "baseline-s1", "dogo-s0", "dogo-s1"]
    states = {j.key: j.status for j in plan(grid, results)}
    assert states == {"baseline-s0": "done", "baseline-s1": "done", "wider-s0": "pending", "wider-s1": "pending",
                      "dogo-s0": "done", "dogo-s1": "done"}
    copy = json.loads((results / "baseline-s1.json").read_text())
    original = json.loads((root / "results" / "alone-s1.json").read_text())
    assert copy["adopted_from"] == {"grid": "tiny", "cell": "alone", "file": "alone-s1.json"}
    assert copy["grid"] == "ablation" and copy["cell"] == "baseline"
    assert copy["rows"] == original["rows"] and copy["config_hash"] == original["config_hash"]
    assert adopt_results(grid, results, root / "results", say=lambda m: None) == []  # already there

    # Other evaluation settings: not the same experiment, nothing adopted.
    other = load_grid(data=dict(data, eval=dict(data["eval"], limit=50)))
    assert adopt_results(other, tmp_path / "other", root / "results", say=lambda m: None) == []
    with pytest.raises(ConfigError, match="--adopt"):
        adopt_results(grid, results, tmp_path / "missing")


def test_speed_settings_keep_the_experiment_and_reach_every_worker(finished, tmp_path, monkeypatch, capsys):
    grid, root, _ = finished
    fast = grid.with_speed(["train.compile=true", "train.compile_scope=step", "train.fused_optimizer=on",
                            "train.channels_last=false"])
    cfg = fast.config("dogo", 1)
    assert (cfg.train.compile, cfg.train.compile_scope, cfg.train.fused_optimizer) == (True, "step", "on")
    assert config_hash(cfg) == config_hash(grid.config("dogo", 1))
    assert [j.status for j in plan(fast, root / "results")] == ["done"] * 4  # the same experiments
    # Not speed-only: another experiment, refused with the list of what is allowed.
    bf16 = tiny_grid_data(cells=[dict(c, overrides=[*c["overrides"], "train.amp=bf16"])
                                 for c in tiny_grid_data()["cells"]])
    assert config_hash(grid.config("dogo", 1)) != config_hash(load_grid(data=bf16).config("dogo", 1))
    with pytest.raises(ConfigError, match=r"^--speed: 'train.amp=bf16' is not KEY=VALUE with a speed-only key"):
        grid.with_speed(["train.amp=bf16"])
    with pytest.raises(ConfigError, match="train.compile_mode"):
        grid.with_speed(["train.compile_mode=fastest"])

    started = []

    class FakeWorker:
        def __init__(self, argv, env):
            started.append(argv)

        def wait(self):
            return 0

    monkeypatch.setattr(dogo.grid.subprocess, "Popen", FakeWorker)
    monkeypatch.setattr(dogo.grid.time, "sleep", lambda s: None)
    grid_file = write_grid(tmp_path / "tiny.yaml", tiny_grid_data())
    assert main(["grid", str(grid_file), "--results", str(tmp_path / "r"), "--parallel", "2",
                 "--speed", "train.compile=true", "train.compile_mode=reduce-overhead"]) == 0
    assert len(started) == 2
    assert all(argv[-3:] == ["--speed", "train.compile=true", "train.compile_mode=reduce-overhead"] for argv in started)


def test_changed_settings_make_results_stale_and_only_rerun_stale_reruns_them(finished, tmp_path):
    results, runs = copy_of(finished, tmp_path)
    data = tiny_grid_data()
    data["cells"][0]["overrides"] = [*data["cells"][0]["overrides"], "train.lr=0.002"]
    grid = load_grid(data=data)
    states = {j.key: (j.status, j.reasons) for j in plan(grid, results)}
    assert states["alone-s0"] == ("stale", ["config changed"]) and states["alone-s1"][0] == "stale"
    assert states["dogo-s0"] == ("done", [])
    # A setting that does not change what a run learns keeps the result current.
    data["cells"][1]["overrides"] = [*data["cells"][1]["overrides"], "train.log_every=7", "device=cpu"]
    assert plan(load_grid(data=data), results, only="dogo")[0].status == "done"
    # Evaluation settings and the numerics version count too.
    changed_eval = tiny_grid_data(eval={**tiny_grid_data()["eval"], "limit": 120})
    assert {j.status for j in plan(load_grid(data=changed_eval), results)} == {"stale"}
    assert plan(load_grid(data=changed_eval), results)[0].reasons == ["eval settings changed: limit"]
    assert run_grid(grid, results, runs)["ran"] == []  # stale results are listed, not re-run
    before = (results / "alone-s0.json").read_bytes()
    assert run_grid(grid, results, runs, rerun_stale=True, only="alone-s0")["ran"] == ["alone-s0"]
    assert (results / "alone-s0.json").read_bytes() != before
    assert json.loads((results / "alone-s0.json").read_text())["config"]["train"]["lr"] == 0.002
    assert plan(grid, results, only="alone-s0")[0].status == "done"


def test_numerics_version_change_makes_every_result_stale(finished, tmp_path, monkeypatch):
    grid, _, _ = finished
    results, _ = copy_of(finished, tmp_path)
    monkeypatch.setattr(dogo.grid, "NUMERICS_VERSION", NUMERICS_VERSION + 1)
    jobs = plan(grid, results)
    assert {j.status for j in jobs} == {"stale"}
    assert jobs[0].reasons == [f"numerics version {NUMERICS_VERSION} (now {NUMERICS_VERSION + 1})"]


LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


def test_a_held_lock_skips_the_cell_and_a_killed_holder_blocks_nothing(finished, tmp_path):
    grid, _, _ = finished
    results, runs = copy_of(finished, tmp_path, drop=("alone-s0", "dogo-s1"))
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(results / ".alone-s0.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert [j.locked for j in plan(grid, results) if j.key == "alone-s0"] == [True]
        outcome = run_grid(grid, results, runs)
        assert outcome["skipped"] == ["alone-s0"] and outcome["ran"] == ["dogo-s1"]
        assert not (results / "alone-s0.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert [j.locked for j in plan(grid, results) if j.key == "alone-s0"] == [False]
    assert run_grid(grid, results, runs)["ran"] == ["alone-s0"]
    assert (results / "alone-s0.json").is_file()


def test_a_crash_while_writing_leaves_no_result(finished, tmp_path, monkeypatch):
    grid, _, _ = finished
    results, runs = copy_of(finished, tmp_path, drop=("dogo-s0",))
    real_replace = os.replace

    def killed_before_rename(src, dst):
        if str(dst).endswith(".json"):
            raise SystemExit("killed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_rename)
    with pytest.raises(SystemExit):
        run_grid(grid, results, runs, only="dogo-s0")  # training is reused; evaluation runs, the write dies
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in results.iterdir() if not p.name.endswith(".lock")) == [
        "alone-s0.json", "alone-s1.json", "dogo-s1.json"]
    assert [j.status for j in plan(grid, results, only="dogo-s0")] == ["pending"]


def test_shards_are_disjoint_and_complete():
    grid = load_grid(data=tiny_grid_data(seeds=[0, 1, 2, 3, 4]))
    everything = [j.key for j in plan(grid, "/nonexistent")]
    assert len(everything) == 10
    for n in (1, 2, 3, 4):
        slices = [[j.key for j in plan(grid, "/nonexistent", shard=(i, n))] for i in range(1, n + 1)]
        assert sorted(sum(slices, [])) == sorted(everything)
        assert all(set(a).isdisjoint(b) for k, a in enumerate(slices) for b in slices[k + 1:])
        assert max(map(len, slices)) - min(map(len, slices)) <= 1
    assert [j.key for j in plan(grid, "/nonexistent", shard=(2, 3))] == ["dogo-s0", "alone-s2", "dogo-s3"]
    assert [j.key for j in plan(grid, "/nonexistent", only="dogo")] == [f"dogo-s{s}" for s in range(5)]


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b"])
def test_bad_shard_is_one_error_line(text, tmp_path, capsys):
    grid_file = write_grid(tmp_path / "g.yaml", tiny_grid_data())
    assert main(["grid", str(grid_file), "--shard", text, "--dry-run"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --shard: expected I/N with 1 <= I <= N (e.g. 2/3), got {text!r}"]


def test_dry_run_lists_the_state_and_writes_nothing(finished, tmp_path, capsys):
    results, runs = copy_of(finished, tmp_path, drop=("dogo-s1",))
    data = tiny_grid_data()
    data["cells"][0]["overrides"] = [*data["cells"][0]["overrides"], "train.lr=0.002"]
    grid_file = write_grid(tmp_path / "g.yaml", data)
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    assert main(["grid", str(grid_file), "--results", str(results), "--runs", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
    lines = {line.split()[1]: line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert lines == {"alone-s0": "stale", "alone-s1": "stale", "dogo-s0": "done", "dogo-s1": "pending"}
    recorded = json.loads((results / "dogo-s0.json").read_text())["seconds"]["total"]
    assert f"dogo-s1                          estimate {recorded:.0f} s" in out  # the median of dogo's one result
    assert out.strip().endswith(f"1 done, 1 pending (about {recorded:.0f} s), 2 stale (re-run with --rerun-stale)")
    # A selection's estimate comes from the cell's results outside it too.
    assert [j.estimate_s for j in plan(load_grid(grid_file), results, only="dogo-s1")] == [recorded]
    fresh = tmp_path / "fresh"
    assert main(["grid", str(grid_file), "--results", str(fresh), "--dry-run"]) == 0
    assert not fresh.exists() and "0 done, 4 pending (about 4 s), 0 stale" in capsys.readouterr().out


def test_time_budget_starts_no_cell_that_does_not_fit(tmp_path):
    data = tiny_grid_data()
    data["cells"][0]["estimate_s"] = 1000
    del data["cells"][1]["estimate_s"]
    grid = load_grid(data=data)
    outcome = run_grid(grid, tmp_path / "results", tmp_path / "runs", time_budget=60, say=lambda m: None)
    assert outcome["ran"] == [] and sorted(outcome["not_started"]) == ["alone-s0", "alone-s1", "dogo-s0", "dogo-s1"]
    assert not list((tmp_path / "results").glob("*.json")) and not (tmp_path / "runs").exists()


def test_parallel_workers_share_the_grid_without_running_a_cell_twice(tmp_path):
    data = tiny_grid_data(compare=[])
    data["cells"] = data["cells"][:1]
    grid_file = write_grid(tmp_path / "g.yaml", data)
    results = tmp_path / "results"
    proc = run_cli("grid", str(grid_file), "--results", str(results), "--runs", str(tmp_path / "runs"),
                   "--parallel", "2", env={"PYTHONPATH": str(Path(dogo.grid.__file__).parent.parent)})
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in results.glob("*.json")) == ["alone-s0.json", "alone-s1.json"]
    started = [line.split("] running ")[1].split()[0] for line in proc.stdout.splitlines() if "] running " in line]
    assert sorted(started) == ["alone-s0", "alone-s1"]  # each cell once, whichever worker took it
    assert proc.stdout.count("workers finished with exit codes [0, 0]") == 1
    # The two workers share the cores (unless OMP_NUM_THREADS says otherwise).
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // 2))
    assert f", {threads} threads] running " in proc.stdout


@pytest.mark.parametrize(("change", "message"), [
    ({"seed": [0]}, "seed: unknown key (did you mean 'seeds'?)"),
    ({"seeds": []}, "seeds: give at least one seed"),
    ({"seeds": [0, 0]}, "seeds: must be distinct non-negative integers, got [0, 0]"),
    ({"seeds": "0"}, "seeds: expected a list, got '0'"),
    ({"name": "my grid"}, "name: 'my grid' must be letters, digits, '_', '-' or '.' (it names files)"),
    ({"eval": {"protocols": ["knn", "lineare"]}},
     "eval.protocols: unknown protocol 'lineare' (did you mean 'linear'?)"),
    ({"eval": {"tnse_points": 10}}, "eval.tnse_points: unknown key (did you mean 'tsne_points'?)"),
    ({"eval": {"corruption_limit": 10, "tsne_points": 3}}, "eval.tsne_points: must be >= 10, got 3"),
    ({"eval": {"limit": "many"}}, "eval.limit: expected an integer or null, got 'many'"),
    ({"eval": {"device": "cpu"}}, "eval.device: set by the grid runner, not by the grid file"),
    ({"compare": [{"baseline": "alone/large", "treatment": "dogo/small"}]},
     "compare[0].baseline: cell 'alone' has no peer 'large' (write cell/peer; its peers are small)"),
    ({"compare": [{"baseline": "alone/small", "treatment": "dogoo/small"}]},
     "compare[0].treatment: no cell 'dogoo'; cells are alone, dogo"),
])
def test_bad_grid_files_give_one_clear_error(change, message):
    with pytest.raises(ConfigError) as info:
        load_grid(data=tiny_grid_data(**change))
    assert str(info.value).startswith(message)


def test_bad_cells_give_one_clear_error(tmp_path, capsys):
    data = tiny_grid_data()
    data["cells"][1]["overrides"] = ["train.epohcs=2"]
    with pytest.raises(ConfigError, match=r"^cells\[1\] \(dogo\): train.epohcs: unknown key \(did you mean 'epochs'"):
        load_grid(data=data)
    data = tiny_grid_data()
    data["cells"][1]["name"] = "alone"
    with pytest.raises(ConfigError, match=r"^cells\[1\].name: 'alone' is used twice$"):
        load_grid(data=data)
    data = tiny_grid_data()
    data["cells"][0]["estimate"] = 3
    with pytest.raises(ConfigError, match=r"^cells\[0\].estimate: unknown key \(did you mean 'estimate_s'\?\)"):
        load_grid(data=data)
    data["cells"][0] = {"name": "x", "config": "configs/nope.yaml"}
    grid_file = write_grid(tmp_path / "g.yaml", data)
    assert main(["grid", str(grid_file), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cells[0] (x): config file ") and "does not exist" in err[0]
    assert main(["grid", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: grid file {str(tmp_path / 'missing.yaml')!r} does not exist"


def assert_same_cells_on_fresh_seeds(batch, source, seeds, earlier_seeds, cells=None):
    """A confirmation batch: ``source``'s cells (or those of them named in ``cells``; all of them: its
    comparisons too) and evaluation on ``seeds``, none of them among ``earlier_seeds``, confirming ``source``."""
    assert batch.eval_settings == source.eval_settings and batch.spec.confirms == source.spec.name
    assert batch.spec.seeds == seeds and not set(earlier_seeds) & set(seeds)
    assert [c.name for c in batch.spec.cells] == (cells or [c.name for c in source.spec.cells])
    if cells is None:
        assert batch.spec.compare == source.spec.compare
    for cell in batch.spec.cells:
        assert config_hash(batch.config(cell.name, seeds[0])) == config_hash(source.config(cell.name, seeds[0])), cell.name


def assert_pooled(pooled, batches):
    """A pooled reading: the ``batches``' seeds in order, each (cell, seed) the experiment its batch ran."""
    assert pooled.spec.seeds == [seed for batch in batches for seed in batch.spec.seeds]
    of_seed = {seed: batch for batch in batches for seed in batch.spec.seeds}
    for cell in pooled.spec.cells:
        for seed in pooled.spec.seeds:
            assert config_hash(pooled.config(cell.name, seed)) == config_hash(of_seed[seed].config(cell.name, seed)), \
                (cell.name, seed)


def assert_only_the_views_differ(cfg, view_seed, alone):
    """``cfg`` is ``alone`` with another stream of views (``augment.view_seed``), another experiment."""
    assert cfg.augment.view_seed == view_seed and config_hash(cfg) != config_hash(alone)
    cfg.augment.view_seed = 0
    assert config_hash(cfg) == config_hash(alone)


def assert_adopts(grid, source, cells: list[str], seeds: list[int], own: int = 1, skip: list[str] = ()) -> None:
    """``grid`` has ``cells`` (the last ``own`` of them its own) on ``seeds``, with ``source``'s evaluation
    settings and, for every other cell but those in ``skip`` (adopted from another source), the same experiment
    as ``source``'s cell of that name (what ``--adopt`` copies, or what a confirmation grid runs again on fresh
    seeds)."""
    assert grid.eval_settings == source.eval_settings and grid.spec.seeds == seeds
    assert [c.name for c in grid.spec.cells] == cells
    for seed in seeds:
        for name in [c for c in cells[:len(cells) - own] if c not in skip]:
            assert config_hash(grid.config(name, seed)) == config_hash(source.config(name, seed)), (name, seed)


def assert_at_temperature(grid, cell: str, source, source_cell: str, fields: tuple[str, ...],
                          expected: list[tuple]) -> None:
    """``grid``'s ``cell`` has peers whose ``fields`` read ``expected``, on every seed, and set back to NT-Xent
    temperature 0.5 it has the config hash of ``source``'s ``source_cell``: the temperature is the only change."""
    for seed in grid.spec.seeds:
        cfg = grid.config(cell, seed)
        assert [tuple(getattr(p, f) for f in fields) for p in cfg.peers] == expected
        for peer in cfg.peers:
            peer.temperature = 0.5
        assert config_hash(cfg) == config_hash(source.config(source_cell, seed)), (cell, seed)


def assert_pair_at_temperature(grid, cell: str, source, source_cell: str, widths: list[int],
                               temperature: float = 0.2) -> None:
    """``grid``'s ``cell`` is ``source``'s ``source_cell`` (peers of ``widths``, weight 0.1) with every peer's
    NT-Xent temperature at ``temperature`` instead of 0.5, on every seed: set back to 0.5, it has the same config
    hash."""
    assert_at_temperature(grid, cell, source, source_cell, ("width", "temperature", "distill_weight"),
                          [(w, temperature, 0.1) for w in widths])


def assert_alone_at_temperature(grid, cell: str, temperature: float, source) -> None:
    """``grid``'s ``cell`` is the small CNN alone (width 16, target "peers") at NT-Xent ``temperature``: set back
    to 0.5, it has the config hash of ``source``'s ``small_alone``, on every seed."""
    assert_at_temperature(grid, cell, source, "small_alone", ("width", "temperature", "distill_target"),
                          [(16, temperature, "peers")])


def assert_uniform_target_of(grid, cell: str, source, source_cell: str, temperature: float) -> None:
    """``grid``'s ``cell`` is the small CNN alone (width 16, weight 0.1) at NT-Xent ``temperature`` with the
    uniform target: set back to target "peers", it has the config hash of ``source``'s ``source_cell``."""
    for seed in grid.spec.seeds:
        cfg = grid.config(cell, seed)
        assert [(p.width, p.temperature, p.distill_weight, p.distill_target) for p in cfg.peers] == [
            (16, temperature, 0.1, "uniform")]
        cfg.peers[0].distill_target = "peers"
        assert config_hash(cfg) == config_hash(source.config(source_cell, seed)), (cell, seed)


def test_committed_grid_files_are_valid():
    files = sorted((REPO / "configs" / "grids").glob("*.yaml"))
    assert [f.name for f in files] == [
        "ablations_cnn.yaml", "ablations_cnn_5seeds.yaml", "corruption_cnn_confirm.yaml", "cpu_fmnist_cnn.yaml",
        "cpu_fmnist_cnn_10seeds.yaml", "cpu_fmnist_cnn_fresh.yaml", "dogo_tau02_cnn_12.yaml", "epochs_cnn_12.yaml",
        "epochs_cnn_12_11seeds.yaml", "epochs_cnn_12_19seeds.yaml", "epochs_cnn_12_confirm.yaml", "epochs_cnn_12_fresh.yaml",
        "frozen_peer_cnn_12.yaml", "frozen_peer_confirm.yaml", "frozen_tau01_cnn_12.yaml", "gpu_fmnist_r18_r50.yaml",
        "gpu_fmnist_r18_tau02.yaml",
        "linear_cnn_confirm.yaml", "linear_cnn_power.yaml",
        "noisy_cnn_confirm.yaml", "null_peer_cnn_12.yaml", "null_small_cnn.yaml", "null_views_confirm.yaml",
        "peer_oneway_cnn_12.yaml", "peer_tau01_cnn_12.yaml", "peer_tau02_cnn_12.yaml",
        "peer_width8_cnn_12.yaml", "peer_width_cnn_12.yaml", "peer_width_fresh_cnn_12.yaml", "position_cnn_12.yaml",
        "silhouette_cnn_confirm.yaml",
        "small_cnn_15seeds.yaml", "temperature_002_cnn_12.yaml", "temperature_cnn_12.yaml", "temperature_low_cnn_12.yaml",
        "temperature_lowest_cnn_12.yaml", "temperature_uniform_cnn_12.yaml",
        "transfer_cnn_confirm.yaml", "two_teachers_cnn_12.yaml",
        "uniform_target_cnn_12.yaml", "uniform_tau01_cnn_12.yaml",
        "weight_cnn_20seeds.yaml", "weight_cnn_confirm.yaml", "weight_cnn_fresh20.yaml", "weight_dose_cnn.yaml",
        "weight_dose_confirm.yaml", "weight_zero_confirm.yaml"]
    seeds_of = {}  # grid file name -> its run seeds
    for f in files:
        grid = load_grid(f)
        assert grid.spec.compare and all(c.estimate_s for c in grid.spec.cells)
        seeds_of[f.name] = grid.spec.seeds
    cpu = load_grid(REPO / "configs/grids/cpu_fmnist_cnn.yaml")
    assert cpu.spec.seeds == [0, 1, 2, 3, 4]
    assert [p.width for p in cpu.config("small_alone", 0).peers] == [16]
    assert [p.width for p in cpu.config("dogo", 3).peers] == [16, 48] and cpu.config("dogo", 3).seed == 3
    assert cpu.spec.compare[0].sides == (("small_alone", "small"), ("dogo", "small"))
    from dogo.config import baseline_of, load_config
    from dogo.quickstart import DEFAULT_CONFIG

    # The small CNN alone is exactly the quickstart's baseline (up to its name).
    assert config_hash(cpu.config("small_alone", 0)) == config_hash(baseline_of(load_config(DEFAULT_CONFIG)))
    # The follow-up grid's cells are the same experiments as the grids it adopts from: a cell of the same
    # name has the same config for every seed, and the evaluation settings are equal.
    follow_up = load_grid(REPO / "configs/grids/ablations_cnn_5seeds.yaml")
    ablations = load_grid(REPO / "configs/grids/ablations_cnn.yaml")
    assert follow_up.eval_settings == ablations.eval_settings == cpu.eval_settings
    for source in (ablations, cpu):
        shared = {c.name for c in follow_up.spec.cells} & {c.name for c in source.spec.cells}
        assert shared >= ({"small_alone", "dogo"} if source is cpu else {"weight_0", "weight_0.3", "three_peers"})
        for name in shared:
            for seed in follow_up.spec.seeds:
                assert config_hash(follow_up.config(name, seed)) == config_hash(source.config(name, seed)), name
    # The confirmation runs the follow-up's cells (all four of them) on seeds none of the earlier grids ran.
    confirm = load_grid(REPO / "configs/grids/weight_cnn_confirm.yaml")
    assert confirm.eval_settings == follow_up.eval_settings
    earlier = set(follow_up.spec.seeds) | set(ablations.spec.seeds) | set(cpu.spec.seeds)
    assert confirm.spec.seeds == [5, 6, 7, 8, 9] and not earlier & set(confirm.spec.seeds)
    assert {c.name for c in confirm.spec.cells} == {"small_alone", "weight_0", "dogo", "weight_1"}
    for cell in confirm.spec.cells:
        assert config_hash(confirm.config(cell.name, 5)) == config_hash(follow_up.config(cell.name, 5)), cell.name
    # The main study on fresh seeds: cpu_fmnist_cnn's cells on the confirmation's seeds, whose small_alone
    # and dogo runs it adopts.
    fresh = load_grid(REPO / "configs/grids/cpu_fmnist_cnn_fresh.yaml")
    assert fresh.eval_settings == cpu.eval_settings and fresh.spec.seeds == confirm.spec.seeds
    assert [c.name for c in fresh.spec.cells] == [c.name for c in cpu.spec.cells] and fresh.spec.compare == cpu.spec.compare
    for cell in fresh.spec.cells:
        for seed in fresh.spec.seeds:
            assert config_hash(fresh.config(cell.name, seed)) == config_hash(cpu.config(cell.name, seed)), cell.name
            if cell.name != "large_alone":
                assert config_hash(fresh.config(cell.name, seed)) == config_hash(confirm.config(cell.name, seed))
    # The silhouette's third batch: three of the confirmation's cells on seeds no earlier grid ran.
    third = load_grid(REPO / "configs/grids/silhouette_cnn_confirm.yaml")
    assert third.eval_settings == confirm.eval_settings and third.spec.confirms == "weight_cnn_confirm"
    assert third.spec.seeds == [10, 11, 12, 13, 14] and not (earlier | set(confirm.spec.seeds)) & set(third.spec.seeds)
    assert [c.name for c in third.spec.cells] == ["small_alone", "weight_0", "weight_1"]
    for cell in third.spec.cells:
        assert config_hash(third.config(cell.name, 10)) == config_hash(confirm.config(cell.name, 10)), cell.name
    # The main study's two batches pooled: cpu_fmnist_cnn's cells and evaluation on seeds 0-9, so that every
    # result of both batches is adopted as it is.
    pooled = load_grid(REPO / "configs/grids/cpu_fmnist_cnn_10seeds.yaml")
    assert pooled.eval_settings == cpu.eval_settings and pooled.spec.seeds == cpu.spec.seeds + fresh.spec.seeds
    assert [c.name for c in pooled.spec.cells] == [c.name for c in cpu.spec.cells]
    assert pooled.spec.compare == cpu.spec.compare
    for cell in pooled.spec.cells:
        for seed in pooled.spec.seeds:
            assert config_hash(pooled.config(cell.name, seed)) == config_hash(cpu.config(cell.name, seed)), cell.name
    # The transfer lead's third batch: the main study's small CNN cells on the silhouette batch's seeds,
    # whose small_alone runs it adopts.
    transfer = load_grid(REPO / "configs/grids/transfer_cnn_confirm.yaml")
    assert transfer.eval_settings == cpu.eval_settings and transfer.spec.seeds == third.spec.seeds
    assert transfer.spec.confirms == pooled.spec.name and [c.name for c in transfer.spec.cells] == ["small_alone", "dogo"]
    for seed in transfer.spec.seeds:
        assert config_hash(transfer.config("small_alone", seed)) == config_hash(third.config("small_alone", seed))
        assert config_hash(transfer.config("dogo", seed)) == config_hash(cpu.config("dogo", seed))
    # The small CNN's comparison over every seed of the three batches, all adopted.
    everything = load_grid(REPO / "configs/grids/small_cnn_15seeds.yaml")
    assert everything.eval_settings == cpu.eval_settings
    assert everything.spec.seeds == cpu.spec.seeds + fresh.spec.seeds + transfer.spec.seeds
    assert everything.spec.compare == cpu.spec.compare[:1]
    for cell in ("small_alone", "dogo"):
        for seed in everything.spec.seeds:
            assert config_hash(everything.config(cell, seed)) == config_hash(cpu.config(cell, seed)), cell
    # The noisy-label lead's fourth batch: the silhouette batch's cells on seeds no earlier grid ran.
    fourth = load_grid(REPO / "configs/grids/noisy_cnn_confirm.yaml")
    assert_same_cells_on_fresh_seeds(fourth, third, [15, 16, 17, 18, 19], everything.spec.seeds)
    # Weight 0 and weight 1 beside the small CNN alone over the four batches, all adopted.
    weights = load_grid(REPO / "configs/grids/weight_cnn_20seeds.yaml")
    assert weights.eval_settings == cpu.eval_settings and weights.spec.compare == third.spec.compare
    assert_pooled(weights, [follow_up, confirm, third, fourth])
    # The linear-probe lead's fifth batch: the same three cells on seeds none of the twenty ran.
    fifth = load_grid(REPO / "configs/grids/linear_cnn_confirm.yaml")
    assert_same_cells_on_fresh_seeds(fifth, weights, [20, 21, 22, 23, 24], weights.spec.seeds)
    # The sixth batch: two of those cells, on fifteen seeds neither the twenty nor the fifth batch ran.
    sixth = load_grid(REPO / "configs/grids/linear_cnn_power.yaml")
    assert_same_cells_on_fresh_seeds(sixth, weights, list(range(25, 40)), weights.spec.seeds + fifth.spec.seeds,
                                     cells=["weight_0", "weight_1"])
    # The two fresh batches pooled: the same two cells on seeds 20-39, every result adopted from them.
    fresh20 = load_grid(REPO / "configs/grids/weight_cnn_fresh20.yaml")
    assert fresh20.eval_settings == weights.eval_settings and fresh20.spec.compare == sixth.spec.compare
    assert [c.name for c in fresh20.spec.cells] == ["weight_0", "weight_1"]
    assert_pooled(fresh20, [fifth, sixth])
    # The seventh batch: the same two cells on seeds 40-45, which none of the grids before ran.
    seventh = load_grid(REPO / "configs/grids/corruption_cnn_confirm.yaml")
    assert_same_cells_on_fresh_seeds(seventh, fresh20, list(range(40, 46)), weights.spec.seeds + fresh20.spec.seeds)
    # Weight 0.3 beside the seventh batch's weight 0 and weight 1, adopted: the same experiments.
    dose = load_grid(REPO / "configs/grids/weight_dose_cnn.yaml")
    assert dose.eval_settings == seventh.eval_settings and dose.spec.seeds == seventh.spec.seeds
    for cell in ("weight_0", "weight_1"):
        assert config_hash(dose.config(cell, 40)) == config_hash(seventh.config(cell, 40)), cell
    assert [p.distill_weight for p in dose.config("weight_0.3", 40).peers] == [0.3, 0.3]
    # The eighth batch: weight 0.3 and weight 1 on seeds none of the grids before ran.
    eighth = load_grid(REPO / "configs/grids/weight_dose_confirm.yaml")
    assert eighth.spec.compare == dose.spec.compare[2:]
    assert_same_cells_on_fresh_seeds(eighth, dose, list(range(46, 52)), weights.spec.seeds + fresh20.spec.seeds
                                     + seventh.spec.seeds, cells=["weight_0.3", "weight_1"])
    # The tenth batch: weight 0 and weight 0.3 on seeds none of the grids before ran.
    tenth = load_grid(REPO / "configs/grids/weight_zero_confirm.yaml")
    assert tenth.spec.compare == dose.spec.compare[:2]
    assert_same_cells_on_fresh_seeds(tenth, dose, list(range(52, 58)), weights.spec.seeds + fresh20.spec.seeds
                                     + seventh.spec.seeds + eighth.spec.seeds, cells=["weight_0", "weight_0.3"])
    # Three times longer: the main grid's small CNN cells with 12 epochs instead of 4, nothing else changed.
    longer = load_grid(REPO / "configs/grids/epochs_cnn_12.yaml")
    assert longer.eval_settings == cpu.eval_settings and longer.spec.compare == cpu.spec.compare[:1]
    assert [c.name for c in longer.spec.cells] == ["small_alone", "dogo"]
    for cell in longer.spec.cells:
        cfg = longer.config(cell.name, 2)
        assert cfg.train.epochs == 12 and cpu.config(cell.name, 2).train.epochs == 4
        cfg.train.epochs = 4
        assert config_hash(cfg) == config_hash(cpu.config(cell.name, 2)), cell.name
    # Its confirmation: the same 12-epoch cells on seeds no 12-epoch run used.
    longer_fresh = load_grid(REPO / "configs/grids/epochs_cnn_12_confirm.yaml")
    assert_same_cells_on_fresh_seeds(longer_fresh, longer, list(range(5, 11)), longer.spec.seeds)
    # Both 12-epoch batches pooled, adopted: the same cells, evaluation and comparison on seeds 0-10.
    longer_all = load_grid(REPO / "configs/grids/epochs_cnn_12_11seeds.yaml")
    assert longer_all.eval_settings == longer.eval_settings and longer_all.spec.compare == longer.spec.compare
    assert [c.name for c in longer_all.spec.cells] == [c.name for c in longer.spec.cells]
    assert_pooled(longer_all, [longer, longer_fresh])
    assert not longer_all.spec.predictions
    # The eleventh batch: the same cells on seeds no 12-epoch run used, confirming the eleven pooled seeds.
    longer_more = load_grid(REPO / "configs/grids/epochs_cnn_12_fresh.yaml")
    assert_same_cells_on_fresh_seeds(longer_more, longer_all, list(range(11, 19)), longer_all.spec.seeds)
    # All three 12-epoch batches pooled, adopted: seeds 0-18.
    longer_19 = load_grid(REPO / "configs/grids/epochs_cnn_12_19seeds.yaml")
    assert longer_19.eval_settings == longer.eval_settings and longer_19.spec.compare == longer.spec.compare
    assert [c.name for c in longer_19.spec.cells] == [c.name for c in longer.spec.cells]
    assert_pooled(longer_19, [longer, longer_fresh, longer_more])
    assert not longer_19.spec.predictions
    # A peer of the small CNN's own width at 12 epochs, on the nineteen seeds whose other two cells it adopts:
    # the width-16 pair is the `dogo` cell with the second peer's width alone changed.
    width = load_grid(REPO / "configs/grids/peer_width_cnn_12.yaml")
    assert_adopts(width, longer_19, ["small_alone", "dogo", "peer_w16"], longer_19.spec.seeds)
    assert width.spec.compare[:1] == longer_19.spec.compare
    for seed in width.spec.seeds:
        same_size = width.config("peer_w16", seed)
        assert [p.width for p in same_size.peers] == [16, 16]
        same_size.peers[1].width = 48
        assert config_hash(same_size) == config_hash(width.config("dogo", seed)), seed
    # The width-16 peer against alone on eight fresh seeds, both cells on one machine.
    width_fresh = load_grid(REPO / "configs/grids/peer_width_fresh_cnn_12.yaml")
    used = {seed for name, seeds in seeds_of.items() if name != width_fresh.path.name for seed in seeds}
    assert_same_cells_on_fresh_seeds(width_fresh, width, list(range(65, 73)), used, cells=["small_alone", "peer_w16"])
    assert [c.label for c in width_fresh.spec.compare] == ["small CNN: peer width 16 - alone"]
    assert width_fresh.spec.compare[0] in width.spec.compare
    # A peer of half the student's width on the same seeds: the width-16 pair with the peer's width changed.
    weaker = load_grid(REPO / "configs/grids/peer_width8_cnn_12.yaml")
    assert_adopts(weaker, width, ["small_alone", "peer_w16", "peer_w8"], width.spec.seeds)
    for seed in weaker.spec.seeds:
        half = weaker.config("peer_w8", seed)
        assert [p.width for p in half.peers] == [16, 8]
        half.peers[1].width = 16
        assert config_hash(half) == config_hash(width.config("peer_w16", seed)), seed
    # The width-16 peer distilling nothing (one-way distillation into the student) on the same seeds: the
    # mutual width-16 pair with the peer's weight alone changed.
    oneway = load_grid(REPO / "configs/grids/peer_oneway_cnn_12.yaml")
    assert_adopts(oneway, width, ["small_alone", "peer_w16", "peer_w16_oneway"], width.spec.seeds)
    for seed in oneway.spec.seeds:
        one_way = oneway.config("peer_w16_oneway", seed)
        assert [p.distill_weight for p in one_way.peers] == [0.1, 0.0] and [p.width for p in one_way.peers] == [16, 16]
        one_way.peers[1].distill_weight = 0.1
        assert config_hash(one_way) == config_hash(width.config("peer_w16", seed)), seed
    # Its null: both width-16 networks of one run distil nothing, on fresh seeds; renamed and with the first
    # distilling again it is the one-way pair.
    twin_grid = load_grid(REPO / "configs/grids/null_peer_cnn_12.yaml")
    assert twin_grid.eval_settings == oneway.eval_settings and twin_grid.spec.seeds == list(range(19, 33))
    assert [c.name for c in twin_grid.spec.cells] == ["twin"]
    for seed in twin_grid.spec.seeds:
        twin = twin_grid.config("twin", seed)
        assert [(p.name, p.distill_weight) for p in twin.peers] == [("first", 0.0), ("second", 0.0)]
        twin.peers[0].name, twin.peers[1].name, twin.peers[0].distill_weight = "small", "large", 0.1
        assert config_hash(twin) == config_hash(oneway.config("peer_w16_oneway", seed)), seed
    # Two one-way peers: without the third network and with the student's weight back at 0.1, the one-way pair.
    two_grid = load_grid(REPO / "configs/grids/two_teachers_cnn_12.yaml")
    assert_adopts(two_grid, oneway, ["small_alone", "peer_w16_oneway", "two_teachers"], list(range(12)))
    for seed in two_grid.spec.seeds:
        two = two_grid.config("two_teachers", seed)
        assert [(p.name, p.width, p.distill_weight) for p in two.peers] == [
            ("small", 16, 0.05), ("large", 16, 0.0), ("third", 16, 0.0)]
        del two.peers[2]
        two.peers[0].distill_weight = 0.1
        assert config_hash(two) == config_hash(oneway.config("peer_w16_oneway", seed)), seed
    # A frozen peer: unfrozen, the one-way pair (a frozen peer is another experiment: another config hash).
    frozen_grid = load_grid(REPO / "configs/grids/frozen_peer_cnn_12.yaml")
    assert_adopts(frozen_grid, oneway, ["small_alone", "peer_w16_oneway", "frozen_peer"], list(range(16)))
    for seed in frozen_grid.spec.seeds:
        frozen = frozen_grid.config("frozen_peer", seed)
        assert [(p.width, p.distill_weight, p.frozen) for p in frozen.peers] == [(16, 0.1, False), (16, 0.0, True)]
        assert config_hash(frozen) != config_hash(oneway.config("peer_w16_oneway", seed))
        frozen.peers[1].frozen = False
        assert config_hash(frozen) == config_hash(oneway.config("peer_w16_oneway", seed)), seed
    # Its confirmation on fresh seeds: the same two cells, both the same experiments as frozen_peer_cnn_12's.
    frozen_confirm = load_grid(REPO / "configs/grids/frozen_peer_confirm.yaml")
    assert frozen_confirm.spec.confirms == frozen_grid.spec.name
    assert_adopts(frozen_confirm, frozen_grid, ["small_alone", "frozen_peer"], list(range(16, 24)), own=0)
    # A uniform target: the small CNN alone with a KL term towards U; back to target "peers", the same run alone.
    uniform_grid = load_grid(REPO / "configs/grids/uniform_target_cnn_12.yaml")
    assert_adopts(uniform_grid, frozen_grid, ["small_alone", "frozen_peer", "uniform_target"], list(range(24)))
    for seed in uniform_grid.spec.seeds:
        uniform = uniform_grid.config("uniform_target", seed)
        assert [(p.width, p.distill_weight, p.distill_target) for p in uniform.peers] == [(16, 0.1, "uniform")]
        assert config_hash(uniform) != config_hash(frozen_grid.config("small_alone", seed))
        uniform.peers[0].distill_target = "peers"
        assert config_hash(uniform) == config_hash(frozen_grid.config("small_alone", seed)), seed
    # The baseline's NT-Xent temperature: the small CNN alone at 0.2 and 1.0; back at 0.5, the same run alone.
    temperature_grid = load_grid(REPO / "configs/grids/temperature_cnn_12.yaml")
    assert_adopts(temperature_grid, uniform_grid, ["small_alone", "uniform_target", "alone_tau02", "alone_tau1"],
                  list(range(12)), own=2)
    assert_alone_at_temperature(temperature_grid, "alone_tau02", 0.2, uniform_grid)
    assert_alone_at_temperature(temperature_grid, "alone_tau1", 1.0, uniform_grid)
    # The uniform target at temperature 0.2: back at target "peers", the same run as alone at 0.2.
    both_grid = load_grid(REPO / "configs/grids/temperature_uniform_cnn_12.yaml")
    assert_adopts(both_grid, temperature_grid, ["small_alone", "uniform_target", "alone_tau02", "uniform_tau02"],
                  list(range(12)))
    assert_uniform_target_of(both_grid, "uniform_tau02", temperature_grid, "alone_tau02", 0.2)
    # The mutual width-16 pair at temperature 0.2: its first two cells are peer_width_cnn_12's, the next two
    # temperature_uniform_cnn_12's; back at 0.5, the new cell is the width-16 pair.
    pair_grid = load_grid(REPO / "configs/grids/peer_tau02_cnn_12.yaml")
    pair_cells = ["small_alone", "peer_w16", "alone_tau02", "uniform_tau02", "peer_w16_tau02"]
    assert_adopts(pair_grid, width, pair_cells, list(range(12)), own=3)
    assert_adopts(pair_grid, both_grid, pair_cells, list(range(12)), skip=["peer_w16"])
    assert_pair_at_temperature(pair_grid, "peer_w16_tau02", width, "peer_w16", widths=[16, 16])
    # DoGo's own pair (width-48 peer) at temperature 0.2: its first two cells are peer_width_cnn_12's, the next
    # two peer_tau02_cnn_12's; back at 0.5, the new cell is the `dogo` cell.
    dogo_grid = load_grid(REPO / "configs/grids/dogo_tau02_cnn_12.yaml")
    dogo_cells = ["small_alone", "dogo", "alone_tau02", "peer_w16_tau02", "dogo_tau02"]
    assert_adopts(dogo_grid, width, dogo_cells, list(range(8)), own=3)
    assert_adopts(dogo_grid, pair_grid, dogo_cells, list(range(8)), skip=["dogo"])
    assert_pair_at_temperature(dogo_grid, "dogo_tau02", width, "dogo", widths=[16, 48])
    # The GPU follow-up: ResNet-18 alone and beside ResNet-50 are the first GPU grid's cells; the new two are
    # the same at NT-Xent temperature 0.2 (back at 0.5, the same experiments).
    gpu = load_grid(REPO / "configs/grids/gpu_fmnist_r18_r50.yaml")
    gpu_tau = load_grid(REPO / "configs/grids/gpu_fmnist_r18_tau02.yaml")
    assert_adopts(gpu_tau, gpu, ["r18_alone", "r18_r50", "r18_alone_tau02", "r18_r50_tau02"], [0, 1, 2], own=2)
    assert_at_temperature(gpu_tau, "r18_alone_tau02", gpu, "r18_alone", ("backbone", "temperature"),
                          [("resnet18", 0.2)])
    assert_at_temperature(gpu_tau, "r18_r50_tau02", gpu, "r18_r50", ("backbone", "temperature"),
                          [("resnet18", 0.2), ("resnet50", 0.2)])
    # The baseline at temperature 0.1: three cells of dogo_tau02_cnn_12; back at 0.5, the new one is alone.
    low_grid = load_grid(REPO / "configs/grids/temperature_low_cnn_12.yaml")
    assert_adopts(low_grid, dogo_grid, ["small_alone", "alone_tau02", "dogo_tau02", "alone_tau01"], list(range(8)))
    assert_alone_at_temperature(low_grid, "alone_tau01", 0.1, dogo_grid)
    # The baseline at temperature 0.05: the four cells of temperature_low_cnn_12 and the new one, alone.
    lowest = load_grid(REPO / "configs/grids/temperature_lowest_cnn_12.yaml")
    assert_adopts(lowest, low_grid, ["small_alone", "alone_tau02", "dogo_tau02", "alone_tau01", "alone_tau005"],
                  list(range(8)))
    assert_alone_at_temperature(lowest, "alone_tau005", 0.05, low_grid)
    # And at 0.02: the five cells of temperature_lowest_cnn_12 and the new one, alone.
    turn = load_grid(REPO / "configs/grids/temperature_002_cnn_12.yaml")
    assert_adopts(turn, lowest, [*(c.name for c in lowest.spec.cells), "alone_tau002"], list(range(8)))
    assert_alone_at_temperature(turn, "alone_tau002", 0.02, lowest)
    # The width-16 pair at 0.1: alone at 0.5, 0.2, 0.1 of temperature_low_cnn_12, the pair at 0.2 of
    # dogo_tau02_cnn_12; back at 0.5, the new cell is the width-16 pair.
    pair01 = load_grid(REPO / "configs/grids/peer_tau01_cnn_12.yaml")
    pair01_cells = ["small_alone", "alone_tau02", "alone_tau01", "peer_w16_tau02", "peer_w16_tau01"]
    assert_adopts(pair01, low_grid, pair01_cells, list(range(8)), skip=["peer_w16_tau02"])
    assert_adopts(pair01, dogo_grid, pair01_cells, list(range(8)), skip=["alone_tau01"])
    assert_pair_at_temperature(pair01, "peer_w16_tau01", width, "peer_w16", widths=[16, 16], temperature=0.1)
    # The uniform target at 0.1: alone at 0.5, 0.2, 0.1, 0.05 of temperature_lowest_cnn_12, the uniform target
    # at 0.2 of temperature_uniform_cnn_12; the new cell is alone at 0.1 with the uniform target, the only change.
    uniform01 = load_grid(REPO / "configs/grids/uniform_tau01_cnn_12.yaml")
    uniform01_cells = ["small_alone", "alone_tau02", "alone_tau01", "alone_tau005", "uniform_tau02", "uniform_tau01"]
    assert_adopts(uniform01, lowest, uniform01_cells, list(range(8)), skip=["uniform_tau02"])
    assert_adopts(uniform01, both_grid, uniform01_cells, list(range(8)), skip=["alone_tau01", "alone_tau005"])
    assert_uniform_target_of(uniform01, "uniform_tau01", low_grid, "alone_tau01", 0.1)
    # The frozen peer at 0.1: alone at 0.5 and 0.1 of temperature_low_cnn_12, the frozen peer at 0.5 of
    # frozen_peer_cnn_12, the uniform target at 0.1 of uniform_tau01_cnn_12; the new cell is the frozen peer with
    # the student at 0.1, the only change (the frozen network keeps 0.5).
    frozen01 = load_grid(REPO / "configs/grids/frozen_tau01_cnn_12.yaml")
    frozen01_cells = ["small_alone", "alone_tau01", "frozen_peer", "uniform_tau01", "frozen_tau01"]
    assert_adopts(frozen01, low_grid, frozen01_cells, list(range(8)), skip=["frozen_peer", "uniform_tau01"])
    assert_adopts(frozen01, frozen_grid, frozen01_cells, list(range(8)), skip=["alone_tau01", "uniform_tau01"])
    assert_adopts(frozen01, uniform01, frozen01_cells, list(range(8)), skip=["frozen_peer"])
    assert_at_temperature(frozen01, "frozen_tau01", frozen_grid, "frozen_peer",
                          ("width", "temperature", "distill_weight", "frozen"),
                          [(16, 0.1, 0.1, False), (16, 0.5, 0.0, True)])
    # Position: the width-16 pair at 0.2 of peer_tau02_cnn_12 on fresh seeds, and the same with independent
    # random streams, the only change.
    position = load_grid(REPO / "configs/grids/position_cnn_12.yaml")
    assert position.eval_settings == pair_grid.eval_settings and position.spec.seeds == list(range(33, 65))
    assert [c.name for c in position.spec.cells] == ["peer_w16_tau02", "peer_w16_tau02_independent"]
    for seed in position.spec.seeds:
        shared, independent = position.config("peer_w16_tau02", seed), position.config("peer_w16_tau02_independent", seed)
        assert config_hash(shared) == config_hash(pair_grid.config("peer_w16_tau02", seed)), seed
        assert (shared.train.rng_streams, independent.train.rng_streams) == ("shared", "independent")
        independent.train.rng_streams = "shared"
        assert config_hash(independent) == config_hash(shared), seed
    # The null comparison: the small CNN alone of those 20 seeds, and itself with another stream of views.
    null = load_grid(REPO / "configs/grids/null_small_cnn.yaml")
    assert null.eval_settings == cpu.eval_settings and null.spec.seeds == weights.spec.seeds
    for seed in null.spec.seeds:
        alone, other = null.config("small_alone", seed), null.config("small_alone_views", seed)
        assert config_hash(alone) == config_hash(weights.config("small_alone", seed))
        assert_only_the_views_differ(other, 1, alone)
    # Its check: the same two cells (adopted) and a third stream of views.
    views = load_grid(REPO / "configs/grids/null_views_confirm.yaml")
    assert views.eval_settings == cpu.eval_settings and views.spec.seeds == null.spec.seeds
    assert views.spec.confirms == null.spec.name
    for seed in views.spec.seeds:
        for cell in ("small_alone", "small_alone_views"):
            assert config_hash(views.config(cell, seed)) == config_hash(null.config(cell, seed))
        assert_only_the_views_differ(views.config("small_alone_views2", seed), 2, null.config("small_alone", seed))


def test_committed_results_are_current():
    """A change to the config schema or the defaults that moved every committed result's hash would
    silently drop them from the tables: every committed result must still count."""
    checked = 0
    for grid_file in sorted((REPO / "configs" / "grids").glob("*.yaml")):
        grid = load_grid(grid_file)
        results = REPO / "results" / grid.name
        jobs = [j for j in plan(grid, results) if j.status != "pending"]
        assert [(j.cell, j.seed, j.status, j.reasons) for j in jobs if j.status != "done"] == []
        checked += len(jobs)
    assert checked >= 13



def test_a_failing_cell_is_reported_and_the_others_still_run(finished, tmp_path, monkeypatch):
    grid, _, _ = finished
    results, runs = copy_of(finished, tmp_path, drop=("alone-s1", "dogo-s1"))
    real_run_cell = dogo.grid.run_cell

    def out_of_memory_for_alone(grid, cell, seed, *args, **kwargs):
        if cell == "alone":
            raise RuntimeError("CUDA out of memory")
        return real_run_cell(grid, cell, seed, *args, **kwargs)

    monkeypatch.setattr(dogo.grid, "run_cell", out_of_memory_for_alone)
    messages = []
    outcome = run_grid(grid, results, runs, say=messages.append)
    assert outcome["failed"] == ["alone-s1"] and outcome["ran"] == ["dogo-s1"]
    assert any(m.startswith("failed alone-s1:") and "CUDA out of memory" in m for m in messages)
    assert [j.status for j in plan(grid, results, only="alone-s1")] == ["pending"]


def test_report_of_a_real_grid_run(finished, tmp_path, capsys):
    results, _ = copy_of(finished, tmp_path)
    grid_file = write_grid(tmp_path / "g.yaml", tiny_grid_data())
    assert main(["report", str(results), "--grid", str(grid_file), "--figures", str(tmp_path / "fig")]) == 0
    report = (results / "REPORT.md").read_text()
    assert capsys.readouterr().out.strip() == report.strip()
    assert "⚠ only 2 seeds (0, 1)" in report and "| small: DoGo - alone | linear | fast |" in report
    assert "alone/small (n=2) | dogo/small (n=2) | dogo/large (n=2)" in report
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["tiny_bars.png", "tiny_differences.png",
                                                                    "tiny_knn_curves.png", "tiny_tsne.png"]


def test_tiny_variant_of_the_gpu_study_grid():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from tiny_grid import tiny_grid
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    data = tiny_grid(REPO / "configs/grids/gpu_fmnist_r18_r50.yaml")
    grid = load_grid(data=data)
    assert grid.name == "gpu_fmnist_r18_r50_tiny" and grid.spec.seeds == [0]
    assert [c.name for c in grid.spec.cells] == ["r18_alone", "r50_alone", "r18_r50"] and len(grid.spec.compare) == 2
    for cell in grid.spec.cells:
        cfg = grid.config(cell.name, 0)
        assert {p.backbone for p in cfg.peers} == {"cnn"} and cfg.data.limit == 256 and cfg.train.epochs == 1
    assert [p.name for p in grid.config("r18_r50", 0).peers] == ["r18", "r50"]
    assert [p.protocol for p in grid.spec.predictions] == ["knn", "linear"]  # those the tiny evaluation runs


@pytest.mark.slow
@pytest.mark.parametrize("grid_file, cells", [("gpu_fmnist_r18_r50", 3), ("gpu_fmnist_r18_tau02", 4)])
def test_gpu_study_script_plumbing_with_no_time_left(tmp_path, grid_file, cells):
    """The study script end to end on the CPU (tiny grid) with a zero time budget: it plans, starts no
    cell, copies nothing and writes an empty report; a real tiny run is `GPU_STUDY_TINY=1 bash ...`.
    GRID picks the grid; ADOPT's folders are named when missing and never adopted from in a tiny run."""
    out = tmp_path / "out"
    env = dict(os.environ, GPU_STUDY_TINY="1", OUT=str(out), PYTHON=sys.executable, TIME_BUDGET="0",
               PARALLEL="1", RUNS=str(tmp_path / "runs"), PYTHONPATH=str(REPO),
               SPEED="train.fused_optimizer=on train.compile_scope=step",
               GRID=f"configs/grids/{grid_file}.yaml", ADOPT=f"{tmp_path}/missing results/{grid_file}")
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_study.sh")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ADOPT: no folder {tmp_path}/missing, nothing adopted from it" in proc.stdout
    assert f"0 done, {cells} pending (about {60 * cells} s), 0 stale" in (out / "plan_before.txt").read_text()
    log = (out / "grid.log").read_text()
    assert "not starting r18_alone-s0: estimate 60 s, 0 s of the time budget left" in log
    assert "speed settings for every cell: train.fused_optimizer=on train.compile_scope=step" in log
    assert "adopt" not in log
    assert len([f for f in out.rglob("*") if f.is_file()]) <= 8  # what a device can send back
    with tarfile.open(out / "results.tar.gz") as archive:
        report = archive.extractfile(f"./results/{grid_file}_tiny/REPORT.md").read().decode()
    assert report.startswith(f"# Report: {grid_file}_tiny") and "(no current results)" in report
