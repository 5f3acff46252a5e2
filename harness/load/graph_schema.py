"""Validation of graph cases (`onnx_graph:` or `onnx_backend_test:`): the graph schema, assembled
from the shared parts of the case schema, and the cross-field rules."""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.core.case import GraphCase, GraphNodeSpec
from harness.core.errors import CaseError, CaseProblem
from harness.core.fields import GRAPH_OUTPUT_FIELDS, field_matches
from harness.core.runner_table import GRAPH_REFERENCES
from harness.load.build import build_expectations, build_input, build_tolerance, expand_steps, input_size_problems, validation_problems
from harness.load.loader import LoadedDocument, format_path, quoted, shortened
from harness.load.schemas import graph_case_schema

GRAPH_FIELDS = GRAPH_OUTPUT_FIELDS
GRAPH_KEYS = ("onnx_graph", "onnx_backend_test")


def is_graph_case(data: Any) -> bool:
    """Whether a document is a graph case rather than a torch-model case."""
    return isinstance(data, dict) and any(key in data for key in GRAPH_KEYS)


def graph_case_from_document(document: LoadedDocument, case_id: str, source: str, directory: Path | None = None) -> GraphCase:
    """Validate a graph case and build it; a backend-test folder is looked for under `directory`
    (the case file's folder; default: the folder of `source`).

    Raises:
        CaseError: with every problem found.
    """
    directory = directory if directory is not None else Path(source).parent
    problems = validation_problems(
        document,
        graph_case_schema(),
        # The graph rules read a whole node or backend test: left out while the schema refuses anything.
        lambda checked, refused: () if refused else _cross_field_problems(checked, directory),
    )
    if problems:
        raise CaseError(source, problems)
    data = document.data
    node = None
    if "onnx_graph" in data:
        node_fields: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in data["onnx_graph"].items()}
        node = GraphNodeSpec(**node_fields)
    # A hand-built node brings its input (the cross-field rules make sure); a backend test its data.
    input_spec = build_input(data["input"], node.dtype) if node is not None and "input" in data else None
    return GraphCase(
        case_id=case_id,
        path=source,
        description=" ".join(data["description"].split()),
        node=node,
        backend_test=data.get("onnx_backend_test"),
        input=input_spec,
        steps=tuple(expand_steps(data.get("steps", []), data.get("input"), input_spec.dtype if input_spec else "float32")),
        expectations=build_expectations(document),
        tolerance=build_tolerance(data),
        runners=tuple(data["runners"]) if "runners" in data else None,
        timeout_s=float(data["timeout"]) if "timeout" in data else None,
        directory=str(directory),
    )


def _cross_field_problems(document: LoadedDocument, directory: Path) -> Iterator[CaseProblem]:
    data = document.data

    def problem(path, message, allowed=None) -> CaseProblem:
        return CaseProblem(document.line_of(path), format_path(path), message, allowed)

    if sum(key in data for key in GRAPH_KEYS) != 1:
        yield problem((), "a graph case names either onnx_graph or onnx_backend_test", "exactly one of them")
        return
    built = "onnx_graph" in data
    for key in ("input", "steps"):
        if built and key not in data:
            yield problem((), f"a hand-built graph needs {key}", "input and steps")
        if not built and key in data:
            yield problem((key,), "a backend test brings its own inputs and data sets", "no input or steps")
    if built:
        node = data["onnx_graph"]
        features = node["num_features"]
        per_activation = node.get("spatial") is False
        if per_activation and node["opset"] >= 9:  # from BatchNormalization-9 on, every node is spatial
            yield problem(("onnx_graph", "spatial"), "spatial false exists up to opset 8", "opset 6, 7 or 8, or spatial true")
        for name in node.get("omit", []):
            if name in node:
                yield problem(
                    ("onnx_graph", name), f"{name} is given and omitted", f"either a value or omit: [{name}] (the schema's default)"
                )
        input_shape = data.get("input", {}).get("shape", [])
        size = math.prod(input_shape[1:]) if per_activation and len(input_shape) >= 2 else features
        what = (
            f"one per activation ({'x'.join(map(str, input_shape[1:]))} with spatial false)"
            if per_activation
            else f"num_features={features}"
        )
        for name in ("scale", "bias", "mean", "var"):
            if name in node and len(node[name]) != size:
                yield problem(("onnx_graph", name), f"{len(node[name])} values for {what}", f"{size} values")
        if any(value < 0 for value in node.get("var", [])):  # as a torch case's running_var
            yield problem(("onnx_graph", "var"), "a variance is negative", "values >= 0")
        shape = data.get("input", {}).get("shape", [])
        yield from input_size_problems(document)
        if len(shape) >= 2 and shape[1] != features:
            yield problem(("input", "shape", 1), f"{shape[1]} channels but num_features is {features}", str(features))
    if not built:
        for message, allowed in backend_test_problems(data["onnx_backend_test"], directory):
            yield problem(("onnx_backend_test",), message, allowed)
    reference = GRAPH_REFERENCES["node" if built else "backend_test"]
    step_count = len(list(_expanded(data))) if built else None
    for index, raw in enumerate(data.get("expect", [])):
        path = ("expect", index)
        if ("field" in raw or "fields" in raw) == ("status" in raw):
            yield problem(path, "an expectation names either field / fields or status", "exactly one of them")
            continue
        for pattern in [raw["field"]] if "field" in raw else raw.get("fields", []):
            if not any(field_matches(pattern, name) for name in GRAPH_FIELDS):
                yield problem((*path, "field"), f"{quoted(pattern)} matches no field of a graph case", ", ".join(GRAPH_FIELDS))
        if "status" not in raw and reference in raw["runners"]:
            yield problem((*path, "runners"), f"{reference} is the reference of this case", "the runner(s) that differ from it")
        steps = raw.get("step")
        for step in [steps] if isinstance(steps, int) else steps or []:
            if step_count is not None and step >= step_count:
                yield problem((*path, "step"), f"step {step} does not exist", f"0..{step_count - 1}")


def backend_test_problems(name: str, directory: Path) -> Iterator[tuple[str, str]]:
    """(what is wrong, what is allowed) with a backend test's name: a folder is read only inside
    the case file's folder, or inside onnx's own backend-test data (found without importing onnx);
    a node test is a plain name (whether onnx generates it is known once onnx is imported)."""
    if name.startswith("onnx:node/"):
        if not re.fullmatch(r"[A-Za-z0-9_]+", name.removeprefix("onnx:node/")):
            yield "not the name of a node test", "onnx:node/<test name>, letters, digits and _"
        return
    if name.startswith("onnx:data/"):
        spec = importlib.util.find_spec("onnx")
        if spec is None or not spec.submodule_search_locations:
            return  # onnx is not installed: the runners say so
        root = Path(spec.submodule_search_locations[0]) / "backend" / "test" / "data"
        inside, where = name.removeprefix("onnx:data/"), "onnx's backend-test data folder"
    else:
        root, inside, where = directory, name, "the case file's folder"
        if Path(name).is_absolute():
            yield "an absolute path", f"a folder under {where}"
            return
    target = (root / inside).resolve()
    if not target.is_relative_to(root.resolve()):
        yield f"{shortened(name)} leads out of {where}", f"a folder under {where}"
    elif not (target / "model.onnx").is_file():
        yield f"no model.onnx in {shortened(name)}", "a folder in the ONNX backend-test layout (model.onnx, test_data_set_N/)"
    else:  # what the runners read in it: the model and the data sets, each a symlink perhaps
        read = [target / "model.onnx", *target.glob("test_data_set_*"), *target.glob("test_data_set_*/*")]
        outside = next((entry for entry in read if not entry.resolve().is_relative_to(root.resolve())), None)
        if outside is not None:
            yield f"{shortened(name)}/{outside.relative_to(target)} leads out of {where}", f"files under {where}"


def _expanded(data: dict[str, Any]):
    return expand_steps(data.get("steps", []), data.get("input"), "float32")  # for the count of steps
