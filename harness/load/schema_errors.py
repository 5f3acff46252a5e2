"""Schema violations in the user's words: `steps[2].mode: 'evaluate' is not allowed; allowed:
train, eval`, an anyOf explained by the branch the author meant."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Any

from jsonschema.exceptions import ValidationError

from harness.core.errors import CaseProblem
from harness.load.loader import LoadedDocument, PathKey, format_path, quoted
from harness.load.schemas import case_schema, shared_schema


def explain_schema_error(document: LoadedDocument, error: ValidationError) -> Iterator[CaseProblem]:
    """The problems behind one schema error: an anyOf is explained by the branch that was meant."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        yield _problem(document, error)
        return
    branch_errors = _meant_branch_errors(error)
    depth = len(error.absolute_path)
    if all(len(sub.absolute_path) == depth and sub.validator in ("enum", "type") for sub in branch_errors):
        # The value itself fits none of the alternatives: list them all.
        path = tuple(error.absolute_path)
        yield CaseProblem(document.line_of(path), format_path(path), f"{quoted(error.instance)} is not allowed", _alternatives_text(error))
        return
    for sub in branch_errors:
        yield from explain_schema_error(document, sub)


def _problem(document: LoadedDocument, error: ValidationError) -> CaseProblem:
    path: PathKey = tuple(error.absolute_path)
    validator, value, instance = error.validator, error.validator_value, error.instance
    if validator == "additionalProperties" and isinstance(instance, dict):
        allowed_names = list(error.schema.get("properties", {}))
        unknown = [key for key in instance if key not in allowed_names]
        key_path = (*path, str(unknown[0])) if unknown else path
        message = "unknown field" if len(unknown) <= 1 else f"unknown fields {', '.join(map(str, unknown))}"
        return CaseProblem(
            document.line_of(key_path),
            format_path(key_path),
            message + _suggestion(unknown[0] if unknown else None, allowed_names),
            ", ".join(allowed_names) or "no fields",
        )
    line, field = document.line_of(path), format_path(path)
    if validator == "required":
        # One error per missing field, each naming it in its message (validator_value lists them all).
        named = re.match(r"^'(.*)' is a required property$", error.message)
        missing = named.group(1) if named else next(name for name in value if name not in instance)
        # A requirement of one kind of case (bn for a model of the table) says which, in its description.
        return CaseProblem(line, field, f"missing required field {missing!r}", error.schema.get("description") or ", ".join(value))
    if validator == "enum":
        suggestion = _suggestion(instance, [str(item) for item in value])
        allowed = ", ".join(map(str, value)) + (f", {error.schema['description']}" if error.schema.get("description") else "")
        return CaseProblem(line, field, f"{quoted(instance)} is not allowed{suggestion}", allowed)
    if validator == "type":
        return CaseProblem(line, field, f"got {_type_name(instance)} {quoted(instance)}", _allowed_types(value))
    if validator in _BOUNDS:
        return CaseProblem(line, field, f"got {quoted(instance)}", f"{_BOUNDS[validator]} {value}")
    if validator in ("minItems", "maxItems"):
        bound = "at least" if validator == "minItems" else "at most"
        return CaseProblem(line, field, f"got {len(instance)} items", f"{bound} {value} items")
    if validator in ("minProperties", "maxProperties"):
        bound = "at least" if validator == "minProperties" else "exactly" if value == 1 else "at most"
        return CaseProblem(line, field, f"got {len(instance)} keys", f"{bound} {value} key(s)")
    if validator == "minLength":
        return CaseProblem(line, field, "must not be empty", "a non-empty string")
    if validator == "pattern":
        return CaseProblem(line, field, f"{quoted(instance)} does not match", f"a string matching {value}")
    if validator == "uniqueItems":
        return CaseProblem(line, field, "items repeat", "each item once")
    return CaseProblem(line, field, error.message)


def _suggestion(written: Any, names: list[str]) -> str:
    """` (did you mean 'eval'?)` when one allowed name is close to what was written (difflib's
    ratio of at least 0.6, as Python's own "did you mean" for names)."""
    if not isinstance(written, str) or len(names) < 2:  # one allowed name: the allowed list says it
        return ""
    close = difflib.get_close_matches(written, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _alternatives_text(error: ValidationError) -> str | None:
    """`forward, export, train_step, or a mapping with one key of: forward, ..., set_mode`."""
    words: list[str] = []
    for branch in error.schema.get(error.validator, []):
        branch = _resolve(branch)
        if "enum" in branch:
            words += [str(value) for value in branch["enum"]]
        elif branch.get("type") == "object" and "properties" in branch:
            words.append("or a mapping with one key of: " + ", ".join(branch["properties"]))
        elif branch.get("type") == "object":
            words.append("or a mapping of submodule path to one of those")
        elif branch.get("type") == "array":
            words.append("a list")
        elif "type" in branch:
            words.append(_allowed_types(branch["type"]))
    return ", ".join(words) or None


def _resolve(branch: dict[str, Any]) -> dict[str, Any]:
    """An anyOf branch written as a local `$ref`, as its definition. The anyOf lists that have one
    (`mode`'s `train_or_eval`) live in the case schema; the shared document's names are distinct
    from its own, so either finds the definition."""
    reference = branch.get("$ref", "")
    if reference.startswith("#/$defs/"):
        name = reference.removeprefix("#/$defs/")
        for schema in (case_schema(), shared_schema()):
            if name in schema["$defs"]:
                return schema["$defs"][name]
    return branch


def _meant_branch_errors(error: ValidationError) -> list[ValidationError]:
    """The errors of the anyOf branch the author meant: one of the written value's type, whose
    errors lie deepest (it got furthest)."""
    branches = error.schema[error.validator]
    by_branch: dict[int, list[ValidationError]] = {}
    for sub in error.context:
        by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
    fitting = [index for index in by_branch if _fits_type(_resolve(branches[index]), error.instance)] or list(by_branch)
    chosen = max(fitting, key=lambda index: max(len(sub.absolute_path) for sub in by_branch[index]))
    return by_branch[chosen]


def _fits_type(branch: dict[str, Any], instance: Any) -> bool:
    if "enum" in branch:
        return any(type(value) is type(instance) for value in branch["enum"])
    declared = branch.get("type")
    types = [declared] if isinstance(declared, str) else declared or []
    python_types: dict[str, type | tuple[type, ...]] = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "number": (int, float),
        "null": type(None),
    }
    return any(isinstance(instance, python_types.get(name, object)) for name in types)


_BOUNDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}


def _type_name(instance: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    return "null" if instance is None else names.get(type(instance), type(instance).__name__)


def _allowed_types(value: str | list[str]) -> str:
    names = {
        "object": "a mapping",
        "array": "a list",
        "number": "a number",
        "integer": "an integer",
        "string": "a string",
        "boolean": "true or false",
        "null": "null",
    }
    types = [value] if isinstance(value, str) else value
    return " or ".join(names.get(name, name) for name in types)
