"""The curated top-level API: ``import dogo`` is light, and every exported name resolves."""

from __future__ import annotations

import subprocess
import sys

from .helpers import REPO


def _run(code: str) -> str:
    env_path = {"PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**__import__("os").environ, **env_path}, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_dogo_is_lazy_and_every_name_resolves():
    code = (
        "import sys, dogo\n"
        "print(sorted(m for m in ('dogo.train', 'dogo.evaluate', 'dogo.runs', 'torchvision') if m in sys.modules))\n"
        "missing = [n for n in dogo.__all__ if getattr(dogo, n, None) is None]\n"
        "print(missing)\n"
        "from dogo import Trainer, cohort_losses, evaluate_run, resume, train_or_reuse\n"
        "print(callable(resume), Trainer.__name__, cohort_losses.__module__, evaluate_run.__module__)\n"
    )
    lazy, missing, names = _run(code).splitlines()
    assert lazy == "[]" and missing == "[]"
    assert names == "True Trainer dogo.objective dogo.evaluate"


def test_dogo_train_is_the_training_module_whichever_import_came_first():
    code = (
        "import dogo, inspect\n"
        "before = dogo.__dict__.get('train')\n"
        "from dogo.train import resume\n"
        "print(before is None, inspect.ismodule(dogo.train), callable(dogo.train.train))\n"
    )
    assert _run(code) == "True True True"
