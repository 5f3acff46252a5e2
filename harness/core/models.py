"""The table of models a case may name: each model as plain data, which every port reads.

A model is a tree of layers. A layer is a plain dict (JSON-able, so that a repro script carries
the table as a literal): `kind` is one of LAYER_KINDS; a layer with a `name` is a submodule (its
path is its parents' names joined by dots), one without is a functional op. The torch builder
(`harness.run.runners.torch_models`), the Keras port (`harness.run.runners.keras_port`) and the
repro templates interpret this table and nothing else; this module imports no framework, so that
a case is validated (submodule paths, input rank, spatial size) before any framework loads.

Layer kinds:
- `batchnorm`: a BatchNorm of the case's `bn:` configuration, 1d/2d/3d by its input's rank.
- `conv2d`: a Conv2d to `bn.num_features` channels; `kernel`, `padding`, `bias`; `depthwise`:
  one filter per input channel (groups = channels; the input has `bn.num_features` channels).
- `linear`: a Linear to `out_features` (None: `bn.num_features`); `bias`.
- `relu`, `flatten` (from dimension 1): functional ops.
- `block`: a submodule running its `layers` in order; `residual`: it returns its input plus
  what its layers make of it (the shapes match: the input has `bn.num_features` channels).

A case's `model_options` change the table's layers: `bias: false` takes the bias off every
convolution and linear layer; its `bn_by_path` gives a BatchNorm layer its own values (`bn`,
over the case's `bn:`), which each port applies (`model_spec`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

Layer = Mapping[str, Any]
LAYER_KINDS = ("batchnorm", "conv2d", "linear", "relu", "flatten", "block")


def _conv(name: str, padding: int, bias: bool = True, depthwise: bool = False) -> Layer:
    return {"kind": "conv2d", "name": name, "kernel": 3, "padding": padding, "bias": bias, "depthwise": depthwise}


def _block(name: str | None, *layers: Layer, residual: bool = False) -> Layer:
    return {"kind": "block", "name": name, "layers": list(layers), "residual": residual}


_BN: Layer = {"kind": "batchnorm", "name": "bn"}
_RELU: Layer = {"kind": "relu"}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model of the table: its layers, and what follows from them for validation."""

    name: str
    summary: str
    root: Layer  # a `batchnorm` (the model is one BatchNorm) or a `block`
    input_ranks: tuple[int, ...]
    user: bool = False  # a user's own model (harness.core.user_models): its layers are `module`s the probe found
    submodule_paths: tuple[str, ...] = field(init=False)  # every module path, "" being the model itself
    batchnorm_paths: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        paths = list(_module_paths(self.root, ""))
        object.__setattr__(self, "submodule_paths", tuple(path for path, _ in paths))
        object.__setattr__(self, "batchnorm_paths", tuple(path for path, layer in paths if layer["kind"] == "batchnorm"))

    @property
    def is_bare_batchnorm(self) -> bool:
        """The model is one BatchNorm: its input's channels are the BatchNorm's features, and its
        layout is torch's (no convolution to run channels-last)."""
        return bool(self.root["kind"] == "batchnorm")

    @property
    def has_convolutions(self) -> bool:
        """Whether a layer of the model is a convolution (which Keras's CPU runs channels-last)."""
        return any(layer["kind"] == "conv2d" for layer in _layers(self.root))

    @property
    def keeps_channels(self) -> bool:
        """The input's channels must be `bn.num_features`: a bare BatchNorm, a depthwise
        convolution, or a residual addition."""
        return self.is_bare_batchnorm or any(layer.get("depthwise") or layer.get("residual") for layer in _layers(self.root))

    @property
    def spatial_shrink(self) -> int:
        """By how much the convolutions shrink each spatial size (valid convolutions in sequence)."""
        return sum(layer["kernel"] - 1 - 2 * layer["padding"] for layer in _layers(self.root) if layer["kind"] == "conv2d")


def _layers(layer: Layer) -> Iterator[Layer]:
    yield layer
    for child in layer.get("layers", ()):
        yield from _layers(child)


def _module_paths(layer: Layer, path: str) -> Iterator[tuple[str, Layer]]:
    """(path, layer) of every submodule, in torch's `named_modules()` order."""
    yield path, layer
    for child in layer.get("layers", ()):
        if child.get("name"):
            yield from _module_paths(child, f"{path}.{child['name']}" if path else child["name"])


def layer_output_shape(layer: Layer, shape: list[int], num_features: int) -> list[int]:
    """The shape a layer of the model table returns for an input of `shape` (the torch builder
    and the repro scripts read it too)."""
    kind = layer["kind"]
    if kind == "block":
        for child in layer["layers"]:
            shape = layer_output_shape(child, shape, num_features)
        return shape
    if kind == "conv2d":
        return [shape[0], num_features] + [size + 2 * layer["padding"] - layer["kernel"] + 1 for size in shape[2:]]
    if kind == "linear":
        return [shape[0], layer["out_features"] or num_features]
    if kind == "flatten":
        return [shape[0], math.prod(shape[1:])]
    return list(shape)


def layer_sizes(layer: Layer, shape: list[int], num_features: int, path: str = "") -> Iterator[tuple[str, int]]:
    """(what, elements) of every tensor a model of the table holds for an input of `shape`: each
    layer's output and each weight, so that a case can be refused before any of it is allocated."""
    if layer["kind"] == "block":
        for child in layer["layers"]:
            name = child.get("name")
            yield from layer_sizes(child, shape, num_features, f"{path}.{name}" if path and name else name or path)
            shape = layer_output_shape(child, shape, num_features)
        return
    output = layer_output_shape(layer, shape, num_features)
    where = path or "the model"
    yield f"{where} ({layer['kind']}) output", math.prod(output)
    if layer["kind"] == "conv2d":
        yield f"{where} weight", num_features * (1 if layer.get("depthwise") else shape[1]) * layer["kernel"] ** 2
    elif layer["kind"] == "linear":
        yield f"{where} weight", shape[1] * (layer["out_features"] or num_features)


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("batchnorm1d", "a bare torch.nn.BatchNorm1d", {"kind": "batchnorm"}, (2, 3)),
        ModelSpec("batchnorm2d", "a bare torch.nn.BatchNorm2d", {"kind": "batchnorm"}, (4,)),
        ModelSpec("batchnorm3d", "a bare torch.nn.BatchNorm3d", {"kind": "batchnorm"}, (5,)),
        ModelSpec("conv_bn", "Conv2d(k=3) -> BatchNorm2d", _block(None, _conv("conv", padding=0), _BN), (4,)),
        ModelSpec(
            "forum_net",
            "the forum thread's net: conv1(k=3, no bias) -> bn -> relu -> flatten -> fc1(10, no bias)",
            _block(
                None,
                _conv("conv1", padding=0, bias=False),
                _BN,
                _RELU,
                {"kind": "flatten"},
                {"kind": "linear", "name": "fc1", "out_features": 10, "bias": False},
                _RELU,
            ),
            (4,),
        ),
        ModelSpec(
            "nested_two_bn",
            "two BatchNorm2d children at different depths: stem.{conv,bn} -> head.block.{conv,bn}",
            _block(
                None,
                _block("stem", _conv("conv", padding=1), _BN),
                _RELU,
                _block("head", _block("block", _conv("conv", padding=1), _BN)),
            ),
            (4,),
        ),
        ModelSpec(
            "linear_bn",
            "Linear(C -> num_features) -> BatchNorm1d: BatchNorm after a fully connected layer",
            _block(None, {"kind": "linear", "name": "fc", "out_features": None, "bias": True}, _BN),
            (2,),
        ),
        ModelSpec(
            "depthwise_conv_bn",
            "a depthwise Conv2d(k=3, padding 1, groups = channels) -> BatchNorm2d -> relu, as in MobileNet blocks",
            _block(None, _conv("conv", padding=1, depthwise=True), _BN, _RELU),
            (4,),
        ),
        ModelSpec(
            "residual_block",
            "x + block(x): block.conv(k=3, padding 1) -> block.bn -> relu, a residual connection around a BatchNorm",
            _block(None, _block("block", _conv("conv", padding=1), _BN, _RELU, residual=True)),
            (4,),
        ),
    )
}

MODEL_OPTIONS = ("bias",)


def model_spec(name: str, options: Mapping[str, Any] | None = None, bn_by_path: Mapping[str, Mapping[str, Any]] | None = None) -> ModelSpec:
    """The table's model `name` with a case's `model_options` applied (`bias: false`: no bias in
    any convolution or linear layer) and its `bn_by_path` written into those BatchNorm layers
    (under `bn`: the values that replace the case's `bn:` for that one)."""
    return with_case_values(MODEL_SPECS[name], options, bn_by_path)


def with_case_values(
    spec: ModelSpec, options: Mapping[str, Any] | None = None, bn_by_path: Mapping[str, Mapping[str, Any]] | None = None
) -> ModelSpec:
    """`spec` with a case's `model_options` and `bn_by_path` applied (see `model_spec`)."""
    if not (options and "bias" in options) and not bn_by_path:
        return spec
    root = spec.root
    if options and "bias" in options:
        root = _with_bias(root, bool(options["bias"]))
    if bn_by_path:
        root = _with_bn_values(root, "", bn_by_path)
    return ModelSpec(spec.name, spec.summary, root, spec.input_ranks, spec.user)


def _with_bn_values(layer: Layer, path: str, bn_by_path: Mapping[str, Mapping[str, Any]]) -> Layer:
    changed = dict(layer)
    if layer["kind"] == "batchnorm" and path in bn_by_path:
        changed["bn"] = dict(bn_by_path[path])
    if "layers" in layer:
        changed["layers"] = [
            _with_bn_values(child, f"{path}.{child['name']}" if path and child.get("name") else child.get("name") or path, bn_by_path)
            for child in layer["layers"]
        ]
    return changed


def _with_bias(layer: Layer, bias: bool) -> Layer:
    changed = dict(layer)
    if layer["kind"] in ("conv2d", "linear"):
        changed["bias"] = bias
    if "layers" in layer:
        changed["layers"] = [_with_bias(child, bias) for child in layer["layers"]]
    return changed
