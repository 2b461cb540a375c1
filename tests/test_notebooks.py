"""The notebooks run, top to bottom, at reduced settings (SMOKE=True), and the papermill runner
behind ``dogo notebooks`` passes only parameters the notebooks declare.

Every notebook is executed into a temporary folder with its runs and figures redirected there too;
the committed notebooks, figures and run folders must be left untouched.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from dogo.cli import main
from dogo.config import config_differences, load_config
from dogo.errors import DogoError
from dogo.notebooks import (
    _type_matches,
    check_parameters,
    list_notebooks,
    parse_value,
    resolve_notebooks,
    run_notebooks,
)
from dogo.runlog import read_metrics
from dogo.runs import train_or_reuse

from .helpers import REPO, assert_same_run, tiny_overrides

NOTEBOOKS = list_notebooks()
IDS = [p.stem for p in NOTEBOOKS]
# The executed copies are kept here (git-ignored) for the static site: tests/test_site.py renders them.
EXECUTED_ARTIFACTS = Path(os.environ.get("DOGO_ARTIFACTS") or REPO / "test-artifacts") / "executed"


def ci_parameters(root: Path) -> dict:
    """What CI passes to every notebook (besides SMOKE=True): its runs and figures go under ``root``."""
    return {"OUTPUT_DIR": str(root / "runs"), "FIGURES_DIR": str(root / "figures")}


def _snapshot() -> dict[str, int]:
    """Modification times of what a notebook run must not touch: the committed notebooks and
    figures, and the notebooks' default run folders (runs/nbNN*)."""
    paths = [*(REPO / "notebooks").glob("*.ipynb"), *(REPO / "figures").rglob("*"), *(REPO / "runs").glob("nb*")]
    return {str(p): p.stat().st_mtime_ns for p in paths if p.exists()}


def _injected(executed: Path) -> str:
    nb = nbformat.read(executed, as_version=4)
    cells = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    return cells[0].source


# ---------------------------------------------------------------------------- every notebook, smoke


@pytest.mark.parametrize("name", ["SMOKE", "OUTPUT_DIR", "FIGURES_DIR"])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameters_passed_by_ci_exist(path, name):
    assert name in papermill.inspect_notebook(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_at_smoke_settings(path, tmp_path):
    before = _snapshot()
    written = run_notebooks([path.name], smoke=True, parameters=ci_parameters(tmp_path),
                            output_dir=tmp_path / "executed", timeout=600)
    assert written == [tmp_path / "executed" / path.name]
    assert "SMOKE = True" in _injected(written[0])
    executed = nbformat.read(written[0], as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert _snapshot() == before, "a smoke run changed committed notebooks, figures or runs/nbNN"
    EXECUTED_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(written[0], EXECUTED_ARTIFACTS / path.name)


@pytest.mark.slow
def test_reproduction_notebook_with_other_parameters(tmp_path):
    """Parameters other than CI's reach the notebook: another seed and widths, seen in the results."""
    params = {**ci_parameters(tmp_path), "SEEDS": [3], "SMALL_WIDTH": 4, "LARGE_WIDTH": 12,
              "REPORTS": ["position_cnn_12"]}
    (written,) = run_notebooks(["06"], smoke=True, parameters=params, output_dir=tmp_path / "executed", timeout=600)
    injected = _injected(written)
    assert "SEEDS = [3]" in injected and "SMALL_WIDTH = 4" in injected
    configs = sorted((tmp_path / "runs").rglob("config.yaml"))
    assert configs, "the notebook trained nothing into OUTPUT_DIR"
    for path in configs:
        cfg = yaml.safe_load(path.read_text())
        assert cfg["seed"] == 3
        assert [p["width"] for p in cfg["peers"]] in ([4], [4, 12])
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert results and {r["train_seed"] for r in results} == {3}
    assert {r["width"] for r in results} == {4, 12}
    shown = [text for c in nbformat.read(written, as_version=4).cells if c.cell_type == "code" for o in c.outputs
             for text in [o.get("data", {}).get("text/markdown", "")] if text.startswith("#")]
    assert any("position_cnn_12" in text for text in shown)
    assert not any("cpu_fmnist_cnn" in text.splitlines()[0] for text in shown), "a study left out of REPORTS"


# ---------------------------------------------------------------------------- the runner


def test_unknown_parameter_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(DogoError, match=r"parameter 'SEEDZ'.*did you mean 'SEEDS'"):
        run_notebooks(["06"], parameters={"SEEDZ": [1]}, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_type_and_smoke_as_parameter_are_refused(tmp_path):
    with pytest.raises(DogoError, match=r"parameter 'SMALL_WIDTH' of 06_reproduction: expected int, got 'four'"):
        run_notebooks(["06"], parameters={"SMALL_WIDTH": "four"}, output_dir=tmp_path)
    with pytest.raises(DogoError, match="--smoke"):
        run_notebooks(["06"], parameters={"SMOKE": True}, output_dir=tmp_path)


def test_parameters_go_only_to_notebooks_that_declare_them():
    nb04, nb06 = resolve_notebooks(["04", "06"])
    plan = check_parameters([nb04, nb06], {"SEEDS": [0, 1], "SEED": 2})
    assert plan == {nb04: {"SEED": 2}, nb06: {"SEEDS": [0, 1]}}


@pytest.mark.parametrize("annotation, value, ok", [
    ("int", 3, True), ("int", 2.5, False), ("int", True, False), ("int", None, False), ("float", 1, True),
    ("bool", 1, False), ("str", "x", True), ("str", 3, False), ("list", [0, 1], True), ("list", 0, False),
    ("int | None", None, True), ("list[int] | None", [1], True), ("Path", 3, True), (None, object(), True)])
def test_parameter_types_are_checked_where_the_annotation_is_simple(annotation, value, ok):
    assert _type_matches(value, annotation) is ok


def test_notebooks_are_resolved_by_number_or_name_in_sequence_order():
    names = [p.stem for p in resolve_notebooks(["06_reproduction", "4", "05"])]
    assert names == ["04_training_on_a_gpu", "05_evaluation", "06_reproduction"]
    assert resolve_notebooks(None) == NOTEBOOKS
    with pytest.raises(DogoError, match="no notebook '99'"):
        resolve_notebooks(["99"])


@pytest.mark.parametrize("text, value", [("3", 3), ("0.5", 0.5), ("true", True), ("[0, 1]", [0, 1]),
                                         ("None", None), ("null", None), ("../runs/x", "../runs/x")])
def test_command_line_values_are_read_as_yaml(text, value):
    assert parse_value(text) == value


def test_cli_hands_parsed_parameters_to_the_runner(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_run(names, **kwargs):
        calls.append((names, kwargs))
        return [tmp_path / "06_reproduction.ipynb"]

    monkeypatch.setattr("dogo.notebooks.run_notebooks", fake_run)
    code = main(["notebooks", "06", "--smoke", "-p", "SEEDS", "[1, 2]", "-p", "LIMIT", "None",
                 "--output-dir", str(tmp_path)])
    assert code == 0
    assert calls == [(["06"], {"smoke": True, "parameters": {"SEEDS": [1, 2], "LIMIT": None},
                               "output_dir": str(tmp_path), "timeout": None, "progress": True})]
    assert "executed:" in capsys.readouterr().out


def test_cli_unknown_parameter_is_one_error_line(tmp_path, capsys):
    assert main(["notebooks", "05", "-p", "NOT_A_PARAMETER", "1", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: parameter 'NOT_A_PARAMETER'") and err.count("\n") == 1


def _probe_notebook(folder: Path) -> None:
    """A tiny numbered notebook that records its parameters and working folder."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = new_code_cell('SMOKE: bool = False\nX: int = 1\nOUTPUT_DIR: str = "out"\nFIGURES_DIR: str = "../figures"')
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, new_code_cell(
        "import json, os, pathlib\n"
        "pathlib.Path(OUTPUT_DIR).mkdir(parents=True, exist_ok=True)\n"
        "values = dict(SMOKE=SMOKE, X=X, FIGURES_DIR=FIGURES_DIR, cwd=os.getcwd())\n"
        "(pathlib.Path(OUTPUT_DIR) / 'values.json').write_text(json.dumps(values))")]
    nbformat.write(nb, folder / "01_probe.ipynb")


@pytest.mark.slow
def test_runner_injects_values_runs_in_the_notebook_folder_and_redirects_smoke_figures(tmp_path):
    source = tmp_path / "notebooks"
    source.mkdir()
    _probe_notebook(source)
    out = tmp_path / "executed"
    run_notebooks(["01"], smoke=True, parameters={"X": 7, "OUTPUT_DIR": str(tmp_path / "o")}, output_dir=out,
                  notebooks_dir=source)
    values = json.loads((tmp_path / "o" / "values.json").read_text())
    assert values == {"SMOKE": True, "X": 7, "FIGURES_DIR": str(out.resolve() / "figures"), "cwd": str(source)}
    executed = nbformat.read(out / "01_probe.ipynb", as_version=4)
    assert executed.cells[1].metadata.get("tags") == ["injected-parameters"]
    assert nbformat.read(source / "01_probe.ipynb", as_version=4).cells[1].outputs == []  # source untouched


# ---------------------------------------------------------------------------- download or train


def test_config_differences_ignore_what_does_not_change_the_result():
    a = load_config(None, tiny_overrides("runs")).to_dict()
    b = load_config(None, tiny_overrides("elsewhere", **{"train.progress": "true", "device": "cpu",
                                                         "peers.1.width": 16})).to_dict()
    assert config_differences(a, b) == {"peers.1.width": (8, 16)}


@pytest.mark.slow
def test_train_or_reuse_trains_reuses_resumes_and_refuses(tmp_path):
    from dogo.train import Trainer

    cfg = load_config(None, tiny_overrides(tmp_path, **{"train.epochs": 1}))
    straight = train_or_reuse(cfg, tmp_path / "straight")
    assert straight["status"] == "trained"
    records = read_metrics(tmp_path / "straight")
    assert train_or_reuse(cfg, tmp_path / "straight")["status"] == "reused"
    assert read_metrics(tmp_path / "straight") == records
    other = load_config(None, tiny_overrides(tmp_path, **{"train.epochs": 1, "seed": 1}))
    with pytest.raises(DogoError, match="seed is 0 there, 1 here"):
        train_or_reuse(other, tmp_path / "straight")

    # An interrupted run (stopped after step 3 of 8, as Ctrl-C does) is resumed to the same result.
    trainer = Trainer(cfg, tmp_path / "interrupted")
    step = trainer.train_step

    def stop_after_three(images):
        losses = step(images)
        trainer._stop_requested = trainer.global_step == 3
        return losses

    trainer.train_step = stop_after_three
    assert trainer.fit()["interrupted"]
    assert train_or_reuse(cfg, tmp_path / "interrupted")["status"] == "resumed"
    assert_same_run(tmp_path / "interrupted", tmp_path / "straight")
