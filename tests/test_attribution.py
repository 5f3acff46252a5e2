"""Each attribution class on constructed runs: two runners' calls, observations and a divergence."""

from __future__ import annotations

import dataclasses

import numpy as np

from harness.attribution import attribute_all
from harness.case import BNConfig, Case, ExportOptions, InputSpec, ModeSetting, Step
from harness.compare import compare_runs
from harness.results import BNCall, Observed, RunResult
from harness.semantics import oracle

CASE = Case("c", "cases/c.yaml", "", "batchnorm1d", BNConfig(2), ModeSetting((("", True),)), InputSpec((64, 2), "float32"),
            (Step("forward", seed=0), Step("export", export=ExportOptions()), Step("forward", seed=0)))
X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32).astype(np.float64)
TORCH_CALL = BNCall(semantics="pytorch", input=X, channel_axis=1, uses_batch_stats=True, updates_running_stats=True,
                    eps=1e-5, momentum=0.1, weight=np.ones(2), bias=np.zeros(2), running_mean_before=np.zeros(2),
                    running_var_before=np.ones(2), num_batches_tracked_before=0)
ONNX_CALL = dataclasses.replace(TORCH_CALL, semantics="onnx", momentum=0.9, num_batches_tracked_before=None)


def run(name: str, call: BNCall, step: int = 0, **offsets: float) -> RunResult:
    """A run whose deployed fields are its own oracle's values (plus `offsets`) at `step`."""
    result = oracle(call)
    observations = {}
    for field, values in (("output", result.output), ("running_mean", result.running_mean), ("running_var", result.running_var)):
        observations[(step, field)] = Observed(np.asarray(values, dtype=np.float32).astype(np.float64) + offsets.get(field, 0.0), "float32")
    return RunResult(name, "ok", observations=observations, bn_calls={(step, ""): call})


def judged(reference: RunResult, other: RunResult):
    return [v for v in attribute_all(CASE, reference, other, list(compare_runs(CASE, reference, other))) if not v]


def test_conventions_differ_names_both_specs():
    (verdict,) = judged(run("torch-eager", TORCH_CALL), run("onnx-torchscript-ort", ONNX_CALL))
    assert verdict.field == "running_var" and verdict.attribution == "conventions differ"
    assert "torch-eager follows PyTorch BatchNorm{1,2,3}d (unbiased batch variance" in verdict.attribution_text
    assert "onnx-torchscript-ort follows ONNX BatchNormalization (population variance" in verdict.attribution_text
    assert verdict.text.splitlines()[-1].startswith("Attribution: conventions differ: torch-eager follows")


def test_implementation_deviates_names_the_side_its_error_and_the_floor():
    keras_call = dataclasses.replace(ONNX_CALL, semantics="keras", running_var_reported="unbiased")
    (verdict,) = judged(run("torch-eager", TORCH_CALL), run("keras-torch", keras_call, output=0.01))
    assert verdict.field == "output" and verdict.attribution == "implementation deviates"
    assert verdict.attribution_text.startswith("keras-torch vs Keras 3 BatchNormalization: error 0.01")
    assert "rounding floor" in verdict.attribution_text
    (side,) = [s for s in verdict.attribution_sides if s["runner"] == "keras-torch"]
    assert side["error"] > side["allowed"]


def test_precision_when_both_follow_specs_that_agree():
    shifted = dataclasses.replace(TORCH_CALL, input=(X + 300.0).astype(np.float32).astype(np.float64))
    reference = run("torch-eager", shifted)
    # 3e-5 from its oracle: above the float32 tolerance, within a few rounding floors of this data.
    other = run("keras-jax", dataclasses.replace(shifted, semantics="keras", momentum=0.9, running_var_reported="unbiased"), output=3e-5)
    (verdict,) = judged(reference, other)
    assert verdict.field == "output" and verdict.attribution == "precision"
    assert verdict.attribution_text.startswith("both follow their specs, which agree here:")


def test_state_changed_by_an_export_and_what_follows_from_it():
    reference = RunResult("torch-eager", "ok", observations={
        (1, "module.bn.training"): Observed(False), (2, "module.output"): Observed(np.zeros(2), "float32")})
    other = RunResult("onnx-torchscript-ort", "ok", observations={
        (1, "module.bn.training"): Observed(True), (2, "module.output"): Observed(np.ones(2), "float32")})
    flipped, later = judged(reference, other)
    for verdict in (flipped, later):
        assert verdict.attribution == "state changed by a step"
        assert verdict.attribution_text.startswith(
            "step 1 (export(training=eval)) changed the user's torch module in onnx-torchscript-ort (first seen in module.bn.training)")
    assert "temporarily set the training mode" in flipped.attribution_text


def test_a_field_no_oracle_reaches_follows_from_the_batchnorm_divergence_before_it():
    conv_case = dataclasses.replace(CASE, model="forum_net")
    reference = RunResult("torch-eager", "ok", observations={
        (1, "bn.uses_batch_stats"): Observed(True), (2, "output"): Observed(np.zeros(3), "float32")})
    other = RunResult("onnx-dynamo-ort", "ok", observations={
        (1, "bn.uses_batch_stats"): Observed(False), (2, "output"): Observed(np.ones(3), "float32")})
    mode, output = [v for v in attribute_all(conv_case, reference, other, list(compare_runs(conv_case, reference, other))) if not v]
    assert mode.attribution == output.attribution == "state changed by a step"
    assert output.attribution_text.startswith("follows from bn.uses_batch_stats after step 1 (export(training=eval)):")


def test_divergences_without_an_oracle_are_unattributed_not_guessed():
    conv_case = dataclasses.replace(CASE, model="forum_net")
    reference = RunResult("torch-eager", "ok", observations={(0, "output"): Observed(np.zeros(3), "float32")})
    other = RunResult("onnx-dynamo-ort", "ok", observations={(0, "output"): Observed(np.ones(3), "float32")})
    (verdict,) = [v for v in attribute_all(conv_case, reference, other, list(compare_runs(conv_case, reference, other))) if not v]
    assert verdict.attribution == "unattributed" and "no oracle for output" in verdict.attribution_text
