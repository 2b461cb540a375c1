"""What a grid file says: the seeds, the evaluation, the comparisons, the cells, and what is predicted.

A grid file (YAML, validated like a run config) names the seeds, the evaluation (protocols and the
settings passed to ``dogo.evaluate.evaluate_run``), optional comparisons for ``dogo report`` and the
cells, each a run config with overrides::

    name: cpu_fmnist_cnn
    seeds: [0, 1, 2]
    eval: {protocols: [knn, linear], limit: 5000, seeds: [0, 1, 2]}
    compare:
      - {label: "small CNN: DoGo - alone", baseline: small_alone/small, treatment: dogo/small}
    cells:
      - {name: small_alone, config: configs/fashion_mnist_quick.yaml, overrides: ["peers=[...]"], estimate_s: 120}

A confirmation grid runs an earlier grid's cells on fresh seeds and states, before they run, what they
should show; ``dogo report`` gives each prediction its verdict beside the earlier grid's interval::

    confirms: cpu_fmnist_cnn
    predictions:
      - {comparison: "large CNN: DoGo - alone", protocol: corruptions, setting: mean, expect: lower}

A grid of new cells names, per prediction, the earlier committed difference its power was planned on
(``sized_on``; the ledger and the report compute that power from it)::

    predictions:
      - {comparison: "small CNN: DoGo at 0.2 - alone at 0.2", protocol: knn, expect: higher,
         sized_on: {grid: peer_width_cnn_12, baseline: small_alone/small, treatment: dogo/small}}

``load_grid`` checks all of it at once (every cell's config is resolved), so that a wrong key, type or
value fails before anything runs, with one ``ConfigError`` that names it. Running a grid is
``dogo.grid``'s.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .config import SPEED_ONLY, Config, build_validated, load_config
from .errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class CellSpec:
    name: str
    config: str  # a run config, relative to the repository
    overrides: list[str] = field(default_factory=list)  # key=value, as `dogo train`
    estimate_s: float | None = field(default=None, metadata={"rules": {"ge": 0.0}})


@dataclass
class CompareSpec:
    baseline: str  # "cell/peer"
    treatment: str  # "cell/peer"
    label: str = ""

    @property
    def sides(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """((baseline cell, peer), (treatment cell, peer))."""
        (bc, _, bp), (tc, _, tp) = self.baseline.partition("/"), self.treatment.partition("/")
        return (bc, bp), (tc, tp)


@dataclass
class SizedOnSpec:
    """The earlier paired difference a prediction's power was planned on, when it is not the confirmed grid's own
    comparison: ``treatment - baseline`` ("cell/peer") on the same measure, in the committed results of grid
    ``grid`` (``results/<grid>``), over ``seeds`` (default: every seed both sides have)."""

    grid: str
    baseline: str  # "cell/peer"
    treatment: str  # "cell/peer"
    seeds: list[int] = field(default_factory=list)


@dataclass
class PredictionSpec:
    """A result expected before the seeds ran: one comparison's paired difference on one measure."""

    comparison: str  # the label of one of the grid's comparisons
    protocol: str  # knn, linear, limited, noisy, transfer, corruptions, tsne
    expect: Literal["lower", "higher", "within_noise"]  # the treatment below, above, or not apart from the baseline
    setting: str = ""  # e.g. "1% labels" or "mean"; may be left out where the protocol has one headline setting
    sized_on: SizedOnSpec | None = None  # where the expected size (and so the power) came from, if not `confirms`


@dataclass
class GridSpec:
    name: str
    seeds: list[int]
    cells: list[CellSpec]
    eval: dict[str, Any] = field(default_factory=dict)  # checked by _resolve_eval
    compare: list[CompareSpec] = field(default_factory=list)
    # What `dogo report --readme` puts in the README: "tables" (means and paired differences, as
    # REPORT.md) or "differences" (one row of paired differences per comparison: many comparisons).
    readme: Literal["tables", "differences"] = "tables"
    # A confirmation: the grid whose findings these (fresh) seeds test, and what they are predicted to show;
    # `dogo report` sets each prediction's interval beside that grid's and says whether it held.
    confirms: str = ""
    predictions: list[PredictionSpec] = field(default_factory=list)


@dataclass
class Grid:
    """A validated grid: the spec, each cell's config per seed, and the resolved evaluation settings."""

    spec: GridSpec
    path: Path | None
    eval_kwargs: dict[str, Any]  # passed to evaluate_run
    eval_settings: dict[str, Any]  # what a result records and must match (every setting, defaults filled)
    speed: list[str] = field(default_factory=list)  # speed-only overrides applied to every cell (--speed)

    @property
    def name(self) -> str:
        return self.spec.name

    def cell(self, name: str) -> CellSpec:
        return next(c for c in self.spec.cells if c.name == name)

    def config(self, cell: str | CellSpec, seed: int) -> Config:
        spec = self.cell(cell) if isinstance(cell, str) else cell
        path = Path(spec.config)
        return load_config(path if path.is_absolute() else REPO / path, [*spec.overrides, *self.speed, f"seed={seed}"])

    def with_speed(self, settings: list[str]) -> Grid:
        """This grid with speed-only overrides (``train.compile=true`` ...) on every cell: the same
        experiments, run faster; any other key is refused."""
        for item in settings:
            key = item.partition("=")[0].strip()
            if "=" not in item or key not in SPEED_ONLY:
                raise ConfigError(f"--speed: {item!r} is not KEY=VALUE with a speed-only key; those are "
                                  f"{', '.join(SPEED_ONLY)} (other settings make other experiments: edit the grid file)")
        grid = dataclasses.replace(self, speed=[*self.speed, *settings])
        for cell in grid.spec.cells:  # a wrong value fails now, not in the middle of the grid
            grid.config(cell, grid.spec.seeds[0])
        return grid

    def jobs(self) -> list[tuple[str, int]]:
        """Every (cell, seed), seed by seed, so that the first seeds of all cells finish first."""
        return [(c.name, s) for s in self.spec.seeds for c in self.spec.cells]


def _check_name(value: str, key: str) -> None:
    if not _NAME.match(value):
        raise ConfigError(f"{key}: {value!r} must be letters, digits, '_', '-' or '.' (it names files)")


def _resolve_eval(data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the ``eval`` section with the evaluation's own rules; return (kwargs, recorded settings)."""
    from .evaluate import PROTOCOLS, EvalSettings, check_protocols

    if not isinstance(data, dict):
        raise ConfigError(f"eval: expected a mapping of evaluation settings, got {data!r}")
    kwargs = dict(data)
    protocols = kwargs.pop("protocols", list(PROTOCOLS))
    if isinstance(protocols, str):
        protocols = [protocols]
    if not isinstance(protocols, list) or not all(isinstance(p, str) for p in protocols):
        raise ConfigError(f"eval.protocols: expected a list of protocol names, got {protocols!r}")
    protocols = list(PROTOCOLS) if "all" in protocols else protocols
    limit = kwargs.pop("limit", None)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
        raise ConfigError(f"eval.limit: expected an integer or null, got {limit!r}")
    seeds = kwargs.pop("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"eval.seeds: expected a list of integers, got {seeds!r}")
    for key in ("device", "out_dir", "progress", "figures", "dataset", "cache"):
        if key in kwargs:
            raise ConfigError(f"eval.{key}: set by the grid runner, not by the grid file")
    if limit is not None and limit < 20:
        raise ConfigError(f"eval.limit: need at least 20 images per split, got {limit}")
    if not seeds:
        raise ConfigError("eval.seeds: give at least one seed")
    fields = {f.name: f.default for f in dataclasses.fields(EvalSettings)}
    build_validated(EvalSettings, kwargs, "eval")
    try:
        protocols = list(check_protocols(protocols))
    except ConfigError as exc:
        raise ConfigError(f"eval.{exc}") from None
    settings = {k: v for k, v in fields.items() if k != "cache"}
    settings.update(kwargs)
    recorded = json.loads(json.dumps({"protocols": protocols, "limit": limit, "seeds": seeds, **settings},
                                     default=list))
    return {"protocols": protocols, "limit": limit, "seeds": seeds, **kwargs}, recorded


def load_grid(path: str | Path | None = None, data: dict[str, Any] | None = None) -> Grid:
    """Read and validate a grid file (or plain ``data``): every cell's config is resolved for the
    first seed, so a bad key anywhere fails here with one ``ConfigError`` naming it."""
    if data is None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"grid file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"grid file {str(path)!r} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"grid: expected a mapping at the top level, got {type(data).__name__}")
    for key in ("name", "seeds", "cells"):
        if key not in data:
            raise ConfigError(f"{key}: missing (a grid names its name, seeds and cells)")
    data = dict(data)
    eval_data = data.pop("eval", {})
    spec = build_validated(GridSpec, data)
    spec.eval = eval_data
    _check_name(spec.name, "name")
    if not spec.seeds:
        raise ConfigError("seeds: give at least one seed")
    if len(set(spec.seeds)) != len(spec.seeds) or min(spec.seeds) < 0:
        raise ConfigError(f"seeds: must be distinct non-negative integers, got {spec.seeds}")
    if not spec.cells:
        raise ConfigError("cells: give at least one cell")
    names = [c.name for c in spec.cells]
    for i, name in enumerate(names):
        _check_name(name, f"cells[{i}].name")
        if names.index(name) != i:
            raise ConfigError(f"cells[{i}].name: {name!r} is used twice")
    eval_kwargs, eval_settings = _resolve_eval(spec.eval)
    grid = Grid(spec, Path(path) if path is not None else None, eval_kwargs, eval_settings)
    peers = {}
    for i, cell in enumerate(spec.cells):
        try:
            cfg = grid.config(cell, spec.seeds[0])
        except ConfigError as exc:
            raise ConfigError(f"cells[{i}] ({cell.name}): {exc}") from None
        peers[cell.name] = [p.name for p in cfg.peers]
    for i, pair in enumerate(spec.compare):
        for side in ("baseline", "treatment"):
            ref = getattr(pair, side)
            cell, _, peer = ref.partition("/")
            if cell not in peers:
                raise ConfigError(f"compare[{i}].{side}: no cell {cell!r}; cells are {', '.join(peers)}")
            if peer not in peers[cell]:
                raise ConfigError(f"compare[{i}].{side}: cell {cell!r} has no peer {peer!r} "
                                  f"(write cell/peer; its peers are {', '.join(peers[cell])})")
        if not pair.label:
            pair.label = f"{pair.treatment} - {pair.baseline}"
    _check_predictions(spec, eval_settings["protocols"])
    return grid


def _check_predictions(spec: GridSpec, protocols: list[str]) -> None:
    if spec.confirms:
        _check_name(spec.confirms, "confirms")
        if spec.confirms == spec.name:
            raise ConfigError("confirms: a grid confirms another grid's findings, not its own")
    labels = [pair.label for pair in spec.compare]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"compare: labels must be unique, got {labels}")
    seen = set()
    for i, prediction in enumerate(spec.predictions):
        if prediction.comparison not in labels:
            raise ConfigError(f"predictions[{i}].comparison: no comparison labelled {prediction.comparison!r}; "
                              f"the grid's are {', '.join(map(repr, labels)) or 'none'}")
        if prediction.protocol not in protocols:
            raise ConfigError(f"predictions[{i}].protocol: {prediction.protocol!r} is not one of the grid's "
                              f"protocols ({', '.join(protocols)})")
        if prediction.sized_on is not None:
            _check_sized_on(prediction.sized_on, f"predictions[{i}].sized_on")
        key = (prediction.comparison, prediction.protocol, prediction.setting)
        if key in seen:
            measure = f"{prediction.protocol} {prediction.setting}".strip()
            raise ConfigError(f"predictions[{i}]: {prediction.comparison!r} on {measure} is predicted twice")
        seen.add(key)


def _check_sized_on(sized: SizedOnSpec, where: str) -> None:
    _check_name(sized.grid, f"{where}.grid")
    for side in ("baseline", "treatment"):
        cell, slash, peer = getattr(sized, side).partition("/")
        if not (slash and cell and peer):
            raise ConfigError(f"{where}.{side}: expected cell/peer, e.g. small_alone/small, got {getattr(sized, side)!r}")
    if len(set(sized.seeds)) != len(sized.seeds) or any(s < 0 for s in sized.seeds):
        raise ConfigError(f"{where}.seeds: must be distinct non-negative integers, got {sized.seeds}")


__all__ = ["Grid", "GridSpec", "CellSpec", "CompareSpec", "PredictionSpec", "SizedOnSpec", "load_grid", "REPO"]
