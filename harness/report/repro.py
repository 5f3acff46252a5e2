"""Repro bundles: a directory per diverging runner with every step's batch and a standalone
repro.py (the frameworks only, not this harness) that replays the case and prints each divergence.

- ONNX exporter runners: also the exported model.onnx and test_data_set_0 in the ONNX backend-test
  layout (the first batch after the export and torch-eager's output for it) and torch-eager's
  observations; the script re-exports with the same exporter (numpy, torch, onnx, onnxruntime).
- Keras runners: the script runs the torch model and the harness's own Keras port side by side
  (numpy, torch, keras on the runner's backend); there is no ONNX model to bundle.
- Graph cases: see `write_graph_bundle`."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.case import Case, GraphCase
from harness.core.errors import HarnessError
from harness.core.inputs import make_batch, step_batch
from harness.core.keras_mapping import Unmappable, keras_mapping
from harness.core.keras_port_table import first_unportable
from harness.core.models import layer_output_shape
from harness.core.runner_table import REFERENCE_RUNNER, SPEC_RUNNER, repro_runner_names, runner_record
from harness.judge.engine import CaseResult
from harness.judge.tolerance import tolerance_for
from harness.run.runners import keras_graph_port, keras_port
from harness.run.runners.keras_worker import port_settings

NUMPY_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}


def bundle_runners(result: CaseResult) -> list[str]:
    """The runners of a case result that a bundle can reproduce: exporters and Keras ports that diverged."""
    diverged = {verdict.other for verdict in result.verdicts if not verdict}
    return [
        run.runner
        for run in result.runs
        if run.runner in diverged
        and run.status == "ok"
        and ((run.runner in repro_runner_names("export") and run.artifacts) or run.runner in repro_runner_names("keras"))
    ]


def write_bundle(case: Case, result: CaseResult, runner: str, directory: Path) -> Path:
    """Write the bundle of `runner`'s divergences in `case` under `directory` and return it.

    Raises:
        HarnessError: no bundle can be made for this case and runner.
    """
    if case.bn.dtype not in NUMPY_DTYPES:
        raise HarnessError(f"{case.path}: no repro bundle for dtype {case.bn.dtype} (NumPy has no bfloat16)")
    if runner in repro_runner_names("keras"):
        return _write_keras_bundle(case, runner, bundle_folder(directory, case.case_id) / runner)
    runs = {run.runner: run for run in result.runs}
    if runner not in repro_runner_names("export") or runner not in runs or "model.onnx" not in runs[runner].artifacts:
        raise HarnessError(
            f"{case.path}: no repro bundle for {runner}: bundles cover the ONNX exporter runners "
            f"that exported a model ({', '.join(repro_runner_names('export'))}) and the Keras runners"
        )
    from onnx import numpy_helper

    bundle = bundle_folder(directory, case.case_id) / runner
    _write_batches(case, bundle)
    (bundle / "model.onnx").write_bytes(runs[runner].artifacts["model.onnx"])
    dtype = NUMPY_DTYPES[case.input.dtype]
    np.save(bundle / "inputs" / "example.npy", make_batch(case.input, case.input.seed).astype(dtype))  # the export's example
    export_index = next(i for i, step in enumerate(case.steps) if step.kind == "export")
    next_export = next((i for i, step in enumerate(case.steps) if i > export_index and step.kind == "export"), len(case.steps))
    reference = runs[result.runs[0].runner]
    # Every forward the bundled graph served (up to the next export), each a data set with what the
    # reference computed there: a divergence a later step makes (a state set after the export) shows.
    forwards = [
        i
        for i, step in enumerate(case.steps)
        if export_index < i < next_export and step.seed is not None and (i, "output") in reference.observations
    ]
    for position, index in enumerate(forwards):
        data = bundle / f"test_data_set_{position}"
        data.mkdir(exist_ok=True)
        batch = step_batch(case.input, case.steps[index]).astype(dtype)
        expected = np.asarray(reference.observations[(index, "output")].value).astype(NUMPY_DTYPES[case.bn.dtype])
        (data / "input_0.pb").write_bytes(numpy_helper.from_array(batch).SerializeToString())
        (data / "output_0.pb").write_bytes(numpy_helper.from_array(expected).SerializeToString())
    (bundle / "data_sets.json").write_text(json.dumps({f"test_data_set_{n}": case.step_label(i) for n, i in enumerate(forwards)}, indent=1))
    observed = {
        f"{field}@{step}": _plain(value.value) for (step, field), value in reference.observations.items() if field.startswith("module.")
    }
    (bundle / "reference.json").write_text(json.dumps({"runner": reference.runner, "observations": observed}, indent=1))
    (bundle / "repro.py").write_text(_script(case, runner))
    return bundle


def _write_batches(case: Case, bundle: Path) -> None:
    """Every forward step's batch, as the case's input dtype, under inputs/step_<index>.npy."""
    (bundle / "inputs").mkdir(parents=True, exist_ok=True)
    dtype = NUMPY_DTYPES[case.input.dtype]
    for index, step in enumerate(case.steps):
        if step.seed is not None:
            np.save(bundle / "inputs" / f"step_{index}.npy", step_batch(case.input, step).astype(dtype))


def _write_keras_bundle(case: Case, runner: str, bundle: Path) -> Path:
    """A Keras runner's bundle: the step batches and a repro.py that carries the port the runner
    used (the table's, or for a user model the graph port with the traced graph) verbatim."""
    try:
        mapping = keras_mapping(case)
        unportable = first_unportable(case.structure) if case.structure is not None else None
    except Unmappable as reason:
        unportable = str(reason)
    if unportable is not None:
        raise HarnessError(f"{case.path}: no repro bundle for {runner}: no Keras port: {unportable}")
    _write_batches(case, bundle)
    spec = case.model_spec
    port_source = f"BN_WEIGHT_ORDER = {keras_port.BN_WEIGHT_ORDER!r}\n\n\n{inspect.getsource(keras_port.KerasPort)}"
    graph_port: dict[str, str] = {"graph": "None", "classes": "None", "facts": "None", "frozen": "None"}
    if case.structure is not None:  # the graph port and its helpers, after the port it extends
        helpers = (keras_graph_port._Chain, keras_graph_port._per_axis, keras_graph_port._activation, keras_graph_port.KerasGraphPort)
        port_source += f"\n\n_BATCHNORMS = {keras_graph_port._BATCHNORMS!r}\n\n\n" + "\n\n".join(
            inspect.getsource(item) for item in helpers
        )
        graph_port = {
            "graph": repr(case.structure.graph),
            "classes": repr(dict(case.structure.modules)),
            "facts": repr(case.structure.leaf_modules),
            "frozen": repr({facts.path for facts in case.structure.batchnorms if facts.frozen}),
        }
        np.save(bundle / "inputs" / "example.npy", make_batch(case.input, case.input.seed).astype(NUMPY_DTYPES[case.input.dtype]))
    (bundle / "repro.py").write_text(
        _render(
            "keras_repro.py.j2",
            case,
            runner=runner,
            backend=runner_record(runner).keras_backend,
            port_source=port_source,
            settings=repr(port_settings(mapping, case)),
            mapping=mapping.summary(),
            submodule_paths=repr(spec.submodule_paths),
            channels_last=repr(case.keras.channels_last(spec.is_bare_batchnorm)),
            fit_batch_size=repr(case.keras.fit_batch_size if case.keras.train_with == "fit" else None),
            **{f"graph_port_{name}": value for name, value in graph_port.items()},
        )
    )
    return bundle


def write_graph_bundle(case: GraphCase, result: CaseResult, directory: Path) -> Path:
    """A graph case's bundle: its model, one backend-test data set per step with the ONNX spec's
    outputs, and a repro.py that runs them in onnxruntime (optimisations on and off) and onnx's
    reference evaluator.

    Raises:
        HarnessError: the case has no spec oracle (not a single BatchNormalization node).
    """
    spec = next((run for run in result.runs if run.runner == SPEC_RUNNER and run.status == "ok"), None)
    if spec is None:
        raise HarnessError(f"{case.path}: no repro bundle: the ONNX spec oracle does not cover this graph")
    bundle = bundle_folder(directory, case.case_id) / "graph"
    for name, content in spec.artifacts.items():
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle / name).write_bytes(content)
    import jinja2

    environment = jinja2.Environment(loader=jinja2.PackageLoader("harness.report", "templates"), keep_trailing_newline=True)
    # The graph's own dtype, as the spec run saw it (a backend test brings it with its data).
    dtype = next((observed.dtype for observed in spec.observations.values() if observed.dtype), case.dtype)
    (bundle / "repro.py").write_text(
        environment.get_template("graph_repro.py.j2").render(case=case, tolerance=tolerance_for([dtype], case.tolerance))
    )
    return bundle


def bundle_folder(directory: Path, case_id: str) -> Path:
    """The folder of a case's bundles under `directory`, named after the case id with only
    characters that cannot leave it (a file stem of `..`, or a grid value with a slash)."""
    name = re.sub(r"[^A-Za-z0-9_.,=\[\]+-]", "_", case_id).lstrip(".") or "_"
    return directory / name


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def _script(case: Case, runner: str) -> str:
    return _render("repro.py.j2", case, runner=runner, dynamo=runner_record(runner).exporter == "dynamo")


def _render(template: str, case: Case, **values: Any) -> str:
    """A repro script: the template with the case's model (the sources and constants of
    _torch_model.py.j2) and `values`."""
    import jinja2

    from harness.run.runners import torch_models, torch_user_model

    carried: list[Any] = [torch_models.make_batchnorm, torch_models.Block, torch_models.build_layer, torch_models.set_batchnorm_state]
    carried.append(layer_output_shape)
    if case.user_model is not None:  # the user's factory, imported as the runners import it
        carried += [
            torch_models.set_batchnorm_values,
            torch_user_model.UserModelError,
            torch_user_model.load_factory,
            torch_user_model.build_user_model,
            torch_user_model.materialize,
            torch_user_model._user_traceback,
        ]
    sources = [inspect.getsource(item) for item in carried]
    environment = jinja2.Environment(loader=jinja2.PackageLoader("harness.report", "templates"), keep_trailing_newline=True)
    steps = [
        {
            "kind": step.kind,
            "label": step.label(),
            "export": None
            if step.export is None
            else {
                "training": step.export.training,
                "opset": step.export.opset,
                "dynamic_batch": step.export.dynamic_batch,
                "constant_folding": step.export.constant_folding,
                "keep_initializers_as_inputs": step.export.keep_initializers_as_inputs,
                "input_name": step.export.input_name,
                "output_name": step.export.output_name,
                "export_params": step.export.export_params,
                "external_data": step.export.external_data,
            },
            "mode": None if step.mode is None else [list(item) for item in step.mode.assignments],
            "state": [[item.path, item.name, list(item.values)] for item in step.state],
            "reset": None if step.kind != "reset_running_stats" else list(step.reset),
        }
        for step in case.steps
    ]
    return environment.get_template(template).render(
        case=case,
        reference=REFERENCE_RUNNER,
        sources="\n\n".join(sources),
        **values,
        # Python literals (repr), not JSON: the script is Python.
        bn=repr({key: getattr(case.bn, key) for key in case.bn.__slots__}),
        steps=repr(steps),
        mode=repr([list(item) for item in case.mode.assignments]),
        bn_paths=repr(list(case.model_spec.batchnorm_paths)),
        user_model=repr(None if case.user_model is None else case.user_model.to_json()),
        bn_by_path=repr([(path, [list(item) for item in values]) for path, values in case.bn_by_path]),
        layers=repr(case.model_spec.root),
        shape=repr(list(case.input.shape)),
        tolerance=tolerance_for([case.dtype], case.tolerance),
    )
