"""The HTML report: rendered from a results record alone, and used in a real browser."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace

import pytest

from harness.core.records import CaseRecord, RunRecord, StatusRecord, VanishedRecord
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
FRESH = records.case(  # an unlisted divergence, a vanished expectation and a runner that does not apply
    "fresh",
    outcome="failed",
    description="a new divergence",
    steps=("step 0 (forward)",),
    runners={"torch-eager": "ok", "onnx-dynamo-ort": "ok", "keras-tensorflow": RunRecord("skipped", "does not apply")},
    comparisons=[
        records.comparison(
            "onnx-dynamo-ort",
            "module.bn.running_mean",
            0,
            "new",
            text="running_mean differs",
            attribution="conventions differ",
            nan_count=(0, 2),
        )
    ],
    vanished=(VanishedRecord(records.expectation("was there"), "onnx-dynamo-ort", "now agrees"),),
)
ONE_SKIPPED = records.case(
    "one_skipped",
    description="a stored-outputs runner that does not apply beside one that agrees",
    runners={"torch-eager": "ok", "onnx-torchscript-ort": "ok", "keras-tensorflow": RunRecord("skipped", "does not apply")},
    comparisons=[records.comparison("onnx-torchscript-ort", "output", 0, "agree")],
)
RESULTS = records.written(records.document(CALM, FLIP, FRESH, ONE_SKIPPED))


def _rows(html):
    return re.findall(r'<tr class="case-row" data-case="(\w+)" data-status="(\w+)"', html)


def test_the_summary_comes_first_and_says_what_the_cases_do_not_expect():
    html = render_report(RESULTS)
    assert html.index('id="summary"') < html.index('id="matrix"') < html.index('<details class="case"')
    summary = html[html.index('id="summary"') : html.index("</section>")]
    figures = dict((label, int(count)) for count, label in re.findall(r'<span class="figure">(\d+)</span> ([a-z ()]+?)</span>', summary))
    assert figures == {"new divergence(s)": 1, "vanished expectation(s)": 1, "unverified expectation(s)": 0, "known divergence(s)": 2}
    assert re.search(r'<li><span class="badge new">new</span> <a href="#case-fresh">fresh</a>', summary), (
        "the case that did not pass, linked"
    )


def test_against_a_baseline_the_summary_counts_what_changed():
    baseline = records.written(records.document(CALM, FLIP, replace(FRESH, comparisons=(), vanished=())))
    summary = render_report(RESULTS, baseline)
    summary = summary[summary.index('id="summary"') : summary.index("</section>")]
    assert "Against the baseline" in summary
    assert '<span class="figure">1</span> new divergence</span>' in summary and '<span class="figure">1</span> new case</span>' in summary
    assert "<li>new divergence: onnx-dynamo-ort module.bn.running_mean after step 0 in fresh</li>" in summary


def test_the_matrix_puts_the_worst_first_and_shows_every_cell_for_what_it_is():
    html = render_report(RESULTS)
    assert _rows(html) == [("fresh", "new"), ("flip", "known"), ("calm", "agree"), ("one_skipped", "agree")], (
        "worst first; a runner that does not apply beside one that agrees leaves the case agree, not skipped"
    )
    assert 'title="onnx-dynamo-ort: TorchExportError: boom (export_failed, as the case expects)">known failure</td>' in html
    assert (
        '<td class="cell reference" data-runner="torch-eager" title="torch-eager: the reference the others are compared with">ref</td>'
        in html
    )
    assert 'title="keras-tensorflow: not a runner of this case">\u2013</td>' in html, "a runner a case does not have is marked, not blank"
    for control in ('class="status-filter" value="agree"', 'id="runner-filter"', 'id="class-filter"', 'id="text-filter"'):
        assert control in html
    assert "<option>state changed by a step</option>" in html


def test_each_case_has_one_mode_table_its_charts_links_and_commands():
    html = render_report(RESULTS)
    flip = html[html.index('<details class="case" id="case-flip"') : html.index('<details class="case" id="case-calm"')]
    assert flip.count('<table class="modes">') == 1, "one table, the runners as columns"
    assert '<td class="flag mode-differs">T</td>' in flip, "the flipped flag is marked against the reference"
    assert flip.count('<rect class="bar"') == len(CHANNEL_DIFFS) and ">atol 1e-05</text>" in flip and ">0.17</text>" in flip
    assert '<a href="https://github.com/pytorch/pytorch/issues/52867">' in flip
    assert "<pre>python -m harness repro cases/flip.yaml</pre>" in flip and "<pre>python -m pytest cases/flip.yaml::flip</pre>" in flip
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert html.count("<pre>python -m harness repro ") == 2, "only the cases with a diverging exporter"
    fresh = html[html.index('<details class="case" id="case-fresh"') : html.index('<details class="case" id="case-flip"')]
    assert "<pre>  - field: module.bn.running_mean\n    step: 0\n    runners: [onnx-dynamo-ort]\n" in fresh, (
        "the expect snippet of a new divergence"
    )
    assert '<span class="badge nonfinite" title="non-finite elements, torch-eager / onnx-dynamo-ort">NaN 0 / 2</span>' in fresh


def test_what_needs_reading_is_open_and_what_is_known_is_collapsed():
    html = render_report(RESULTS)
    opened = dict(re.findall(r'<details class="case" id="case-(\w+)"[^>]*?( open)?>', html))
    assert opened == {"fresh": " open", "flip": "", "calm": "", "one_skipped": ""}
    divergences = re.findall(r'<details class="divergence"[^>]*?( open)?>\s*<summary><span class="badge (\w+)">', html)
    assert sorted(divergences) == [("", "known"), ("", "known"), (" open", "new")]


def test_a_case_that_did_not_load_or_run_shows_as_such():
    """Not as a runner's run_failed, and not as a blank row: no runner ran it."""
    broken = [
        CaseRecord("typo", "cases/typo.yaml", "invalid", error="cases/typo.yaml:3: bn.eps: ..."),
        CaseRecord("bug", "cases/bug.yaml", "error", error="Traceback ..."),
    ]
    html = render_report(records.written(records.document(CALM, FLIP, *broken)))
    assert _rows(html)[:2] == [("typo", "invalid"), ("bug", "error")]
    assert 'colspan="3" title="cases/typo.yaml:3: bn.eps: ...">invalid: cases/typo.yaml:3: bn.eps: ...</td>' in html
    assert 'class="status-filter" value="invalid"' in html and 'class="status-filter" value="error"' in html
    assert 'value="run_failed"' not in html


def test_the_full_environment_closes_the_report():
    html = render_report(RESULTS)
    environment = html[html.index('<h2 id="environment">') :]
    assert all(f"<td>{package}</td><td>{version}</td>" in environment for package, version in records.ENVIRONMENT.versions.items())
    first_line = " ".join(html[html.index("</h1>") : html.index('id="summary"')].split())
    assert "torch 2.13.0, onnxruntime 1.32.0, keras not installed" in first_line, "the versions that matter, at the top"


def test_the_report_is_self_contained(tmp_path):
    write_report(RESULTS, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=", html), "no fetches: the readers may be offline"
    assert not re.search(r"url\(|@import", html)


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
EVERY_STATUS = records.written(
    records.document(
        *(
            records.case(f"case_{status}", runners={"torch-eager": "ok", "onnx-torchscript-ort": status if status != "agree" else "ok"})
            for status in ("agree", "skipped", "crashed", "timed_out", "run_failed", "export_failed")
        ),
        CALM,
        FLIP,
        FRESH,
        ONE_SKIPPED,
        replace(FRESH, case_id="only_vanished", comparisons=()),
        CaseRecord("typo", "cases/typo.yaml", "invalid", error="cases/typo.yaml:3: bn.eps: " + "a long message " * 30),
        CaseRecord("bug", "cases/bug.yaml", "error", error="Traceback ..."),
        *(records.case(f"a_case_with_a_long_grid_id[model_batchnorm2d-shape_{n}x3x4x4-momentum_0.1-training_eval]") for n in range(40)),
    )
)


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

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
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _open(browser, tmp_path, results):
    write_report(results, tmp_path / "report.html")
    browser.get((tmp_path / "report.html").as_uri())


def test_in_a_real_browser_the_filters_choose_cases_by_status_runner_and_text(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _open(browser, tmp_path, RESULTS)
    rows = {row.get_attribute("data-case"): row for row in browser.find_elements(By.CSS_SELECTOR, "tr.case-row")}
    assert set(rows) == {"calm", "flip", "fresh", "one_skipped"} and all(row.is_displayed() for row in rows.values())
    shown = lambda: {name for name, row in rows.items() if row.is_displayed()}  # noqa: E731
    browser.find_element(By.CSS_SELECTOR, '.status-filter[value="agree"]').click()
    assert shown() == {"flip", "fresh"} and browser.find_element(By.ID, "shown-count").text == "2 case(s) shown"
    browser.find_element(By.CSS_SELECTOR, '.status-filter[value="agree"]').click()
    Select(browser.find_element(By.ID, "runner-filter")).select_by_visible_text("torch-eager")
    assert shown() == set(rows), "the reference: every case that ran it (it showed none)"
    Select(browser.find_element(By.ID, "runner-filter")).select_by_visible_text("onnx-torchscript-ort")
    assert shown() == {"calm", "flip", "one_skipped"}
    browser.find_element(By.CSS_SELECTOR, '.status-filter[value="agree"]').click()
    assert shown() == {"flip"}, "with a runner chosen, the boxes apply to its cell"


def test_in_a_real_browser_the_layout_holds(browser, tmp_path):
    """Sticky matrix header and case column, no clipped text, a colour for every status, a copy
    that works on a file:// page; screenshots are left in the test's folder to look at."""
    from selenium.webdriver.common.by import By

    _open(browser, tmp_path, EVERY_STATUS)
    browser.save_screenshot(str(tmp_path / "landing.png"))
    assert (tmp_path / "landing.png").read_bytes()[:4] == b"\x89PNG"
    top_of = "return arguments[0].getBoundingClientRect()[arguments[1]]"
    wrap = browser.find_element(By.ID, "matrix-wrap")
    header = browser.find_element(By.CSS_SELECTOR, "table.matrix thead th.runner")
    first_case = browser.find_element(By.CSS_SELECTOR, "table.matrix tbody td.case-name")
    browser.execute_script(
        "arguments[0].scrollIntoView(); window.scrollBy(0, -80); arguments[0].scrollTop = 300; arguments[0].scrollLeft = 400", wrap
    )
    browser.save_screenshot(str(tmp_path / "matrix-scrolled.png"))
    assert (
        browser.execute_script("return arguments[0].scrollTop", wrap) > 0
        and browser.execute_script("return arguments[0].scrollLeft", wrap) >= 0
    )
    assert abs(browser.execute_script(top_of, header, "top") - browser.execute_script(top_of, wrap, "top")) <= 2, (
        "the header stays in place"
    )
    assert abs(browser.execute_script(top_of, first_case, "left") - browser.execute_script(top_of, wrap, "left")) <= 2, (
        "the case column stays"
    )

    clipped = browser.execute_script(
        """return [...document.querySelectorAll('pre, p, li, summary, td.whole-row')]
             .filter(e => e.offsetParent !== null && getComputedStyle(e).overflow !== 'hidden' && e.scrollWidth > e.clientWidth + 1)
             .map(e => e.tagName + ': ' + e.textContent.slice(0, 60))"""
    )
    assert clipped == [], "a text box wider than its box is clipped"
    colours = browser.execute_script(
        """const seen = {};
           document.querySelectorAll('td.cell, td.whole-row').forEach(cell => {
             const status = [...cell.classList].find(name => name !== 'cell' && name !== 'whole-row');
             seen[status] = getComputedStyle(cell).backgroundColor; });
           return seen;"""
    )
    from harness.report.render import SEVERITY

    assert set(colours) >= {*SEVERITY, "reference", "absent"}, sorted(colours)
    assert all(colour not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)") for colour in colours.values()), colours
    assert len({colours[status] for status in ("agree", "known", "new", "skipped", "crashed", "reference")}) == 6, "told apart"

    command = browser.find_element(By.CSS_SELECTOR, "details.case[open] .commands button.copy")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", command)
    command.click()
    assert (
        browser.execute_script("return window.getSelection().toString()") == command.find_element(By.XPATH, "preceding-sibling::pre").text
    )
    browser.save_screenshot(str(tmp_path / "case.png"))


def test_a_grid_points_repro_command_names_the_point_quoted_for_the_shell():
    from harness.report.render import _repro_command

    point = records.case("sweep[eps_0.001]", file="cases/sweep.yaml")
    assert _repro_command(point, {"onnx-torchscript-ort"}) == "python -m harness repro 'cases/sweep.yaml::sweep[eps_0.001]'"
    plain = records.case("sweep", file="cases/sweep.yaml")
    assert _repro_command(plain, {"onnx-torchscript-ort"}) == "python -m harness repro cases/sweep.yaml"
