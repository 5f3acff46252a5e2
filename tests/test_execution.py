"""Faults as results: a runner whose worker aborts is `crashed`, one that hangs is `timed_out`,
one whose framework is missing is `skipped`; every other result of the run is still there."""

from __future__ import annotations

import numpy as np
import pytest

from harness import cli
from harness.engine import run_case
from harness.execution import Executor
from harness.runners import register_runner, unregister_runner
from harness.schema import load_case
from tests.fault_runners import FAULT_RUNNERS
from tests.tiny_cases import EVAL_BN2D, write_case

pytest.importorskip("torch")


@pytest.fixture
def fault_runners():
    for name, target in FAULT_RUNNERS.items():
        register_runner(name, target)
    yield list(FAULT_RUNNERS)
    for name in FAULT_RUNNERS:
        unregister_runner(name)


@pytest.fixture
def executor():
    executor = Executor(jobs=1, timeout_s=10)  # a fresh worker's torch import and an export fit in it
    yield executor
    executor.close()


def test_each_fault_is_its_runners_result_and_the_others_still_run(tmp_path, fault_runners, executor):
    case = load_case(write_case(tmp_path, "case", EVAL_BN2D))
    # Each fault replaces the worker: the runners after it start in a fresh one.
    names = ["fault-hang", "torch-eager", "fault-abort", "onnx-torchscript-ort", "fault-missing"]
    runs = {run.runner: run for run in executor.run(case, names)}
    assert runs["fault-abort"].status == "crashed"
    assert "the torch-onnx worker process died: signal SIGABRT (exit code -6)" in runs["fault-abort"].reason
    assert "fault-abort: a C++ assertion failed, aborting" in runs["fault-abort"].reason, "the tail of its stderr"
    assert (runs["fault-hang"].status, runs["fault-hang"].reason) == (
        "timed_out", "no result within 10 s; the torch-onnx worker was stopped and replaced")
    assert runs["fault-missing"].status == "skipped"
    assert "a_framework_that_is_not_installed is not importable" in runs["fault-missing"].reason
    for name in ("torch-eager", "onnx-torchscript-ort"):
        assert runs[name].status == "ok" and runs[name].observations, f"{name} ran in a replaced worker"


def test_runners_sharing_an_export_observe_what_each_would_alone(tmp_path, executor):
    """One walk, one export per export step, for the three TorchScript runners: every observation
    is what the runner makes on its own walk (the export is deterministic; what it does to the
    module is observed once and holds for each)."""
    from tests.tiny_cases import TRAIN_EXPORT_BN2D

    case = load_case(write_case(tmp_path, "case", TRAIN_EXPORT_BN2D))
    names = ("onnx-torchscript-ort", "onnx-torchscript-ort-noopt", "onnx-reference")
    shared = executor.run(case, names)
    alone = [executor.run(case, [name])[0] for name in names]
    for together, by_itself in zip(shared, alone):
        assert together.status == by_itself.status == "ok", (together.reason, by_itself.reason)
        assert together.details["export_shared_with"] == [name for name in names if name != together.runner]
        assert "export_shared_with" not in by_itself.details
        assert together.observations.keys() == by_itself.observations.keys()
        for key, observed in together.observations.items():
            expected = by_itself.observations[key]
            if isinstance(observed.value, np.ndarray):
                np.testing.assert_array_equal(observed.value, expected.value, err_msg=f"{together.runner} {key}")
            else:
                assert observed.value == expected.value, (together.runner, key)
        assert together.details["exports"] == by_itself.details["exports"]
        assert together.artifacts["model.onnx"] == by_itself.artifacts["model.onnx"]


def test_a_fault_in_a_shared_walk_is_rerun_runner_by_runner(tmp_path, fault_runners, executor, monkeypatch):
    """Which runner of a crashed shared walk made the crash is found by running each alone."""
    from harness import runners

    monkeypatch.setitem(runners.SHARED_WALKS, ("fault-abort", "onnx-torchscript-ort"), "tests.fault_runners:abort_in_shared_walk")
    case = load_case(write_case(tmp_path, "case", EVAL_BN2D))
    abort, torchscript = executor.run(case, ["fault-abort", "onnx-torchscript-ort"])
    assert abort.status == "crashed" and "fault-abort: a C++ assertion failed" in abort.reason, abort.reason
    assert "shared walk" not in abort.reason, "the crash reported is the runner's own, not the walk's"
    assert torchscript.status == "ok" and torchscript.observations


def test_a_case_timeout_overrides_the_executors(tmp_path, fault_runners, executor):
    case = load_case(write_case(tmp_path, "case", EVAL_BN2D + "timeout: 1.5\n"))
    (run,) = executor.run(case, ["fault-hang"])
    assert (run.status, run.reason) == ("timed_out", "no result within 1.5 s; the torch-onnx worker was stopped and replaced")


def test_a_crash_fails_its_case_not_the_run(tmp_path, fault_runners, capsys):
    write_case(tmp_path / "cases", "a_crashes", EVAL_BN2D)
    write_case(tmp_path / "cases", "b_after", EVAL_BN2D)
    results = tmp_path / "results.json"
    status = cli.main(["run", str(tmp_path / "cases"), "--results", str(results),
                       "--runners", "torch-eager,fault-abort,onnx-torchscript-ort"])
    out = capsys.readouterr().out
    assert status == 1
    assert "fault-abort ended with status crashed: the torch-onnx worker process died: signal SIGABRT" in out
    import json

    cases = json.loads(results.read_text())["cases"]
    assert [(case["id"], case["runners"]["onnx-torchscript-ort"]["status"]) for case in cases] == [
        ("a_crashes", "ok"), ("b_after", "ok")]
    assert all(case["runners"]["fault-abort"]["status"] == "crashed" for case in cases)


def test_an_expected_crash_is_a_known_result(tmp_path, fault_runners):
    text = EVAL_BN2D + "expect:\n  - status: crashed\n    runners: [fault-abort]\n    reason: the runtime aborts here\n"
    result = run_case(load_case(write_case(tmp_path, "case", text)), only=["torch-eager", "fault-abort"])
    assert result.outcome == "passed", result.explain()


def test_results_cross_the_process_boundary_as_plain_data(tmp_path):
    """Unpickling a worker's result must not import a framework in the harness's process (torch's
    TorchVersion in a details dict once pulled 300 MB of torch into it)."""
    import pickle
    import subprocess
    import sys

    case = load_case(write_case(tmp_path, "case", EVAL_BN2D))
    names = ["torch-eager", "torch-compile", "onnx-torchscript-ort", "onnx-dynamo-ort", "keras-torch"]
    executor = Executor(jobs=1)  # the default timeout: inductor's first compilation in a fresh worker takes tens of seconds
    try:
        runs = executor.run(case, names)
    finally:
        executor.close()
    assert [run.status for run in runs] == ["ok"] * len(names), [run.reason for run in runs]
    (tmp_path / "runs.pickle").write_bytes(pickle.dumps(runs))
    loaded = subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb')); "
         "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'onnxruntime', 'onnxscript', 'keras', 'tensorflow', 'jax'}))",
         str(tmp_path / "runs.pickle")], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", f"unpickling the results imported {loaded.stdout.strip()}"
