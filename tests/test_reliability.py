"""Interrupted runs resume with nothing lost; bad input gets one clear error; torn files are handled."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dogo.cli import main
from dogo.config import load_config
from dogo.errors import CheckpointError, NonFiniteLossError
from dogo.runlog import CHECKPOINT, MetricsWriter, load_checkpoint, read_metrics, save_checkpoint
from dogo.train import Trainer, resume, train

from .helpers import REPO, assert_same_run, run_cli, tiny_overrides

# 3 epochs of 8 steps, a checkpoint every 3 steps (mid-epoch) and at each epoch end.
RESUME_SETTINGS = {"train.epochs": 3, "train.checkpoint_every_steps": 3, "train.log_every": 1}


def _start_training(run_dir: Path) -> subprocess.Popen:
    args = ["train", "--run-dir", str(run_dir), *tiny_overrides(run_dir.parent, **RESUME_SETTINGS)]
    return subprocess.Popen([sys.executable, "-m", "dogo", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference")
    result = train(None, run_dir=root / "run", overrides=tiny_overrides(root, **RESUME_SETTINGS))
    return Path(result["run_dir"])


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, uninterrupted):
    # Kill at a random moment after the first mid-epoch checkpoint exists; on a fast machine the
    # run may finish first, so a second attempt kills as soon as that checkpoint appears.
    for attempt, delay in enumerate((random.uniform(0.0, 1.0), 0.0)):
        run_dir = tmp_path / f"run{attempt}"
        proc = _start_training(run_dir)
        ckpt = run_dir / CHECKPOINT
        _wait_for(ckpt.is_file, proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_checkpoint(ckpt)
        if not state["finished"]:
            break
    assert not state["finished"], "the kill came too late to test anything"
    proc = subprocess.run([sys.executable, "-m", "dogo", "train", "--resume", str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # Models, optimizers, schedules, RNG and the data order are restored.
    assert_same_run(run_dir, uninterrupted)


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = _start_training(run_dir)
    _wait_for(lambda: (run_dir / "metrics.jsonl").is_file(), proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "--resume" in out
    state = load_checkpoint(run_dir / CHECKPOINT)
    assert not state["finished"]
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert_same_run(run_dir, uninterrupted)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"peers": {"a": 1}, "config": {}, "epoch": 1}, path)

    def dies_midway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. killed while writing

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"peers": {"a": 2}, "config": {}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_metrics_survive_a_torn_last_line(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    writer.write({"epoch": 1, "loss": 1.0})
    writer.write({"epoch": 2, "loss": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "lo')  # the process died here
    assert read_metrics(tmp_path) == [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]
    (tmp_path / "bad.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(CheckpointError, match="line 2"):
        read_metrics(tmp_path / "bad.jsonl")


def _finished_run(tmp_path) -> Path:
    result = train(None, run_dir=tmp_path / "run", overrides=tiny_overrides(tmp_path, **{"train.epochs": 1}))
    return Path(result["run_dir"])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_truncated_checkpoint_gives_one_clear_error(tmp_path, capsys):
    run = _finished_run(tmp_path)
    ckpt = run / CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    assert main(["train", "--resume", str(run)]) == 2
    assert "corrupt or truncated" in _one_line_error(capsys)


def test_checkpoint_of_another_architecture_is_refused(tmp_path, capsys):
    run = _finished_run(tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["peers"][1]["width"] = 12
    cfg["train"]["epochs"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--resume", str(run)]) == 2
    err = _one_line_error(capsys)
    assert "peer 'large' does not match" in err


def test_missing_run_folder(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in _one_line_error(capsys)


def test_resuming_a_finished_run_does_nothing(tmp_path):
    run = _finished_run(tmp_path)
    before = read_metrics(run)
    result = resume(run)
    assert result["already_finished"] and read_metrics(run) == before


def test_non_finite_loss_stops_and_names_the_peer_and_term(tmp_path, monkeypatch):
    cfg = load_config(None, tiny_overrides(tmp_path, **{"train.epochs": 3, "train.log_every": 1}))
    trainer = Trainer(cfg, tmp_path / "run")
    original = trainer.compute_losses
    calls = {"n": 0}

    def poisoned(images):
        losses = original(images)
        calls["n"] += 1
        if calls["n"] > trainer.steps_per_epoch + 2:  # in the second epoch
            losses[1]["distill"] = losses[1]["distill"] * float("nan")
            losses[1]["total"] = losses[1]["ssl"] + losses[1]["distill"]
        return losses

    monkeypatch.setattr(trainer, "compute_losses", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"peer 'large': the distill loss became nan at epoch 2"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT)  # the last good one, from epoch 1
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["peers"]["large"]["model"].values() if v.is_floating_point())


def test_cli_reports_a_non_finite_loss_in_one_line(tmp_path):
    # A learning rate this large makes the weights and then the loss overflow.
    proc = run_cli("train", *tiny_overrides(tmp_path, **{"train.lr": "1e30", "train.log_every": 1,
                                                          "train.optimizer": "sgd", "train.momentum": 0.99}))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: peer ") and "Traceback" not in proc.stderr
    assert "loss became" in proc.stderr


BAD_CONFIGS = [
    (["train.epohcs=3"], "train.epohcs: unknown key (did you mean 'epochs'?)"),
    (["train.epochs=ten"], "train.epochs: expected an integer"),
    (["train.epochs=0"], "train.epochs: must be >= 1"),
    (["train.batch_size=1"], "train.batch_size: must be >= 2"),
    (["distill.temperature=0"], "distill.temperature: must be > 0"),
    (["peers.0.temperature=-1"], "peers[0].temperature: must be > 0"),
    (["peers.0.distill_weight=-1"], "peers[0].distill_weight: must be >= 0"),
    (["peers.0.backbone=resnet19"], "peers[0].backbone: unknown value 'resnet19' (did you mean 'resnet18'?)"),
    (["peers.0.objective=simclr2"], "peers[0].objective: unknown value 'simclr2'"),
    (["data.dataset=fashion-mnist"], "data.dataset: unknown value 'fashion-mnist' (did you mean 'fashion_mnist'?)"),
    (["peers.0.backbone=resnet18", "data.image_size=12"], "resnet18 needs images of at least 16 px"),
    (["data.dataset=cifar10", "data.root=/nonexistent"], "CIFAR-10 not found. Looked in: /nonexistent"),
]


@pytest.mark.parametrize("overrides, message", BAD_CONFIGS, ids=[m.split(":")[0] for _, m in BAD_CONFIGS])
def test_bad_input_gives_one_line_error(overrides, message, tmp_path, capsys):
    code = main(["train", f"output_dir={tmp_path}", "train.progress=false", *overrides])
    assert code == 2
    assert message in _one_line_error(capsys)
    assert not any(tmp_path.iterdir()), "a failed start must not leave a run folder"


def test_bad_config_file_from_a_real_process(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    proc = run_cli("train", "--config-file", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: train.learning_rate: unknown key; valid keys: "
                                   + ", ".join(load_config().train.__dataclass_fields__))
    proc = run_cli("train", "--config-file", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_environment_record_traces_the_run(tmp_path):
    run = _finished_run(tmp_path)
    env = json.loads((run / "environment.json").read_text())
    assert {"dogo", "git_commit", "python", "torch", "torchvision", "numpy", "device", "argv"} <= set(env)
