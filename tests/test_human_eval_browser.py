"""Human pairwise evaluation end to end: `ganray eval human serve` in its own process, driven by a real
headless Chromium (Debian's /usr/bin/chromium through /usr/bin/chromedriver, installed by
scripts/install_test_deps.sh) that clicks and types through a session; then the stored rows in SQLite,
`ganray eval human results`, a screenshot, the token, and bad input over real HTTP."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ganray.cli import main as cli
from ganray.data.hf_features import to_ganray_table
from ganray.config import DCGANConfig, ImportConfig
from ganray.data.importer import run_import
from ganray.data.synthetic import render_face
from ganray.models import build_generator
from ganray.registry import Registry

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
RES = 32
MODEL = DCGANConfig(z_dim=8, g_width=4).model_dump()
TOKEN = "s3cret-token-for-tests"
NAME = "Ada Lovelace"


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    registry = Registry(str(tmp_path_factory.mktemp("reg") / "registry"))
    for seed in (1, 2):
        torch.manual_seed(seed)
        registry.push(build_generator(DCGANConfig(**MODEL), RES, {}).state_dict(), MODEL, RES, {}, {"seed": seed})
    return registry


@pytest.fixture(scope="module")
def real_faces(ray_session, tmp_path_factory) -> str:
    src = tmp_path_factory.mktemp("faces")
    for i in range(6):
        Image.fromarray(render_face(i, RES)[0]).save(src / f"face{i:03d}.png")
    dst = str(tmp_path_factory.mktemp("real") / "faces")
    run_import(ImportConfig(src=str(src), dst=dst, resolution=RES, min_size=8, blank_std=0, blur_threshold=0))
    return dst


class Server:
    """`ganray eval human serve` as a child process on a free port; .url once it listens."""

    def __init__(self, settings: dict, env: dict | None = None):
        args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
        environ = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "ganray.cli", "eval", "human", "serve",
                                      "--set", "human.port=0", *args], env=environ, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines = []
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
            if found:
                self.url = found.group(1)
                # Keep reading its output, so that a full pipe never blocks the server.
                threading.Thread(target=self.lines.extend, args=(self.proc.stdout,), daemon=True).start()
                return
        raise AssertionError(f"the server did not start:\n{''.join(self.lines)}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def settings(registry: Registry, db: Path, **extra) -> dict:
    return {"registry.url": registry.url, "human.db": str(db), "human.models": "[v1, v2]", "human.seed_count": 50,
            **extra}


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
                 "--disable-dev-shm-usage", "--window-size=900,700", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager (which would download a driver) never runs.
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.implicitly_wait(0)
        yield driver
        driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)  # the profile Chromium wrote (~2.5 MB a session)


def wait_for_count(driver, n: int) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def settled(d):
        if d.find_element("id", "status").text:
            raise AssertionError(f"the page shows an error: {d.find_element('id', 'status').text}")
        return d.find_element("id", "count").text == str(n) and d.execute_script(
            "return document.getElementById('board').dataset.ready === 'true'"
            " && document.getElementById('face-left').complete && document.getElementById('face-right').complete"
            " && document.getElementById('face-left').naturalWidth > 0")
    try:
        WebDriverWait(driver, 60).until(settled)
    except TimeoutException:
        state = driver.execute_script(
            "return [document.getElementById('count').textContent, document.getElementById('status').textContent,"
            " document.getElementById('faces').dataset.pairId, document.getElementById('face-left').complete,"
            " document.getElementById('face-left').naturalWidth, document.getElementById('board').dataset.ready]")
        raise AssertionError(f"the page did not reach {n} judgments with both faces shown: {state}") from None


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT p.pair_id, p.rater, p.kind, p.left_item, p.right_item, c.choice, c.winner, c.loser,"
                           " p.left_face, c.chosen_at FROM pairs p JOIN choices c USING (pair_id) ORDER BY c.chosen_at"
                           ).fetchall()


def test_a_rater_clicks_and_types_through_a_model_session(registry, browser, tmp_path, capsys):
    from selenium.webdriver.common.keys import Keys

    db = tmp_path / "models.db"
    server = Server(settings(registry, db, **{"human.pair_seed": 3}))
    try:
        browser.get(server.url)
        assert "Which face looks more real?" in browser.find_element("id", "question").text
        help_text = browser.find_element("id", "board").get_attribute("textContent")
        assert "←" in help_text and "→" in help_text and "1" in help_text and "2" in help_text  # shortcuts shown
        browser.find_element("id", "rater").send_keys(NAME)
        browser.find_element("id", "start").click()
        wait_for_count(browser, 0)
        shown = [browser.find_element("id", "faces").get_attribute("data-pair-id")]
        body = browser.find_element("tag name", "body")
        steps = [("click", "choose-left"), ("click", "choose-right"), ("key", Keys.ARROW_LEFT),
                 ("key", Keys.ARROW_RIGHT), ("key", "1"), ("key", "2")]
        for n, (how, what) in enumerate(steps, start=1):
            if how == "click":
                browser.find_element("id", what).click()
            else:
                body.send_keys(what)
            wait_for_count(browser, n)
            shown.append(browser.find_element("id", "faces").get_attribute("data-pair-id"))
        png = browser.get_screenshot_as_png()
    finally:
        server.stop()

    stored = rows(db)
    assert [r[0] for r in stored] == shown[:-1]  # each answered pair is one the page was issued, in order
    assert [r[5] for r in stored] == ["left", "right", "left", "right", "left", "right"]
    for pair_id, rater, kind, left, right, choice, winner, loser, left_face, _ in stored:
        assert rater == NAME and kind == "models" and {left, right} == {"model:v1", "model:v2"}
        with sqlite3.connect(db) as con:  # human.same_seed: both faces from one seed
            faces = con.execute("SELECT left_face, right_face FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone()
        assert json.loads(faces[0])["seed"] == json.loads(faces[1])["seed"]
        assert (winner, loser) == ((left, right) if choice == "left" else (right, left))
        assert json.loads(left_face)["version"] == left.split(":")[1] and 0 <= json.loads(left_face)["seed"] < 50
    with sqlite3.connect(db) as con:  # the pair on screen when the session ended is issued, unanswered
        assert con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] == 7
        left_png, right_png = con.execute("SELECT left_png, right_png FROM pairs WHERE pair_id = ?",
                                          (stored[0][0],)).fetchone()
    # Same seed on both sides (human.same_seed): two different models' faces for one latent.
    assert Image.open(io.BytesIO(left_png)).size == (RES, RES) and left_png != right_png

    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert shot.shape[:2] == (700, 900) or shot.shape[0] >= 500  # the window (the viewport may be a bit shorter)
    assert shot.std() > 10 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 100  # faces, text, buttons: not blank

    out = tmp_path / "results.json"
    capsys.readouterr()
    assert cli(["eval", "human", "results", str(db), "--output", str(out), "--prior-wins", "0"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    v1_wins = sum(r[6] == "model:v1" for r in stored)
    assert result["win_rates"]["model:v1"]["successes"] == v1_wins and result["win_rates"]["model:v1"]["trials"] == 6
    assert result["raters"] == {NAME: 6} and result["unanswered"] == 1 and result["fool_rate"] is None
    bt = result["bradley_terry"]
    if 0 < v1_wins < 6:  # two players, no prior: the closed form log(w12 / w21), centred
        assert bt["scores"]["model:v1"]["score"] == pytest.approx(np.log(v1_wins / (6 - v1_wins)) / 2)
    assert "win rate" in printed and "model:v1" in printed and f"results: {out}" in printed


def test_real_vs_generated_with_a_token_and_the_fool_rate(registry, real_faces, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    db = tmp_path / "real.db"
    server = Server(settings(registry, db, **{"human.mode": "real", "human.real": real_faces,
                                              "human.models": "[v2]"}), env={"GANRAY_EVAL_TOKEN": TOKEN})
    try:
        # Without the token the page asks for it and nothing is issued.
        browser.get(server.url)
        browser.find_element("id", "start").click()
        from selenium.webdriver.support.ui import WebDriverWait
        WebDriverWait(browser, 20).until(lambda d: "401" in d.find_element("id", "status").text)
        assert browser.find_element("id", "token-row").is_displayed()
        browser.find_element("id", "token").send_keys(TOKEN)
        browser.find_element("id", "start").click()
        wait_for_count(browser, 0)
        for n, key in enumerate([Keys.ARROW_LEFT, "2"], start=1):
            browser.find_element("tag name", "body").send_keys(key)
            wait_for_count(browser, n)
        # A shared link carries the token in its fragment.
        browser.get("about:blank")
        browser.get(f"{server.url}#token={TOKEN}")
        browser.find_element("id", "start").click()
        wait_for_count(browser, 0)
        for n, key in enumerate([Keys.ARROW_LEFT, "1"], start=1):
            browser.find_element("tag name", "body").send_keys(key)
            wait_for_count(browser, n)

        api = httpx.Client(base_url=server.url.rstrip("/"), timeout=30)
        auth = {"X-Eval-Token": TOKEN}
        assert api.get("/api/session").status_code == 401
        assert api.get("/api/session", headers={"X-Eval-Token": "wrong-token-x"}).status_code == 401
        assert api.post("/api/pairs", json={"rater": "x"}).status_code == 401
        assert api.get("/").status_code == 200  # the page itself loads without a token
        assert api.get("/api/session", headers=auth).json()["items"] == ["model:v2", "real"]
        results = api.get("/api/results", headers=auth).json()
    finally:
        server.stop()
    stored = rows(db)
    assert len(stored) == 4 and all(r[1] == "anonymous" and r[2] == "real" for r in stored)
    assert all({r[3], r[4]} == {"model:v2", "real"} for r in stored)
    fooled = sum(r[6] == "model:v2" for r in stored)
    fool = results["fool_rate"]["overall"]
    assert (fool["successes"], fool["trials"]) == (fooled, 4) and fool["ci_low"] <= fool["rate"] <= fool["ci_high"]
    assert json.loads(stored[0][8]).get("source") in ("model", "dataset")


def test_bad_requests_are_4xx_and_store_nothing(registry, tmp_path):
    db = tmp_path / "bad.db"
    server = Server(settings(registry, db))
    try:
        api = httpx.Client(base_url=server.url.rstrip("/"), timeout=30)
        pair = api.post("/api/pairs", json={"rater": "  "}).json()
        assert pair["rater"] == "anonymous"
        unknown = api.post("/api/choices", json={"pair_id": "p-0123456789abcdef", "choice": "left"})
        assert unknown.status_code == 404 and "not issued by this server" in unknown.json()["detail"]
        forged = api.post("/api/choices", json={"pair_id": "../../etc", "choice": "left"})
        assert forged.status_code == 404
        bad_choice = api.post("/api/choices", json={"pair_id": pair["pair_id"], "choice": "middle"})
        assert bad_choice.status_code == 422 and "choice" in str(bad_choice.json()["detail"])
        assert api.post("/api/choices", json={"pair_id": pair["pair_id"]}).status_code == 422
        assert api.post("/api/choices", content=b"{not json", headers={"Content-Type": "application/json"}
                        ).status_code == 422
        assert api.post("/api/pairs", json={"rater": "x" * 65}).status_code == 422
        assert api.post("/api/pairs", json={"rater": "a\x00b"}).status_code == 422
        assert api.post("/api/pairs", json={"who": "x"}).status_code == 422
        assert api.get(f"/api/pairs/{pair['pair_id']}/middle.png").status_code == 404
        assert api.get("/api/pairs/p-0123456789abcdef/left.png").status_code == 404
        face = api.get(pair["left"])
        assert face.status_code == 200 and face.headers["content-type"] == "image/png"
        with sqlite3.connect(db) as con:  # the stored PNG is the one shown
            assert con.execute("SELECT left_png FROM pairs").fetchone()[0] == face.content
        assert api.post("/api/choices", json={"pair_id": pair["pair_id"], "choice": "left"}).status_code == 200
        again = api.post("/api/choices", json={"pair_id": pair["pair_id"], "choice": "right"})
        assert again.status_code == 409 and "already answered" in again.json()["detail"]
    finally:
        server.stop()
    assert [(r[1], r[5]) for r in rows(db)] == [("anonymous", "left")]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] == 1


@pytest.mark.parametrize("extra, message", [
    ({"human.models": "[v1]"}, "mode models needs at least two"),
    ({"human.models": "[v1, v1]"}, "list a source twice"),
    ({"human.models": "[v2, latest]"}, "the same item"),  # latest is v2
    ({"human.db": "s3://bucket/j.db"}, "local file path"),
    ({"human.models": "[v1, v9]"}, "v9"),
    ({"human.mode": "real"}, "mode real needs human.real"),
    ({"human.mode": "real", "human.models": "[v1]", "human.real": "/nonexistent/faces"}, "no imported dataset"),
    ({"human.token": "short"}, "human.token"),
])
def test_bad_config_exits_2_before_serving(extra, message, registry, tmp_path, capsys):
    db = tmp_path / "x.db"
    args = [a for k, v in {**settings(registry, db), **extra}.items() for a in ("--set", f"{k}={v}")]
    assert cli(["eval", "human", "serve", *args]) == 2
    assert message in capsys.readouterr().err
    assert not db.exists()


def test_mismatched_resolutions_and_bad_results_db_exit_2(real_faces, tmp_path, capsys):
    other = Registry(str(tmp_path / "registry"))
    other.push(build_generator(DCGANConfig(**MODEL), 64, {}).state_dict(), MODEL, 64, {}, {"seed": 3})
    db = tmp_path / "x.db"
    args = [a for k, v in {**settings(other, db), "human.mode": "real", "human.models": "[v1]",
                           "human.real": real_faces}.items() for a in ("--set", f"{k}={v}")]
    assert cli(["eval", "human", "serve", *args]) == 2
    assert "one resolution" in capsys.readouterr().err and not db.exists()
    assert cli(["eval", "human", "results", str(tmp_path / "missing.db")]) == 2
    assert "no judgments database" in capsys.readouterr().err
    (tmp_path / "junk.db").write_bytes(b"junk" * 100)
    assert cli(["eval", "human", "results", str(tmp_path / "junk.db")]) == 2
    assert "not a ganray human-evaluation database" in capsys.readouterr().err


def test_contestant_pairs_are_drawn_evenly_and_sides_vary(registry, tmp_path):
    from ganray.config import HumanEvalJob
    from ganray.eval.human.session import HumanEvalSession

    torch.manual_seed(9)
    third = Registry(str(tmp_path / "registry"))
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        third.push(build_generator(DCGANConfig(**MODEL), RES, {}).state_dict(), MODEL, RES, {}, {"seed": seed})
    job = HumanEvalJob.model_validate({"registry": {"url": third.url}, "human": {
        "db": str(tmp_path / "d.db"), "models": ["v1", "v2", "v3"], "same_seed": False, "pair_seed": 0}})
    session = HumanEvalSession(job)
    draws = [session._draw() for _ in range(30)]
    pairs = Counter(frozenset((a.item, b.item)) for a, _, b, _, _ in draws)
    assert sorted(pairs.values()) == [10, 10, 10]  # each pair of the three models equally often
    assert 5 < sum(swap for *_, swap in draws) < 25  # sides by a coin flip
    assert any(ia != ib for _, ia, _, ib, _ in draws)  # independent seeds when same_seed is false


def test_a_generated_output_is_a_contestant_against_real_faces_and_models(registry, real_faces, tmp_path):
    from ganray.config import GenerateJob, HumanEvalJob, load_config
    from ganray.eval.human.session import HumanEvalSession
    from ganray.generate.job import run_generate
    from ganray.images import decode_png

    out = tmp_path / "gen-v1"
    run_generate(load_config(GenerateJob, None, [f"registry.url={registry.url}", f"generate.output={out}",
                                                 "generate.model=v1", "generate.count=4", "generate.shard_size=4"]))
    generated = [row for path in sorted(out.glob("data/*.parquet")) for row in
                 to_ganray_table(pq.read_table(path))["image"].to_pylist()]
    for mode, extra in (("real", {"real": real_faces, "models": []}), ("models", {"models": ["v2"]})):
        job = HumanEvalJob.model_validate({"registry": {"url": registry.url}, "human": {
            "db": str(tmp_path / f"{mode}.db"), "mode": mode, "generated": [str(out)], **extra}})
        session = HumanEvalSession(job)
        assert session.describe()["items"] == (["model:v2", "output:gen-v1"] if mode == "models"
                                                else ["output:gen-v1", "real"])
        pair_id = session.issue_pair("ann")
        with sqlite3.connect(session.store.path) as con:
            row = con.execute("SELECT left_item, right_item, left_face, right_face, left_png, right_png FROM pairs "
                              "WHERE pair_id = ?", (pair_id,)).fetchone()
        side = 0 if row[0] == "output:gen-v1" else 1
        face = json.loads(row[2 + side])
        assert face["source"] == "output" and face["model_version"] == "v1" and 0 <= face["row"] < 4
        # The face shown is the output's own face, pixel for pixel.
        assert np.array_equal(decode_png(row[4 + side]), decode_png(generated[face["row"]]))


def test_the_readme_test_command_and_ci_install_the_browser_before_pytest():
    command = "bash scripts/install_test_deps.sh && .venv/bin/python -m pytest -q"
    readme_block = (REPO / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert len(readme_block) == 2 and readme_block[1].endswith(command)  # still exactly two set-up commands
    assert readme_block[1] in (REPO / ".ci" / "run").read_text()  # CI runs that same command
    # Idempotent: with the browser installed it does nothing and succeeds.
    done = subprocess.run(["bash", str(REPO / "scripts" / "install_test_deps.sh")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""
