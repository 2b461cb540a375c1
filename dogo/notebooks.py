"""Run the notebook sequence with papermill, and the helpers the notebooks share.

    dogo notebooks                       # every notebook in notebooks/, full settings, in order
    dogo notebooks 04 05 --smoke         # two of them at reduced settings (about a minute each)
    dogo notebooks 06 -p SEEDS "[0, 1]" -p EPOCHS 8 --output-dir /tmp/executed

Every notebook has one cell tagged ``parameters`` (``SMOKE: bool = False``, ``EPOCHS: int = ...``);
papermill injects the values given here after it. Names are checked against
``papermill.inspect_notebook`` before anything runs (papermill itself only warns about an unknown
name and then runs the notebook with its defaults). The kernel runs in ``notebooks/``, so relative
paths in parameter values are relative to that folder, as the defaults (``../runs/nb05``) are.
Executed copies go to ``--output-dir`` (git-ignored ``notebooks/executed`` by default), never over the
committed notebooks. A smoke run sends ``FIGURES_DIR`` into the output folder, so that it never
overwrites the committed figures.

``dogo.runs.train_or_reuse`` is the download-or-train pattern of notebooks 04-06.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from .errors import DogoError, did_you_mean

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK_NAME = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")
SMOKE_CELL_TIMEOUT = 900  # seconds per cell in a smoke run: a hang fails instead of blocking CI
KERNEL = "python3"


# --------------------------------------------------------------------------------- which notebooks


def list_notebooks(directory: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """The numbered notebooks ``NN_name.ipynb`` of ``directory``, in their order."""
    return sorted(p for p in Path(directory).glob("*.ipynb") if NOTEBOOK_NAME.match(p.name))


def resolve_notebooks(names: list[str] | None = None, directory: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """Notebooks named by number (``"04"``, ``"4"``), stem, file name or path; all when ``names`` is empty.

    The result keeps the sequence's order whatever the order of ``names``, since later notebooks
    may build on earlier ones.
    """
    available = list_notebooks(directory)
    if not names:
        if not available:
            raise DogoError(f"no numbered notebooks (NN_name.ipynb) in {directory}")
        return available
    chosen: list[Path] = []
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb" and path.is_file():
            match = [path.resolve()]
        else:
            key = path.name.removesuffix(".ipynb")
            match = [p for p in available
                     if key in (p.stem, p.stem[:2]) or (key.isdigit() and int(key) == int(p.stem[:2]))]
        if not match:
            choices = ", ".join(p.stem for p in available)
            raise DogoError(f"no notebook {name!r} in {directory}; choose from {choices}")
        chosen.extend(m for m in match if m not in chosen)
    order = {p.resolve(): i for i, p in enumerate(available)}
    return sorted(chosen, key=lambda p: order.get(p.resolve(), len(order)))


# --------------------------------------------------------------------------------- parameters


def notebook_parameters(path: str | Path) -> dict[str, dict[str, Any]]:
    """The parameters a notebook declares, as ``papermill.inspect_notebook`` reads them, with
    ``annotation`` added (the annotation's source text, e.g. ``"int | None"``, or None)."""
    import nbformat
    import papermill

    params = papermill.inspect_notebook(str(path))
    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    annotations: dict[str, str] = {}
    if cells:
        try:
            tree = ast.parse(cells[0].source)
        except SyntaxError:
            tree = ast.Module(body=[], type_ignores=[])
        for node in tree.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                annotations[node.target.id] = ast.unparse(node.annotation)
    return {name: {**info, "annotation": annotations.get(name)} for name, info in params.items()}


_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),),
    "list": (list, tuple), "dict": (dict,), "tuple": (list, tuple),
}


def _type_matches(value: Any, annotation: str | None) -> bool:
    """Does ``value`` fit a simple annotation such as ``int | None`` or ``list[int]``? Annotations
    this does not understand accept anything (papermill writes the value into the notebook as is)."""
    if not annotation:
        return True
    allowed: list[type] = []
    for part in annotation.replace("Optional[", "").replace("]", "").split("|"):
        base = part.strip().split("[")[0]
        if base not in _SIMPLE_TYPES:
            return True
        allowed.extend(_SIMPLE_TYPES[base])
    if isinstance(value, bool) and bool not in allowed:
        return False  # True is an int to Python, but not a sensible EPOCHS
    return isinstance(value, tuple(allowed))


def check_parameters(notebooks: list[Path], parameters: dict[str, Any],
                     declared: dict[Path, dict[str, Any]] | None = None) -> dict[Path, dict[str, Any]]:
    """Which of ``parameters`` goes to which notebook; a name that none of ``notebooks`` declares,
    or a value of the wrong type, raises ``DogoError`` before anything runs.

    A name goes to every notebook that declares it, so ``SEED`` can be set for the whole sequence.
    ``declared``: each notebook's ``notebook_parameters``, when already read.
    """
    if declared is None:
        declared = {nb: notebook_parameters(nb) for nb in notebooks}
    every = sorted({name for params in declared.values() for name in params})
    for name in parameters:
        if not any(name in params for params in declared.values()):
            hint = did_you_mean(name, every)
            which = ", ".join(nb.stem for nb in notebooks)
            raise DogoError(f"parameter {name!r}: not a parameter of {which}{hint}; they declare {', '.join(every)}")
    plan: dict[Path, dict[str, Any]] = {}
    for nb, params in declared.items():
        mine = {name: value for name, value in parameters.items() if name in params}
        for name, value in mine.items():
            annotation = params[name]["annotation"]
            if not _type_matches(value, annotation):
                raise DogoError(f"parameter {name!r} of {nb.stem}: expected {annotation}, got {value!r}")
        plan[nb] = mine
    return plan


def parse_value(text: str) -> Any:
    """A command-line parameter value as YAML: ``3`` -> 3, ``0.5``, ``true``, ``[0, 1]``, ``None`` -> None;
    anything else stays a string."""
    if text.strip() in ("None", "none", "null", "~"):
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# --------------------------------------------------------------------------------- running


def _client_supports(option: str) -> bool:
    try:
        from nbclient import NotebookClient
    except ImportError:  # pragma: no cover
        return False
    return option in NotebookClient.class_trait_names()


def run_notebooks(names: list[str] | None = None, smoke: bool = True, parameters: dict[str, Any] | None = None,
                  output_dir: str | Path = "notebooks/executed", timeout: float | None = None,
                  notebooks_dir: str | Path = NOTEBOOKS_DIR, progress: bool = False) -> list[Path]:
    """Execute notebooks in the sequence's order with papermill; returns the executed copies' paths.

    Args:
        names: which notebooks (see :func:`resolve_notebooks`); None runs all of them.
        smoke: set ``SMOKE = True``: each notebook shrinks its own settings to about a minute on a
            CPU. Its figures go to ``output_dir/figures`` unless ``FIGURES_DIR`` is given.
        parameters: ``{NAME: value}`` injected after each notebook's parameters cell, to every
            notebook that declares NAME; a name no chosen notebook declares raises ``DogoError``.
        output_dir: where the executed copies go (same file names); created if missing.
        timeout: seconds allowed per cell (None: no limit, or 900 s in a smoke run).

    A failing cell raises ``papermill.PapermillExecutionError``; the executed copy, with the
    traceback in it, is already written.
    """
    import papermill

    notebooks = resolve_notebooks(names, notebooks_dir)
    parameters = dict(parameters or {})
    if "SMOKE" in parameters:
        raise DogoError("parameter 'SMOKE': use smoke=True/False (the --smoke flag) instead")
    output_dir = Path(output_dir).resolve()
    declared = {nb: notebook_parameters(nb) for nb in notebooks}
    plan = check_parameters(notebooks, parameters, declared)
    if timeout is None and smoke:
        timeout = SMOKE_CELL_TIMEOUT
    engine_options = {"coalesce_streams": True} if _client_supports("coalesce_streams") else {}
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for nb in notebooks:
        values: dict[str, Any] = {}
        if "SMOKE" in declared[nb]:
            values["SMOKE"] = smoke
        if smoke and "FIGURES_DIR" in declared[nb] and "FIGURES_DIR" not in parameters:
            values["FIGURES_DIR"] = str(output_dir / "figures")
        values.update(plan[nb])
        target = output_dir / nb.name
        papermill.execute_notebook(
            str(nb), str(target), parameters=values, kernel_name=KERNEL, cwd=str(nb.parent),
            execution_timeout=timeout, progress_bar=progress, **engine_options)
        written.append(target)
    return written


# --------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dogo notebooks`` subcommand."""
    parser.description = ("Execute the notebooks in order with papermill (kernel python3, working folder "
                          "notebooks/), writing executed copies to --output-dir.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="notebooks by number or name (04, 05_evaluation); default: all, in order")
    parser.add_argument("--smoke", action="store_true",
                        help="SMOKE=True: reduced settings, about a minute per notebook on a CPU")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a parameter (VALUE read as YAML: 8, 0.5, true, '[0, 1]', None); paths are "
                             "relative to notebooks/")
    parser.add_argument("--output-dir", default="notebooks/executed", help="where the executed copies go")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per cell")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    from papermill.exceptions import PapermillExecutionError

    parameters = {}
    for name, text in args.parameter:
        if name in parameters:
            raise DogoError(f"parameter {name!r} given twice")
        parameters[name] = parse_value(text)
    try:
        written = run_notebooks(args.names, smoke=args.smoke, parameters=parameters, output_dir=args.output_dir,
                                timeout=args.timeout, progress=not args.no_progress)
    except PapermillExecutionError as exc:
        print(f"error: a notebook failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
              f"the executed copy with the full traceback is in {Path(args.output_dir).resolve()}", file=sys.stderr)
        return 1
    for path in written:
        print(f"executed: {path}")
    return 0
