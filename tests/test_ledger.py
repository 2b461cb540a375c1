"""The study's ledger: every grid file's predictions in one table, with the verdicts of each grid's report."""

from __future__ import annotations

import pytest

from dogo.cli import main
from dogo.grid_file import REPO
from dogo.ledger import MARKERS, grids_with_predictions, ledger_block, ledger_rows, ledger_table

from .test_grid import tiny_grid_data, write_grid
from .test_report import fresh_grid_data, three_seeds, write_fresh_results  # noqa: F401 (three_seeds: a fixture)


@pytest.fixture
def study(three_seeds, tmp_path):  # noqa: F811 (the imported fixture)
    """A grid folder with three grid files (one without predictions, one run, one never run) and the
    result folders of the first two."""
    _, explored_folder, _ = three_seeds
    write_fresh_results(explored_folder)
    grids = tmp_path / "grids"
    grids.mkdir()
    write_grid(grids / "tiny.yaml", tiny_grid_data(seeds=[0, 1, 2]))
    write_grid(grids / "tiny_fresh.yaml", fresh_grid_data())
    write_grid(grids / "tiny_later.yaml", fresh_grid_data(
        name="tiny_later", seeds=[6, 7, 8],
        predictions=[{"comparison": "small: DoGo - alone", "protocol": "linear", "expect": "within_noise"},
                     {"comparison": "small: DoGo - alone", "protocol": "knn", "expect": "higher"}]))
    return grids, explored_folder.parent


EXPECTED_ROWS = [
    # tiny_fresh's paired differences, as in test_report's confirmation test
    # power: 3 seeds against the earlier +3.00 (sd 1.00) and +1.50 (sd 0.50, the wrong side for "lower")
    "| `tiny_fresh` | 3-5 | small: DoGo - alone | knn k=200 T=0.1 | higher | 75 % | +3.00 [+0.52, +5.48] | "
    "confirmed |",
    "| `tiny_fresh` | 3-5 | small: DoGo - alone | limited 10% labels | lower | 0 % | +0.00 [-2.48, +2.48] | "
    "not confirmed: within noise |",
    "| `tiny_fresh` | 3-5 | small: DoGo - alone | limited 1% labels | lower | n/a | n/a | no measure limited "
    "'1% labels' in the results (its settings: '10% labels') |",
    # never run: its power, from the grid it confirms (tiny, +3.00 with sd 1.00), is known before its seeds run
    "| `tiny_later` | 6-8 | small: DoGo - alone | linear | within noise | n/a | n/a | pending (0 of 3 seeds) |",
    "| `tiny_later` | 6-8 | small: DoGo - alone | knn k=200 T=0.1 | higher | 75 % | n/a | pending (0 of 3 seeds) |",
]


def test_the_ledger_lists_every_prediction_with_its_grid_verdict(study):
    grids_dir, results_root = study
    grids = grids_with_predictions(grids_dir)
    assert [g.name for g in grids] == ["tiny_fresh", "tiny_later"]  # tiny predicts nothing
    table = ledger_table(ledger_rows(grids, results_root))
    lines = table.splitlines()
    assert lines[0] == (
        "5 predictions in 2 grid files, each committed before its seeds ran (the verdicts of each grid's own "
        "report). A difference predicted (lower or higher): 1 of 4 confirmed, 1 not confirmed, 1 pending. No "
        "difference predicted (controls): 0 of 1 held, 0 did not, 1 pending; a control that holds found no "
        "difference on its seeds, which is not proof that there is none. 1 without a verdict (see the table). "
        "Power of the 1 not confirmed: at least 80 % in 0, less than 50 % in 1; power is the chance the seeds had "
        "to confirm a difference as large, and as spread over seeds, as where it was first seen, or as the earlier "
        "result its grid file sized it on (optimistic where it was picked by looking).")
    assert lines[2:4] == ["| grid | seeds | comparison | measure | predicted | power | these seeds | verdict |",
                          "|---|---|---|---|---|---:|---:|---|"]
    assert lines[4:] == EXPECTED_ROWS
    # the order a README gives: its report blocks first, in their order; the rest by name
    assert [g.name for g in grids_with_predictions(grids_dir, ["nowhere", "tiny_later"])] == ["tiny_later", "tiny_fresh"]


def test_ledger_command_rewrites_the_readme_block_in_the_readme_order(study, tmp_path, capsys):
    grids_dir, results_root = study
    readme = tmp_path / "README.md"
    readme.write_text("# study\n\n<!-- report:tiny_later -->\n<!-- /report:tiny_later -->\n\n"
                      f"{MARKERS[0]}\nold table\n{MARKERS[1]}\n\n<!-- report:tiny_fresh -->\n<!-- /report:tiny_fresh -->\n")
    args = ["ledger", "--grids", str(grids_dir), "--results", str(results_root)]
    assert main([*args, "--readme", str(readme)]) == 0
    text = readme.read_text()
    block = text.partition(MARKERS[0] + "\n")[2].partition("\n" + MARKERS[1])[0]
    assert block == ledger_block(grids_dir, results_root, readme) == capsys.readouterr().out.strip()
    assert block.splitlines()[4:] == [*EXPECTED_ROWS[3:], *EXPECTED_ROWS[:3]]  # tiny_later's block comes first
    assert text.startswith("# study\n") and text.endswith("<!-- /report:tiny_fresh -->\n")
    # without markers: one error line, the README untouched
    readme.write_text("# no ledger here\n")
    assert main([*args, "--readme", str(readme)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: the README has no block {MARKERS[0]} ... {MARKERS[1]}; add both markers where the table should go")
    assert readme.read_text() == "# no ledger here\n"
    assert main(["ledger", "--grids", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"error: grid folder {tmp_path / 'nowhere'} does not exist"


def test_committed_study_ledger_matches_the_grid_files_and_results():
    """STUDY.md's ledger is what `dogo ledger --readme STUDY.md` makes: a prediction added, a result
    committed or a verdict edited by hand without regenerating it fails here."""
    study = REPO / "STUDY.md"
    text = study.read_text()
    assert MARKERS[0] in text and MARKERS[1] in text, "STUDY.md has no ledger block"
    block = text.partition(MARKERS[0] + "\n")[2].partition("\n" + MARKERS[1])[0].strip()
    assert block == ledger_block(readme=study), "STUDY.md's ledger is out of date: run dogo ledger --readme STUDY.md"


def sized_grid_data(sized_on: dict, **changes) -> dict:
    """A grid of new cells (it confirms none) on seeds 6-8 whose one prediction is sized on another grid."""
    prediction = {"comparison": "small: DoGo - alone", "protocol": "knn", "expect": "higher", "sized_on": sized_on}
    return tiny_grid_data(**{"name": "tiny_sized", "seeds": [6, 7, 8], "predictions": [prediction], **changes})


def test_a_prediction_sized_on_another_grid_has_its_power_before_any_seed_runs(three_seeds, tmp_path):  # noqa: F811
    """`sized_on` names the earlier paired difference a grid of new cells planned its power on: the ledger and
    the grid's report compute that power from the committed results, on the seeds named or all shared."""
    from dogo.grid_file import load_grid
    from dogo.predictions import predictions_table
    from dogo.results import Results
    from dogo.stats import paired_difference, planned_power

    _, tiny_folder, _ = three_seeds  # tiny: small kNN alone (50, 52, 54), beside the large CNN (52, 55, 58)
    root = tiny_folder.parent
    sized = {"grid": "tiny", "baseline": "alone/small", "treatment": "dogo/small"}
    grid = load_grid(data=sized_grid_data(sized))
    (row,) = ledger_rows([grid], root)
    expected = paired_difference({0: 50.0, 1: 52.0, 2: 54.0}, {0: 52.0, 1: 55.0, 2: 58.0})  # d = (2, 3, 4)
    assert row["earlier"] == expected and row["power"] == planned_power("higher", expected, 3)
    assert row["verdict"] == "pending (0 of 3 seeds)" and row["sized_on"] == "dogo/small - alone/small, `tiny`"
    assert "| higher | 75 % | n/a | pending (0 of 3 seeds) |" in ledger_table([row])
    table = predictions_table(Results.none_yet(grid, root / "tiny_sized"))
    assert ("| comparison | measure | predicted | before (the grid it was sized on) | power | these seeds | verdict |"
            in table)
    assert "| +3.00 [+0.52, +5.48] (dogo/small - alone/small, `tiny`) | 75 % | n/a | pending (0 of 3 seeds) |" in table
    # only the seeds named: d = (2, 3)
    (row,) = ledger_rows([load_grid(data=sized_grid_data({**sized, "seeds": [0, 1]}))], root)
    assert row["earlier"] == paired_difference({0: 50.0, 1: 52.0}, {0: 52.0, 1: 55.0})
    assert row["power"] == planned_power("higher", row["earlier"], 3) != planned_power("higher", expected, 3)


@pytest.mark.parametrize("sized_on, message", [
    ({"grid": "tiny", "baseline": "alone", "treatment": "dogo/small"},
     "predictions[0].sized_on.baseline: expected cell/peer, e.g. small_alone/small, got 'alone'"),
    ({"grid": "../tiny", "baseline": "alone/small", "treatment": "dogo/small"}, "predictions[0].sized_on.grid"),
    ({"grid": "tiny", "baseline": "alone/small", "treatment": "dogo/small", "seeds": [1, 1]},
     "predictions[0].sized_on.seeds: must be distinct"),
    ({"grid": "tiny", "baseline": "alone/small"}, "predictions[0].sized_on.treatment: missing"),
    ({"grid": "tiny", "baseline": "alone/small", "treatment": "dogo/small", "seed": [0]},
     "predictions[0].sized_on.seed: unknown key"),
])
def test_a_wrong_sized_on_fails_when_the_grid_loads(sized_on, message):
    from dogo.errors import ConfigError
    from dogo.grid_file import load_grid

    with pytest.raises(ConfigError) as caught:
        load_grid(data=sized_grid_data(sized_on))
    assert message in str(caught.value)


@pytest.mark.parametrize("sized_on, message", [
    ({"grid": "tiny_nowhere", "baseline": "alone/small", "treatment": "dogo/small"},
     "a prediction is sized on tiny_nowhere, but {root}/tiny_nowhere holds no results"),
    ({"grid": "tiny", "baseline": "alone/small", "treatment": "dogo/huge"},
     "the prediction 'small: DoGo - alone' is sized on dogo/huge - alone/small in results/tiny, which has no knn "
     "on two or more shared seeds"),
    ({"grid": "tiny", "baseline": "alone/small", "treatment": "dogo/small", "seeds": [2]},
     "which has no knn k=200 T=0.1 on two or more shared seeds"),
])
def test_a_sized_on_the_results_lack_is_one_clear_error(three_seeds, sized_on, message):  # noqa: F811
    from dogo.errors import DogoError
    from dogo.grid_file import load_grid

    root = three_seeds[1].parent
    with pytest.raises(DogoError) as caught:
        ledger_rows([load_grid(data=sized_grid_data(sized_on))], root)
    assert message.format(root=root) in str(caught.value)
