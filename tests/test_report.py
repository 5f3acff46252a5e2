"""The HTML report: rendered from a results record alone, and used in a real browser."""

from __future__ import annotations

import re
import shutil

import pytest

from harness.core.records import CaseRecord, RunRecord, StatusRecord
from harness.report.render import render_report, write_report
from tests import records

CHANNEL_DIFFS = [0.0, 0.17, 0.03]
FLIPPED = records.comparison(
    "onnx-torchscript-ort",
    "module.bn.training",
    1,
    "known",
    records.expectation("recursive model.train()", "https://github.com/pytorch/pytorch/issues/52867"),
    reference_value=False,
    other_value=True,
    text="module.bn.training after step 1 ... differ",
    attribution="state changed by a step",
    step_label="step 1 (export(training=eval))",
)
STEPPED = records.comparison(
    "onnx-torchscript-ort",
    "module.bn.running_var",
    1,
    "known",
    records.expectation("stepped"),
    text="module.bn.running_var ... not close!",
    attribution="state changed by a step",
    channel_abs_diff=tuple(CHANNEL_DIFFS),
    atol=1e-05,
)
FLIP = records.case(
    "flip",
    description="<script>alert(1)</script> export flips bn",
    steps=("step 0 (forward)", "step 1 (export(training=eval))"),
    runners={
        "torch-eager": "ok",
        "onnx-torchscript-ort": "ok",
        "onnx-dynamo-ort": RunRecord("export_failed", "TorchExportError: boom"),
    },
    statuses=(StatusRecord("onnx-dynamo-ort", "export_failed", "TorchExportError: boom", True),),
    comparisons=[
        FLIPPED,
        STEPPED,
        records.comparison("onnx-torchscript-ort", "module.bn.training", 0, "agree", reference_value=False, other_value=False),
    ],
)
CALM = records.case(
    "calm",
    description="all agree",
    steps=("step 0 (forward)",),
    comparisons=[records.comparison("onnx-torchscript-ort", "output", 0, "agree")],
)
RESULTS = records.written(records.document(CALM, FLIP))


def test_the_report_holds_the_matrix_filters_cases_plots_and_modes():
    html = render_report(RESULTS)
    rows = re.findall(r'<tr class="case-row" data-case="(\w+)" data-status="(\w+)"', html)
    assert rows == [("calm", "agree"), ("flip", "known")], "an expected export failure counts as known"
    assert 'title="onnx-dynamo-ort: TorchExportError: boom">export_failed (known)</td>' in html
    for control in ('class="status-filter" value="agree"', 'id="runner-filter"', 'id="class-filter"', 'id="text-filter"'):
        assert control in html
    assert "<option>state changed by a step</option>" in html
    assert html.count('<rect class="bar"') == len(CHANNEL_DIFFS)
    assert '<a href="https://github.com/pytorch/pytorch/issues/52867">' in html
    assert '<td class="mode-differs">T</td>' in html, "the flipped flag is highlighted against the reference"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert html.count("<code>python -m harness repro ") == 1, "only the case with a diverging exporter"
    assert "<code>python -m harness repro cases/flip.yaml</code>" in html


def test_a_case_that_did_not_load_or_run_shows_as_such():
    """Not as a runner's run_failed: no runner ran it."""
    broken = [
        CaseRecord("typo", "cases/typo.yaml", "invalid", error="cases/typo.yaml:3: bn.eps: ..."),
        CaseRecord("bug", "cases/bug.yaml", "error", error="Traceback ..."),
    ]
    html = render_report(records.written(records.document(CALM, FLIP, *broken)))
    rows = re.findall(r'<tr class="case-row" data-case="(\w+)" data-status="(\w+)"', html)
    assert rows[-2:] == [("typo", "invalid"), ("bug", "error")]
    assert 'class="status-filter" value="invalid"' in html and 'class="status-filter" value="error"' in html
    assert 'value="run_failed"' not in html


def test_the_report_is_self_contained(tmp_path):
    write_report(RESULTS, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=", html), "no fetches: the readers may be offline"
    assert not re.search(r"url\(|@import", html)


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
)
def test_in_a_real_browser_a_filter_click_hides_the_agreeing_cases(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    write_report(RESULTS, tmp_path / "report.html")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        browser.get((tmp_path / "report.html").as_uri())
        rows = {row.get_attribute("data-case"): row for row in browser.find_elements(By.CSS_SELECTOR, "tr.case-row")}
        assert set(rows) == {"calm", "flip"} and all(row.is_displayed() for row in rows.values()), "the matrix renders"
        browser.find_element(By.CSS_SELECTOR, '.status-filter[value="agree"]').click()
        assert not rows["calm"].is_displayed() and rows["flip"].is_displayed()
        assert browser.find_element(By.ID, "shown-count").text == "1 case(s) shown"
        assert browser.save_screenshot(str(tmp_path / "report.png")) and (tmp_path / "report.png").stat().st_size > 0
    finally:
        browser.quit()


def test_a_grid_points_repro_command_names_the_point_quoted_for_the_shell():
    from harness.report.render import _repro_command

    point = records.case("sweep[eps_0.001]", file="cases/sweep.yaml")
    assert _repro_command(point, {"onnx-torchscript-ort"}) == "python -m harness repro 'cases/sweep.yaml::sweep[eps_0.001]'"
    plain = records.case("sweep", file="cases/sweep.yaml")
    assert _repro_command(plain, {"onnx-torchscript-ort"}) == "python -m harness repro cases/sweep.yaml"
