"""The studio's two pictures in docs/studio.md, taken by Selenium in headless Chromium.

    .venv/bin/python scripts/studio_screenshots.py ./out/demo-faces-v1

Starts `ganray studio OUT --port 0`, opens it in Debian's /usr/bin/chromium (through
/usr/bin/chromedriver, the driver path given so Selenium Manager downloads nothing), and writes
docs/studio_grid.png (the grid) and docs/studio_detail.png (a face's detail), reduced to a palette.
"""
from __future__ import annotations

import io
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def save(png: bytes, path: Path) -> None:
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128)
    image.save(path, optimize=True)
    print(f"{path.relative_to(REPO)}: {path.stat().st_size} bytes")


def main(out: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ganray.cli", "studio", out, "--port", "0", "--page-size", "48"],
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    url = None
    for line in proc.stdout:
        found = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
        if found:
            url = found.group(1)
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            break
    if url is None:
        raise SystemExit("the studio did not start")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,640",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='ganray-chromium-')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        WebDriverWait(driver, 60).until(lambda d: d.find_element("id", "grid").get_attribute("data-ready") == "true")
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements("css selector", "#facet-filters option")) > 3)
        save(driver.get_screenshot_as_png(), REPO / "docs" / "studio_grid.png")
        driver.find_elements("css selector", "#grid .face")[5].click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element("id", "detail").is_displayed())
        save(driver.get_screenshot_as_png(), REPO / "docs" / "studio_detail.png")
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main(sys.argv[1])
