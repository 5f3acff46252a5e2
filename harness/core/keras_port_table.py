"""Which parts of a user's torch model the generic Keras port maps: one table of module classes,
functions and tensor methods (what torch.fx records), each with the Keras counterpart the port
(`harness.run.runners.keras_graph_port`) builds, and the constructor values it can map.

A model with anything else skips the Keras runners with a reason naming the first node the port
cannot map (`first_unportable`), in the traced graph's order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from harness.core.user_models import ModelStructure


def _conv(facts: Mapping[str, Any]) -> str | None:
    if facts["padding_mode"] != "zeros":
        return f"padding_mode={facts['padding_mode']!r} (Keras pads with zeros)"
    if isinstance(facts["padding"], str):
        return f"padding={facts['padding']!r} (the port maps explicit paddings)"
    groups, channels = facts["groups"], facts["in_channels"]
    if groups != 1 and not (groups == channels == facts["out_channels"]):
        return f"groups={groups} (the port maps groups=1 and depthwise convolutions)"
    if groups != 1 and len(_tuple(facts["kernel_size"])) == 3:
        return "a depthwise Conv3d (Keras has no DepthwiseConv3D)"
    if any(size != 1 for size in _tuple(facts["stride"])) and any(size != 1 for size in _tuple(facts["dilation"])):
        return f"stride={facts['stride']} with dilation={facts['dilation']} (Keras's convolutions take one or the other)"
    return None


def _pool(facts: Mapping[str, Any]) -> str | None:
    if facts.get("ceil_mode"):
        return "ceil_mode=True (Keras pools with floor)"
    if any(size != 0 for size in _tuple(facts["padding"])):
        return f"padding={facts['padding']} (Keras's pooling has no explicit padding)"
    if any(size != 1 for size in _tuple(facts.get("dilation", 1))):
        return f"dilation={facts['dilation']} (Keras's pooling has none)"
    return None


def _adaptive(facts: Mapping[str, Any]) -> str | None:
    sizes = _tuple(facts["output_size"])
    return None if all(size == 1 for size in sizes) else f"output_size={facts['output_size']} (the port maps global pooling, size 1)"


def _flatten(facts: Mapping[str, Any]) -> str | None:
    return None if facts["start_dim"] == 1 and facts["end_dim"] == -1 else "a Flatten other than from dimension 1 to the end"


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _fine(facts: Mapping[str, Any]) -> str | None:
    return None


# class name -> (the Keras counterpart, a check of the module's constructor values: why not, or None)
PORTABLE_MODULES: dict[str, tuple[str, Callable[[Mapping[str, Any]], str | None]]] = {
    "Conv1d": ("Conv1D / DepthwiseConv1D, ZeroPadding1D for the padding", _conv),
    "Conv2d": ("Conv2D / DepthwiseConv2D, ZeroPadding2D for the padding", _conv),
    "Conv3d": ("Conv3D, ZeroPadding3D for the padding", _conv),
    "Linear": ("Dense", _fine),
    "BatchNorm1d": ("BatchNormalization (harness.core.keras_mapping)", _fine),
    "BatchNorm2d": ("BatchNormalization (harness.core.keras_mapping)", _fine),
    "BatchNorm3d": ("BatchNormalization (harness.core.keras_mapping)", _fine),
    "SyncBatchNorm": ("BatchNormalization (harness.core.keras_mapping)", _fine),
    "LazyBatchNorm1d": ("BatchNormalization (harness.core.keras_mapping)", _fine),
    "LazyBatchNorm2d": ("BatchNormalization (harness.core.keras_mapping)", _fine),
    "LazyBatchNorm3d": ("BatchNormalization (harness.core.keras_mapping)", _fine),
    "ReLU": ("ops.relu", _fine),
    "ReLU6": ("ops.relu6", _fine),
    "Hardtanh": ("ops.clip", _fine),
    "LeakyReLU": ("ops.leaky_relu", _fine),
    "Sigmoid": ("ops.sigmoid", _fine),
    "Tanh": ("ops.tanh", _fine),
    "Identity": ("the input itself", _fine),
    "Flatten": ("ops.reshape, channels first as torch flattens", _flatten),
    "MaxPool1d": ("MaxPooling1D", _pool),
    "MaxPool2d": ("MaxPooling2D", _pool),
    "AvgPool1d": ("AveragePooling1D", _pool),
    "AvgPool2d": ("AveragePooling2D", _pool),
    "AdaptiveAvgPool1d": ("ops.mean over the spatial axes", _adaptive),
    "AdaptiveAvgPool2d": ("ops.mean over the spatial axes", _adaptive),
}
# torch.fx call_function targets -> the Keras op
PORTABLE_FUNCTIONS: dict[str, str] = {
    "_operator.add": "ops.add",
    "_operator.iadd": "ops.add",
    "torch.add": "ops.add",
    "torch.relu": "ops.relu",
    "torch.nn.functional.relu": "ops.relu",
    "torch.nn.functional.relu6": "ops.relu6",
    "torch.flatten": "ops.reshape, channels first as torch flattens",
    "torch.sigmoid": "ops.sigmoid",
    "torch.tanh": "ops.tanh",
}
# torch.fx call_method targets (x.relu(), x.flatten(1)) -> the Keras op
PORTABLE_METHODS: dict[str, str] = {"relu": "ops.relu", "flatten": "ops.reshape, channels first as torch flattens", "add": "ops.add"}


def first_unportable(structure: ModelStructure) -> str | None:
    """Why the generic port cannot map the model: its first node (in the traced graph's order)
    that the table has no counterpart for, or None when every node maps."""
    graph = structure.graph
    if graph is None:
        return structure.untraceable or "torch.fx cannot trace it"
    classes = dict(structure.modules)
    frozen = {facts.path for facts in structure.batchnorms if facts.frozen}
    facts = structure.leaf_modules
    called = {node["target"] for node in graph if node["op"] == "call_module"}
    unused = [entry.path for entry in structure.batchnorms if entry.path not in called]
    if unused:  # the port builds a layer where the traced forward calls it; this one would have none
        return f"the BatchNorm {unused[0]!r} is never called in the traced forward"
    for node in graph:
        op, target = node["op"], node["target"]
        if op == "call_module":
            if target in frozen:
                continue  # a frozen BatchNorm: BatchNormalization, always in inference
            entry = PORTABLE_MODULES.get(classes.get(target, ""))
            if entry is None:
                return f"module {target!r} ({classes.get(target, '?')}) has no Keras counterpart in the port's table"
            why = entry[1](facts.get(target, {}))
            if why is not None:
                return f"module {target!r} ({classes[target]}): {why}"
        elif op == "call_function" and target not in PORTABLE_FUNCTIONS:
            return f"function {target} (at node {node['name']!r}) has no Keras counterpart in the port's table"
        elif op == "call_method" and target not in PORTABLE_METHODS:
            return f"tensor method .{target}() (at node {node['name']!r}) has no Keras counterpart in the port's table"
        elif op == "get_attr":
            return f"the forward reads the tensor {target!r} directly (node {node['name']!r}); the port maps modules and functions"
        elif target in ("torch.flatten", "flatten") and (_flatten_start(node), _flatten_end(node)) != (1, -1):
            return f"a flatten other than from dimension 1 to the end (node {node['name']!r}); the port flattens from 1"
        elif target in ("torch.add", "add") and node["kwargs"].get("alpha", 1) != 1:
            return f"an addition with alpha={node['kwargs']['alpha']} (node {node['name']!r}); the port adds plainly"
    return None


def _flatten_start(node: Mapping[str, Any]) -> Any:
    args = node["args"]
    return args[1] if len(args) > 1 else node["kwargs"].get("start_dim", 0)


def _flatten_end(node: Mapping[str, Any]) -> Any:
    args = node["args"]
    return args[2] if len(args) > 2 else node["kwargs"].get("end_dim", -1)
