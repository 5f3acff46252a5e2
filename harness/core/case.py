"""The domain model of a case: frozen data, built only by `harness.load.schema` from a valid file."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from harness.core.models import ModelSpec, model_spec, with_case_values
from harness.core.user_models import ModelStructure, UserModelRef


@dataclass(frozen=True, slots=True)
class BNConfig:
    """The configuration every BatchNorm of the model is built with, in PyTorch's terms."""

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1  # None: cumulative moving average
    affine: bool = True
    track_running_stats: bool = True
    weight: tuple[float, ...] | None = None
    bias: tuple[float, ...] | None = None
    running_mean: tuple[float, ...] | None = None
    running_var: tuple[float, ...] | None = None
    dtype: str = "float32"

    def overridden(self, values: Any = None) -> BNConfig:
        """This configuration with one BatchNorm's own values (`bn_by_path`) in place."""
        if not values:
            return self
        changed: dict[str, Any] = {name: tuple(value) if isinstance(value, list) else value for name, value in dict(values).items()}
        return dataclasses.replace(self, **changed)


@dataclass(frozen=True, slots=True)
class ModeSetting:
    """Training flags set as a user would: parents first (`model.train()`, then `model.bn.eval()`)."""

    assignments: tuple[tuple[str, bool], ...]  # (submodule path, training)

    def describe(self) -> str:
        """`train` for the whole model, else `{"": train, bn: eval}`."""
        if len(self.assignments) == 1 and self.assignments[0][0] == "":
            return "train" if self.assignments[0][1] else "eval"
        inner = ", ".join(f"{path or chr(34) * 2}: {'train' if training else 'eval'}" for path, training in self.assignments)
        return "{" + inner + "}"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """How to make an input batch: a seeded normal distribution shaped per channel, or literals."""

    shape: tuple[int, ...]
    dtype: str
    seed: int = 0
    mean: float = 0.0
    std: float = 1.0
    channel_offset: tuple[float, ...] | None = None
    channel_scale: tuple[float, ...] | None = None
    constant_channels: tuple[tuple[int, float], ...] = ()
    values: tuple[float, ...] | None = None  # flattened literal values, row-major


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """Options of an export step, named as in `torch.onnx.export`."""

    training: str = "eval"  # eval | preserve | training -> torch.onnx.TrainingMode
    opset: int | None = None  # None: the exporter's default
    dynamic_batch: bool = False
    # TorchScript: do_constant_folding (which also folds an eval BatchNorm into its Conv);
    # dynamo: optimize (onnxscript's optimiser, which folds constants).
    constant_folding: bool = True
    # How the runtimes run a training graph: as_exported, as the exporter wrote it (its running
    # statistics stay the stored initializers; what it computes goes where the exporter sent it);
    # fed_back: each training BatchNorm's statistics become graph inputs and its updated ones
    # outputs, fed back at the next forward, as a training loop carries them.
    graph_state: str = "as_exported"
    # torch.onnx.export's own: the initializers (weights, running statistics) also graph inputs,
    # which a runtime then may not fold (a caller could feed other values).
    keep_initializers_as_inputs: bool = False
    input_name: str = "input"  # input_names=[...]: the graph's data input
    output_name: str = "output"  # output_names=[...]: the graph's output
    # export_params=False: no weights in the graph; a runtime is fed each graph input without a
    # value that names a tensor of the module (its state_dict at the export), as a user feeds them.
    export_params: bool = True
    external_data: bool | None = None  # weights in a file beside the model; None: the exporter's default


@dataclass(frozen=True, slots=True)
class StateAssignment:
    """One tensor a `set_state` step writes, as `model.bn.running_var.copy_(values)` does."""

    path: str  # the BatchNorm's submodule path; "" for a bare BatchNorm
    name: str  # running_mean | running_var | weight | bias
    values: tuple[float, ...]


STATE_TENSORS = ("running_mean", "running_var", "weight", "bias")


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a case, after `train_step: {repeat: N}` has been expanded."""

    kind: str
    seed: int | None = None  # the input batch of a forward / train_step
    export: ExportOptions | None = None
    mode: ModeSetting | None = None
    input: InputSpec | None = None  # this step's own batch (the case's input with the step's fields); None: the case's
    input_label: str = ""  # what the step's input changes, for the label: `shape=8x3x4x4`, `values`
    state: tuple[StateAssignment, ...] = ()  # of a set_state step
    reset: tuple[str, ...] = ()  # of a reset_running_stats step: the BatchNorms' paths; empty: every one

    def label(self) -> str:
        """A short human name: `forward`, `export(training=eval)`, `set_mode(eval)`."""
        if self.kind == "export" and self.export is not None:
            options = [f"training={self.export.training}"]
            if self.export.opset is not None:
                options.append(f"opset={self.export.opset}")
            if self.export.dynamic_batch:
                options.append("dynamic_batch")
            if not self.export.constant_folding:
                options.append("constant_folding=False")
            if self.export.graph_state != "as_exported":
                options.append(f"graph_state={self.export.graph_state}")
            if self.export.keep_initializers_as_inputs:
                options.append("keep_initializers_as_inputs")
            if not self.export.export_params:
                options.append("export_params=False")
            if self.export.external_data is not None:
                options.append(f"external_data={self.export.external_data}")
            return f"export({', '.join(options)})"
        if self.kind == "set_mode" and self.mode is not None:
            return f"set_mode({self.mode.describe()})"
        if self.input_label:
            return f"{self.kind}(input {self.input_label})"
        if self.kind == "set_state":
            return f"set_state({', '.join(f'{item.path}.{item.name}' if item.path else item.name for item in self.state)})"
        if self.kind == "reset_running_stats" and self.reset:
            return f"reset_running_stats({', '.join(path or '(model)' for path in self.reset)})"
        return self.kind


@dataclass(frozen=True, slots=True)
class Expectation:
    """A divergence the case is known to produce, with its reason and upstream link."""

    runners: tuple[str, ...]
    reason: str
    fields: tuple[str, ...] = ()  # shell-style patterns over field names
    steps: tuple[int, ...] | None = None  # None: at any step
    status: str | None = None  # an expected runner status instead of fields
    link: str | None = None
    line: int | None = None

    def describe(self) -> str:
        """What is expected, in one line."""
        runners = ", ".join(self.runners)
        if self.status is not None:
            return f"{runners} ends with status {self.status}"
        where = "at any step" if self.steps is None else "after step " + ", ".join(map(str, self.steps))
        return f"{', '.join(self.fields)} {where} differs in {runners}"


@dataclass(frozen=True, slots=True)
class ToleranceOverride:
    """A case's own (rtol, atol) for some dtypes, and why the defaults do not fit."""

    reason: str
    by_dtype: tuple[tuple[str, float, float], ...] = ()  # (dtype, rtol, atol)
    magnitude_rtol: tuple[tuple[str, float], ...] = ()  # (dtype, share of the reference's greatest |value| also allowed)


@dataclass(frozen=True, slots=True)
class KerasOptions:
    """How the Keras runners port the model: PyTorch's meaning mapped, or Keras's own defaults,
    plus the porting mistakes a case reproduces (None: not overridden)."""

    parameters: str = "mapped"  # mapped | framework-defaults
    momentum: float | None = None
    epsilon: float | None = None
    axis: int | None = None
    trainable: bool | None = None
    # explicit: each BN gets training= from its own torch module's flag; model: every layer gets the
    # model's, as model(x, training=True) passes it; omitted: none (Keras then runs in inference).
    training_argument: str = "explicit"
    running_var: str = "as_stored"  # as_stored (biased) | unbiased (re-expressed in PyTorch's convention)
    # The layout of the data the port feeds Keras: channels_first keeps torch's NC... (a bare
    # BatchNorm's default, axis mapped to 1); channels_last, Keras's own N...C (axis -1, a
    # convolutional model's only layout). None: the port's default.
    layout: str | None = None
    # How a train_step trains the port: call (model(x, training=...), one update per step) or fit
    # (Model.fit on the step's batch, fit_batch_size samples per mini-batch, one update each).
    train_with: str = "call"
    fit_batch_size: int = 32  # Model.fit's own default

    def channels_last(self, bare_batchnorm: bool) -> bool:
        """Whether the port feeds Keras channels-last data."""
        return self.layout == "channels_last" if self.layout is not None else not bare_batchnorm


@dataclass(frozen=True, slots=True)
class Case:
    """A validated case file on a torch model."""

    kind: ClassVar[str] = "torch"  # the runner table's case_kind

    case_id: str
    path: str
    description: str
    model: str
    bn: BNConfig
    mode: ModeSetting
    input: InputSpec
    steps: tuple[Step, ...]
    model_seed: int = 0
    expectations: tuple[Expectation, ...] = ()
    tolerance: ToleranceOverride | None = None
    runners: tuple[str, ...] | None = None  # None: every registered runner
    keras: KerasOptions = KerasOptions()
    timeout_s: float | None = None  # per runner; None: the command line's, else harness.run.execution's default
    model_options: tuple[tuple[str, Any], ...] = ()  # the case's model_options, as (name, value)
    # bn_by_path: one BatchNorm's own values (eps, momentum, weight, ...) over `bn`'s, by its path
    bn_by_path: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    # The torch side's memory format: contiguous (NCHW) or channels_last (NHWC in memory, other
    # CPU kernels), for the module and every batch, in every torch runner (the reference too).
    torch_memory_format: str = "contiguous"
    # A user's own model (`model: {factory: ...}`): where it is made, and what the loader's probe
    # found in it; `model` is then its display name (`my_net.py:MyNet`).
    user_model: UserModelRef | None = None
    structure: ModelStructure | None = None

    @property
    def model_spec(self) -> ModelSpec:
        """The model table's entry for this case (a user model's structure as one), its
        model_options and bn_by_path applied. Made once per model and values: the runners read it
        at every step, attribution at every verdict."""
        return _case_spec(self.model, self.model_options, self.bn_by_path, self.structure, len(self.input.shape))

    @property
    def batchnorm_order(self) -> tuple[str, ...]:
        """The BatchNorms in the order a forward runs them: a user model's as its traced graph
        calls them (a shortcut's BatchNorm may run before one registered earlier), else the
        model's own order."""
        paths = self.model_spec.batchnorm_paths
        graph = self.structure.graph if self.structure is not None else None
        if not graph:
            return paths
        called = [node["target"] for node in graph if node["op"] == "call_module" and node["target"] in paths]
        return tuple(dict.fromkeys(called)) + tuple(path for path in paths if path not in called)

    @property
    def dtype(self) -> str:
        """The dtype the case's BatchNorms compute in."""
        return self.bn.dtype

    def step_label(self, index: int) -> str:
        """`step 2 (forward)`."""
        return f"step {index} ({self.steps[index].label()})"


@functools.lru_cache(maxsize=256)
def _case_spec(
    model: str,
    options: tuple[tuple[str, Any], ...],
    bn_by_path: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...],
    structure: ModelStructure | None,
    input_rank: int,
) -> ModelSpec:
    """A case's model spec (shared, read-only), from the hashable parts of the case that make it."""
    by_path = {path: dict(values) for path, values in bn_by_path}
    if structure is not None:
        return with_case_values(structure.spec(model, input_rank), None, by_path)
    return model_spec(model, dict(options), by_path)


@dataclass(frozen=True, slots=True)
class GraphNodeSpec:
    """A hand-built ONNX BatchNormalization node, to test runtimes directly against the spec."""

    opset: int
    training_mode: bool
    num_features: int
    epsilon: float = 1e-5
    momentum: float = 0.9  # ONNX's meaning: the weight of the old value
    dtype: str = "float32"
    scale: tuple[float, ...] | None = None
    bias: tuple[float, ...] | None = None
    mean: tuple[float, ...] | None = None
    var: tuple[float, ...] | None = None
    # inputs: mean and var are graph inputs, fed at every step (a training node's running
    # statistics fed back); initializers: stored in the graph, as exporters write them, so that
    # onnxruntime's constant handling of them is exercised (a training node then starts every
    # step from the stored values).
    statistics: str = "inputs"
    # Opsets 6 to 8 only: spatial=False normalises per activation (scale, bias, mean and var of
    # size C x D1 x ... x Dn, BatchNormalization-7).
    spatial: bool = True
    # Attributes not written, so that the runtime applies the schema's default (epsilon 1e-5,
    # momentum 0.9): the node's epsilon and momentum are then those defaults.
    omit: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GraphCase:
    """A case on an ONNX graph instead of a torch model: a hand-built BatchNormalization node run
    on seeded inputs, or a directory in the ONNX backend-test layout with its stored outputs."""

    kind: ClassVar[str] = "graph"  # the runner table's case_kind

    case_id: str
    path: str
    description: str
    node: GraphNodeSpec | None = None
    backend_test: str | None = None  # onnx:node/NAME, onnx:data/PATH, or a directory
    input: InputSpec | None = None
    steps: tuple[Step, ...] = ()
    expectations: tuple[Expectation, ...] = ()
    tolerance: ToleranceOverride | None = None
    runners: tuple[str, ...] | None = None
    directory: str = ""  # of the case file: relative backend-test paths start there
    timeout_s: float | None = None

    @property
    def dtype(self) -> str:
        """The node's dtype (a backend test's comes with its data)."""
        return self.node.dtype if self.node is not None else "float32"

    def step_label(self, index: int) -> str:
        """`step 1 (forward)`, or `data set 1` for a backend test."""
        if self.node is None:
            return f"data set {index}"
        return f"step {index} ({self.steps[index].label()})"


class AnyCase(Protocol):
    """What both case kinds have: the stages that handle a case as a unit (scheduling, judging,
    recording) take this, and branch on `kind` only where the kinds differ."""

    @property
    def kind(self) -> str: ...  # torch | graph: the runner table's case_kind
    @property
    def case_id(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def steps(self) -> tuple[Step, ...]: ...
    @property
    def expectations(self) -> tuple[Expectation, ...]: ...
    @property
    def tolerance(self) -> ToleranceOverride | None: ...
    @property
    def runners(self) -> tuple[str, ...] | None: ...
    @property
    def timeout_s(self) -> float | None: ...
    @property
    def dtype(self) -> str: ...
    def step_label(self, index: int) -> str: ...


def _protocol_check(case: Case, graph: GraphCase) -> Sequence[AnyCase]:
    """Both kinds satisfy AnyCase (mypy checks this function; it is never called)."""
    return (case, graph)
