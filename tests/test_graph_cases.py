"""Graph cases: a hand-built BatchNormalization node, or a test in the ONNX backend-test layout."""

from __future__ import annotations

import numpy as np
import pytest

from harness.core.case import GraphCase
from harness.core.errors import CaseError, RunnerError
from harness.frontends.session import run_case
from harness.load.schema import load_case
from harness.run.runners import create_runner
from tests.tiny_cases import write_case

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

NODE = """\
description: a hand-built node
onnx_graph: {opset: 15, training_mode: true, num_features: 2, mean: [0.5, -0.5], var: [2.0, 0.5]}
input: {shape: [4, 2, 3], seed: 1}
steps: [forward, {train_step: {repeat: 2}}]
"""


def problems(tmp_path, text: str) -> list[str]:
    with pytest.raises(CaseError) as caught:
        load_case(write_case(tmp_path, "case", text), display_path="cases/case.yaml")
    return str(caught.value).splitlines()


def test_a_hand_built_node_case_loads_as_a_graph_case(tmp_path):
    case = load_case(write_case(tmp_path, "case", NODE))
    assert isinstance(case, GraphCase) and case.node.opset == 15 and case.node.mean == (0.5, -0.5)
    assert [step.kind for step in case.steps] == ["forward", "train_step", "train_step"]


def test_graph_case_problems_name_line_and_field(tmp_path):
    assert problems(tmp_path, NODE.replace("description: a hand-built node\n", "description: x\nonnx_backend_test: onnx:node/x\n")) == [
        "cases/case.yaml:1: <document>: a graph case names either onnx_graph or onnx_backend_test; allowed: exactly one of them"
    ]
    assert problems(tmp_path, NODE.replace("mean: [0.5, -0.5]", "mean: [0.5]")) == [
        "cases/case.yaml:2: onnx_graph.mean: 1 values for num_features=2; allowed: 2 values"
    ]
    assert problems(tmp_path, NODE.replace("steps: [forward, {train_step: {repeat: 2}}]", "steps: [export]")) == [
        "cases/case.yaml:4: steps[0]: 'export' is not allowed; allowed: forward, train_step, "
        "or a mapping with one key of: forward, train_step"
    ]
    backend = "description: x\nonnx_backend_test: onnx:node/t\ninput: {shape: [1, 1]}\n"
    assert problems(tmp_path, backend) == [
        "cases/case.yaml:3: input: a backend test brings its own inputs and data sets; allowed: no input or steps"
    ]
    expect = "expect:\n  - field: bn.running_mean\n    runners: [onnx-spec]\n    reason: r\n"
    assert problems(tmp_path, NODE + expect) == [
        "cases/case.yaml:6: expect[0].field: 'bn.running_mean' matches no field of a graph case; allowed: output, running_mean, running_var, saved_mean, saved_var",
        "cases/case.yaml:7: expect[0].runners: onnx-spec is the reference of this case; allowed: the runner(s) that differ from it",
    ]


def test_every_runtime_agrees_with_the_spec_on_a_training_node(tmp_path):
    result = run_case(load_case(write_case(tmp_path, "case", NODE)))
    ort = next(run for run in result.runs if run.runner == "graph-ort")
    assert ort.details["ir_version"] == helper.find_min_ir_version_for([helper.make_opsetid("", 15)]), (
        "the lowest IR version the opset allows, so that older runtimes load the graph"
    )
    assert result.outcome == "passed", result.explain()
    assert [run.runner for run in result.runs][0] == "onnx-spec"
    fields = {verdict.field for verdict in result.verdicts}
    assert fields == {"output", "running_mean", "running_var"} and len(result.verdicts) == 3 * 3 * 3


def test_the_reference_evaluators_opset_9_inference_deviates_from_the_spec(tmp_path):
    text = NODE.replace("opset: 15, training_mode: true", "opset: 9, training_mode: false")
    result = run_case(load_case(write_case(tmp_path, "case", text)), only=["onnx-spec", "graph-ort", "graph-reference"])
    (divergence, *_) = [verdict for verdict in result.verdicts if not verdict]
    assert divergence.other == "graph-reference" and divergence.attribution == "implementation deviates"
    assert divergence.attribution_text.startswith("graph-reference vs ONNX BatchNormalization: error")
    assert all(verdict for verdict in result.verdicts if verdict.other == "graph-ort")


def write_backend_test(directory, with_relu: bool = False) -> np.ndarray:
    """A BatchNormalization model in the backend-test layout, with one data set; returns Y."""
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["bn_y" if with_relu else "y"], epsilon=1e-5)
    nodes = [node] + ([helper.make_node("Relu", ["bn_y"], ["y"])] if with_relu else [])
    initializers = [
        numpy_helper.from_array(np.float32(values), name)
        for name, values in (("s", [1.0, 2.0]), ("b", [0.0, 1.0]), ("m", [0.5, -0.5]), ("v", [2.0, 0.5]))
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 2])],
        initializers,
    )
    directory.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), str(directory / "model.onnx"))
    x = np.float32([[1, 2], [3, 4], [5, 6]])
    y = (x - [0.5, -0.5]) / np.sqrt(np.float32([2.0, 0.5]) + 1e-5) * [1.0, 2.0] + [0.0, 1.0]
    y = np.maximum(y, 0) if with_relu else y
    data = directory / "test_data_set_0"
    data.mkdir()
    (data / "input_0.pb").write_bytes(numpy_helper.from_array(x).SerializeToString())
    (data / "output_0.pb").write_bytes(numpy_helper.from_array(y.astype(np.float32)).SerializeToString())
    return y


def test_a_directory_in_the_backend_test_layout_runs_against_its_stored_outputs(tmp_path):
    expected = write_backend_test(tmp_path / "cases" / "bn_test")
    case = load_case(write_case(tmp_path / "cases", "case", "description: mine\nonnx_backend_test: bn_test\n"))
    stored = create_runner("stored-outputs").run(case)
    np.testing.assert_array_equal(stored.observations[(0, "output")].value, expected.astype(np.float32))
    result = run_case(case)
    assert result.outcome == "passed", result.explain()
    assert {run.runner: run.status for run in result.runs} == {
        "stored-outputs": "ok",
        "onnx-spec": "ok",
        "graph-ort": "ok",
        "graph-ort-noopt": "ok",
        "graph-reference": "ok",
    }


def test_the_spec_oracle_only_judges_a_single_batchnorm_node(tmp_path):
    write_backend_test(tmp_path / "cases" / "bn_relu", with_relu=True)
    case = load_case(write_case(tmp_path / "cases", "case", "description: mine\nonnx_backend_test: bn_relu\n"))
    result = create_runner("onnx-spec").run(case)
    assert result.status == "skipped" and "not a single BatchNormalization node" in result.reason


def test_an_unknown_backend_test_names_the_case_and_what_is_missing(tmp_path):
    case = load_case(write_case(tmp_path / "cases", "case", "description: mine\nonnx_backend_test: onnx:node/test_nope\n"))
    with pytest.raises(RunnerError, match="onnx_backend_test: onnx generates no node test 'test_nope'"):
        create_runner("graph-ort").run(case)


@pytest.mark.slow  # worker processes
def test_an_unknown_node_test_is_the_cases_error_not_a_runner_crash(tmp_path):
    """A case-file problem found only at run time (whether onnx generates a node test is known once
    onnx is imported) is the case's error with the message, not `crashed` runners."""
    result = run_case(load_case(write_case(tmp_path / "cases", "case", "description: mine\nonnx_backend_test: onnx:node/test_nope\n")))
    assert result.outcome == "error" and "onnx generates no node test 'test_nope'" in result.error
    assert {run.status for run in result.runs} == {"run_failed"}


@pytest.mark.parametrize(
    "name, problem",
    [
        (
            "../elsewhere",
            "onnx_backend_test: ../elsewhere leads out of the case file's folder; allowed: a folder under the case file's folder",
        ),
        ("/etc", "onnx_backend_test: an absolute path; allowed: a folder under the case file's folder"),
        ("linked", "onnx_backend_test: linked leads out of the case file's folder"),
        ("onnx:data/../../../..", "onnx_backend_test: onnx:data/../../../.. leads out of onnx's backend-test data folder"),
        ("onnx:node/../../x", "onnx_backend_test: not the name of a node test"),
        ("missing", "onnx_backend_test: no model.onnx in missing; allowed: a folder in the ONNX backend-test layout"),
        ("partly_linked", "onnx_backend_test: partly_linked/model.onnx leads out of the case file's folder; allowed: files under"),
    ],
)
def test_a_backend_test_is_read_only_inside_the_case_folder_or_onnxs_data(tmp_path, name, problem):
    outside = tmp_path / "elsewhere"
    write_backend_test(outside)
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "linked").symlink_to(outside, target_is_directory=True)
    (tmp_path / "cases" / "partly_linked").mkdir()
    (tmp_path / "cases" / "partly_linked" / "model.onnx").symlink_to(outside / "model.onnx")
    (found,) = problems_in(tmp_path / "cases", f"description: mine\nonnx_backend_test: {name}\n")
    assert found.startswith(f"cases/case.yaml:2: {problem}"), found


def problems_in(directory, text):
    with pytest.raises(CaseError) as caught:
        load_case(write_case(directory, "case", text), display_path="cases/case.yaml")
    return str(caught.value).splitlines()


NODE_TESTS_DUMP = """\
import hashlib, sys
import numpy as np
from harness.run.runners import graph
if sys.argv[1] == "all":  # what onnx's own collect_testcases makes
    import warnings
    from onnx.backend.test.case.node import collect_testcases
    warnings.simplefilter("ignore")
    with np.errstate(all="ignore"):
        tests = collect_testcases("BatchNormalization")
else:
    tests = graph._onnx_node_tests()
    assert "onnx.backend.test.case.node.cast" not in sys.modules, "every operator's generator was imported"
for test in tests:
    digest = hashlib.sha256(test.model.SerializeToString())
    for inputs, outputs in test.data_sets:
        for array in (*inputs, *outputs):
            digest.update(np.ascontiguousarray(array).tobytes())
    print(test.name, digest.hexdigest())
"""


@pytest.mark.slow
def test_onnx_node_tests_come_from_the_batchnorm_generator_alone_and_equal_onnxs_own_collection():
    # Fresh processes: the generators keep global state, so one process cannot make them twice.
    import subprocess
    import sys
    from pathlib import Path

    def dump(how: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", NODE_TESTS_DUMP, how], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.splitlines()

    ours = dump("ours")
    assert [line.split()[0] for line in ours] == [
        "test_batchnorm_example",
        "test_batchnorm_epsilon",
        "test_batchnorm_example_training_mode",
        "test_batchnorm_epsilon_training_mode",
    ]
    assert ours == dump("all")


def write_node_test(
    directory, opset: int, x: np.ndarray, params: list[np.ndarray], stored: list[np.ndarray], outputs: int = 1, **attributes
) -> None:
    """One BatchNormalization node at `opset` in the backend-test layout: X fed, scale, B, mean
    and var as initializers, `stored` as the data set's outputs."""
    names = ["y", "running_mean", "running_var", "saved_mean", "saved_var"][:outputs]
    node = helper.make_node("BatchNormalization", ["x", "scale", "b", "mean", "var"], names, **attributes)
    element = helper.np_dtype_to_tensor_dtype(x.dtype)
    initializers = [numpy_helper.from_array(array, name) for name, array in zip(["scale", "b", "mean", "var"], params)]
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", element, list(x.shape))],
        [helper.make_tensor_value_info(name, element, None) for name in names],
        initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    directory.mkdir(parents=True)
    onnx.save(model, str(directory / "model.onnx"))
    data = directory / "test_data_set_0"
    data.mkdir()
    (data / "input_0.pb").write_bytes(numpy_helper.from_array(x).SerializeToString())
    for position, array in enumerate(stored):
        (data / f"output_{position}.pb").write_bytes(numpy_helper.from_array(array).SerializeToString())


X_NCL = np.random.default_rng(3).normal(1.0, 2.0, size=(6, 3, 4)).astype(np.float32)
UNIT = [np.ones(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32), np.ones(3, np.float32)]


def spec_of(tmp_path, name: str, *args, **kwargs):
    write_node_test(tmp_path / "cases" / name, *args, **kwargs)
    case = load_case(write_case(tmp_path / "cases", name, f"description: d\nonnx_backend_test: {name}\n"))
    return case, create_runner("onnx-spec").run(case)


def batch_normalised(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-5)


@pytest.mark.parametrize("is_test, training", [(0, True), (1, False)])
def test_at_opset_6_the_spec_oracle_takes_the_mode_from_is_test(tmp_path, is_test, training):
    outputs = 5 if training else 1
    _, spec = spec_of(tmp_path, "bn6", 6, X_NCL, UNIT, [X_NCL], outputs=outputs, is_test=is_test)
    assert spec.status == "ok" and spec.details["mode"] == ("training" if training else "inference")
    expected = batch_normalised(X_NCL, (0, 2)) if training else X_NCL.astype(np.float64) / np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(spec.observations[(0, "output")].value, expected, rtol=1e-6, atol=1e-6)
    if training:  # saved_mean and saved_var: the batch's mean and population variance
        np.testing.assert_allclose(spec.observations[(0, "saved_mean")].value, X_NCL.astype(np.float64).mean(axis=(0, 2)), rtol=1e-6)
        np.testing.assert_allclose(spec.observations[(0, "saved_var")].value, X_NCL.astype(np.float64).var(axis=(0, 2)), rtol=1e-6)


def test_spatial_0_normalises_per_activation_with_parameters_per_activation(tmp_path):
    per_activation = [np.ones((3, 4), np.float32), np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32), np.ones((3, 4), np.float32)]
    _, spec = spec_of(tmp_path, "bn7", 7, X_NCL, per_activation, [X_NCL], outputs=5, spatial=0)
    assert spec.status == "ok", spec.reason
    np.testing.assert_allclose(spec.observations[(0, "output")].value, batch_normalised(X_NCL, (0,)), rtol=1e-5, atol=1e-5)
    assert spec.observations[(0, "saved_mean")].value.shape == (3, 4)


def test_a_node_the_spec_does_not_define_is_refused_with_the_sentence_it_breaks(tmp_path):
    wrong = [np.ones(4, np.float32), *UNIT[1:]]  # four scales for three channels
    case, spec = spec_of(tmp_path, "bad", 15, X_NCL, wrong, [X_NCL])
    assert spec.status == "run_failed"
    assert "scale has shape (4,), X has shape (6, 3, 4); 'tensor of shape (C)' ((3,))" in spec.reason
    result = run_case(case)
    assert not any(verdict.attribution == "implementation deviates" for verdict in result.verdicts if not verdict), (
        "stored outputs of an invalid graph are not blamed against an invented oracle"
    )


def test_saved_statistics_after_the_third_output_are_compared(tmp_path):
    # onnxruntime returns 1 / sqrt(var + eps) in saved_var where the spec says the saved variance.
    x = X_NCL.astype(np.float64)
    mean, var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    stored = [
        batch_normalised(X_NCL, (0, 2)).astype(np.float32),
        (0.1 * mean).astype(np.float32),
        (0.9 + 0.1 * var).astype(np.float32),
        mean.astype(np.float32),
        var.astype(np.float32),
    ]
    case, _ = spec_of(tmp_path, "bn9", 9, X_NCL, UNIT, stored, outputs=5, momentum=0.9)
    result = run_case(case)
    diverging = {(v.other, v.field) for v in result.verdicts if not v}
    assert ("graph-ort", "saved_var") in diverging
    verdict = next(v for v in result.verdicts if (v.other, v.field) == ("graph-ort", "saved_var"))
    assert verdict.attribution == "implementation deviates" and verdict.attribution_text.startswith("graph-ort vs ONNX")


def test_a_float16_backend_test_is_judged_in_float16(tmp_path):
    x = X_NCL.astype(np.float16)
    params = [array.astype(np.float16) for array in UNIT]
    exact = (x.astype(np.float64) / np.sqrt(1 + 1e-5)).astype(np.float16)
    case, _ = spec_of(tmp_path, "half", 15, x, params, [exact])
    result = run_case(case)
    assert all(run.status == "ok" for run in result.runs), [(run.runner, run.reason) for run in result.runs]
    float16 = [verdict for verdict in result.verdicts if verdict.field == "output"]
    assert float16 and all(verdict.dtype == "float16" for verdict in float16)
    assert result.outcome == "passed", result.explain()


@pytest.mark.parametrize("training_mode", [False, True])
def test_a_hand_built_node_can_store_its_statistics_as_initializers(tmp_path, training_mode):
    # Exporters store the statistics as initializers, which onnxruntime treats as constants;
    # the option makes that form testable next to the fed-input one (issue 15, defect 10).
    text = NODE.replace("training_mode: true", f"training_mode: {str(training_mode).lower()}, statistics: initializers")
    case = load_case(write_case(tmp_path, "case", text))
    assert case.node.statistics == "initializers"
    source_model = create_runner("onnx-spec").run(case).artifacts["model.onnx"]
    model = onnx.load_from_string(source_model)
    assert {initializer.name for initializer in model.graph.initializer} >= {"mean", "var"}
    assert [value.name for value in model.graph.input] == ["x"]
    result = run_case(case)
    assert result.outcome == "passed", result.explain()
    if training_mode:  # nothing is fed back: every step starts from the stored statistics
        spec = next(run for run in result.runs if run.runner == "onnx-spec")
        first, last = spec.bn_calls[(0, "")], spec.bn_calls[(2, "")]
        np.testing.assert_array_equal(first.running_var_before, last.running_var_before)


def test_spatial_0_follows_its_opset_and_is_attributed_without_crashing(tmp_path):
    per_activation = [np.ones((3, 4), np.float32), np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32), np.ones((3, 4), np.float32)]
    _, at_6 = spec_of(tmp_path, "bn6s", 6, X_NCL, UNIT, [X_NCL], outputs=5, spatial=0, is_test=0)
    assert at_6.status == "run_failed" and "spatial=0 with parameters of size C" in at_6.reason
    _, at_8 = spec_of(tmp_path, "bn8s", 8, X_NCL, per_activation, [X_NCL], outputs=5, spatial=0)
    assert at_8.status == "ok", "BatchNormalization-7 still applies at opset 8"
    case, _ = spec_of(tmp_path, "bn7s", 7, X_NCL, per_activation, [X_NCL], outputs=1, spatial=0)
    result = run_case(case)  # the stored output (X itself) is wrong: judged, not a crash
    wrong = [v for v in result.verdicts if not v and v.other == "onnx-spec"]
    assert wrong and wrong[0].attribution == "implementation deviates"


def test_a_backend_test_changed_after_loading_is_checked_again_when_it_runs(tmp_path):
    write_backend_test(tmp_path / "cases" / "bn_test")
    case = load_case(write_case(tmp_path / "cases", "case", "description: mine\nonnx_backend_test: bn_test\n"))
    write_backend_test(tmp_path / "elsewhere")
    (tmp_path / "cases" / "bn_test" / "model.onnx").unlink()
    (tmp_path / "cases" / "bn_test" / "model.onnx").symlink_to(tmp_path / "elsewhere" / "model.onnx")
    with pytest.raises(RunnerError, match="onnx_backend_test: bn_test/model.onnx leads out of the case file's folder"):
        create_runner("graph-ort").run(case)


def test_graph_options_are_checked_against_each_other(tmp_path):
    """An omitted attribute has no value; spatial false exists up to opset 8 and takes a value per activation."""
    from harness.core.errors import CaseError
    from harness.load.schema import load_case

    path = tmp_path / "options.yaml"
    path.write_text(
        "description: graph options\n"
        "onnx_graph: {opset: 9, training_mode: false, num_features: 2, epsilon: 0.001, omit: [epsilon], spatial: false, mean: [0.0, 0.0]}\n"
        "input: {shape: [2, 2, 3, 3]}\n"
        "steps: [forward]\n"
    )
    with pytest.raises(CaseError) as caught:
        load_case(path)
    assert [(p.field, p.message, p.allowed) for p in caught.value.problems] == [
        ("onnx_graph.epsilon", "epsilon is given and omitted", "either a value or omit: [epsilon] (the schema's default)"),
        ("onnx_graph.mean", "2 values for one per activation (2x3x3 with spatial false)", "18 values"),
        ("onnx_graph.spatial", "spatial false exists up to opset 8", "opset 6, 7 or 8, or spatial true"),
    ]


def test_graph_torch_is_the_torch_batchnorm_the_node_stands_for(tmp_path):
    """Opt-in (not in a default run); on a training node Y and the running mean agree with the
    spec, and the running variance is torch's own update, judged a convention of torch, not a
    runtime deviating from the ONNX spec."""
    pytest.importorskip("torch")
    case = load_case(write_case(tmp_path, "case", NODE))
    assert "graph-torch" not in [run.runner for run in run_case(case, only=None).runs]
    result = run_case(case, only=["onnx-spec", "graph-torch"])
    spec, torch_run = result.runs
    assert torch_run.status == "ok" and torch_run.details["mapping"] == {
        "eps": pytest.approx(1e-5),
        "momentum": pytest.approx(0.1),
        "train": True,
    }
    x = np.asarray(torch_run.bn_calls[(0, "")].input)
    n = x.size // x.shape[1]
    unbiased = x.var(axis=(0, 2)) * n / (n - 1)
    np.testing.assert_allclose(torch_run.observations[(0, "running_var")].value, 0.9 * np.array([2.0, 0.5]) + 0.1 * unbiased, rtol=1e-5)
    divergent = {(verdict.field, verdict.attribution) for verdict in result.verdicts if not verdict}
    assert divergent == {("running_var", "conventions differ")}, result.explain()
    assert all(verdict for verdict in result.verdicts if verdict.field in ("output", "running_mean") and verdict.step == 0)
