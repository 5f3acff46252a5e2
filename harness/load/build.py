"""Build the frozen case parts both case kinds share (inputs, steps, expectations, tolerance)
from a validated document, and check a document against a JSON schema."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jsonschema

from harness.core.case import Expectation, ExportOptions, InputSpec, ModeSetting, StateAssignment, Step, ToleranceOverride
from harness.core.errors import CaseProblem
from harness.core.user_models import expand_mode
from harness.load.grid import step_kind
from harness.load.loader import LoadedDocument, PathKey, format_path
from harness.load.schema_errors import explain_schema_error
from harness.load.schemas import case_schema, schema_registry


def _is_integer(checker: Any, instance: Any) -> bool:
    """An integer is an int: jsonschema counts 2.0 as one, which `range(2.0)` and torch do not."""
    return isinstance(instance, int) and not isinstance(instance, bool)


CaseValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer)
)
# A case may not ask for more input than this (elements of one batch), whichever its kind.
MAX_INPUT_ELEMENTS = 1 << 22
# Where NaN and infinity are what a case states: the literal values of its input batch.
NON_FINITE_ALLOWED = (("input", "values"),)


CrossFieldRules = Callable[[LoadedDocument, frozenset[str]], Iterable[CaseProblem]]


def validation_problems(document: LoadedDocument, schema: dict[str, Any], cross_field: CrossFieldRules) -> list[CaseProblem]:
    """Every problem of a document at once, each once, in file order: the schema's violations, the
    rules between fields (given the fields the schema refused, so that each rule can leave out
    what it cannot read), and every NaN or infinity where a number must be finite."""
    problems = list(schema_problems(document, schema))
    problems += cross_field(document, frozenset(problem.field for problem in problems))
    named = {problem.field for problem in problems}
    problems += [problem for problem in non_finite_problems(document) if problem.field not in named]
    unique = {(problem.line, problem.field, problem.message): problem for problem in problems}  # one message per place
    return sorted(unique.values(), key=lambda problem: (problem.line or 0, problem.field))


def refused_under(refused: frozenset[str], *roots: str) -> bool:
    """Whether the schema refused a field at or under one of `roots` (`expect[0]` covers
    `expect[0].link`; `mode` does not cover `model`): a rule reading it would read malformed data."""
    return any(field == root or field.startswith((root + ".", root + "[")) for field in refused for root in roots)


def schema_problems(document: LoadedDocument, schema: dict[str, Any] | None = None) -> Iterator[CaseProblem]:
    """Every violation of `schema` (default: the case schema), in file order."""
    validator = CaseValidator(schema or case_schema(), registry=schema_registry())
    problems = [problem for error in validator.iter_errors(document.data) for problem in explain_schema_error(document, error)]
    yield from sorted(problems, key=lambda problem: (problem.line or 0, problem.field))


def input_size_problems(
    document: LoadedDocument, sizes: Iterable[tuple[str, int]] = (), shape: Sequence[int] | None = None, path: PathKey = ("input", "shape")
) -> Iterator[CaseProblem]:
    """An input batch above MAX_INPUT_ELEMENTS, or a tensor of the model (`sizes`: what, elements)
    above it: it would be allocated for real, in every runner. `shape` at `path`: a step's own."""
    if shape is None:
        shape = document.data.get("input", {}).get("shape", [])
    elements = math.prod(shape)
    if elements > MAX_INPUT_ELEMENTS:
        yield CaseProblem(document.line_of(path), format_path(path), f"{elements} elements per batch", f"at most {MAX_INPUT_ELEMENTS}")
        return
    largest = max(sizes, key=lambda size: size[1], default=None)
    if largest is not None and largest[1] > MAX_INPUT_ELEMENTS:
        yield CaseProblem(
            document.line_of(path),
            format_path(path),
            f"the model's {largest[0]} would hold {largest[1]} elements",
            f"at most {MAX_INPUT_ELEMENTS} per tensor (a smaller input or bn.num_features)",
        )


def non_finite_problems(document: LoadedDocument) -> list[CaseProblem]:
    """A NaN or infinity in any number but the input's literal values, reported once per field (a
    list of numbers is one field)."""
    fields: dict[PathKey, None] = {}

    def walk(value: Any, path: PathKey) -> None:
        if any(path[: len(allowed)] == allowed for allowed in NON_FINITE_ALLOWED):
            return
        if isinstance(value, float) and not math.isfinite(value):
            field = path
            while field and isinstance(field[-1], int):
                field = field[:-1]
            fields[field] = None
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*path, str(key)))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, (*path, index))

    walk(document.data, ())
    return [
        CaseProblem(document.line_of(path), format_path(path), "not a finite number", "finite numbers (NaN and Inf belong in input values)")
        for path in fields
    ]


def _flatten(values: Any) -> Iterator[float]:
    if isinstance(values, list):
        for item in values:
            yield from _flatten(item)
    else:
        yield float(values)


def mode_setting(raw: str | dict[str, str], submodule_paths: Sequence[str] = (), frozen_batchnorms: Sequence[str] = ()) -> ModeSetting:
    """The `.train(flag)` calls a mode stands for: patterns (`**.bn*`) become one call per
    submodule they name; `frozen_batchnorms` (freeze_batchnorm: true) are put in eval last."""
    assignments = [("", raw == "train")] if isinstance(raw, str) else [(path, value == "train") for path, value in raw.items()]
    expanded = expand_mode(assignments, submodule_paths)
    # Parents before children, as a user writes `model.train(); model.bn.eval()`.
    ordered = sorted(expanded, key=lambda item: 0 if item[0] == "" else item[0].count(".") + 1)
    return ModeSetting(tuple(ordered) + tuple((path, False) for path in frozen_batchnorms))


def expand_steps(
    raw_steps: Iterable[str | dict[str, Any]], raw_input: Mapping[str, Any] | None, dtype: str, submodule_paths: Sequence[str] = ()
) -> Iterator[Step]:
    """Steps as they run: `train_step: {repeat: N}` becomes N steps, each with a fresh batch seed; a
    forward or train_step with its own `input:` draws from the case's input with those fields; a
    set_mode's patterns name the model's `submodule_paths`."""
    input_seed = (raw_input or {}).get("seed", 0)
    index = 0
    for raw in raw_steps:
        kind = step_kind(raw) or ""  # a validated step always has a kind
        options = (raw.get(kind) if isinstance(raw, dict) else None) or {}
        own: dict[str, Any] = {}
        if isinstance(options, dict) and "input" in options:
            own = {
                "input": build_input(merged_step_input(raw_input, options["input"]), dtype),
                "input_label": _input_label(options["input"]),
            }
        if kind == "forward":
            steps = [Step("forward", seed=options.get("seed", input_seed), **own)]
        elif kind == "train_step":
            steps = [Step("train_step", seed=input_seed + index + offset + 1, **own) for offset in range(options.get("repeat", 1))]
        elif kind == "export":
            names = {"input_names": "input_name", "output_names": "output_name"}  # torch's lists of one name
            steps = [
                Step(
                    "export",
                    export=ExportOptions(**{names.get(key, key): value[0] if key in names else value for key, value in options.items()}),
                )
            ]
        elif kind == "set_state":
            state = tuple(
                StateAssignment(path, name, tuple(float(v) for v in values))
                for path, tensors in options.items()
                for name, values in tensors.items()
            )
            steps = [Step("set_state", state=state)]
        elif kind == "reset_running_stats":
            steps = [Step("reset_running_stats", reset=tuple(raw.get(kind) or ()) if isinstance(raw, dict) else ())]
        else:
            steps = [Step("set_mode", mode=mode_setting(options, submodule_paths))]
        for step in steps:
            yield step
            index += 1


DRAWN_INPUT_FIELDS = ("mean", "std", "channel_offset", "channel_scale", "constant_channels")


def merged_step_input(raw_input: Mapping[str, Any] | None, own: Mapping[str, Any]) -> dict[str, Any]:
    """A step's input: the case's `input:` with the step's fields in place. A step that sets how the
    batch is drawn (mean, std, channel_*) and no values draws it, even where the case's is literal."""
    merged = dict(raw_input or {})
    if "values" not in own and any(name in own for name in DRAWN_INPUT_FIELDS):
        merged.pop("values", None)
    merged.update(own)
    return merged


def _input_label(own: Mapping[str, Any]) -> str:
    """`shape=8x3x4x4, channel_offset`: what a step's input changes, for its label."""
    parts = []
    for name, value in own.items():
        if name == "shape" and isinstance(value, list):
            parts.append("shape=" + "x".join(map(str, value)))
        elif name in ("mean", "std"):
            parts.append(f"{name}={value:g}")
        else:
            parts.append(name)
    return ", ".join(parts)


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
        magnitude_rtol=tuple(
            (dtype, float(pair["magnitude_rtol"]))
            for dtype, pair in raw_tolerance.items()
            if dtype != "reason" and "magnitude_rtol" in pair
        ),
    )


def _tuple_or_none(values: list[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(value) for value in values)
