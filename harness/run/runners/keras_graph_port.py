"""A user's torch model rebuilt in Keras 3 from its torch.fx graph, node by node, with the torch
weights copied in: the counterparts of `harness.core.keras_port_table`, which says what maps.

Data runs channels-last through the port (Keras's convolutions on CPU want N...C); a node that
needs torch's layout (a flatten, a linear layer on a 3-d tensor) gets it back. The BatchNorms are
the table port's (`KerasPort`): the same mapping, the same training= and variance bookkeeping.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.run.runners.keras_port import KerasPort

_BATCHNORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d")


class KerasGraphPort(KerasPort):
    """The port of a traced model: `graph` as `ModelStructure.graph`, `classes` each submodule's
    class by path, `facts` each mapped module's constructor values, `frozen` the frozen BatchNorms
    (always called in inference)."""

    _FUNCTION_ACTIVATIONS = {"relu": "ReLU", "relu6": "ReLU6", "sigmoid": "Sigmoid", "tanh": "Tanh"}  # torch.relu -> ReLU's

    def __init__(
        self,
        keras: Any,
        graph: list[dict[str, Any]],
        classes: dict[str, str],
        facts: dict[str, dict[str, Any]],
        frozen: set[str],
        shape: tuple[int, ...],
        dtype: str,
        settings: dict[str, Any],
        batchnorm_paths: tuple[str, ...],
        weights: dict[str, np.ndarray],
        mode: list[tuple[str, bool]],
        input_dtype: str | None = None,
    ) -> None:
        self.graph, self.classes, self.facts, self.frozen = graph, classes, facts, frozen
        settings = dict(settings, axis=-1)  # channels-last data: the channels are the last axis
        super().__init__(
            keras,
            {"kind": "graph"},
            shape,
            0,
            dtype,
            settings,
            tuple(classes),
            batchnorm_paths,
            weights,
            mode,
            input_dtype=input_dtype,
            channels_last=len(shape) > 2,
        )

    def _build(self, weights: dict[str, np.ndarray]) -> None:
        """Build each layer at its first use, on a batch of zeros that every BatchNorm sees in
        inference (so no statistic moves), then forget what that dry run recorded."""
        self._weights = weights
        self._building = True
        self.calls, self.outputs, self.updated, self.elements_per_channel = {}, {}, set(), {}
        self(np.zeros(self.shape))
        self._building = False
        self.calls, self.outputs, self.updated, self.elements_per_channel = {}, {}, set(), {}

    def forward(self, x: Any) -> Any:
        ops = self.keras.ops
        values: dict[str, tuple[Any, bool]] = {}  # node name -> (tensor, channels-last)
        result = None
        for node in self.graph:
            op, name = node["op"], node["name"]
            if op == "placeholder":
                values[name] = (ops.transpose(x, self._to_last), True) if self.channels_last else (x, False)
            elif op == "output":
                result = self._argument(node["args"][0], values)
            else:
                args = [self._argument(arg, values) for arg in node["args"]]
                values[name] = self._node(node, args)
        assert result is not None, "a traced graph ends with its output node"
        y, last = result
        return ops.transpose(y, self._to_first_of(len(y.shape))) if last else y

    @staticmethod
    def _argument(arg: Any, values: dict[str, tuple[Any, bool]]) -> Any:
        return values[arg["node"]] if isinstance(arg, dict) and "node" in arg else (arg, None)

    def _node(self, node: dict[str, Any], args: list[tuple[Any, bool | None]]) -> tuple[Any, bool]:
        op, target = node["op"], node["target"]
        ops = self.keras.ops
        h, last = args[0]
        if op == "call_module":
            return self._module(target, h, bool(last))
        name = target.rsplit(".", 1)[-1]
        if name in ("add", "iadd"):
            other, other_last = args[1]
            if other_last is None:  # a number
                return ops.add(h, other), bool(last)
            if last != other_last:
                h, last = self._torch_layout(h, bool(last))
                other, _ = self._torch_layout(other, bool(other_last))
            return ops.add(h, other), bool(last)
        if name in self._FUNCTION_ACTIVATIONS:
            return _activation(ops, self._FUNCTION_ACTIVATIONS[name], {}, h), bool(last)
        if name == "flatten":
            return self._flatten(h, bool(last))
        raise NotImplementedError(f"{op} {target}: not in harness.core.keras_port_table")

    def _module(self, path: str, h: Any, last: bool) -> tuple[Any, bool]:
        ops, kind = self.keras.ops, self.classes[path]
        if not last and len(h.shape) > 2 and kind != "Linear" and kind not in ("Flatten", "Identity"):
            # A layer that follows one in torch's layout (a Linear on a 3-d tensor, an addition of
            # mixed layouts): the BatchNorms, convolutions and pools here take channels-last data.
            h, last = ops.transpose(h, self._to_last_of(len(h.shape))), True
        if path in self.frozen or kind in _BATCHNORMS:
            if self._building and path not in self.layers:
                self._add_bn(path, tuple(h.shape), self._weights)
            return self._bn(path, h), last
        facts = self.facts.get(path, {})
        if kind in ("ReLU", "ReLU6", "Hardtanh", "LeakyReLU", "Sigmoid", "Tanh", "Identity"):
            return _activation(ops, kind, facts, h), last
        if kind == "Flatten":
            return self._flatten(h, last)
        if kind.startswith("Adaptive"):
            axes = tuple(range(1, len(h.shape) - 1)) if last else tuple(range(2, len(h.shape)))
            return ops.mean(h, axis=axes, keepdims=True), last
        if kind == "Linear" and len(h.shape) > 2:
            h, last = self._torch_layout(h, last)  # torch applies it to the last axis of its own layout
        if self._building and path not in self.layers:
            self.layers[path] = self._make_layer(path, kind, facts, tuple(h.shape))
        return self.layers[path](h), last

    def _make_layer(self, path: str, kind: str, facts: dict[str, Any], input_shape: tuple) -> Any:
        """The Keras layer for one torch module, built, with its torch weights."""
        layers, weights = self.keras.layers, self._weights
        if kind == "Linear":
            layer = layers.Dense(facts["out_features"], use_bias=facts["bias"], dtype=self.dtype)
            layer.build(input_shape)
            layer.set_weights([weights[f"{path}.weight"].T] + ([weights[f"{path}.bias"]] if facts["bias"] else []))
            return layer
        rank = len(input_shape) - 2  # spatial dimensions
        if kind.startswith(("MaxPool", "AvgPool")):
            pooling = getattr(layers, ("MaxPooling" if kind.startswith("Max") else "AveragePooling") + f"{rank}D")
            stride = facts["stride"] if facts["stride"] not in (None, [], ()) else facts["kernel_size"]
            return pooling(pool_size=facts["kernel_size"], strides=stride, padding="valid", dtype=self.dtype)
        # A convolution: torch's explicit padding as a zero padding layer, then a valid convolution.
        padding = _per_axis(facts["padding"], rank)
        depthwise = facts["groups"] != 1
        kernel = weights[f"{path}.weight"]  # torch (out, in / groups, *kernel)
        spatial = tuple(range(2, 2 + rank))
        if depthwise:  # (C, 1, *k) -> (*k, C, 1)
            kernel = kernel.transpose(*spatial, 0, 1)
            conv = getattr(layers, f"DepthwiseConv{rank}D")(
                facts["kernel_size"], strides=facts["stride"], dilation_rate=facts["dilation"], use_bias=facts["bias"], dtype=self.dtype
            )
        else:  # (O, I, *k) -> (*k, I, O)
            kernel = kernel.transpose(*spatial, 1, 0)
            conv = getattr(layers, f"Conv{rank}D")(
                facts["out_channels"],
                facts["kernel_size"],
                strides=facts["stride"],
                dilation_rate=facts["dilation"],
                use_bias=facts["bias"],
                dtype=self.dtype,
            )
        sequence = []
        shape = input_shape
        if any(padding):
            pad = getattr(layers, f"ZeroPadding{rank}D")(padding if rank > 1 else padding[0], dtype=self.dtype)
            shape = tuple(pad.compute_output_shape(shape))
            sequence.append(pad)
        conv.build(shape)
        conv.set_weights([kernel] + ([weights[f"{path}.bias"]] if facts["bias"] else []))
        sequence.append(conv)
        return _Chain(sequence)

    def _flatten(self, h: Any, last: bool) -> tuple[Any, bool]:
        h, _ = self._torch_layout(h, last)  # torch flattens channels first
        return self.keras.ops.reshape(h, (-1, int(np.prod(h.shape[1:])))), False  # -1: a fit traces an unknown batch size

    def _torch_layout(self, h: Any, last: bool) -> tuple[Any, bool]:
        if last and len(h.shape) > 2:
            return self.keras.ops.transpose(h, self._to_first_of(len(h.shape))), False
        return h, False

    @staticmethod
    def _to_first_of(rank: int) -> tuple[int, ...]:
        return (0, rank - 1, *range(1, rank - 1))

    @staticmethod
    def _to_last_of(rank: int) -> tuple[int, ...]:
        return (0, *range(2, rank), 1)

    def _training_passed(self, path: str) -> bool:
        return False if path in self.frozen or self._building else super()._training_passed(path)

    def _nchw(self, values: np.ndarray) -> np.ndarray:
        return values.transpose(self._to_first_of(values.ndim)) if values.ndim > 2 else values

    def _call(self, path: str, layer, h) -> dict[str, Any]:
        if self._building:  # the dry run's calls are forgotten; its variables are not all there yet
            return {}
        call = super()._call(path, layer, h)
        if len(h.shape) > 2:  # what the table port does for its input rank, done for this BatchNorm's own
            call["channel_axis"] = 1
        call["uses_batch_stats"] = call["updates_running_stats"] = call["uses_batch_stats"] and path not in self.frozen
        return call


class _Chain:
    """Layers called in sequence (a padding, then a convolution)."""

    def __init__(self, layers: list[Any]) -> None:
        self.layers = layers

    def __call__(self, h: Any) -> Any:
        for layer in self.layers:
            h = layer(h)
        return h


def _per_axis(value: Any, rank: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * rank


def _activation(ops: Any, kind: str, facts: dict[str, Any], h: Any) -> Any:
    if kind == "ReLU":
        return ops.relu(h)
    if kind == "ReLU6":
        return ops.relu6(h)
    if kind == "Hardtanh":
        return ops.clip(h, facts["min_val"], facts["max_val"])
    if kind == "LeakyReLU":
        return ops.leaky_relu(h, negative_slope=facts["negative_slope"])
    if kind == "Sigmoid":
        return ops.sigmoid(h)
    if kind == "Tanh":
        return ops.tanh(h)
    return h  # Identity
