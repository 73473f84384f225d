"""The benchmark report opened as a reader opens it: report.html rendered by headless Chromium (Debian's
``chromium`` through Playwright; no browser download), every figure loaded, no broken link, the verdict
table first; a screenshot of the first screen is written beside the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faceveil.bench.report import write_report

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def page(browser):
    return browser.new_page(viewport={"width": 1400, "height": 900})


def test_committed_run_renders_in_a_browser(page, tmp_path):
    """The report of the committed template-inversion run (results/template-inversion/results.json,
    regenerated here: tables and the privacy-utility plot)."""
    results = json.loads((ROOT / "results" / "template-inversion" / "results.json").read_text())
    write_report(results, {}, tmp_path)
    html = tmp_path / "report.html"
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(html.as_uri())
    assert not errors
    assert page.title() == "faceveil report"
    # every figure is embedded and decodes; nothing is reported missing; no link leads nowhere
    imgs = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete && e.naturalWidth > 0])")
    assert imgs and all(ok for _, ok in imgs), imgs
    assert page.locator(".missing").count() == 0
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    assert all(h.startswith(("#", "http", "data:")) for h in hrefs), hrefs
    # the verdict table comes first, with a verdict per defense setting
    first = page.locator("table").first
    assert "verdict" in first.locator("tr").first.inner_text().lower()
    body = first.inner_text()
    assert "none (embedding)" in body and "broken" in body
    assert page.locator("h2").first.inner_text().startswith("Verdicts")
    shot = tmp_path / "report-first-screen.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
