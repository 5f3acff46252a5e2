"""Runner registry: stable names (baseline keys) mapped to lazily imported classes.

Importing this module imports no framework; `create_runner` imports only the runner asked for.
"""

from __future__ import annotations

import importlib

from harness.errors import RunnerError
from harness.runners.base import Runner

REFERENCE_RUNNER = "torch-eager"

# name -> "module:class"; the module is imported only when the runner is created.
RUNNER_CLASSES: dict[str, str] = {
    "torch-eager": "harness.runners.torch_eager:TorchEagerRunner",
    "onnx-torchscript-ort": "harness.runners.onnx_export:TorchScriptOrtRunner",
    "onnx-dynamo-ort": "harness.runners.onnx_export:DynamoOrtRunner",
    "onnx-torchscript-ort-noopt": "harness.runners.onnx_export:TorchScriptOrtNoOptRunner",
    "onnx-dynamo-ort-noopt": "harness.runners.onnx_export:DynamoOrtNoOptRunner",
    "onnx-reference": "harness.runners.onnx_export:ReferenceRunner",
    "keras-tensorflow": "harness.runners.keras:KerasTensorFlowRunner",
    "keras-jax": "harness.runners.keras:KerasJaxRunner",
    "keras-torch": "harness.runners.keras:KerasTorchRunner",
    "keras-numpy": "harness.runners.keras:KerasNumpyRunner",
}


def runner_names() -> tuple[str, ...]:
    """Every registered runner name, the reference first."""
    return tuple(RUNNER_CLASSES)


def create_runner(name: str) -> Runner:
    """Instantiate the runner called `name`.

    Raises:
        RunnerError: no runner has that name.
    """
    try:
        target = RUNNER_CLASSES[name]
    except KeyError:
        raise RunnerError(f"unknown runner {name!r}; allowed: {', '.join(RUNNER_CLASSES)}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)()
