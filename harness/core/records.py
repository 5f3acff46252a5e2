"""results.json as types: each record encodes itself (`to_json`) and decodes itself (`from_json`),
so that every reader (baseline, matrix, report, pytest plugin) reads attributes, and the key names
exist here only (Polygraphy's RunResults.save/load is the model).

A baseline is a results record with less in it (a comparison keeps the keys of
BASELINE_COMPARISON_KEYS, a runner its status): the decoders require the keys every record has,
and default the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from harness.core.errors import HarnessError
from harness.core.results import Verdict

SCHEMA_VERSION = 1
BASELINE_COMPARISON_KEYS = ("other", "field", "step", "classification", "attribution", "max_abs_diff", "dtype", "nan_count", "inf_count")
# Verdict fields that hold numbers: results.json writes their non-finite values as strings.
_NUMERIC_VERDICT_FIELDS = ("rtol", "atol", "max_abs_diff", "max_rel_diff", "min_atol_to_pass", "min_rtol_to_pass", "rounding_floor")


class RecordError(HarnessError):
    """A results record that lacks a key every record has, or holds the wrong type there."""


def _required(data: Any, key: str, where: str) -> Any:
    if not isinstance(data, Mapping) or key not in data:
        raise RecordError(f"not a results record: {where} has no {key!r}")
    return data[key]


def _number(value: Any) -> float | None:
    """A number as results.json writes it ("nan", "inf" and "-inf" for the non-finite ones)."""
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class ExpectationRecord:
    """The `expect:` entry of a case that a comparison, vanished divergence or unchecked entry refers to."""

    fields: tuple[str, ...]
    steps: tuple[int, ...] | None
    status: str | None
    runners: tuple[str, ...]
    reason: str | None
    link: str | None
    line: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": list(self.fields),
            "steps": None if self.steps is None else list(self.steps),
            "status": self.status,
            "runners": list(self.runners),
            "reason": self.reason,
            "link": self.link,
            "line": self.line,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExpectationRecord:
        steps = data.get("steps")
        return cls(
            tuple(data.get("fields", ())),
            None if steps is None else tuple(steps),
            data.get("status"),
            tuple(data.get("runners", ())),
            data.get("reason"),
            data.get("link"),
            data.get("line"),
        )


@dataclass(frozen=True, slots=True)
class ComparisonRecord:
    """One verdict of a case, with how the case's expectations classify it."""

    verdict: Verdict
    classification: str  # agree | known | new
    expectation: ExpectationRecord | None = None

    @property
    def divergent(self) -> bool:
        return self.classification != "agree"

    def to_json(self) -> dict[str, Any]:
        data = self.verdict.to_json()
        data["classification"] = self.classification
        if self.expectation is not None:
            data["expectation"] = self.expectation.to_json()
        return data

    def to_baseline_json(self) -> dict[str, Any]:
        data = self.to_json()
        return {key: data.get(key) for key in BASELINE_COMPARISON_KEYS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "a comparison") -> ComparisonRecord:
        classification = _required(data, "classification", where)
        values: dict[str, Any] = {
            "field": _required(data, "field", where),
            "step": _required(data, "step", where),
            "other": _required(data, "other", where),
            "step_label": data.get("step_label", ""),
            "reference": data.get("reference", ""),
            "close": data.get("close", classification == "agree"),
            "text": data.get("text", ""),
        }
        optional = {item.name for item in fields(Verdict)} - set(values)
        values.update({name: data[name] for name in optional if name in data})
        for name in _NUMERIC_VERDICT_FIELDS:
            if name in values:
                values[name] = _number(values[name])
        for name in ("max_abs_index", "max_rel_index"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        values["channel_abs_diff"] = tuple(float(value) for value in values.get("channel_abs_diff") or ())
        for name in ("nan_count", "inf_count"):  # absent from records written before they were counted
            values[name] = tuple(int(count) for count in values.get(name) or (0, 0))
        values["attribution_sides"] = tuple(values.get("attribution_sides") or ())
        expectation = data.get("expectation")
        return cls(Verdict(**values), classification, None if expectation is None else ExpectationRecord.from_json(expectation))


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What became of one runner on one case."""

    status: str
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # JSON-able facts: versions, graph, mapping

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "details": dict(self.details)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "a runner") -> RunRecord:
        return cls(_required(data, "status", where), data.get("reason"), data.get("details") or {})


@dataclass(frozen=True, slots=True)
class VanishedRecord:
    """An expected divergence that did not show."""

    expectation: ExpectationRecord
    runner: str
    seen_instead: str | None

    def to_json(self) -> dict[str, Any]:
        return {**self.expectation.to_json(), "runner": self.runner, "seen_instead": self.seen_instead}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VanishedRecord:
        return cls(ExpectationRecord.from_json(data), _required(data, "runner", "a vanished entry"), data.get("seen_instead"))


@dataclass(frozen=True, slots=True)
class StatusRecord:
    """A runner that did not run to completion, and whether the case expects it."""

    runner: str
    status: str
    reason: str | None
    expected: bool

    def to_json(self) -> dict[str, Any]:
        return {"runner": self.runner, "status": self.status, "reason": self.reason, "expected": self.expected}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StatusRecord:
        where = "a status entry"
        return cls(_required(data, "runner", where), _required(data, "status", where), data.get("reason"), bool(data.get("expected")))


@dataclass(frozen=True, slots=True)
class PartingRecord:
    """Where a runner first parts from the reference inside the model: the first BatchNorm (in the
    order a forward runs them) with a divergent field, at the earliest step with any; what follows
    in later BatchNorms and the output is then read from it (Polygraphy's layerwise comparison,
    torch.onnx.verification's find_mismatch)."""

    runner: str
    batchnorm: str
    step: int
    step_label: str
    field: str

    def describe(self) -> str:
        """`layer1.bn1 in keras-tensorflow, after step 3 (forward): layer1.bn1.output`."""
        return f"{self.batchnorm} in {self.runner}, after {self.step_label}: {self.field}"

    def to_json(self) -> dict[str, Any]:
        return {"runner": self.runner, "batchnorm": self.batchnorm, "step": self.step, "step_label": self.step_label, "field": self.field}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PartingRecord:
        where = "a first parting entry"
        return cls(
            _required(data, "runner", where),
            _required(data, "batchnorm", where),
            int(_required(data, "step", where)),
            data.get("step_label") or "",
            _required(data, "field", where),
        )


def parting_summary(records: Sequence[PartingRecord]) -> list[str]:
    """One line per place where runners first part, the runners that part there together:
    `layer1.bn1 in keras-tensorflow, keras-jax, after step 3 (forward): layer1.bn1.output`."""
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for record in records:
        grouped.setdefault((record.batchnorm, record.step_label, record.field), []).append(record.runner)
    return [f"{path} in {', '.join(runners)}, after {label}: {field}" for (path, label, field), runners in grouped.items()]


@dataclass(frozen=True, slots=True)
class UnverifiedRecord:
    """An expectation that could not be checked, and why."""

    expectation: ExpectationRecord
    why: str

    def to_json(self) -> dict[str, Any]:
        return {**self.expectation.to_json(), "why": self.why}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UnverifiedRecord:
        return cls(ExpectationRecord.from_json(data), _required(data, "why", "an unchecked entry"))


@dataclass(frozen=True, slots=True)
class CaseRecord:
    """One case of a run. `judged` is false where the case never reached its expectations (it did
    not load, or the harness failed on it): such a record has no vanished, statuses or unverified."""

    case_id: str
    file: str | None
    outcome: str  # passed | failed | skipped | invalid | error
    description: str = ""
    steps: tuple[str, ...] = ()
    error: str | None = None
    runners: Mapping[str, RunRecord] = field(default_factory=dict)  # in run order, the reference first
    comparisons: tuple[ComparisonRecord, ...] = ()
    judged: bool = False
    vanished: tuple[VanishedRecord, ...] = ()
    statuses: tuple[StatusRecord, ...] = ()
    unverified: tuple[UnverifiedRecord, ...] = ()
    first_parting: tuple[PartingRecord, ...] = ()  # per runner that parts inside a model of several BatchNorms

    @property
    def divergences(self) -> tuple[ComparisonRecord, ...]:
        return tuple(comparison for comparison in self.comparisons if comparison.divergent)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "file": self.file,
            "id": self.case_id,
            "description": self.description,
            "steps": list(self.steps),
            "outcome": self.outcome,
            "error": self.error,
            "runners": {name: run.to_json() for name, run in self.runners.items()},
            "comparisons": [comparison.to_json() for comparison in self.comparisons],
        }
        if self.judged:
            data["vanished"] = [entry.to_json() for entry in self.vanished]
            data["statuses"] = [entry.to_json() for entry in self.statuses]
            data["unverified"] = [entry.to_json() for entry in self.unverified]
            data["first_parting"] = [entry.to_json() for entry in self.first_parting]
        return data

    def to_baseline_json(self) -> dict[str, Any]:
        """What a baseline keeps: outcome, runner statuses and the divergences."""
        return {
            "id": self.case_id,
            "file": self.file,
            "outcome": self.outcome,
            "runners": {name: {"status": run.status} for name, run in self.runners.items()},
            "comparisons": [comparison.to_baseline_json() for comparison in self.divergences],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "a case") -> CaseRecord:
        try:
            return cls._decode(data, where)
        except (TypeError, ValueError, AttributeError, KeyError) as error:  # a value of the wrong type
            raise RecordError(f"not a results record: {where} holds a value of the wrong type ({type(error).__name__}: {error})") from None

    @classmethod
    def _decode(cls, data: Mapping[str, Any], where: str) -> CaseRecord:
        case_id = _required(data, "id", where)
        where = f"case {case_id!r}"
        runners = data.get("runners") or {}
        return cls(
            case_id=case_id,
            file=data.get("file"),
            outcome=_required(data, "outcome", where),
            description=data.get("description") or "",
            steps=tuple(data.get("steps") or ()),
            error=data.get("error"),
            runners={name: RunRecord.from_json(run, f"runner {name!r} of {where}") for name, run in runners.items()},
            comparisons=tuple(ComparisonRecord.from_json(entry, f"a comparison of {where}") for entry in data.get("comparisons") or ()),
            judged="statuses" in data,
            vanished=tuple(VanishedRecord.from_json(entry) for entry in data.get("vanished") or ()),
            statuses=tuple(StatusRecord.from_json(entry) for entry in data.get("statuses") or ()),
            unverified=tuple(UnverifiedRecord.from_json(entry) for entry in data.get("unverified") or ()),
            first_parting=tuple(PartingRecord.from_json(entry) for entry in data.get("first_parting") or ()),
        )


@dataclass(frozen=True, slots=True)
class Environment:
    """Where a run ran: Python, platform, and the version of each package (None: not installed)."""

    python: str | None = None
    platform: str | None = None
    versions: Mapping[str, str | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"python": self.python, "platform": self.platform, "versions": dict(self.versions)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Environment:
        data = data or {}
        return cls(data.get("python"), data.get("platform"), data.get("versions") or {})


@dataclass(frozen=True, slots=True)
class ResultsDocument:
    """A whole results.json (or a baseline, which is one with less in each case)."""

    cases: tuple[CaseRecord, ...]
    environment: Environment = field(default_factory=Environment)
    created: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "created": self.created,
            "environment": self.environment.to_json(),
            "cases": [case.to_json() for case in self.cases],
        }

    def to_baseline_json(self) -> dict[str, Any]:
        return {**self.to_json(), "cases": [case.to_baseline_json() for case in self.cases]}

    def with_cases(self, cases: Sequence[CaseRecord]) -> ResultsDocument:
        return replace(self, cases=tuple(cases))

    @classmethod
    def from_json(cls, data: Any) -> ResultsDocument:
        version = _required(data, "schema_version", "the document")
        cases = _required(data, "cases", "the document")
        if version != SCHEMA_VERSION:
            raise RecordError(f"results record of schema version {version}; this harness reads version {SCHEMA_VERSION}")
        if not isinstance(cases, list):
            raise RecordError("not a results record: 'cases' is not a list")
        try:
            environment = Environment.from_json(data.get("environment"))
        except (TypeError, ValueError, AttributeError) as error:
            raise RecordError(f"not a results record: its environment holds a value of the wrong type ({error})") from None
        return cls(
            tuple(CaseRecord.from_json(case, f"case {index}") for index, case in enumerate(cases)),
            environment,
            data.get("created"),
            version,
        )
