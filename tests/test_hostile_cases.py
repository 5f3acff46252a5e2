"""A generated corpus of malformed case files (tests/hostile_corpus.py): each one is a clear
CaseError naming the file, the line and the field, never an internal error, a hang or an
out-of-memory; the good cases beside them still run and keep their results."""

from __future__ import annotations

import json
import re
import signal
from collections import Counter

import pytest

from harness.core.errors import CaseError
from harness.frontends import cli
from harness.load.schema import load_case
from tests.hostile_corpus import MUTATIONS, generate
from tests.tiny_cases import EVAL_BN2D, FORUM_FLIP, GRAPH_NODE, write_case

HANG_GUARD_S = 10  # not a speed measure: a file that takes this long to refuse has hung the loader


@pytest.fixture(scope="module")
def corpus(request, tmp_path_factory):
    count, seed = request.config.getoption("hostile_count"), request.config.getoption("hostile_seed")
    return generate(tmp_path_factory.mktemp("hostile"), count, seed)


def _alarm(signum, frame):
    raise TimeoutError(f"refusing the file took more than {HANG_GUARD_S} s")


def test_every_malformed_file_is_a_clear_error_with_file_line_and_field(corpus):
    previous = signal.signal(signal.SIGALRM, _alarm)
    refused = Counter()
    try:
        for path in corpus:
            signal.alarm(HANG_GUARD_S)
            try:
                load_case(path, display_path=str(path))
            except CaseError as error:
                message = str(error)
            else:
                pytest.fail(f"{path} loaded; it should have been refused:\n{path.read_bytes()[:500]!r}")
            finally:
                signal.alarm(0)
            # Every problem: `FILE:LINE: FIELD: what; allowed: ...`; only a file too large to read has no line.
            for line in message.splitlines():
                if line.startswith("  "):
                    continue  # a continuation of the problem above
                assert re.match(re.escape(str(path)) + r":\d+: \S+: \S", line) or ("file too large for a case; allowed: at most" in line), (
                    f"{path}: {line}"
                )
            refused[path.stem.split("_", 2)[2]] += 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert set(refused) == set(MUTATIONS), "every kind of damage was generated and refused"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "description: x\nmodel: !!python/object/apply:os.system ['echo pwned']\n",
            ":2: <document>: invalid YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'",
        ),
        ("description: x\nbn: " + "[" * 5000 + "]" * 5000 + "\n", ":2: <document>: nesting too deep; allowed: at most 64 levels"),
        (
            EVAL_BN2D.replace("shape: [2, 2, 3, 3]", "shape: [1000000, 2, 3, 3]"),
            ":9: input.shape: 18000000 elements per batch; allowed: at most 4194304",
        ),
        ("description: x\x00\n", ":1: <document>: invalid YAML: character #x0000 is not allowed in YAML text"),
    ],
)
def test_the_worst_kinds_name_what_is_allowed(tmp_path, text, expected):
    path = tmp_path / "case.yaml"
    path.write_text(text)
    with pytest.raises(CaseError) as refused:
        load_case(path, display_path="case.yaml")
    assert str(refused.value).startswith("case.yaml" + expected)


def test_not_utf8_names_the_line_and_byte(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_bytes(b"description: x\nmodel: caf\xe9\n")
    with pytest.raises(CaseError, match=r"^case.yaml:2: <document>: not UTF-8 text \(byte 0xe9\); allowed: a UTF-8 text file"):
        load_case(path, display_path="case.yaml")


def test_the_good_cases_beside_the_corpus_run_and_keep_their_results(tmp_path, corpus, capsys):
    pytest.importorskip("torch")
    cases = tmp_path / "cases"
    write_case(cases, "aaa_good", EVAL_BN2D)
    write_case(cases, "zzz_good", EVAL_BN2D)
    hostile = corpus[: len(MUTATIONS) * 2]  # each kind twice, beside the good ones
    for path in hostile:
        (cases / path.name).write_bytes(path.read_bytes())
    results = tmp_path / "results.json"
    assert cli.main(["run", str(cases), "--results", str(results), "--runners", "torch-eager"]) == 1
    outcomes = Counter(case["outcome"] for case in json.loads(results.read_text())["cases"])
    assert outcomes == {"passed": 2, "invalid": len(hostile)}
    totals, named = capsys.readouterr().out.rstrip().splitlines()[-2:]
    assert totals == f"2 passed, 0 failed, 0 skipped, {len(hostile)} invalid, 0 error"
    assert named.startswith(f"not passed: {cases}/hostile_0000_") and named.endswith(f" and {len(hostile) - 10} more")


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("num_features: 2\n", f"num_features: {'9' * 5000}\n", ":4: bn.num_features: integer out of range (9999999999"),
        ("  seed: 1\n", f"  seed: {2**64}\n", ":10: input.seed: integer out of range (18446744073709551616); allowed: -2**63 < n < 2**63"),
        ("  - forward\n", "  - train_step: {repeat: 2.0}\n", ":12: steps[0].train_step.repeat: got a number 2.0; allowed: an integer"),
        ("  - forward\n", "  - train_step: {repeat: 1e2}\n", ":12: steps[0].train_step.repeat: got a number 100.0; allowed: an integer"),
        ("num_features: 2\n", "num_features: 3.0\n", ":4: bn.num_features: got a number 3.0; allowed: an integer"),
        ("shape: [2, 2, 3, 3]", "shape: [2.0, 2, 3, 3]", ":9: input.shape[0]: got a number 2.0; allowed: an integer"),
        ("  - export\n", "  - export: {opset: 17.0}\n", ":13: steps[1].export.opset: got a number 17.0; allowed: an integer"),
        ("  - forward\n", "  - forward: {seed: 1e308}\n", ":12: steps[0].forward.seed: got a number 1e+308; allowed: an integer"),
        ("  - forward\n", "  - set_mode: {1: eval}\n", ":12: steps[0].set_mode.1: a key that is not text; allowed: text: quote it ('1')"),
        (
            "mode: eval\n",
            "mode: eval\nexpect: [{field: output, step: 1.0, runners: [keras-torch], reason: r}]\n",
            ":8: expect[0].step: 1.0 is not allowed; allowed: an integer, a list",
        ),
        ("  seed: 1\n", "  seed: 1\n  mean: .nan\n", ":11: input.mean: not a finite number; allowed: finite numbers"),
        ("mode: eval\n", "mode: eval\ntimeout: .nan\n", ":8: timeout: not a finite number; allowed: finite numbers"),
        ("mode: eval\n", "mode: eval\nkeras: {epsilon: .inf}\n", ":8: keras.epsilon: not a finite number"),
        (
            "mode: eval\n",
            "mode: eval\ntolerance: {float32: {rtol: .nan, atol: 1.0e-5}, reason: r}\n",
            ":8: tolerance.float32.rtol: not a finite number",
        ),
    ],
)
def test_integers_out_of_range_integral_floats_text_keys_and_non_finite_numbers_are_refused(tmp_path, old, new, expected):
    """Each was accepted, or crashed the loader or a worker, before (issue 20)."""
    assert_refused(tmp_path, EVAL_BN2D, old, new, expected)


def test_a_model_too_large_for_the_input_cap_is_refused(tmp_path):
    """The input cap bounded the batch, not what the model makes of it: forum_net with 4096
    features on a 2048x2048 image would hold a 1.7e11-element fc1."""
    path = tmp_path / "case.yaml"
    text = FORUM_FLIP.replace("  running_mean: [0.5, -0.25]\n  running_var: [2.0, 0.5]\n", "")
    path.write_text(text.replace("num_features: 2", "num_features: 4096").replace("shape: [2, 3, 4, 4]", "shape: [1, 1, 2048, 2048]"))
    with pytest.raises(CaseError) as refused:
        load_case(path, display_path="case.yaml")
    assert "input.shape: the model's fc1 weight would hold 171463311360 elements; allowed: at most 4194304 per tensor" in str(
        refused.value
    ), str(refused.value)


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("var: [2.0, 0.5]", "var: [-1.0, 0.5]", ":2: onnx_graph.var: a variance is negative; allowed: values >= 0"),
        ("epsilon: 1.0e-5", "epsilon: .inf", ":2: onnx_graph.epsilon: not a finite number"),
        ("momentum: 0.9", "momentum: .nan", ":2: onnx_graph.momentum: not a finite number"),
        ("mean: [0.5, -0.5]", "mean: [.nan, -0.5]", ":2: onnx_graph.mean: not a finite number"),
        (
            "shape: [4, 2, 3]",
            "shape: [100000, 2, 1000, 1000]",
            ":3: input.shape: 200000000000 elements per batch; allowed: at most 4194304",
        ),
        ("opset: 15", f"opset: {10**30}", ":2: onnx_graph.opset: integer out of range"),
        (
            "steps: [forward, {train_step: {repeat: 2}}]\n",
            "steps: [forward, {train_step: {repeat: 2}}]\nexpect: [{field: Y, step: 100000000000000000000, runners: [graph-ort], reason: r}]\n",
            ":5: expect[0].step: integer out of range (100000000000000000000)",
        ),
    ],
)
def test_graph_cases_refuse_what_torch_cases_refuse(tmp_path, old, new, expected):
    assert_refused(tmp_path, GRAPH_NODE, old, new, expected)


def test_each_missing_required_field_is_named_once(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_text("model: batchnorm2d\n")
    with pytest.raises(CaseError) as refused:
        load_case(path, display_path="case.yaml")
    missing = re.findall(r"missing required field '(\w+)'", str(refused.value))
    assert sorted(missing) == sorted(["description", "bn", "mode", "input", "steps"])


def test_a_message_quotes_at_most_a_prefix_of_a_value(tmp_path):
    """A case file that is a symlink to another file (or a huge string) is not echoed whole into
    the terminal, results.json and the report."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET " + "x" * 10_000)
    (tmp_path / "case.yaml").symlink_to(secret)
    with pytest.raises(CaseError) as refused:
        load_case(tmp_path / "case.yaml", display_path="case.yaml")
    assert len(str(refused.value)) < 300 and "(10013 characters)" in str(refused.value)


def test_a_loader_bug_on_one_file_is_its_invalid_result_with_the_traceback(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    from harness.load import schema

    cases = tmp_path / "cases"
    write_case(cases, "a_good", EVAL_BN2D)
    write_case(cases, "b_trips_the_loader", EVAL_BN2D)
    write_case(cases, "c_good", EVAL_BN2D)
    real = schema.expand_grid

    def expand_with_a_bug(document, stem, source):
        if stem == "b_trips_the_loader":
            raise KeyError("a bug in the loader")
        return real(document, stem, source)

    monkeypatch.setattr(schema, "expand_grid", expand_with_a_bug)
    results = tmp_path / "results.json"
    assert cli.main(["run", str(cases), "--results", str(results), "--runners", "torch-eager"]) == 1
    by_id = {case["id"]: case for case in json.loads(results.read_text())["cases"]}
    assert [by_id[name]["outcome"] for name in ("a_good", "b_trips_the_loader", "c_good")] == ["passed", "invalid", "passed"]
    error = by_id["b_trips_the_loader"]["error"]
    assert "the harness failed to load this file (KeyError: 'a bug in the loader'); a bug in bn-harness" in error
    assert "Traceback (most recent call last)" in error


def test_a_long_field_pattern_is_quoted_shortened(tmp_path):
    path = tmp_path / "case.yaml"
    long_field = "module." + "x" * 3000
    path.write_text(
        EVAL_BN2D.replace("mode: eval\n", f"mode: eval\nexpect: [{{field: {long_field}, runners: [keras-torch], reason: r}}]\n")
    )
    with pytest.raises(CaseError) as refused:
        load_case(path, display_path="case.yaml")
    (line,) = [line for line in str(refused.value).splitlines() if "matches no field" in line]
    assert "(3009 characters)" in line and len(line) < 400


def assert_refused(tmp_path, base, old, new, expected):
    """`base` with `old` replaced by `new` is refused, its first problem starting with `expected`."""
    assert old in base
    path = tmp_path / "case.yaml"
    path.write_text(base.replace(old, new, 1))
    with pytest.raises(CaseError) as refused:
        load_case(path, display_path="case.yaml")
    assert str(refused.value).startswith("case.yaml" + expected), str(refused.value)
