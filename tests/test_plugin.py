"""The pytest plugin, run in real pytest sessions with pytester.

Sessions that run frameworks run in a subprocess: pytester's in-process runs unload the modules a
run imported, and importing torch's exporter a second time in one process aborts in native code.
"""

from __future__ import annotations

import json

import pytest

from tests.hostile_corpus import MUTATIONS, generate
from tests.tiny_cases import EVAL_BN2D, FORUM_FLIP, FORUM_FLIP_EXPECT, write_case

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow  # worker pools or pytest sessions in subprocesses
FAST = "--harness-runners=torch-eager,onnx-torchscript-ort"


def test_a_broken_case_fails_alone_with_file_line_and_field(pytester):
    write_case(pytester.path / "cases", "good", EVAL_BN2D)
    write_case(pytester.path / "cases", "broken", FORUM_FLIP.replace("bn: eval}", "bn: evaluate}"))
    result = pytester.runpytest_subprocess("cases", FAST, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, errors=0)
    result.stdout.fnmatch_lines(["cases/broken.yaml:7: mode.bn: 'evaluate' is not allowed (did you mean 'eval'?); allowed: train, eval"])
    result.stdout.no_fnmatch_line("*Traceback*")


def test_item_ids_are_file_and_case(pytester):
    write_case(pytester.path / "cases", "eval_control", EVAL_BN2D)
    result = pytester.runpytest("cases", FAST, "--collect-only", "-q")
    assert "cases/eval_control.yaml::eval_control" in result.stdout.lines


def test_only_yaml_under_case_directories_is_collected_unless_named(pytester):
    write_case(pytester.path / "config", "settings", "not: a case\n")
    write_case(pytester.path / "cases", "eval_control", EVAL_BN2D)
    pytester.runpytest_subprocess(FAST).assert_outcomes(passed=1)
    named = pytester.runpytest_subprocess("config/settings.yaml", FAST)
    named.assert_outcomes(failed=1)
    named.stdout.fnmatch_lines(["config/settings.yaml:1: not: unknown field; allowed: *"])


def test_another_projects_cases_folder_is_not_collected(pytester):
    """The plugin is installed in the environment, so it sees every project: a `cases/` folder of
    other YAML files (an experiment config with a description and a model among them) is not ours."""
    write_case(pytester.path / "cases", "config", "description: baseline run\nmodel: resnet18\nlr: 0.1\n")
    write_case(pytester.path / "cases", "sweep", "runners: 4\nsteps: [warmup, train]\n")
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "not collected" not in result.stdout.str() and "BatchNorm harness" not in result.stdout.str()


def test_a_project_that_opted_in_collects_every_yaml_file_of_its_case_folders(pytester):
    """The opt-in (ini harness_case_dirs) makes every YAML file there a case, so a malformed one
    fails as a case instead of being passed over; its folders need not be named cases."""
    pytester.makeini("[pytest]\nharness_case_dirs = regressions\n")
    write_case(pytester.path / "regressions", "good", EVAL_BN2D)
    write_case(pytester.path / "regressions", "unparsable", "description: [\n")
    write_case(pytester.path / "cases", "elsewhere", EVAL_BN2D)  # not an opted-in folder
    result = pytester.runpytest("--harness-runners=torch-eager", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert [line for line in result.stdout.lines if "::" in line] == [
        "regressions/good.yaml::good",
        "regressions/unparsable.yaml::unparsable",
    ]


def test_without_the_opt_in_files_passed_over_beside_collected_cases_are_named(pytester):
    """Using the harness without the opt-in: a case too broken to look like one is not silently lost."""
    write_case(pytester.path / "cases", "good", EVAL_BN2D)
    write_case(pytester.path / "cases", "unparsable", "description: [\n")
    result = pytester.runpytest_subprocess("cases", "--harness-runners=torch-eager", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["1 YAML file(s) not collected (cases/unparsable.yaml): this project has not opted in (ini option harness_case_dirs)*"]
    )


def test_known_divergences_pass_and_are_summarised(pytester):
    write_case(pytester.path / "cases", "forum", FORUM_FLIP + FORUM_FLIP_EXPECT)
    result = pytester.runpytest_subprocess("cases", FAST)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["passed   cases/forum.yaml  known divergences 6 (onnx-torchscript-ort 6), agreeing comparisons *"])


def test_an_unlisted_divergence_fails_with_the_verdict_and_a_snippet(pytester):
    write_case(pytester.path / "cases", "forum", FORUM_FLIP)
    result = pytester.runpytest_subprocess("cases", FAST)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "6 divergence(s) not listed in expect:",
            "module.bn.training after step 1 (export(training=eval)): torch-eager vs onnx-torchscript-ort differ: "
            "False (torch-eager), True (onnx-torchscript-ort)",
            "Attribution: state changed by a step: step 1 (export(training=eval)) changed the user's torch module in "
            "onnx-torchscript-ort (first seen in module.bn.training); torch.onnx.export sets the training mode only temporarily*",
            "*add to expect in cases/forum.yaml:",
            "  - field: module.bn.training",
        ]
    )


def test_an_expected_divergence_that_vanished_fails(pytester):
    wrong_runner = FORUM_FLIP_EXPECT.replace("onnx-torchscript-ort", "onnx-dynamo-ort")
    write_case(pytester.path / "cases", "forum", FORUM_FLIP + wrong_runner)
    result = pytester.runpytest_subprocess("cases", "--harness-runners=torch-eager,onnx-dynamo-ort")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "Expected divergence no longer reproduces (cases/forum.yaml:15): module.bn.training after step 1, 2 differs in onnx-dynamo-ort",
            "  seen instead: now agrees: module.bn.training after step 1 *",
        ]
    )


def test_results_json_records_every_case_with_runner_statuses(pytester):
    pytester.makeini("[pytest]\nharness_case_dirs = cases\n")  # the unparsable file is a case too
    write_case(pytester.path / "cases", "good", EVAL_BN2D)
    write_case(pytester.path / "cases", "broken", "description: [\n")
    pytester.runpytest_subprocess("cases", FAST, "--harness-results=out/results.json")
    record = json.loads((pytester.path / "out" / "results.json").read_text())
    assert record["schema_version"] == 1
    assert record["environment"]["versions"]["torch"].startswith("2.13.0")
    cases = {case["id"]: case for case in record["cases"]}
    assert cases["broken"]["outcome"] == "invalid" and "cases/broken.yaml:" in cases["broken"]["error"]
    good = cases["good"]
    assert good["outcome"] == "passed"
    assert {name: runner["status"] for name, runner in good["runners"].items()} == {"torch-eager": "ok", "onnx-torchscript-ort": "ok"}
    comparison = good["comparisons"][0]
    assert comparison["classification"] == "agree" and comparison["rtol"] in (1.3e-6, None)


def test_grid_points_are_listed_in_the_grids_order(pytester):
    """Not sorted as strings, which would put eps=0.001 before eps=0.01."""
    write_case(pytester.path / "cases", "eps", EVAL_BN2D + "grid:\n  bn.eps: [0.01, 0.001, 0.0001]\n")
    result = pytester.runpytest_subprocess("cases", "--harness-runners=torch-eager", "--harness-results=out.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    ids = [case["id"] for case in json.loads((pytester.path / "out.json").read_text())["cases"]]
    assert ids == ["eps[eps_0.01]", "eps[eps_0.001]", "eps[eps_0.0001]"]
    result.stdout.fnmatch_lines(["*eps.yaml::eps[[]eps_0.01]*", "*eps.yaml::eps[[]eps_0.001]*", "*eps.yaml::eps[[]eps_0.0001]*"])


def test_a_grid_point_is_selected_with_k_by_its_id(pytester):
    """pytest -k refuses '=' and ','; a point's id is made of what it reads as a name."""
    write_case(pytester.path / "cases", "sweep", EVAL_BN2D + "grid:\n  bn.eps: [0.01, 0.001]\n  bn.momentum: [0.1, 0.5]\n")
    result = pytester.runpytest("cases", "--collect-only", "-q", "-k", "eps_0.001 and momentum_0.5", "-p", "no:cacheprovider")
    assert [line for line in result.stdout.lines if "::" in line] == ["cases/sweep.yaml::sweep[eps_0.001-momentum_0.5]"]


def test_an_unknown_runner_is_a_usage_error(pytester):
    result = pytester.runpytest("--harness-runners=torch-eager,tensorrt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*--harness-runners: unknown runner(s) tensorrt; allowed: torch-eager, torch-compile, torch-functional, onnx-torchscript-ort, onnx-dynamo-ort, *, onnx-reference, keras-tensorflow, *"
        ]
    )


def test_pytest_xdist_gives_the_results_of_a_serial_run(pytester):
    pytest.importorskip("xdist")
    write_case(pytester.path / "cases", "a_forum", FORUM_FLIP + FORUM_FLIP_EXPECT)
    write_case(pytester.path / "cases", "b_eval", EVAL_BN2D)
    write_case(pytester.path / "cases", "c_broken", EVAL_BN2D.replace("num_features: 2", "num_features: -2"))
    write_case(pytester.path / "cases", "d_train", EVAL_BN2D.replace("mode: eval", "mode: train"))
    serial = pytester.runpytest_subprocess("cases", FAST, "--harness-results=serial.json", "-p", "no:cacheprovider")
    parallel = pytester.runpytest_subprocess("cases", FAST, "--harness-results=parallel.json", "-n", "2", "-p", "no:cacheprovider")
    serial.assert_outcomes(passed=2, failed=2)  # d_train: the train-mode export's divergences are not listed
    parallel.assert_outcomes(passed=2, failed=2)
    parallel.stdout.fnmatch_lines(["passed   cases/a_forum.yaml  known divergences 6 (onnx-torchscript-ort 6), agreeing comparisons *"])
    serial_cases = json.loads((pytester.path / "serial.json").read_text())["cases"]
    parallel_cases = json.loads((pytester.path / "parallel.json").read_text())["cases"]
    assert [case["id"] for case in parallel_cases] == ["a_forum", "b_eval", "c_broken", "d_train"]
    assert parallel_cases == serial_cases


def test_expectations_whose_runners_did_not_run_are_counted(pytester):
    write_case(pytester.path / "cases", "forum", FORUM_FLIP + FORUM_FLIP_EXPECT)
    result = pytester.runpytest_subprocess("cases", "--harness-runners=torch-eager", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "passed   cases/forum.yaml  known divergences 0, nothing compared (only the reference ran); * expectation(s) not checked (onnx-torchscript-ort not selected*",
            "* expectation(s) not checked (their runners were not selected or skipped)",
        ]
    )


def test_a_folder_of_yaml_not_named_cases_collects_nothing_and_says_where_cases_are_looked_for(pytester):
    write_case(pytester.path / "regressions", "good", EVAL_BN2D)
    result = pytester.runpytest("regressions", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(
        [
            "no bn-harness case collected from regressions: this project has not opted in (ini option harness_case_dirs), "
            "so only the YAML files under folders named cases that look like cases*"
        ]
    )


def test_the_good_cases_beside_every_kind_of_bad_file_pass_under_pytest(pytester):
    """No bad file is a collection error: each fails as its own item, and the good ones run."""
    pytester.makeini("[pytest]\nharness_case_dirs = cases\n")  # every file is a case, however malformed
    cases = pytester.path / "cases"
    write_case(cases, "aaa_good", EVAL_BN2D)
    write_case(cases, "zzz_good", EVAL_BN2D)
    hostile = generate(cases, len(MUTATIONS) * 2, seed=3)
    result = pytester.runpytest_subprocess("cases", "--harness-runners=torch-eager", "--harness-results=out.json", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 2 and outcomes.get("failed") == len(hostile) and "error" not in outcomes, outcomes
    recorded = json.loads((pytester.path / "out.json").read_text())["cases"]
    assert sorted(case["outcome"] for case in recorded) == ["invalid"] * len(hostile) + ["passed"] * 2


def test_v_summarises_each_known_divergence_on_a_line_and_vv_gives_the_verdicts(pytester):
    write_case(pytester.path / "cases", "forum", FORUM_FLIP + FORUM_FLIP_EXPECT)
    brief = pytester.runpytest_subprocess("cases", FAST, "-v", "-p", "no:cacheprovider")
    known = [line for line in brief.stdout.lines if line.strip().startswith("known: onnx-torchscript-ort ")]
    assert len(known) == 6 and "Mismatched elements" not in brief.stdout.str()
    whole = pytester.runpytest_subprocess("cases", FAST, "-vv", "-p", "no:cacheprovider")
    assert "Mismatched elements" in whole.stdout.str()
