"""The committed notebooks are clean sources: no outputs, no execution counts, no papermill traces,
exactly one ``parameters`` cell that defines ``SMOKE`` and the folders CI redirects, numbered 01..06."""

from __future__ import annotations

import ast
import json
import re

import nbformat
import papermill
import pytest

from dogo.notebooks import NOTEBOOKS_DIR, list_notebooks

NOTEBOOKS = list_notebooks()
EXPECTED_NUMBERS = [f"{i:02d}" for i in range(1, 7)]
# What CI passes to every notebook so that its runs and figures go to a temporary folder.
REQUIRED_PARAMETERS = ("SMOKE", "OUTPUT_DIR", "FIGURES_DIR")


def _ids(paths):
    return [p.stem for p in paths]


def test_notebooks_are_numbered_01_to_06_in_order():
    all_files = sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb"))
    assert [p.name for p in NOTEBOOKS] == all_files, "every notebook is named NN_lowercase_words.ipynb"
    assert [p.stem[:2] for p in NOTEBOOKS] == EXPECTED_NUMBERS


@pytest.fixture(params=NOTEBOOKS, ids=_ids(NOTEBOOKS))
def notebook(request):
    raw = json.loads(request.param.read_text())
    return request.param, raw, nbformat.reads(request.param.read_text(), as_version=4)


def test_valid_nbformat_4(notebook):
    path, raw, nb = notebook
    assert raw["nbformat"] == 4
    nbformat.validate(nb)  # raises on an invalid notebook
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_no_outputs_and_no_execution_counts(notebook):
    path, raw, nb = notebook
    for i, cell in enumerate(raw["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name} cell {i} has outputs"
            assert cell["execution_count"] is None, f"{path.name} cell {i} has an execution count"


def test_no_papermill_traces(notebook):
    path, raw, nb = notebook
    assert "papermill" not in raw["metadata"], f"{path.name}: papermill metadata in the notebook"
    for i, cell in enumerate(raw["cells"]):
        meta = cell.get("metadata", {})
        assert "papermill" not in meta and "execution" not in meta, f"{path.name} cell {i}: execution metadata"
        assert "injected-parameters" not in meta.get("tags", []), f"{path.name} cell {i}: injected parameters"


def _parameters_cells(nb):
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_exactly_one_parameters_cell_defining_smoke_false(notebook):
    path, raw, nb = notebook
    cells = _parameters_cells(nb)
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters'"
    assert cells[0].cell_type == "code"
    tree = ast.parse(cells[0].source)
    names = {}
    for node in tree.body:
        # Only plain (annotated) assignments: papermill injects a cell of assignments after this one.
        assert isinstance(node, (ast.Assign, ast.AnnAssign)), f"{path.name}: parameters cell has {ast.dump(node)[:60]}"
        target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
        names[target.id] = ast.literal_eval(node.value) if node.value is not None else None
    for name in REQUIRED_PARAMETERS:
        assert name in names, f"{path.name}: the parameters cell does not define {name}"
    assert names["SMOKE"] is False, "the defaults describe a real run; SMOKE=True is passed by CI"
    # papermill must see every one (it cannot parse `int | None` annotations, nor a line with two '=').
    assert sorted(papermill.inspect_notebook(str(path))) == sorted(names), f"{path.name}: papermill misses some"


def test_smoke_cell_follows_the_parameters(notebook):
    path, raw, nb = notebook
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    after = nb.cells[index + 1]
    assert after.cell_type == "code" and re.match(r"\s*if SMOKE\b", after.source), \
        f"{path.name}: the cell after the parameters must start with `if SMOKE:`"


def test_cell_ids_are_unique(notebook):
    path, raw, nb = notebook
    ids = [c.get("id") for c in raw["cells"]]
    assert None not in ids and len(set(ids)) == len(ids)


def _parameters_then_smoke(nb, injected: dict) -> dict:
    """Run what papermill runs before the notebook's imports: the parameters cell, the injected values,
    then the ``if SMOKE:`` cell; returns the resulting values."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    namespace: dict = {}
    exec(nb.cells[index].source, namespace)
    namespace.update(injected)
    exec(nb.cells[index + 1].source, namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def _numeric_parameters(nb) -> dict:
    values = _parameters_then_smoke(nb, {"SMOKE": False})
    return {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def test_smoke_caps_the_defaults_and_never_raises_them(notebook):
    path, raw, nb = notebook
    defaults = _numeric_parameters(nb)
    smoke = _parameters_then_smoke(nb, {"SMOKE": True})
    for name, default in defaults.items():
        if default:  # 0 means "all" in some notebooks; a cap then gives a positive number
            assert smoke[name] <= default, f"{path.name}: SMOKE raised {name} from {default} to {smoke[name]}"


def test_smoke_keeps_a_smaller_value_passed_as_a_parameter(notebook):
    """``dogo notebooks --smoke -p EPOCHS 1 -p LIMIT 300``: SMOKE caps what it shrinks and never replaces
    a value that is already below its cap (each number is set to 1, below every cap)."""
    path, raw, nb = notebook
    for name, default in _numeric_parameters(nb).items():
        value = 1 if isinstance(default, int) else 1e-3
        after = _parameters_then_smoke(nb, {"SMOKE": True, name: value})[name]
        assert after <= value, f"{path.name}: with SMOKE, {name} = {value} became {after}"
        assert after == value or after == 0, f"{path.name}: with SMOKE, {name} = {value} was replaced by {after}"
