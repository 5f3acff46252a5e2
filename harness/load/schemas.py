"""The JSON schemas of the two case kinds, with the runner table's and the model table's names
filled in. The graph case schema takes the case schema's shared definitions."""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

from harness.core.models import MODEL_SPECS
from harness.core.runner_table import graph_runner_names, runner_names


def case_schema() -> dict[str, Any]:
    """The JSON schema of a case file, with the registries' names filled in (runners registered
    later included)."""
    return _case_schema(runner_names())


@functools.cache
def _case_schema(runners: tuple[str, ...]) -> dict[str, Any]:
    schema = json.loads(resources.files("harness.load").joinpath("case.schema.json").read_text())
    schema["properties"]["model"]["enum"] = list(MODEL_SPECS)
    names = list(runners)
    schema["properties"]["runners"]["items"]["enum"] = names
    schema["$defs"]["expectation"]["properties"]["runners"]["items"]["enum"] = names
    return schema


@functools.cache
def graph_case_schema() -> dict[str, Any]:
    """The graph case schema with the shared definitions of the case schema."""
    base = case_schema()
    schema = json.loads(resources.files("harness.load").joinpath("graph_case.schema.json").read_text())
    schema["$defs"] = copy.deepcopy(base["$defs"])
    schema["properties"]["input"] = copy.deepcopy(base["properties"]["input"])
    schema["properties"]["tolerance"] = copy.deepcopy(base["properties"]["tolerance"])
    # A graph case's steps are forwards only: the case schema's step, without export and set_mode.
    step = copy.deepcopy(base["$defs"]["step"])
    step["anyOf"][0]["enum"] = ["forward", "train_step"]
    for kind in ("export", "set_mode"):
        del step["anyOf"][1]["properties"][kind]
    schema["$defs"]["graph_step"] = step
    schema["properties"]["steps"]["items"] = {"$ref": "#/$defs/graph_step"}
    names = list(graph_runner_names())
    schema["properties"]["runners"]["items"]["enum"] = names
    schema["$defs"]["expectation"]["properties"]["runners"]["items"]["enum"] = names
    return schema
