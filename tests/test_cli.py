from __future__ import annotations

import json

import pytest

from harness import cli
from tests.tiny_cases import EVAL_BN2D, write_case

pytest.importorskip("torch")


def test_run_writes_results_for_good_and_bad_cases_and_fails_on_the_bad_one(tmp_path, capsys):
    write_case(tmp_path / "cases", "a_good", EVAL_BN2D)
    write_case(tmp_path / "cases", "b_broken", EVAL_BN2D.replace("num_features: 2", "num_features: -2"))
    results = tmp_path / "reports" / "results.json"
    status = cli.main(["run", str(tmp_path / "cases"), "--results", str(results), "--runners", "torch-eager"])
    out = capsys.readouterr().out
    assert status == 1
    assert f"passed   {tmp_path}/cases/a_good.yaml  known divergences 0, agreeing comparisons 0" in out
    assert f"{tmp_path}/cases/b_broken.yaml:4: bn.num_features: got -2; allowed: >= 1" in out
    assert out.rstrip().endswith("1 passed, 0 failed, 0 skipped, 1 invalid, 0 error")
    outcomes = {case["id"]: case["outcome"] for case in json.loads(results.read_text())["cases"]}
    assert outcomes == {"a_good": "passed", "b_broken": "invalid"}


def test_a_harness_bug_in_one_case_keeps_its_traceback_and_the_other_results(tmp_path, capsys, monkeypatch):
    write_case(tmp_path / "cases", "a_first", EVAL_BN2D)
    write_case(tmp_path / "cases", "b_second", EVAL_BN2D)
    real_run_case = cli.run_case

    def run_case_with_a_bug(case, only):
        if case.case_id == "a_first":
            raise ZeroDivisionError("a bug in the harness")
        return real_run_case(case, only)

    monkeypatch.setattr(cli, "run_case", run_case_with_a_bug)
    results = tmp_path / "results.json"
    assert cli.main(["run", str(tmp_path / "cases"), "--results", str(results), "--runners", "torch-eager"]) == 1
    assert "ZeroDivisionError: a bug in the harness" in capsys.readouterr().out
    cases = json.loads(results.read_text())["cases"]
    assert [case["outcome"] for case in cases] == ["error", "passed"]
    assert "Traceback" in cases[0]["error"]


def test_unknown_runner_and_empty_directory_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", str(tmp_path), "--runners", "tensorrt"])
    assert exit_info.value.code == 2 and "--runners: unknown tensorrt; allowed: torch-eager" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", str(tmp_path)])
    assert "no case files (*.yaml) under" in capsys.readouterr().err
