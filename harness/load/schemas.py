"""The JSON schemas of the two case kinds. What both kinds share (input, tolerance, expectations,
the forward and train_step steps, ...) is defined once, in shared.schema.json, and each kind's
schema references it by `$ref`: validate with `schema_registry()`, which resolves those references.

Each kind's schema declares its own `runner_name` (the `$dynamicAnchor` that the shared runner
lists refer to), filled here with the names of the runner table's runners of that kind; the case
schema's `model` is filled with the model table's names."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import referencing
from referencing.jsonschema import DRAFT202012

from harness.core.models import MODEL_SPECS
from harness.core.runner_table import graph_runner_names, runner_names


def _document(name: str) -> dict[str, Any]:
    return json.loads(resources.files("harness.load").joinpath(name).read_text())


@functools.cache
def shared_schema() -> dict[str, Any]:
    """The definitions both case kinds share (shared.schema.json)."""
    return _document("shared.schema.json")


def schema_registry() -> referencing.Registry:
    """The registry a validator of either case schema resolves the shared definitions with:
    `Draft202012Validator(case_schema(), registry=schema_registry())`. It holds the two case
    schemas too, crawled, so that a `$dynamicRef` finds their `runner_name` without crawling them
    again at every use."""
    return _registry(runner_names(), graph_runner_names())


@functools.cache
def _registry(runners: tuple[str, ...], graph_runners: tuple[str, ...]) -> referencing.Registry:
    documents = (shared_schema(), _case_schema(runners), _graph_case_schema(graph_runners))
    return referencing.Registry().with_resources((document["$id"], DRAFT202012.create_resource(document)) for document in documents).crawl()


def case_schema() -> dict[str, Any]:
    """The JSON schema of a case file, with the registries' names filled in (runners registered
    later included)."""
    return _case_schema(runner_names())


@functools.cache
def _case_schema(runners: tuple[str, ...]) -> dict[str, Any]:
    schema = _document("case.schema.json")
    schema["properties"]["model"]["then"]["enum"] = list(MODEL_SPECS)
    schema["$defs"]["runner_name"]["enum"] = list(runners)
    return schema


def graph_case_schema() -> dict[str, Any]:
    """The JSON schema of a graph case file, with the graph runners' names filled in (runners
    registered later included)."""
    return _graph_case_schema(graph_runner_names())


@functools.cache
def _graph_case_schema(runners: tuple[str, ...]) -> dict[str, Any]:
    schema = _document("graph_case.schema.json")
    schema["$defs"]["runner_name"]["enum"] = list(runners)
    return schema
