"""The README's full case example must stay a valid case."""

from __future__ import annotations

import re
from pathlib import Path

from harness.schema import load_case

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_full_example_in_the_readme_loads(tmp_path):
    section = README.read_text().split("## Writing a case", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "readme_example.yaml"
    path.write_text(example)
    case = load_case(path)
    assert case.model == "forum_net" and len(case.steps) == 6 and len(case.expectations) == 2
    assert case.bn.eps == 1e-5 and case.input.constant_channels == ((2, 0.5),)
