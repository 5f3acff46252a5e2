"""Which side is wrong: every divergence gets a class, the side(s) and the spec(s) it rests on.

- implementation deviates: a runner is further from its own spec's float64 oracle than its dtype
  allows (the tolerance, or a few times the rounding floor of that computation in that dtype);
- conventions differ: both follow their specs, and the other side's spec applied to the
  reference's own input and state gives another value;
- state changed by a step: a step that should not change the model did (an export changing the
  user's module or the deployed state), or the states had already parted at an earlier step;
- precision: both within their specs, the specs agree, and the values still differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.case import Case, GraphCase
from harness.fields import MODULE, OUTPUT
from harness.models import MODEL_SPECS
from harness.results import BNCall, RunResult, Verdict
from harness.semantics import SPECS, OracleResult, oracle
from harness.tolerance import tolerance_for

# A runner is within its spec when its error is within the dtype's tolerance or this many times
# the rounding floor: how far the same formula, evaluated in that dtype, lands from float64.
ROUNDING_FLOOR_FACTOR = 4.0
EXPORT_CONTRACT = (
    "torch.onnx.export sets the training mode only temporarily and resets it afterwards "
    "(select_model_mode_for_export: 'temporarily set the training mode of model to mode, resetting "
    "it when we exit the with-block'); the exported graph should hold the module's state"
)
CLASSES = ("implementation deviates", "conventions differ", "state changed by a step", "precision", "unattributed")


@dataclass(frozen=True, slots=True)
class SideCheck:
    """One runner measured against its own spec's oracle on its own input and state."""

    runner: str
    spec: str
    error: float
    allowed: float
    floor: float

    @property
    def within_spec(self) -> bool:
        """Whether the runner computes what its documentation says, to its dtype's precision."""
        return self.error <= max(self.allowed, ROUNDING_FLOOR_FACTOR * self.floor)

    def describe(self) -> str:
        """`keras-torch vs Keras 3 BatchNormalization: error 0.033 (allowed 1e-05, rounding floor 2.1e-06)`."""
        return (f"{self.runner} vs {SPECS[self.spec].name}: error {self.error:.3g} "
                f"(allowed {self.allowed:.3g}, rounding floor {self.floor:.3g})")


@dataclass(frozen=True, slots=True)
class Attribution:
    """The class of a divergence and the sentence that says which side breaks which spec."""

    kind: str
    text: str
    sides: tuple[SideCheck, ...] = ()


def attribute_all(case: Case | GraphCase, reference: RunResult, other: RunResult, verdicts: Sequence[Verdict],
                  spec_run: RunResult | None = None) -> list[Verdict]:
    """The verdicts, each divergence with its attribution appended to its text and fields
    (`spec_run`: a graph case's onnx-spec run, whose calls both sides are measured against)."""
    divergent = [verdict for verdict in verdicts if not verdict]
    attributed: dict[int, Verdict] = {}
    made: list[tuple[Verdict, Attribution]] = []  # in step order: what a later divergence may follow from
    # Within a step, the BatchNorms' own fields first: the model's output may follow from them.
    order = sorted(range(len(verdicts)), key=lambda i: (verdicts[i].step, verdicts[i].field == OUTPUT))
    for position in order:
        verdict = verdicts[position]
        if verdict:
            attributed[position] = verdict
            continue
        if isinstance(case, GraphCase):
            found = _attribute_on_graph(case, reference, other, verdict, spec_run)
        else:
            found = attribute(case, reference, other, verdict, divergent, made)
        made.append((verdict, found))
        attributed[position] = dataclasses.replace(
            verdict,
            text=f"{verdict.text}\nAttribution: {found.kind}: {found.text}",
            attribution=found.kind,
            attribution_text=found.text,
            attribution_sides=tuple(dataclasses.asdict(side) for side in found.sides),
        )
    return [attributed[position] for position in range(len(verdicts))]


def attribute(case: Case, reference: RunResult, other: RunResult, verdict: Verdict,
              divergent: Sequence[Verdict], earlier: Sequence[tuple[Verdict, Attribution]] = ()) -> Attribution:
    """The attribution of one divergence (`divergent`: all divergences of this pair; `earlier`: the
    attributions already made at earlier steps, which a later divergence may follow from)."""
    if verdict.field.startswith(MODULE + "."):
        return _state_changed(case, other, verdict, [v for v in divergent if v.field.startswith(MODULE + ".")],
                              "the user's torch module")
    bn_path = _bn_path_of(case, verdict.field)
    if bn_path is None:
        return _follows_from_earlier(case, verdict, earlier, f"no oracle for {verdict.field}: it passes through layers "
                                     "the BatchNorm oracles do not model", same_step=True)
    step_kind = case.steps[verdict.step].kind
    if verdict.field.endswith("uses_batch_stats") or step_kind == "export":
        return _state_changed(case, other, verdict, [v for v in divergent if not v.field.startswith(MODULE + ".")],
                              "the deployed artifact")
    calls = reference.bn_calls.get((verdict.step, bn_path)), other.bn_calls.get((verdict.step, bn_path))
    if step_kind == "set_mode" or None in calls:
        missing = [run.runner for run, call in zip((reference, other), calls) if call is None]
        why = "no forward at this step" if step_kind == "set_mode" else f"no record of the BatchNorm's input in {', '.join(missing)}"
        return _follows_from_earlier(case, verdict, earlier, why)
    return _judge(case, reference, other, verdict, calls[0], calls[1], earlier)


def _attribute_on_graph(case: GraphCase, reference: RunResult, other: RunResult, verdict: Verdict,
                        spec_run: RunResult | None) -> Attribution:
    """On one graph, both sides are measured against the ONNX spec on the same inputs."""
    call = spec_run.bn_calls.get((verdict.step, "")) if spec_run is not None else None
    if call is None:
        return Attribution("unattributed", "no ONNX spec oracle for this graph (not a single BatchNormalization node)")
    sides = tuple(_side(case, call, run, verdict, verdict.field) for run in (reference, other))
    deviating = [side for side in sides if not side.within_spec]
    if deviating:
        return Attribution("implementation deviates", "; ".join(side.describe() for side in deviating), sides)
    return Attribution("precision", "both follow the ONNX spec: " + "; ".join(side.describe() for side in sides), sides)


def _judge(case, reference, other, verdict, reference_call: BNCall, other_call: BNCall, earlier) -> Attribution:
    attribute_name = verdict.field.rsplit(".", 1)[-1] if verdict.field != OUTPUT else OUTPUT
    if reference_call.channel_axis % reference_call.input.ndim != other_call.channel_axis % other_call.input.ndim:
        return Attribution("conventions differ", _conventions_text(reference.runner, reference_call, other.runner, other_call))
    sides = (_side(case, reference_call, reference, verdict, attribute_name),
             _side(case, other_call, other, verdict, attribute_name))
    deviating = [side for side in sides if not side.within_spec]
    if deviating:
        return Attribution("implementation deviates", "; ".join(side.describe() for side in deviating), sides)
    if reference_call.uses_batch_stats != other_call.uses_batch_stats:
        # A mode that an earlier step changed (an export's inference graph) is not a convention.
        mode_changes = [(v, found) for v, found in earlier if v.field.endswith("uses_batch_stats")]
        if mode_changes:
            return _follows_from_earlier(case, verdict, mode_changes, "")
    crossed = dataclasses.replace(
        reference_call,
        semantics=other_call.semantics, eps=other_call.eps, momentum=other_call.momentum,
        uses_batch_stats=other_call.uses_batch_stats, updates_running_stats=other_call.updates_running_stats,
        running_var_reported=other_call.running_var_reported,
    )
    mine = _pick(oracle(reference_call), attribute_name)
    theirs = _pick(oracle(crossed), attribute_name)
    tolerance = tolerance_for([case.dtype])
    if mine is not None and theirs is not None and not _close(mine, theirs, tolerance):
        return Attribution("conventions differ", _conventions_text(reference.runner, reference_call, other.runner, other_call), sides)
    if not _same_state(reference_call, other_call, tolerance):
        return _follows_from_earlier(case, verdict, earlier, "their states before this step differ")
    return Attribution("precision", "both follow their specs, which agree here: " + "; ".join(side.describe() for side in sides), sides)


def _side(case: Case, call: BNCall, run: RunResult, verdict: Verdict, attribute_name: str) -> SideCheck:
    expected = _pick(oracle(call), attribute_name)
    observed = np.asarray(run.observations[(verdict.step, verdict.field)].value, dtype=np.float64)
    error = float(np.max(np.abs(observed - expected))) if expected is not None and observed.shape == expected.shape else float("inf")
    tolerance = tolerance_for([case.dtype])
    magnitude = float(np.max(np.abs(expected))) if expected is not None and expected.size else 0.0
    floor = _rounding_floor(call, attribute_name, case.dtype)
    return SideCheck(run.runner, call.semantics, error, tolerance.atol + tolerance.rtol * magnitude, floor)


def _rounding_floor(call: BNCall, attribute_name: str, dtype: str) -> float:
    """How far the documented formula lands from float64 when evaluated in `dtype` arithmetic."""
    if dtype == "float64":
        return 0.0
    numpy_dtype = np.float16 if dtype == "float16" else np.float32  # bfloat16: float32 arithmetic, rounded below
    as_dtype = lambda values: None if values is None else np.asarray(values, dtype=numpy_dtype)  # noqa: E731
    low = dataclasses.replace(
        call, input=as_dtype(call.input), weight=as_dtype(call.weight), bias=as_dtype(call.bias),
        running_mean_before=as_dtype(call.running_mean_before), running_var_before=as_dtype(call.running_var_before),
        stored_var_before=as_dtype(call.stored_var_before),
    )
    exact, approximate = _pick(oracle(call), attribute_name), _pick(oracle(low), attribute_name)
    if exact is None or approximate is None:
        return 0.0
    floor = float(np.max(np.abs(approximate.astype(np.float64) - exact)))
    if attribute_name == OUTPUT:
        # Forming x * inv (as TensorFlow and JAX do: x * inv + (beta - mean * inv)) costs a unit
        # roundoff of |x| * inv, which no float implementation of that shape avoids.
        floor += float(np.finfo(numpy_dtype).eps) * _largest_scaled_input(call)
    if dtype == "bfloat16":
        floor += float(np.max(np.abs(exact))) * 2.0**-8  # bfloat16 keeps 8 significant bits
    return floor


def _largest_scaled_input(call: BNCall) -> float:
    """max |x| * |scale| / sqrt(var + eps), with the variance the call normalises with."""
    axes = tuple(i for i in range(call.input.ndim) if i != call.channel_axis % call.input.ndim)
    if call.uses_batch_stats:
        variance = call.input.var(axis=axes)
    else:
        variance = call.running_var_before if call.stored_var_before is None else call.stored_var_before
    scale = np.abs(call.weight) if call.weight is not None else 1.0
    inverse = np.max(scale / np.sqrt(np.asarray(variance) + call.eps))
    return float(np.max(np.abs(call.input)) * inverse)


def _pick(result: OracleResult, attribute_name: str) -> np.ndarray | None:
    return getattr(result, "output" if attribute_name == OUTPUT else attribute_name, None)


def _close(a: np.ndarray, b: np.ndarray, tolerance) -> bool:
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= tolerance.atol + tolerance.rtol * np.abs(a)))


def _same_state(a: BNCall, b: BNCall, tolerance) -> bool:
    pairs = [(a.input, b.input), (a.running_mean_before, b.running_mean_before), (a.running_var_before, b.running_var_before)]
    return all(x is None or y is None or _close(np.asarray(x), np.asarray(y), tolerance) for x, y in pairs)


def _conventions_text(reference: str, reference_call: BNCall, other: str, other_call: BNCall) -> str:
    def follows(runner: str, call: BNCall) -> str:
        spec = SPECS[call.semantics]
        mode = "batch statistics" if call.uses_batch_stats else "running statistics"
        momentum = "cumulative average" if call.momentum is None else f"momentum={call.momentum:g}"
        axis = f", channel axis {call.channel_axis % call.input.ndim} of {call.input.ndim}"
        reported = ", variance read back in PyTorch's unbiased convention" if call.running_var_reported == "unbiased" else ""
        return (f"{runner} follows {spec.name} ({spec.running_var_convention}{reported}; "
                f"{mode}, eps={call.eps:g}, {momentum}{axis})")

    return f"{follows(reference, reference_call)}; {follows(other, other_call)}"


def _state_changed(case: Case, other: RunResult, verdict: Verdict, related: Sequence[Verdict], what: str) -> Attribution:
    first = min((v for v in related if v.other == other.runner), key=lambda v: v.step, default=verdict)
    step = case.steps[first.step]
    contract = f"; {EXPORT_CONTRACT}" if step.kind == "export" else ""
    return Attribution(
        "state changed by a step",
        f"{case.step_label(first.step)} changed {what} in {other.runner} (first seen in {first.field}){contract}",
    )


def _follows_from_earlier(case: Case, verdict: Verdict, earlier: Sequence[tuple[Verdict, Attribution]], why: str,
                          same_step: bool = False) -> Attribution:
    """A divergence whose cause lies at an earlier step (or, for a field no oracle reaches, in a
    BatchNorm at the same step) takes that cause's class and says so."""
    causes = [(v, found) for v, found in earlier
              if (v.step < verdict.step or (same_step and v.step == verdict.step))
              and not v.field.startswith(MODULE + ".") and found.kind != "unattributed"]
    if not causes:
        return Attribution("unattributed", why)
    cause, found = causes[0]
    return Attribution(found.kind, f"follows from {cause.field} after {cause.step_label}: {found.text}", found.sides)


def _bn_path_of(case: Case, field: str) -> str | None:
    """The BatchNorm a deployed field belongs to; `output` only when the model is a bare BatchNorm."""
    spec = MODEL_SPECS[case.model]
    if field == OUTPUT:
        return "" if spec.batchnorm_paths == ("",) else None
    for path in spec.batchnorm_paths:
        prefix = f"{path}." if path else ""
        if field.startswith(prefix) and "." not in field[len(prefix):]:
            return path
    return None

