"""The runner table: one record per runner and per worker family, as data. Every consumer reads
it (the CLI's help and its checks, the schema's runner names, the executor's families, shared
walks and fork server, repro bundles, the report, the sweep), so adding a runner is one record.
Data only: it imports no framework and no stage; `harness.run.runners.create_runner` imports the
class a record names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.core.errors import RunnerError

RUNNERS_PACKAGE = "harness.run.runners"
# The function that walks the runners of one exporter together (one export per export step).
SHARED_WALKS: dict[str, str] = {exporter: f"{RUNNERS_PACKAGE}.onnx_export:run_sharing_exports" for exporter in ("torchscript", "dynamo")}


@dataclass(frozen=True, slots=True)
class RunnerRecord:
    """One runner: its stable name (a baseline key) and everything the harness needs to know of it."""

    name: str
    target: str  # module:Class, imported only when the runner is created
    family: str  # the worker family it runs in (FAMILIES)
    case_kind: str  # torch: cases on a torch model; graph: cases on an ONNX graph
    group: str  # eager | compile | functional | onnx | keras | graph: the runners a sweep family or a view takes together
    role: str = "runner"  # reference (torch cases) | spec (hand-built graphs) | stored (backend tests) | runner
    exporter: str | None = None  # torchscript | dynamo: runners of one exporter share one walk per case
    executor: str | None = None  # ort | ort-noopt | reference: what runs an exported or given graph
    keras_backend: str | None = None
    repro: str | None = None  # export | keras | graph: the kind of repro bundle a divergence of it gets
    opt_in: bool = False  # runs only where a case lists it or a selection names it, not by default


@dataclass(frozen=True, slots=True)
class FamilyRecord:
    """A worker family: runners that share a worker process."""

    name: str
    warms: tuple[str, ...]  # what a worker imports before its first runner
    forks_from_server: bool = False  # forks from the preloaded server (families that use torch) instead of spawning
    keras_backend: str | None = None  # KERAS_BACKEND, set before the worker imports keras


def _export(name: str, exporter: str, executor: str) -> RunnerRecord:
    return RunnerRecord(
        name,
        f"{RUNNERS_PACKAGE}.onnx_export:OnnxExportRunner",
        "torch-onnx",
        "torch",
        "onnx",
        exporter=exporter,
        executor=executor,
        repro="export",
    )


def _keras(backend: str) -> RunnerRecord:
    return RunnerRecord(
        f"keras-{backend}",
        f"{RUNNERS_PACKAGE}.keras:KerasRunner",
        f"keras-{backend}",
        "torch",
        "keras",
        keras_backend=backend,
        repro="keras",
    )


def _graph(name: str, executor: str) -> RunnerRecord:
    return RunnerRecord(name, f"{RUNNERS_PACKAGE}.graph:GraphRunner", "torch-onnx", "graph", "graph", executor=executor)


RUNNERS: dict[str, RunnerRecord] = {
    record.name: record
    for record in (
        RunnerRecord("torch-eager", f"{RUNNERS_PACKAGE}.torch_eager:TorchEagerRunner", "torch-onnx", "torch", "eager", role="reference"),
        RunnerRecord("torch-compile", f"{RUNNERS_PACKAGE}.torch_compile:TorchCompileRunner", "torch-compile", "torch", "compile"),
        # Computes what eager does, but for the module's checks: it runs where a case asks for it.
        RunnerRecord(
            "torch-functional",
            f"{RUNNERS_PACKAGE}.torch_functional:TorchFunctionalRunner",
            "torch-onnx",
            "torch",
            "functional",
            opt_in=True,
        ),
        _export("onnx-torchscript-ort", "torchscript", "ort"),
        _export("onnx-dynamo-ort", "dynamo", "ort"),
        _export("onnx-torchscript-ort-noopt", "torchscript", "ort-noopt"),
        _export("onnx-dynamo-ort-noopt", "dynamo", "ort-noopt"),
        # The TorchScript exporter honours the opset asked for; onnx's reference evaluator runs its graph.
        _export("onnx-reference", "torchscript", "reference"),
        _keras("tensorflow"),
        _keras("jax"),
        _keras("torch"),
        _keras("numpy"),
        RunnerRecord("onnx-spec", f"{RUNNERS_PACKAGE}.graph:OnnxSpecRunner", "torch-onnx", "graph", "graph", role="spec", repro="graph"),
        RunnerRecord("stored-outputs", f"{RUNNERS_PACKAGE}.graph:StoredOutputsRunner", "torch-onnx", "graph", "graph", role="stored"),
        _graph("graph-ort", "ort"),
        _graph("graph-ort-noopt", "ort-noopt"),
        _graph("graph-reference", "reference"),
        # The torch BatchNorm a node stands for, run on the node's inputs: where a case asks for it.
        RunnerRecord("graph-torch", f"{RUNNERS_PACKAGE}.graph_torch:TorchNodeRunner", "torch-onnx", "graph", "graph", opt_in=True),
    )
}

# torch and onnxruntime share a worker; each Keras backend has its own (KERAS_BACKEND is
# process-global); torch.compile has its own (inductor's process-wide caches and compile workers).
# The families that use torch fork from a server that imported torch once (harness.run.fork_server);
# Keras's other backends spawn (a worker sets KERAS_BACKEND before its own import).
TORCH_FAMILY = "torch-onnx"
FAMILIES: dict[str, FamilyRecord] = {
    family.name: family
    for family in (
        FamilyRecord(TORCH_FAMILY, ("torch", "onnx", "onnxruntime", "onnxscript"), forks_from_server=True),
        FamilyRecord("torch-compile", ("torch", "torch._inductor.compile_fx"), forks_from_server=True),
        FamilyRecord("keras-tensorflow", ("keras",), keras_backend="tensorflow"),
        FamilyRecord("keras-jax", ("keras",), keras_backend="jax"),
        FamilyRecord("keras-torch", ("keras",), forks_from_server=True, keras_backend="torch"),
        FamilyRecord("keras-numpy", ("keras",), keras_backend="numpy"),
    )
}

REFERENCE_RUNNER = next(record.name for record in RUNNERS.values() if record.role == "reference")
# Graph cases are judged against the spec (a hand-built node) or the stored outputs (a backend test).
GRAPH_REFERENCES = {
    "node": next(record.name for record in RUNNERS.values() if record.role == "spec"),
    "backend_test": next(record.name for record in RUNNERS.values() if record.role == "stored"),
}
SPEC_RUNNER = GRAPH_REFERENCES["node"]


def runner_record(name: str) -> RunnerRecord:
    """The record of the runner called `name`.

    Raises:
        RunnerError: no runner has that name.
    """
    try:
        return RUNNERS[name]
    except KeyError:
        raise RunnerError(f"unknown runner {name!r}; allowed: {', '.join(RUNNERS)}") from None


def family_record(name: str) -> FamilyRecord:
    """A worker family's record (a family added with `register_runner` warms nothing)."""
    return FAMILIES.get(name, FamilyRecord(name, ()))


def runner_names(group: str | None = None) -> tuple[str, ...]:
    """Every runner of torch-model cases, the reference first (of one group: eager, compile, onnx, keras)."""
    return tuple(record.name for record in RUNNERS.values() if record.case_kind == "torch" and (group is None or record.group == group))


def runner_names_of_kind(case_kind: str) -> tuple[str, ...]:
    """Every runner of cases of `case_kind` (torch | graph), in the table's order."""
    return tuple(record.name for record in RUNNERS.values() if record.case_kind == case_kind)


def graph_runner_names() -> tuple[str, ...]:
    """Every runner of graph cases."""
    return tuple(record.name for record in RUNNERS.values() if record.case_kind == "graph")


def checked_runner_names(names: Sequence[str]) -> tuple[str, ...]:
    """`names` (a `--runners` selection), each the name of a runner of either case kind.

    Raises:
        RunnerError: none given, or an unknown name.
    """
    everything = (*runner_names(), *graph_runner_names())
    unknown = [name for name in names if name not in everything]
    if unknown or not names:
        raise RunnerError(f"unknown runner(s) {', '.join(unknown) or '(none given)'}; allowed: {', '.join(everything)}")
    return tuple(names)


def parse_runner_names(text: str) -> tuple[str, ...]:
    """`a, b` (a command line's comma-separated runner list) -> the checked names.

    Raises:
        RunnerError: none given, or an unknown name.
    """
    return checked_runner_names([name.strip() for name in text.split(",") if name.strip()])


def repro_runner_names(kind: str) -> tuple[str, ...]:
    """The runners whose divergences get a repro bundle of `kind` (export, keras, graph)."""
    return tuple(record.name for record in RUNNERS.values() if record.repro == kind)


def runner_family(name: str) -> str:
    """The worker family a runner runs in."""
    return runner_record(name).family if name in RUNNERS else TORCH_FAMILY


def runner_target(name: str) -> str:
    """`module:Class` of a runner, for a worker process to import.

    Raises:
        RunnerError: no runner has that name.
    """
    return runner_record(name).target


def shared_walks(names: Sequence[str]) -> list[tuple[tuple[str, ...], str | None]]:
    """`names` split into what runs together: (members, the function that walks them all) for two
    or more runners of one exporter (they make the same export of the same module walk and differ
    only in what runs the graph: one export per export step), (one runner, None) for any other."""
    units: list[tuple[tuple[str, ...], str | None]] = []
    grouped: set[str] = set()
    for name in names:
        if name in grouped:
            continue
        exporter = RUNNERS[name].exporter if name in RUNNERS else None
        present = tuple(member for member in names if exporter and member in RUNNERS and RUNNERS[member].exporter == exporter)
        if len(present) > 1 and exporter in SHARED_WALKS:
            units.append((present, SHARED_WALKS[exporter]))
            grouped.update(present)
        else:
            units.append(((name,), None))
    return units


def register_runner(name: str, target: str, family: str = TORCH_FAMILY, exporter: str | None = None) -> None:
    """Add a runner of torch-model cases (`module:Class`, importable in a worker process); with an
    exporter, it walks with that exporter's runners."""
    RUNNERS[name] = RunnerRecord(name, target, family, "torch", "extra", exporter=exporter)


def unregister_runner(name: str) -> None:
    """Remove a runner added with `register_runner`."""
    RUNNERS.pop(name, None)
