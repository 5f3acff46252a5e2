"""The runner table: stable names (baseline keys) mapped to the classes that implement them
(`module:Class`, imported only by `harness.run.runners.create_runner`), and the worker family each
runs in. Data only: it imports no framework and no stage."""

from __future__ import annotations

from collections.abc import Sequence

from harness.core.errors import RunnerError

REFERENCE_RUNNER = "torch-eager"
# Graph cases (a hand-built node, a backend test) are judged against the spec or stored outputs.
GRAPH_REFERENCES = {"node": "onnx-spec", "backend_test": "stored-outputs"}

# name -> "module:class"; the module is imported only when the runner is created.
RUNNER_CLASSES: dict[str, str] = {
    "torch-eager": "harness.run.runners.torch_eager:TorchEagerRunner",
    "torch-compile": "harness.run.runners.torch_compile:TorchCompileRunner",
    "onnx-torchscript-ort": "harness.run.runners.onnx_export:TorchScriptOrtRunner",
    "onnx-dynamo-ort": "harness.run.runners.onnx_export:DynamoOrtRunner",
    "onnx-torchscript-ort-noopt": "harness.run.runners.onnx_export:TorchScriptOrtNoOptRunner",
    "onnx-dynamo-ort-noopt": "harness.run.runners.onnx_export:DynamoOrtNoOptRunner",
    "onnx-reference": "harness.run.runners.onnx_export:ReferenceRunner",
    "keras-tensorflow": "harness.run.runners.keras:KerasTensorFlowRunner",
    "keras-jax": "harness.run.runners.keras:KerasJaxRunner",
    "keras-torch": "harness.run.runners.keras:KerasTorchRunner",
    "keras-numpy": "harness.run.runners.keras:KerasNumpyRunner",
}
GRAPH_RUNNER_CLASSES: dict[str, str] = {
    "onnx-spec": "harness.run.runners.graph:OnnxSpecRunner",
    "stored-outputs": "harness.run.runners.graph:StoredOutputsRunner",
    "graph-ort": "harness.run.runners.graph:GraphOrtRunner",
    "graph-ort-noopt": "harness.run.runners.graph:GraphOrtNoOptRunner",
    "graph-reference": "harness.run.runners.graph:GraphReferenceRunner",
}


# Runners share a worker process with the others of their family: torch and onnxruntime in one;
# each Keras backend in its own (KERAS_BACKEND is process-global); torch.compile in its own
# (inductor's process-wide caches and compile workers).
TORCH_FAMILY = "torch-onnx"
RUNNER_FAMILIES: dict[str, str] = {name: name for name in RUNNER_CLASSES if name.startswith("keras-") or name == "torch-compile"}


# Runners that make the same export of the same module walk and differ only in what runs the graph:
# the executor runs those of a case as one walk (one export per export step), with this function.
SHARED_WALKS: dict[tuple[str, ...], str] = {
    ("onnx-torchscript-ort", "onnx-torchscript-ort-noopt", "onnx-reference"): "harness.run.runners.onnx_export:run_sharing_exports",
    ("onnx-dynamo-ort", "onnx-dynamo-ort-noopt"): "harness.run.runners.onnx_export:run_sharing_exports",
}


def shared_walks(names: Sequence[str]) -> list[tuple[tuple[str, ...], str | None]]:
    """`names` split into what runs together: (members, the function that walks them all) for each
    shared walk two or more of `names` belong to, (one runner, None) for every other runner."""
    units: list[tuple[tuple[str, ...], str | None]] = []
    grouped: set[str] = set()
    for name in names:
        if name in grouped:
            continue
        for members, target in SHARED_WALKS.items():
            present = tuple(member for member in names if member in members)
            if name in members and len(present) > 1:
                units.append((present, target))
                grouped.update(present)
                break
        else:
            units.append(((name,), None))
    return units


def runner_family(name: str) -> str:
    """The worker family a runner runs in."""
    return RUNNER_FAMILIES.get(name, TORCH_FAMILY)


def runner_target(name: str) -> str:
    """`module:Class` of a runner, for a worker process to import.

    Raises:
        RunnerError: no runner has that name.
    """
    try:
        return {**RUNNER_CLASSES, **GRAPH_RUNNER_CLASSES}[name]
    except KeyError:
        raise RunnerError(f"unknown runner {name!r}; allowed: {', '.join([*RUNNER_CLASSES, *GRAPH_RUNNER_CLASSES])}") from None


def register_runner(name: str, target: str, family: str = TORCH_FAMILY) -> None:
    """Add a runner of torch-model cases (`module:Class`, importable in a worker process)."""
    RUNNER_CLASSES[name] = target
    if family != TORCH_FAMILY:
        RUNNER_FAMILIES[name] = family


def unregister_runner(name: str) -> None:
    """Remove a runner added with `register_runner`."""
    RUNNER_CLASSES.pop(name, None)
    RUNNER_FAMILIES.pop(name, None)


def runner_names() -> tuple[str, ...]:
    """Every runner of torch-model cases, the reference first."""
    return tuple(RUNNER_CLASSES)


def graph_runner_names() -> tuple[str, ...]:
    """Every runner of graph cases."""
    return tuple(GRAPH_RUNNER_CLASSES)
