"""Typed run configuration: dataclasses, loaded from YAML, validated at start.

Every mistake fails before any work with one ``ConfigError`` that names the key, e.g.
``peers[1].distill_weight: must be >= 0, got -1.0`` or
``train.epohcs: unknown key (did you mean 'epochs'?)``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError, did_you_mean

BACKBONES = ("cnn", "resnet18", "resnet34", "resnet50")
OBJECTIVES = ("simclr", "simsiam")
DISTILL_TARGETS = ("peers", "uniform")
DATASETS = ("fashion_mnist", "digits", "cifar10", "cifar100", "cifar10_imbalanced", "stl10", "tiny_imagenet")


def validate(**rules: Any) -> dict[str, Any]:
    """Validation rules stored in a field's metadata: gt, ge, lt, le, choices (applied to every item
    of a tuple)."""
    return {"rules": rules}


@dataclass
class DataConfig:
    dataset: str = field(default="fashion_mnist", metadata=validate(choices=DATASETS))
    root: str | None = None  # folder holding the dataset files; None searches $DOGO_DATA, data/, system paths
    image_size: int = field(default=28, metadata=validate(ge=8))
    limit: int | None = field(default=None, metadata=validate(ge=2))  # train on the first `limit` images
    eval_limit: int | None = field(default=None, metadata=validate(ge=2))  # kNN monitor bank/query size
    download: bool = False


@dataclass
class AugmentConfig:
    crop_scale_min: float = field(default=0.08, metadata=validate(gt=0.0, le=1.0))
    flip: bool = True
    jitter_strength: float | None = field(default=None, metadata=validate(ge=0.0))  # None: per objective
    jitter_prob: float = field(default=0.8, metadata=validate(ge=0.0, le=1.0))
    grayscale_prob: float = field(default=0.2, metadata=validate(ge=0.0, le=1.0))
    # The authors' SimSiam transform applies RandomGrayscale(grayscale_prob) twice (inside the colour
    # distortion and after it): an effective probability of 1 - (1 - p)^2, 0.36 for p = 0.2.
    simsiam_grayscale_twice: bool = False
    blur: bool | None = None  # None: only at image_size >= 224, as in SimCLR
    share_views: bool = False  # True: all peers see the same two views (the method gives each its own)
    # Another stream of random views with everything else equal (initial weights, data order): two runs
    # that differ only here differ by chance alone, the null comparison of a paired study.
    view_seed: int = field(default=0, metadata=validate(ge=0))


@dataclass
class PeerConfig:
    name: str = "model"
    backbone: str = field(default="cnn", metadata=validate(choices=BACKBONES))
    width: int = field(default=32, metadata=validate(ge=1))  # cnn only: channels of the first block
    objective: str = field(default="simclr", metadata=validate(choices=OBJECTIVES))
    temperature: float = field(default=0.5, metadata=validate(gt=0.0))  # NT-Xent temperature (SimCLR)
    projection_dim: int | None = field(default=None, metadata=validate(ge=1))  # None: 128 SimCLR, 2048 SimSiam
    hidden_dim: int = field(default=512, metadata=validate(ge=1))  # SimCLR projector hidden width
    predictor_hidden_dim: int = field(default=512, metadata=validate(ge=1))  # SimSiam bottleneck
    distill_weight: float = field(default=1.0, metadata=validate(ge=0.0))  # weight of KL towards each peer
    lr: float | None = field(default=None, metadata=validate(gt=0.0))  # None: train.lr
    # True: the peer's weights never change (from scratch, a fixed random network). It still gives the
    # others its similarity distribution; BatchNorm normalises with batch statistics, as in every peer.
    frozen: bool = False
    # What the peer distils towards: "peers" (the others' similarity distributions, the method) or
    # "uniform" (a control: a target that holds no information, every image equally similar; it
    # replaces the others, who still distil from this peer). Weighted by distill_weight either way.
    distill_target: str = field(default="peers", metadata=validate(choices=DISTILL_TARGETS))


@dataclass
class DistillConfig:
    temperature: float = field(default=0.1, metadata=validate(gt=0.0))
    reduction: Literal["batchmean", "mean"] = "batchmean"


@dataclass
class TrainConfig:
    epochs: int = field(default=10, metadata=validate(ge=1))
    batch_size: int = field(default=256, metadata=validate(ge=2))
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = field(default=3e-4, metadata=validate(gt=0.0))
    # The lr above is for `lr_reference_batch` images per step; other batch sizes scale it.
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    lr_reference_batch: int = field(default=256, metadata=validate(ge=1))
    weight_decay: float = field(default=1e-6, metadata=validate(ge=0.0))
    momentum: float = field(default=0.9, metadata=validate(ge=0.0, le=1.0))
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = field(default=0.0, metadata=validate(ge=0.0))
    min_lr_ratio: float = field(default=0.0, metadata=validate(ge=0.0, le=1.0))
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA, off elsewhere
    # How both views pass through each network: "joint" (one pass over 2B images, BatchNorm statistics
    # over 2B; the default because one pass is faster) or "per_view" (one pass per view, statistics over
    # B and running statistics updated twice per step, as the authors' code does).
    bn_views: Literal["joint", "per_view"] = "joint"
    channels_last: bool = True
    compile: bool = False  # torch.compile (see compile_scope)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"  # reduce-overhead: CUDA graphs
    # What one compiled graph holds: "model" (each peer's forward on its own) or "step" (every peer's
    # forward and the cohort's losses, so the backward is one graph too; augmentation stays eager).
    compile_scope: Literal["model", "step"] = "model"
    fused_optimizer: Literal["auto", "on", "off"] = "auto"  # auto: one fused kernel per step on CUDA
    sync_batchnorm: bool = False
    checkpoint_every: int = field(default=1, metadata=validate(ge=1))  # epochs
    checkpoint_every_steps: int | None = field(default=None, metadata=validate(ge=1))
    log_every: int = field(default=50, metadata=validate(ge=1))  # steps between finiteness checks
    knn_every: int = field(default=1, metadata=validate(ge=0))  # epochs; 0 turns the monitor off
    knn_k: int = field(default=200, metadata=validate(ge=1))
    knn_temperature: float = field(default=0.1, metadata=validate(gt=0.0))
    progress: bool = True
    deterministic: bool = False
    # Where the run's random streams start. "shared" (every result recorded before this setting existed):
    # torch's global generator, the data subset, the data order and the views are all seeded with `seed`,
    # so the first peer's initial weights are drawn from the very numbers that also order the data and
    # crop the first views. "independent": each stream (each peer's initial weights, the data subset, the
    # data order, the views) starts from its own seed derived from (seed, stream), so no two share numbers
    # and a peer's initial weights depend on its seed and position only (`dogo.train.stream_seed`).
    rng_streams: Literal["shared", "independent"] = "shared"


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    peers: list[PeerConfig] = field(default_factory=lambda: [PeerConfig()])
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Building a typed config from plain data, with one clear message per mistake


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


_YAML_BOOL_WORDS = {True: ("on", "yes", "true"), False: ("off", "no", "false")}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        others = [arg for arg in args if arg is not type(None)]
        if len(others) == 1:  # X | None: the error X gives names the wrong key or value, not the union
            return _coerce(value, others[0], key)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on/no/yes as a boolean
            value = next((c for c in choices if str(c).lower() in _YAML_BOOL_WORDS[value]), value)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:  # tuple[X, ...]: a list, tuple or single value
        (item_tp, *_) = typing.get_args(tp)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(items))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _apply_rules(value: Any, rules: dict[str, Any], key: str) -> None:
    if value is None:
        return
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            _apply_rules(item, rules, f"{key}[{i}]")
        return
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigError(f"{key}: unknown value {value!r}{did_you_mean(value, rules['choices'])}; "
                          f"choose from {', '.join(map(str, rules['choices']))}")
    if "gt" in rules and not value > rules["gt"]:
        raise ConfigError(f"{key}: must be > {rules['gt']}, got {value}")
    if "ge" in rules and not value >= rules["ge"]:
        raise ConfigError(f"{key}: must be >= {rules['ge']}, got {value}")
    if "lt" in rules and not value < rules["lt"]:
        raise ConfigError(f"{key}: must be < {rules['lt']}, got {value}")
    if "le" in rules and not value <= rules["le"]:
        raise ConfigError(f"{key}: must be <= {rules['le']}, got {value}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            hint = did_you_mean(k, fields) or f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{prefix + '.' if prefix else ''}{k}: unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: missing (it has no default)")
            continue
        value = _coerce(data[name], hints[name], key)
        _apply_rules(value, f.metadata.get("rules", {}), key)
        kwargs[name] = value
    return cls(**kwargs)


def build_validated(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """An instance of the settings dataclass ``cls`` from plain data, every key, type and rule checked
    (one ``ConfigError`` naming the key, ``prefix`` before it)."""
    return _build(cls, data, prefix)


def _check_whole(cfg: Config) -> Config:
    if not cfg.peers:
        raise ConfigError("peers: at least one peer is needed")
    if all(p.frozen for p in cfg.peers):
        raise ConfigError("peers: every peer is frozen; at least one must train")
    names = [p.name for p in cfg.peers]
    if len(set(names)) != len(names):
        raise ConfigError(f"peers: names must be unique, got {names}")
    for i, p in enumerate(cfg.peers):
        if p.backbone == "cnn" and cfg.data.image_size < 8:
            raise ConfigError(f"peers[{i}].backbone: the cnn needs data.image_size >= 8")
        if p.backbone.startswith("resnet") and cfg.data.image_size < 16:
            raise ConfigError(
                f"data.image_size: {p.backbone} needs images of at least 16 px, got {cfg.data.image_size}"
            )
    if cfg.data.limit is not None and cfg.data.limit < cfg.train.batch_size:
        raise ConfigError(
            f"data.limit: {cfg.data.limit} images give no full batch of train.batch_size={cfg.train.batch_size}"
        )
    if cfg.device not in ("auto", "cpu", "mps") and not cfg.device.startswith("cuda"):
        raise ConfigError(f"device: must be auto, cpu, mps or cuda[:N], got {cfg.device!r}")
    return cfg


def from_dict(data: dict[str, Any] | None) -> Config:
    """Build and validate a Config from plain data (as read from YAML)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    return _check_whole(_build(Config, data))


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


_ABSENT = object()


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (``peers.0.width=64`` for list items) to plain config data."""
    data = copy.deepcopy(data) if data else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=5")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=5")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{where}: no list item {part!r} (there are {len(node)})")
                node = node[int(part)]
            elif isinstance(node, dict):
                if part not in node or node[part] is None:
                    sub: Any = Config().to_dict()
                    for p in parts[: i + 1]:
                        sub = sub.get(p, _ABSENT) if isinstance(sub, dict) else _ABSENT
                    # An unknown section is kept (empty) so that validation names it with a suggestion.
                    node[part] = sub if isinstance(sub, (dict, list)) else {} if sub is _ABSENT else sub
                node = node[part]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"{where}: is a single setting, not a section (write {where}=VALUE)")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"{path}: no list item {last!r}")
            node[int(last)] = _parse_scalar(text)
        else:
            node[last] = _parse_scalar(text)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = _parse_config_text(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}".splitlines()[0]) from None
    return from_dict(apply_overrides(data, overrides or []))  # a copy: the cached data stays as read


@functools.lru_cache(maxsize=32)
def _parse_config_text(text: str) -> Any:
    """A config file's YAML, parsed once per distinct text: a grid's report builds one config per result,
    hundreds from the same few files, and parsing is most of that time. Keyed by the text itself, so an
    edited file is parsed again; callers copy before they change it (``apply_overrides``)."""
    return yaml.safe_load(text) or {}


def load_config_from(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with ``key=value`` overrides applied, validated again."""
    return from_dict(apply_overrides(cfg.to_dict(), overrides))


def baseline_of(cfg: Config) -> Config:
    """The same run with only the first peer: SimCLR (or SimSiam) alone, nothing to distil from (so no
    uniform target either) and trained (were it frozen)."""
    data = cfg.to_dict()
    data["peers"] = [{**data["peers"][0], "distill_target": "peers", "frozen": False}]
    data["name"] = f"{cfg.name}_alone"
    return from_dict(data)


# ---------------------------------------------------------------------------------------------
# Comparing configs

NOT_AFFECTING_RESULTS = ("name", "device", "output_dir", "data.root", "data.download", "train.progress",
                         "train.log_every", "train.checkpoint_every", "train.checkpoint_every_steps")
# Settings that change how fast a run goes but not what it computes, beyond float rounding (bounded by
# tests/test_compile.py): a config hash counts them at their defaults, so a grid can switch them on
# (`dogo grid --speed`) without its results becoming other experiments. The device is such a setting too.
SPEED_ONLY = ("train.compile", "train.compile_mode", "train.compile_scope", "train.fused_optimizer",
              "train.channels_last")
# Settings added after results were recorded, with the value that reproduces the earlier behaviour: a
# config hash leaves them out at that value, so adding a setting does not make every result stale.
# A per-peer setting is named with ``*`` for the peer's index.
ADDED_SETTINGS_DEFAULTS = {"train.compile_scope": "model", "augment.view_seed": 0, "peers.*.frozen": False,
                           "peers.*.distill_target": "peers", "train.rng_streams": "shared"}


def is_added_setting_at_default(key: str, value: Any) -> bool:
    """Whether the flattened setting ``key`` (``peers.1.frozen``) is one of ``ADDED_SETTINGS_DEFAULTS``
    at the value that reproduces the behaviour from before it existed."""
    parts = key.split(".")
    if parts[0] == "peers" and len(parts) == 3 and parts[1].isdigit():
        key = f"peers.*.{parts[2]}"
    return key in ADDED_SETTINGS_DEFAULTS and ADDED_SETTINGS_DEFAULTS[key] == value


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list):
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}.{i}"))
        return out if data else {prefix: []}
    return {prefix: data}


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys (``train.epochs``, ``peers.1.width``) whose values differ between two config dicts,
    ignoring the settings in ``NOT_AFFECTING_RESULTS``; ``{key: (value in a, value in b)}``."""
    fa, fb = flatten(a), flatten(b)
    missing = object()
    out = {}
    for key in sorted(set(fa) | set(fb)):
        if key in NOT_AFFECTING_RESULTS:
            continue
        va, vb = fa.get(key, missing), fb.get(key, missing)
        if va != vb:
            out[key] = (None if va is missing else va, None if vb is missing else vb)
    return out
