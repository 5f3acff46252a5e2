"""`torch-eager`: the reference, the model as the user built it; an export step changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from harness.core.case import Case
from harness.core.results import RunResult
from harness.core.runner_table import REFERENCE_RUNNER
from harness.run.runners.base import FrameworkMissing, ObservationLog, Runner, import_framework, skipped, version_of

TORCH_INSTALL_HINT = "pip install torch==2.13.0"


class TorchEagerRunner(Runner):
    """Runs each step on the torch module; `export` is a no-op, so state is logged unchanged."""

    name = REFERENCE_RUNNER  # also when built directly, as the known-cause bench does

    def run(self, case: Case) -> RunResult:
        try:
            torch = import_framework("torch", TORCH_INSTALL_HINT)
        except FrameworkMissing as missing:
            return skipped(self.name, str(missing))
        from harness.run.runners.torch_steps import Lane, run_steps

        log = ObservationLog(self.name)
        log.details["versions"] = {"torch": version_of(torch)}
        return run_steps(case, [Lane(log)], compile_model=self.compiler(torch, log), patch_model=self.patcher(log))[0]

    def compiler(self, torch: ModuleType, log: ObservationLog) -> Callable[[Any], Callable] | None:
        """What wraps the module for its forwards (None: the module itself)."""
        return None

    def patcher(self, log: ObservationLog) -> Callable[[Any], None] | None:
        """What changes the built module in place before the steps (None: nothing)."""
        return None
