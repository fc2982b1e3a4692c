"""The grader's checks as plain pytest tests: `pytest grader -k lab02` (add `-k "lab02 and triton"`...).

Each check is one test named `test_check[labNN::check]`. The student's files are graded by default;
LABS_SOURCE=solutions (or a submission folder) and LABS_SEED choose otherwise, LABS_CPU=1 forces the
CPU tier. Checks that cannot run here (speed on the CPU tier) are reported as skipped, never passed.
"""

from __future__ import annotations

import os

import pytest

from grader.labs import all_specs
from grader.runner import Context, pick_tier, plan, resolve_files

SOURCE = os.environ.get("LABS_SOURCE", "student")
SEED = int(os.environ.get("LABS_SEED", "0"))
TIER = pick_tier(os.environ.get("LABS_CPU") == "1")
CHECKS = [(spec, p) for spec in all_specs() for p in plan(spec, TIER, SEED)]
_contexts: dict[str, Context] = {}


@pytest.fixture(scope="session", autouse=True)
def _close_contexts():
    yield
    for ctx in _contexts.values():
        ctx.close()


@pytest.mark.parametrize("spec,check", CHECKS, ids=[f"{s.id}::{p.name}" for s, p in CHECKS])
def test_check(spec, check):
    if spec.id not in _contexts:
        _contexts[spec.id] = Context(spec, resolve_files(spec, SOURCE), TIER, SEED)
    result = check.run(check, _contexts[spec.id])
    if result.status == "skip":
        pytest.skip(result.message)
    assert result.status == "pass", f"{spec.id} {check.name}: {result.message}"
