from __future__ import annotations

import numpy as np

from harness.core.case import BNConfig, Case, Expectation, InputSpec, ModeSetting, Step
from harness.core.results import Observed, RunResult
from harness.judge.compare import compare_observed
from harness.judge.engine import explain_classification
from harness.judge.expected import classify

OTHER = "onnx-torchscript-ort"


def make_case(*expectations: Expectation) -> Case:
    steps = (Step("forward", seed=0), Step("export"), Step("forward", seed=0))
    return Case(
        "c",
        "cases/c.yaml",
        "",
        "forum_net",
        BNConfig(2),
        ModeSetting((("", True),)),
        InputSpec((2, 3, 4, 4), "float32"),
        steps,
        expectations=expectations,
    )


def flag_verdict(step: int, reference: bool, other: bool, field: str = "module.bn.training"):
    return compare_observed(
        field=field,
        step=step,
        step_label=f"step {step}",
        reference_name="torch-eager",
        other_name=OTHER,
        reference=Observed(reference),
        other=Observed(other),
    )


def runs(status: str = "ok", reason: str | None = None) -> list[RunResult]:
    return [RunResult("torch-eager", "ok"), RunResult(OTHER, status, reason)]


FLIP = Expectation(
    (OTHER,),
    "exporter flips the child",
    fields=("module.bn.training",),
    steps=(1, 2),
    line=20,
    link="https://github.com/pytorch/pytorch/issues/52867",
)


def test_an_observed_expected_divergence_is_known_and_passes():
    verdicts = [flag_verdict(0, False, False), flag_verdict(1, False, True), flag_verdict(2, False, True)]
    found = classify(make_case(FLIP), runs(), verdicts)
    assert found.passed
    assert [(verdict.step, expectation) for verdict, expectation in found.known] == [(1, FLIP), (2, FLIP)]


def test_an_unexpected_divergence_fails_with_a_snippet_to_accept_it():
    verdicts = [flag_verdict(1, False, True), flag_verdict(2, False, True)]
    found = classify(make_case(), runs(), verdicts)
    assert not found.passed and len(found.new) == 2
    text = explain_classification("cases/c.yaml", found)
    assert text.startswith("2 divergence(s) not listed in expect:\n\nmodule.bn.training after step 1: torch-eager vs")
    assert "add to expect in cases/c.yaml:\n  - field: module.bn.training\n    step: [1, 2]\n    runners: [onnx-torchscript-ort]" in text


def test_an_expected_divergence_that_vanished_fails_and_says_how_to_update_the_case():
    verdicts = [flag_verdict(1, False, True), flag_verdict(2, False, False)]
    found = classify(make_case(FLIP), runs(), verdicts)
    assert not found.passed
    (gone,) = found.vanished
    assert gone.runner == OTHER and gone.seen_instead.startswith("now agrees: module.bn.training after step 2")
    text = explain_classification("cases/c.yaml", found)
    assert text.startswith(
        "Expected divergence no longer reproduces (cases/c.yaml:20): module.bn.training after step 1, 2 differs in onnx-torchscript-ort"
    )
    assert "link: https://github.com/pytorch/pytorch/issues/52867" in text and "remove or narrow this entry" in text


def test_an_expectation_at_any_step_needs_one_divergence_and_globs_match_fields():
    anywhere = Expectation((OTHER,), "buffers move", fields=("module.bn.running_*",))
    stepped = compare_observed(
        field="module.bn.running_var",
        step=2,
        step_label="step 2",
        reference_name="torch-eager",
        other_name=OTHER,
        reference=Observed(np.ones(2), "float32"),
        other=Observed(np.zeros(2), "float32"),
    )
    assert classify(make_case(anywhere), runs(), [stepped]).passed
    found = classify(make_case(anywhere), runs(), [])
    assert found.vanished[0].seen_instead == "onnx-torchscript-ort reported no such field"


def test_skipped_runners_leave_their_expectations_unverified_not_failed():
    found = classify(make_case(FLIP), [RunResult("torch-eager", "ok"), RunResult(OTHER, "skipped", "onnx missing")], [])
    assert found.passed and found.unverified == ((FLIP, "onnx-torchscript-ort skipped: onnx missing"),)


def test_runner_statuses_expected_or_not():
    export_fails = Expectation((OTHER,), "no dynamic batch", status="export_failed")
    assert classify(make_case(export_fails), runs("export_failed", "boom"), []).passed
    found = classify(make_case(export_fails), runs(), [])
    assert not found.passed and found.vanished[0].seen_instead == "onnx-torchscript-ort ended with status ok"
    found = classify(make_case(), runs("run_failed", "RuntimeError: no kernel"), [])
    assert not found.passed
    assert "onnx-torchscript-ort ended with status run_failed: RuntimeError: no kernel" in explain_classification("c", found)
