"""Repro bundles: the backend-test layout, and a generated repro.py that shows the divergence alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.core.errors import HarnessError
from harness.frontends import cli
from harness.frontends.session import run_case
from harness.load.schema import load_case
from harness.report.repro import bundle_folder, bundle_runners, write_bundle
from tests.tiny_cases import FORUM_FLIP, write_case

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow  # worker pools or pytest sessions in subprocesses


@pytest.fixture(scope="module")
def forum(tmp_path_factory):
    directory = tmp_path_factory.mktemp("repro")
    case = load_case(write_case(directory / "cases", "forum", FORUM_FLIP))
    return directory, case, run_case(case, only=["torch-eager", "onnx-torchscript-ort", "onnx-dynamo-ort"])


def test_bundles_are_for_the_exporter_runners_that_diverged(forum):
    _, _, result = forum
    assert bundle_runners(result) == ["onnx-torchscript-ort"], "dynamo leaves the module alone"


def test_a_bundle_is_in_the_backend_test_layout(forum):
    directory, case, result = forum
    bundle = write_bundle(case, result, "onnx-torchscript-ort", directory / "out")
    onnx.checker.check_model(onnx.load(str(bundle / "model.onnx")))
    assert sorted(path.name for path in (bundle / "test_data_set_0").iterdir()) == ["input_0.pb", "output_0.pb"]
    assert not any(line.startswith(("import harness", "from harness")) for line in (bundle / "repro.py").read_text().splitlines())


def test_the_generated_script_shows_the_divergence_on_its_own(forum):
    directory, case, result = forum
    bundle = write_bundle(case, result, "onnx-torchscript-ort", directory / "run")
    # -I: isolated mode, the script's folder as its only own path.
    run = subprocess.run([sys.executable, "-I", "repro.py"], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "DIVERGES: module.bn.training after step 1 (export(training=eval)): torch-eager False, here True" in run.stdout
    assert "DIVERGES: module.bn.num_batches_tracked after step 2 (forward): torch-eager 0, here 1" in run.stdout
    assert "the exported graph's output after step 2 (forward) in onnxruntime agrees with torch-eager's" in run.stdout


def test_what_cannot_be_bundled_says_why(forum, tmp_path):
    directory, case, result = forum
    with pytest.raises(HarnessError, match="no repro bundle for graph-ort: bundles cover the ONNX exporter runners"):
        write_bundle(case, result, "graph-ort", tmp_path)


def test_a_graph_case_bundle_runs_every_runtime_against_the_spec(tmp_path, capsys):
    node = (
        "description: a BN-9 node in inference mode\n"
        "onnx_graph: {opset: 9, training_mode: false, num_features: 2, mean: [0.5, -0.5], var: [2.0, 0.5]}\n"
        "input: {shape: [4, 2, 3], seed: 1}\nsteps: [forward]\n"
    )
    graph = write_case(tmp_path / "cases", "node", node)
    assert cli.main(["repro", str(graph), "-o", str(tmp_path / "out")]) == 0
    bundle = tmp_path / "out" / "node" / "graph"
    assert sorted(path.name for path in (bundle / "test_data_set_0").iterdir()) == ["input_0.pb", "input_1.pb", "input_2.pb", "output_0.pb"]
    run = subprocess.run([sys.executable, "-I", "repro.py"], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "DIVERGES: onnx reference evaluator, test_data_set_0, output (Y): greatest difference from the ONNX spec" in run.stdout
    assert "DIVERGES: onnxruntime" not in run.stdout, "onnxruntime follows the spec here"


KERAS_PASSTHROUGH = """\
description: momentum 0.1 passed to Keras unchanged
runners: [torch-eager, keras-torch]
model: nested_two_bn
bn: {num_features: 3, momentum: 0.1}
mode: {"": train, head: eval}
input: {shape: [4, 3, 5, 5], seed: 5}
keras: {momentum: 0.1, running_var: unbiased}
steps: [forward, {set_mode: eval}, forward]
"""


def _keras_case(directory, text):
    pytest.importorskip("keras")
    case = load_case(write_case(directory / "cases", "keras", text))
    return case, run_case(case)


def _shown(run) -> set[tuple[str, int]]:
    """(field, step) of each `DIVERGES: <field> after step <n> (...)` line."""
    found = set()
    for line in run.stdout.splitlines():
        if line.startswith("DIVERGES: "):
            field, _, rest = line.removeprefix("DIVERGES: ").partition(" after step ")
            found.add((field, int(rest.split()[0])))
    return found


def test_a_keras_bundle_shows_exactly_the_divergences_the_harness_found(tmp_path):
    case, result = _keras_case(tmp_path, KERAS_PASSTHROUGH)
    assert bundle_runners(result) == ["keras-torch"]
    bundle = write_bundle(case, result, "keras-torch", tmp_path / "out")
    assert not any(line.startswith(("import harness", "from harness")) for line in (bundle / "repro.py").read_text().splitlines())
    run = subprocess.run([sys.executable, "-I", "repro.py"], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "Keras parameters not mapped from PyTorch: momentum=0.1 (case override; mapped: 0.9)" in run.stdout
    harness_found = {(verdict.field, verdict.step) for verdict in result.verdicts if not verdict}
    assert ("stem.bn.running_mean", 0) in harness_found and ("output", 2) in harness_found
    assert _shown(run) == harness_found


def test_a_keras_bundle_of_an_agreeing_port_shows_nothing(tmp_path):
    # Mapped momentum, train steps only (an eval forward after training would use Keras's biased
    # variance); the bundle is written all the same to check the script raises no false alarm.
    control = KERAS_PASSTHROUGH.replace("momentum: 0.1, running_var", "running_var").replace(
        "steps: [forward, {set_mode: eval}, forward]", "steps: [forward, train_step, {set_mode: eval}]"
    )
    case, result = _keras_case(tmp_path, control)
    assert bundle_runners(result) == [] and result.runs[1].status == "ok"
    bundle = write_bundle(case, result, "keras-torch", tmp_path / "out")
    run = subprocess.run([sys.executable, "-I", "repro.py"], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 divergence(s) shown (rtol=1.3e-06, atol=1e-05)" in run.stdout


def test_a_backend_test_bundle_compares_in_the_graphs_own_dtype(tmp_path):
    import numpy as np

    from tests.test_graph_cases import UNIT, X_NCL, write_node_test

    x = X_NCL.astype(np.float16)
    write_node_test(
        tmp_path / "cases" / "half",
        15,
        x,
        [a.astype(np.float16) for a in UNIT],
        [(x.astype(np.float64) / np.sqrt(1 + 1e-5)).astype(np.float16)],
    )
    graph = write_case(tmp_path / "cases", "case", "description: d\nonnx_backend_test: half\n")
    assert cli.main(["repro", str(graph), "-o", str(tmp_path / "out")]) == 0
    script = (tmp_path / "out" / "case" / "graph" / "repro.py").read_text()
    assert "RTOL, ATOL = 0.001, 1e-05  # float16 rtol=0.001" in script


@pytest.mark.parametrize("case_id", ["..", "../../etc", "a/b", ".hidden", "x[eps=0.1]"])
def test_a_bundle_folder_stays_under_the_output_folder(tmp_path, case_id):
    """A file stem of `..` wrote its bundles one level above -o."""
    folder = bundle_folder(tmp_path / "out", case_id)
    assert folder.parent == tmp_path / "out" and folder.name not in ("", ".", "..") and "/" not in folder.name


def test_a_scripts_tolerance_has_the_cases_magnitude_part(tmp_path):
    """A case's magnitude_rtol reaches the script: it allows the same differences the harness does."""
    from harness.report.repro import _script
    from tests.tiny_cases import EVAL_BN2D

    text = EVAL_BN2D + "tolerance:\n  reason: outputs of large magnitude\n  float32: {rtol: 1.3e-6, atol: 1e-5, magnitude_rtol: 1e-6}\n"
    case = load_case(write_case(tmp_path / "cases", "magnitude", text))
    script = _script(case, "onnx-torchscript-ort")
    assert "MAGNITUDE_RTOL = 1e-06" in script
    namespace: dict = {"__file__": str(tmp_path / "repro.py")}
    exec(compile(script.split("\ndef main():")[0], "repro.py", "exec"), namespace)  # the constants and helpers
    big = [1.0e5, 0.0]
    assert not namespace["differs"](big, [1.0e5 + 0.05, 0.05]), "0.05 is within 1e-6 of the greatest |value| 1e5"
    assert namespace["differs"](big, [1.0e5 + 0.2, 0.2])


def test_a_bundle_checks_every_forward_the_graph_served(tmp_path):
    """Statistics set on the module after the export: the graph keeps its copies, so the forward
    after the set differs; the bundle's script runs every forward after the export and shows it."""
    from pathlib import Path

    from harness.load.schema import load_cases

    root = Path(__file__).resolve().parents[1]
    case = load_cases(root / "cases" / "16_setting_state" / "statistics_set_after_export.yaml")[0]
    result = run_case(case, only=["torch-eager", "onnx-torchscript-ort"])
    bundle = write_bundle(case, result, "onnx-torchscript-ort", tmp_path)
    assert (bundle / "data_sets.json").read_text().count("test_data_set_") == 3
    run = subprocess.run([sys.executable, "-I", "repro.py"], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert "the exported graph's output after step 1 (forward) in onnxruntime agrees" in run.stdout, run.stdout + run.stderr
    assert "DIVERGES: the exported graph's output after step 3 (forward) in onnxruntime differs" in run.stdout


def test_a_keras_bundle_of_a_fit_fits_as_the_runner_does(tmp_path):
    """keras.train_with: fit: the script's train steps call the port's own Model.fit, and it shows
    the harness's divergences (two updates per step at batch_size 32 on batches of 64)."""
    text = """\
description: Model.fit in mini-batches of 32
runners: [torch-eager, keras-torch]
model: conv_bn
bn: {num_features: 3}
mode: train
input: {shape: [64, 3, 5, 5], seed: 5}
keras: {train_with: fit}
steps: [train_step, train_step]
"""
    case, result = _keras_case(tmp_path, text)
    assert bundle_runners(result) == ["keras-torch"]
    bundle = write_bundle(case, result, "keras-torch", tmp_path / "out")
    run = subprocess.run([sys.executable, "-I", "repro.py"], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    harness_found = {(verdict.field, verdict.step) for verdict in result.verdicts if not verdict}
    assert ("bn.running_mean", 0) in harness_found
    assert _shown(run) == harness_found
