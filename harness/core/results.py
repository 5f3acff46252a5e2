"""Plain data passed between the stages: what a runner observed, verdicts, and case results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Scalar = bool | int | float | str | None


@dataclass(frozen=True, slots=True)
class Observed:
    """One observed value: an array (kept in float64, with the framework's dtype) or a scalar."""

    value: np.ndarray | Scalar
    dtype: str | None = None  # set for arrays: float32, bfloat16, ...

    @property
    def is_array(self) -> bool:
        """Whether this is a tensor compared with tolerances, not a flag or attribute."""
        return isinstance(self.value, np.ndarray)


StepField = tuple[int, str]  # (step index, field name)


@dataclass(frozen=True, slots=True)
class BNCall:
    """What one BatchNorm of a deployed artifact was given at one step, in its own framework's
    terms: the inputs of the spec oracles (`harness.core.semantics`)."""

    semantics: str  # pytorch | onnx | keras: the documentation the runner claims to follow
    input: np.ndarray  # float64 copy of the values the BatchNorm received
    channel_axis: int
    uses_batch_stats: bool
    updates_running_stats: bool
    eps: float
    momentum: float | None  # in that framework's meaning; None: PyTorch's cumulative average
    weight: np.ndarray | None
    bias: np.ndarray | None
    running_mean_before: np.ndarray | None
    running_var_before: np.ndarray | None  # as the runner reports it
    stored_var_before: np.ndarray | None = None  # what it normalises with, where that differs (Keras)
    num_batches_tracked_before: int | None = None
    running_var_reported: str = "as_stored"  # Keras: as_stored | unbiased
    per_activation: bool = False  # ONNX opset 6-7 spatial=0: statistics per activation, not per channel
    # Keras Model.fit: `input` taken in mini-batches of this many samples, in order, one update each
    # (None: the whole input at once).
    mini_batch: int | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    """Everything one runner observed on one case; framework objects never leave the runner."""

    runner: str
    status: str
    reason: str | None = None
    observations: Mapping[StepField, Observed] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)  # JSON-able facts: graph, warnings
    notes: tuple[str, ...] = ()  # lines every divergence involving this runner carries (a mapping)
    bn_calls: Mapping[tuple[int, str], BNCall] = field(default_factory=dict)  # (step, BN path) -> call
    artifacts: Mapping[str, bytes] = field(default_factory=dict)  # e.g. the exported model.onnx, for repro bundles
    # step -> the model's output computed in float64 from the same state and input (torch runners of
    # models with layers besides BatchNorm): the spec of a model output no BatchNorm oracle reaches.
    model_oracle: Mapping[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The comparison of one field after one step between the reference and another runner."""

    field: str
    step: int
    step_label: str
    reference: str
    other: str
    close: bool
    text: str
    dtype: str | None = None
    rtol: float | None = None
    atol: float | None = None
    tolerance_source: str | None = None
    mismatched: int = 0
    total: int = 1
    max_abs_diff: float | None = None
    max_abs_index: tuple[int, ...] | None = None
    max_rel_diff: float | None = None
    max_rel_index: tuple[int, ...] | None = None
    min_atol_to_pass: float | None = None
    min_rtol_to_pass: float | None = None
    reference_value: Scalar = None
    other_value: Scalar = None
    channel_abs_diff: tuple[float, ...] = ()  # greatest |difference| per channel (axis 1, or per element of a vector)
    nan_count: tuple[int, int] = (0, 0)  # NaN elements of (reference, other): 128 NaNs and 512 read apart
    inf_count: tuple[int, int] = (0, 0)  # infinite elements of (reference, other)
    attribution: str | None = None  # a class of harness.judge.attribution.CLASSES, for divergences
    attribution_text: str | None = None
    attribution_sides: tuple[dict[str, Any], ...] = ()  # each side against its own spec's oracle
    rounding_floor: float | None = None  # set when it agrees beyond the tolerance, within both sides' rounding floors
    invariant_violation: str | None = None  # the attribution contradicts its own measurements: a harness error

    def __bool__(self) -> bool:
        return self.close

    def to_json(self) -> dict[str, Any]:
        """The verdict's fields as JSON-able data."""
        data = {name: getattr(self, name) for name in self.__slots__}
        for name in ("max_abs_index", "max_rel_index"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data
