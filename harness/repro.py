"""Repro bundles: for a torch-model case and an ONNX exporter runner that diverged, a directory
with the exported model.onnx and test_data_set_0 in the ONNX backend-test layout (the first batch
after the export and torch-eager's output for it), every step's batch, torch-eager's observations,
and a standalone repro.py (numpy, torch, onnx, onnxruntime; not this harness) that replays the
steps with the same exporter and prints every divergence from torch-eager."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.case import Case, GraphCase
from harness.engine import CaseResult
from harness.errors import HarnessError
from harness.inputs import make_batch
from harness.models import MODEL_SPECS

# Runners that export the user's module, and whether with dynamo (the replay uses the same exporter).
EXPORT_RUNNERS = {"onnx-torchscript-ort": False, "onnx-dynamo-ort": True, "onnx-torchscript-ort-noopt": False,
                  "onnx-dynamo-ort-noopt": True, "onnx-reference": False}
NUMPY_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}


def bundle_runners(result: CaseResult) -> list[str]:
    """The runners of a case result that a bundle can reproduce: exporters that diverged."""
    diverged = {verdict.other for verdict in result.verdicts if not verdict}
    return [run.runner for run in result.runs if run.runner in diverged and run.runner in EXPORT_RUNNERS and run.artifacts]


def write_bundle(case: Case, result: CaseResult, runner: str, directory: Path) -> Path:
    """Write the bundle of `runner`'s divergences in `case` under `directory` and return it.

    Raises:
        HarnessError: no bundle can be made for this case and runner.
    """
    runs = {run.runner: run for run in result.runs}
    if runner not in EXPORT_RUNNERS or runner not in runs or "model.onnx" not in runs[runner].artifacts:
        raise HarnessError(f"{case.path}: no repro bundle for {runner}: bundles cover the ONNX exporter runners "
                           f"that exported a model ({', '.join(EXPORT_RUNNERS)})")
    if case.bn.dtype not in NUMPY_DTYPES:
        raise HarnessError(f"{case.path}: no repro bundle for dtype {case.bn.dtype} (NumPy has no bfloat16)")
    from onnx import numpy_helper

    bundle = directory / case.case_id / runner
    (bundle / "inputs").mkdir(parents=True, exist_ok=True)
    (bundle / "model.onnx").write_bytes(runs[runner].artifacts["model.onnx"])
    dtype = NUMPY_DTYPES[case.input.dtype]
    np.save(bundle / "inputs" / "example.npy", make_batch(case.input, case.input.seed).astype(dtype))  # the export's example
    for index, step in enumerate(case.steps):
        if step.seed is not None:
            np.save(bundle / "inputs" / f"step_{index}.npy", make_batch(case.input, step.seed).astype(dtype))
    export_index = next(i for i, step in enumerate(case.steps) if step.kind == "export")
    forward_after = next((i for i, step in enumerate(case.steps) if i > export_index and step.seed is not None), None)
    reference = runs[result.runs[0].runner]
    if forward_after is not None and (forward_after, "output") in reference.observations:
        data = bundle / "test_data_set_0"
        data.mkdir(exist_ok=True)
        batch = make_batch(case.input, case.steps[forward_after].seed).astype(dtype)
        expected = np.asarray(reference.observations[(forward_after, "output")].value).astype(NUMPY_DTYPES[case.bn.dtype])
        (data / "input_0.pb").write_bytes(numpy_helper.from_array(batch).SerializeToString())
        (data / "output_0.pb").write_bytes(numpy_helper.from_array(expected).SerializeToString())
    observed = {f"{field}@{step}": _plain(value.value) for (step, field), value in reference.observations.items()
                if field.startswith("module.")}
    (bundle / "reference.json").write_text(json.dumps({"runner": reference.runner, "observations": observed}, indent=1))
    (bundle / "repro.py").write_text(_script(case, runner))
    return bundle


def write_graph_bundle(case: GraphCase, result: CaseResult, directory: Path) -> Path:
    """A graph case's bundle: its model, one backend-test data set per step with the ONNX spec's
    outputs, and a repro.py that runs them in onnxruntime (optimisations on and off) and onnx's
    reference evaluator.

    Raises:
        HarnessError: the case has no spec oracle (not a single BatchNormalization node).
    """
    spec = next((run for run in result.runs if run.runner == "onnx-spec" and run.status == "ok"), None)
    if spec is None:
        raise HarnessError(f"{case.path}: no repro bundle: the ONNX spec oracle does not cover this graph")
    bundle = directory / case.case_id / "graph"
    for name, content in spec.artifacts.items():
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle / name).write_bytes(content)
    import jinja2

    from harness.tolerance import tolerance_for

    environment = jinja2.Environment(loader=jinja2.PackageLoader("harness", "templates"), keep_trailing_newline=True)
    (bundle / "repro.py").write_text(environment.get_template("graph_repro.py.j2").render(
        case=case, tolerance=tolerance_for([case.dtype])))
    return bundle


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def _script(case: Case, runner: str) -> str:
    import jinja2

    from harness.runners import torch_models
    from harness.tolerance import tolerance_for

    sources = [inspect.getsource(item) for item in (torch_models.make_batchnorm, torch_models.ConvBN, torch_models.ForumNet,
                                                     torch_models.Head, torch_models.NestedTwoBN)]
    environment = jinja2.Environment(loader=jinja2.PackageLoader("harness", "templates"), keep_trailing_newline=True)
    steps = [{"kind": step.kind, "label": step.label(), "export": None if step.export is None else
              {"training": step.export.training, "opset": step.export.opset, "dynamic_batch": step.export.dynamic_batch},
              "mode": None if step.mode is None else [list(item) for item in step.mode.assignments]} for step in case.steps]
    return environment.get_template("repro.py.j2").render(
        case=case, runner=runner, dynamo=EXPORT_RUNNERS[runner], sources="\n\n".join(sources),
        # Python literals (repr), not JSON: the script is Python.
        bn=repr({key: getattr(case.bn, key) for key in case.bn.__slots__}),
        steps=repr(steps), mode=repr([list(item) for item in case.mode.assignments]),
        bn_paths=repr(list(MODEL_SPECS[case.model].batchnorm_paths)), shape=repr(list(case.input.shape)),
        tolerance=tolerance_for([case.dtype]),
    )
