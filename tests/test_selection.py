"""Choosing a sweep's setting on validation data: the choices, their test values, and `dogo select`."""

import pytest

from dogo.cli import main
from dogo.errors import DogoError
from dogo.selection import choose_over_seeds, choose_per_seed, chosen_test_values, shared_seeds

VALIDATION = {"a": {0: 80.0, 1: 81.0, 2: 79.0, 3: 70.0},
              "b": {0: 81.0, 1: 80.0, 2: 79.0},  # seed 2: a tie, the option given first wins
              "c": {0: 79.0, 1: 79.5, 2: 78.0}}
TEST = {"a": {0: 1.0, 1: 2.0, 2: 3.0}, "b": {0: 10.0, 1: 20.0, 2: 30.0}, "c": {0: 0.0, 1: 0.0, 2: 0.0}}


def test_per_seed_choice_takes_each_seeds_best_on_the_seeds_all_options_share():
    assert shared_seeds(VALIDATION) == [0, 1, 2]
    assert choose_per_seed(VALIDATION) == {0: "b", 1: "a", 2: "a"}
    assert chosen_test_values(TEST, choose_per_seed(VALIDATION)) == {0: 10.0, 1: 2.0, 2: 3.0}


def test_choice_over_seeds_takes_the_best_mean_ignoring_seeds_not_shared():
    # a: mean 80.0 over seeds 0-2 (its seed 3, 70.0, is not shared); b: 80.0; ties go to the first given
    assert choose_over_seeds(VALIDATION) == "a"
    assert choose_over_seeds({"b": VALIDATION["b"], "a": VALIDATION["a"]}) == "b"
    assert choose_over_seeds({"c": VALIDATION["c"], "b": VALIDATION["b"]}) == "b"


def test_nothing_to_choose_from_and_missing_test_values_are_errors():
    with pytest.raises(DogoError, match="no options"):
        choose_per_seed({})
    with pytest.raises(DogoError, match="share no seed"):
        choose_over_seeds({"a": {0: 1.0}, "b": {1: 1.0}})
    with pytest.raises(DogoError, match=r"seeds \[1\]"):
        chosen_test_values({"a": {0: 1.0}}, {0: "a", 1: "a"})


def test_select_command_on_the_committed_temperature_sweep(capsys):
    """End to end on the study's results: the small CNN alone at four NT-Xent temperatures, seeds 0-7."""
    sweep = ["1.0=results/temperature_cnn_12:alone_tau1", "0.5=results/temperature_cnn_12:small_alone",
             "0.2=results/temperature_cnn_12:alone_tau02", "0.1=results/temperature_low_cnn_12:alone_tau01"]
    assert main(["select", *sweep, "--baseline", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "mean validation top-1: 1.0 81.06, 0.5 80.87, 0.2 81.29, 0.1 81.53" in out
    assert "chosen over seeds: 0.1; chosen per seed: 0: 0.1, 1: 0.1, 2: 0.1, 3: 0.2, 4: 0.2, 5: 0.1, 6: 0.5, 7: 0.1" in out
    assert "knn test top-1, chosen per seed - 0.5: +0.65 [+0.30, +1.00] (8 seeds)" in out
    assert "linear test top-1, chosen over seeds (0.1) - 0.5: +0.50 [+0.34, +0.66] (8 seeds)" in out
    # the seeds of a reading, and the peer, can be named
    assert main(["select", *sweep[1:3], "--baseline", "0.5", "--seeds", "0-2,5", "--peer", "small"]) == 0
    assert "seeds 0, 1, 2, 5;" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["0.5=results/temperature_cnn_12"], "expected NAME=RESULT_FOLDER:CELL"),
    (["0.5=results/temperature_cnn_12:small_alone", "0.5=results/temperature_cnn_12:alone_tau02"], "must differ"),
    (["x=results/temperature_cnn_12:small_alone"], "--baseline '0.5' is not one of the options"),
    (["0.5=results/temperature_cnn_12:no_such_cell"], "no linear fast val_top1 of cell no_such_cell"),
    (["0.5=results/temperature_cnn_12:small_alone", "--peer", "large"], "has no peer 'large' (it has small)"),
    (["0.5=results/nowhere:small_alone"], "does not exist"),
])
def test_select_command_errors_are_one_line(args, message, capsys):
    if "--baseline" not in args:
        args = [*args, "--baseline", "0.5"]
    assert main(["select", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
