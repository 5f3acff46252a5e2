"""Read what an exported ONNX graph holds about its BatchNorms, and wire training-mode BNs so that
their running statistics are fed in and read back at every run (only onnx, no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True, slots=True)
class BatchNormNode:
    """A BatchNormalization node of the graph, mapped to the torch module path it came from."""

    module_path: str
    node_name: str
    training: bool  # the node's own mode (training_mode, or the output count before opset 14)
    stored_stats: bool  # mean / var are stored constants (initializers, through Identity/Constant), not computed from the batch
    data_input: str
    scale_input: str
    bias_input: str
    mean_input: str
    var_input: str
    epsilon: float
    momentum: float
    mean_source: str | None = None  # the initializer or Constant the mean comes from (None: computed)
    var_source: str | None = None
    per_activation: bool = False  # opset 6-7 spatial=0: statistics per activation
    opset: int = 15
    outputs: int = 1  # the outputs the node names (Y, running mean and var, saved mean and var)
    output_names: tuple[str, ...] = ()

    @property
    def uses_batch_stats(self) -> bool:
        """Normalises with the batch's statistics: in training mode, or fed statistics computed from
        the batch (how the dynamo exporter lowers track_running_stats=False)."""
        return self.training or not self.stored_stats


def spec_refusal(node: BatchNormNode, shapes: Sequence[tuple[int, ...]]) -> str | None:
    """Why the ONNX spec does not define this node on inputs of `shapes` (X, scale, B, mean, var),
    quoting the operator's documentation at the node's opset; None when it does."""
    x_shape = shapes[0]
    version = f"BatchNormalization-{next(v for v in (15, 14, 9, 7, 6, 1) if node.opset >= v)}"
    if len(x_shape) < 2:
        return f"{version}: X has shape {x_shape}; the spec wants (N x C x D1 x ... x Dn)"
    if node.opset < 6 and len(x_shape) != 4:
        return f"{version}: X has shape {x_shape}; 'The input 4-dimensional tensor of shape NCHW'"
    if node.per_activation and node.opset < 7:
        # BN-6 keeps its parameters and statistics 'of size C' while spatial=0 asks for statistics
        # per activation: the spec does not say how the two combine.
        return f"{version}: spatial=0 with parameters of size C; the spec defines no per-activation statistics for them"
    if node.per_activation:  # opsets 7 and 8 (BatchNormalization-7)
        wanted, text = tuple(x_shape[1:]), "If spatial is false, the dimensions of scale are (C x D1 x ... x Dn)"
    else:
        wanted, text = (x_shape[1],), "tensor of shape (C)"
    for name, shape in zip(("scale", "B", "mean", "var"), shapes[1:]):
        if tuple(shape) != wanted:
            return f"{version}: {name} has shape {tuple(shape)}, X has shape {x_shape}; '{text}' ({wanted})"
    if node.opset >= 14 and not node.training and node.outputs > 1:
        return f"{version}: {node.outputs} outputs in inference mode; 'When training_mode=False, extra outputs are invalid'"
    return None


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset the graph was exported with."""
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def find_batchnorms(model: onnx.ModelProto, module_paths: Sequence[str]) -> dict[str, BatchNormNode]:
    """BN nodes by module path: matched by running-stat initializer name, else by order.

    A module path with no node was folded away (into a Conv, or into constants).
    """
    opset = opset_of(model)
    # A statistic is stored where the graph holds it, or fed where a caller supplies it (a graph
    # input without a value, as export_params=False leaves it): either way not computed from the batch.
    stored = {value.name: f"graph input {value.name}" for value in model.graph.input} | stored_sources(model)
    nodes = [node for node in model.graph.node if node.op_type == "BatchNormalization"]
    stat_names = {(f"{path}.running_mean" if path else "running_mean"): path for path in module_paths}
    by_name = {stat_names[node.input[3]]: node for node in nodes if node.input[3] in stat_names}
    if len(by_name) < len(nodes) and len(nodes) == len(module_paths):
        by_name = dict(zip(module_paths, nodes))  # names were rewritten; graph order is module order
    return {path: _describe(path, node, opset, stored) for path, node in by_name.items()}


def _describe(path: str, node: onnx.NodeProto, opset: int, stored: dict[str, str]) -> BatchNormNode:
    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
    outputs = len([name for name in node.output if name])
    if opset >= 14:
        training = bool(attributes.get("training_mode", 0))
    elif opset >= 7:
        # Opsets 7 to 13: the mode is the number of outputs, 5 in training, 1 in inference.
        training = outputs > 1
    else:
        # Opsets 1 and 6: is_test ('If set to nonzero, run spatial batch normalization in test mode, default is 0').
        training = not attributes.get("is_test", 0)
    return BatchNormNode(
        module_path=path,
        node_name=node.name,
        training=training,
        stored_stats=node.input[3] in stored and node.input[4] in stored,
        mean_source=stored.get(node.input[3]),
        var_source=stored.get(node.input[4]),
        per_activation=opset < 9 and not attributes.get("spatial", 1),
        opset=opset,
        outputs=outputs,
        output_names=tuple(node.output),
        data_input=node.input[0],
        scale_input=node.input[1],
        bias_input=node.input[2],
        mean_input=node.input[3],
        var_input=node.input[4],
        epsilon=float(attributes.get("epsilon", 1e-5)),
        momentum=float(attributes.get("momentum", 0.9)),
    )


def data_inputs(model: onnx.ModelProto) -> list[str]:
    """The graph inputs a caller feeds: those that are not also initializers."""
    stored = {initializer.name for initializer in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name not in stored]


def stored_tensors(model: onnx.ModelProto) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor whose value is stored in the graph: name -> (where it is stored, its value).
    Stored are initializers, Constant outputs, and Identity copies of either: the TorchScript
    exporter deduplicates equal initializers and feeds the copies through Identity (a fresh
    BatchNorm's running_var is `Identity(weight)`). Nodes are in topological order, as ONNX requires."""
    stored = {init.name: (init.name, numpy_helper.to_array(init)) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            value = _constant_value(node)
            if value is not None:
                stored[node.output[0]] = (f"Constant {node.name or node.output[0]}", value)
        elif node.op_type == "Identity" and node.input[0] in stored:
            stored[node.output[0]] = stored[node.input[0]]
    return stored


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """A Constant node's value (`value`, or the list and scalar forms), None for forms not read here."""
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name in ("value_floats", "value_float"):
            return np.asarray(helper.get_attribute_value(attribute), dtype=np.float32)
        if attribute.name in ("value_ints", "value_int"):
            return np.asarray(helper.get_attribute_value(attribute), dtype=np.int64)
    return None


def stored_sources(model: onnx.ModelProto) -> dict[str, str]:
    """Where each stored tensor (`stored_tensors`) is stored: an initializer's or a Constant's name."""
    return {name: source for name, (source, _) in stored_tensors(model).items()}


def stored_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The value of each stored tensor (`stored_tensors`), by the name a node consumes it under."""
    return {name: value for name, (_, value) in stored_tensors(model).items()}


@dataclass(frozen=True, slots=True)
class StateWiring:
    """How a training-mode BN's running statistics are fed in and read back at every run."""

    mean_input: str
    var_input: str
    mean_output: str
    var_output: str


def expose_running_stats(model: onnx.ModelProto, nodes: Sequence[BatchNormNode]) -> dict[str, StateWiring]:
    """Make each training-mode BN's running statistics graph inputs and its updated running stats
    graph outputs, in place, so the caller can feed the state back.

    An initializer that only this statistic reads becomes a graph input of the same name; a
    statistic that shares its tensor (a deduplicated initializer, an Identity copy, a Constant)
    gets a graph input of its own, so that feeding it changes nothing else (not the scale that
    shares its initializer).

    Returns:
        module path -> the names to feed and to read back.
    """
    initializers = {initializer.name: initializer for initializer in model.graph.initializer}
    stored = stored_tensors(model)
    # Only stored statistics are state; computed ones (track_running_stats=False) are not fed.
    by_node = {node.node_name: node for node in nodes if node.training and node.stored_stats}
    readers: dict[str, int] = {}
    for graph_node in model.graph.node:
        for name in graph_node.input:
            readers[name] = readers.get(name, 0) + 1
    wiring: dict[str, StateWiring] = {}
    graph_inputs = {value.name for value in model.graph.input}
    moved: set[str] = set()  # initializers that became graph inputs
    for graph_node in model.graph.node:
        node = by_node.get(graph_node.name)
        if node is None or graph_node.op_type != "BatchNormalization":
            continue
        fed = []
        for slot in (3, 4):
            name = graph_node.input[slot]
            if name in initializers and readers.get(name) == 1:
                if name not in graph_inputs:
                    tensor = initializers[name]
                    model.graph.input.append(helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
                    graph_inputs.add(name)
                moved.add(name)
            else:
                value = stored[name][1]
                own = f"{node.module_path or node.node_name}.{'running_mean' if slot == 3 else 'running_var'}.fed_state"
                model.graph.input.append(
                    helper.make_tensor_value_info(own, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))
                )
                graph_inputs.add(own)
                graph_node.input[slot] = own
                name = own
            fed.append(name)
        while len(graph_node.output) < 3:
            graph_node.output.append("")
        for slot, suffix in ((1, "running_mean"), (2, "running_var")):
            if not graph_node.output[slot]:
                graph_node.output[slot] = f"{graph_node.name or node.module_path}_{suffix}_out"
            model.graph.output.append(helper.make_empty_tensor_value_info(graph_node.output[slot]))
        wiring[node.module_path] = StateWiring(fed[0], fed[1], graph_node.output[1], graph_node.output[2])
    # Fed running stats must not also be initializers (a graph input would shadow them anyway).
    kept = [initializer for initializer in model.graph.initializer if initializer.name not in moved]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return wiring
