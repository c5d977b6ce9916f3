"""The `ldm-serve` page in a real browser (headless Chromium via selenium and the system chromedriver) on a
real server: type a prompt, generate, watch the bar and preview move, get the image; cancel a long run; two
browser sessions at once both get their images.

LDM_SERVE_MODEL=DIR serves that pipeline folder instead of the tiny one; LDM_SERVE_SCREENSHOT=PATH also saves
the page after the first generation there (the README's screenshot is made so, on the quickstart model).
"""

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from serving import SERVER_FLAGS, TOKEN, decode_png, shared_server, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')"
)
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium + chromedriver (Debian: apt-get install chromium chromium-driver)",
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,800",
)


@pytest.fixture(scope="module")
def server():
    model = os.environ.get("LDM_SERVE_MODEL")
    if not model:
        yield shared_server()
        return
    own = start_server(Path(model), *SERVER_FLAGS)
    yield own
    own.stop()


def open_browser(server, profiles: list):
    """A headless Chromium on the system binaries (never a downloaded one) with a fresh profile."""
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="ldm-serve-chromium-")
    profiles.append(profile)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.get(f"{server.url}/?token={TOKEN}")
    wait(lambda: driver.execute_script("return document.getElementById('sampler_name').options.length") > 0)
    return driver


@pytest.fixture(scope="module")
def browser(server):
    profiles = []
    driver = open_browser(server, profiles)
    yield driver
    driver.quit()
    for profile in profiles:
        shutil.rmtree(profile, ignore_errors=True)


def wait(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("the page did not get there in time")


def fill(driver, **values):
    for name, value in values.items():
        element = driver.find_element("id", name)
        element.clear()
        element.send_keys(str(value))


def state(driver) -> dict:
    return driver.execute_script(
        "return {progress: document.getElementById('progress').value,"
        " preview: document.getElementById('preview').src,"
        " status: document.getElementById('status').textContent,"
        " results: document.querySelectorAll('#gallery .result img').length,"
        " generating: document.getElementById('generate').disabled}"
    )


def test_type_a_prompt_generate_see_progress_and_previews_then_the_image(browser, server, tmp_path):
    before = state(browser)["results"]
    fill(browser, prompt="a red circle on the left", steps=40, seed=5)
    browser.find_element("id", "generate").click()
    seen = []
    wait(lambda: seen.append(state(browser)) or seen[-1]["results"] > before)
    progress = [s["progress"] for s in seen if s["generating"]]
    assert any(0 < p < 1 for p in progress) and progress == sorted(progress)  # the bar moved forward
    assert any(s["preview"].startswith("data:image/png") for s in seen)  # a live preview was shown
    assert seen[-1]["status"].startswith("Done")
    card = browser.find_element("css selector", "#gallery .result")
    assert "seed 5" in card.text and "40 steps" in card.text and "w = 3" in card.text
    assert "Euler a" in card.text  # the sampler menu starts on the server's --scheduler
    png = decode_png(card.find_element("tag name", "a").get_attribute("href"))  # the download link
    assert json.loads(png.text["seed"]) == 5 and png.text["prompt"] == "a red circle on the left"
    fill(browser, seed=123)
    card.find_element("xpath", ".//button[text()='Reuse seed']").click()
    assert browser.find_element("id", "seed").get_attribute("value") == "5"
    browser.save_screenshot(str(tmp_path / "page.png"))
    if os.environ.get("LDM_SERVE_SCREENSHOT"):
        browser.save_screenshot(os.environ["LDM_SERVE_SCREENSHOT"])


def test_cancel_stops_a_long_run_at_the_next_step(browser, server):
    fill(browser, prompt="a blue square", steps=500)
    browser.find_element("id", "generate").click()
    wait(lambda: state(browser)["progress"] > 0)
    browser.find_element("id", "cancel").click()
    wait(lambda: state(browser)["status"] == "Cancelled.", timeout=30)
    assert 0 < state(browser)["progress"] < 1 and not state(browser)["generating"]
    assert server.request("GET", "/sdapi/v1/progress")[1]["state"]["job_count"] == 0


def test_two_browser_sessions_at_once_both_get_their_images(browser, server):
    profiles = []
    second = open_browser(server, profiles)
    try:
        drivers = [browser, second]
        counts = [state(d)["results"] for d in drivers]
        for driver, prompt in zip(drivers, ("a green triangle", "a red square")):
            fill(driver, prompt=prompt, steps=30, seed=9)
        threads = [threading.Thread(target=d.find_element("id", "generate").click) for d in drivers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for driver, count in zip(drivers, counts):
            wait(lambda: state(driver)["results"] == count + 1)
            assert state(driver)["status"].startswith("Done")
    finally:
        second.quit()
        for profile in profiles:
            shutil.rmtree(profile, ignore_errors=True)
