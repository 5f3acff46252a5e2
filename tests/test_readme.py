"""The documentation's checkable claims, each read from the text that makes it: the README's small
case and the full example of docs/case-format.md are valid cases (the small one the bundled case
it quotes), docs/case-format.md's table of the bundled library counts what is in cases/, and every
relative link in README.md and docs/*.md reaches a file (and a heading, for an #anchor)."""

from __future__ import annotations

import re
from pathlib import Path

from harness.load.schema import load_cases

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CASE_FORMAT = ROOT / "docs" / "case-format.md"
FORUM_CASE = ROOT / "cases" / "01_export_changes_mode" / "forum_thread_export_flips_child_to_train.yaml"


def section(path: Path, heading: str) -> str:
    """The text under `heading` (a whole line, `## ...`) up to the next heading of its level or above."""
    text = path.read_text()
    level = heading.split(" ", 1)[0]
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^#{{1,{len(level)}}} |\Z)", text, re.S | re.M)
    assert match, f"{path.name} has no section {heading!r}"
    return match.group(1)


def first_yaml_block(text: str) -> str:
    block = re.search(r"^```yaml\n(.*?)^```", text, re.S | re.M)
    assert block, "no ```yaml block in the section"
    return block.group(1)


def test_the_full_example_in_the_case_format_loads(tmp_path):
    example = first_yaml_block(section(CASE_FORMAT, "## A complete example"))
    path = tmp_path / "readme_example.yaml"
    path.write_text(example)
    cases = load_cases(path)
    assert [case.case_id for case in cases] == [
        f"readme_example[momentum_{momentum}-opset_{opset}]" for momentum in ("0.1", "None") for opset in (9, 18)
    ]
    case = cases[-1]
    assert case.model == "forum_net" and len(case.steps) == 9 and case.bn.momentum is None
    assert [step.label() for step in case.steps] == [
        "forward",
        "export(training=eval, opset=18)",
        "forward(input shape=8x3x4x4)",
        "train_step",
        "train_step",
        "train_step(input channel_offset)",
        "set_mode({bn: train})",
        "set_state(bn.running_mean, bn.running_var)",
        "reset_running_stats",
    ]
    assert case.steps[2].input.shape == (8, 3, 4, 4) and case.steps[5].input.channel_offset == (2.0, 2.0, 2.0)
    assert case.steps[1].export.opset == 18 and case.steps[1].export.graph_state == "as_exported"
    assert [expectation.status for expectation in case.expectations] == [None, "export_failed"]
    assert [len(other.expectations) for other in cases[:2]] == [1, 1], "where keeps the second at momentum=None only"
    assert case.bn.eps == 1e-5 and case.input.constant_channels == ((2, 0.5),) and case.model_options == (("bias", False),)
    assert case.bn_by_path == (("bn", (("eps", 0.001),)),) and case.model_spec.root["layers"][1]["bn"] == {"eps": 0.001}
    assert case.timeout_s == 600 and case.runners == ("torch-eager", "onnx-torchscript-ort")
    assert case.keras.running_var == "unbiased" and case.keras.training_argument == "explicit" and case.keras.layout == "channels_last"
    assert (case.keras.train_with, case.keras.fit_batch_size) == ("fit", 32)
    assert case.tolerance.by_dtype == (("float32", 1e-5, 1e-5),) and case.tolerance.magnitude_rtol == (("float32", 1e-7),)


def test_the_small_case_in_the_readme_loads_and_is_the_bundled_one(tmp_path):
    example = first_yaml_block(section(README, "## A small case"))
    path = tmp_path / FORUM_CASE.name
    path.write_text(example)
    (case,) = load_cases(path)
    (bundled,) = load_cases(FORUM_CASE)
    assert case.case_id == "forum_thread_export_flips_child_to_train" and case.model == "forum_net"
    assert case.mode.assignments == (("", True), ("bn", False)), "the parent in train mode, its bn child in eval"
    assert [step.label() for step in case.steps] == ["forward", "export(training=eval)", "forward"]
    assert [expectation.steps for expectation in case.expectations] == [(1, 2), (2,)]
    # The README quotes the bundled case: the same case, only its prose shortened.
    assert (case.model, case.bn, case.mode, case.input, case.steps) == (
        bundled.model,
        bundled.bn,
        bundled.mode,
        bundled.input,
        bundled.steps,
    )
    quoted = [(e.fields, e.steps, e.status, e.runners, e.link) for e in case.expectations]
    assert quoted == [(e.fields, e.steps, e.status, e.runners, e.link) for e in bundled.expectations]


def test_the_table_of_bundled_classes_counts_the_library():
    text = section(CASE_FORMAT, "## The bundled cases")
    rows = re.findall(r"^\| `(\d\d_\w+)/`[^|]*\| (\d+) \| (\d+) \|", text, re.M)
    library = ROOT / "cases"
    folders = sorted(path.name for path in library.iterdir() if path.is_dir())
    assert [row[0] for row in rows] == folders, "one row per class folder, in order"
    for folder, files, cases in rows:
        paths = sorted((library / folder).glob("*.yaml"))
        assert (len(paths), sum(len(load_cases(path)) for path in paths)) == (int(files), int(cases)), folder
    totals = re.search(r"(\d+) files, (\d+) cases", text)
    assert totals and (int(totals[1]), int(totals[2])) == (sum(int(r[1]) for r in rows), sum(int(r[2]) for r in rows))


def test_the_own_model_case_in_the_readme_is_the_bundled_backbone_case_without_its_expectations(tmp_path):
    """The README's few lines, beside a copy of the bundled models file, build the bundled case's
    model, modes and steps; the quoted first-parting line is what that case names."""
    import shutil

    import pytest

    pytest.importorskip("torch")
    text = section(README, "## Your own model")
    (tmp_path / "pyproject.toml").write_text("")
    shutil.copy(ROOT / "cases" / "20_user_models" / "models.py", tmp_path / "models.py")
    path = tmp_path / "backbone.yaml"
    path.write_text(first_yaml_block(text))
    (case,) = load_cases(path)
    (bundled,) = load_cases(ROOT / "cases" / "20_user_models" / "backbone_frozen_batchnorms_export.yaml")
    assert (case.model, case.mode, case.input, case.steps, case.structure) == (
        bundled.model,
        bundled.mode,
        bundled.input,
        bundled.steps,
        bundled.structure,
    )
    assert case.mode.assignments[0] == ("", True) and {path for path, training in case.mode.assignments if not training} == {
        "stem.1",
        "stages.0.1",
        "stages.1.1",
    }
    quoted = re.search(r"^First parting BatchNorm: (.*)$", text, re.M)
    assert quoted and quoted.group(1).startswith("stem.1 in onnx-torchscript-ort") and "module.stem.1.training" in quoted.group(1)
    assert {expectation.fields[0] for expectation in bundled.expectations} >= {"module.stem.1.training"}


# ---- links -------------------------------------------------------------------------------------

FENCE = re.compile(r"^```.*?^```[^\n]*$", re.S | re.M)
LINK = re.compile(r"\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def github_slugs(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file: the heading's text lowercased,
    markup and punctuation other than hyphens and underscores dropped, spaces as hyphens; a
    repeated slug gets -1, -2, ..."""
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", path.read_text()).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


def relative_links(path: Path) -> list[str]:
    """The targets of every markdown link in `path` outside code blocks, but web and mail links."""
    targets = LINK.findall(FENCE.sub("", path.read_text()))
    return [target for target in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)]


def test_github_slugs_follow_githubs_rules(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n## results.json\n### Keras: the mapping is data\n```sh\n# not a heading\n```\n## Title\n")
    assert github_slugs(page) == {"title", "resultsjson", "keras-the-mapping-is-data", "title-1"}


def test_every_relative_link_in_the_docs_reaches_its_target():
    checked = 0
    broken = []
    for page in markdown_files():
        for target in relative_links(page):
            file_part, _, anchor = target.partition("#")
            destination = (page.parent / file_part).resolve() if file_part else page
            checked += 1
            if not destination.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}: no file {file_part}")
            elif anchor and destination.suffix == ".md" and anchor not in github_slugs(destination):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no heading #{anchor} in {destination.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)
    assert checked >= 20, f"only {checked} relative links found: the link pattern no longer reads the docs"


def test_the_readme_links_every_page_of_the_docs():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)}
    pages = set((ROOT / "docs").glob("*.md"))
    assert pages and {page.resolve() for page in pages} <= linked, "the README's 'Where to read more' names every docs/ page"
