"""Every lab notebook runs top to bottom on this (CPU) machine, on the skeleton and on the solutions.

A notebook reads the student's files from its own folder, or from LABNN_DIR when set (how the
solutions are run here). Outputs are never written back: the stored notebooks stay output-free.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from grader import REPO_ROOT
from grader.labs import all_specs

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = [s for s in all_specs() if s.notebook]


def _run(spec, source: str) -> float:
    path = REPO_ROOT / spec.path / spec.notebook
    nb = nbformat.read(path, as_version=4)
    env_key = f"{spec.id.upper()}_DIR"
    old = os.environ.get(env_key)
    if source == "solutions":
        os.environ[env_key] = str(REPO_ROOT / "solutions" / spec.path)
    else:
        os.environ.pop(env_key, None)
    t0 = time.perf_counter()
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if old is None:
            os.environ.pop(env_key, None)
        else:
            os.environ[env_key] = old
    return time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.parametrize("source", ["student", "solutions"])
@pytest.mark.parametrize("spec", NOTEBOOKS, ids=[s.id for s in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(spec, source):
    seconds = _run(spec, source)
    assert seconds < 300, f"{spec.notebook} took {seconds:.0f}s on the CPU tier; keep it under 5 minutes"


@pytest.mark.parametrize("spec", NOTEBOOKS, ids=[s.id for s in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(spec):
    nb = json.loads((REPO_ROOT / spec.path / spec.notebook).read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{spec.notebook}: cells {dirty} hold outputs; clear them before committing"
