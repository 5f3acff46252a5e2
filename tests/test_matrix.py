from __future__ import annotations

import copy
import json

from harness.frontends import cli
from harness.report.matrix import environment_labels, matrix_table

DOC = {
    "schema_version": 1,
    "environment": {"versions": {"torch": "2.13.0", "onnxruntime": "1.32.0"}},
    "cases": [
        {
            "id": "bn15",
            "outcome": "passed",
            "runners": {"onnx-spec": {"status": "ok"}, "graph-ort": {"status": "ok"}, "graph-reference": {"status": "ok"}},
            "comparisons": [
                {"other": "graph-ort", "field": "output", "step": 0, "classification": "agree"},
                {"other": "graph-ort", "field": "output", "step": 1, "classification": "agree"},
                {"other": "graph-reference", "field": "output", "step": 0, "classification": "known"},
            ],
        }
    ],
}


def older() -> dict:
    document = copy.deepcopy(DOC)
    document["environment"]["versions"]["onnxruntime"] = "1.27.0"
    document["cases"][0]["comparisons"][1]["classification"] = "new"
    document["cases"][0]["runners"]["graph-reference"]["status"] = "run_failed"
    return document


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
    (tmp_path / "a.json").write_text(json.dumps(DOC))
    (tmp_path / "b.json").write_text(json.dumps(DOC))
    assert cli.main(["matrix", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "every row is the same in every environment" in capsys.readouterr().out
