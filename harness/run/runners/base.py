"""What every runner is: a name and `run(case) -> RunResult`; plus the observation log they fill."""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from harness.core.case import Case
from harness.core.results import BNCall, Observed, RunResult, Scalar, StepField
from harness.core.runner_table import RunnerRecord

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
MAX_REASON_CHARS = 2000


def clean_reason(text: str) -> str:
    """A framework's message without terminal colours, and not endless."""
    text = _ANSI_ESCAPE.sub("", text).strip()
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + " [...]"


class FrameworkMissing(Exception):
    """A framework a runner needs is not importable; the runner is skipped with this reason."""


def import_framework(module: str, install_hint: str) -> ModuleType:
    """Import `module` or raise FrameworkMissing with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise FrameworkMissing(f"{module} is not importable ({error}); install it with: {install_hint}") from None


def version_of(module: ModuleType) -> str:
    """A module's version as a plain str: torch's is a TorchVersion, and unpickling one in the
    harness's process would import torch there (300 MB) just to read a version."""
    return str(getattr(module, "__version__", "?"))


def import_frameworks(modules: Sequence[str], install_hint: str) -> dict[str, str]:
    """Import each module (or raise FrameworkMissing); return their versions for the details."""
    return {name: version_of(import_framework(name, install_hint)) for name in modules}


class Runner(ABC):
    """Runs one case in one framework and returns plain data. Never changes a mode on its own.
    `create_runner` sets `name` and `record` from the runner table; what differs between runners
    of one class (an exporter, an executor, a Keras backend) is read from the record."""

    name: str
    record: RunnerRecord

    @abstractmethod
    def run(self, case: Case) -> RunResult:
        """Execute every step of `case` and report what was observed."""


class ObservationLog:
    """Collects a runner's observations and details as it walks the steps."""

    def __init__(self, runner: str) -> None:
        self.runner = runner
        self.observations: dict[StepField, Observed] = {}
        self.details: dict[str, Any] = {}
        self.notes: list[str] = []
        self.bn_calls: dict[tuple[int, str], BNCall] = {}
        self.artifacts: dict[str, bytes] = {}
        self.model_oracle: dict[int, np.ndarray] = {}

    def array(self, step: int, field: str, values: np.ndarray, dtype: str) -> None:
        """Record a tensor (as float64, exact for every supported dtype) with its dtype."""
        self.observations[(step, field)] = Observed(np.array(values, dtype=np.float64), dtype)

    def value(self, step: int, field: str, value: Scalar) -> None:
        """Record a flag or attribute, compared exactly."""
        self.observations[(step, field)] = Observed(value)

    def result(self, status: str = "ok", reason: str | None = None) -> RunResult:
        """The RunResult of everything logged so far."""
        return RunResult(
            self.runner,
            status,
            reason,
            dict(self.observations),
            dict(self.details),
            tuple(self.notes),
            dict(self.bn_calls),
            dict(self.artifacts),
            dict(self.model_oracle),
        )


def skipped(runner: str, reason: str) -> RunResult:
    """The result of a runner that could not run at all."""
    return RunResult(runner, "skipped", reason)
