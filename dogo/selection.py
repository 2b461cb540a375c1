"""Choose a setting on validation data, never on the test set, and read the choice's test accuracy.

A sweep (temperatures, weights, ...) read on the test set and quoted at its best is optimistic: the
best of several noisy numbers is biased upwards. The linear probe already holds out a validation split of
the training images (``val_top1`` in every result); choosing on it and reading the test set once gives
an honest estimate of what tuning that setting is worth.

- ``choose_per_seed``: for each seed, the option with the highest validation accuracy on that seed (the
  choice a user with one run of each option would make);
- ``choose_over_seeds``: one option for every seed, the highest mean validation accuracy over the seeds
  every option has;
- ``chosen_test_values``: seed by seed, the test value of the option chosen for that seed.

Inputs are {option: {seed: value}}, as ``dogo.results.series_of`` gives per cell. Ties go to the option
given first. On the command line (``dogo select``) the options are result folders' cells::

    dogo select 0.5=results/temperature_cnn_12:small_alone 0.2=results/temperature_cnn_12:alone_tau02 \\
        0.1=results/temperature_low_cnn_12:alone_tau01 --baseline 0.5 --seeds 0-7
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import numpy as np

from .cli import SeedList
from .errors import DogoError

Options = Mapping[str, Mapping[int, float]]
VALIDATION = ("linear", "fast", "val_top1")  # the linear probe's held-out split of the training images
TEST_MEASURES = (("knn", "k=200 T=0.1"), ("linear", "fast"))


def shared_seeds(values: Options) -> list[int]:
    """The seeds every option has, sorted; an error names the options when there are none."""
    if not values:
        raise DogoError("no options to choose from")
    seeds = sorted(set.intersection(*(set(v) for v in values.values())))
    if not seeds:
        raise DogoError(f"the options {', '.join(values)} share no seed")
    return seeds


def choose_per_seed(validation: Options) -> dict[int, str]:
    """{seed: the option with the highest validation value on that seed}, over the seeds all options share."""
    return {s: max(validation, key=lambda option: validation[option][s]) for s in shared_seeds(validation)}


def mean_over_shared_seeds(values: Options) -> dict[str, float]:
    """{option: mean of its values over the seeds all options share}."""
    seeds = shared_seeds(values)
    return {option: float(np.mean([v[s] for s in seeds])) for option, v in values.items()}


def choose_over_seeds(validation: Options) -> str:
    """The option with the highest mean validation value over the seeds all options share."""
    means = mean_over_shared_seeds(validation)
    return max(means, key=means.get)


def chosen_test_values(test: Options, choice: Mapping[int, str]) -> dict[int, float]:
    """{seed: test value of the option chosen for that seed}; a seed whose choice has no test value is an error."""
    missing = [s for s, option in choice.items() if s not in test.get(option, {})]
    if missing:
        raise DogoError(f"no test value for the chosen option on seeds {missing}")
    return {s: test[option][s] for s, option in choice.items()}


# ============================================================================ command line


def _parse_option(text: str) -> tuple[str, str, str]:
    name, sep, where = text.partition("=")
    folder, sep2, cell = where.rpartition(":")
    if not (sep and sep2 and name and folder and cell):
        raise DogoError(f"option {text!r}: expected NAME=RESULT_FOLDER:CELL, "
                        "e.g. 0.2=results/temperature_cnn_12:alone_tau02")
    return name, folder, cell


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dogo select`` subcommand."""
    parser.description = ("Choose among a sweep's cells on the linear probe's validation split (per seed and over "
                          "seeds), then read the choice's test accuracy against a baseline option.")
    parser.add_argument("options", nargs="+", metavar="NAME=RESULT_FOLDER:CELL",
                        help="one option of the sweep: a cell of a result folder")
    parser.add_argument("--baseline", required=True, metavar="NAME", help="the option the choice is compared with")
    parser.add_argument("--peer", default=None, help="the peer to read (default: the cells' only or first peer)")
    parser.add_argument("--seeds", default=None, action=SeedList, help="only these run seeds (default: all shared)")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    from .predictions import format_interval
    from .results import load_results, series_of
    from .stats import paired_difference

    options = [_parse_option(o) for o in args.options]
    names = [name for name, _, _ in options]
    if len(set(names)) != len(names):
        raise DogoError(f"option names must differ, got {names}")
    if args.baseline not in names:
        raise DogoError(f"--baseline {args.baseline!r} is not one of the options {names}")
    keep = None if args.seeds is None else set(args.seeds)
    tables = {folder: series_of(load_results(folder).table) for folder in dict.fromkeys(f for _, f, _ in options)}

    def series(name: str, folder: str, cell: str, protocol: str, setting: str, metric: str) -> dict[int, float]:
        found = {k: v for k, v in tables[folder].items() if k[0] == cell and k[2:] == (protocol, setting, metric)}
        peers = [k[1] for k in found]
        if not peers:
            raise DogoError(f"{name}: no {protocol} {setting} {metric} of cell {cell} in {folder}")
        peer = args.peer or peers[0]
        if (cell, peer, protocol, setting, metric) not in found:
            raise DogoError(f"{name}: cell {cell} in {folder} has no peer {peer!r} (it has {', '.join(peers)})")
        return {s: v for s, v in found[(cell, peer, protocol, setting, metric)].items() if keep is None or s in keep}

    validation = {name: series(name, folder, cell, *VALIDATION) for name, folder, cell in options}
    per_seed = choose_per_seed(validation)
    seeds = sorted(per_seed)
    overall = choose_over_seeds(validation)
    means = mean_over_shared_seeds(validation)
    print(f"seeds {', '.join(map(str, seeds))}; validation: the linear probe's held-out split of the training images")
    print("mean validation top-1: " + ", ".join(f"{name} {means[name]:.2f}" for name in names))
    print(f"chosen over seeds: {overall}; chosen per seed: "
          + ", ".join(f"{s}: {per_seed[s]}" for s in seeds))
    for protocol, setting in TEST_MEASURES:
        test = {name: series(name, folder, cell, protocol, setting, "top1") for name, folder, cell in options}
        base = test[args.baseline]
        for label, choice in (("per seed", per_seed), (f"over seeds ({overall})", dict.fromkeys(seeds, overall))):
            d = paired_difference(base, chosen_test_values(test, choice))
            print(f"{protocol} test top-1, chosen {label} - {args.baseline}: {format_interval(d, 'top1')} ({d.n} seeds)")
    return 0


__all__ = ["choose_per_seed", "choose_over_seeds", "chosen_test_values", "mean_over_shared_seeds", "shared_seeds"]
