"""Editing in the `ldm-serve` page, in a real browser (headless Chromium via selenium) on a real server:
upload an image, paint a mask on it with real pointer events, inpaint; image-to-image from the gallery at the
upload's size; outpaint by margins; "reuse all" brings an edit's image, mask and settings back.

The inpainting check: with "keep unmasked" (on by default, A1111's paste-back, ldm-generate --keep-unmasked)
every pixel outside the mask the page sent equals the upload exactly, and the pixels inside change.
LDM_SERVE_MODEL / LDM_SERVE_SCREENSHOT as in test_serve_browser.py (the screenshot: the page after inpainting).
"""

import base64
import hashlib
import os

import numpy as np
import pytest
from PIL import Image
from serving import decode_png, pixels
from test_serve_browser import browser, fill, server, state, wait  # noqa: F401 (fixtures)

from selenium.webdriver.common.action_chains import ActionChains


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    """A 40×32 PNG (not square, sides multiples of the tiny VAE's factor 4): blue with a red block."""
    image = np.zeros((32, 40, 3), np.uint8) + np.array([40, 70, 190], np.uint8)
    image[6:26, 22:36] = (210, 50, 40)
    path = tmp_path_factory.mktemp("browser-edit") / "init.png"
    Image.fromarray(image).save(path)
    return path


def choose_mode(driver, mode):
    driver.find_element("id", f"mode_{mode}").click()
    assert driver.execute_script("return document.querySelector('input[name=mode]:checked').value") == mode


def upload_file(driver, path, size="40×32"):
    driver.find_element("id", "init_file").send_keys(str(path))
    wait(lambda: driver.find_element("id", "init_size").text == size)


def page_mask(driver) -> np.ndarray | None:
    """The mask the page sends (white = repaint) as a bool array, or None when nothing is painted."""
    url = driver.execute_script("return Edit.mask()")
    return None if url is None else np.asarray(decode_png(url).convert("L")) >= 128


def generate(driver):
    before = state(driver)["results"]
    driver.find_element("id", "generate").click()
    invalid = driver.execute_script(
        "return [...document.querySelectorAll('#form input')].filter((e) => !e.checkValidity()).map((e) => e.id)"
    )
    assert not invalid, f"the browser would not submit the form: {invalid} invalid"
    wait(lambda: state(driver)["results"] > before or state(driver)["status"].startswith(("Error", "Failed")))
    assert state(driver)["status"].startswith("Done"), state(driver)["status"]
    card = driver.find_element("css selector", "#gallery .result")
    return card, decode_png(card.find_element("tag name", "a").get_attribute("href"))


def test_paint_a_mask_with_the_pointer_and_inpaint(browser, upload, tmp_path):  # noqa: F811
    choose_mode(browser, "inpaint")
    upload_file(browser, upload)
    assert [browser.find_element("id", s).get_attribute("value") for s in ("width", "height")] == ["40", "32"]
    assert browser.find_element("id", "denoising_strength").get_attribute("value") == "1"  # ldm-generate's
    fill(browser, brush_size=4)
    canvas = browser.find_element("id", "mask_canvas")
    scale = canvas.size["width"] / 40  # screen pixels per image pixel (the canvas is shown stretched)
    # A stroke from image pixel (6, 8) right to (16, 8), then down to (16, 22): pointerdown, moves, pointerup.
    (x0, y0), (x1, y1), (x2, y2) = (
        (round((x - 20) * scale), round((y - 16) * scale)) for x, y in ((6, 8), (16, 8), (16, 22))
    )  # selenium's offsets count from the element's centre, image pixel (20, 16)
    ActionChains(browser).move_to_element_with_offset(canvas, x0, y0).click_and_hold().move_by_offset(
        (x1 - x0) // 2, 0
    ).move_by_offset(x1 - x0 - (x1 - x0) // 2, 0).move_by_offset(0, y2 - y1).release().perform()
    mask = page_mask(browser)
    ys, xs = np.nonzero(mask)
    assert mask[8, 6:17].all() and mask[8:23, 16].all()  # the whole stroke path is painted
    assert xs.min() >= 3 and xs.max() <= 19 and ys.min() >= 5 and ys.max() <= 25  # and only near it
    browser.find_element("id", "invert_mask").click()
    assert np.array_equal(page_mask(browser), ~mask)
    browser.find_element("id", "invert_mask").click()
    fill(browser, prompt="a red square", steps=4, seed=7)
    card, result = generate(browser)
    if os.environ.get("LDM_SERVE_SCREENSHOT"):
        browser.save_screenshot(os.environ["LDM_SERVE_SCREENSHOT"])
    assert result.size == (40, 32)
    sent = browser.execute_script("return Edit.mask()")
    assert result.text["mask_sha256"] == hashlib.sha256(base64.b64decode(sent.split(",")[1])).hexdigest()
    init = pixels(Image.open(upload))
    assert np.array_equal(pixels(result)[~mask], init[~mask])  # keep unmasked: exact outside the mask
    assert np.abs(pixels(result)[mask] - init[mask]).mean() > 5  # repainted inside
    assert "inpaint, strength 1" in card.text and "keep unmasked" in card.text and "40×32" in card.text
    browser.find_element("id", "clear_mask").click()
    assert page_mask(browser) is None
    browser.find_element("id", "generate").click()  # nothing painted: said on the page, nothing sent
    wait(lambda: "paint the area" in state(browser)["status"])


def test_image_to_image_from_the_gallery_keeps_the_size_and_reuse_all_brings_an_edit_back(
    browser,
):  # noqa: F811
    inpainted = browser.find_element("css selector", "#gallery .result")
    mask = page_mask(browser)  # None: cleared by the test before
    inpainted.find_element("xpath", ".//button[text()='Edit this']").click()
    wait(
        lambda: browser.execute_script("return Edit.source()")
        == inpainted.find_element("tag name", "a").get_attribute("href")
    )
    choose_mode(browser, "img2img")
    assert browser.find_element("id", "denoising_strength").get_attribute("value") == "0.8"
    fill(browser, denoising_strength=0.5, steps=6, seed=3)
    card, result = generate(browser)
    assert result.size == (40, 32) and "img2img, strength 0.5" in card.text
    assert float(result.text["strength"]) == 0.5 and mask is None
    inpainted = browser.find_elements("css selector", "#gallery .result")[1]
    inpainted.find_element("xpath", ".//button[text()='Reuse all']").click()
    wait(
        lambda: browser.execute_script("return document.querySelector('input[name=mode]:checked').value")
        == "inpaint"
        and page_mask(browser) is not None
    )
    restored = page_mask(browser)
    assert restored[8, 6:17].all() and not restored[:, 25:].any()  # the painted mask is back
    assert browser.find_element("id", "seed").get_attribute("value") == "7"
    assert browser.find_element("id", "steps").get_attribute("value") == "4"


def test_outpaint_by_margins_returns_the_widened_image(browser, upload):  # noqa: F811
    choose_mode(browser, "outpaint")
    upload_file(browser, upload)
    fill(browser, outpaint_left=8, outpaint_top=0, outpaint_right=4, outpaint_bottom=4, steps=4, seed=2)
    card, result = generate(browser)
    assert result.size == (52, 36) and "margins 8,0,4,4" in card.text and "52×36" in card.text
    assert np.array_equal(pixels(result)[0:32, 8:48], pixels(Image.open(upload)))  # the upload, kept
    assert result.text["outpaint"] == "[8, 0, 4, 4]"
    fill(browser, outpaint_left=0, outpaint_right=0, outpaint_bottom=0)
    browser.find_element("id", "generate").click()
    wait(lambda: "not all 0" in state(browser)["status"])  # the server's 422, shown on the page
