"""The ONNX runners: export the user's module at the export step with `torch.onnx.export`
(TorchScript or dynamo), then run the graph for the following forwards in onnxruntime (with or
without graph optimisations) or onnx's reference evaluator.

Each reports what the export did to the torch module (modes, buffers, attributes, its next
forwards) and what the graph holds (BN kept or folded, training_mode, initializers against the
module's buffers).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.case import Case, Step
from harness.core.fields import OUTPUT, deployed_field
from harness.core.results import BNCall, RunResult
from harness.core.runner_table import RunnerRecord, runner_record
from harness.run.runners.base import (
    MAX_REASON_CHARS,
    FrameworkMissing,
    ObservationLog,
    Runner,
    clean_reason,
    import_frameworks,
    skipped,
)

ONNX_INSTALL_HINT = "pip install torch==2.13.0 onnx onnxruntime onnxscript"
PROVIDERS = ["CPUExecutionProvider"]


class OnnxExportRunner(Runner):
    """Export with `torch.onnx.export` (its record's exporter: TorchScript, `dynamo=False`, or the
    `torch.export`-based one), then run the graph with its record's executor: onnxruntime (CPU)
    with its default graph optimisations, onnxruntime with none, or onnx's reference evaluator
    (an implementation of the ONNX spec independent of onnxruntime)."""

    def run(self, case: Case) -> RunResult:
        return run_sharing_exports(case, (self.name,))[0]


def _frameworks(record: RunnerRecord) -> tuple[str, ...]:
    """What an export runner imports: torch and onnx, onnxscript for dynamo, onnxruntime to run."""
    return (
        ("torch", "onnx")
        + (("onnxscript",) if record.exporter == "dynamo" else ())
        + (("onnxruntime",) if record.executor != "reference" else ())
    )


def run_sharing_exports(case: Case, names: tuple[str, ...]) -> tuple[RunResult, ...]:
    """Run the export runners `names`, which must share an exporter, on one walk of the module:
    each export step exports once, and each runner opens that graph in its own executor. What is
    measured is unchanged: the runners would make the same export of the same module, each alone.
    A runner whose frameworks are missing is skipped; the others still run."""
    runners = [runner_record(name) for name in names]
    if len({runner.exporter for runner in runners}) != 1:
        raise ValueError(f"runners sharing an export must use the same exporter; got {', '.join(names)}")
    from harness.run.runners.torch_steps import Lane, run_steps

    results: dict[str, RunResult] = {}
    lanes: dict[str, Lane] = {}
    for runner in runners:
        try:
            versions = import_frameworks(_frameworks(runner), ONNX_INSTALL_HINT)
        except FrameworkMissing as missing:
            results[runner.name] = skipped(runner.name, str(missing))
            continue
        log = ObservationLog(runner.name)
        log.details["versions"] = versions
        log.details["exporter"] = {"dynamo": runner.exporter == "dynamo", "executor": runner.executor}
        if len(names) > 1:
            log.details["export_shared_with"] = [name for name in names if name != runner.name]
        lanes[runner.name] = Lane(log, deploy=lambda exported, executor=runner.executor: exported.deploy(executor))
    if lanes:
        with tempfile.TemporaryDirectory(prefix="bn-harness-") as workdir:
            walked = run_steps(case, list(lanes.values()), export=_GraphExporter(case, runners[0].exporter == "dynamo", Path(workdir)))
        results.update(zip(lanes, walked))
    return tuple(results[name] for name in names)


class _GraphExporter:
    """The export step: export, and inspect the graph against the module's buffers."""

    def __init__(self, case: Case, dynamo: bool, workdir: Path) -> None:
        self.case, self.dynamo, self.workdir = case, dynamo, workdir
        self.exports = 0

    def __call__(self, model, example, step: Step) -> ExportedGraph:
        import onnx

        from harness.run.runners.onnx_graph import find_batchnorms, opset_of, stored_values
        from harness.run.runners.torch_models import module_buffers, to_numpy
        from harness.run.runners.torch_steps import StepFailed

        self.exports += 1
        path = self.workdir / f"export_{self.exports}.onnx"
        buffers_before = module_buffers(model, self.case)
        try:
            export_warnings, printed = self._export(model, example, step, path)
            graph = onnx.load(str(path))
        except Exception as error:  # any exporter failure is a result, whatever its type
            raise StepFailed("export_failed", error) from None
        buffers_after = module_buffers(model, self.case)
        bn_paths = self.case.batchnorm_order  # a graph's nodes run in the forward's order
        nodes = find_batchnorms(graph, bn_paths)
        initializers = stored_values(graph)
        graph_outputs = [output.name for output in graph.graph.output]
        stored_names = {initializer.name for initializer in graph.graph.initializer}
        data_input = step.export.input_name
        without_values = [value.name for value in graph.graph.input if value.name != data_input and value.name not in stored_names]
        state = model.state_dict() if without_values else {}  # export_params=False: what a caller would feed by name
        fed = {name: to_numpy(state[name]) for name in without_values if name in state and state[name].is_floating_point()}
        facts = {
            "step": step.label(),
            "opset": opset_of(graph),
            "ops": sorted({node.op_type for node in graph.graph.node}),
            "graph_outputs": graph_outputs,
            # The exporter's own form: what a caller feeds (initializers kept as inputs show here).
            "graph_inputs": [graph_input.name for graph_input in graph.graph.input],
            # What a caller must feed besides the data (export_params=False), and what the harness
            # feeds from the module's tensors of the same name; files the weights went to.
            "inputs_without_values": without_values,
            "inputs_fed_from_module": list(fed),
            "external_data_files": sorted(item.name for item in self.workdir.iterdir() if item.name.startswith(path.name + ".")),
            "graph_state": step.export.graph_state,
            "batchnorm": {
                path: _graph_facts(nodes.get(path), initializers, buffers_before.get(path, {}), buffers_after.get(path, {}), graph_outputs)
                for path in bn_paths
            },
            "warnings": export_warnings,
            "printed": printed,  # progress, and tracebacks the exporter logged and survived
        }
        return ExportedGraph(
            graph,
            nodes,
            initializers,
            self.case,
            facts,
            feed_back=step.export.graph_state == "fed_back",
            data_input=data_input,
            module_feeds=fed,
        )

    def _export(self, model, example, step: Step, path: Path) -> tuple[list[str], str]:
        """Run torch.onnx.export; return its warnings and what it printed."""
        import torch

        options = step.export
        assert options is not None
        training = {
            "eval": torch.onnx.TrainingMode.EVAL,
            "preserve": torch.onnx.TrainingMode.PRESERVE,
            "training": torch.onnx.TrainingMode.TRAINING,
        }[options.training]
        kwargs: dict[str, Any] = {
            "dynamo": self.dynamo,
            "training": training,
            "opset_version": options.opset,
            "input_names": [options.input_name],
            "output_names": [options.output_name],
            "keep_initializers_as_inputs": options.keep_initializers_as_inputs,
        }
        if not options.export_params:
            kwargs["export_params"] = False
        if options.external_data is not None:
            kwargs["external_data"] = options.external_data
        if not options.constant_folding:
            kwargs["optimize" if self.dynamo else "do_constant_folding"] = False
        if options.dynamic_batch:
            if self.dynamo:
                kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
            else:
                kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
        # The exporters print progress and log optional-package notices; keep them as details.
        torch_onnx_logger = logging.getLogger("torch.onnx")
        previous_level = torch_onnx_logger.level
        torch_onnx_logger.setLevel(logging.ERROR)
        printed = io.StringIO()
        try:
            with (
                warnings.catch_warnings(record=True) as caught,
                contextlib.redirect_stdout(printed),
                contextlib.redirect_stderr(printed),
            ):
                warnings.simplefilter("always")
                torch.onnx.export(model, (example,), str(path), **kwargs)
        finally:
            torch_onnx_logger.setLevel(previous_level)
        warning_lines = sorted({f"{warning.category.__name__}: {str(warning.message)[:200]}" for warning in caught})
        return warning_lines, clean_reason(printed.getvalue()[-MAX_REASON_CHARS:])


def _graph_facts(node, initializers, buffers_before, buffers_after, graph_outputs) -> dict[str, Any]:
    if node is None:
        return {"kept": False, "note": "no BatchNormalization node: folded into a neighbour or constants"}
    facts: dict[str, Any] = {
        "kept": True,
        "training_mode": node.training,
        "stored_stats": node.stored_stats,
        "epsilon": node.epsilon,
        "momentum": node.momentum,
        "stats_stored_in": {"running_mean": node.mean_source, "running_var": node.var_source},
    }
    # Which of the node's outputs (Y, running mean and var, saved mean and var) the exporter made
    # graph outputs, and which it computed but dropped (a training graph that exposes only Y).
    names = ("Y", "running_mean", "running_var", "saved_mean", "saved_var")
    facts["outputs_exposed"] = [label for label, name in zip(names, node.output_names) if name and name in graph_outputs]
    facts["outputs_dropped"] = [label for label, name in zip(names, node.output_names) if name and name not in graph_outputs]
    stored = {"running_mean": initializers.get(node.mean_input), "running_var": initializers.get(node.var_input)}
    for when, buffers in (("before_export", buffers_before), ("after_export", buffers_after)):
        facts[f"initializers_equal_module_buffers_{when}"] = all(
            stored[name] is not None and name in buffers and np.array_equal(stored[name].astype(np.float64), buffers[name])
            for name in stored
        )
    return facts


class ExportedGraph:
    """One export step's graph, what it holds, and what the export did; each runner sharing the
    export deploys it in its own executor."""

    def __init__(
        self,
        graph,
        nodes,
        initializers: dict[str, np.ndarray],
        case: Case,
        facts: dict[str, Any],
        feed_back: bool = False,
        data_input: str = "input",
        module_feeds: dict[str, np.ndarray] | None = None,
    ) -> None:
        # initializers: every stored tensor by the name nodes read it under (Identity copies included)
        self.graph, self.nodes, self.initializers, self.case, self.facts = graph, nodes, initializers, case, facts
        self.feed_back = feed_back
        self.serialized = graph.SerializeToString()
        self.data_input = data_input  # the export's input_names[0]
        self.module_feeds = module_feeds or {}  # graph inputs without a value, fed from the module's tensors

    def record(self, log: ObservationLog) -> None:
        log.artifacts.setdefault("model.onnx", self.serialized)  # the first export, as exported
        log.details.setdefault("exports", []).append(self.facts)

    def deploy(self, executor: str) -> GraphDeployed:
        import onnx

        from harness.run.runners.torch_steps import StepFailed

        try:  # each executor gets its own copy: deploying rewires a training graph's state in place
            return GraphDeployed(onnx.load_from_string(self.serialized), self, executor)
        except Exception as error:  # the runtime refusing the graph is a result too
            raise StepFailed("run_failed", error) from None


class GraphDeployed:
    """The exported graph in its executor: as exported (its running statistics are the stored
    ones at every forward), or with each training BN's state fed back (`feed_back`)."""

    def __init__(self, graph, exported: ExportedGraph, executor: str) -> None:
        """`graph`: this executor's own copy of `exported`'s graph."""
        from onnx import helper

        from harness.run.runners.onnx_graph import expose_running_stats

        nodes, initializers = exported.nodes, exported.initializers
        self.nodes, self.case = nodes, exported.case
        self.folded = [path for path in self.case.model_spec.batchnorm_paths if path not in nodes]
        self.initializers = initializers
        self.last_calls: dict[str, BNCall] = {}  # what each BN node was given at the last forward
        self.state_wiring = expose_running_stats(graph, list(nodes.values())) if exported.feed_back else {}
        # The running stats as the graph holds them: initializers, then whatever training updates.
        # export_params=False: the module's tensors a caller feeds by name, in the inputs' dtypes.
        dtypes = {value.name: helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type) for value in graph.graph.input}
        self.fixed_feeds = {name: values.astype(dtypes[name]) for name, values in exported.module_feeds.items()}
        held = {**self.fixed_feeds, **initializers}  # what the graph normalises with: stored, else fed
        self.state = {
            path: {"running_mean": held.get(node.mean_input), "running_var": held.get(node.var_input)} for path, node in nodes.items()
        }
        self.session, self.input_name, self.output_names = open_executor(graph, executor, exported.data_input)
        # What each BatchNorm node inside the graph is given and returns is read from an analysis
        # copy that exposes those tensors as outputs, never from the deployed session: exposing
        # a tensor changes what onnxruntime may fuse, so the deployed output stays the session's.
        self.inside = {path: node for path, node in nodes.items() if path}  # a bare BatchNorm's output is the graph's
        self.unread: str | None = None  # why the BatchNorms inside could not be read, if they could not
        self.analysis = self._analysis_copy(graph, executor) if self.inside else None
        self.last_outputs: dict[str, np.ndarray] = {}

    def _analysis_copy(self, graph, executor: str):
        """(session, names of the tensors it exposes) of a copy of the graph whose every inside
        BatchNorm's input and output are graph outputs; None where the runtime refuses the copy."""
        from onnx import helper

        copy = type(graph)()
        copy.CopyFrom(graph)
        exposed = {value.name for value in copy.graph.output}
        elem_type = next(value.type.tensor_type.elem_type for value in copy.graph.input if value.name == self.input_name)
        for node in self.inside.values():
            for name in (node.data_input, node.output_names[0]):
                if name and name not in exposed:
                    copy.graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
                    exposed.add(name)
        try:
            session, _, names = open_executor(copy, executor, self.input_name)
        except Exception as error:  # the runtime refusing the copy leaves the BatchNorms inside without oracles
            self.unread = f"the analysis copy was refused: {type(error).__name__}: {str(error)[:300]}"
            return None
        return session, names

    def forward(self, batch) -> np.ndarray:
        from harness.run.runners.torch_steps import StepFailed

        feeds = {self.input_name: _feed_array(batch), **self.fixed_feeds}
        self.last_calls = {
            path: self._call(node, feeds[self.input_name]) for path, node in self.nodes.items() if node.data_input == self.input_name
        }
        for path, wiring in self.state_wiring.items():
            feeds[wiring.mean_input] = self.state[path]["running_mean"]
            feeds[wiring.var_input] = self.state[path]["running_var"]
        try:
            values = dict(zip(self.output_names, self.session.run(None, feeds)))
        except Exception as error:  # the runtime's own error types
            raise StepFailed("run_failed", error) from None
        self._read_inside(feeds)
        for path, wiring in self.state_wiring.items():
            self.state[path] = {"running_mean": values[wiring.mean_output], "running_var": values[wiring.var_output]}
        return np.asarray(values[self.output_names[0]]).astype(np.float64)

    def _read_inside(self, feeds: dict[str, Any]) -> None:
        """Each inside BatchNorm's call and output, from the analysis copy run on the same feeds
        (with the state as it was before this forward)."""
        self.last_outputs = {}
        if self.analysis is None:
            return
        session, names = self.analysis
        try:
            values = dict(zip(names, session.run(None, feeds)))
        except Exception as error:  # the copy failing where the deployed graph ran: no oracles inside, the output stands
            self.unread = f"the analysis copy failed: {type(error).__name__}: {str(error)[:300]}"
            return
        for path, node in self.inside.items():
            if node.data_input in values and node.output_names[0] in values:
                self.last_calls[path] = self._call(node, values[node.data_input])
                self.last_outputs[path] = np.asarray(values[node.output_names[0]]).astype(np.float64)

    def _call(self, node, data: np.ndarray) -> BNCall:
        """The node's call in ONNX terms (only for nodes fed by the graph input: exposing an internal
        tensor as an output would change what onnxruntime may fuse)."""
        state = self.state[node.module_path]
        as_float64 = lambda values: None if values is None else np.asarray(values).astype(np.float64)  # noqa: E731
        return BNCall(
            semantics="onnx",
            input=as_float64(data),
            channel_axis=1,
            uses_batch_stats=node.uses_batch_stats,
            updates_running_stats=node.module_path in self.state_wiring,
            eps=node.epsilon,
            momentum=node.momentum,
            weight=as_float64(self.initializers.get(node.scale_input)),
            bias=as_float64(self.initializers.get(node.bias_input)),
            running_mean_before=as_float64(state["running_mean"]),
            running_var_before=as_float64(state["running_var"]),
        )

    def record_state(self, step: int, log: ObservationLog) -> None:
        log.bn_calls.update({(step, path): call for path, call in self.last_calls.items()})
        for path, values in self.last_outputs.items():
            log.array(step, deployed_field(path, OUTPUT), values, self.case.input.dtype)
        if self.unread is not None:  # said, not silently dropped: these BatchNorms have no output field and no oracle
            log.details.setdefault("inside_batchnorms_unread", self.unread)
        self.last_calls, self.last_outputs = {}, {}
        for path in self.folded:
            # Folded into constants: only an inference BatchNorm can be (its statistics are fixed).
            log.value(step, deployed_field(path, "uses_batch_stats"), False)
        for path, node in self.nodes.items():
            log.value(step, deployed_field(path, "uses_batch_stats"), node.uses_batch_stats)
            for name, values in self.state[path].items():
                if values is not None:
                    log.array(step, deployed_field(path, name), np.asarray(values).astype(np.float64), self.case.bn.dtype)


def open_executor(graph, executor: str, data_input: str | None = None):
    """(something with .run(None, feeds), the data input's name, the output names): `data_input`
    where the graph has it, else its first input."""
    if executor == "reference":
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(graph)
        names = list(evaluator.input_names)
        return evaluator, data_input if data_input in names else names[0], list(evaluator.output_names)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would land on the user's terminal
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # one thread per worker (harness.run.execution)
    if executor == "ort-noopt":
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(graph.SerializeToString(), options, providers=PROVIDERS)
    names = [value.name for value in session.get_inputs()]
    return session, data_input if data_input in names else names[0], [output.name for output in session.get_outputs()]


def _feed_array(batch) -> np.ndarray:
    """A torch batch as the executors take it (bfloat16 through ml_dtypes)."""
    import torch

    if batch.dtype == torch.bfloat16:
        import ml_dtypes  # an onnx dependency; NumPy itself has no bfloat16

        return batch.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return batch.numpy()
