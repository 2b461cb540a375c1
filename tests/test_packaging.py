"""The install files agree with each other: pyproject.toml, environment.yml, the Makefile and CI."""

from __future__ import annotations

import re

import pytest
import yaml

from .helpers import REPO

tomllib = pytest.importorskip("tomllib")

# Conda-forge names of PyPI packages whose names differ.
CONDA_NAMES = {"torch": "pytorch", "PyYAML": "pyyaml"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = {_name(d): d for d in env["dependencies"] if isinstance(d, str)}
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pip = {_name(d): d for d in pip_section}
    wanted = project["dependencies"] + project["optional-dependencies"]["notebooks"] + \
        project["optional-dependencies"]["test"]
    for requirement in wanted:
        name = _name(requirement)
        conda_name = CONDA_NAMES.get(name, name).lower()
        spec = conda.get(conda_name) or pip.get(name)
        assert spec is not None, f"{name} is in pyproject.toml but not in environment.yml"
        assert spec.split(conda_name if conda_name in conda else name, 1)[1] == requirement[len(name):], \
            f"{name}: version range differs ({requirement!r} vs {spec!r})"
    assert '-e ".[notebooks,test]"' in pip_section
    assert env["channels"] == ["conda-forge"]


def test_torch_is_a_range_not_a_pin():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in ("torch", "torchvision"):
        (spec,) = [d for d in deps if _name(d) == name]
        assert ">=" in spec and "==" not in spec


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make quickstart" in readme
    makefile = (REPO / "Makefile").read_text()
    assert "dataset-fashion-mnist" in makefile and "chromium" in makefile



def test_nothing_generated_is_tracked_by_git(tmp_path):
    """Venvs, run folders, data and executed notebooks stay out of git, and .gitignore ignores a venv that
    is a link (a worktree's) as well as one that is a directory."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    generated = [p for p in tracked if p == ".venv" or p.startswith((".venv/", "runs/", "notebooks/executed/"))
                 or (p.startswith("data/") and p != "data/README.md") or "__pycache__" in p]
    assert generated == []
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    (tmp_path / "venv").mkdir()
    (repo / ".venv").symlink_to(tmp_path / "venv")
    (repo / "runs").mkdir()
    (repo / "runs" / "x.txt").write_text("x")
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert status == ["?? .gitignore"]
