"""pytest items for case files: one item per case (per grid point); a bad file fails its own item only."""

from __future__ import annotations

import json
import re
import traceback
from pathlib import Path

import pytest

from harness.core.errors import CaseError, HarnessError
from harness.frontends.session import Session
from harness.judge.engine import CaseResult, explain_known
from harness.load.schema import load_cases
from harness.report.record import case_record, plain_json


class CaseFailed(Exception):
    """A case whose observations do not match its expectations."""

    def __init__(self, result: CaseResult) -> None:
        self.result = result
        super().__init__(result.explain())


def display_path(path: Path, root: Path) -> str:
    """The path as the user sees it: relative to the rootdir when under it."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


RECOGNISED_CASE_DIR = "cases"  # where a project that did not opt in keeps the files that look like cases
_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)[ \t]*:", re.MULTILINE)
_SNIFFED_BYTES = 1 << 16


def looks_like_a_case(path: Path) -> bool:
    """Whether a YAML file reads as a bn-harness case, from its top-level keys as written (a file
    that does not parse may still be a case with a typo): a description with a model and its bn,
    or with an ONNX graph or backend test. An experiment config with a description and a model is
    not enough."""
    try:
        with path.open("rb") as stream:
            text = stream.read(_SNIFFED_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return False
    keys = set(_TOP_LEVEL_KEY.findall(text))
    return "description" in keys and ({"model", "bn"} <= keys or bool(keys & {"onnx_graph", "onnx_backend_test"}))


class CaseFile(pytest.File):
    """A YAML case file."""

    def collect(self):
        shown = display_path(self.path, self.config.rootpath)
        try:
            cases = load_cases(self.path, display_path=shown)
        except CaseError as error:
            # Never a collection error: that would stop every other case from running.
            yield InvalidCaseItem.from_parent(self, name=self.path.stem, error=error)
            return
        for position, case in enumerate(cases):  # one item per point of a grid, in the grid's order
            yield CaseItem.from_parent(self, name=case.case_id, case=case, position=position)


class _HarnessItem(pytest.Item):
    position = 0  # in its file: the summary and results.json list a grid's points in the grid's order

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, (CaseFailed, HarnessError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"case {self.name}"

    def _record(self, result: CaseResult) -> None:
        """Attach the case's record to the item: its reports carry it to the plugin, also from
        pytest-xdist workers to the controller."""
        known = explain_known(result.classification) if result.classification and result.classification.known else ""
        record = plain_json(case_record(result).to_json())
        self.user_properties.append((CASE_RECORD_PROPERTY, json.dumps({"record": record, "known": known, "position": self.position})))


class CaseItem(_HarnessItem):
    """Runs one case on its runners and fails on a new divergence, a vanished one, or a bad status."""

    def __init__(self, *, case, position: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.case, self.position = case, position

    def runtest(self) -> None:
        try:
            result = self.config.stash[SESSION_KEY].run_case(self.case)
        except Exception:
            self._record(CaseResult(self.case.case_id, self.case.path, "error", self.case.description, error=traceback.format_exc()))
            raise
        self._record(result)
        if result.outcome == "skipped":
            pytest.skip(result.error or "skipped")
        if result.outcome != "passed":
            raise CaseFailed(result)


class InvalidCaseItem(_HarnessItem):
    """Stands for a case file that did not load; fails with every problem found in it."""

    def __init__(self, *, error: CaseError, **kwargs) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        self._record(CaseResult(self.name, self.error.path, "invalid", error=str(self.error)))
        raise self.error


CASE_RECORD_PROPERTY = "bn_harness_case"  # a user property: {"record": results.json's entry, "known": text, "position": int}
SESSION_KEY = pytest.StashKey[Session]()
