"""Config: defaults, YAML loading, overrides, and one clear one-line ConfigError per mistake."""

from __future__ import annotations

import pytest

from dogo import Config, ConfigError, load_config
from dogo.config import BACKBONES, DATASETS, OBJECTIVES, PeerConfig, _parse_config_text, apply_overrides, from_dict


def config_error(data=None, overrides=None) -> str:
    """The message of the ConfigError that ``data`` (and ``overrides``) give; fails if none is raised."""
    with pytest.raises(ConfigError) as info:
        from_dict(apply_overrides(data or {}, overrides or []))
    message = str(info.value)
    assert "\n" not in message, message
    return message


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------- defaults and YAML


def test_defaults_are_valid_and_match_the_method():
    cfg = load_config()
    assert cfg == Config()
    assert from_dict(None) == Config() and from_dict({}) == Config()
    assert cfg.data.dataset == "fashion_mnist" and cfg.data.dataset in DATASETS
    assert len(cfg.peers) == 1 and cfg.peers[0].backbone in BACKBONES and cfg.peers[0].objective in OBJECTIVES
    assert cfg.train.lr == 3e-4 and cfg.train.weight_decay == 1e-6 and cfg.train.batch_size == 256
    assert cfg.distill.temperature == 0.1 and cfg.distill.reduction == "batchmean"
    assert cfg.peers[0].temperature == 0.5


def test_yaml_file_is_loaded(tmp_path):
    path = write(tmp_path, """
name: pair
data: {dataset: digits, image_size: 16}
peers:
  - {name: small, width: 8, distill_weight: 2}
  - {name: big, width: 32, objective: simsiam}
train: {epochs: 3, batch_size: 64}
distill: {reduction: mean}
""")
    cfg = load_config(path)
    assert cfg.name == "pair" and cfg.data.dataset == "digits" and cfg.data.image_size == 16
    assert [p.name for p in cfg.peers] == ["small", "big"]
    assert cfg.peers[0] == PeerConfig(name="small", width=8, distill_weight=2.0)
    assert isinstance(cfg.peers[0].distill_weight, float)
    assert cfg.peers[1].objective == "simsiam" and cfg.peers[1].width == 32
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 64 and cfg.distill.reduction == "mean"


def test_yaml_exponent_without_dot_is_coerced_to_float(tmp_path):
    # YAML 1.1 reads 3e-4 (no dot) as the string "3e-4".
    cfg = load_config(write(tmp_path, "train:\n  lr: 3e-4\n  weight_decay: 1e-6\npeers:\n  - {lr: 1e-3}\n"))
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == 1e-6
    assert cfg.peers[0].lr == 1e-3


def test_empty_yaml_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


def test_round_trip_to_yaml_and_back(tmp_path):
    cfg = load_config(None, ["name=rt", "data.dataset=digits", "data.limit=300", "train.batch_size=32",
                             "train.lr=0.001", "augment.blur=true", "augment.jitter_strength=0.5",
                             "peers=[{name: a, width: 8}, {name: b, objective: simsiam, projection_dim: 64}]"])
    assert len(cfg.peers) == 2 and cfg.peers[1].projection_dim == 64
    again = load_config(write(tmp_path, cfg.to_yaml()))
    assert again == cfg
    assert load_config(write(tmp_path, Config().to_yaml())) == Config()


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(write(tmp_path, "train: {epochs: [1\n  bad: : :\n"))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="config: expected a mapping at the top level, got list"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_a_config_file_is_parsed_once_and_again_when_edited(tmp_path):
    path = write(tmp_path, "train: {epochs: 3}\npeers: [{name: a, width: 8}]\n")
    hits = _parse_config_text.cache_info().hits
    changed = load_config(path, ["train.epochs=5", "peers.0.width=32"])
    again = load_config(path)
    assert _parse_config_text.cache_info().hits == hits + 1  # the second load did not parse the file
    # Overrides changed a copy: the cached data, and so the next load, is the file as written.
    assert (changed.train.epochs, changed.peers[0].width) == (5, 32)
    assert (again.train.epochs, again.peers[0].width) == (3, 8)
    path.write_text("train: {epochs: 4}\npeers: [{name: a, width: 8}]\n")  # same size, new text
    assert load_config(path).train.epochs == 4


# ------------------------------------------------------------------------------- mistakes, one message each


def test_unknown_key_names_it_and_suggests_the_nearest():
    assert config_error({"train": {"epohcs": 3}}) == "train.epohcs: unknown key (did you mean 'epochs'?)"
    assert config_error({"trian": {}}) == "trian: unknown key (did you mean 'train'?)"
    assert config_error({"peers": [{"name": "a"}, {"widht": 3}]}) == "peers[1].widht: unknown key (did you mean 'width'?)"


def test_unknown_key_without_near_match_lists_the_valid_keys():
    assert config_error({"data": {"flip": True}}) == (
        "data.flip: unknown key; valid keys: dataset, root, image_size, limit, eval_limit, download")


@pytest.mark.parametrize("data,message", [
    ({"train": {"epochs": "ten"}}, "train.epochs: expected an integer, got 'ten'"),
    ({"train": {"epochs": 2.5}}, "train.epochs: expected an integer, got 2.5"),
    ({"train": {"epochs": True}}, "train.epochs: expected an integer, got True"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast'"),
    ({"train": {"progress": "yes"}}, "train.progress: expected true or false, got 'yes'"),
    ({"name": 5}, "name: expected a string, got 5"),
    ({"train": 3}, "train: expected a mapping of settings, got 3"),
    ({"peers": {"name": "x"}}, "peers: expected a list, got {'name': 'x'}"),
    ({"train": {"amp": "bf32"}}, "train.amp: must be one of 'auto', 'bf16', 'fp16', 'off', got 'bf32'"),
    ({"distill": {"reduction": "sum"}}, "distill.reduction: must be one of 'batchmean', 'mean', got 'sum'"),
])
def test_wrong_type(data, message):
    assert config_error(data) == message


@pytest.mark.parametrize("data,message", [
    ({"distill": {"temperature": 0}}, "distill.temperature: must be > 0.0, got 0.0"),
    ({"train": {"batch_size": 1}}, "train.batch_size: must be >= 2, got 1"),
    ({"train": {"epochs": 0}}, "train.epochs: must be >= 1, got 0"),
    ({"peers": [{"name": "a"}, {"name": "b", "distill_weight": -1}]}, "peers[1].distill_weight: must be >= 0.0, got -1.0"),
    ({"augment": {"jitter_prob": 1.5}}, "augment.jitter_prob: must be <= 1.0, got 1.5"),
    ({"augment": {"crop_scale_min": 0}}, "augment.crop_scale_min: must be > 0.0, got 0.0"),
    ({"peers": [{"temperature": -0.5}]}, "peers[0].temperature: must be > 0.0, got -0.5"),
    ({"data": {"image_size": 4}}, "data.image_size: must be >= 8, got 4"),
])
def test_out_of_range(data, message):
    assert config_error(data) == message


@pytest.mark.parametrize("data,message", [
    ({"peers": [{"backbone": "resnet19"}]},
     "peers[0].backbone: unknown value 'resnet19' (did you mean 'resnet18'?); choose from " + ", ".join(BACKBONES)),
    ({"peers": [{"objective": "simclrr"}]},
     "peers[0].objective: unknown value 'simclrr' (did you mean 'simclr'?); choose from simclr, simsiam"),
    ({"data": {"dataset": "cifar11"}},
     "data.dataset: unknown value 'cifar11' (did you mean 'cifar10'?); choose from " + ", ".join(DATASETS)),
])
def test_unknown_choice_suggests_the_nearest(data, message):
    assert config_error(data) == message


def test_whole_config_checks():
    assert config_error({"peers": [{"name": "a"}, {"name": "a"}]}) == "peers: names must be unique, got ['a', 'a']"
    assert config_error({"peers": []}) == "peers: at least one peer is needed"
    assert config_error({"device": "gpu"}) == "device: must be auto, cpu, mps or cuda[:N], got 'gpu'"
    assert config_error({"data": {"limit": 10}}) == (
        "data.limit: 10 images give no full batch of train.batch_size=256")
    assert config_error({"data": {"image_size": 8}, "peers": [{"backbone": "resnet18"}]}) == (
        "data.image_size: resnet18 needs images of at least 16 px, got 8")
    assert from_dict({"device": "cuda:1"}).device == "cuda:1"


# ------------------------------------------------------------------------------- overrides


def test_overrides_set_values_with_yaml_types():
    cfg = load_config(None, ["train.epochs=5", "train.lr=3e-4", "augment.flip=false", "data.root=/tmp/x",
                             "data.limit=null", "name=abc"])
    assert cfg.train.epochs == 5 and cfg.train.lr == 3e-4 and cfg.augment.flip is False
    assert cfg.data.root == "/tmp/x" and cfg.data.limit is None and cfg.name == "abc"


def test_overrides_reach_list_items(tmp_path):
    path = write(tmp_path, "peers:\n  - {name: a}\n  - {name: b, width: 16}\n")
    cfg = load_config(path, ["peers.0.width=8", "peers.1.objective=simsiam"])
    assert [(p.name, p.width, p.objective) for p in cfg.peers] == [("a", 8, "simclr"), ("b", 16, "simsiam")]
    # Without peers in the file, the default single peer is the list that is overridden.
    assert load_config(None, ["peers.0.width=8"]).peers == [PeerConfig(width=8)]


def test_overrides_do_not_change_their_input():
    data = {"train": {"epochs": 2}}
    apply_overrides(data, ["train.epochs=7"])
    assert data == {"train": {"epochs": 2}}


@pytest.mark.parametrize("override,message", [
    ("train.epochs", "override 'train.epochs': expected key=value, e.g. train.epochs=5"),
    ("=3", "override '=3': expected key=value, e.g. train.epochs=5"),
    ("train..epochs=3", "override 'train..epochs=3': expected key=value, e.g. train.epochs=5"),
    ("train.epohcs=3", "train.epohcs: unknown key (did you mean 'epochs'?)"),
    ("trian.epochs=3", "trian: unknown key (did you mean 'train'?)"),
    ("peers.3.width=8", "peers.3: no list item '3' (there are 1)"),
    ("peers.x.width=8", "peers.x: no list item 'x' (there are 1)"),
    ("peers.0.widht=8", "peers[0].widht: unknown key (did you mean 'width'?)"),
    ("train.epochs.max=3", "train.epochs: is a single setting, not a section (write train.epochs=VALUE)"),
    ("train.epochs=ten", "train.epochs: expected an integer, got 'ten'"),
    ("train.epochs=[1", "train.epochs: expected an integer, got '[1'"),
])
def test_bad_overrides(override, message):
    assert config_error(overrides=[override]) == message


def test_bare_off_and_on_are_choices_not_booleans(tmp_path):
    # YAML 1.1 reads a bare `off` as False: in a choice field it means the choice "off".
    cfg = load_config(None, ["train.amp=off", "train.fused_optimizer=on"])
    assert (cfg.train.amp, cfg.train.fused_optimizer) == ("off", "on")
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n  fused_optimizer: off\n")
    assert (load_config(path).train.amp, load_config(path).train.fused_optimizer) == ("off", "off")
    with pytest.raises(ConfigError, match="train.schedule: must be one of 'cosine', 'constant'"):
        load_config(None, ["train.schedule=off"])
