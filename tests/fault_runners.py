"""Test-only runners that fail the way frameworks do: an abort, a hang, an import that fails.
Registered by tests/test_execution.py; they run in the torch family's worker like any runner."""

from __future__ import annotations

import os
import sys
import time

from harness.core.case import Case
from harness.core.results import RunResult
from harness.run.runners.base import FrameworkMissing, Runner, import_framework, skipped


class AbortRunner(Runner):
    """A runtime that aborts (SIGABRT), as a C++ assertion does, after printing why."""

    name = "fault-abort"

    def run(self, case: Case) -> RunResult:
        sys.stderr.write("fault-abort: a C++ assertion failed, aborting\n")
        sys.stderr.flush()
        os.abort()


class HangRunner(Runner):
    """A runtime that never returns."""

    name = "fault-hang"

    def run(self, case: Case) -> RunResult:
        time.sleep(3600)
        return RunResult(self.name, "ok")


class MissingFrameworkRunner(Runner):
    """A runner whose framework is not installed."""

    name = "fault-missing"

    def run(self, case: Case) -> RunResult:
        try:
            import_framework("a_framework_that_is_not_installed", "pip install a-framework")
        except FrameworkMissing as missing:
            return skipped(self.name, str(missing))
        return RunResult(self.name, "ok")


def abort_in_shared_walk(case: Case, names: tuple[str, ...]) -> tuple[RunResult, ...]:
    """A shared walk whose runtime aborts: which of its runners made it is not known yet."""
    sys.stderr.write(f"a shared walk of {', '.join(names)} aborts\n")
    sys.stderr.flush()
    os.abort()


FAULT_RUNNERS = {
    "fault-abort": "tests.fault_runners:AbortRunner",
    "fault-hang": "tests.fault_runners:HangRunner",
    "fault-missing": "tests.fault_runners:MissingFrameworkRunner",
}
