"""Runners of graph cases: a hand-built BatchNormalization node or an ONNX backend test, run by
onnxruntime (with and without graph optimisations) and onnx's reference evaluator, next to the
ONNX spec's float64 oracle (`onnx-spec`) and a backend test's stored outputs (`stored-outputs`)."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.case import GraphCase
from harness.core.errors import RunnerError
from harness.core.fields import GRAPH_OUTPUT_FIELDS
from harness.core.inputs import step_batch
from harness.core.results import BNCall, RunResult
from harness.core.semantics import oracle
from harness.load.graph_schema import backend_test_problems
from harness.run.runners.base import (
    FrameworkMissing,
    ObservationLog,
    Runner,
    clean_reason,
    import_framework,
    import_frameworks,
    skipped,
)
from harness.run.runners.onnx_export import open_executor

OUTPUT_FIELDS = GRAPH_OUTPUT_FIELDS  # graph outputs by position
ONNX_HINT = "pip install onnx onnxruntime"
NUMPY_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}


@dataclass
class GraphSource:
    """The graph and how to feed it at each step."""

    model: Any  # onnx.ModelProto
    data_sets: list[tuple[dict[str, np.ndarray], list[np.ndarray]]] = field(default_factory=list)  # backend test
    initial_state: dict[str, np.ndarray] = field(default_factory=dict)  # built graph: mean and var, fed every step
    state_inputs: tuple[str, str] | None = None  # built training graph: (mean, var) fed from the last outputs

    def feeds(self, case: GraphCase, state: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """The inputs of each step; a built training graph takes its running stats from `state`."""
        if case.node is None:
            for inputs, _ in self.data_sets:
                yield dict(inputs)
            return
        dtype = NUMPY_DTYPES.get(case.node.dtype, np.float32)
        for step in case.steps:
            yield {"x": step_batch(case.input, step).astype(dtype), **state}


def build_node_graph(case: GraphCase) -> GraphSource:
    """A model with one BatchNormalization node as the case describes; mean and var are graph
    inputs or initializers (`statistics`)."""
    import onnx
    from onnx import helper, numpy_helper

    node_spec = case.node
    features, dtype = node_spec.num_features, NUMPY_DTYPES.get(node_spec.dtype, np.float32)
    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    outputs = ["y"]
    # An omitted attribute is the runtime's to default (the schema's epsilon 1e-5, momentum 0.9).
    attributes: dict[str, Any] = {
        name: value for name, value in (("epsilon", node_spec.epsilon), ("momentum", node_spec.momentum)) if name not in node_spec.omit
    }
    if node_spec.opset < 9 and not node_spec.spatial:
        attributes["spatial"] = 0  # BatchNormalization-6 to -8: statistics per activation
    if node_spec.opset < 7:
        attributes["is_test"] = 0 if node_spec.training_mode else 1  # BatchNormalization-6: the mode is is_test
    if node_spec.training_mode:
        outputs += ["running_mean", "running_var"]
        if node_spec.opset < 14:
            outputs += ["saved_mean", "saved_var"]  # opsets 6 to 13: training is the five-output form
        else:
            attributes["training_mode"] = 1
    node = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], outputs, **attributes)
    # Per channel, or per activation (spatial=0: C x D1 x ... x Dn, the input's shape past the batch).
    size = features if node_spec.spatial or node_spec.opset >= 9 else int(np.prod(case.input.shape[1:]))
    parameter_shape = [size] if size == features else list(case.input.shape[1:])
    vector = lambda values, default: np.asarray(values if values is not None else [default] * size, dtype=dtype).reshape(parameter_shape)  # noqa: E731
    initializers = [
        numpy_helper.from_array(vector(node_spec.scale, 1.0), "scale"),
        numpy_helper.from_array(vector(node_spec.bias, 0.0), "bias"),
    ]
    inputs = [helper.make_tensor_value_info("x", element, list(case.input.shape))]
    state = {"mean": vector(node_spec.mean, 0.0), "var": vector(node_spec.var, 1.0)}
    stored = node_spec.statistics == "initializers"
    if stored:
        initializers += [numpy_helper.from_array(values, name) for name, values in state.items()]
    else:
        inputs += [helper.make_tensor_value_info(name, element, parameter_shape) for name in state]
    graph_outputs = [helper.make_tensor_value_info("y", element, list(case.input.shape))]
    graph_outputs += [helper.make_tensor_value_info(name, element, parameter_shape) for name in outputs[1:]]
    graph = helper.make_graph([node], case.case_id, inputs, graph_outputs, initializers)
    opsets = [helper.make_opsetid("", node_spec.opset)]
    # The lowest IR version the opset allows, not the newest onnx knows: older runtimes refuse newer
    # IR; at least 4, from which an initializer need not also be a graph input (opsets 6 to 8 allow IR 3).
    model = helper.make_model(graph, opset_imports=opsets, ir_version=max(helper.find_min_ir_version_for(opsets), 4))
    onnx.checker.check_model(model)
    if stored:
        return GraphSource(model)
    return GraphSource(model, initial_state=state, state_inputs=("mean", "var") if node_spec.training_mode else None)


def load_backend_test(case: GraphCase) -> GraphSource:
    """`onnx:node/NAME` (generated by the onnx package), `onnx:data/PATH` (shipped with it), or a
    directory in the backend-test layout (model.onnx, test_data_set_N/input_i.pb, output_i.pb).

    Raises:
        RunnerError: the test does not exist.
    """
    import onnx

    name = case.backend_test
    for message, _ in backend_test_problems(name, Path(case.directory)):  # again: the folder may have changed since load
        raise RunnerError(f"{case.path}: onnx_backend_test: {message}")
    if name.startswith("onnx:node/"):
        wanted = name.removeprefix("onnx:node/")
        found = [test for test in _onnx_node_tests() if test.name == wanted]
        if not found:
            raise RunnerError(f"{case.path}: onnx_backend_test: onnx generates no node test {wanted!r}")
        test = found[0]
        input_names = [value.name for value in test.model.graph.input]
        return GraphSource(test.model, [(dict(zip(input_names, inputs)), list(outputs)) for inputs, outputs in test.data_sets])
    if name.startswith("onnx:data/"):
        directory = Path(onnx.__file__).parent / "backend" / "test" / "data" / name.removeprefix("onnx:data/")
    else:
        directory = Path(case.directory) / name
    if not (directory / "model.onnx").is_file():
        raise RunnerError(f"{case.path}: onnx_backend_test: no model.onnx in {directory}")
    from harness.run.runners.onnx_graph import data_inputs

    model = onnx.load(str(directory / "model.onnx"))
    input_names = data_inputs(model)
    data_sets = []
    for data_dir in sorted(directory.glob("test_data_set_*"), key=lambda path: int(path.name.rsplit("_", 1)[1])):
        inputs = {name: _read_tensor(data_dir / f"input_{i}.pb") for i, name in enumerate(input_names)}
        outputs = [_read_tensor(path) for path in sorted(data_dir.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))]
        data_sets.append((inputs, outputs))
    return GraphSource(model, data_sets)


@functools.cache
def _onnx_node_tests() -> tuple[Any, ...]:
    """The BatchNormalization node tests the onnx package generates (once per process: the
    generators keep global state). Importing the one module that generates them makes the same
    tests (each generator seeds numpy's RNG itself) in 0.2 s; `collect_testcases` imports every
    operator's generator first, 4.6 s in each worker that runs such a case. It is the fallback,
    should onnx move the module."""
    import importlib

    from onnx.backend.test.case import node

    is_batchnorm = lambda test: test.model.graph.node[0].op_type == "BatchNormalization"  # noqa: E731
    with contextlib.suppress(ImportError):
        importlib.import_module("onnx.backend.test.case.node.batch_normalization")
        tests = tuple(filter(is_batchnorm, getattr(node, "_NodeTestCases", ())))
        if tests:
            return tests
    # Importing every generator runs every operator's module; their numeric warnings are not ours.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return tuple(node.collect_testcases("BatchNormalization"))


def _read_tensor(path: Path) -> np.ndarray:
    from onnx import TensorProto, numpy_helper

    tensor = TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def load_source(case: GraphCase) -> GraphSource:
    """The graph case's graph and data."""
    return build_node_graph(case) if case.node is not None else load_backend_test(case)


def single_batchnorm(source: GraphSource):
    """(the graph node, its description) of a graph that is one BatchNormalization node; None
    for any other graph (what a per-node oracle or mapping cannot stand for)."""
    from harness.run.runners.onnx_graph import find_batchnorms

    nodes = list(source.model.graph.node)
    if [node.op_type for node in nodes] != ["BatchNormalization"]:
        return None
    return nodes[0], next(iter(find_batchnorms(source.model, [""]).values()))  # one node, one path: mapped by order


def _log_outputs(log: ObservationLog, step: int, outputs: list[np.ndarray], names: list[str] | None = None) -> None:
    """Each output under its field (by position); an output the node leaves unnamed is not one."""
    for position, (output_field, values) in enumerate(zip(OUTPUT_FIELDS, outputs)):
        if names is not None and position < len(names) and not names[position]:
            continue
        array = np.asarray(values)
        log.array(step, output_field, array.astype(np.float64), str(array.dtype))


class GraphRunner(Runner):
    """Runs the graph in its record's executor: onnxruntime (with or without optimisations) or
    onnx's reference evaluator."""

    @property
    def executor(self) -> str:
        assert self.record.executor is not None, f"{self.name}: a graph runner's record names its executor"
        return self.record.executor

    @property
    def frameworks(self) -> tuple[str, ...]:
        return ("onnx",) if self.executor == "reference" else ("onnx", "onnxruntime")

    def run(self, case: GraphCase) -> RunResult:
        try:
            versions = import_frameworks(self.frameworks, ONNX_HINT)
        except FrameworkMissing as missing:
            return skipped(self.name, str(missing))

        log = ObservationLog(self.name)
        log.details["versions"] = versions
        source = load_source(case)
        log.details["ir_version"] = source.model.ir_version
        if case.node is not None:  # which form ran: statistics fed as inputs, or stored as initializers
            log.details["statistics"] = case.node.statistics
        try:
            session, _, output_names = open_executor(source.model, self.executor)
        except Exception as error:  # the runtime refusing the graph is a result
            return log.result("run_failed", clean_reason(f"{type(error).__name__}: {error}"))
        state = dict(source.initial_state)
        for step, feeds in enumerate(source.feeds(case, state)):
            try:
                outputs = session.run(None, feeds)
            except Exception as error:  # the runtime's own error types
                log.details["failed_step"] = step
                return log.result("run_failed", clean_reason(f"{type(error).__name__}: {error}"))
            _log_outputs(log, step, outputs)
            if source.state_inputs:
                state.update(zip(source.state_inputs, outputs[1:3]))
        return log.result()


class OnnxSpecRunner(Runner):
    """The ONNX spec's float64 oracle on the graph's single BatchNormalization node, at the node's
    opset (6: is_test and spatial; 7: spatial, mode by the output count; 9; 14 and 15:
    training_mode), with every output the node names. A node the spec does not define on its
    inputs (a shape it rules out) ends run_failed with the sentence it breaks."""

    def run(self, case: GraphCase) -> RunResult:
        try:
            import_framework("onnx", ONNX_HINT)
        except FrameworkMissing as missing:
            return skipped(self.name, str(missing))
        from onnx import numpy_helper

        from harness.run.runners.onnx_graph import data_inputs, opset_of, spec_refusal, stored_values

        source = load_source(case)
        single = single_batchnorm(source)
        if single is None:
            return skipped(self.name, "the graph is not a single BatchNormalization node: no oracle for it")
        graph_node, node = single
        log = ObservationLog(self.name)
        log.details["opset"] = opset_of(source.model)
        log.details["mode"] = "training" if node.training else "inference"
        log.artifacts["model.onnx"] = source.model.SerializeToString()
        input_names = data_inputs(source.model)
        stored = stored_values(source.model)
        state = dict(source.initial_state)
        for step, feeds in enumerate(source.feeds(case, state)):
            values = {**stored, **feeds}
            missing = [name for name in graph_node.input[:5] if name not in values]
            if len(graph_node.input) < 5 or missing:
                return log.result("run_failed", f"the node's inputs are not all given: {missing or list(graph_node.input)}")
            arrays = [np.asarray(values[name]) for name in graph_node.input[:5]]
            refusal = spec_refusal(node, [array.shape for array in arrays])
            if refusal is not None:
                log.details["failed_step"] = step
                return log.result("run_failed", f"the ONNX spec does not define this node: {refusal}")
            data, scale, bias, mean, var = arrays
            call = BNCall(
                semantics="onnx",
                input=data.astype(np.float64),
                channel_axis=1,
                uses_batch_stats=node.training,
                updates_running_stats=node.training,
                eps=node.epsilon,
                momentum=node.momentum,
                weight=scale.astype(np.float64),
                bias=bias.astype(np.float64),
                running_mean_before=mean.astype(np.float64),
                running_var_before=var.astype(np.float64),
                per_activation=node.per_activation,
            )
            log.bn_calls[(step, "")] = call
            result = oracle(call)
            # The spec's values correctly rounded to each output's type (BN-15: Y is T, the
            # running statistics T2, the type of input_mean): what an exact runtime returns.
            dtypes = (data.dtype, mean.dtype, var.dtype, data.dtype, data.dtype)
            exact = (result.output, result.running_mean, result.running_var, result.saved_mean, result.saved_var)
            named = [name for name in graph_node.output][: len(OUTPUT_FIELDS)]
            outputs: list[np.ndarray] = []
            for position, (name, values_, dtype) in enumerate(zip(named, exact, dtypes)):
                if values_ is None:  # inference defines no saved statistics
                    break
                array = np.asarray(values_).astype(dtype)
                outputs.append(array)
                if name:  # an empty name is an output the node does not compute
                    log.array(step, OUTPUT_FIELDS[position], array.astype(np.float64), str(array.dtype))
            # This step as a backend-test data set: what was fed, and what the spec says comes out.
            for position, name in enumerate(input_names):
                log.artifacts[f"test_data_set_{step}/input_{position}.pb"] = numpy_helper.from_array(
                    np.asarray(feeds[name])
                ).SerializeToString()
            for position, array in enumerate(outputs):
                log.artifacts[f"test_data_set_{step}/output_{position}.pb"] = numpy_helper.from_array(array).SerializeToString()
            if source.state_inputs:
                state.update(zip(source.state_inputs, outputs[1:3]))
        return log.result()


class StoredOutputsRunner(Runner):
    """A backend test's stored outputs, as a runner."""

    def run(self, case: GraphCase) -> RunResult:
        if case.node is not None:
            return skipped(self.name, "a hand-built graph has no stored outputs")
        try:
            import_framework("onnx", ONNX_HINT)
        except FrameworkMissing as missing:
            return skipped(self.name, str(missing))
        log = ObservationLog(self.name)
        for step, (_, outputs) in enumerate(load_source(case).data_sets):
            _log_outputs(log, step, outputs or [])
        return log.result()
