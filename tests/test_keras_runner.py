"""The Keras runners on the real TensorFlow backend, checked against formulas computed here."""

from __future__ import annotations

import numpy as np
import pytest

from harness.core.inputs import make_batch
from harness.load.schema import load_case
from harness.run.execution import default_executor
from harness.run.runners import create_runner
from harness.run.runners import keras as keras_runners
from tests.tiny_cases import EVAL_BN2D, FORUM_FLIP, write_case

pytest.importorskip("torch")
pytest.importorskip("keras")
pytest.importorskip("tensorflow")

pytestmark = pytest.mark.slow  # worker pools or pytest sessions in subprocesses

TRAIN_BN2D = EVAL_BN2D.replace("mode: eval", "mode: train").replace("  - export\n  - forward\n", "")


def run(tmp_path, text: str, runner: str = "keras-tensorflow"):
    """The runner on the case, in its backend's worker process."""
    case = load_case(write_case(tmp_path, "case", text))
    return case, default_executor().run(case, [runner])[0]


def value(result, step: int, field: str):
    return result.observations[(step, field)].value


def test_eval_output_is_the_documented_formula_and_the_mapping_is_recorded(tmp_path):
    case, result = run(tmp_path, EVAL_BN2D)
    assert result.status == "ok", result.reason
    x = make_batch(case.input, case.input.seed).astype(np.float32).astype(np.float64)
    mean, var = np.array([0.5, -0.5]).reshape(1, 2, 1, 1), np.array([2.0, 0.5]).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(value(result, 0, "output"), (x - mean) / np.sqrt(var + 1e-5), rtol=1.3e-6, atol=1e-5)
    mapping = {entry["name"]: entry["value"] for entry in result.details["mapping"]}
    assert mapping["momentum"] == pytest.approx(0.9) and mapping["axis"] == 1
    assert result.notes and result.notes[0].startswith("Keras parameters not mapped from PyTorch: running_var=")


@pytest.mark.parametrize("convention, ddof", [("as_stored", 0), ("unbiased", 1)])
def test_running_var_is_read_back_as_stored_or_in_torch_convention(tmp_path, convention, ddof):
    case, result = run(tmp_path, TRAIN_BN2D + f"keras: {{running_var: {convention}}}\n")
    x = make_batch(case.input, case.input.seed).astype(np.float32).astype(np.float64)
    expected = 0.9 * np.array([2.0, 0.5]) + 0.1 * x.var(axis=(0, 2, 3), ddof=ddof)
    np.testing.assert_allclose(value(result, 0, "running_var"), expected, rtol=1e-5)


def test_a_convolutional_port_matches_torch_eager(tmp_path):
    _, eager = run(tmp_path, FORUM_FLIP, "torch-eager")
    _, ported = run(tmp_path, FORUM_FLIP)
    assert ported.status == "ok", ported.reason
    np.testing.assert_allclose(value(ported, 0, "output"), value(eager, 0, "output"), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value(ported, 0, "bn.output"), value(eager, 0, "bn.output"), rtol=1e-5, atol=1e-5)
    assert ported.details["batchnorm_weights_copied"] == {"bn": True}


def test_a_missing_backend_skips_with_its_install_hint(tmp_path, monkeypatch):
    real_find_spec = keras_runners.importlib.util.find_spec
    monkeypatch.setattr(keras_runners.importlib.util, "find_spec", lambda name: None if name == "jax" else real_find_spec(name))
    case = load_case(write_case(tmp_path, "case", EVAL_BN2D))
    # In this process: the check comes before anything imports keras.
    result = create_runner("keras-jax").run(case)
    assert (result.status, result.reason) == ("skipped", "jax is not installed; install it with: pip install jax==0.10.2")
    result = create_runner("keras-numpy").run(case)
    assert result.reason == "jax is not installed (Keras's numpy backend imports it); install it with: pip install jax==0.10.2"


def test_a_case_keras_cannot_express_skips_with_the_reason(tmp_path):
    _, result = run(tmp_path, EVAL_BN2D.replace("num_features: 2", "num_features: 2\n  momentum: null"))
    assert result.status == "skipped" and "momentum=None (a cumulative moving average) has no Keras counterpart" in result.reason


def test_a_backend_that_cannot_import_keras_is_skipped_with_the_missing_package(tmp_path):
    from harness.core.keras_mapping import keras_mapping
    from harness.run.runners.keras_worker import run_case_in_worker

    case = load_case(write_case(tmp_path, "case", EVAL_BN2D))
    import sys

    saved = {name: module for name, module in sys.modules.items() if name == "keras" or name.startswith("keras.")}
    try:
        for name in saved:
            del sys.modules[name]
        sys.modules["keras"] = None  # `import keras` raises ImportError(name="keras")
        result = run_case_in_worker("keras-numpy", "numpy", case, keras_mapping(case), {})
    finally:
        sys.modules.pop("keras", None)
        sys.modules.update(saved)
    assert result.status == "skipped"
    assert result.reason.endswith("; install it with: pip install keras")


def test_the_port_computes_on_the_data_torch_gets_when_the_input_dtype_differs(tmp_path):
    # A float32 BatchNorm fed a bfloat16 batch: Keras must get the bfloat16-rounded values, as
    # torch does, not the float32 ones (issue 15, defect 7).
    text = EVAL_BN2D.replace("  shape: [2, 2, 3, 3]\n", "  shape: [2, 2, 3, 3]\n  dtype: bfloat16\n")
    case, result = run(tmp_path, text)
    assert result.status == "ok", result.reason
    assert case.input.dtype == "bfloat16" and case.bn.dtype == "float32"
    import ml_dtypes

    x = make_batch(case.input, case.input.seed).astype(ml_dtypes.bfloat16).astype(np.float64)
    np.testing.assert_array_equal(result.bn_calls[(0, "")].input, x)
    assert result.observations[(0, "output")].dtype == "float32", "Keras returns its layer's dtype"


# ---- Model.fit (keras.train_with: fit) ------------------------------------------------------

FIT_64 = TRAIN_BN2D.replace("shape: [2, 2, 3, 3]", "shape: [64, 2, 3, 3]").replace("  - forward\n", "  - train_step\n")


def test_a_fit_at_its_default_batch_size_updates_once_per_mini_batch(tmp_path):
    case, result = run(tmp_path, FIT_64 + "keras: {train_with: fit}\n")
    assert result.status == "ok", result.reason
    x = make_batch(case.input, case.steps[0].seed).astype(np.float32).astype(np.float64)
    first, second = x[:32].mean(axis=(0, 2, 3)), x[32:].mean(axis=(0, 2, 3))
    expected = 0.9 * (0.9 * np.array([0.5, -0.5]) + 0.1 * first) + 0.1 * second
    np.testing.assert_allclose(value(result, 0, "running_mean"), expected, rtol=1e-5, atol=1e-7)
    call = result.bn_calls[(0, "")]
    assert call.mini_batch == 32 and call.uses_batch_stats
    np.testing.assert_array_equal(call.input, x, err_msg="every mini-batch's input, in order")
    assert (0, "output") not in result.observations, "a fit returns a loss, not the model's output"


def test_a_fit_in_one_mini_batch_moves_the_statistics_as_a_training_call_does(tmp_path):
    _, fitted = run(tmp_path, FIT_64 + "keras: {train_with: fit, fit_batch_size: 64, running_var: unbiased}\n")
    _, called = run(tmp_path, FIT_64 + "keras: {running_var: unbiased}\n")
    for field in ("running_mean", "running_var"):
        np.testing.assert_allclose(value(fitted, 0, field), value(called, 0, field), rtol=1e-6, atol=1e-7)


def test_keras_numpy_cannot_fit_and_is_skipped_with_the_reason(tmp_path, monkeypatch):
    # Said first, installed or not: no install makes the numpy backend fit (jax hidden here).
    real_find_spec = keras_runners.importlib.util.find_spec
    monkeypatch.setattr(keras_runners.importlib.util, "find_spec", lambda name: None if name == "jax" else real_find_spec(name))
    case = load_case(write_case(tmp_path, "case", FIT_64 + "keras: {train_with: fit}\n"))
    result = create_runner("keras-numpy").run(case)
    assert result.status == "skipped"
    assert result.reason == "Keras's numpy backend cannot train: its Model.fit raises NotImplementedError (keras.train_with: fit)"


def test_a_fit_that_takes_other_mini_batches_than_it_records_is_named_deviating(tmp_path, monkeypatch):
    """Known cause: the fit runs in mini-batches of 16 while its record says 32. The judgement must
    call that side's statistics an implementation deviation; the faithful fit's, a convention."""
    import keras

    from harness.core.keras_mapping import keras_mapping
    from harness.judge.engine import judge
    from harness.run.runners.keras_port import KerasPort
    from harness.run.runners.keras_worker import run_case_in_worker
    from harness.run.runners.torch_eager import TorchEagerRunner

    backend = keras.backend.backend()
    if backend == "numpy":
        pytest.skip("this process's Keras runs on the numpy backend, which cannot fit")
    case = load_case(write_case(tmp_path, "case", FIT_64 + "keras: {train_with: fit}\n"))
    weights = keras_runners.build_torch_weights(case)
    eager = TorchEagerRunner().run(case)

    def attributions(result) -> set:
        judged = judge(case, (eager, result))
        return {(verdict.field, verdict.attribution) for verdict in judged.verdicts if not verdict}

    faithful = run_case_in_worker(f"keras-{backend}", backend, case, keras_mapping(case), weights)
    assert attributions(faithful) == {("running_mean", "conventions differ"), ("running_var", "conventions differ")}

    real_fit_step = KerasPort.fit_step

    def fit_in_halves(self, batch, batch_size):
        real_fit_step(self, batch, batch_size // 2)
        self.calls = {path: {**call, "mini_batch": batch_size} for path, call in self.calls.items()}

    monkeypatch.setattr(KerasPort, "fit_step", fit_in_halves)
    deviating = run_case_in_worker(f"keras-{backend}", backend, case, keras_mapping(case), weights)
    assert attributions(deviating) == {("running_mean", "implementation deviates"), ("running_var", "implementation deviates")}


def test_a_mode_set_between_two_fits_reaches_the_second_fit(tmp_path):
    """Keras compiles a fit's train function once and keeps it; the BatchNorms' training= flags are
    traced into it, so a set_mode must give the next fit a new one. In eval the fit moves nothing,
    as torch's train step in eval does; back in train it moves the statistics again."""
    steps = "  - train_step\n  - set_mode: eval\n  - train_step\n  - set_mode: train\n  - train_step\n"
    _, result = run(tmp_path, FIT_64.replace("  - train_step\n", steps) + "keras: {train_with: fit}\n")
    assert result.status == "ok", result.reason
    np.testing.assert_array_equal(value(result, 2, "running_mean"), value(result, 0, "running_mean"))
    assert not result.bn_calls[(2, "")].uses_batch_stats
    assert np.abs(value(result, 4, "running_mean") - value(result, 2, "running_mean")).max() > 1e-3


def test_a_fit_hands_training_true_to_the_model_and_the_record_says_so(tmp_path):
    """training_argument: model in an eval-mode case: Model.fit calls the model with training=True,
    so its BatchNorm trains, and the replayed call the oracle gets must say so and predict it."""
    from harness.core.semantics import oracle

    text = FIT_64.replace("mode: train", "mode: eval") + "keras: {train_with: fit, training_argument: model}\n"
    _, result = run(tmp_path, text)
    assert result.status == "ok", result.reason
    call = result.bn_calls[(0, "")]
    assert call.uses_batch_stats and call.updates_running_stats
    np.testing.assert_allclose(value(result, 0, "running_mean"), oracle(call).running_mean, rtol=1e-5, atol=1e-7)
