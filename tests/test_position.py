"""Are the two networks of a pair alike? The second minus the first, pooled over result files, by hand."""

from __future__ import annotations

import json
import math

import pytest

from dogo.cli import main
from dogo.errors import DogoError
from dogo.grid import NUMERICS_VERSION, SCHEMA_VERSION
from dogo.grid_file import REPO
from dogo.position import (
    MARKERS,
    grid_of_origin,
    is_twin_pair,
    position_block,
    position_rows,
    position_table,
    twin_pair_runs,
)

from .test_stats import T_975_DOF2

COLUMNS = ["peer", "protocol", "setting", "group", "level", "metric", "value", "seed", "dataset", "n_train", "n_test"]


def peer(name: str, **changes) -> dict:
    return {"name": name, "backbone": "cnn", "width": 8, "temperature": 0.5, "distill_weight": 0.1,
            "frozen": False, **changes}


def record(grid: str, cell: str, seed: int, peers: list[dict], knn: list[float], clean: list[float] | None = None,
           ssl: list[float] | None = None, config_hash: str | None = None) -> dict:
    """A result as dogo.grid writes it, with chosen numbers per peer (in the order of ``peers``): kNN top-1,
    clean corruption top-1 (two evaluation seeds each, averaged by the report), the last SSL loss."""
    rows = []
    for k, p in enumerate(peers):
        rows.append([p["name"], "knn", "k=200 T=0.1", "", 200, "top1", knn[k], None, "fashion_mnist", 100, 100])
        rows.append([p["name"], "linear", "fast", "", None, "val_top1", 99.0, 0, "fashion_mnist", 100, 100])
        if clean is not None:
            for eval_seed, shift in ((0, -1.0), (1, 1.0)):
                rows.append([p["name"], "corruptions", "clean", "", 0, "top1", clean[k] + shift, eval_seed,
                             "fashion_mnist", 100, 100])
    curves = {p["name"]: {"knn_top1": [1.0, knn[k]]} for k, p in enumerate(peers)}
    if ssl is not None:
        for k, p in enumerate(peers):
            curves[p["name"]]["ssl_loss"] = [9.0, ssl[k]]
    return {"schema_version": SCHEMA_VERSION, "grid": grid, "cell": cell, "seed": seed,
            "config_hash": config_hash or f"{grid}/{cell}", "numerics_version": NUMERICS_VERSION,
            "config": {"seed": seed, "peers": peers}, "columns": COLUMNS, "rows": rows,
            "curves": {"epoch": [1, 2], "peers": curves}}


def write(root, rec: dict) -> None:
    folder = root / rec["grid"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{rec['cell']}-s{rec['seed']}.json").write_text(json.dumps(rec))


TWINS = [peer("small"), peer("twin")]
HOT_TWINS = [peer("a", temperature=1.0), peer("b", temperature=1.0)]


@pytest.fixture
def study(tmp_path):
    """Twin pairs in two grids, one adopted copy, and runs that are not twin pairs.

    kNN (first, second) per training seed, and the second minus the first after the runs of a seed are averaged:
      seed 0: twins_a/pair (50, 51) and twins_a/hot (40, 43)          -> (45, 47):     d = 2
      seed 1: twins_a/pair (52, 52.5), its adopted copy counted once  ->               d = 0.5
      seed 2: twins_a/pair (54, 56) and twins_b/pair (60, 61)         -> (57, 58.5):   d = 1.5
    twins_b's cell "pair" has the name of twins_a's but other settings: a run of its own.
    """
    root = tmp_path / "results"
    for seed, knn, clean, ssl in ((0, [50, 51], [70, 70], [5.0, 4.5]), (1, [52, 52.5], [71, 72], [5.0, 5.25]),
                                  (2, [54, 56], [72, 75], [5.0, 4.0])):
        write(root, record("twins_a", "pair", seed, TWINS, knn, clean, ssl))
    write(root, record("twins_a", "hot", 0, HOT_TWINS, [40, 43], [60, 62]))
    write(root, record("twins_b", "pair", 2, [peer("x", temperature=0.2), peer("y", temperature=0.2)], [60, 61],
                       [80, 83]))
    copy = record("adopter", "copy", 1, TWINS, [52, 52.5], [71, 72], [5.0, 5.25], config_hash="twins_a/pair")
    copy["adopted_from"] = {"grid": "twins_a", "cell": "pair", "file": "pair-s1.json"}
    write(root, copy)
    # not twin pairs: another width, a frozen peer, three networks, one network; and a stale twin pair
    write(root, record("others", "wide", 0, [peer("small"), peer("large", width=16)], [10, 90]))
    write(root, record("others", "frozen", 0, [peer("small"), peer("fixed", frozen=True)], [10, 90]))
    write(root, record("others", "three", 0, [peer("p"), peer("q"), peer("r")], [10, 90, 90]))
    write(root, record("others", "alone", 0, [peer("small")], [10]))
    stale = record("others", "old", 0, TWINS, [10, 90])
    stale["numerics_version"] = -1
    write(root, stale)
    return root


def interval(d: list[float], digits: int = 2) -> str:
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    half = T_975_DOF2 * sd / math.sqrt(len(d))
    return f"{mean:+.{digits}f} [{mean - half:+.{digits}f}, {mean + half:+.{digits}f}]"


def test_twin_pairs_are_two_networks_alike_but_their_names():
    assert is_twin_pair({"config": {"peers": TWINS}})
    assert is_twin_pair({"config": {"peers": HOT_TWINS}})
    assert not is_twin_pair({"config": {"peers": [peer("a"), peer("b", width=16)]}})
    assert not is_twin_pair({"config": {"peers": [peer("a", frozen=True), peer("b", frozen=True)]}})
    assert not is_twin_pair({"config": {"peers": [peer("a"), peer("b"), peer("c")]}})
    assert not is_twin_pair({"config": {"peers": [peer("a")]}})
    assert not is_twin_pair({})


def test_runs_are_the_current_twin_pairs_each_counted_once(study):
    runs = twin_pair_runs(study)
    assert sorted((r["grid"], r["cell"], r["seed"]) for r in runs) == [
        ("twins_a", "hot", 0), ("twins_a", "pair", 0), ("twins_a", "pair", 1), ("twins_a", "pair", 2),
        ("twins_b", "pair", 2)]  # the adopted copy gives way to the run of the grid that trained it
    assert grid_of_origin({"grid": "adopter", "adopted_from": {"grid": "twins_a"}}) == "twins_a"
    assert grid_of_origin({"grid": "twins_b"}) == "twins_b"
    # the copy stands in for its origin where the origin's folder is missing; a grid left out goes with its copies
    (study / "twins_a" / "pair-s1.json").unlink()
    assert sorted((grid_of_origin(r), r["grid"], r["seed"]) for r in twin_pair_runs(study) if r["seed"] == 1) == [
        ("twins_a", "adopter", 1)]
    assert sorted((r["grid"], r["seed"]) for r in twin_pair_runs(study, exclude=("twins_a",))) == [("twins_b", 2)]


def test_second_minus_first_averages_the_runs_of_a_seed_then_pairs_over_seeds(study):
    runs = twin_pair_runs(study)
    rows = position_rows(runs)
    assert [(r["measure"], r["runs"], r["seeds"]) for r in rows] == [
        ("kNN", 5, 3), ("corrupt. clean", 5, 3), ("kNN monitor, last epoch", 5, 3), ("SSL loss, last epoch", 3, 3)]
    lines = position_table(rows, runs).splitlines()
    assert lines[0] == ("5 runs of a pair of identical networks in 2 grids (twins_a, twins_b), 3 training seeds; "
                        "second network minus first, runs of one seed averaged, 95 % interval over seeds.")
    assert lines[2:4] == ["| measure | runs | seeds | second - first |", "|---|---:|---:|---:|"]
    # clean: seed 0 (70, 70) and (60, 62) -> d 1; seed 1 d 1; seed 2 (72, 75) and (80, 83) -> d 3
    # SSL loss, twins_a/pair only: d = (-0.5, 0.25, -1.0), four decimals
    assert lines[4:] == [f"| kNN | 5 | 3 | {interval([2, 0.5, 1.5])} |",
                         f"| corrupt. clean | 5 | 3 | {interval([1, 1, 3])} |",
                         f"| kNN monitor, last epoch | 5 | 3 | {interval([2, 0.5, 1.5])} |",
                         f"| SSL loss, last epoch | 3 | 3 | {interval([-0.5, 0.25, -1.0], 4)} |"]
    # without twins_b, seed 2 is twins_a's run alone: d = 2
    left = position_block(study, exclude=("twins_b",)).splitlines()
    assert left[0].startswith("4 runs of a pair of identical networks in 1 grid (twins_a), 3 training seeds")
    assert left[4] == f"| kNN | 4 | 3 | {interval([2, 0.5, 2])} |"


def test_position_command_rewrites_the_block_and_fails_in_one_line(study, tmp_path, capsys):
    readme = tmp_path / "STUDY.md"
    readme.write_text(f"# study\n\n{MARKERS[0]}\nold\n{MARKERS[1]}\n\nafter\n")
    assert main(["position", "--results", str(study), "--exclude", "others", "--readme", str(readme)]) == 0
    block = position_block(study, exclude=("others",))
    assert capsys.readouterr().out.strip() == block.strip()
    assert readme.read_text() == f"# study\n\n{MARKERS[0]}\n{block.strip()}\n{MARKERS[1]}\n\nafter\n"
    readme.write_text("# no block\n")
    assert main(["position", "--results", str(study), "--readme", str(readme)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: the README has no block {MARKERS[0]} ... {MARKERS[1]}; add both markers where the table should go")
    assert readme.read_text() == "# no block\n"
    assert main(["position", "--results", str(study), "--exclude", "nowhere"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --exclude: no result folder {study / 'nowhere'}"
    assert main(["position", "--results", str(study), "--exclude", "twins_a", "twins_b", "adopter"]) == 2
    assert capsys.readouterr().err.strip() == f"error: no result under {study} is a run of a pair of identical networks"
    with pytest.raises(DogoError, match="does not exist"):
        twin_pair_runs(tmp_path / "nowhere")


def test_committed_study_position_block_matches_the_committed_results():
    """STUDY.md's position block is what `dogo position --exclude position_cnn_12 peer_width_fresh_cnn_12
    --readme STUDY.md` makes: the pooled look that led to position_cnn_12, without the grids run after it
    (their own reports read them)."""
    text = (REPO / "STUDY.md").read_text()
    assert MARKERS[0] in text and MARKERS[1] in text, "STUDY.md has no position block"
    block = text.partition(MARKERS[0] + "\n")[2].partition("\n" + MARKERS[1])[0].strip()
    later = ("position_cnn_12", "peer_width_fresh_cnn_12")
    exclude = tuple(name for name in later if (REPO / "results" / name).is_dir())
    assert block == position_block(REPO / "results", exclude).strip(), (
        f"STUDY.md's position block is out of date: run dogo position --exclude {' '.join(exclude)} --readme STUDY.md")


def test_a_reader_that_stops_early_ends_the_command_quietly(study, monkeypatch, capsys):
    """`dogo position | head -1`: the reader closes the pipe, the command returns 1 with no traceback."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w", buffering=1) as closed_pipe:
        monkeypatch.setattr("sys.stdout", closed_pipe)
        assert main(["position", "--results", str(study)]) == 1
        closed_pipe.write("the interpreter's last flush goes to /dev/null\n")
    monkeypatch.undo()
    assert capsys.readouterr().err == ""
