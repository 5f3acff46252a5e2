"""The README's full case example must stay a valid case, and its table of the bundled library
must count what is in cases/."""

from __future__ import annotations

import re
from pathlib import Path

from harness.load.schema import load_cases

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_full_example_in_the_readme_loads(tmp_path):
    section = README.read_text().split("## Writing a case", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "readme_example.yaml"
    path.write_text(example)
    cases = load_cases(path)
    assert [case.case_id for case in cases] == [
        f"readme_example[momentum={momentum},opset={opset}]" for momentum in ("0.1", "None") for opset in (9, 18)
    ]
    case = cases[-1]
    assert case.model == "forum_net" and len(case.steps) == 6 and case.bn.momentum is None
    assert [expectation.status for expectation in case.expectations] == [None, "export_failed"]
    assert [len(other.expectations) for other in cases[:2]] == [1, 1], "where keeps the second at momentum=None only"
    assert case.bn.eps == 1e-5 and case.input.constant_channels == ((2, 0.5),)


def test_the_table_of_bundled_classes_counts_the_library():
    section = README.read_text().split("## The bundled cases", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\d\d_\w+)/`[^|]*\| (\d+) \| (\d+) \|", section, re.M)
    library = README.parent / "cases"
    folders = sorted(path.name for path in library.iterdir() if path.is_dir())
    assert [row[0] for row in rows] == folders, "one row per class folder, in order"
    for folder, files, cases in rows:
        paths = sorted((library / folder).glob("*.yaml"))
        assert (len(paths), sum(len(load_cases(path)) for path in paths)) == (int(files), int(cases)), folder
    totals = re.search(r"(\d+) files, (\d+) cases", section)
    assert totals and (int(totals[1]), int(totals[2])) == (sum(int(r[1]) for r in rows), sum(int(r[2]) for r in rows))
