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
from tests.tiny_cases import EVAL_BN2D, write_case

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
    assert capsys.readouterr().out.rstrip().endswith(f"2 passed, 0 failed, 0 skipped, {len(hostile)} invalid, 0 error")
