from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.frontends import cli, session
from harness.report.record import ResultsLock
from tests.tiny_cases import EVAL_BN2D, GRAPH_NODE, write_case

pytest.importorskip("torch")


def test_run_writes_results_for_good_and_bad_cases_and_fails_on_the_bad_one(tmp_path, capsys):
    write_case(tmp_path / "cases", "a_good", EVAL_BN2D)
    write_case(tmp_path / "cases", "b_broken", EVAL_BN2D.replace("num_features: 2", "num_features: -2"))
    results = tmp_path / "reports" / "results.json"
    status = cli.main(["run", str(tmp_path / "cases"), "--results", str(results), "--runners", "torch-eager"])
    out = capsys.readouterr().out
    assert status == 1
    assert f"passed   {tmp_path}/cases/a_good.yaml  known divergences 0, nothing compared (only the reference ran)" in out
    assert f"{tmp_path}/cases/b_broken.yaml:4: bn.num_features: got -2; allowed: >= 1" in out
    assert out.rstrip().endswith(f"1 passed, 0 failed, 0 skipped, 1 invalid, 0 error\nnot passed: {tmp_path}/cases/b_broken.yaml")
    outcomes = {case["id"]: case["outcome"] for case in json.loads(results.read_text())["cases"]}
    assert outcomes == {"a_good": "passed", "b_broken": "invalid"}


def test_a_harness_bug_in_one_case_keeps_its_traceback_and_the_other_results(tmp_path, capsys, monkeypatch):
    write_case(tmp_path / "cases", "a_first", EVAL_BN2D)
    write_case(tmp_path / "cases", "b_second", EVAL_BN2D)
    real_judge = session.judge

    def judge_with_a_bug(case, runs):
        if case.case_id == "a_first":
            raise ZeroDivisionError("a bug in the harness")
        return real_judge(case, runs)

    monkeypatch.setattr(session, "judge", judge_with_a_bug)
    results = tmp_path / "results.json"
    assert cli.main(["run", str(tmp_path / "cases"), "--results", str(results), "--runners", "torch-eager"]) == 1
    assert "ZeroDivisionError: a bug in the harness" in capsys.readouterr().out
    cases = json.loads(results.read_text())["cases"]
    assert [case["outcome"] for case in cases] == ["error", "passed"]
    assert "Traceback" in cases[0]["error"]


def test_unknown_runner_and_empty_directory_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", str(tmp_path), "--runners", "tensorrt"])
    assert exit_info.value.code == 2 and "--runners: unknown runner(s) tensorrt; allowed: torch-eager" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", str(tmp_path)])
    assert "no case files (*.yaml) under" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_killed_halfway_keeps_every_finished_case_in_its_journal(tmp_path, capsys):
    run, results, journal = start_a_run_that_hangs_on_its_third_case(tmp_path)
    os.killpg(run.pid, signal.SIGKILL)  # the run and its workers, as an out-of-memory killer would
    run.wait()
    assert not results.exists(), "killed before its end: only the journal holds the results"

    report = tmp_path / "reports" / "report.html"
    assert cli.main(["recover", str(journal), "--results", str(results), "--report", str(report)]) == 0
    assert "2 finished case(s) from" in capsys.readouterr().out
    cases = json.loads(results.read_text())["cases"]
    assert [(case["id"], case["outcome"]) for case in cases] == [("a_first", "passed"), ("b_second", "passed")]
    assert 'data-case="b_second"' in report.read_text()


def test_recover_refuses_a_file_that_is_not_a_journal(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")
    assert cli.main(["recover", str(tmp_path / "results.json")]) == 2
    assert "not a results journal" in capsys.readouterr().err


def test_the_report_goes_beside_the_results_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory's reports/
    write_case(tmp_path / "cases", "a", EVAL_BN2D)
    assert cli.main(["run", "cases", "--results", "out/results.json", "--runners", "torch-eager"]) == 0
    assert (tmp_path / "out" / "report.html").is_file() and not (tmp_path / "reports").exists()

    # Runs sharing a folder keep their own report, named after their results.
    assert cli.main(["run", "cases", "--results", "out/a.json", "--runners", "torch-eager"]) == 0
    assert cli.main(["run", "cases", "--results", "out/b.json", "--runners", "torch-eager"]) == 0
    assert sorted(path.name for path in (tmp_path / "out").glob("*.html")) == ["a.html", "b.html", "report.html"]


def test_expectations_whose_runners_did_not_run_are_counted_per_case_and_in_the_totals(tmp_path, capsys):
    from tests.tiny_cases import FORUM_FLIP, FORUM_FLIP_EXPECT

    write_case(tmp_path / "cases", "forum", FORUM_FLIP + FORUM_FLIP_EXPECT)
    status = cli.main(["run", str(tmp_path / "cases"), "--results", str(tmp_path / "results.json"), "--runners", "torch-eager"])
    out = capsys.readouterr().out
    assert status == 0
    assert "expectation(s) not checked (onnx-torchscript-ort not selected" in out
    assert out.rstrip().endswith("expectation(s) not checked (their runners were not selected or skipped)")


def test_a_selection_without_runners_of_a_case_kind_skips_it_saying_so(tmp_path, capsys):
    """`--runners torch-eager,onnx-torchscript-ort` on a graph case ran its oracle alone and passed
    with nothing compared."""
    write_case(tmp_path / "cases", "graph", GRAPH_NODE)
    results = tmp_path / "results.json"
    assert cli.main(["run", str(tmp_path / "cases"), "--results", str(results), "--runners", "torch-eager,onnx-torchscript-ort"]) == 0
    out = capsys.readouterr().out
    assert "skipped  " in out and "none of the selected runners (torch-eager, onnx-torchscript-ort) runs graph cases" in out
    (case,) = json.loads(results.read_text())["cases"]
    assert case["outcome"] == "skipped" and case["runners"] == {}


@pytest.mark.parametrize("kind", ["folder", "fifo", "under_a_file", "device"])
def test_an_output_path_that_cannot_be_a_results_file_is_refused_before_anything_runs(tmp_path, capsys, kind):
    """`--results /dev/full` replaced the device node with a regular file at the end of the run."""
    write_case(tmp_path / "cases", "a_good", EVAL_BN2D)
    target = {"folder": tmp_path / "out", "fifo": tmp_path / "fifo.json", "under_a_file": tmp_path / "plain.txt" / "results.json"}.get(
        kind, Path("/dev/null")
    )
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "under_a_file":
        target.parent.write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", str(tmp_path / "cases"), "--results", str(target), "--runners", "torch-eager"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "exists and is not a regular file" in error or "cannot make its folder" in error, error
    assert not list(tmp_path.glob("**/*.jsonl")), "nothing ran: no journal"
    assert kind != "device" or Path("/dev/null").is_char_device()


def test_a_second_run_on_the_same_results_is_refused_naming_the_first(tmp_path, capsys):
    write_case(tmp_path / "cases", "a_good", EVAL_BN2D)
    results = tmp_path / "reports" / "results.json"
    with ResultsLock(results):  # the first run, holding the results
        assert cli.main(["run", str(tmp_path / "cases"), "--results", str(results), "--runners", "torch-eager"]) == 2
        assert "is writing these results; wait for it, or name other --results" in capsys.readouterr().err
        assert f"process {os.getpid()}" in (results.parent / "results.json.lock").read_text()
    assert not (results.parent / "results.jsonl").exists(), "the second run wrote nothing"
    assert cli.main(["run", str(tmp_path / "cases"), "--results", str(results), "--runners", "torch-eager"]) == 0
    assert not (results.parent / "results.json.lock").exists(), "a finished run leaves no lock behind"


def _journal(tmp_path, lines):
    header = json.dumps({"journal": "bn-harness results", "schema_version": 1, "created": None, "environment": {}})
    case = json.dumps({"case": {"id": "a", "file": "cases/a.yaml", "outcome": "passed"}})
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join([header, *(case if line == "case" else line for line in lines)]) + "\n")
    return path


def test_recover_names_the_cut_last_line_and_refuses_a_bad_line_before_it(tmp_path, capsys):
    results = tmp_path / "results.json"
    cut = _journal(tmp_path, ["case", "case", '{"case": {"id": "b", "fi'])
    assert cli.main(["recover", str(cut), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "2 finished case(s) from" in out and "left out line 4, cut short by the end of the run" in out
    interleaved = _journal(tmp_path, ["case", '{"case": {"id": "b", "fi', "case"])
    assert cli.main(["recover", str(interleaved), "--results", str(results)]) == 2
    assert ":3: not a case record, and not the last line" in capsys.readouterr().err


def _processes_in_session(session_id: int) -> list[str]:
    """The processes of a session (every descendant of a process started with start_new_session)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id:  # after pid (comm): state ppid pgrp session
            found.append(stat.parent.name)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_cleanly_keeping_the_journal(tmp_path, signum, code):
    """Ctrl-C printed a traceback; SIGTERM left a busy worker, the forkserver and the resource
    tracker running, and the workers' temporary folder behind."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run, results, journal = start_a_run_that_hangs_on_its_third_case(tmp_path, {**os.environ, "TMPDIR": str(scratch)})
    os.kill(run.pid, signum)  # the main process only, as `kill PID` does
    try:
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == code, stderr.decode()
    message = stderr.decode().strip().splitlines()
    assert message[-1].startswith(f"stopped by {signal.Signals(signum).name}: 2 case(s) finished, kept in {journal}"), message
    assert f"python -m harness recover {journal} --results {results}" in message[-1]
    assert "Traceback" not in stderr.decode()
    assert len(journal.read_text().splitlines()) == 3

    def left_behind():  # the workers' folder and multiprocessing's; torch's own caches (torchinductor_*) are meant to stay
        return [path.name for path in scratch.iterdir() if path.name.startswith(("bn-harness-", "pymp-"))]

    deadline = time.monotonic() + 10  # the forkserver and resource tracker end once their parent has
    while time.monotonic() < deadline and (_processes_in_session(run.pid) or left_behind()):
        time.sleep(0.2)
    assert not _processes_in_session(run.pid), "no worker, forkserver or resource tracker left"
    assert not left_behind(), "no temporary folder of the run left"


def test_recover_and_baseline_save_to_a_folder_are_one_line_errors(tmp_path, capsys):
    journal = _journal(tmp_path, ["case"])
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert cli.main(["recover", str(journal), "--results", str(folder)]) == 2
    assert f"error: {folder}: exists and is not a regular file" in capsys.readouterr().err
    results = tmp_path / "results.json"
    assert cli.main(["recover", str(journal), "--results", str(results), "--report", str(tmp_path / "report.html")]) == 0
    assert cli.main(["baseline", "save", str(results), "-o", str(folder)]) == 2
    assert f"error: {folder}: exists and is not a regular file" in capsys.readouterr().err


def start_a_run_that_hangs_on_its_third_case(tmp_path, env=None):
    """`python -m harness run` in its own session on three cases, the third with a test-only runner
    that never returns; returned once the first two are in the journal: (process, results, journal)."""
    write_case(tmp_path / "cases", "a_first", EVAL_BN2D + "runners: [torch-eager]\n")
    write_case(tmp_path / "cases", "b_second", EVAL_BN2D + "runners: [torch-eager]\n")
    write_case(tmp_path / "cases", "c_hangs", EVAL_BN2D + "runners: [torch-eager, fault-hang]\n")
    results = tmp_path / "reports" / "results.json"
    # Ctrl-C as in a terminal: a test session started in the background by a script (a CI job) has
    # SIGINT ignored, which its children inherit, and Python then installs no KeyboardInterrupt.
    script = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from harness.run.runners import register_runner; "
        "register_runner('fault-hang', 'tests.fault_runners:HangRunner'); "
        "from harness.frontends import cli; sys.exit(cli.main(sys.argv[1:]))"
    )
    run = subprocess.Popen(
        [sys.executable, "-c", script, "run", str(tmp_path / "cases"), "--results", str(results)],
        cwd=Path(__file__).resolve().parents[1],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    journal = cli.journal_path(results)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and run.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:  # the header and two cases; the third hangs
            break
        time.sleep(0.2)
    assert run.poll() is None, f"the run ended on its own: {run.stderr.read().decode()}"
    return run, results, journal


def test_a_path_that_does_not_exist_is_a_usage_error_that_writes_nothing(tmp_path, capsys):
    """A mistyped path reported one invalid case and replaced the last run's results and report."""
    results = tmp_path / "reports" / "results.json"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", str(tmp_path / "cases" / "typo" / "x.yaml"), "--results", str(results)])
    assert exit_info.value.code == 2
    assert f"no such file or directory: {tmp_path}/cases/typo/x.yaml" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


@pytest.mark.slow
def test_v_prints_a_line_per_known_divergence_and_vv_the_verdicts(tmp_path, capsys):
    """-v printed every known divergence's whole verdict (about 6,500 lines for the library)."""
    pytest.importorskip("onnxruntime")
    from tests.tiny_cases import FORUM_FLIP, FORUM_FLIP_EXPECT

    write_case(tmp_path / "cases", "forum", FORUM_FLIP + FORUM_FLIP_EXPECT)
    command = ["run", str(tmp_path / "cases"), "--results", str(tmp_path / "results.json"), "--runners", "torch-eager,onnx-torchscript-ort"]
    assert cli.main([*command, "-v"]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("known: ")]
    assert len(lines) == 6 and lines[0].startswith("known: onnx-torchscript-ort module.bn.training after step 1 (export(training=eval)): ")
    assert cli.main([*command, "-vv"]) == 0
    out = capsys.readouterr().out
    assert "Mismatched elements" in out and "  reason: " in out


def test_the_shards_of_a_run_merge_into_the_results_of_one_unsharded_run(tmp_path, capsys):
    """Whole files per shard, every N-th from the I-th; merge restores the unsharded order (a grid's
    points in the grid's order) and refuses a case that two shards ran."""
    for name in ("a", "b", "c", "d"):
        write_case(tmp_path / "cases", name, EVAL_BN2D + ("grid:\n  bn.eps: [0.01, 0.001]\n" if name == "b" else ""))
    write_case(tmp_path / "cases", "e_broken", EVAL_BN2D.replace("num_features: 2", "num_features: -2"))
    cases, runners = str(tmp_path / "cases"), ["--runners", "torch-eager"]
    assert cli.main(["run", cases, "--results", str(tmp_path / "whole.json"), *runners]) == 1
    shards = [tmp_path / f"shard{index}.json" for index in (1, 2, 3)]
    for index, shard in enumerate(shards, 1):
        cli.main(["run", cases, "--results", str(shard), "--shard", f"{index}/3", *runners])
    out = capsys.readouterr().out
    assert "shard 1/3: 2 case file(s)" in out and "shard 3/3: 1 case file(s)" in out
    ids = [[case["id"] for case in json.loads(shard.read_text())["cases"]] for shard in shards]
    assert ids == [["a", "d"], ["b[eps_0.01]", "b[eps_0.001]", "e_broken"], ["c"]]

    merged = tmp_path / "merged" / "results.json"
    assert cli.main(["merge", *map(str, reversed(shards)), "-o", str(merged)]) == 0
    assert (tmp_path / "merged" / "report.html").is_file()
    whole_cases, merged_cases = (json.loads(path.read_text())["cases"] for path in (tmp_path / "whole.json", merged))
    assert (
        [case["id"] for case in merged_cases]
        == [case["id"] for case in whole_cases]
        == ["a", "b[eps_0.01]", "b[eps_0.001]", "c", "d", "e_broken"]
    )
    assert [case["outcome"] for case in merged_cases] == [case["outcome"] for case in whole_cases]

    assert cli.main(["merge", str(shards[0]), str(shards[0]), "-o", str(tmp_path / "twice.json")]) == 2
    assert f"error: {shards[0]}: case a ({tmp_path}/cases/a.yaml) is also in {shards[0]}: the shards of one run hold different cases" in (
        capsys.readouterr().err
    )


def test_shard_must_be_i_of_n(capsys):
    for bad in ("0/3", "4/3", "x/3", "2"):
        with pytest.raises(SystemExit):
            cli.main(["run", "cases", "--shard", bad])
        assert "--shard: must be I/N" in capsys.readouterr().err


def test_baseline_save_names_its_output_and_report_defaults_beside_the_results(tmp_path, capsys):
    """Neither may overwrite a committed file by default."""
    write_case(tmp_path / "cases", "a", EVAL_BN2D)
    results = tmp_path / "runs" / "a.json"
    assert cli.main(["run", str(tmp_path / "cases"), "--results", str(results), "--runners", "torch-eager"]) == 0
    (tmp_path / "runs" / "a.html").unlink()
    with pytest.raises(SystemExit):
        cli.main(["baseline", "save", str(results)])
    assert "the following arguments are required: -o/--output" in capsys.readouterr().err
    assert cli.main(["report", str(results)]) == 0
    assert (tmp_path / "runs" / "a.html").is_file()


def test_the_console_script_is_bn_harness():
    from importlib.metadata import entry_points

    (script,) = [entry for entry in entry_points(group="console_scripts") if entry.name == "bn-harness"]
    assert script.load() is cli.main
    installed = Path(sys.executable).with_name("bn-harness")
    if installed.exists():  # an installed checkout (the README's commands install it)
        done = subprocess.run([str(installed), "baseline", "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.startswith("usage: bn-harness baseline [-h] {compare,save,update}")


def test_the_report_summarises_against_a_baseline_when_given_one(tmp_path, capsys):
    write_case(tmp_path / "cases", "a", EVAL_BN2D)
    results = tmp_path / "results.json"
    assert cli.main(["run", str(tmp_path / "cases"), "--results", str(results), "--runners", "torch-eager"]) == 0
    assert cli.main(["report", str(results), "--baseline", str(results), "-o", str(tmp_path / "vs.html")]) == 0
    assert (
        "Against the baseline" in (tmp_path / "vs.html").read_text()
        and "changes: the same as the baseline" in (tmp_path / "vs.html").read_text()
    )
    with pytest.raises(SystemExit):
        cli.main(["run", str(tmp_path / "cases"), "--results", str(results), "--baseline", str(tmp_path / "nope.json")])
    assert f"--baseline: no such file: {tmp_path}/nope.json" in capsys.readouterr().err
