"""The ``dogo`` command line.

    dogo train --config-file configs/template.yaml [key=value ...]   # as the authors' train.py
    dogo train --resume runs/NAME                                    # continue a run
    dogo eval runs/NAME [--protocols ...]                            # evaluate every peer
    dogo quickstart                                                  # SimCLR alone vs DoGo, Fashion-MNIST
    dogo notebooks [--smoke]                                         # run the notebooks with papermill
    dogo grid configs/grids/cpu_fmnist_cnn.yaml [--dry-run]          # a resumable reproduction grid
    dogo report results/cpu_fmnist_cnn [--readme README.md]          # its tables, intervals and figures
    dogo ledger [--readme STUDY.md]                                  # every grid's predictions and verdicts
    dogo select 0.5=results/G:cell_a 0.2=results/G:cell_b --baseline 0.5  # choose on validation, read the test

User mistakes (bad config, missing data, broken checkpoint) print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import DogoError


class SeedList(argparse.Action):
    """``--seeds 0 1 2``, ``--seeds 0,1,2`` or ``--seeds 0-2``: every command that takes seeds reads these forms,
    and mixes of them (``--seeds 0-2,5 7``)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs="+", metavar="SEED", **kwargs)

    @staticmethod
    def parse(values: list[str]) -> list[int]:
        """The seeds ``values`` name, in order and without repeats; [] when any part is not a seed or a range."""
        seeds: list[int] = []
        for part in (p.strip() for value in values for p in value.split(",")):
            if not part:
                continue
            low, dash, high = part.partition("-")
            if not (low.isdigit() and (high.isdigit() if dash else True)) or (dash and int(high) < int(low)):
                return []
            seeds.extend(range(int(low), int(high if dash else low) + 1))
        return list(dict.fromkeys(seeds))

    def __call__(self, parser, namespace, values, option_string=None):
        seeds = self.parse(values)
        if not seeds:
            parser.error(f"argument {option_string}: expected integer seeds, e.g. 3 4, 3,4 or 3-7; "
                         f"got {' '.join(values)!r}")
        setattr(namespace, self.dest, seeds)


def _train(args: argparse.Namespace) -> int:
    from .train import resume, train

    kwargs = {"progress": False} if args.no_progress else {}
    if args.resume:
        if args.config_file or args.overrides:
            raise DogoError("--resume continues a run with its own config.yaml; drop --config-file and overrides")
        result = resume(args.resume, **kwargs)
        if result.get("already_finished"):
            print(f"{args.resume} already finished all its epochs")
            return 0
    else:
        result = train(args.config_file, run_dir=args.run_dir, overrides=args.overrides, **kwargs)
    if result.get("interrupted"):
        return 130
    from .distributed import cleanup, rank

    if rank() == 0:  # under torchrun every process returns the same result; print it once
        _print_summary(result)
    cleanup()  # leave the process group (torchrun) before exit, as NCCL asks
    return 0


def _print_summary(result: dict) -> None:
    print(f"run folder: {result['run_dir']}")
    for name, m in result.get("peers", {}).items():
        knn = f", kNN top-1 {m['knn_top1']:.2f} %" if "knn_top1" in m else ""
        print(f"  {name}: loss {m['total_loss']:.4f} (ssl {m['ssl_loss']:.4f}, distill {m['distill_loss']:.4f}){knn}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dogo", description="Distill on the Go: SimCLR/SimSiam with online "
                                     "mutual similarity distillation between peers of different sizes.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model (baseline) or a DoGo cohort from a YAML config")
    p.add_argument("--config-file", "--config", dest="config_file", help="YAML config (see configs/)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--run-dir", help="write the run here instead of output_dir/NAME-TIMESTAMP")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.epochs=5 peers.0.width=32")
    p.set_defaults(func=_train)

    # Each subcommand's module adds its own arguments; all import only the core dependencies at load time.
    for name, module, help_text in (
        ("quickstart", "quickstart", None),
        ("eval", "evaluate", "evaluate every peer of one or more runs"),
        ("notebooks", "notebooks", "execute the notebooks with papermill"),
        ("grid", "grid", "run a reproduction-study grid, one JSON per (cell, seed)"),
        ("report", "report", "tables, paired differences and figures of a grid's results"),
        ("ledger", "ledger", "every prediction of the grid files, with its verdict"),
        ("select", "selection", "choose among a sweep's cells on validation data, read the choice on the test set"),
        ("position", "position", "are the two networks of a pair alike? second minus first over committed runs"),
    ):
        module = importlib.import_module(f".{module}", __package__)
        module.add_arguments(sub.add_parser(name, help=help_text or module.__doc__.splitlines()[0]))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except DogoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader closed our output early (`dogo ledger | head`): what it read is all it wanted. Point
        # stdout at /dev/null so that the interpreter's final flush does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
