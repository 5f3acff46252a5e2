"""The pure comparator: two runners' observations and a tolerance policy in, verdicts out."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from harness.core.case import AnyCase
from harness.core.results import Observed, RunResult, Verdict
from harness.judge.tolerance import NAN_POLICY, Tolerance, tolerance_for

MAX_MISMATCH_ROWS = 5


def compare_runs(case: AnyCase, reference: RunResult, other: RunResult) -> Iterator[Verdict]:
    """A verdict for every (step, field) both runners observed, in step order; a divergence also
    carries the runners' notes (a Keras runner's parameter mapping)."""
    notes = [f"Note: {run.runner}: {note}" for run in (reference, other) for note in run.notes]
    for key in sorted(reference.observations.keys() & other.observations.keys()):
        step, field = key
        verdict = compare_observed(
            field=field,
            step=step,
            step_label=case.step_label(step),
            reference_name=reference.runner,
            other_name=other.runner,
            reference=reference.observations[key],
            other=other.observations[key],
            case=case,
        )
        yield verdict if verdict or not notes else dataclasses.replace(verdict, text="\n".join([verdict.text, *notes]))


def compare_observed(
    *,
    field: str,
    step: int,
    step_label: str,
    reference_name: str,
    other_name: str,
    reference: Observed,
    other: Observed,
    case: AnyCase | None = None,
) -> Verdict:
    """Compare one field: arrays with the dtype's tolerance, flags and attributes exactly."""
    what = f"{field} after {step_label}: {reference_name} vs {other_name}"
    common: dict[str, Any] = dict(field=field, step=step, step_label=step_label, reference=reference_name, other=other_name)
    expected, actual = reference.value, other.value
    if not (isinstance(expected, np.ndarray) and isinstance(actual, np.ndarray)):
        close = _same_scalar(reference.value, other.value)
        verb = "agree" if close else "differ"
        text = f"{what} {verb}: {reference.value!r} ({reference_name}), {other.value!r} ({other_name})"
        return Verdict(
            close=close,
            text=text,
            mismatched=0 if close else 1,
            reference_value=_scalar(reference.value),
            other_value=_scalar(other.value),
            **common,
        )
    dtypes = [dtype for dtype in (reference.dtype, other.dtype) if dtype is not None]  # an array always has one
    tolerance = tolerance_for(dtypes, case.tolerance if case else None)
    tolerance_fields: dict[str, Any] = dict(
        dtype=tolerance.dtype, rtol=tolerance.rtol, atol=tolerance.atol, tolerance_source=tolerance.source
    )
    if expected.shape != actual.shape:
        text = f"{what} have different shapes: {expected.shape} ({reference_name}), {actual.shape} ({other_name})"
        return Verdict(
            close=False,
            text=text,
            mismatched=max(expected.size, actual.size),
            total=max(expected.size, actual.size),
            **tolerance_fields,
            **common,
        )
    return _compare_arrays(what, expected, actual, tolerance, reference_name, other_name, common, tolerance_fields)


def _compare_arrays(what, expected, actual, tolerance: Tolerance, reference_name, other_name, common, tolerance_fields) -> Verdict:
    atol = tolerance.atol_for(expected)
    if atol != tolerance.atol:  # a magnitude-relative part: the atol this comparison allowed
        tolerance = dataclasses.replace(tolerance, atol=atol, magnitude_rtol=0.0, source=f"{tolerance.describe()}, at this magnitude")
        tolerance_fields = {**tolerance_fields, "atol": atol}
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        abs_diff = np.abs(expected - actual)
        allowed = tolerance.atol + tolerance.rtol * np.abs(expected)
        both_nan = np.isnan(expected) & np.isnan(actual)
        # An infinite reference would allow an infinite difference: only finite gaps can be close.
        # `expected == actual` still makes equal infinities close although their difference is NaN.
        close_mask = (np.isfinite(abs_diff) & (abs_diff <= allowed)) | both_nan | (expected == actual)
        rel_diff = abs_diff / np.abs(expected)
    mismatch = ~close_mask
    mismatched, total = int(mismatch.sum()), int(expected.size)
    common["channel_abs_diff"] = _per_channel(abs_diff, both_nan | (expected == actual))
    nans = common["nan_count"] = (int(np.isnan(expected).sum()), int(np.isnan(actual).sum()))
    infs = common["inf_count"] = (int(np.isinf(expected).sum()), int(np.isinf(actual).sum()))
    min_atol, min_rtol = _minimum_tolerances(expected, actual, abs_diff, both_nan, tolerance)
    if mismatched == 0:
        worst = float(np.nanmax(np.where(both_nan, 0.0, abs_diff))) if total else 0.0
        same_nans = f"; NaN at the same {nans[0]} indices on both sides" if nans[0] else ""
        text = f"{what} are close (greatest absolute difference {worst:.3g}; {tolerance.describe()}{same_nans})"
        return Verdict(
            close=True,
            text=text,
            total=total,
            max_abs_diff=worst,
            min_atol_to_pass=min_atol,
            min_rtol_to_pass=min_rtol,
            **tolerance_fields,
            **common,
        )
    # Maxima over the mismatches only; a NaN difference counts as the greatest.
    abs_over = np.where(mismatch, np.nan_to_num(abs_diff, nan=np.inf), -1.0)
    rel_over = np.where(mismatch, np.nan_to_num(rel_diff, nan=np.inf), -1.0)
    abs_index = np.unravel_index(int(np.argmax(abs_over)), expected.shape)
    rel_index = np.unravel_index(int(np.argmax(rel_over)), expected.shape)
    max_abs, max_rel = float(abs_diff[abs_index]), float(rel_diff[rel_index])
    lines = [
        f"{what} are not close!",
        f"Mismatched elements: {mismatched} / {total} ({100.0 * mismatched / total:.1f}%)",
        *(
            [
                f"Non-finite elements: NaN {nans[0]} ({reference_name}), {nans[1]} ({other_name}); "
                f"Inf {infs[0]} ({reference_name}), {infs[1]} ({other_name})"
            ]
            if any(nans) or any(infs)
            else []
        ),
        f"Greatest absolute difference: {max_abs:.3g} at index {_index(abs_index)} (up to {tolerance.atol:g} allowed)",
        f"Greatest relative difference: {max_rel:.3g} at index {_index(rel_index)} (up to {tolerance.rtol:g} allowed)",
        f"Tolerance: {tolerance.describe()}; {NAN_POLICY}",
    ]
    for flat in np.flatnonzero(mismatch)[:MAX_MISMATCH_ROWS]:
        index = np.unravel_index(int(flat), expected.shape)
        lines.append(f"  {_index(index)}: {expected[index]:.6g} ({reference_name}), {actual[index]:.6g} ({other_name})")
    return Verdict(
        close=False,
        text="\n".join(lines),
        mismatched=mismatched,
        total=total,
        max_abs_diff=max_abs,
        max_abs_index=tuple(int(i) for i in abs_index),
        max_rel_diff=max_rel,
        max_rel_index=tuple(int(i) for i in rel_index),
        min_atol_to_pass=min_atol,
        min_rtol_to_pass=min_rtol,
        **tolerance_fields,
        **common,
    )


def _per_channel(abs_diff: np.ndarray, identical: np.ndarray) -> tuple[float, ...]:
    """The greatest difference per channel (axis 1; a vector's own elements), for the report's plots."""
    diff = np.where(identical, 0.0, np.nan_to_num(abs_diff, nan=np.inf))
    if diff.ndim == 0:
        return (float(diff),)
    if diff.ndim == 1:
        return tuple(float(value) for value in diff)
    return tuple(float(value) for value in np.moveaxis(diff, 1, 0).reshape(diff.shape[1], -1).max(axis=1))


def _minimum_tolerances(expected, actual, abs_diff, both_nan, tolerance: Tolerance) -> tuple[float | None, float | None]:
    """The smallest atol (at the given rtol) and rtol (at the given atol) that would pass; None if none would."""
    # Identical values (equal infinities and NaN pairs included) need no tolerance at all.
    considered = ~(both_nan | (expected == actual))
    diff = abs_diff[considered]
    magnitude = np.abs(expected[considered])
    if diff.size == 0:
        return 0.0, 0.0
    if not np.all(np.isfinite(diff)):
        return None, None
    with np.errstate(divide="ignore", invalid="ignore"):
        needed_atol = float(np.max(np.maximum(diff - tolerance.rtol * magnitude, 0.0)))
        excess = np.maximum(diff - tolerance.atol, 0.0)
        ratios = np.where(excess == 0, 0.0, excess / magnitude)
    needed_rtol = float(np.max(ratios))
    return needed_atol, (needed_rtol if math.isfinite(needed_rtol) else None)


def _index(index: tuple[np.intp, ...]) -> str:
    return str(tuple(int(i) for i in index))


def _same_scalar(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _scalar(value: object) -> bool | int | float | str | None:
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)
