"""results.json: the machine-readable record of a run, written atomically; and its journal, one
line per finished case, appended as the run goes, from which a killed run's results.json and
report are rebuilt."""

from __future__ import annotations

import datetime
import fcntl
import importlib.metadata
import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.core.case import Expectation
from harness.core.errors import HarnessError
from harness.core.records import (
    SCHEMA_VERSION,
    CaseRecord,
    ComparisonRecord,
    Environment,
    ExpectationRecord,
    RecordError,
    ResultsDocument,
    RunRecord,
    StatusRecord,
    UnverifiedRecord,
    VanishedRecord,
)
from harness.judge.engine import CaseResult

# Every framework a runner may use (None where not installed), and what the harness itself reads with.
FRAMEWORK_PACKAGES = (
    "torch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "keras",
    "tensorflow",
    "tensorflow-cpu",
    "jax",
    "jaxlib",
    "ml_dtypes",
    "numpy",
    "jsonschema",
    "PyYAML",
    "pytest",
)


def environment() -> Environment:
    """Python, platform and installed framework versions (read from metadata, nothing imported)."""
    versions: dict[str, str | None] = {}
    for package in FRAMEWORK_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return Environment(sys.version.split()[0], platform.platform(), versions)


def case_record(result: CaseResult) -> CaseRecord:
    """One case as results.json records it."""
    runners = {run.runner: RunRecord(run.status, run.reason, run.details) for run in result.runs}
    found = result.classification
    record = CaseRecord(result.case_id, result.path, result.outcome, result.description, tuple(result.steps), result.error, runners)
    if found is None:
        return record
    known = {id(verdict): expectation for verdict, expectation in found.known}
    comparisons = []
    for verdict in result.verdicts:
        expectation = known.get(id(verdict))
        classification = "agree" if verdict else ("known" if expectation else "new")
        comparisons.append(ComparisonRecord(verdict, classification, None if expectation is None else _expectation_record(expectation)))
    return replace(
        record,
        comparisons=tuple(comparisons),
        judged=True,
        vanished=tuple(VanishedRecord(_expectation_record(gone.expectation), gone.runner, gone.seen_instead) for gone in found.vanished),
        statuses=tuple(StatusRecord(f.runner, f.status, f.reason, f.expectation is not None) for f in found.statuses),
        unverified=tuple(UnverifiedRecord(_expectation_record(expectation), why) for expectation, why in found.unverified),
        first_parting=result.first_parting,
    )


def _expectation_record(expectation: Expectation) -> ExpectationRecord:
    return ExpectationRecord(
        tuple(expectation.fields),
        None if expectation.steps is None else tuple(expectation.steps),
        expectation.status,
        tuple(expectation.runners),
        expectation.reason,
        expectation.link,
        expectation.line,
    )


def results_document(results: Sequence[CaseResult]) -> ResultsDocument:
    """The whole record: schema version, environment, time, and every case."""
    return document_of([case_record(result) for result in results])


def document_of(records: Sequence[CaseRecord]) -> ResultsDocument:
    """A results record around case records already made (as pytest's reports carry them)."""
    return ResultsDocument(tuple(records), environment(), datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), SCHEMA_VERSION)


def results_json(results: Sequence[CaseResult]) -> str:
    """results.json's text: strict JSON (no NaN), plain types only."""
    return document_text(results_document(results))


def document_text(document: ResultsDocument) -> str:
    """A results record as text: each top-level field on a line, then each case on a line of its
    own (line tools and diffs see one case per line). Each line is encoded without indentation,
    by json's C encoder: the whole library's 14 MB took 1.5 s through its indenting encoder, which
    is pure Python, at the end of every run."""
    data = document.to_json()
    fields = [f" {json.dumps(key)}: {_dumps(value)}" for key, value in data.items() if key != "cases"]
    cases = ",\n".join(f"  {_dumps(case)}" for case in data["cases"])
    return "{\n" + ",\n".join([*fields, f' "cases": [\n{cases}\n ]']) + "\n}\n"


def plain_json(value: Any) -> Any:
    """`value` as results.json holds it: plain types, non-finite numbers as strings."""
    return json.loads(_dumps(value))


def _dumps(value: Any) -> str:
    return json.dumps(_finite(value), default=_json_default, allow_nan=False)


class Journal:
    """`results.jsonl`: a header line (schema version, time, environment), then one line per case
    as it finishes, flushed to disk, so that a run killed halfway keeps every finished case."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("w", encoding="utf-8")
        header = results_document([]).to_json()
        del header["cases"]
        self._write({"journal": "bn-harness results", **header})

    def append(self, result: CaseResult) -> None:
        """One finished case."""
        self._write({"case": case_record(result).to_json()})

    def _write(self, entry: dict[str, Any]) -> None:
        self._file.write(_dumps(entry) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def read_journal(path: Path) -> tuple[ResultsDocument, list[int]]:
    """The results record a journal holds (its header and every complete case line), and the
    numbers of the lines left out (at most the last one: only it can be cut short by a kill).

    Raises:
        HarnessError: not readable, not a journal, or a bad line before the last (two runs wrote
            the same journal, or it was edited): recovering it would mix runs.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise HarnessError(f"{path}: cannot read the journal: {error}") from None
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("journal") != "bn-harness results":
        raise HarnessError(f"{path}: not a results journal (its first line is not a bn-harness journal header)")
    cases, dropped = [], []
    for number, line in enumerate(lines[1:], start=2):
        try:
            cases.append(json.loads(line)["case"])
        except (json.JSONDecodeError, KeyError, TypeError):
            if number != len(lines):
                raise HarnessError(
                    f"{path}:{number}: not a case record, and not the last line (two runs wrote this journal, or it was "
                    "edited); recovering it would mix runs"
                ) from None
            dropped.append(number)  # the last line of a killed run may be cut short
    document = {key: value for key, value in header.items() if key != "journal"}
    try:
        return ResultsDocument.from_json({**document, "cases": cases}), dropped
    except RecordError as error:
        raise HarnessError(f"{path}: {error}") from None


class ResultsLocked(HarnessError):
    """Another run holds the lock of these results."""


class ResultsLock:
    """Held by the run that writes a results.json: a second run on the same path is refused,
    naming the first, instead of interleaving their journals. An flock on `<results>.lock`, so
    that a killed run's lock goes with it."""

    def __init__(self, results: Path) -> None:
        self.path = results.with_name(results.name + ".lock")
        self._file: Any = None

    def __enter__(self) -> ResultsLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = self.path.open("a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another run"
                handle.close()
                raise ResultsLocked(
                    f"{self.path.with_suffix('')}: {holder} is writing these results; wait for it, or name other --results"
                ) from None
            # The holder before us unlinks the file as it ends: a lock on the unlinked file is no
            # lock on the path, so take it again on the file the path names now.
            try:
                same = os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        handle.write(f"the run of process {os.getpid()} (started {started})")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.path.unlink(missing_ok=True)  # while still holding it: whoever opened it retries (above)
        self._file.close()


def write_document(path: Path, document: ResultsDocument) -> None:
    """Write a results record (as read back from a journal) as results.json."""
    write_atomically(path, document_text(document))


def write_results(path: Path, results: Sequence[CaseResult]) -> None:
    """Write results.json atomically: a reader never sees half a file."""
    write_atomically(path, results_json(results))


def check_output_path(path: Path) -> None:
    """Refuse, before anything runs, a path an output cannot be written to: one that exists and is
    not a regular file (a rename would replace a device such as /dev/full, or a folder), or one
    whose folder cannot be made or written in.

    Raises:
        HarnessError: with the path and why.
    """
    if path.exists() and not path.is_file():
        raise HarnessError(f"{path}: exists and is not a regular file; name a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HarnessError(f"{path}: cannot make its folder: {error.strerror or error}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise HarnessError(f"{path}: not writable")


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename, with the umask's permissions.

    Raises:
        HarnessError: `path` exists and is not a regular file (the rename would replace it).
    """
    check_output_path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False, encoding="utf-8") as handle:
        handle.write(text)
    # A temporary file is private (0600); results are an artifact others read: honour the umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(handle.name, 0o666 & ~umask)
    os.replace(handle.name, path)


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: write them as the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _json_default(value: object) -> object:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
