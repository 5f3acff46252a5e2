"""Parameter grids: one case per point, values written where the grid says, errors at the grid's lines."""

from __future__ import annotations

import pytest

from harness.core.errors import CaseError
from harness.load.grid import MAX_GRID_POINTS
from harness.load.schema import load_case, load_cases
from tests.tiny_cases import EVAL_BN2D, write_case

GRID = (
    EVAL_BN2D
    + """\
grid:
  bn.eps: [1.0e-5, 0.001]
  input.shape: [[2, 2, 3, 3], [8, 2, 1, 1]]
  export.opset: [9, 18]
"""
)


def test_a_grid_expands_into_one_case_per_point_with_its_values_written_in(tmp_path):
    cases = load_cases(write_case(tmp_path, "sweep", GRID))
    assert [case.case_id for case in cases] == [
        f"sweep[eps_{eps}-shape_{shape}-opset_{opset}]"
        for eps in ("1e-05", "0.001")
        for shape in ("2x2x3x3", "8x2x1x1")
        for opset in (9, 18)
    ]
    last = cases[-1]
    assert (last.bn.eps, last.input.shape) == (0.001, (8, 2, 1, 1))
    assert [step.export.opset for step in last.steps if step.kind == "export"] == [18], "a bare `- export` step gets the option"
    assert cases[0].bn.eps == 1e-5 and cases[0].path == cases[-1].path


def test_where_keeps_an_expectation_at_its_points_only(tmp_path):
    text = (
        GRID
        + """\
expect:
  - status: run_failed
    runners: [onnx-torchscript-ort]
    where: {export.opset: 9, input.shape: [[8, 2, 1, 1]]}
    reason: only there
  - status: export_failed
    runners: [onnx-dynamo-ort]
    reason: everywhere
"""
    )
    cases = {case.case_id: case for case in load_cases(write_case(tmp_path, "sweep", text))}
    assert [e.reason for e in cases["sweep[eps_0.001-shape_8x2x1x1-opset_9]"].expectations] == ["only there", "everywhere"]
    assert [e.reason for e in cases["sweep[eps_0.001-shape_2x2x3x3-opset_9]"].expectations] == ["everywhere"]
    kept = cases["sweep[eps_0.001-shape_2x2x3x3-opset_9]"].expectations[0]
    assert kept.line == text.splitlines().index("  - status: export_failed") + 1, "lines follow the expectation moved up"


def test_a_bad_value_in_the_grid_is_reported_at_its_line(tmp_path):
    path = write_case(tmp_path, "sweep", EVAL_BN2D + "grid:\n  bn.eps: [0.001, -1.0]\n")
    with pytest.raises(CaseError) as error:
        load_cases(path)
    line = (EVAL_BN2D + "grid:\n").count("\n") + 1
    assert str(error.value).startswith(f"{path}:{line}: bn.eps: "), str(error.value)


@pytest.mark.parametrize(
    "grid, message",
    [
        (
            "  bn.nonsense.deeper: [1]\n",
            "grid.bn.nonsense.deeper: 'bn.nonsense.deeper' is not a field a grid can sweep; allowed: bn.<field>",
        ),
        ("  bn.eps: []\n", "grid.bn.eps: must be a non-empty list of values"),
        ("  bn.eps: 0.1\n", "grid.bn.eps: must be a non-empty list of values"),
        (
            "  bn.eps: [" + ", ".join(["0.1"] * 17) + "]\n  bn.momentum: [" + ", ".join(["0.1"] * 16) + "]\n",
            f"grid: expands into 272 cases; allowed: at most {MAX_GRID_POINTS} per file",
        ),
    ],
)
def test_a_malformed_grid_names_its_field_and_what_is_allowed(tmp_path, grid, message):
    path = write_case(tmp_path, "sweep", EVAL_BN2D + "grid:\n" + grid)
    with pytest.raises(CaseError) as error:
        load_cases(path)
    assert message in str(error.value)
    assert f"{path}:" in str(error.value)


def test_where_must_name_a_grid_field_and_one_of_its_values(tmp_path):
    text = GRID + "expect:\n  - status: run_failed\n    runners: [onnx-reference]\n    reason: r\n    where: {bn.momentum: 0.1}\n"
    with pytest.raises(CaseError, match=r"expect\[0\].where.bn.momentum: is not a field of the grid; allowed: bn.eps"):
        load_cases(write_case(tmp_path, "a", text))
    text = text.replace("bn.momentum: 0.1", "bn.eps: 0.5")
    with pytest.raises(CaseError, match=r"expect\[0\].where.bn.eps: 0.5 is not one of the grid's values; allowed: 1e-05, 0.001"):
        load_cases(write_case(tmp_path, "b", text))
    text = EVAL_BN2D + "expect:\n  - status: run_failed\n    runners: [onnx-reference]\n    reason: r\n    where: {bn.eps: 0.5}\n"
    with pytest.raises(CaseError, match=r"expect\[0\].where: selects grid points, but the case has no grid"):
        load_cases(write_case(tmp_path, "c", text))


def test_load_case_refuses_a_grid_and_names_load_cases(tmp_path):
    with pytest.raises(CaseError, match="the file is a grid of 8 cases"):
        load_case(write_case(tmp_path, "sweep", GRID))


def test_the_run_reports_each_point_as_its_own_case(tmp_path):
    pytest.importorskip("torch")
    import json

    from harness.frontends import cli

    write_case(tmp_path / "cases", "sweep", EVAL_BN2D + "grid:\n  bn.eps: [1.0e-5, 0.001]\n")
    results = tmp_path / "results.json"
    assert cli.main(["run", str(tmp_path / "cases"), "--results", str(results), "--runners", "torch-eager,onnx-reference"]) == 0
    cases = json.loads(results.read_text())["cases"]
    assert [(case["id"], case["outcome"]) for case in cases] == [("sweep[eps_1e-05]", "passed"), ("sweep[eps_0.001]", "passed")]


def test_fields_varied_together_take_their_values_side_by_side(tmp_path):
    text = (
        EVAL_BN2D.replace("model: batchnorm2d", "model: batchnorm1d").replace("shape: [2, 2, 3, 3]", "shape: [2, 2]")
        + """\
grid:
  model, input.shape: [[batchnorm1d, [8, 2]], [batchnorm3d, [2, 2, 2, 2, 2]]]
expect:
  - status: run_failed
    runners: [onnx-reference]
    where: {model: batchnorm3d}
    reason: only 3d
"""
    )
    first, second = load_cases(write_case(tmp_path, "joint", text))
    assert (first.case_id, first.model, first.input.shape) == ("joint[model_batchnorm1d-shape_8x2]", "batchnorm1d", (8, 2))
    assert (second.model, second.input.shape, len(second.expectations), len(first.expectations)) == ("batchnorm3d", (2, 2, 2, 2, 2), 1, 0)
    bad = text.replace("[batchnorm3d, [2, 2, 2, 2, 2]]", "[batchnorm3d]")
    with pytest.raises(
        CaseError, match=r"grid.model, input.shape\[1\]: must list one value for each of the 2 fields; allowed: \[model, input.shape\]"
    ):
        load_cases(write_case(tmp_path, "bad", bad))


def test_one_point_of_a_grid_runs_alone_by_its_id(tmp_path, capsys):
    pytest.importorskip("torch")
    import json

    from harness.frontends import cli

    path = write_case(tmp_path / "cases", "sweep", EVAL_BN2D + "grid:\n  bn.eps: [1.0e-5, 0.001]\n")
    results = tmp_path / "results.json"
    assert cli.main(["run", f"{path}::sweep[eps_0.001]", "--results", str(results), "--runners", "torch-eager"]) == 0
    assert [case["id"] for case in json.loads(results.read_text())["cases"]] == ["sweep[eps_0.001]"]
    assert cli.main(["run", f"{path}::sweep[eps_9]", "--results", str(results), "--runners", "torch-eager"]) == 1
    assert f"{path}: no case 'sweep[eps_9]'; its cases: sweep[eps_1e-05], sweep[eps_0.001]" in capsys.readouterr().out


def test_points_whose_ids_would_be_the_same_are_refused(tmp_path):
    """An id shows what pytest -k can select; two values that it shows alike would make two cases one id."""
    path = tmp_path / "alike.yaml"
    path.write_text(EVAL_BN2D + "grid:\n  bn.eps: [0.0010000001, 0.001]\n")
    with pytest.raises(CaseError, match=r"grid: points grid.bn.eps\[0\] and grid.bn.eps\[1\] have the same id alike\[eps_0.001\]"):
        load_cases(path)
