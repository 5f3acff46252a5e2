"""The agreement sweep (the false-positive check): random configurations where the frameworks
should agree once mapped. A failure is a harness bug or a real divergence for a new case.

Run more with `pytest tests/test_sweep.py --sweep-count 100 --sweep-seed 7`.
"""

from __future__ import annotations

import pytest

from harness.frontends.session import run_case
from harness.load.sweep import FAMILIES, sweep_case

pytest.importorskip("torch")

pytestmark = pytest.mark.slow  # worker pools or pytest sessions in subprocesses


@pytest.mark.parametrize("family", FAMILIES)
def test_random_configurations_agree_once_mapped(family, sweep_index, request):
    case = sweep_case(family, sweep_index, request.config.getoption("sweep_seed"))
    result = run_case(case)
    statuses = {run.runner: run.status for run in result.runs}
    assert set(statuses.values()) <= {"ok", "skipped"}, statuses
    assert result.outcome == "passed", f"{case.model} {case.bn} {case.input.shape}\n{result.explain()}"
