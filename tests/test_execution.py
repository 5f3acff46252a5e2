"""Faults as results: a runner whose worker aborts is `crashed`, one that hangs is `timed_out`,
one whose framework is missing is `skipped`; every other result of the run is still there."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from harness.frontends import cli
from harness.frontends.session import Session, run_case
from harness.load.schema import load_case
from harness.run import execution
from harness.run.execution import ArrivalOrderSlots, Executor
from harness.run.runners import register_runner, unregister_runner
from tests.fault_runners import FAULT_RUNNERS
from tests.probe_runners import PROBE_RUNNERS
from tests.tiny_cases import EVAL_BN2D, write_case

pytest.importorskip("torch")

pytestmark = pytest.mark.slow  # worker pools or pytest sessions in subprocesses


@pytest.fixture
def fault_runners():
    for name, target in FAULT_RUNNERS.items():
        register_runner(name, target)
    yield list(FAULT_RUNNERS)
    for name in FAULT_RUNNERS:
        unregister_runner(name)


@pytest.fixture
def probe_runners():
    for name, (target, family) in PROBE_RUNNERS.items():
        register_runner(name, target, family)
    yield list(PROBE_RUNNERS)
    for name in PROBE_RUNNERS:
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
        "timed_out",
        "no result within 10 s; the torch-onnx worker was stopped and replaced",
    )
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
    from harness.core import runner_table

    monkeypatch.setitem(
        runner_table.RUNNERS, "fault-abort", dataclasses.replace(runner_table.RUNNERS["fault-abort"], exporter="torchscript")
    )
    monkeypatch.setitem(runner_table.SHARED_WALKS, "torchscript", "tests.fault_runners:abort_in_shared_walk")
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
    status = cli.main(
        ["run", str(tmp_path / "cases"), "--results", str(results), "--runners", "torch-eager,fault-abort,onnx-torchscript-ort"]
    )
    out = capsys.readouterr().out
    assert status == 1
    assert "fault-abort ended with status crashed: the torch-onnx worker process died: signal SIGABRT" in out
    import json

    cases = json.loads(results.read_text())["cases"]
    assert [(case["id"], case["runners"]["onnx-torchscript-ort"]["status"]) for case in cases] == [("a_crashes", "ok"), ("b_after", "ok")]
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
        [
            sys.executable,
            "-c",
            "import pickle, sys; pickle.load(open(sys.argv[1], 'rb')); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'onnxruntime', 'onnxscript', 'keras', 'tensorflow', 'jax'}))",
            str(tmp_path / "runs.pickle"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]", f"unpickling the results imported {loaded.stdout.strip()}"


def _window(run) -> tuple[float, float]:
    assert run.status == "ok", run.reason
    return run.details["start"], run.details["end"]


def test_jobs_bounds_the_runners_computing_at_once_across_families(tmp_path, probe_runners, executor):
    case = load_case(write_case(tmp_path, "case", EVAL_BN2D))
    (torch_start, torch_end), (solo_start, solo_end) = map(_window, executor.run(case, ["probe-slow", "probe-solo-slow"]))
    assert torch_end <= solo_start or solo_end <= torch_start, "with jobs=1, runners of two families ran at once"


def test_a_busy_one_worker_family_does_not_hold_up_the_others(tmp_path, probe_runners):
    """Two runs of a one-worker family and then a quick torch runner, with jobs=2: the quick one
    runs beside the first slow one instead of waiting behind the second."""
    case = load_case(write_case(tmp_path, "case", EVAL_BN2D))
    executor = Executor(jobs=2)
    try:
        executor.run(case, ["probe-quick"])  # the torch worker started and torch imported: not what is timed
        first, second, quick = (executor.submit(case, [name])[0] for name in ("probe-solo-slow", "probe-solo-slow", "probe-quick"))
        (first_start, first_end), (second_start, _), (_, quick_end) = (_window(future.result()) for future in (first, second, quick))
    finally:
        executor.close()
    assert second_start >= first_end, "the one-worker family ran two at once"
    assert quick_end < first_end, "the torch runner waited for a family it does not use"


def test_a_sealed_executor_stops_each_family_once_its_work_is_done(tmp_path, probe_runners, executor):
    import time

    case = load_case(write_case(tmp_path, "case", EVAL_BN2D))
    (solo,) = executor.submit(case, ["probe-solo-slow"])
    executor.seal()
    pid = solo.result().details["pid"]
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the family's worker outlived its work"
    (again,) = executor.run(case, ["probe-solo-slow"])
    assert again.status == "ok" and again.details["pid"] != pid, "a submit after the seal starts the family afresh"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_every_worker_computes_on_one_thread(tmp_path, probe_runners, executor, monkeypatch):
    """So that --jobs N uses N cores and no result depends on N."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    case = load_case(write_case(tmp_path, "case", EVAL_BN2D))
    (run,) = executor.run(case, ["probe-quick"])
    assert run.details["torch_threads"] == 1
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import helper

    from harness.run.runners.onnx_export import open_executor

    graph = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "relu",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    session, _, _ = open_executor(graph, "ort")
    assert session.get_session_options().intra_op_num_threads == 1


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads a process's mapped libraries from /proc")
def test_the_torch_familys_workers_fork_from_a_server_that_loaded_torch(tmp_path, probe_runners, fault_runners, executor):
    """Not spawned, each importing torch itself: a replaced worker starts without paying the imports."""
    case = load_case(write_case(tmp_path, "case", EVAL_BN2D))
    executor.warm(["probe-quick"])  # as `harness run` starts it (the server, if this process has none yet)
    first, replaced = (executor.run(case, ["probe-quick", "fault-abort"])[0] for _ in range(2))
    for run in (first, replaced):
        assert run.details["torch_loaded"], "torch was imported before the runner ran"
        parent = run.details["parent_pid"]
        assert parent != os.getpid(), "the worker is the fork server's child, not the harness's"
        assert "libtorch" in Path(f"/proc/{parent}/maps").read_text(), "the fork server has torch loaded"
    assert first.details["pid"] != replaced.details["pid"] and first.details["parent_pid"] == replaced.details["parent_pid"]


def test_slots_are_granted_in_the_order_asked():
    """A thread that gives its slot back and asks again queues behind one already waiting
    (threading.Semaphore would hand the slot straight back to it)."""
    import threading
    import time

    slots, order = ArrivalOrderSlots(1), []

    def wait_for_a_slot() -> None:
        with slots:
            order.append("waiting thread")

    with slots:
        waiter = threading.Thread(target=wait_for_a_slot)
        waiter.start()
        while not slots._waiting:  # the waiter is in line
            time.sleep(0.01)
    with slots:
        order.append("releasing thread")
    waiter.join()
    assert order == ["waiting thread", "releasing thread"]


def test_a_session_runs_on_the_executor_configured_after_it_was_made(tmp_path):
    """The pytest plugin makes its session at configure time; a test (or --jobs) that configures
    the executor afterwards replaces the one the session would have kept."""
    session = Session(["torch-eager"])
    session.executor.warm(["torch-eager"])
    execution.configure(jobs=1)
    assert session.run_case(load_case(write_case(tmp_path, "case", EVAL_BN2D))).outcome == "passed"
