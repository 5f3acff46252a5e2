from __future__ import annotations

import pytest

from harness.core.errors import CaseError
from harness.load.loader import MAX_CASE_FILE_BYTES, format_path, load_yaml


def problems_of(text: str) -> list[str]:
    with pytest.raises(CaseError) as caught:
        load_yaml(text, "cases/x.yaml")
    return str(caught.value).splitlines()


def test_lines_point_at_the_key_even_when_the_value_starts_below():
    document = load_yaml("a: 1\nbn:\n  eps: 0.1\nsteps:\n  - forward\n  - export: {opset: 17}\n", "x")
    assert document.lines[("bn",)] == 2
    assert document.lines[("bn", "eps")] == 3
    assert document.lines[("steps", 1)] == 6
    assert document.lines[("steps", 1, "export", "opset")] == 6


def test_line_of_a_missing_path_falls_back_to_its_nearest_ancestor():
    document = load_yaml("a: 1\nbn:\n  eps: 0.1\n", "x")
    assert document.line_of(("bn", "momentum")) == 2
    assert document.line_of(("nope", 3)) == 1


@pytest.mark.parametrize("text, value", [("1e-5", 1e-5), ("1.0e-5", 1e-5), ("-2E3", -2000.0), (".5", 0.5), ("3", 3)])
def test_numbers_without_a_dot_in_the_mantissa_are_floats(text, value):
    loaded = load_yaml(f"x: {text}", "x").data["x"]
    assert loaded == value and type(loaded) is type(value)


def test_broken_yaml_names_the_line():
    assert problems_of("a: 1\nb: [1, 2\nc: 3\n")[0].startswith("cases/x.yaml:")
    assert "invalid YAML" in problems_of("a: [1, 2")[0]


def test_tags_that_build_python_objects_are_refused():
    (problem,) = problems_of("a: !!python/object/apply:os.system ['true']\n")
    assert problem.startswith("cases/x.yaml:1: <document>: invalid YAML") and "python/object" in problem


def test_duplicate_keys_are_reported_with_their_line():
    assert problems_of("bn:\n  eps: 1\n  eps: 2\n") == ["cases/x.yaml:3: bn.eps: duplicate key"]


def test_self_referencing_aliases_and_alias_bombs_end_with_an_error():
    assert "nesting too deep" in problems_of("a: &x [*x]\n")[0]
    bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{name}: &{name} [{', '.join(['*' + previous] * 10)}]\n" for previous, name in zip("abcdef", "bcdefg")
    )
    assert "aliases expand too far" in problems_of(bomb)[0]


def test_empty_and_oversized_files():
    assert "the file is empty" in problems_of("")[0]
    assert f"at most {MAX_CASE_FILE_BYTES} bytes" in problems_of("a: " + "x" * MAX_CASE_FILE_BYTES)[0]


def test_format_path():
    assert format_path(("steps", 2, "mode")) == "steps[2].mode"
    assert format_path(("mode", "")) == 'mode.""'


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "description: x\nbn: {num_features: 2\nmode: eval\n",
            "x.yaml:2: <document>: invalid YAML: while parsing a flow mapping expected ',' or '}', but got ':' (noticed at line 3)",
        ),
        ("a: 'unterminated\nb: 2\n", "x.yaml:1: <document>: invalid YAML: while scanning a quoted scalar found unexpected end of stream"),
        ("a:\n  b: 1\n c: 2\n", "x.yaml:3: <document>: invalid YAML:"),  # a block error stays where it is noticed
    ],
)
def test_an_unclosed_bracket_or_quote_is_located_where_it_opened(text, expected):
    with pytest.raises(CaseError) as refused:
        load_yaml(text, "x.yaml")
    assert str(refused.value).startswith(expected), str(refused.value)
