from __future__ import annotations

from dataclasses import replace

from harness.core.records import Environment
from harness.frontends import cli
from harness.report.matrix import environment_labels, matrix_table
from tests import records

GRAPH_RUNNERS = ("onnx-spec", "graph-ort", "graph-reference")


def bn15(output_step_1="agree", reference_status="ok"):
    return records.case(
        "bn15",
        runners={"onnx-spec": "ok", "graph-ort": "ok", "graph-reference": reference_status},
        comparisons=[
            records.comparison("graph-ort", "output", 0, "agree"),
            records.comparison("graph-ort", "output", 1, output_step_1),
            records.comparison("graph-reference", "output", 0, "known"),
        ],
    )


DOC = records.written(records.document(bn15(), environment=Environment(versions={"torch": "2.13.0", "onnxruntime": "1.32.0"})))


def older():
    environment = Environment(versions={"torch": "2.13.0", "onnxruntime": "1.27.0"})
    return records.written(replace(DOC, cases=(bn15("new", "run_failed"),), environment=environment))


def test_labels_name_the_versions_that_differ():
    assert environment_labels({"matrix-current": DOC, "matrix-ort127": older()}) == {
        "matrix-current": "matrix-current onnxruntime=1.32.0",
        "matrix-ort127": "matrix-ort127 onnxruntime=1.27.0",
    }


def test_only_rows_that_differ_are_shown_by_default():
    table = matrix_table({"matrix-current": DOC, "matrix-ort127": older()}).splitlines()
    assert table[:2] == ["[0] matrix-current onnxruntime=1.32.0", "[1] matrix-ort127 onnxruntime=1.27.0"]
    rows = [line.split() for line in table[4:]]
    assert rows == [["bn15", "graph-ort", "output", ".", "N"], ["bn15", "graph-reference", "(status)", "R"]], (
        "a divergence at any step marks the field; a status appears where it is not ok"
    )
    everything = matrix_table({"matrix-current": DOC, "matrix-ort127": older()}, everything=True)
    assert "bn15 graph-reference output" in everything


def test_the_command(tmp_path, capsys):
    (tmp_path / "a.json").write_text(records.written_json(DOC))
    (tmp_path / "b.json").write_text(records.written_json(DOC))
    assert cli.main(["matrix", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "every row is the same in every environment" in capsys.readouterr().out
