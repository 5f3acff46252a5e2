"""Each attribution class on constructed runs: two runners' calls, observations and a divergence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from harness.core.case import BNConfig, Case, ExportOptions, InputSpec, ModeSetting, Step
from harness.core.results import BNCall, Observed, RunResult
from harness.core.semantics import oracle
from harness.judge.attribution import attribute_all
from harness.judge.compare import compare_runs

CASE = Case(
    "c",
    "cases/c.yaml",
    "",
    "batchnorm1d",
    BNConfig(2),
    ModeSetting((("", True),)),
    InputSpec((64, 2), "float32"),
    (Step("forward", seed=0), Step("export", export=ExportOptions()), Step("forward", seed=0)),
)
X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32).astype(np.float64)
TORCH_CALL = BNCall(
    semantics="pytorch",
    input=X,
    channel_axis=1,
    uses_batch_stats=True,
    updates_running_stats=True,
    eps=1e-5,
    momentum=0.1,
    weight=np.ones(2),
    bias=np.zeros(2),
    running_mean_before=np.zeros(2),
    running_var_before=np.ones(2),
    num_batches_tracked_before=0,
)
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
    # 1.8e-4 from its oracle: beyond the two sides' rounding floors on this data (6.3e-5 each),
    # within the 4 floors a side may be off by and still follow its spec.
    other = run("keras-jax", dataclasses.replace(shifted, semantics="keras", momentum=0.9, running_var_reported="unbiased"), output=1.8e-4)
    (verdict,) = judged(reference, other)
    assert verdict.field == "output" and verdict.attribution == "precision"
    assert verdict.attribution_text.startswith("both follow their specs, which agree here:")


def test_a_gap_within_both_sides_rounding_floors_agrees_and_says_with_which_numbers():
    # Ill-conditioned data (a large offset) amplifies rounding: 3e-5 is beyond float32's atol, and
    # within what the formula costs in float32 on this data (defect 11).
    shifted = dataclasses.replace(TORCH_CALL, input=(X + 300.0).astype(np.float32).astype(np.float64))
    reference = run("torch-eager", shifted)
    other = run("keras-jax", dataclasses.replace(shifted, semantics="keras", momentum=0.9, running_var_reported="unbiased"), output=3e-5)
    verdicts = {v.field: v for v in attribute_all(CASE, reference, other, list(compare_runs(CASE, reference, other)))}
    output = verdicts["output"]
    assert output.close and output.rounding_floor == pytest.approx(1.26e-4, rel=0.05)
    assert "agree within the float32 rounding floor of this data: gap 3e-05, floor 0.00013" in output.text
    # Beyond the floors it still diverges; a side beyond its own spec still deviates.
    beyond = run("keras-jax", dataclasses.replace(shifted, semantics="keras", momentum=0.9, running_var_reported="unbiased"), output=1e-3)
    (verdict,) = judged(reference, beyond)
    assert verdict.attribution == "implementation deviates"


def test_state_changed_by_an_export_and_what_follows_from_it():
    reference = RunResult(
        "torch-eager",
        "ok",
        observations={(1, "module.bn.training"): Observed(False), (2, "module.output"): Observed(np.zeros(2), "float32")},
    )
    other = RunResult(
        "onnx-torchscript-ort",
        "ok",
        observations={(1, "module.bn.training"): Observed(True), (2, "module.output"): Observed(np.ones(2), "float32")},
    )
    flipped, later = judged(reference, other)
    for verdict in (flipped, later):
        assert verdict.attribution == "state changed by a step"
        assert verdict.attribution_text.startswith(
            "step 1 (export(training=eval)) changed the user's torch module in onnx-torchscript-ort (first seen in module.bn.training)"
        )
    assert "temporarily set the training mode" in flipped.attribution_text


def test_a_field_no_oracle_reaches_follows_from_the_batchnorm_divergence_before_it():
    conv_case = dataclasses.replace(CASE, model="forum_net")
    reference = RunResult(
        "torch-eager", "ok", observations={(1, "bn.uses_batch_stats"): Observed(True), (2, "output"): Observed(np.zeros(3), "float32")}
    )
    other = RunResult(
        "onnx-dynamo-ort",
        "ok",
        observations={(1, "bn.uses_batch_stats"): Observed(False), (2, "output"): Observed(np.ones(3), "float32")},
        details={"exporter": {"dynamo": True, "executor": "ort"}},
    )
    mode, output = [v for v in attribute_all(conv_case, reference, other, list(compare_runs(conv_case, reference, other))) if not v]
    assert mode.attribution == output.attribution == "state changed by a step"
    assert output.attribution_text.startswith("follows from bn.uses_batch_stats after step 1 (export(training=eval)):")


def test_divergences_without_an_oracle_are_unattributed_not_guessed():
    conv_case = dataclasses.replace(CASE, model="forum_net")
    reference = RunResult("torch-eager", "ok", observations={(0, "output"): Observed(np.zeros(3), "float32")})
    other = RunResult("onnx-dynamo-ort", "ok", observations={(0, "output"): Observed(np.ones(3), "float32")})
    (verdict,) = [v for v in attribute_all(conv_case, reference, other, list(compare_runs(conv_case, reference, other))) if not v]
    assert verdict.attribution == "unattributed" and "no oracle for output" in verdict.attribution_text


def observed(step: int, **fields) -> dict:
    return {(step, name): Observed(np.asarray(values, dtype=np.float64), dtype) for name, (values, dtype) in fields.items()}


def test_batch_statistics_outputs_are_not_judged_by_running_state_they_do_not_read():
    # After a training export the graph's running statistics differ from the module's; both
    # normalise with the batch's statistics, so only the input matters (defect 3).
    shifted = dataclasses.replace(TORCH_CALL, input=(X + 300.0).astype(np.float32).astype(np.float64))
    exported = dataclasses.replace(
        shifted,
        semantics="onnx",
        momentum=0.9,
        running_mean_before=np.full(2, 5.0),
        running_var_before=np.full(2, 7.0),
        num_batches_tracked_before=None,
    )
    reference = RunResult(
        "torch-eager", "ok", observations=observed(0, output=(oracle(shifted).output, "float32")), bn_calls={(0, ""): shifted}
    )
    other = RunResult(
        "onnx-torchscript-ort",
        "ok",
        observations=observed(0, output=(oracle(exported).output + 1.8e-4, "float32")),
        bn_calls={(0, ""): exported},
    )
    (verdict,) = judged(reference, other)
    assert verdict.attribution == "precision", verdict.attribution_text


def keras_storing_biased_variance(running_var: np.ndarray, **keras_parameters) -> tuple[RunResult, RunResult]:
    """An eval forward after training: torch normalises with its running_var; Keras with the biased
    variance it stores (3/4 of it for 4 values per channel), reported re-expressed in PyTorch's."""
    eval_torch = dataclasses.replace(TORCH_CALL, uses_batch_stats=False, updates_running_stats=False, running_var_before=running_var)
    keras = dataclasses.replace(
        eval_torch,
        semantics="keras",
        running_var_reported="unbiased",
        stored_var_before=running_var * 3 / 4,
        num_batches_tracked_before=None,
        **{"momentum": 0.9, **keras_parameters},
    )
    reference = RunResult(
        "torch-eager", "ok", observations=observed(0, output=(oracle(eval_torch).output, "float32")), bn_calls={(0, ""): eval_torch}
    )
    other = RunResult(
        "keras-tensorflow", "ok", observations=observed(0, output=(oracle(keras).output, "float32")), bn_calls={(0, ""): keras}
    )
    return reference, other


def test_a_variance_stored_in_another_convention_than_reported_is_a_convention_not_precision():
    # Keras normalises with the biased moving variance it stores; the harness reports it
    # re-expressed in PyTorch's convention, which agrees with torch (defect 4).
    reference, other = keras_storing_biased_variance(np.array([1.2, 0.8]))
    (verdict,) = judged(reference, other)
    assert verdict.attribution == "conventions differ", verdict.attribution_text
    assert "normalises with the variance it stores" in verdict.attribution_text
    assert "normalising_variance by up to 0.3" in verdict.attribution_text


def test_states_parted_by_an_earlier_step_name_that_cause_and_the_shares_of_the_gap():
    # A training export stepped the graph's statistics; a later update in onnxruntime differs
    # by that and by the momentum convention (defect 5).
    stepped = dataclasses.replace(ONNX_CALL, running_var_before=np.array([1.5, 1.5]))
    reference = RunResult(
        "torch-eager",
        "ok",
        observations={
            **observed(1, running_var=(np.ones(2), "float32")),
            **observed(2, running_var=(oracle(TORCH_CALL).running_var, "float32")),
        },
        bn_calls={(2, ""): TORCH_CALL},
    )
    other = RunResult(
        "onnx-torchscript-ort",
        "ok",
        observations={
            **observed(1, running_var=(np.full(2, 1.5), "float32")),
            **observed(2, running_var=(oracle(stepped).running_var, "float32")),
        },
        bn_calls={(2, ""): stepped},
        details={"exporter": {"dynamo": False, "executor": "ort"}},
    )
    exported, later = judged(reference, other)
    assert exported.attribution == later.attribution == "state changed by a step"
    assert later.attribution_text.startswith("their states before this step differ (running_var by up to 0.5); of the gap")
    assert "the state before the step explains" in later.attribution_text and "the conventions" in later.attribution_text
    assert "follows from running_var after step 1 (export(training=eval))" in later.attribution_text


def test_a_dynamo_export_is_blamed_with_its_own_mechanism():
    reference = RunResult("torch-eager", "ok", observations={(1, "uses_batch_stats"): Observed(True)})
    other = RunResult(
        "onnx-dynamo-ort",
        "ok",
        observations={(1, "uses_batch_stats"): Observed(False)},
        details={"exporter": {"dynamo": True, "executor": "ort"}},
    )
    (verdict,) = judged(reference, other)
    assert verdict.attribution == "state changed by a step"
    assert "'training = False'" in verdict.attribution_text and "select_model_mode_for_export" not in verdict.attribution_text


def test_an_ordinary_forward_is_not_a_step_to_blame_for_the_modules_own_output():
    # torch-compile's module output after a forward: judged by the oracle as the output is (defect 6).
    reference = RunResult(
        "torch-eager",
        "ok",
        observations=observed(0, **{"module.output": (oracle(TORCH_CALL).output, "float32")}),
        bn_calls={(0, ""): TORCH_CALL},
    )
    other = RunResult(
        "torch-compile",
        "ok",
        observations=observed(0, **{"module.output": (oracle(TORCH_CALL).output + 0.01, "float32")}),
        bn_calls={(0, ""): TORCH_CALL},
    )
    (verdict,) = judged(reference, other)
    assert verdict.attribution == "implementation deviates", verdict.attribution_text
    assert verdict.attribution_text.startswith("torch-compile vs PyTorch BatchNorm{1,2,3}d: error 0.01")


def test_attribution_measures_with_the_comparisons_tolerance_and_each_sides_dtype():
    # A float16 side against a float32 reference: the comparison uses float16's tolerance, and so
    # must the side check, with float16's rounding floor (defect 8).
    half = dataclasses.replace(TORCH_CALL, input=X.astype(np.float16).astype(np.float64))
    output = oracle(half).output
    reference = RunResult(
        "torch-eager", "ok", observations=observed(0, output=(output.astype(np.float32), "float32")), bn_calls={(0, ""): half}
    )
    other = RunResult(
        "torch-compile",
        "ok",
        observations=observed(0, output=(output.astype(np.float16).astype(np.float64) + 3e-3, "float16")),
        bn_calls={(0, ""): half},
    )
    verdict = next(v for v in attribute_all(CASE, reference, other, list(compare_runs(CASE, reference, other))) if v.field == "output")
    assert verdict.rtol == 1e-3 and verdict.max_abs_diff > 1e-3 + 1e-5, "beyond float16's tolerance"
    assert verdict.close and "agree within the float16/float32 -> float16 rounding floor" in verdict.text, verdict.text


def test_an_attribution_that_contradicts_its_own_measurements_is_a_harness_error():
    from harness.judge.attribution import Attribution, SideCheck, invariant_violation

    within = SideCheck("torch-eager", "pytorch", error=1e-7, allowed=1e-5, floor=1e-7)
    beyond = SideCheck("onnx-torchscript-ort", "onnx", error=0.5, allowed=1e-5, floor=1e-7)
    verdict = dataclasses.replace(
        judged(run("torch-eager", TORCH_CALL), run("onnx-torchscript-ort", ONNX_CALL))[0], max_abs_diff=0.2, rtol=1.3e-6, atol=1e-5
    )
    deviates = lambda side: Attribution("implementation deviates", side.describe(), (within, beyond))  # noqa: E731
    assert invariant_violation(verdict, deviates(beyond)) is None
    assert "names a side within its own spec" in invariant_violation(verdict, deviates(within))
    assert "beyond both sides' bounds" in invariant_violation(verdict, Attribution("precision", "p", (within, within)))
    conventions = Attribution("conventions differ", "c", (within, within), predicted_gap=0.2)
    assert invariant_violation(verdict, conventions) is None
    assert "not explained by the crossed oracle" in invariant_violation(verdict, dataclasses.replace(conventions, predicted_gap=0.1))
    assert invariant_violation(verdict, Attribution("precision", "p", (within, within), derived=True)) is None, (
        "an attribution taken from an earlier divergence measured another verdict"
    )


def test_a_broken_invariant_fails_the_case_as_an_error_and_keeps_what_was_computed(monkeypatch):
    from harness.judge import engine

    reference, other = run("torch-eager", TORCH_CALL), run("onnx-torchscript-ort", ONNX_CALL)
    real = engine.attribute_all
    monkeypatch.setattr(
        engine, "attribute_all", lambda *args: [dataclasses.replace(v, invariant_violation="planted") if not v else v for v in real(*args)]
    )
    result = engine.judge(CASE, (reference, other))
    assert result.outcome == "error" and "harness invariant broken" in result.error and "planted" in result.error
    assert result.verdicts and result.classification is not None


def test_a_model_output_no_batchnorm_oracle_reaches_is_judged_against_the_model_in_float64():
    conv_case = dataclasses.replace(CASE, model="forum_net")
    exact = np.array([1000.0, -1000.0, 500.0])  # outputs of a BN scale of 1e3: an ulp of float32 is 6e-5 here
    float32 = exact + 9e-4  # the reference's own rounding of this model (15 ulps): the floor

    def judged_against(offset):
        reference = RunResult("torch-eager", "ok", observations={(0, "output"): Observed(float32, "float32")}, model_oracle={0: exact})
        other = RunResult("onnx-dynamo-ort", "ok", observations={(0, "output"): Observed(exact + offset, "float32")})
        (verdict,) = attribute_all(conv_case, reference, other, list(compare_runs(conv_case, reference, other)))
        return verdict

    far = judged_against(0.5)
    assert far.attribution == "implementation deviates"
    assert far.attribution_text.startswith("onnx-dynamo-ort vs the case's model computed in float64: error 0.5")
    near = judged_against(-9e-4)  # beyond the tolerance, within both sides' floors of this model on this data
    assert near.close and "agree within the float32 rounding floor" in near.text, near.text


def test_the_reference_is_judged_by_the_float64_model_too():
    # Its own error is the floor only while it is rounding: a reference 0.5 off is no floor for anyone.
    conv_case = dataclasses.replace(CASE, model="forum_net")
    exact = np.array([0.5, 1.25, 2.0])
    reference = RunResult("torch-eager", "ok", observations={(0, "output"): Observed(exact + 0.5, "float32")}, model_oracle={0: exact})
    other = RunResult("onnx-dynamo-ort", "ok", observations={(0, "output"): Observed(exact, "float32")})
    (verdict,) = attribute_all(conv_case, reference, other, list(compare_runs(conv_case, reference, other)))
    assert not verdict.close and verdict.attribution == "implementation deviates"
    assert verdict.attribution_text.startswith("torch-eager vs the case's model computed in float64: error 0.5")


def test_an_agreement_within_the_floors_is_no_cause_of_what_follows():
    # bn.output agrees within the floors; the model's output, 0.5 off, is the other side's own.
    conv_case = dataclasses.replace(CASE, model="forum_net")
    shifted = dataclasses.replace(TORCH_CALL, input=(X + 300.0).astype(np.float32).astype(np.float64))
    bn_output = oracle(shifted).output
    exact = np.array([0.5, 1.25, 2.0])
    reference = RunResult(
        "torch-eager",
        "ok",
        bn_calls={(0, "bn"): shifted},
        model_oracle={0: exact},
        observations={**observed(0, **{"bn.output": (bn_output, "float32")}), (0, "output"): Observed(exact, "float32")},
    )
    other = RunResult(
        "onnx-dynamo-ort",
        "ok",
        bn_calls={(0, "bn"): dataclasses.replace(shifted, semantics="onnx", momentum=0.9)},
        observations={**observed(0, **{"bn.output": (bn_output + 3e-5, "float32")}), (0, "output"): Observed(exact + 0.5, "float32")},
    )
    verdicts = {v.field: v for v in attribute_all(conv_case, reference, other, list(compare_runs(conv_case, reference, other)))}
    assert verdicts["bn.output"].close
    assert verdicts["output"].attribution == "implementation deviates", verdicts["output"].attribution_text


def test_torch_runners_record_the_model_in_float64_where_layers_besides_batchnorm_shape_the_output(tmp_path):
    torch = pytest.importorskip("torch")
    from harness.core.inputs import make_batch
    from harness.load.schema import load_case
    from harness.run.runners import create_runner
    from harness.run.runners.torch_models import build_model, to_tensor
    from tests.tiny_cases import EVAL_BN2D, FORUM_FLIP, write_case

    case = load_case(write_case(tmp_path, "forum", FORUM_FLIP))
    result = create_runner("torch-eager").run(case)
    assert sorted(result.model_oracle) == [0, 2]
    model = build_model(case).double()
    with torch.no_grad():
        expected = model(to_tensor(make_batch(case.input, case.input.seed), case.input.dtype).double()).numpy()
    np.testing.assert_array_equal(result.model_oracle[0], expected)
    assert result.observations[(0, "module.bn.num_batches_tracked")].value == 0, "the float64 copy's forward changed nothing"
    bare = create_runner("torch-eager").run(load_case(write_case(tmp_path, "bare", EVAL_BN2D)))
    assert bare.model_oracle == {}, "a bare BatchNorm's output has its BatchNorm oracle"


def test_parted_state_follows_the_divergence_that_parted_it_not_an_unrelated_earlier_one():
    # An output divergence at step 0 (the running statistics agree) does not explain a state that
    # parts because Keras normalises with the variance it stores.
    train_keras = dataclasses.replace(ONNX_CALL, semantics="keras", running_var_reported="unbiased")
    eval_torch = dataclasses.replace(
        TORCH_CALL, uses_batch_stats=False, updates_running_stats=False, running_var_before=np.array([1.2, 0.8])
    )
    eval_keras = dataclasses.replace(
        eval_torch,
        semantics="keras",
        momentum=0.9,
        running_var_reported="unbiased",
        stored_var_before=np.array([1.2, 0.8]) * 3 / 4,
        num_batches_tracked_before=None,
    )
    two_steps = dataclasses.replace(CASE, steps=(Step("train_step", seed=0), Step("forward", seed=0)))
    reference = RunResult(
        "torch-eager",
        "ok",
        observations={
            **observed(0, output=(oracle(TORCH_CALL).output, "float32")),
            **observed(1, output=(oracle(eval_torch).output, "float32")),
        },
        bn_calls={(0, ""): TORCH_CALL, (1, ""): eval_torch},
    )
    other = RunResult(
        "keras-tensorflow",
        "ok",
        observations={
            **observed(0, output=(oracle(train_keras).output + 0.01, "float32")),
            **observed(1, output=(oracle(eval_keras).output, "float32")),
        },
        bn_calls={(0, ""): train_keras, (1, ""): eval_keras},
    )
    first, second = [v for v in attribute_all(two_steps, reference, other, list(compare_runs(two_steps, reference, other))) if not v]
    assert first.attribution == "implementation deviates"
    assert second.attribution == "conventions differ" and "normalises with the variance it stores" in second.attribution_text


def test_the_stored_convention_predicts_the_whole_gap_eps_included():
    # Keras with its own eps normalising with its stored biased variance: the prediction is each
    # side's oracle on its own state (it left out the eps share and broke the invariant).
    reference, other = keras_storing_biased_variance(np.array([0.012, 0.008]), momentum=0.99, eps=1e-3)
    (verdict,) = judged(reference, other)
    assert verdict.attribution == "conventions differ" and verdict.invariant_violation is None


def test_running_statistics_the_reference_does_not_keep_are_a_convention_not_a_crash():
    no_stats = dataclasses.replace(
        TORCH_CALL, uses_batch_stats=True, updates_running_stats=False, running_mean_before=None, running_var_before=None
    )
    keras_eval = dataclasses.replace(
        TORCH_CALL, semantics="keras", momentum=0.99, uses_batch_stats=False, updates_running_stats=False, num_batches_tracked_before=None
    )
    reference = RunResult(
        "torch-eager", "ok", observations=observed(0, output=(oracle(no_stats).output, "float32")), bn_calls={(0, ""): no_stats}
    )
    other = RunResult(
        "keras-numpy", "ok", observations=observed(0, output=(oracle(keras_eval).output, "float32")), bn_calls={(0, ""): keras_eval}
    )
    (verdict,) = judged(reference, other)
    assert verdict.attribution == "conventions differ" and "keeps no running statistics" in verdict.attribution_text


def test_an_input_parted_by_an_upstream_batchnorm_follows_from_it_at_the_same_step():
    nested = dataclasses.replace(CASE, model="nested_two_bn", steps=(Step("forward", seed=0),))
    stem_torch, stem_onnx = (
        TORCH_CALL,
        dataclasses.replace(TORCH_CALL, semantics="onnx", momentum=0.9, eps=1e-1, num_batches_tracked_before=None),
    )
    head = dict(uses_batch_stats=False, updates_running_stats=False)
    head_torch = dataclasses.replace(TORCH_CALL, input=oracle(stem_torch).output * 2 + 1, **head)
    head_onnx = dataclasses.replace(stem_onnx, eps=1e-5, input=oracle(stem_onnx).output * 2 + 1, **head)

    def run_of(name, stem, head_call):
        observations = {
            (0, f"{path}.output"): Observed(np.asarray(oracle(call).output, np.float32).astype(np.float64), "float32")
            for path, call in (("stem.bn", stem), ("head.block.bn", head_call))
        }
        return RunResult(name, "ok", observations=observations, bn_calls={(0, "stem.bn"): stem, (0, "head.block.bn"): head_call})

    reference, other = run_of("torch-eager", stem_torch, head_torch), run_of("onnx-torchscript-ort", stem_onnx, head_onnx)
    verdicts = {v.field: v for v in attribute_all(nested, reference, other, list(compare_runs(nested, reference, other)))}
    assert verdicts["stem.bn.output"].attribution == "conventions differ"
    head_verdict = verdicts["head.block.bn.output"]
    assert head_verdict.attribution == "conventions differ"
    assert "follows from stem.bn.output after step 0 (forward)" in head_verdict.attribution_text


def test_the_cumulative_average_reads_num_batches_tracked():
    # momentum=None weighs the batch by 1 / (num_batches_tracked + 1): differing counters part the state.
    cumulative = dataclasses.replace(TORCH_CALL, momentum=None, num_batches_tracked_before=0)
    later = dataclasses.replace(cumulative, num_batches_tracked_before=5)
    reference = RunResult(
        "torch-eager",
        "ok",
        observations=observed(0, running_mean=(oracle(cumulative).running_mean, "float32")),
        bn_calls={(0, ""): cumulative},
    )
    other = RunResult(
        "torch-compile", "ok", observations=observed(0, running_mean=(oracle(later).running_mean, "float32")), bn_calls={(0, ""): later}
    )
    (verdict,) = judged(reference, other)
    assert "num_batches_tracked by up to 5" in verdict.attribution_text and verdict.invariant_violation is None


def test_an_export_step_is_not_blamed_on_a_runner_that_makes_no_export():
    export_first = dataclasses.replace(CASE, steps=(Step("export", export=ExportOptions()), Step("forward", seed=0)))
    reference = RunResult("torch-eager", "ok", observations=observed(0, running_var=(np.ones(2), "float32")))
    keras = RunResult("keras-tensorflow", "ok", observations=observed(0, running_var=(np.full(2, 2.0), "float32")))
    (verdict,) = [v for v in attribute_all(export_first, reference, keras, list(compare_runs(export_first, reference, keras))) if not v]
    assert verdict.attribution != "state changed by a step"
    assert "keras-tensorflow makes no export" in verdict.attribution_text


def test_state_set_on_the_module_after_an_export_is_that_step_not_the_runtime():
    """A known cause: the module's statistics set after the export; the graph keeps the exported
    ones. Against the float64 model (the module's new state) the runtime would read as deviating."""
    from harness.core.case import StateAssignment

    conv_case = dataclasses.replace(
        CASE,
        model="forum_net",
        steps=(
            Step("export", export=ExportOptions()),
            Step("set_state", state=(StateAssignment("bn", "running_mean", (0.0, 0.0)),)),
            Step("forward", seed=0),
        ),
    )
    exact = np.array([1.0, -1.0, 0.5])

    def judged_after(runner_details, set_to=(0.0, 0.0)):
        reference = RunResult("torch-eager", "ok", observations={(2, "output"): Observed(exact, "float32")}, model_oracle={2: exact})
        module_mean = {  # the user's module in the ONNX runner: as exported, then as the step set it
            (step, "module.bn.running_mean"): Observed(np.array(values), "float32") for step, values in ((0, (0.5, 0.5)), (1, set_to))
        }
        other = RunResult(
            "onnx-torchscript-ort",
            "ok",
            observations={(2, "output"): Observed(exact + 0.5, "float32"), **module_mean},
            details=runner_details,
        )
        (verdict,) = attribute_all(conv_case, reference, other, list(compare_runs(conv_case, reference, other)))
        return verdict

    exported = judged_after({"exporter": {"dynamo": False}})
    assert exported.attribution == "state changed by a step"
    assert exported.attribution_text.startswith(
        "step 1 (set_state(bn.running_mean)) changed the user's torch module after step 0 (export(training=eval)); "
        "onnx-torchscript-ort runs the exported graph"
    )
    no_export = judged_after({})  # a runner that deployed nothing follows the module: its gap is its own
    assert no_export.attribution == "implementation deviates"
    unchanged = judged_after({"exporter": {"dynamo": False}}, set_to=(0.5, 0.5))  # the step set what was there
    assert unchanged.attribution == "implementation deviates", "a step that changed nothing is no cause"


def test_inputs_that_differ_by_the_upstream_layers_rounding_at_a_large_magnitude_agree_within_the_floor():
    """A convolution summing in another order at outputs of 3e5 hands the BatchNorm inputs that
    differ by a few units of float32 roundoff of that magnitude, near-zero elements included, which
    the element-wise tolerance fails: that is rounding, not a parted state to leave unattributed."""
    rng = np.random.default_rng(3)
    large = (rng.normal(size=(64, 2)) * 3e5).astype(np.float32).astype(np.float64)
    large[0, 0] = 0.01  # a sum of large terms that cancels
    rounded = large + rng.choice([-1.0, 1.0], size=large.shape) * np.float32(3e5) * 2 * np.finfo(np.float32).eps
    inference = dict(uses_batch_stats=False, updates_running_stats=False, running_var_before=np.ones(2))
    torch_call = dataclasses.replace(TORCH_CALL, input=large, **inference)
    onnx_call = dataclasses.replace(ONNX_CALL, input=rounded, **inference)
    reference, other = run("torch-eager", torch_call), run("onnx-torchscript-ort", onnx_call)
    (verdict,) = [v for v in attribute_all(CASE, reference, other, list(compare_runs(CASE, reference, other))) if v.field == "output"]
    assert verdict, verdict.text
    assert "agree within the float32 rounding floor of this data" in verdict.text
    bound = 16 * np.finfo(np.float32).eps * np.abs(large).max()  # 16 units of roundoff of the greatest input
    far = dataclasses.replace(onnx_call, input=large + 5.0)
    assert 5.0 > bound
    (verdict,) = [v for v in judged(reference, run("onnx-torchscript-ort", far)) if v.field == "output"]
    assert verdict.attribution == "unattributed" and "their states before this step differ (input by up to 5)" in verdict.attribution_text
