"""The harness's own errors: bad input and runner failures, never bugs in the harness itself."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class HarnessError(Exception):
    """Base of every error the harness reports as a short message instead of a traceback."""


@dataclass(frozen=True, slots=True)
class CaseProblem:
    """One thing wrong in a case file, located by line and field path."""

    line: int | None
    field: str
    message: str
    allowed: str | None = None

    def render(self, path: str) -> str:
        """`cases/x.yaml:14: steps[2].mode: 'evaluate' is not allowed; allowed: train, eval`."""
        location = f"{path}:{self.line}" if self.line is not None else path
        field = self.field or "<document>"
        text = f"{location}: {field}: {self.message}"
        if self.allowed:
            text += f"; allowed: {self.allowed}"
        return text


class CaseError(HarnessError):
    """A case file that cannot be loaded: every problem found in it, each with line and field."""

    def __init__(self, path: str, problems: Sequence[CaseProblem]) -> None:
        self.path = path
        self.problems = tuple(problems)
        super().__init__("\n".join(problem.render(path) for problem in self.problems))


class RunnerError(HarnessError):
    """A runner that cannot run a case for a reason outside the frameworks (bad runner name...)."""
