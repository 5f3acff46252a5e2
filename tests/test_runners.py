"""Each runner on a tiny model, with the real frameworks underneath."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from harness.core.inputs import make_batch
from harness.load.schema import load_case
from harness.run.runners import create_runner
from tests.tiny_cases import EVAL_BN2D, FORUM_FLIP, write_case

pytest.importorskip("torch")

TRAIN_BN2D = EVAL_BN2D.replace("mode: eval", "mode: train").replace("  - export\n", "  - export: {training: training}\n")


def run(tmp_path, runner: str, text: str):
    case = load_case(write_case(tmp_path, "case", text))
    return case, create_runner(runner).run(case)


def value(result, step: int, field: str):
    return result.observations[(step, field)].value


def test_torch_eager_eval_output_is_the_documented_formula(tmp_path):
    case, result = run(tmp_path, "torch-eager", EVAL_BN2D)
    assert result.status == "ok"
    x = make_batch(case.input, case.input.seed).astype(np.float32).astype(np.float64)
    mean, var = np.array([0.5, -0.5]).reshape(1, 2, 1, 1), np.array([2.0, 0.5]).reshape(1, 2, 1, 1)
    expected = (x - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(value(result, 0, "output"), expected, rtol=1.3e-6, atol=1e-5)
    assert value(result, 0, "module.training") is False and value(result, 0, "uses_batch_stats") is False
    assert result.observations[(0, "output")].dtype == "float32"


def test_torch_eager_train_forward_updates_running_stats_with_the_unbiased_variance(tmp_path):
    case, result = run(tmp_path, "torch-eager", TRAIN_BN2D)
    x = make_batch(case.input, case.input.seed).astype(np.float32).astype(np.float64)
    unbiased = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(value(result, 0, "module.running_var"), 0.9 * np.array([2.0, 0.5]) + 0.1 * unbiased, rtol=1e-5)
    assert value(result, 0, "module.num_batches_tracked") == 1


def test_torch_eager_export_step_changes_nothing(tmp_path):
    _, result = run(tmp_path, "torch-eager", FORUM_FLIP)
    assert result.observations[(0, "bn.output")].value.shape == (2, 2, 2, 2), "each BatchNorm's own output"
    for field in ("module.bn.training", "module.bn.num_batches_tracked", "module.training"):
        assert value(result, 1, field) == value(result, 0, field)
    assert value(result, 1, "module.bn.training") is False


def test_torchscript_export_puts_the_eval_child_back_in_train_mode(tmp_path):
    pytest.importorskip("onnxruntime")
    _, result = run(tmp_path, "onnx-torchscript-ort", FORUM_FLIP)
    assert result.status == "ok"
    assert value(result, 0, "module.bn.training") is False
    assert value(result, 1, "module.bn.training") is True, "the forum thread's bug, on torch 2.13"
    assert value(result, 2, "module.bn.num_batches_tracked") == 1
    assert result.details["exports"][0]["batchnorm"]["bn"]["kept"] is False
    assert value(result, 1, "bn.uses_batch_stats") is False, "a folded BatchNorm is an inference BatchNorm"


def test_dynamo_export_leaves_the_module_alone(tmp_path):
    pytest.importorskip("onnxscript")
    _, result = run(tmp_path, "onnx-dynamo-ort", FORUM_FLIP)
    assert result.status == "ok"
    assert value(result, 1, "module.bn.training") is False
    assert value(result, 2, "module.bn.num_batches_tracked") == 0


def test_the_exporter_sees_the_users_module_without_the_harness_hooks(tmp_path):
    """The harness's BatchNorm hooks (to_numpy on what BN is given) must be off during the export:
    traced, they make the dynamo exporter fall back from strict=False to strict=True capture, a
    path the user's own export would not take."""
    pytest.importorskip("onnxscript")
    _, result = run(tmp_path, "onnx-dynamo-ort", FORUM_FLIP)
    printed = result.details["exports"][0]["printed"]
    assert "strict=False)`... ✅" in printed and "❌" not in printed, printed
    assert (0, "bn.output") in result.observations, "the hooks are back for the forwards"


@pytest.mark.parametrize("runner", ["onnx-torchscript-ort", "onnx-reference"])
def test_an_eval_graph_in_onnxruntime_matches_eager_and_reports_its_batchnorm(tmp_path, runner):
    pytest.importorskip("onnxruntime")
    _, eager = run(tmp_path, "torch-eager", EVAL_BN2D)
    _, onnx = run(tmp_path, runner, EVAL_BN2D)
    np.testing.assert_allclose(value(onnx, 2, "output"), value(eager, 2, "output"), rtol=1.3e-6, atol=1e-5)
    (export,) = onnx.details["exports"]
    facts = export["batchnorm"][""]
    assert facts["kept"] is True and facts["training_mode"] is False
    assert facts["initializers_equal_module_buffers_before_export"] is True
    np.testing.assert_array_equal(value(onnx, 1, "running_var"), np.float32([2.0, 0.5]))


@pytest.mark.parametrize("runner", ["onnx-torchscript-ort", "onnx-torchscript-ort-noopt", "onnx-reference"])
def test_a_training_graph_feeds_its_running_stats_back_when_asked(tmp_path, runner):
    pytest.importorskip("onnxruntime")
    text = TRAIN_BN2D.replace(
        "  - forward\n  - export: {training: training}\n  - forward\n",
        "  - export: {training: training, graph_state: fed_back}\n  - forward\n  - forward\n",
    )
    case, result = run(tmp_path, runner, text)
    assert (
        result.details["exporter"]["executor"]
        == {"onnx-torchscript-ort": "ort", "onnx-torchscript-ort-noopt": "ort-noopt", "onnx-reference": "reference"}[runner]
    )
    assert result.status == "ok"
    assert value(result, 0, "uses_batch_stats") is True
    x = make_batch(case.input, case.input.seed).astype(np.float32).astype(np.float64)
    population = x.var(axis=(0, 2, 3))
    state = value(result, 0, "running_var")
    for step in (1, 2):  # ONNX: running_var = input_var * momentum + current_var * (1 - momentum)
        state = 0.9 * state + 0.1 * population
        np.testing.assert_allclose(value(result, step, "running_var"), state, rtol=1e-5)


def test_an_exporter_error_is_a_result_and_keeps_the_earlier_steps(tmp_path):
    pytest.importorskip("onnxruntime")
    _, result = run(tmp_path, "onnx-torchscript-ort", EVAL_BN2D.replace("  - export\n", "  - export: {opset: 25}\n"))
    assert result.status == "export_failed"
    assert result.reason == "RuntimeError: Unsupported onnx_opset_version: 25"
    assert (0, "output") in result.observations and (2, "output") not in result.observations
    assert result.details["failed_step"] == 1


def test_a_missing_framework_skips_the_runner_with_an_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    _, result = run(tmp_path, "onnx-torchscript-ort", EVAL_BN2D)
    assert result.status == "skipped"
    assert "onnxruntime is not importable" in result.reason and "pip install" in result.reason


def test_torch_compile_steps_the_running_stats_as_eager_and_recompiles_for_eval(tmp_path):
    text = TRAIN_BN2D.replace("  - export: {training: training}\n", "  - set_mode: eval\n")
    case, compiled = run(tmp_path, "torch-compile", text)
    _, eager = run(tmp_path, "torch-eager", text)
    assert compiled.status == "ok", compiled.reason
    assert compiled.details["compile"] == {"backend": "inductor"}
    assert value(compiled, 0, "module.num_batches_tracked") == 1
    for step, field in [(0, "running_mean"), (0, "running_var"), (2, "output")]:
        np.testing.assert_allclose(value(compiled, step, field), value(eager, step, field), rtol=1.3e-6, atol=1e-5)
    assert value(compiled, 2, "uses_batch_stats") is False, "after set_mode: eval the compiled module uses running stats"
    assert (0, "") in compiled.bn_calls, "a bare BatchNorm's call is recorded for the oracles"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_recorded_tensor_is_a_copy_not_a_view_of_the_live_buffer(dtype):
    import torch

    from harness.run.runners.torch_models import TORCH_DTYPES, to_numpy

    bn = torch.nn.BatchNorm2d(3).to(TORCH_DTYPES[dtype])
    before = to_numpy(bn.running_mean)
    bn(torch.randn(4, 3, 2, 2, dtype=TORCH_DTYPES[dtype]) + 5)
    assert not np.shares_memory(before, bn.running_mean.numpy())
    np.testing.assert_array_equal(before, np.zeros(3))


def test_a_float64_train_step_records_the_state_before_the_step(tmp_path):
    text = TRAIN_BN2D.replace("  num_features: 2\n", "  num_features: 2\n  dtype: float64\n")
    _, result = run(tmp_path, "torch-eager", text)
    call = result.bn_calls[(0, "")]
    np.testing.assert_array_equal(call.running_mean_before, [0.5, -0.5])
    np.testing.assert_array_equal(call.running_var_before, [2.0, 0.5])
    assert not np.array_equal(value(result, 0, "running_var"), call.running_var_before), "the step updated the buffer"


def test_a_training_graph_runs_as_exported_by_default_and_says_which_outputs_it_dropped(tmp_path):
    # The exporter's own form: initializers stay initializers and the node's updated statistics,
    # which the TorchScript exporter does not make graph outputs, go nowhere (issue 15, defect 10).
    pytest.importorskip("onnxruntime")
    text = TRAIN_BN2D.replace(
        "  - forward\n  - export: {training: training}\n  - forward\n",
        "  - export: {training: training, opset: 15}\n  - forward\n  - forward\n",
    )
    _, result = run(tmp_path, "onnx-torchscript-ort", text)
    assert result.status == "ok"
    (export,) = result.details["exports"]
    assert export["graph_state"] == "as_exported" and export["graph_outputs"] == ["output"]
    assert export["batchnorm"][""]["outputs_exposed"] == ["Y"]
    assert export["batchnorm"][""]["outputs_dropped"] == ["running_mean", "running_var"]
    assert value(result, 1, "uses_batch_stats") is True
    np.testing.assert_array_equal(value(result, 2, "running_var"), value(result, 0, "running_var"))
    assert result.bn_calls[(1, "")].updates_running_stats is False


def test_the_float64_twin_never_changes_the_users_module():
    # A forward that closes over the original module would step the user's statistics when the
    # twin runs; the harness then puts them back and gives no float64 oracle for that step.
    import torch

    from harness.run.runners.torch_steps import _float64_output

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2)).train()
    bn = model[1]
    original = bn.forward
    bn.forward = lambda x: original(x)  # a closure over the user's own BatchNorm
    before = bn.running_mean.clone()
    assert _float64_output(model, torch.randn(4, 2, 3, 3) + 3) is None
    assert torch.equal(bn.running_mean, before) and int(bn.num_batches_tracked) == 0
    plain = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2)).train()
    assert _float64_output(plain, torch.randn(4, 2, 3, 3)).dtype == np.float64
    assert int(plain[1].num_batches_tracked) == 0


def test_a_nan_in_the_users_state_does_not_cost_the_float64_oracle():
    import torch

    from harness.run.runners.torch_steps import _float64_output

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)).train()
    model[1].running_var[0] = float("nan")
    assert _float64_output(model, torch.randn(4, 2, 5, 5)) is not None


def test_torch_functional_runs_the_op_the_module_refuses_and_otherwise_is_the_module(tmp_path):
    """torch.batch_norm has no batch-size check: one value per channel in training gives a NaN
    running variance (0/0, unbiased) where the module raises; with two it is the module."""
    one = EVAL_BN2D.replace("model: batchnorm2d", "model: batchnorm1d").replace("mode: eval", "mode: train")
    one = one.replace("shape: [2, 2, 3, 3]", "shape: [1, 2]").replace("  - export\n  - forward\n", "")
    _, functional = run(tmp_path, "torch-functional", one)
    assert functional.status == "ok" and np.isnan(value(functional, 0, "running_var")).all()
    assert run(tmp_path, "torch-eager", one)[1].status == "run_failed"
    two = one.replace("shape: [1, 2]", "shape: [2, 2]")
    functional, eager = run(tmp_path, "torch-functional", two)[1], run(tmp_path, "torch-eager", two)[1]
    for field in ("output", "running_mean", "running_var", "module.num_batches_tracked"):
        assert np.array_equal(value(functional, 0, field), value(eager, 0, field)), field


@pytest.mark.parametrize("runner", ["onnx-torchscript-ort", "onnx-reference"])
def test_a_batchnorm_inside_an_exported_graph_is_read_from_an_analysis_copy(tmp_path, runner):
    """A BatchNorm fed by a convolution, not by the graph input: its input and output come from a
    copy of the graph that exposes them, so it has its oracle call and its output field, equal to
    eager's; the deployed graph keeps its one output."""
    pytest.importorskip("onnxruntime")
    text = (
        "description: d\nmodel: nested_two_bn\nbn: {num_features: 2}\nmode: eval\ninput: {shape: [2, 3, 4, 4]}\n"
        "steps: [forward, {export: {constant_folding: false}}, forward]\n"
    )
    _, eager = run(tmp_path, "torch-eager", text)
    _, onnx = run(tmp_path, runner, text)
    assert onnx.status == "ok"
    for path in ("stem.bn", "head.block.bn"):
        assert (2, path) in onnx.bn_calls and onnx.bn_calls[(2, path)].semantics == "onnx"
        np.testing.assert_allclose(value(onnx, 2, f"{path}.output"), value(eager, 2, f"{path}.output"), rtol=1.3e-6, atol=1e-5)
    np.testing.assert_allclose(onnx.bn_calls[(2, "head.block.bn")].input, eager.bn_calls[(2, "head.block.bn")].input, rtol=1e-5, atol=1e-5)
    assert onnx.details["exports"][0]["graph_outputs"] == ["output"], "the deployed graph is not changed"
