"""The grid report: statistics with hand-computed expectations, tables from result files, the README block."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest

from dogo.cli import build_parser, main
from dogo.errors import ConfigError, DogoError
from dogo.grid import NUMERICS_VERSION, SCHEMA_VERSION, config_hash
from dogo.grid_figures import plot_differences, series_styles
from dogo.grid_file import REPO, load_grid
from dogo.predictions import format_power, prediction_checks, prediction_verdict, predictions_table
from dogo.report import (
    beside_table,
    chance_line,
    format_report,
    intervals_excluding_zero,
    readme_block,
    readme_blocks,
    replace_readme_block,
    rerun_table,
    write_report,
)
from dogo.results import cross_machine_pairs, load_results, missing_runs, seed_span
from dogo.shift import DEFAULT_LADDER
from dogo.stats import PairedDifference

from .test_grid import tiny_grid_data
from .test_stats import T_975_DOF1, T_975_DOF2


def fake_record(grid, cell: str, seed: int, knn: dict[str, float], limited: dict[str, tuple[float, float]]) -> dict:
    """A result as dogo.grid writes it, with chosen numbers: kNN top-1 per peer, and per peer the
    limited-label top-1 of two evaluation seeds."""
    cfg = grid.config(cell, seed)
    columns = ["peer", "protocol", "setting", "group", "level", "metric", "value", "seed", "dataset", "n_train",
               "n_test"]
    rows = []
    for peer, value in knn.items():
        rows.append([peer, "knn", "k=200 T=0.1", "", 200, "top1", value, None, "fashion_mnist", 100, 100])
        rows.append([peer, "linear", "fast", "", None, "val_top1", 99.0, 0, "fashion_mnist", 100, 100])
    for peer, (a, b) in limited.items():
        rows.append([peer, "limited", "10% labels", "", 0.1, "top1", a, 0, "fashion_mnist", 10, 100])
        rows.append([peer, "limited", "10% labels", "", 0.1, "top1", b, 1, "fashion_mnist", 10, 100])
    peers = list(knn)
    return {"schema_version": SCHEMA_VERSION, "grid": grid.name, "cell": cell, "seed": seed,
            "config_hash": config_hash(cfg), "numerics_version": NUMERICS_VERSION, "dogo_version": "0.1.0",
            "eval_settings": grid.eval_settings, "corruption_ladder": DEFAULT_LADDER, "config": cfg.to_dict(),
            "columns": columns, "rows": rows, "classes": [str(i) for i in range(10)],
            "tsne": {p: {"x": [0.0, 1.0, 2.0, 3.0], "y": [1.0, 0.0, 1.0, 0.0], "label": [0, 0, 1, 1]} for p in peers},
            "curves": {"epoch": [1, 2], "peers": {p: {"knn_top1": [10.0 + seed, 20.0 + seed]} for p in peers}},
            "seconds": {"total": 1.0}, "device": "cpu", "date": "2026-01-01T00:00:00+00:00"}


@pytest.fixture
def three_seeds(tmp_path):
    """Result files of the tiny grid over seeds 0, 1, 2 with chosen numbers, plus one stale file."""
    grid = load_grid(data=tiny_grid_data(seeds=[0, 1, 2]))
    folder = tmp_path / "results" / "tiny"
    folder.mkdir(parents=True)
    alone = {0: 50.0, 1: 52.0, 2: 54.0}
    dogo_small = {0: 52.0, 1: 55.0, 2: 58.0}  # d = (2, 3, 4)
    for seed in (0, 1, 2):
        records = {
            "alone": fake_record(grid, "alone", seed, {"small": alone[seed]}, {"small": (40.0, 42.0)}),
            "dogo": fake_record(grid, "dogo", seed, {"small": dogo_small[seed], "large": 60.0},
                                {"small": (41.0, 43.0 + seed), "large": (50.0, 50.0)}),
        }
        for cell, record in records.items():
            (folder / f"{cell}-s{seed}.json").write_text(json.dumps(record))
    stale = fake_record(grid, "alone", 0, {"small": 99.0}, {"small": (99.0, 99.0)})
    stale["seed"], stale["config_hash"] = 3, "0" * 64
    (folder / "alone-s3.json").write_text(json.dumps(stale))
    grid_file = tmp_path / "tiny.yaml"
    grid_file.write_text(json.dumps(tiny_grid_data(seeds=[0, 1, 2])))
    return grid, folder, grid_file


def test_report_tables_from_result_files(three_seeds):
    grid, folder, _ = three_seeds
    results = load_results(folder, grid)
    assert results.seeds == [0, 1, 2] and len(results.records) == 6
    assert results.stale == [("alone-s3.json", ["not a (cell, seed) of the grid file"])]
    block = readme_block(results)
    assert "⚠" not in block
    lines = block.splitlines()
    i = lines.index("| protocol | setting | metric | alone/small (n=3) | dogo/small (n=3) | dogo/large (n=3) |")
    # limited: the evaluation seeds are averaged first (alone 41, 41, 41; dogo/small 42, 42.5, 43)
    assert lines[i + 2:i + 4] == ["| knn | k=200 T=0.1 | top1 | 52.00 ± 2.00 | 55.00 ± 3.00 | 60.00 ± 0.00 |",
                                  "| limited | 10% labels | top1 | 41.00 ± 0.00 | 42.50 ± 0.50 | 50.00 ± 0.00 |"]
    half = T_975_DOF2 / math.sqrt(3)
    knn = next(line for line in lines if line.startswith("| small: DoGo - alone | knn |"))
    assert knn == (f"| small: DoGo - alone | knn | k=200 T=0.1 | 52.00 | 55.00 | +3.00 | [{3 - half:+.2f}, {3 + half:+.2f}] "
                   "| 3 | better |")
    # limited: d = (1, 1.5, 2): mean 1.5, sd 0.5
    limited = next(line for line in lines if line.startswith("| small: DoGo - alone | limited |"))
    assert limited.endswith(f"| +1.50 | [{1.5 - 0.5 * half:+.2f}, {1.5 + 0.5 * half:+.2f}] | 3 | better |")
    assert "val_top1" not in block and "99" not in block


def test_report_names_the_runs_not_done_yet_and_adopted_results(three_seeds):
    grid, folder, _ = three_seeds
    (folder / "dogo-s1.json").unlink()
    (folder / "dogo-s2.json").unlink()
    record = json.loads((folder / "alone-s2.json").read_text())
    record["adopted_from"] = {"grid": "main_study", "cell": "baseline", "file": "baseline-s2.json"}
    (folder / "alone-s2.json").write_text(json.dumps(record))
    results = load_results(folder, grid)
    assert missing_runs(results) == {"dogo": [1, 2]}
    assert "Not run yet (no row or comparison for them): dogo (seeds 1, 2)." in readme_block(results).splitlines()
    assert "- adopted from grid `main_study` (the same experiments): alone-s2" in format_report(results).splitlines()
    (folder / "dogo-s1.json").write_text(json.dumps(fake_record(grid, "dogo", 1, {"small": 1.0}, {"small": (1.0, 1.0)})))
    assert "dogo (seed 2)." in readme_block(load_results(folder, grid))


def test_report_warns_of_seeds_whose_two_sides_ran_on_different_machines(three_seeds):
    grid, folder, _ = three_seeds
    assert cross_machine_pairs(load_results(folder, grid)) == []  # every fake record ran on "cpu"
    record = json.loads((folder / "dogo-s1.json").read_text())
    record["device"] = "AMD EPYC"
    (folder / "dogo-s1.json").write_text(json.dumps(record))
    results = load_results(folder, grid)
    assert cross_machine_pairs(results) == [("small: DoGo - alone", 1, "cpu", "AMD EPYC")]
    warning = ("⚠ 1 paired seed ran baseline and treatment on different machines (small: DoGo - alone, seed 1: "
               "cpu / AMD EPYC): those differences include the machines' float differences. Rerun one side on "
               "the other's machine to pair them cleanly.")
    assert warning in readme_block(results).split("\n\n") and warning in format_report(results)
    # A batch run elsewhere is one entry per comparison and pair of machines, its seeds as ranges.
    for seed in (0, 2):
        record = json.loads((folder / f"dogo-s{seed}.json").read_text())
        record["device"] = "AMD EPYC"
        (folder / f"dogo-s{seed}.json").write_text(json.dumps(record))
    assert ("⚠ 3 paired seeds ran baseline and treatment on different machines (small: DoGo - alone, seeds 0-2: "
            "cpu / AMD EPYC): ") in readme_block(load_results(folder, grid))


def test_a_reading_of_some_seeds_wants_only_those_the_grid_has(three_seeds):
    grid, folder, _ = three_seeds
    assert load_results(folder, grid).wanted_seeds == [0, 1, 2]
    # Seed 7 is not in the grid: neither a missing run nor a seed a prediction's verdict waits for.
    assert load_results(folder, grid, seeds=[7, 1]).wanted_seeds == [1]


def test_seed_span_writes_runs_of_seeds_as_ranges():
    assert seed_span([0, 1, 2, 3, 4]) == "0-4"
    assert seed_span([7, 5, 6, 9, 12, 13]) == "5-7, 9, 12-13"
    assert seed_span([3]) == "3"
    assert seed_span([]) == ""


def test_a_rerun_is_compared_with_the_reference_numbers(three_seeds, tmp_path, monkeypatch, capsys):
    grid, folder, grid_file = three_seeds
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    record = json.loads((folder / "alone-s1.json").read_text())
    record["rows"] = [row[:6] + [53.5 if row[1] == "knn" else row[6]] + row[7:] for row in record["rows"]]
    (rerun / "alone-s1.json").write_text(json.dumps(record))
    text = rerun_table(load_results(rerun, grid), load_results(folder, grid))
    lines = text.splitlines()
    # The reference's alone/small kNN over seeds is (50, 52, 54): std 2.
    assert lines[0] == ("1 run(s) in both folders: alone-s1. Largest top-1 difference: +1.50 points "
                        "(alone-s1 small knn k=200 T=0.1); the reference's seed-to-seed std of that row is 2.00.")
    assert "| alone-s1 | small | knn | k=200 T=0.1 | 52.00 | 53.50 | +1.50 | 2.00 |" in lines
    assert "| alone-s1 | small | limited | 10% labels | 41.00 | 41.00 | +0.00 | 0.00 |" in lines
    assert not any(line.startswith("| dogo") for line in lines)

    monkeypatch.chdir(tmp_path)  # the re-run's report draws no figures over the reference's
    assert main(["report", str(rerun), "--grid", str(grid_file), "--against", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"## Against {folder}" in out and "+1.50 points" in out and not (tmp_path / "figures").exists()


def test_beside_pairs_two_grids_differences_by_seed(three_seeds, tmp_path, capsys):
    grid, folder, grid_file = three_seeds
    data = tiny_grid_data(name="tiny_long", seeds=[1, 2, 3])
    for cell in data["cells"]:
        cell["overrides"] = [*cell["overrides"], "train.epochs=2"]  # another experiment: the grids share no run
    longer = load_grid(data=data)
    other = tmp_path / "results" / "tiny_long"
    other.mkdir()
    # kNN gains of the small peer: tiny (seeds 0, 1, 2) 2, 3, 4; tiny_long (seeds 1, 2, 3) 5, 7, 9.
    for seed, alone, dogo in ((1, 50.0, 55.0), (2, 50.0, 57.0), (3, 50.0, 59.0)):
        for cell, knn in (("alone", {"small": alone}), ("dogo", {"small": dogo, "large": 60.0})):
            record = fake_record(longer, cell, seed, knn, {p: (40.0, 40.0) for p in knn})
            record["device"] = "AMD EPYC"
            (other / f"{cell}-s{seed}.json").write_text(json.dumps(record))
    (tmp_path / "tiny_long.yaml").write_text(json.dumps(data))
    text = beside_table(load_results(other, longer), load_results(folder, grid))
    head, _, table = text.partition("\n\n")
    assert head == ("Change: the paired difference in `tiny_long` minus the same in `tiny`, paired by run seed over "
                    "the seeds both have; each grid's column is its own paired difference over its seeds. The grids "
                    "ran on cpu (`tiny`) and AMD EPYC (`tiny_long`): the change includes the machines' float "
                    "differences.")
    rows = table.splitlines()
    assert rows[0] == "| comparison | measure | `tiny` | `tiny_long` | change | seeds paired |"
    # Each grid's own interval: tiny d = (2, 3, 4), sd 1; tiny_long d = (5, 7, 9), sd 2. The change over the
    # seeds both ran (1, 2): 5 - 3 and 7 - 4 = (2, 3): mean 2.5, sd sqrt(0.5), one degree of freedom.
    h3, h2 = T_975_DOF2 / math.sqrt(3), T_975_DOF1 * math.sqrt(0.5) / math.sqrt(2)
    assert rows[2] == (f"| small: DoGo - alone | kNN | +3.00 [{3 - h3:+.2f}, {3 + h3:+.2f}] | "
                       f"+7.00 [{7 - 2 * h3:+.2f}, {7 + 2 * h3:+.2f}] | +2.50 [{2.5 - h2:+.2f}, {2.5 + h2:+.2f}] | 2 |")
    # limited: tiny d = (1, 1.5, 2), tiny_long d = 0 on every seed; the change on seeds 1, 2 is (-1.5, -2).
    h = T_975_DOF1 * 0.25  # sd 0.5 / sqrt(2), over sqrt(2)
    assert rows[3].startswith("| small: DoGo - alone | 10% labels | +1.50 [")
    assert rows[3].endswith(f"| -1.75 [{-1.75 - h:+.2f}, {-1.75 + h:+.2f}] | 2 |")

    # The same grid beside itself: every run is the same experiment, and the change is 0 on every seed.
    same = beside_table(load_results(folder, grid), load_results(folder, grid))
    assert "⚠ 6 run(s) are the same experiment in both grids" in same
    assert re.search(r"\| small: DoGo - alone \| kNN \| .* \| [+-]0\.00 \[[+-]0\.00, [+-]0\.00\] \| 3 \|$", same, re.M)

    # The command prints the table and writes nothing; a flag that writes is refused.
    long_file = str(tmp_path / "tiny_long.yaml")
    assert main(["report", str(other), "--grid", long_file, "--beside", str(folder), "--beside-grid", str(grid_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## `tiny_long` beside `tiny`") and rows[2] in out
    assert not (other / "REPORT.md").exists() and not (folder / "REPORT.md").exists()
    assert main(["report", str(other), "--beside", str(folder), "--readme", str(tmp_path / "README.md")]) == 2
    assert "--beside prints a table and writes nothing: drop --readme" in capsys.readouterr().err
    assert main(["report", str(other), "--grid", long_file, "--beside", str(folder)]) == 2
    assert "--beside: no grid file configs/grids/tiny.yaml" in capsys.readouterr().err
    assert main(["report", str(other), "--beside", str(folder), "--beside-grid", str(grid_file)]) == 2
    assert "--beside: no grid file configs/grids/tiny_long.yaml for " in capsys.readouterr().err
    assert main(["report", str(other), "--beside-grid", str(grid_file)]) == 2
    assert "--beside-grid names the grid file of a --beside folder" in capsys.readouterr().err


def test_readme_differences_style_shows_one_row_per_comparison(three_seeds):
    _, folder, _ = three_seeds
    grid = load_grid(data=tiny_grid_data(seeds=[0, 1, 2], readme="differences"))
    results = load_results(folder, grid)
    half = T_975_DOF2 / math.sqrt(3)
    lines = readme_block(results).splitlines()
    assert "| comparison | seeds | kNN | 10% labels |" in lines
    # kNN d = (2, 3, 4); limited d = (1, 1.5, 2): both intervals exclude 0, so both are bold.
    assert f"| small: DoGo - alone | 3 | **+3.00 ± {half:.2f}** | **+1.50 ± {0.5 * half:.2f}** |" in lines
    assert "mean ± std" not in lines[0] and "| protocol | setting | metric |" not in "\n".join(lines)
    assert "| protocol | setting | metric | alone/small (n=3)" in format_report(results)  # the means stay in REPORT.md
    with pytest.raises(ConfigError, match="readme"):
        load_grid(data=tiny_grid_data(readme="matrix"))


def test_differences_figure_marks_the_intervals_that_exclude_zero(three_seeds):
    grid, folder, _ = three_seeds
    fig = plot_differences(load_results(folder, grid))
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["kNN", "10% labels"]
    # Both differences exclude 0 and are positive: filled green markers.
    for ax in panels:
        (container,) = ax.containers  # one comparison: one error bar
        line = container.lines[0]
        assert line.get_color() == "tab:green" and line.get_markerfacecolor() == "tab:green"
    one_seed = load_results(folder, load_grid(data=tiny_grid_data(seeds=[0])))
    assert plot_differences(one_seed) is None  # no interval from one seed: no figure


def test_changed_grid_makes_results_stale_in_the_report(three_seeds):
    _, folder, _ = three_seeds
    data = tiny_grid_data(seeds=[0, 1, 2])
    data["cells"][1]["overrides"] = [*data["cells"][1]["overrides"], "train.lr=0.01"]
    results = load_results(folder, load_grid(data=data))
    assert {r["cell"] for r in results.records} == {"alone"}
    assert sorted(name for name, reasons in results.stale if reasons == ["config changed"]) == [
        "dogo-s0.json", "dogo-s1.json", "dogo-s2.json"]
    assert "dogo/small" not in readme_block(results)


def test_fewer_than_three_seeds_warn_and_never_hide_the_spread(three_seeds):
    grid, folder, _ = three_seeds
    for cell in ("alone", "dogo"):
        (folder / f"{cell}-s2.json").unlink()
    block = readme_block(load_results(folder, grid))
    assert "⚠ only 2 seeds (0, 1): spreads and intervals from fewer than 3 seeds are not meaningful" in block
    knn = next(line for line in block.splitlines() if line.startswith("| small: DoGo - alone | knn |"))
    # d = (2, 3): mean 2.5, sd sqrt(0.5), half width t_{0.975,1} * sqrt(0.5) / sqrt(2) = t / 2
    assert knn.endswith(f"| +2.50 | [{2.5 - T_975_DOF1 / 2:+.2f}, {2.5 + T_975_DOF1 / 2:+.2f}] | 2 | "
                        "within noise; ⚠ 2 seeds: interval not meaningful |")


def test_report_command_writes_report_figures_and_the_readme_block(three_seeds, tmp_path, capsys):
    grid, folder, grid_file = three_seeds
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n\n<!-- report:tiny -->\nold table\n<!-- /report:tiny -->\n\nafter\n")
    figures = tmp_path / "figures"
    assert main(["report", str(folder), "--grid", str(grid_file), "--figures", str(figures),
                 "--readme", str(readme)]) == 0
    printed = capsys.readouterr().out
    report = (folder / "REPORT.md").read_text()
    assert printed.strip() == report.strip() and report.startswith("# Report: tiny\n")
    assert "- alone-s3.json: not a (cell, seed) of the grid file" in report
    assert sorted(p.name for p in figures.iterdir()) == ["tiny_bars.png", "tiny_differences.png", "tiny_knn_curves.png",
                                                         "tiny_tsne.png"]
    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n<!-- report:tiny -->\n")
    assert text.endswith("<!-- /report:tiny -->\n\nafter\n")
    assert readme_blocks(text) == {"tiny": readme_block(load_results(folder, grid))}
    # Running it again changes nothing.
    write_report(folder, grid_file, None, readme)
    assert readme.read_text() == text


def test_readme_without_markers_and_missing_folders_are_one_error_line(three_seeds, tmp_path, capsys):
    _, folder, grid_file = three_seeds
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert main(["report", str(folder), "--grid", str(grid_file), "--no-figures", "--readme", str(readme)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the README has no block <!-- report:tiny --> ... <!-- /report:tiny -->; "
                   "add both markers where the table should go"]
    assert readme.read_text() == "# no markers\n"
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"error: result folder {tmp_path / 'nowhere'} does not exist"
    with pytest.raises(DogoError):
        replace_readme_block("<!-- /report:x -->\n<!-- report:x -->", "x", "table")


def test_committed_readme_blocks_match_the_committed_results():
    """Every block of a committed result folder, in the README (the main grids) or STUDY.md (the rest of the
    study), is what `dogo report` makes from its JSON files: a block edited by hand, or results committed
    without regenerating it, fail here. No grid has a block in both."""
    readme, study = (readme_blocks((REPO / name).read_text()) for name in ("README.md", "STUDY.md"))
    assert not set(readme) & set(study), "a grid's block is in both the README and STUDY.md"
    blocks = {**readme, **study}
    folders = [p for p in sorted((REPO / "results").glob("*")) if p.is_dir() and list(p.glob("*.json"))] \
        if (REPO / "results").is_dir() else []
    names = set()
    for folder in folders:
        results = load_results(folder)
        names.add(results.name)
        if results.name in blocks:
            assert blocks[results.name] == readme_block(results), f"block {results.name} is out of date"
    assert set(blocks) <= names, "a block has no committed results"


def test_readme_block_parsing():
    text = "a\n<!-- report:one -->\n| x |\n<!-- /report:one -->\nb\n<!-- report:two -->\n<!-- /report:two -->\n"
    assert readme_blocks(text) == {"one": "| x |", "two": ""}
    assert replace_readme_block(text, "two", "| y |\n") == text.replace(
        "<!-- report:two -->\n<!-- /report:two -->", "<!-- report:two -->\n| y |\n<!-- /report:two -->")




def test_paired_columns_show_only_the_seeds_both_sides_have(three_seeds):
    grid, folder, _ = three_seeds
    for seed in (1, 2):
        (folder / f"dogo-s{seed}.json").unlink()
    block = readme_block(load_results(folder, grid))
    knn = next(line for line in block.splitlines() if line.startswith("| small: DoGo - alone | knn |"))
    cells = [c.strip() for c in knn.strip("|").split("|")]
    baseline, treatment, difference = float(cells[3]), float(cells[4]), float(cells[5])
    assert treatment - baseline == pytest.approx(difference, abs=0.011)  # the same single seed on both sides
    assert cells[6] == "n/a" and cells[7] == "1" and cells[8].startswith("no interval")


def test_figures_give_each_role_its_colour(three_seeds):
    from dogo.viz import ROLE_COLORS

    grid, folder, _ = three_seeds
    styles = series_styles(load_results(folder, grid))
    assert styles[("alone", "small")]["color"] == ROLE_COLORS["alone"]
    assert styles[("dogo", "small")]["color"] == ROLE_COLORS["student"]
    assert styles[("dogo", "large")]["color"] == ROLE_COLORS["peer"]


def test_report_of_some_seeds_prints_and_writes_nothing(three_seeds, tmp_path, capsys, monkeypatch):
    grid, folder, grid_file = three_seeds
    monkeypatch.chdir(tmp_path)
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    assert main(["report", str(folder), "--grid", str(grid_file), "--seeds", "1,2"]) == 0
    out = capsys.readouterr().out
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
    assert out.startswith("# Report: tiny (seeds 1, 2 only)\n")
    assert "4 results, seeds 1, 2 only" in out and "--seeds 1,2` prints it" in out and "Not run yet" not in out
    # seeds 1 and 2 alone: knn d = (3, 4), mean 3.5
    knn = next(line for line in out.splitlines() if line.startswith("| small: DoGo - alone | knn |"))
    # t(0.975, 1 dof) = 12.706, sd 0.707, half width 12.706 * 0.5 = 6.35
    assert knn.endswith("| 53.00 | 56.50 | +3.50 | [-2.85, +9.85] | 2 | within noise; ⚠ 2 seeds: interval not meaningful |")
    # The whole grid's results are unchanged by the reading.
    assert load_results(folder, grid).seeds == [0, 1, 2]


def test_report_of_some_seeds_refuses_to_write_and_unknown_seeds(three_seeds, capsys):
    grid, folder, grid_file = three_seeds
    assert main(["report", str(folder), "--grid", str(grid_file), "--seeds", "1", "--readme", "README.md"]) == 2
    assert "--seeds prints a report of some seeds and writes nothing: drop --readme" in capsys.readouterr().err
    assert main(["report", str(folder), "--grid", str(grid_file), "--seeds", "2,7"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --seeds: no current result in {folder} has seed 7"
    with pytest.raises(SystemExit):
        main(["report", str(folder), "--seeds", "one"])
    assert "argument --seeds: expected integer seeds, e.g. 3 4, 3,4 or 3-7; got 'one'" in capsys.readouterr().err


def test_seeds_read_the_same_forms_in_every_command():
    """`dogo report`, `dogo eval` and `dogo select` take the same --seeds forms: spaces, commas, ranges, mixed."""
    parser = build_parser()
    commands = (["report", "results/x"], ["eval", "runs/x"], ["select", "a=r:c", "--baseline", "a"])
    for form in (["1", "2", "5"], ["1,2,5"], ["1,2", "5"], ["1,", "2,5"], ["1-2,5"], ["1-2", "5", "2"]):
        for command in commands:
            assert parser.parse_args([*command, "--seeds", *form]).seeds == [1, 2, 5], (command, form)
    assert parser.parse_args(["eval", "runs/x", "--seeds", "0-7"]).seeds == list(range(8))
    assert parser.parse_args(["eval", "runs/x"]).seeds == [0, 1, 2] and parser.parse_args(["report", "r"]).seeds is None
    for bad in (["1.5"], [","], ["1", "two"], ["a-b"], ["5-2"], ["-3"], ["1-"]):
        for command in commands:
            with pytest.raises(SystemExit):
                parser.parse_args([*command, "--seeds", *bad])


def test_the_count_of_intervals_that_exclude_zero_beside_chance(three_seeds, tmp_path):
    grid, folder, _ = three_seeds
    results = load_results(folder, grid)
    # small: DoGo - alone, kNN d = (2, 3, 4) and 10 % labels d = (1, 1.5, 2): both intervals exclude 0
    assert intervals_excluding_zero(results) == (2, 2)
    line = ("2 of 2 intervals exclude 0 (100.0 %); if no treatment changed anything, 5 % of them (about 0.1) "
            "would by chance alone.")
    assert chance_line(results) == line and readme_block(results).endswith(line)
    # one paired seed gives no interval: nothing to count, and no line
    one = tmp_path / "one"
    one.mkdir()
    for name in ("alone-s0.json", "dogo-s0.json"):
        (one / name).write_text((folder / name).read_text())
    single = load_results(one, grid)
    assert intervals_excluding_zero(single) == (0, 0) and chance_line(single) is None
    assert "intervals exclude 0" not in readme_block(single)
    # a third seed on which DoGo loses 10 points of kNN: that interval now contains 0
    record = json.loads((folder / "dogo-s2.json").read_text())
    record["rows"] = [row[:6] + [44.0] + row[7:] if row[1] == "knn" and row[0] == "small" else row for row in record["rows"]]
    (folder / "dogo-s2.json").write_text(json.dumps(record))
    assert intervals_excluding_zero(load_results(folder, grid)) == (1, 2)


def test_prediction_verdicts_on_hand_made_intervals():
    below, around, above = (PairedDifference(-2.0, -3.0, -1.0, 5), PairedDifference(0.5, -1.0, 2.0, 5),
                            PairedDifference(2.0, 1.0, 3.0, 5))
    assert [prediction_verdict("lower", d, 5) for d in (below, around, above)] == [
        "confirmed", "not confirmed: within noise", "not confirmed: higher, the opposite"]
    assert [prediction_verdict("higher", d, 5) for d in (below, around, above)] == [
        "not confirmed: lower, the opposite", "not confirmed: within noise", "confirmed"]
    assert [prediction_verdict("within_noise", d, 5) for d in (below, around, above)] == [
        "not confirmed: lower", "confirmed", "not confirmed: higher"]
    # no verdict before every seed is in, nor without a result, nor from fewer than 3 seeds
    assert prediction_verdict("lower", PairedDifference(-2.0, -3.0, -1.0, 4), 5) == "pending (4 of 5 seeds)"
    assert prediction_verdict("lower", None, 3) == "pending (0 of 3 seeds)"
    assert prediction_verdict("lower", PairedDifference(-2.0, math.nan, math.nan, 1), 1) == \
        "no verdict from 1 seed: at least 3 are needed"
    assert prediction_verdict("lower", below, 2) == "confirmed" and below.n == 5
    assert prediction_verdict("lower", PairedDifference(-2.0, -9.0, -1.0, 2), 2) == \
        "no verdict from 2 seeds: at least 3 are needed"


def test_format_power_rounds_to_whole_percent():
    assert (format_power(None), format_power(0.3404), format_power(0.996)) == ("n/a", "34 %", "100 %")


def fresh_grid_data(**changes) -> dict:
    """A confirmation of the tiny grid on seeds 3-5, with three predictions."""
    data = dict(
        name="tiny_fresh", seeds=[3, 4, 5], confirms="tiny",
        eval={"protocols": ["knn", "linear", "limited", "tsne"], "limit": 100, "seeds": [0], "tsne_points": 30},
        predictions=[{"comparison": "small: DoGo - alone", "protocol": "knn", "expect": "higher"},
                     {"comparison": "small: DoGo - alone", "protocol": "limited", "setting": "10% labels",
                      "expect": "lower"},
                     {"comparison": "small: DoGo - alone", "protocol": "limited", "setting": "1% labels",
                      "expect": "lower"}])
    return tiny_grid_data(**{**data, **changes})


def write_fresh_results(explored_folder):
    """The results of ``fresh_grid_data``'s grid beside the tiny grid's (``three_seeds``, its stale file
    removed): small CNN kNN d = (3, 4, 2), 10 % labels d = (1, -1, 0). Returns the grid and the folder."""
    (explored_folder / "alone-s3.json").unlink()  # the fixture's stale file: not the tiny grid's
    grid = load_grid(data=fresh_grid_data())
    folder = explored_folder.parent / "tiny_fresh"
    folder.mkdir()
    knn = {3: (50.0, 53.0), 4: (51.0, 55.0), 5: (52.0, 54.0)}  # d = (3, 4, 2): mean 3, sd 1
    limited = {3: 1.0, 4: -1.0, 5: 0.0}  # d: mean 0, sd 1
    for seed in (3, 4, 5):
        records = {"alone": fake_record(grid, "alone", seed, {"small": knn[seed][0]}, {"small": (40.0, 40.0)}),
                   "dogo": fake_record(grid, "dogo", seed, {"small": knn[seed][1], "large": 60.0},
                                       {"small": (40.0 + limited[seed],) * 2, "large": (50.0, 50.0)})}
        for cell, record in records.items():
            (folder / f"{cell}-s{seed}.json").write_text(json.dumps(record))
    return grid, folder


def test_a_confirmation_grid_reports_each_prediction_beside_the_grid_it_confirms(three_seeds):
    _, explored_folder, _ = three_seeds
    grid, folder = write_fresh_results(explored_folder)
    results = load_results(folder, grid)
    table = predictions_table(results)
    assert table.splitlines() == [
        "Predictions written in `tiny_fresh`'s grid file before its seeds ran: 1 of 3 confirmed, 1 not confirmed, "
        "0 pending (confirmed: the 95 % interval on the predicted side of 0, or containing 0 where no difference "
        "was predicted). Power: the chance these seeds had to confirm a predicted difference if it were as large, "
        "and as spread over seeds, as before (optimistic where the earlier size was picked by looking).",
        "",
        "| comparison | measure | predicted | before (`tiny`, seeds 0, 1, 2) | power | these seeds | verdict |",
        "|---|---|---|---:|---:|---:|---|",
        # before: the tiny grid's d = (2, 3, 4) and (1, 1.5, 2); half widths t_{0.975,2} / sqrt(3) and half that.
        # Power over 3 seeds: noncentral t, 2 degrees of freedom, noncentrality 3 / 1 * sqrt(3) (and -1.5 / 0.5
        # * sqrt(3) for "lower", against a difference seen above 0).
        "| small: DoGo - alone | knn k=200 T=0.1 | higher | +3.00 [+0.52, +5.48] | 75 % | +3.00 [+0.52, +5.48] | "
        "confirmed |",
        "| small: DoGo - alone | limited 10% labels | lower | +1.50 [+0.26, +2.74] | 0 % | +0.00 [-2.48, +2.48] | "
        "not confirmed: within noise |",
        "| small: DoGo - alone | limited 1% labels | lower | n/a | n/a | n/a | no measure limited '1% labels' in "
        "the results (its settings: '10% labels') |",
    ]
    assert readme_block(results).endswith(table)
    # a reading of two of the seeds gives no verdict
    two = prediction_checks(load_results(folder, grid, seeds=[3, 4]))
    assert [c["verdict"] for c in two[:2]] == ["no verdict from 2 seeds: at least 3 are needed"] * 2
    assert "0 of 3 confirmed, 0 not confirmed, 0 pending, 2 without a verdict" in \
        predictions_table(load_results(folder, grid, seeds=[3, 4]))
    # a missing seed: no verdict yet
    (folder / "dogo-s5.json").unlink()
    checks = prediction_checks(load_results(folder, grid))
    assert [c["verdict"] for c in checks[:2]] == ["pending (2 of 3 seeds)"] * 2
    # without the confirmed grid's results the column says so, and the rest stands
    shutil.rmtree(explored_folder)
    assert "before (`tiny` (no results found))" in predictions_table(load_results(folder, grid))
    # predictions that confirm no grid (from a paper, say): no "before" column
    alone = load_grid(data=fresh_grid_data(confirms=""))
    lines = predictions_table(load_results(folder, alone)).splitlines()
    # (seed 5 of dogo was removed above: d = (3, 4), half width t_{0.975,1} / sqrt(2) * sqrt(1/2) = 6.35)
    assert lines[2:5] == ["| comparison | measure | predicted | these seeds | verdict |", "|---|---|---|---:|---|",
                          "| small: DoGo - alone | knn k=200 T=0.1 | higher | +3.50 [-2.85, +9.85] | "
                          "pending (2 of 3 seeds) |"]


@pytest.mark.parametrize("change, message", [
    ({"predictions": [{"comparison": "small: DoGo - alon", "protocol": "knn", "expect": "higher"}]},
     "predictions[0].comparison: no comparison labelled 'small: DoGo - alon'; the grid's are 'small: DoGo - alone'"),
    ({"predictions": [{"comparison": "small: DoGo - alone", "protocol": "noisy", "expect": "higher"}]},
     "predictions[0].protocol: 'noisy' is not one of the grid's protocols (knn, linear, limited, tsne)"),
    ({"predictions": [{"comparison": "small: DoGo - alone", "protocol": "knn", "expect": "up"}]},
     "predictions[0].expect"),
    ({"predictions": [{"comparison": "small: DoGo - alone", "protocol": "knn", "expect": "higher"}] * 2},
     "predictions[1]: 'small: DoGo - alone' on knn is predicted twice"),
    ({"predictions": [{"comparison": "small: DoGo - alone", "protocol": "knn", "expect": "higher", "seting": "x"}]},
     "predictions[0]"),
    ({"predictions": [{"comparison": "small: DoGo - alone", "protocol": "knn"}]},
     "predictions[0].expect: missing (it has no default)"),
    ({"compare": [{"label": "x", "baseline": "alone/small"}]}, "compare[0].treatment: missing (it has no default)"),
    ({"cells": [{"name": "alone", "overrides": []}]}, "cells[0].config: missing (it has no default)"),
    ({"confirms": "tiny_fresh"}, "confirms: a grid confirms another grid's findings, not its own"),
    ({"confirms": "../tiny"}, "confirms: '../tiny' must be letters"),
])
def test_bad_predictions_fail_at_load_naming_the_key(change, message):
    with pytest.raises(ConfigError) as info:
        load_grid(data=fresh_grid_data(**change))
    assert message in str(info.value)
