"""Real-browser tests: headless Chromium (Debian's package) driven by Playwright.

- The report site `make reproduce` builds opens offline, every figure loads, the main table's
  numbers are on the page.
- JupyterLab started by `make lab` (from notebooks/, token, free loopback port) runs
  08_explore.ipynb under the smoke profile; a typed query plus Enter shows X-Pool's attention.

Both save screenshots under their pytest tmp dir. Where Playwright or the browser is absent they
skip with the reason; `make setup-browser` installs the browser. The browser may load only
file:// and loopback URLs (every other request is aborted and fails the test).

`python tests/test_browser.py` checks that Playwright can drive the browser (setup-browser).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("XPOOL_CHROMIUM", "/usr/bin/chromium")
# Keep Chromium from calling home (component updates, sync, metrics) during tests.
CHROMIUM_ARGS = ["--no-first-run", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--disable-default-apps", "--no-default-browser-check"]
if hasattr(os, "geteuid") and os.geteuid() == 0:
    CHROMIUM_ARGS.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
PROFILE = "smoke"
NOTEBOOKS = ["05_pooling_ablation", "07_figures", "08_explore"]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (it is in the dev extra: make setup)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (make setup-browser installs Debian's chromium)"
    return None


needs_browser = pytest.mark.skipif(browser_missing() is not None,
                                   reason=browser_missing() or "")


def _local_only(route) -> None:
    url = route.request.url
    if re.match(r"^(file:|data:|blob:|about:|https?://(127\.0\.0\.1|localhost)[:/])", url):
        route.continue_()
    else:
        _blocked.append(url)
        route.abort()


_blocked: list[str] = []


def launch(playwright):
    """Headless Chromium from CHROMIUM, with loopback and file URLs only."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.route("**/*", _local_only)
    return browser, context


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    """A project root for the smoke study: results/ of its own (05, 07, 08 executed there, the
    report built by reproduce's hook), data/ and cache/ shared with the checkout."""
    from xpool import reproduce as rp

    if browser_missing():
        pytest.skip(browser_missing())
    root = tmp_path_factory.mktemp("project")
    for name in ("data", "cache"):
        (ROOT / name).mkdir(exist_ok=True)
        (root / name).symlink_to(ROOT / name)
    lines: list[str] = []
    rc = rp.reproduce(PROFILE, results_dir=root / "results", notebooks_dir=ROOT / "notebooks",
                      only=NOTEBOOKS, log=lines.append)
    assert rc == 0, "\n".join(lines)
    return root


@needs_browser
def test_report_opens_offline_with_every_figure_and_the_main_table(smoke_root, tmp_path):
    from playwright.sync_api import sync_playwright

    site = smoke_root / "results" / PROFILE / "report"
    index = site / "index.html"
    assert index.is_file()
    table = pd.read_csv(smoke_root / "results" / PROFILE / "tables" / "pooling_ablation.csv")
    _blocked.clear()
    with sync_playwright() as p:
        browser, context = launch(p)
        page = context.new_page()
        page.goto(index.as_uri())
        page.wait_for_load_state("load")
        text = page.inner_text("body")
        assert "Reproduction check" in text and "Environment" in text
        # The environment the runs recorded: the table after the "Environment" heading.
        env_table = page.locator("h2:has-text('Environment') ~ table").first
        assert "torch" in env_table.inner_text()
        rows = page.eval_on_selector_all(
            "#main-table table tr", "trs => trs.map(r => [...r.cells].map(c => c.innerText))")
        cells = {(r[0], r[1]): r for r in rows[1:]}
        # The main table's numbers on the page: each pooling's R@1 and R@5 mean, per direction.
        for pooling, label in (("xpool", "X-Pool"), ("mean", "mean"),
                               ("self_attention", "self-attention")):
            for direction in ("t2v", "v2t"):
                runs = table[(table["pooling"] == pooling) & (table["direction"] == direction)]
                row = cells[(label, direction)]
                assert row[2].startswith(f"{runs['R1'].mean():.1f}"), (pooling, direction, row)
                assert row[3].startswith(f"{runs['R5'].mean():.1f}"), (pooling, direction, row)
        page.screenshot(path=str(tmp_path / "report_index.png"), full_page=True)
        figures = 0
        for name in ["index", "tables", *NOTEBOOKS]:
            page.goto((site / f"{name}.html").as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.complete, e.naturalWidth, e.src.slice(0, 40)])")
            broken = [src for complete, width, src in images if not complete or width == 0]
            assert not broken, (name, broken)
            figures += len(images)
            if name == "07_figures":
                assert len(images) >= 4  # attention, top-5, training curves, ablation
                page.screenshot(path=str(tmp_path / "report_07_figures.png"), full_page=False)
        assert figures >= 6
        browser.close()
    assert not _blocked, f"the report requested non-local URLs: {_blocked}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_browser
def test_lab_runs_the_explorer_and_a_typed_query_shows_attention(smoke_root, tmp_path):
    from playwright.sync_api import sync_playwright

    port, token = _free_port(), "xpool-browser-test"
    opts = (f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.port_retries=0 "
            f"--IdentityProvider.token={token}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        opts += " --allow-root"
    env = {**os.environ, "XPOOL_ROOT": str(smoke_root), "XPOOL_PROFILE": PROFILE,
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    log = open(tmp_path / "lab.log", "w")
    # Exactly `make lab` (its venv is this interpreter's), in its own process group so that the
    # server it starts is stopped with it.
    proc = subprocess.Popen(["make", "-s", "lab", f"VENV={sys.prefix}", f"LAB_OPTS={opts}"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"jupyter lab did not start: {(tmp_path / 'lab.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        _blocked.clear()
        with sync_playwright() as p:
            browser, context = launch(p)
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/08_explore.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook")
            # The notebook asks for the xpool kernel by name; wait until it is idle.
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-Toolbar-kernelName, "
                ".jp-KernelStatus, .jp-StatusBar-TextItem')].some(e => "
                "/Python \\(xpool\\)/.test(e.textContent))")
            page.wait_for_function(
                "() => /Idle/.test(document.querySelector('#jp-main-statusbar')?.textContent)",
                timeout=120_000)
            page.click("li.lm-MenuBar-item:has-text('Run')")
            page.click("li.lm-Menu-item:has-text('Run All Cells')")
            box = page.wait_for_selector(
                "input[placeholder='type a query and press Enter, or pick one']",
                timeout=180_000)
            # The explorer opens on the default query (the figures notebook's choice).
            page.wait_for_selector("text=showing:", timeout=60_000)
            query = "a red circle then a blue square"
            box.click()
            box.fill(query)
            box.press("Enter")
            page.wait_for_selector(f"text=showing: {query}", timeout=120_000)
            # A locator, not an element handle: the explorer re-renders its output after the
            # query, which can detach a handle taken a moment earlier (seen under load);
            # a locator finds the label again for each action.
            label = page.locator(
                ".xpool-figure-label:has-text('attention over the frames of the best match')").first
            label.wait_for(timeout=120_000)
            label.scroll_into_view_if_needed(timeout=60_000)
            # The attention figure: the image right after its label, loaded.
            size = page.wait_for_function(
                "() => { const l = [...document.querySelectorAll('.xpool-figure-label')]"
                ".find(e => /best match/.test(e.textContent));"
                " const area = l && l.closest('.jp-OutputArea-child');"
                " let n = area && area.nextElementSibling;"
                " const img = n && n.querySelector('img');"
                " return img && img.complete && img.naturalWidth > 0 ? img.naturalWidth : null; }",
                timeout=60_000).json_value()
            assert size > 100
            errors = page.locator(".jp-OutputArea-output[data-mime-type="
                                  "'application/vnd.jupyter.stderr']").all_inner_texts()
            assert not [e for e in errors if "Error" in e or "Traceback" in e], errors
            page.screenshot(path=str(tmp_path / "lab_explore.png"), full_page=False)
            browser.close()
        assert not _blocked, f"JupyterLab requested non-local URLs: {_blocked}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


if __name__ == "__main__":
    # make setup-browser: can Playwright drive this Chromium?
    why = browser_missing()
    if why:
        sys.exit(f"browser tests cannot run: {why}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b, _ = launch(p)
        print(f"Playwright drives Chromium {b.version} at {CHROMIUM}: the browser tests will run")
        b.close()
