r"""
The clip player in a real headless Chromium (skipped, with the reason, without one; see test_interactive_browser):
the slider shows a frame and, with a word chosen, that word's map of the same frame over it; play advances the frames.
"""

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from diffusers_interpret.views.clip import ClipView, clip_player_html, contact_sheet, overlay_frames

FRAMES, SIZE = 5, 8
WORDS = ["red", "</script><script>window.__pwned = 1</script>"]


def decoded(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(FRAMES)]
    maps = {word: rng.random((FRAMES, SIZE, SIZE)) for word in WORDS}
    overlays = {word: overlay_frames(values, 1.0) for word, values in maps.items()}
    return frames, overlays


def test_the_player_shows_the_chosen_frame_and_the_chosen_words_map_of_it(browser, clip, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    frames, overlays = clip
    path = tmp_path / "clip.html"
    ClipView(clip_player_html(frames, overlays, fps=20), "a clip").save(path)
    browser.get(path.resolve().as_uri())
    root = browser.find_element("css selector", "[id^=di-clip-]")
    uid = root.get_attribute("id")
    frame, overlay = browser.find_element("id", f"{uid}-frame"), browser.find_element("id", f"{uid}-map")
    slider = browser.find_element("id", f"{uid}-range")
    assert not overlay.is_displayed()
    browser.execute_script("arguments[0].value = 3; arguments[0].dispatchEvent(new Event('input'))", slider)
    np.testing.assert_array_equal(decoded(frame.get_attribute("src")), np.asarray(frames[3]))
    assert browser.find_element("id", f"{uid}-label").text == "frame 3 (of 0 to 4)"
    ActionChains(browser).click(root.find_element("css selector", '[data-word="1"]')).perform()
    assert overlay.is_displayed()
    np.testing.assert_array_equal(decoded(overlay.get_attribute("src")), np.asarray(overlays[WORDS[1]][3]))
    assert root.find_element("css selector", '[data-word="1"]').text == WORDS[1]  # shown as text, never run
    assert browser.execute_script("return window.__pwned") is None
    ActionChains(browser).click(browser.find_element("id", f"{uid}-play")).perform()
    seen = set()
    for _ in range(30):
        seen.add(int(slider.get_attribute("value")))
        time.sleep(0.02)
    assert len(seen) > 2  # playing: the frames advance (and the overlay with them)
    ActionChains(browser).click(browser.find_element("id", f"{uid}-play")).perform()
    shown = int(slider.get_attribute("value"))
    np.testing.assert_array_equal(decoded(overlay.get_attribute("src")), np.asarray(overlays[WORDS[1]][shown]))


def test_a_contact_sheet_holds_the_first_and_last_frames_in_order():
    picture = Image.fromarray(np.repeat(np.arange(20, dtype=np.uint8)[:, None, None] * 10, 4, axis=1).repeat(3, 2))
    sheet = np.asarray(contact_sheet(picture, num_frames=20, most=6))  # frames of one row each, value 10 x index
    tiles = [int(sheet[r, c * 4, 0]) for r in range(sheet.shape[0]) for c in range(sheet.shape[1] // 4)]
    frames = [value for value in tiles if value != 255]  # the sheet's white filler after the last frame
    assert frames == [0, 40, 80, 110, 150, 190] and tiles[len(frames) :] == [255] * (len(tiles) - len(frames))
