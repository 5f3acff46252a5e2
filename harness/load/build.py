"""Build the frozen case parts both case kinds share (inputs, steps, expectations, tolerance)
from a validated document, and check a document against a JSON schema."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema

from harness.core.case import Expectation, ExportOptions, InputSpec, ModeSetting, Step, ToleranceOverride
from harness.core.errors import CaseProblem
from harness.load.grid import step_kind
from harness.load.loader import LoadedDocument
from harness.load.schema_errors import explain_schema_error
from harness.load.schemas import case_schema, schema_registry


def schema_problems(document: LoadedDocument, schema: dict[str, Any] | None = None) -> Iterator[CaseProblem]:
    """Every violation of `schema` (default: the case schema), in file order."""
    validator = jsonschema.Draft202012Validator(schema or case_schema(), registry=schema_registry())
    problems = [problem for error in validator.iter_errors(document.data) for problem in explain_schema_error(document, error)]
    yield from sorted(problems, key=lambda problem: (problem.line or 0, problem.field))


def _flatten(values: Any) -> Iterator[float]:
    if isinstance(values, list):
        for item in values:
            yield from _flatten(item)
    else:
        yield float(values)


def mode_setting(raw: str | dict[str, str]) -> ModeSetting:
    if isinstance(raw, str):
        return ModeSetting((("", raw == "train"),))
    # Parents before children, as a user writes `model.train(); model.bn.eval()`.
    ordered = sorted(raw.items(), key=lambda item: 0 if item[0] == "" else item[0].count(".") + 1)
    return ModeSetting(tuple((path, value == "train") for path, value in ordered))


def expand_steps(raw_steps: Iterable[str | dict[str, Any]], input_seed: int) -> Iterator[Step]:
    """Steps as they run: `train_step: {repeat: N}` becomes N steps, each with a fresh batch seed."""
    index = 0
    for raw in raw_steps:
        kind = step_kind(raw)
        options = (raw.get(kind) if isinstance(raw, dict) else None) or {}
        if kind == "forward":
            steps = [Step("forward", seed=options.get("seed", input_seed))]
        elif kind == "train_step":
            steps = [Step("train_step", seed=input_seed + index + offset + 1) for offset in range(options.get("repeat", 1))]
        elif kind == "export":
            steps = [Step("export", export=ExportOptions(**options))]
        else:
            steps = [Step("set_mode", mode=mode_setting(options))]
        for step in steps:
            yield step
            index += 1


def build_input(raw_input: dict[str, Any], default_dtype: str) -> InputSpec:
    """The input spec of a validated `input:` section."""
    return InputSpec(
        shape=tuple(raw_input["shape"]),
        dtype=raw_input.get("dtype", default_dtype),
        seed=raw_input.get("seed", 0),
        mean=raw_input.get("mean", 0.0),
        std=raw_input.get("std", 1.0),
        channel_offset=_tuple_or_none(raw_input.get("channel_offset")),
        channel_scale=_tuple_or_none(raw_input.get("channel_scale")),
        constant_channels=tuple((entry["channel"], float(entry["value"])) for entry in raw_input.get("constant_channels", [])),
        values=tuple(_flatten(raw_input["values"])) if "values" in raw_input else None,
    )


def build_expectations(document: LoadedDocument) -> tuple[Expectation, ...]:
    """The expectations of a validated document, each with its line."""
    expectations = []
    for index, raw in enumerate(document.data.get("expect", [])):
        steps = raw.get("step")
        expectations.append(
            Expectation(
                runners=tuple(raw["runners"]),
                reason=" ".join(raw["reason"].split()),
                fields=tuple([raw["field"]] if "field" in raw else raw.get("fields", [])),
                steps=None if steps is None else tuple([steps] if isinstance(steps, int) else steps),
                status=raw.get("status"),
                link=raw.get("link"),
                line=document.line_of(("expect", index)),
            )
        )
    return tuple(expectations)


def build_tolerance(data: dict[str, Any]) -> ToleranceOverride | None:
    """A validated document's tolerance override, if any."""
    if "tolerance" not in data:
        return None
    raw_tolerance = data["tolerance"]
    return ToleranceOverride(
        reason=" ".join(raw_tolerance["reason"].split()),
        by_dtype=tuple((dtype, float(pair["rtol"]), float(pair["atol"])) for dtype, pair in raw_tolerance.items() if dtype != "reason"),
    )


def _tuple_or_none(values: list[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(value) for value in values)
