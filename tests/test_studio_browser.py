"""`ganray studio` in its own process, driven by a real headless Chromium (Debian's /usr/bin/chromium
through /usr/bin/chromedriver, installed by scripts/install_test_deps.sh): the page loads, pages,
filters, shows a face's detail, and shows a corrupt shard and an unknown page as readable errors."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from studio_output import FACES, studio_output

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PAGE = 10
KEY = "studio-browser-key"
HUMAN_EVAL = "http://127.0.0.1:8765"


class Studio:
    """`ganray studio OUT --port 0` as a child process; .url once it listens."""

    def __init__(self, out: Path, *args: str, key: str | None = None):
        environ = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        environ.pop("GANRAY_API_KEY", None)
        if key is not None:
            environ["GANRAY_API_KEY"] = key
        self.proc = subprocess.Popen([sys.executable, "-m", "ganray.cli", "studio", str(out), "--port", "0", *args],
                                     env=environ, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines = []
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.search(r"open (http://[^/ ]+/)", line)
            if found:
                self.url = found.group(1)
                threading.Thread(target=self.lines.extend, args=(self.proc.stdout,), daemon=True).start()
                return
        raise AssertionError(f"the studio did not start:\n{''.join(self.lines)}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def out(ray_session, tmp_path_factory) -> Path:
    return studio_output(tmp_path_factory)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium. Missing browser = FAILED, not skipped: CI must prove the page works."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} not found: run `bash scripts/install_test_deps.sh` "
                    "(the README's test command does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="ganray-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1000,800", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager (which would download a driver) never runs.
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.implicitly_wait(0)
        yield driver
        driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, what: str, timeout: float = 30):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout).until(condition)
    except TimeoutException:
        status = driver.find_element("id", "status").text
        raise AssertionError(f"timed out waiting for {what}; the page's status line: {status!r}") from None


def grid(driver) -> list:
    """The faces shown, once the page has drawn them: (index, caption) each."""
    wait(driver, lambda d: d.find_element("id", "grid").get_attribute("data-ready") in ("true", "error"), "the grid")
    return [(int(f.get_attribute("data-index")), f.text) for f in driver.find_elements("css selector", "#grid .face")]


def test_the_page_loads_pages_filters_and_shows_a_face(out, browser):
    from selenium.webdriver.support.ui import Select

    studio = Studio(out, "--page-size", str(PAGE), "--human-eval", HUMAN_EVAL, key=KEY)
    try:
        browser.get(studio.url)  # the page asks for the key once, then every call sends it
        wait(browser, lambda d: d.find_element("id", "key-form").is_displayed(), "the API key form")
        browser.find_element("id", "key").send_keys(KEY)
        browser.find_element("css selector", "#key-form button").click()
        first = grid(browser)
        assert [i for i, _ in first] == list(range(PAGE))
        assert browser.find_element("id", "count").text in (str(FACES), f"{FACES}+")
        link = browser.find_element("id", "human-eval")  # the human pairwise page, not a copy of it
        assert link.is_displayed() and link.get_attribute("href") == HUMAN_EVAL + "/"
        assert all(browser.execute_script("return arguments[0].naturalWidth", img) == 32
                   for img in browser.find_elements("css selector", "#grid img"))
        browser.find_element("id", "next").click()
        wait(browser, lambda d: d.find_element("id", "page-label").text.startswith("page 2"), "page 2")
        assert [i for i, _ in grid(browser)] == list(range(PAGE, 2 * PAGE))

        # A filter: the options fill in from /api/facets; every face shown carries the value.
        select = wait(browser, lambda d: d.find_element("id", "filter-label_age_group")
                      if len(d.find_elements("css selector", "#filter-label_age_group option")) > 1 else False,
                      "the label_age_group filter's values")
        Select(select).select_by_value("senior")
        browser.find_element("id", "apply").click()
        wait(browser, lambda d: d.find_element("id", "page-label").text.startswith("page 1"), "the filtered page")
        shown = grid(browser)
        assert shown and all("senior" in caption for _, caption in shown)
        assert browser.find_element("id", "count").text == str(len(shown))

        # A face's detail: its row, with its seed.
        browser.find_elements("css selector", "#grid .face")[0].click()
        wait(browser, lambda d: d.find_element("id", "detail").is_displayed(), "the detail view")
        cells = {r.get_attribute("data-column"): r.find_element("tag name", "td").text
                 for r in browser.find_elements("css selector", "#detail-row tr")}
        assert cells["label_age_group"] == "senior" and cells["seed"].isdigit()
        assert browser.find_element("id", "detail-index").text == f"{shown[0][0]} (seed {cells['seed']})"
        browser.find_element("id", "close-detail").click()
        browser.find_element("id", "tab-charts").click()
        wait(browser, lambda d: d.execute_script(
            "const i = document.getElementById('balance-chart'); return !i.hidden && i.complete && i.naturalWidth > 0"),
            "the balance chart")
        assert browser.find_element("id", "status").text == ""
    finally:
        studio.stop()


def test_a_corrupt_shard_and_an_unknown_page_read_as_errors(out, browser, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "data" / "train-00001-of-00006.parquet").write_bytes(b"\0" * 64)
    studio = Studio(copy, "--page-size", "5")
    try:
        browser.get(studio.url)
        grid(browser)
        assert "train-00001-of-00006.parquet cannot be read" in browser.find_element("id", "status").text
        browser.find_element("id", "next").click()  # page 2: faces 5..9, in the corrupt shard
        wait(browser, lambda d: d.find_element("id", "grid").get_attribute("data-ready") == "error", "the error")
        status = browser.find_element("id", "status").text
        assert "train-00001-of-00006.parquet cannot be read" in status and "Traceback" not in status
        browser.get(studio.url + "no/such/page")
        assert browser.find_element("tag name", "h1").text == "not found"
    finally:
        studio.stop()


def test_listening_beyond_loopback_without_a_key_warns(out):
    studio = Studio(out, "--host", "0.0.0.0")
    try:
        assert "warning: listening on 0.0.0.0 without an API key" in "".join(studio.lines)
        assert studio.url.startswith("http://0.0.0.0:")
    finally:
        studio.stop()
