"""The study report rendered in headless Chromium: a screenshot, no console errors, every image
loaded, and the headline numbers the browser reads equal to ``headline.json`` and the tables.

The check injects one script at the top of a copy of the page: it records ``window.onerror``,
failed resource loads and ``console.error`` calls, and on ``load`` writes every image's
``naturalWidth`` and every ``data-key`` number into a ``<pre>`` that ``--dump-dom`` returns.
Chromium's own console log (``--enable-logging=stderr``) is read too. Negative controls: a page
with a broken image and a page with a script error fail the check.

Skipped, with the reason, where no Chromium binary exists (Debian: ``apt-get install chromium``;
``.ci/run`` installs it when it runs as root).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from report_fixtures import shared_study
from wav2brain.reports.study_report import build_report, read_headline

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 180
"""Seconds one Chromium call may take (a loaded 2-core machine starts it in several)."""

CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  window.__errors.push(t && t !== window ? "failed to load " + (t.src || t.href || t.tagName)
                                         : "error: " + e.message);
}, true);
var __consoleError = console.error;
console.error = function () {
  window.__errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
  __consoleError.apply(console, arguments);
};
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (i) {
    return {file: i.getAttribute("data-file") || i.src.slice(0, 60), complete: i.complete,
            width: i.naturalWidth};
  });
  var keys = {};
  document.querySelectorAll("[data-key]").forEach(function (e) {
    keys[e.getAttribute("data-key")] = {value: JSON.parse(e.getAttribute("data-value")),
                                        text: e.textContent};
  });
  var pre = document.createElement("pre");
  pre.id = "render-check";
  pre.textContent = JSON.stringify({errors: window.__errors, images: images, keys: keys});
  document.body.appendChild(pre);
});
</script>"""


def browser() -> str | None:
    """The first Chromium-like binary on PATH."""
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = browser()
    if found is None:
        pytest.skip(
            f"no Chromium binary ({', '.join(BROWSERS)}) on PATH: the render test needs one "
            "(Debian: apt-get install chromium; .ci/run installs it when run as root)"
        )
    return found


def _run(binary: str, page: Path, profile: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *flags,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def render_check(binary: str, page: Path, work: Path) -> dict:
    """Load ``page`` in Chromium; return errors, images and data-key numbers as it saw them."""
    text = page.read_text(encoding="utf-8")
    checked = work / f"checked-{page.name}"
    checked.write_text(text.replace("<head>", "<head>" + CHECK_SCRIPT, 1), encoding="utf-8")
    result = _run(
        binary, checked, work / "profile-dom", "--dump-dom", "--virtual-time-budget=20000"
    )
    match = re.search(r'<pre id="render-check">(.*?)</pre>', result.stdout, flags=re.S)
    if match is None:
        raise AssertionError(
            f"Chromium returned no check record (exit {result.returncode}): {result.stderr[-2000:]}"
        )
    record = json.loads(html.unescape(match.group(1)))
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    record["errors"] += [line for line in console if "Uncaught" in line or "rror" in line]
    return record


def problems(record: dict) -> list[str]:
    """Everything wrong in a render record: errors, and images that did not load."""
    found = list(record["errors"])
    found += [
        f"image {i['file']} did not load"
        for i in record["images"]
        if not i["complete"] or i["width"] <= 0
    ]
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    study = shared_study(tmp_path_factory)
    return build_report(study, tmp_path_factory.mktemp("render") / "report.html")


def test_report_renders(chromium: str, report: Path, tmp_path: Path):
    record = render_check(chromium, report, tmp_path)
    assert problems(record) == []
    assert len(record["images"]) >= 10
    headline = dict(read_headline(report.with_suffix("")))
    assert {k: v["value"] for k, v in record["keys"].items()} == headline
    subjects = record["keys"]["dataset.subjects"]
    assert subjects["text"] == str(headline["dataset.subjects"])


def test_screenshot(chromium: str, report: Path, tmp_path: Path):
    import matplotlib.image

    shot = tmp_path / "report.png"
    result = _run(
        chromium,
        report,
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1200,2400",
        "--hide-scrollbars",
    )
    assert shot.is_file(), result.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    assert pixels[..., :3].std() > 0.05  # not a blank page
    top = pixels[:40, :, :3].reshape(-1, 3).mean(axis=0)
    assert top[0] > 0.5 > top[1]  # the red SIMULATED banner across the top


def page_with(tmp_path: Path, body: str) -> Path:
    """A minimal HTML page holding ``body``."""
    page = tmp_path / "page.html"
    page.write_text(
        f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{body}</body></html>'
    )
    return page


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('<img src="data:image/png;base64,bm90IGEgcG5n" data-file="broken.png">', "broken.png"),
        ("<p>x</p><script>undefinedFunction();</script>", "undefinedFunction"),
    ],
    ids=["broken image", "script error"],
)
def test_a_faulty_page_fails_the_check(chromium: str, tmp_path: Path, body: str, named: str):
    """Negative controls: an image whose data is not a PNG, a script that throws."""
    found = problems(render_check(chromium, page_with(tmp_path, body), tmp_path))
    assert any(named in p for p in found), found


def test_clean_page_passes_the_check(chromium: str, tmp_path: Path):
    """The check itself raises nothing on a page without faults (control of the controls)."""
    page = page_with(tmp_path, '<span data-key="a" data-value="1.5">1.5</span>')
    record = render_check(chromium, page, tmp_path)
    assert problems(record) == []
    assert record["keys"] == {"a": {"value": 1.5, "text": "1.5"}}
