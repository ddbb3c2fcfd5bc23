"""Real-browser tests: headless Chromium + chromedriver (Debian's packages) driven by selenium.

Log in, rate (keyboard), compare, rank, submit; the export holds exactly those labels; model text
with <script> and <img onerror> payloads is shown as text and runs nothing; a screenshot of every
page is saved under test-artifacts/feedback/.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from alignforge.data.records import FLAGS, Candidates, parse_record
from alignforge.feedback import service
from alignforge.feedback.db import make_engine, make_sessionmaker
from feedback_helpers import ARTIFACTS, PASSWORD, XSS, Server, seed

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def driver():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: apt-get install chromium chromium-driver, "
                    f"or run scripts/ci-services.sh)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="alignforge-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(arg)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def server(tmp_path):
    url = f"sqlite:///{tmp_path / 'browser.db'}"
    seed(url, annotators=1)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        xss_prompt = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Say " + XSS}]
        p = service.create_project(s, "rate-xss", "rating", per_item=1, guidelines="Flag <b>made-up</b> facts.")
        service.import_candidates(s, p, [Candidates(prompt=xss_prompt, responses=[XSS], id="x1", policy="sft")])
        p = service.create_project(s, "compare", "comparison", per_item=1)
        service.import_candidates(s, p, [Candidates(prompt="2 + 2?", responses=["4", "22 " + XSS], id="c1")])
        p = service.create_project(s, "rank", "ranking", per_item=1)
        service.import_candidates(s, p, [Candidates(prompt="Name a colour.", responses=["red", "blue", "I like turtles"],
                                                    id="r1")])
    engine.dispose()
    srv = Server(url, tmp_path / "server.log").start()
    yield srv
    srv.stop()


def shot(drv, name: str) -> None:
    drv.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def nothing_ran(drv) -> None:
    assert drv.execute_script("return window.__pwned === undefined") is True
    assert "PWNED" not in drv.title


def login(drv, base: str, username: str) -> None:
    from selenium.webdriver.common.by import By

    drv.get(base + "/login")
    drv.find_element(By.ID, "username").send_keys(username)
    drv.find_element(By.ID, "password").send_keys(PASSWORD)
    drv.find_element(By.ID, "login-submit").click()
    assert wait_for(drv, "whoami").text.startswith(username)


def wait_for(drv, element_id: str):
    """The element, once the page that has it has loaded (after a submit navigates)."""
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, 20).until(ec.presence_of_element_located(("id", element_id)))


def keys(drv, *presses: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    drv.find_element("tag name", "body").click()  # focus the page, not a form field
    for k in presses:
        ActionChains(drv).send_keys(k).perform()


def test_annotate_in_a_real_browser(driver, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    base = server.url
    driver.get(base + "/")
    shot(driver, "01-login")
    driver.find_element(By.ID, "username").send_keys("ann0")
    driver.find_element(By.ID, "password").send_keys("wrong password")
    driver.find_element(By.ID, "login-submit").click()
    assert "Wrong username or password" in wait_for(driver, "login-error").text
    login(driver, base, "ann0")
    assert "/tasks" in driver.current_url
    shot(driver, "02-tasks")

    # --- rating: the response and the prompt are XSS payloads; they must show as text ----------
    driver.find_element(By.LINK_TEXT, "Start").click()
    assert wait_for(driver, "response-0").text == XSS
    assert ("Say " + XSS) in driver.find_element(By.ID, "prompt").text
    assert not driver.find_elements(By.CSS_SELECTOR, "main img")  # no <img> element was created
    nothing_ran(driver)
    keys(driver, "6", "h", "f")
    keys(driver, "f")  # toggled twice: off again
    for axis, value in (("helpful", "5"), ("honest", "3"), ("harmless", "7")):
        Select(driver.find_element(By.ID, f"axis-{axis}")).select_by_value(value)
    assert driver.find_element(By.ID, "likert-6").is_selected()
    assert driver.find_element(By.ID, "flag-hallucination").is_selected()
    assert not driver.find_element(By.ID, "flag-fails_instruction").is_selected()
    shot(driver, "03-rating")
    keys(driver, Keys.ENTER)
    assert "All done" in wait_for(driver, "nothing-left").text
    nothing_ran(driver)
    shot(driver, "04-done")

    # --- comparison: key 7 = B slightly better; a double click stores one label -----------------
    driver.get(base + "/tasks")
    driver.find_element(By.CSS_SELECTOR, "a[href$='/next']").click()
    a_text, b_text = wait_for(driver, "response-0").text, driver.find_element(By.ID, "response-1").text
    assert {a_text, b_text} == {"4", "22 " + XSS}
    nothing_ran(driver)
    keys(driver, "7")
    assert driver.find_element(By.ID, "pref-b1").is_selected()
    shot(driver, "05-compare")
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).double_click(driver.find_element(By.ID, "submit")).perform()
    assert "All done" in wait_for(driver, "nothing-left").text

    # --- ranking: press 3, 1, 2 (best to worst) ----------------------------------------------
    driver.get(base + "/tasks")
    driver.find_element(By.CSS_SELECTOR, "a[href$='/next']").click()
    wait_for(driver, "rank-0")
    shown = [driver.find_element(By.ID, f"response-{i}").text for i in range(3)]
    keys(driver, "3", "1", "2")
    assert [Select(driver.find_element(By.ID, f"rank-{i}")).first_selected_option.text for i in range(3)] == ["2", "3", "1"]
    keys(driver, "0")  # clear, and again
    keys(driver, "3", "1", "2")
    shot(driver, "06-rank")
    keys(driver, Keys.ENTER)
    assert "All done" in wait_for(driver, "nothing-left").text

    driver.get(base + "/guidelines")
    assert "Flag <b>made-up</b> facts." in driver.find_element(By.ID, "guidelines").text
    shot(driver, "07-guidelines")
    driver.get(base + "/admin")
    assert "403" in driver.find_element(By.TAG_NAME, "h1").text
    shot(driver, "08-forbidden")
    driver.find_element(By.ID, "logout").click()
    wait_for(driver, "login-form")
    assert "/login" in driver.current_url

    # --- admin: progress, agreement, users, and the export holds exactly those three labels ----
    login(driver, base, "admin")
    shot(driver, "09-admin-projects")
    driver.find_element(By.LINK_TEXT, "rate-xss").click()
    wait_for(driver, "agreement")  # the project page has loaded
    assert "1 of 1 labels" in driver.find_element(By.ID, "progress").text
    shot(driver, "10-admin-project")
    driver.get(base + "/admin/users")
    shot(driver, "11-admin-users")
    text = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/admin/export').then(r => r.text()).then(done, e => done('ERROR ' + e));")
    records = [parse_record(json.loads(line)) for line in text.splitlines()]
    assert [r.kind for r in records] == ["rating", "comparison", "ranking"]
    rating, comparison, ranking = records
    assert (rating.response, rating.likert, rating.helpful, rating.honest, rating.harmless) == (XSS, 6, 5, 3, 7)
    assert rating.flags == {f: f == "hallucination" for f in FLAGS}
    assert rating.annotator == "ann0" and rating.policy == "sft" and rating.prompt[1]["content"] == "Say " + XSS
    assert (comparison.chosen, comparison.rejected, comparison.strength, comparison.tie) == (b_text, a_text, 1, False)
    assert ranking.responses == ["red", "blue", "I like turtles"]
    assert [ranking.responses[i] for i in ranking.ranking] == [shown[2], shown[0], shown[1]]
    assert all(r.annotator == "ann0" for r in records)
    nothing_ran(driver)
    assert Path(ARTIFACTS / "03-rating.png").stat().st_size > 10_000

    # --- a project three annotators worked on: the agreement table the admin sees ---------------
    engine = make_engine(server.db_url)
    with make_sessionmaker(engine)() as s:
        p = service.create_project(s, "team-compare", "comparison", per_item=3)
        service.import_candidates(s, p, [Candidates(prompt=f"question {i}", responses=[f"good {i}", f"bad {i}"])
                                         for i in range(6)], batch="round-1")
        team = [service.create_user(s, name, PASSWORD) for name in ("ana", "ben", "cem")]
        for n, user in enumerate(team):
            while (a := service.next_assignment(s, p, user)) is not None:
                good_is_a = a.item.responses[0].startswith("good")
                disagree = (a.item_id + n) % 4 == 0  # some disagreement, so α is informative
                side = "a" if good_is_a != disagree else "b"
                service.submit_label(s, a.id, user, {"preference": f"{side}{(a.item_id + n) % 4}"}, f"t{a.id}")
        pid = p.id
    engine.dispose()
    driver.get(f"{base}/admin/projects/{pid}")
    assert "18 of 18 labels" in driver.find_element(By.ID, "progress").text
    rate = driver.find_element(By.ID, "agreement").text
    assert "pairwise agreement" in rate and "–" not in rate.split("pairwise agreement")[1].splitlines()[0]
    shot(driver, "12-admin-agreement")
