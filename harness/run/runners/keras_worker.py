"""Runs one case in Keras, inside the worker process of its backend (KERAS_BACKEND is
process-global and read when keras is first imported)."""

from __future__ import annotations

import numpy as np

from harness.core.case import Case
from harness.core.fields import OUTPUT, deployed_field
from harness.core.inputs import step_batch
from harness.core.keras_mapping import KerasMapping, per_batchnorm
from harness.core.results import BNCall, RunResult
from harness.run.runners.base import ObservationLog, clean_reason, skipped, version_of
from harness.run.runners.keras_graph_port import KerasGraphPort
from harness.run.runners.keras_port import KerasPort


def run_case_in_worker(runner: str, backend: str, case: Case, mapping: KerasMapping, weights: dict[str, np.ndarray]) -> RunResult:
    """Build the Keras port and walk the case's steps; an export step changes nothing."""
    try:
        import keras
    except ImportError as error:  # a backend's own undeclared dependency, say
        missing = f"; install it with: pip install {error.name}" if error.name else ""
        return skipped(runner, f"keras with KERAS_BACKEND={backend} is not importable ({error}){missing}")
    log = ObservationLog(runner)
    if keras.backend.backend() != backend:  # the pool's initializer guarantees it; a bug otherwise
        raise RuntimeError(f"worker for {backend} runs keras on {keras.backend.backend()}")
    log.details["versions"] = {"keras": version_of(keras), backend: _backend_version(backend)}
    log.details["mapping"] = mapping.to_json()
    log.notes.append(mapping.summary())
    try:
        port = make_port(keras, case, mapping, weights)
    except Exception as error:  # Keras refusing the port (a dtype, a shape) is a result
        return log.result("run_failed", clean_reason(f"{type(error).__name__}: {error}"))
    log.details["batchnorm_weights_copied"] = port.bn_copied
    for index, step in enumerate(case.steps):
        if step.kind in ("forward", "train_step"):
            fits = step.kind == "train_step" and case.keras.train_with == "fit"
            batch = step_batch(case.input, step)
            try:  # a fit leaves moving statistics and returns a loss, not the model's output
                output = port.fit_step(batch, case.keras.fit_batch_size) if fits else port(batch)
            except Exception as error:  # the backend's own error types
                log.details["failed_step"] = index
                return log.result("run_failed", clean_reason(f"{'Model.fit: ' if fits else ''}{type(error).__name__}: {error}"))
            if output is not None:
                log.array(index, OUTPUT, output, port.output_dtype)
        elif step.kind == "set_mode":
            assert step.mode is not None
            port.apply_mode(step.mode.assignments)
        elif step.kind in ("set_state", "reset_running_stats"):
            port.apply_state([(item.path, item.name, item.values) for item in step.state], step.kind == "reset_running_stats", step.reset)
        record_state(port, case, index, log)
    return log.result()


def port_settings(mapping: KerasMapping, case: Case) -> dict:
    """The mapping's values, as the port takes them; `per_bn`: the BatchNorms with their own."""
    return {parameter.name: parameter.value for parameter in mapping.parameters} | {"per_bn": per_batchnorm(case, mapping)}


def make_port(keras, case: Case, mapping: KerasMapping, weights: dict[str, np.ndarray]):
    """The table port for a model of the table, the graph port for a user's traced model."""
    spec = case.model_spec
    if case.structure is not None:
        graph = case.structure.graph
        assert graph is not None, "an untraceable model is skipped before its port is made"
        return KerasGraphPort(
            keras,
            graph,
            dict(case.structure.modules),
            case.structure.leaf_modules,
            {facts.path for facts in case.structure.batchnorms if facts.frozen},
            case.input.shape,
            case.bn.dtype,
            port_settings(mapping, case),
            spec.batchnorm_paths,
            weights,
            list(case.mode.assignments),
            input_dtype=case.input.dtype,
        )
    return KerasPort(
        keras,
        spec.root,
        case.input.shape,
        case.bn.num_features,
        case.bn.dtype,
        port_settings(mapping, case),
        spec.submodule_paths,
        spec.batchnorm_paths,
        weights,
        list(case.mode.assignments),
        input_dtype=case.input.dtype,
        channels_last=case.keras.channels_last(spec.is_bare_batchnorm),
    )


def record_state(port, case: Case, step: int, log: ObservationLog) -> None:
    """Log what each BN was given and returned at the step's forward, and its moving statistics
    under the deployed names."""
    log.bn_calls.update({(step, path): BNCall(semantics="keras", **call) for path, call in port.calls.items()})
    for path, values in port.outputs.items():
        log.array(step, deployed_field(path, "output"), values, port.output_dtype)
    for path, (mean, var) in port.end_step().items():
        log.array(step, deployed_field(path, "running_mean"), mean, case.bn.dtype)
        log.array(step, deployed_field(path, "running_var"), var, case.bn.dtype)


def _backend_version(backend: str) -> str:
    import importlib

    return version_of(importlib.import_module(backend))
