"""Which side is wrong: every divergence gets a class, the side(s) and the spec(s) it rests on.

- implementation deviates: a runner is further from its own spec's float64 oracle than its dtype
  allows (the tolerance, or a few times the rounding floor of that computation in that dtype);
- conventions differ: both follow their specs, and the other side's spec applied to the
  reference's own input and state gives another value;
- state changed by a step: a step that should not change the model did (an export changing the
  user's module or the deployed state), a step changed one side's state and not the other's (the
  module's statistics set after an export), or the states had already parted at an earlier step;
- precision: both within their specs, the specs agree, and the values still differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.core.case import AnyCase, Case, GraphCase
from harness.core.fields import MODULE, MODULE_BN_ATTRIBUTES, OUTPUT
from harness.core.results import BNCall, RunResult, Verdict
from harness.core.semantics import SPECS, OracleResult, oracle
from harness.judge.tolerance import Tolerance, greatest_finite

# A runner is within its spec when its error is within the dtype's tolerance or this many times
# the rounding floor: how far the same formula, evaluated in that dtype, lands from float64.
ROUNDING_FLOOR_FACTOR = 4.0
# The float64 whole-model oracle takes the reference's own error as the rounding floor of a model
# output only up to this many units of roundoff of the output's magnitude.
MODEL_FLOOR_ULPS = 16.0
# The spacing of floats near 1 in each dtype (numpy's eps; bfloat16 keeps 8 significant bits).
UNIT_ROUNDOFF = {
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-8,
    "float32": float(np.finfo(np.float32).eps),
    "float64": float(np.finfo(np.float64).eps),
}
# What each exporter documents or does about the module's mode, cited where an export step is blamed.
EXPORT_CONTRACT = (
    "torch.onnx.export sets the training mode only temporarily and resets it afterwards "
    "(select_model_mode_for_export: 'temporarily set the training mode of model to mode, resetting "
    "it when we exit the with-block'); the exported graph should hold the module's state"
)
DYNAMO_EXPORT_MECHANISM = (
    "torch.onnx.export(dynamo=True) ignores training= ('Deprecated option. Instead, set the training "
    "mode of the model before exporting') and captures the module in its own mode with torch.export; "
    "onnxscript's torch_lib lowers aten::native_batch_norm / _native_batch_norm_legit with "
    "'training = False' ('a temporary fix for the issue that BatchNormalization is forced to be in "
    "training mode in PyTorch, and ORT currently only supports training mode with opset version lower "
    "than 14', onnxscript/function_libs/torch_lib/ops/core.py): a train-mode BatchNorm becomes an "
    "inference node on the statistics it held at the export"
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
        return (
            f"{self.runner} vs {SPECS[self.spec].name}: error {self.error:.3g} "
            f"(allowed {self.allowed:.3g}, rounding floor {self.floor:.3g})"
        )


@dataclass(frozen=True, slots=True)
class Attribution:
    """The class of a divergence and the sentence that says which side breaks which spec."""

    kind: str
    text: str
    sides: tuple[SideCheck, ...] = ()
    floor: float | None = None  # precision with a gap within both sides' rounding floors: the floors' sum
    predicted_gap: float | None = None  # conventions differ: the gap the crossed oracle predicts
    derived: bool = False  # taken from an earlier divergence (its sides measured another verdict)


def _precision(text: str, sides: tuple[SideCheck, ...], verdict: Verdict) -> Attribution:
    """Both sides follow their specs, which agree; when their gap is within the sum of the two
    sides' rounding floors (what the same formula costs in their dtypes, on this data), that is
    no divergence at all: the comparison agrees, and says with which numbers."""
    floor = sum(side.floor for side in sides)
    gap = verdict.max_abs_diff
    within = gap is not None and floor > 0 and gap <= floor
    return Attribution("precision", text, sides, floor if within else None)


def attribute_all(
    case: Case | GraphCase, reference: RunResult, other: RunResult, verdicts: Sequence[Verdict], spec_run: RunResult | None = None
) -> list[Verdict]:
    """The verdicts, each divergence with its attribution appended to its text and fields
    (`spec_run`: a graph case's onnx-spec run, whose calls both sides are measured against)."""
    divergent = [verdict for verdict in verdicts if not verdict]
    attributed: dict[int, Verdict] = {}
    made: list[tuple[Verdict, Attribution]] = []  # in step order: what a later divergence may follow from
    # Within a step, the BatchNorms' own fields first, in the model's order (an upstream BatchNorm's
    # output is a downstream one's input), then the model's output, which may follow from them.
    bn_order = case.batchnorm_order if isinstance(case, Case) else ("",)

    def position_in_model(field: str) -> int:
        field = field.removeprefix(MODULE + ".")
        return next((i for i, path in reversed(list(enumerate(bn_order))) if not path or field.startswith(path + ".")), len(bn_order))

    order = sorted(
        range(len(verdicts)), key=lambda i: (verdicts[i].step, verdicts[i].field == OUTPUT, position_in_model(verdicts[i].field))
    )
    for position in order:
        verdict = verdicts[position]
        if verdict:
            attributed[position] = verdict
            continue
        if isinstance(case, GraphCase):
            found = _attribute_on_graph(case, reference, other, verdict, spec_run, made)
        else:
            found = attribute(case, reference, other, verdict, divergent, made)
        if found.floor is not None:  # an agreement, not a divergence: nothing later follows from it
            attributed[position] = _agrees_within_floor(verdict, found)
            continue
        made.append((verdict, found))
        attributed[position] = dataclasses.replace(
            verdict,
            text=f"{verdict.text}\nAttribution: {found.kind}: {found.text}",
            attribution=found.kind,
            attribution_text=found.text,
            attribution_sides=tuple(dataclasses.asdict(side) for side in found.sides),
            invariant_violation=invariant_violation(verdict, found),
        )
    return [attributed[position] for position in range(len(verdicts))]


def invariant_violation(verdict: Verdict, found: Attribution) -> str | None:
    """Why an attribution contradicts its own measurements (a harness error, never a verdict on a
    framework), or None. Checked on attributions measured on this verdict, not those taken from
    an earlier divergence:
    - implementation deviates: every side it names is beyond its own spec;
    - precision: the gap is within what the two sides' specs allow them (the sum of their bounds);
    - conventions differ: the crossed oracle predicts the gap, to within the sides' bounds."""
    if found.derived or not found.sides:
        return None
    bound = sum(max(side.allowed, ROUNDING_FLOOR_FACTOR * side.floor) for side in found.sides)
    gap = verdict.max_abs_diff
    if found.kind == "implementation deviates":
        named = [side for side in found.sides if side.describe() in found.text]
        if not named or any(side.within_spec for side in named):
            return f"'implementation deviates' names a side within its own spec: {found.text}"
    elif found.kind == "precision" and gap is not None and gap > bound:
        return f"'precision' with a gap of {gap:.3g} beyond both sides' bounds ({bound:.3g})"
    elif found.kind == "conventions differ" and gap is not None and found.predicted_gap is not None:
        if abs(gap - found.predicted_gap) > bound + (verdict.atol or 0.0) + (verdict.rtol or 0.0) * abs(gap):
            return (
                f"'conventions differ' not explained by the crossed oracle: gap {gap:.3g}, predicted "
                f"{found.predicted_gap:.3g}, sides' bounds {bound:.3g}"
            )
    return None


def _agrees_within_floor(verdict: Verdict, found: Attribution) -> Verdict:
    """The divergence as an agreement: beyond the dtype's tolerance, within what rounding on this
    data costs both sides (ill-conditioned statistics amplify rounding by 1/sqrt(var + eps))."""
    head = f"{verdict.field} after {verdict.step_label}: {verdict.reference} vs {verdict.other}"
    text = (
        f"{head} agree within the {verdict.dtype} rounding floor of this data: gap {verdict.max_abs_diff:.2g}, "
        f"floor {found.floor:.2g} (beyond rtol={verdict.rtol:g} atol={verdict.atol:g}; {found.text})"
    )
    return dataclasses.replace(
        verdict,
        close=True,
        text=text,
        rounding_floor=found.floor,
        attribution_sides=tuple(dataclasses.asdict(side) for side in found.sides),
    )


def attribute(
    case: Case,
    reference: RunResult,
    other: RunResult,
    verdict: Verdict,
    divergent: Sequence[Verdict],
    earlier: Sequence[tuple[Verdict, Attribution]] = (),
) -> Attribution:
    """The attribution of one divergence (`divergent`: all divergences of this pair; `earlier`: the
    attributions already made at earlier steps, which a later divergence may follow from)."""
    carried = _carried(case, reference, other, verdict, earlier)
    if carried is not None:
        return carried
    field = verdict.field
    step_kind = case.steps[verdict.step].kind
    set_after_export = _state_set_after_export(case, other, verdict, divergent)
    if set_after_export is not None:
        return set_after_export
    if field.startswith(MODULE + "."):
        module_divergences = [v for v in divergent if v.field.startswith(MODULE + ".") and v.other == other.runner]
        first = min(module_divergences, key=lambda v: v.step, default=verdict)
        if case.steps[first.step].kind == "export":
            return _state_changed(case, other, verdict, module_divergences, "the user's torch module")
        # No export changed the module: an ordinary forward is not a step to blame. The module's
        # own fields face the oracles as the deployed artifact's do (in torch they are one module).
        field = field.removeprefix(MODULE + ".")
        name = field.rsplit(".", 1)[-1]
        if name in MODULE_BN_ATTRIBUTES:  # each side computes with its own parameter: a convention
            return Attribution(
                "conventions differ",
                f"the BatchNorm's {name} differs: {verdict.reference_value!r} "
                f"({verdict.reference}), {verdict.other_value!r} ({verdict.other}), from the start "
                f"({case.step_label(first.step)}, no export before it)",
            )
        if name in ("training", "num_batches_tracked"):
            return _follows_from_earlier(
                case, verdict, earlier, f"no oracle for {verdict.field}, and no export before {case.step_label(first.step)}"
            )
    bn_path = _bn_path_of(case, field)
    if bn_path is None:
        return _attribute_model_output(case, reference, other, verdict, earlier)
    deployed = [v for v in divergent if not v.field.startswith(MODULE + ".")]
    if step_kind == "export" and not other.details.get("exporter") and _kept_at(other, verdict) is not False:
        # torch-compile and the Keras ports make no export: a step that changed nothing in them is no cause.
        return _follows_from_earlier(case, verdict, earlier, f"{other.runner} makes no export at {case.step_label(verdict.step)}")
    if step_kind == "export":
        return _state_changed(case, other, verdict, deployed, "the deployed artifact")
    if field.endswith("uses_batch_stats"):
        if any(case.steps[v.step].kind == "export" and v.step < verdict.step and v.other == other.runner for v in deployed):
            return _state_changed(case, other, verdict, deployed, "the deployed artifact")
        return Attribution(
            "conventions differ",
            f"{verdict.reference} normalises with "
            f"{'batch' if verdict.reference_value else 'running'} statistics, {verdict.other} with "
            f"{'batch' if verdict.other_value else 'running'} statistics, a mode no export step set",
        )
    calls = reference.bn_calls.get((verdict.step, bn_path)), other.bn_calls.get((verdict.step, bn_path))
    reference_call, other_call = calls
    if step_kind == "set_mode" or reference_call is None or other_call is None:
        missing = [run.runner for run, call in zip((reference, other), calls) if call is None]
        why = "no forward at this step" if step_kind == "set_mode" else f"no record of the BatchNorm's input in {', '.join(missing)}"
        return _follows_from_earlier(case, verdict, earlier, why)
    return _judge(case, reference, other, verdict, reference_call, other_call, earlier, field)


def _kept_at(run: RunResult, verdict: Verdict) -> bool | None:
    """Whether the step of `verdict` left `run`'s value of its field as the step before had it
    (None: no value before, or none now)."""
    before, now = (verdict.step - 1, verdict.field), (verdict.step, verdict.field)
    if verdict.step == 0 or before not in run.observations or now not in run.observations:
        return None
    return _same_value(run.observations[before].value, run.observations[now].value)


def _following(cause: Verdict, found: Attribution, prefix: str = "") -> Attribution:
    """`found`'s class for a divergence that follows from `cause`, saying so."""
    return Attribution(found.kind, f"{prefix}follows from {cause.field} after {cause.step_label}: {found.text}", found.sides, derived=True)


CARRIED = "carried unchanged through "


def _carried(
    case: Case, reference: RunResult, other: RunResult, verdict: Verdict, earlier: Sequence[tuple[Verdict, Attribution]]
) -> Attribution | None:
    """The same divergence as at the step before, which this step changed on neither side (an
    export that leaves the statistics alone, a flag kept): it keeps the earlier cause. None when
    the step changed either side's value or the field did not diverge before."""
    if not all(_kept_at(run, verdict) for run in (reference, other)):
        return None
    cause = next(((v, found) for v, found in reversed(earlier) if v.field == verdict.field and v.step == verdict.step - 1), None)
    if cause is None or cause[1].kind == "unattributed":
        return None
    (cause_verdict, found), label = cause, case.step_label(verdict.step)
    if found.text.startswith(CARRIED):  # keep the first cause, not a chain of carries
        return Attribution(found.kind, f"{CARRIED}{label}; {found.text.split('; ', 1)[1]}", found.sides, derived=True)
    return _following(cause_verdict, found, prefix=f"{CARRIED}{label}; ")


def _same_value(a, b) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    return type(a) is type(b) and a == b


def _attribute_model_output(
    case: Case, reference: RunResult, other: RunResult, verdict: Verdict, earlier: Sequence[tuple[Verdict, Attribution]]
) -> Attribution:
    """A model output that passes through layers the BatchNorm oracles do not model: it follows from
    a BatchNorm whose output diverged at this step; if every BatchNorm's output agreed at this step,
    the layers around them are judged, against the model computed in float64; else from the
    nearest earlier divergence."""
    same_step = [(v, found) for v, found in earlier if v.step == verdict.step and v.field.endswith("." + OUTPUT)]
    if same_step:
        return _following(*same_step[0])
    bn_outputs = [(verdict.step, f"{path}.{OUTPUT}") for path in case.model_spec.batchnorm_paths if path]
    every_bn_agreed = bool(bn_outputs) and all(key in run.observations for key in bn_outputs for run in (reference, other))
    if every_bn_agreed and verdict.step in reference.model_oracle:
        return _judge_on_model(reference, other, verdict, reference.model_oracle[verdict.step])
    found = _follows_from_earlier(
        case,
        verdict,
        earlier,
        f"no oracle for {verdict.field}: it passes through layers the BatchNorm oracles do not model",
        same_step=True,
    )
    if found.kind == "unattributed" and verdict.step in reference.model_oracle:
        # No BatchNorm divergence explains it, so both ran the same state: the model in float64 is the spec.
        return _judge_on_model(reference, other, verdict, reference.model_oracle[verdict.step])
    return found


def _judge_on_model(reference: RunResult, other: RunResult, verdict: Verdict, expected: np.ndarray) -> Attribution:
    """Both sides against the model computed in float64; the floor is the reference's own distance
    from it (one evaluation of this model, on this data, in the reference's dtype)."""
    tolerance = verdict_tolerance(verdict)
    errors = []
    for run in (reference, other):
        observed = np.asarray(run.observations[(verdict.step, verdict.field)].value, dtype=np.float64)
        errors.append(float(np.max(np.abs(observed - expected))) if observed.shape == expected.shape else float("inf"))
    magnitude = float(np.max(np.abs(expected))) if expected.size else 0.0
    # The reference's own distance from the float64 model is this data's floor, as long as it is
    # rounding: within MODEL_FLOOR_ULPS units of roundoff of the output's magnitude. Beyond that,
    # the floor is that bound, and the reference is judged against it like any side.
    bound = MODEL_FLOOR_ULPS * UNIT_ROUNDOFF[reference.observations[(verdict.step, verdict.field)].dtype or "float32"] * magnitude
    floor = errors[0] if np.isfinite(errors[0]) and errors[0] <= bound else bound
    allowed = tolerance.atol + tolerance.rtol * magnitude
    sides = tuple(SideCheck(run.runner, "model-float64", error, allowed, floor) for run, error in zip((reference, other), errors))
    deviating = [side for side in sides if not side.within_spec]
    if deviating:
        return Attribution("implementation deviates", "; ".join(side.describe() for side in deviating), sides)
    return _precision("both within the model's own float64 result: " + "; ".join(side.describe() for side in sides), sides, verdict)


def _attribute_on_graph(
    case: GraphCase,
    reference: RunResult,
    other: RunResult,
    verdict: Verdict,
    spec_run: RunResult | None,
    earlier: Sequence[tuple[Verdict, Attribution]] = (),
) -> Attribution:
    """On one graph, both sides are measured against the ONNX spec on the same inputs; a side of
    another semantics (graph-torch) against its own, as two frameworks are."""
    if spec_run is not None and spec_run.status == "run_failed":
        return Attribution("unattributed", f"the ONNX spec oracle refuses this graph: {spec_run.reason}")
    call = spec_run.bn_calls.get((verdict.step, "")) if spec_run is not None and spec_run.status == "ok" else None
    if call is None:
        return Attribution("unattributed", "no ONNX spec oracle for this graph (not a single BatchNormalization node)")
    own = other.bn_calls.get((verdict.step, ""))
    if own is not None and own.semantics != "onnx":  # graph-torch: a side of another documented semantics
        return _judge(case, reference, other, verdict, call, own, earlier)
    tolerance = verdict_tolerance(verdict)
    sides = tuple(_side(case, call, run, verdict, verdict.field, tolerance) for run in (reference, other))
    deviating = [side for side in sides if not side.within_spec]
    if deviating:
        return Attribution("implementation deviates", "; ".join(side.describe() for side in deviating), sides)
    return _precision("both follow the ONNX spec: " + "; ".join(side.describe() for side in sides), sides, verdict)


def verdict_tolerance(verdict: Verdict) -> Tolerance:
    """The tolerance the comparison used (both sides' dtypes and the case's override): the one
    tolerance attribution measures with too."""
    if verdict.rtol is None or verdict.atol is None:  # flags and attributes: compared exactly
        return Tolerance(verdict.dtype or "exact", 0.0, 0.0, "exact comparison")
    return Tolerance(verdict.dtype or "?", verdict.rtol, verdict.atol, verdict.tolerance_source or "")


def _judge(case, reference, other, verdict, reference_call: BNCall, other_call: BNCall, earlier, field: str | None = None) -> Attribution:
    field = verdict.field if field is None else field
    attribute_name = field.rsplit(".", 1)[-1] if field != OUTPUT else OUTPUT
    tolerance = verdict_tolerance(verdict)
    if reference_call.channel_axis % reference_call.input.ndim != other_call.channel_axis % other_call.input.ndim:
        return Attribution("conventions differ", _conventions_text(reference.runner, reference_call, other.runner, other_call))
    sides = (
        _side(case, reference_call, reference, verdict, attribute_name, tolerance),
        _side(case, other_call, other, verdict, attribute_name, tolerance),
    )
    deviating = [side for side in sides if not side.within_spec]
    if deviating:
        return Attribution("implementation deviates", "; ".join(side.describe() for side in deviating), sides)
    if reference_call.uses_batch_stats != other_call.uses_batch_stats:
        # A mode that an earlier step changed (an export's inference graph) is not a convention.
        mode_changes = [(v, found) for v, found in earlier if v.field.endswith("uses_batch_stats") and v.step < verdict.step]
        if mode_changes:
            return _follows_from_earlier(case, verdict, mode_changes, "")
    # The state that matters is the state the formula uses: what each side normalises with, and
    # for an update the statistics it starts from. Both on batch statistics: running ones do not count.
    parted = _parted_state(reference_call, other_call, attribute_name, tolerance)
    ours = _pick(oracle(reference_call), attribute_name)
    # The other side's spec, parameters and mode, applied to the reference's own input and state.
    crossed = _crossed(reference_call, other_call)
    if not crossed.uses_batch_stats and (crossed.running_mean_before is None or _normalising_variance(crossed) is None):
        # The other side normalises with running statistics the reference does not keep (torch's
        # track_running_stats=False): a mode the reference cannot have, a convention.
        return Attribution(
            "conventions differ",
            _conventions_text(reference.runner, reference_call, other.runner, other_call)
            + f"; {reference.runner} keeps no running statistics to normalise with",
            sides,
        )
    theirs = _pick(oracle(crossed), attribute_name)
    convention_gap = _gap(ours, theirs)
    if parted:
        return _parted_attribution(
            case, reference, other, verdict, reference_call, other_call, attribute_name, parted, convention_gap, earlier, sides
        )
    if ours is not None and theirs is not None and not _close(ours, theirs, tolerance):
        return Attribution(
            "conventions differ",
            _conventions_text(reference.runner, reference_call, other.runner, other_call),
            sides,
            predicted_gap=convention_gap,
        )
    return _precision("both follow their specs, which agree here: " + "; ".join(side.describe() for side in sides), sides, verdict)


def _crossed(reference_call: BNCall, other_call: BNCall) -> BNCall:
    """The reference's input and state, computed by the other side's spec with its parameters."""
    return dataclasses.replace(
        reference_call,
        semantics=other_call.semantics,
        eps=other_call.eps,
        momentum=other_call.momentum,
        uses_batch_stats=other_call.uses_batch_stats,
        updates_running_stats=other_call.updates_running_stats,
        running_var_reported=other_call.running_var_reported,
        mini_batch=other_call.mini_batch,  # a training loop's mini-batches: how the other side is fed the batch
        # A Keras side normalises with the variance it stores; on the reference's state that is the reference's own.
        stored_var_before=None,
    )


def _parted_attribution(
    case, reference, other, verdict, reference_call, other_call, attribute_name, parted, convention_gap, earlier, sides
) -> Attribution:
    """The states the formula uses had parted before this step: name the earlier cause, and how much
    of the gap the state and the conventions each explain."""
    observed_gap = verdict.max_abs_diff if verdict.max_abs_diff is not None else float("nan")
    # The reference's spec on the other side's state: what the state alone moves.
    on_their_state = dataclasses.replace(_crossed(other_call, reference_call), stored_var_before=other_call.stored_var_before)
    state_gap = _gap(_pick(oracle(reference_call), attribute_name), _pick(oracle(on_their_state), attribute_name))
    shares = f"of the gap {observed_gap:.3g}, the state before the step explains {state_gap:.3g}"
    if convention_gap > 0:
        shares += (
            f" and the conventions {convention_gap:.3g} ({_conventions_text(reference.runner, reference_call, other.runner, other_call)})"
        )
    differing = ", ".join(f"{name} by up to {gap:.3g}" for name, gap in sorted(parted.items()))
    what = f"their states before this step differ ({differing}); {shares}"
    causes = [
        (v, found)
        for v, found in earlier
        if v.step < verdict.step and found.kind != "unattributed" and not v.field.startswith(MODULE + ".")
    ]
    # The divergence that parted this very state: the latest earlier one of the same BatchNorm's
    # statistic that differs (the variance it normalises with is its running_var).
    bn_prefix = verdict.field.removeprefix(MODULE + ".").rpartition(".")[0]
    statistics = {"running_var" if name == "normalising_variance" else name for name in parted}
    related = [(v, found) for v, found in causes if v.field.rpartition(".")[0] == bn_prefix and v.field.rpartition(".")[2] in statistics]
    if "input" in parted:  # what an upstream BatchNorm returned at this step is this one's input
        same_step_elsewhere = [
            (v, found)
            for v, found in earlier
            if v.step == verdict.step and v.field.removeprefix(MODULE + ".").rpartition(".")[0] != bn_prefix
        ]
        related += [(v, found) for v, found in same_step_elsewhere if v.field.endswith("." + OUTPUT)]
        if not any(step == verdict.step and field.endswith("." + OUTPUT) for step, field in other.observations):
            # No BatchNorm output to compare at this step (a Model.fit returns none): an upstream
            # BatchNorm that parted is seen in its statistics at this step.
            related += [(v, found) for v, found in same_step_elsewhere if found.kind != "unattributed"]
    stored = _stored_convention(other, other_call, reference_call, verdict) if set(parted) == {"normalising_variance"} else ""
    if related or (causes and not stored):
        return _following(*(related or causes)[-1], prefix=f"{what}; ")  # the nearest: it names the first cause
    if stored:
        predicted = _gap(_pick(oracle(reference_call), attribute_name), _pick(oracle(other_call), attribute_name))
        return Attribution("conventions differ", f"{stored}; {what}", sides, predicted_gap=predicted)
    return Attribution("unattributed", what, sides)


def _stored_convention(other: RunResult, other_call: BNCall, reference_call: BNCall, verdict: Verdict) -> str:
    """Why states part without an earlier divergence: the other side normalises with a variance it
    stores in another convention than the one it reports (Keras's biased moving variance, read
    back re-expressed in PyTorch's). Empty when that is not the case."""
    if other_call.stored_var_before is None or other_call.running_var_reported == "as_stored":
        return ""
    spec = SPECS[other_call.semantics]
    return (
        f"{other.runner} follows {spec.name} ({spec.running_var_convention}): it normalises with the variance it "
        f"stores, {_gap(other_call.stored_var_before, _normalising_variance(reference_call)):.3g} from the one "
        f"{verdict.reference} normalises with, although the running_var it reports (re-expressed in PyTorch's "
        "convention) agrees; it follows from the variance stored at the train steps before"
    )


def _side(case: AnyCase, call: BNCall, run: RunResult, verdict: Verdict, attribute_name: str, tolerance: Tolerance) -> SideCheck:
    expected = _pick(oracle(call), attribute_name)
    observed_record = run.observations[(verdict.step, verdict.field)]
    observed = np.asarray(observed_record.value, dtype=np.float64)
    error = float(np.max(np.abs(observed - expected))) if expected is not None and observed.shape == expected.shape else float("inf")
    magnitude = float(np.max(np.abs(expected))) if expected is not None and expected.size else 0.0
    # The rounding floor of the dtype this side computed in (its observation's), not the case's.
    floor = _rounding_floor(call, attribute_name, observed_record.dtype or case.dtype)
    return SideCheck(run.runner, call.semantics, error, tolerance.atol + tolerance.rtol * magnitude, floor)


def _rounding_floor(call: BNCall, attribute_name: str, dtype: str) -> float:
    """How far the documented formula lands from float64 when evaluated in `dtype` arithmetic."""
    if dtype == "float64":
        return 0.0
    numpy_dtype = np.float16 if dtype == "float16" else np.float32  # bfloat16: float32 arithmetic, rounded below
    as_dtype = lambda values: None if values is None else np.asarray(values, dtype=numpy_dtype)  # noqa: E731
    low = dataclasses.replace(
        call,
        input=np.asarray(call.input, dtype=numpy_dtype),
        weight=as_dtype(call.weight),
        bias=as_dtype(call.bias),
        running_mean_before=as_dtype(call.running_mean_before),
        running_var_before=as_dtype(call.running_var_before),
        stored_var_before=as_dtype(call.stored_var_before),
    )
    exact, approximate = _pick(oracle(call), attribute_name), _pick(oracle(low), attribute_name)
    if exact is None or approximate is None:
        return 0.0
    floor = float(np.max(np.abs(approximate.astype(np.float64) - exact)))
    if attribute_name == OUTPUT:
        # Forming x * inv (as TensorFlow and JAX do: x * inv + (beta - mean * inv)) costs a unit
        # roundoff of |x| * inv, which no float implementation of that shape avoids.
        floor += UNIT_ROUNDOFF["float16" if dtype == "float16" else "float32"] * _largest_scaled_input(call)
    if dtype == "bfloat16":
        floor += float(np.max(np.abs(exact))) * UNIT_ROUNDOFF["bfloat16"]  # bfloat16 keeps 8 significant bits
    return floor


def _largest_scaled_input(call: BNCall) -> float:
    """max |x| * |scale| / sqrt(var + eps), with the variance the call normalises with."""
    axes = (0,) if call.per_activation else tuple(i for i in range(call.input.ndim) if i != call.channel_axis % call.input.ndim)
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


def _normalising_variance(call: BNCall) -> np.ndarray | None:
    """The variance an inference call normalises with (Keras: the one it stores)."""
    return call.running_var_before if call.stored_var_before is None else call.stored_var_before


def _reads(call: BNCall, attribute_name: str) -> set[str]:
    """What the documented formula reads to compute `attribute_name` at this call."""
    if attribute_name != OUTPUT:  # a running statistic: the value it starts from (and the batch)
        # PyTorch's cumulative average (momentum=None) weighs the batch by 1 / (num_batches_tracked + 1).
        return {"input", attribute_name} | ({"num_batches_tracked"} if call.momentum is None and call.semantics == "pytorch" else set())
    return {"input", "weight", "bias"} | (set() if call.uses_batch_stats else {"running_mean", "normalising_variance"})


def _state_values(call: BNCall) -> dict[str, np.ndarray | None]:
    return {
        "input": call.input,
        "weight": call.weight,
        "bias": call.bias,
        "running_mean": call.running_mean_before,
        "running_var": call.running_var_before,
        "normalising_variance": _normalising_variance(call),
        "num_batches_tracked": None if call.num_batches_tracked_before is None else np.asarray(float(call.num_batches_tracked_before)),
    }


def _parted_state(a: BNCall, b: BNCall, attribute_name: str, tolerance: Tolerance) -> dict[str, float]:
    """The values either side's formula reads that differ between the sides beyond `tolerance`,
    with their greatest difference; empty when the states agree. A value only one side reads
    counts too: the crossed oracle applies the other side's formula to the reference's state."""
    values_a, values_b = _state_values(a), _state_values(b)
    parted: dict[str, float] = {}
    for name in _reads(a, attribute_name) | _reads(b, attribute_name):
        x, y = values_a[name], values_b[name]
        if x is None or y is None:
            continue
        x, y = np.asarray(x), np.asarray(y)
        if not _close(x, y, tolerance) and not (name == "input" and _within_upstream_rounding(x, y, tolerance)):
            parted[name] = _gap(x, y)
    return parted


def _within_upstream_rounding(x: np.ndarray, y: np.ndarray, tolerance: Tolerance) -> bool:
    """Inputs that differ only as the layers before the BatchNorm round at this magnitude (a
    convolution summing in another order at outputs of 3e5): within MODEL_FLOOR_ULPS units of
    roundoff of the input's greatest value, as the whole-model oracle's floor is. An element-wise
    tolerance fails such inputs near zero, where a sum of large terms cancels."""
    chosen = tolerance.dtype.rsplit(" ", 1)[-1]  # `float32`, or of mixed dtypes `float16/float32 -> float16`
    gap = _gap(x, y)
    return bool(np.isfinite(gap)) and gap <= MODEL_FLOOR_ULPS * UNIT_ROUNDOFF.get(chosen, UNIT_ROUNDOFF["float32"]) * greatest_finite(x)


def _gap(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """The greatest |a - b| (0 when either is missing, inf when the shapes differ)."""
    if a is None or b is None:
        return 0.0
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b))) if a.shape == b.shape and a.size else (0.0 if a.shape == b.shape else float("inf"))


def _conventions_text(reference: str, reference_call: BNCall, other: str, other_call: BNCall) -> str:
    def follows(runner: str, call: BNCall) -> str:
        spec = SPECS[call.semantics]
        mode = "batch statistics" if call.uses_batch_stats else "running statistics"
        momentum = "cumulative average" if call.momentum is None else f"momentum={call.momentum:g}"
        axis = f", channel axis {call.channel_axis % call.input.ndim} of {call.input.ndim}"
        reported = ", variance read back in PyTorch's unbiased convention" if call.running_var_reported == "unbiased" else ""
        if call.uses_batch_stats and not call.updates_running_stats and call.running_mean_before is not None:
            mode += " whose updated running statistics are not kept"
        if call.mini_batch is not None and call.uses_batch_stats and call.mini_batch < call.input.shape[0]:
            updates = -(-call.input.shape[0] // call.mini_batch)
            mode += f" of {updates} mini-batches of up to {call.mini_batch} samples in turn (Model.fit's batch_size), one update each"
        return f"{runner} follows {spec.name} ({spec.running_var_convention}{reported}; {mode}, eps={call.eps:g}, {momentum}{axis})"

    return f"{follows(reference, reference_call)}; {follows(other, other_call)}"


def _state_changed(case: Case, other: RunResult, verdict: Verdict, related: Sequence[Verdict], what: str) -> Attribution:
    """Blame the first export step, at or before this one, at which a related field diverged."""
    exports = [v for v in related if v.other == other.runner and case.steps[v.step].kind == "export" and v.step <= verdict.step]
    first = min(exports, key=lambda v: v.step, default=verdict)
    step = case.steps[first.step]
    mechanism = f"; {_export_mechanism(other, what)}" if step.kind == "export" else ""
    return Attribution(
        "state changed by a step",
        f"{case.step_label(first.step)} changed {what} in {other.runner} (first seen in {first.field}){mechanism}",
    )


STATE_STEPS = ("set_state", "reset_running_stats")


def _state_set_after_export(case: Case, other: RunResult, verdict: Verdict, divergent: Sequence[Verdict]) -> Attribution | None:
    """A deployed field that parts after the user set the module's state (set_state,
    reset_running_stats) once the export had copied it into the graph: the two sides run different
    states, and the step that made them differ is the user's, not a fault of the runtime. None
    when that is not the case (no export before, no such step, or the sides had parted before it)."""
    if verdict.field.startswith(MODULE + ".") or not other.details.get("exporter"):
        return None
    exports = [index for index, step in enumerate(case.steps[: verdict.step + 1]) if step.kind == "export"]
    if not exports:
        return None
    setting = [index for index, step in enumerate(case.steps[: verdict.step + 1]) if step.kind in STATE_STEPS and index > exports[-1]]
    if not setting:
        return None
    parted_before = [
        v for v in divergent if v.other == other.runner and not v.field.startswith(MODULE + ".") and exports[-1] < v.step < setting[0]
    ]
    if parted_before or not _module_state_changed(case, other, setting[0]):
        return None  # parted before the step, or the step set what the module already held: not the cause
    return Attribution(
        "state changed by a step",
        f"{case.step_label(setting[0])} changed the user's torch module after {case.step_label(exports[-1])}; "
        f"{other.runner} runs the exported graph, which keeps the statistics and weights the export copied into it "
        "(an exported model does not follow later changes to the module's buffers): the sides run different states",
    )


def _module_state_changed(case: Case, run: RunResult, step: int) -> bool:
    """Whether `step` changed a BatchNorm tensor of the user's module in `run`: its running
    statistics as the module.* fields recorded them, or a weight or bias it sets (those are not
    recorded: a set_state that writes one is taken at its word)."""
    if any(item.name in ("weight", "bias") for item in case.steps[step].state):
        return True
    names = ("running_mean", "running_var")
    fields = {field for at, field in run.observations if at == step and field.startswith(MODULE + ".") and field.endswith(names)}
    return step > 0 and any(
        (step - 1, field) in run.observations
        and not _same_value(run.observations[(step - 1, field)].value, run.observations[(step, field)].value)
        for field in fields
    )


def _export_mechanism(run: RunResult, what: str) -> str:
    """What the exporter `run` used documents, or does, about the module's mode and state."""
    if not run.details.get("exporter", {}).get("dynamo"):
        return EXPORT_CONTRACT
    if what == "the user's torch module":
        return (
            "torch.onnx.export(dynamo=True) captures the module with torch.export, which traces it "
            "without running it: the user's module should come out unchanged"
        )
    return DYNAMO_EXPORT_MECHANISM


def _follows_from_earlier(
    case: Case, verdict: Verdict, earlier: Sequence[tuple[Verdict, Attribution]], why: str, same_step: bool = False
) -> Attribution:
    """A divergence whose cause lies at an earlier step (or, for a field no oracle reaches, in a
    BatchNorm at the same step) takes that cause's class and says so."""
    causes = [
        (v, found)
        for v, found in earlier
        if (v.step < verdict.step or (same_step and v.step == verdict.step))
        and not v.field.startswith(MODULE + ".")
        and found.kind != "unattributed"
    ]
    if not causes:
        return Attribution("unattributed", why)
    return _following(*causes[0])


def _bn_path_of(case: Case, field: str) -> str | None:
    """The BatchNorm a deployed field belongs to; `output` only when the model is a bare BatchNorm."""
    spec = case.model_spec
    if field == OUTPUT:
        return "" if spec.batchnorm_paths == ("",) else None
    for path in spec.batchnorm_paths:
        prefix = f"{path}." if path else ""
        if field.startswith(prefix) and "." not in field[len(prefix) :]:
            return path
    return None
