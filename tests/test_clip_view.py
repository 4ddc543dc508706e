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


def test_the_interactive_view_of_a_clip_scores_a_box_over_a_span_of_frames(browser, tmp_path):
    # The box drawn on one frame is that box on each frame of the chosen span: the view's word shares equal a fresh
    # re-explanation of that space-time region, and the box is drawn on each of those frames.
    import torch

    from diffusers_interpret import explainer_for
    from diffusers_interpret.testing.wan import TINY_WAN_CALL, make_tiny_wan_pipeline

    pipe = make_tiny_wan_pipeline()
    output = explainer_for(pipe, verbose=False)(
        "a red ball rolls to the left", generator=torch.Generator().manual_seed(0), num_inference_steps=3,
        negative_prompt="", **TINY_WAN_CALL,
    )  # fmt: skip
    path = output.interactive_view(8).save(tmp_path / "view.html")
    browser.get(path.resolve().as_uri())
    uid = browser.find_element("css selector", ".di-view").get_attribute("data-view-id")
    api = f"window.diffusersInterpretViews['{uid}']"
    assert browser.execute_script(f"return {api}.frames()") == [0, 9]
    browser.execute_script(f"{api}.setBox(1, 1, 2, 2); {api}.setFrames(2, 5);")  # pixels (8, 8)-(16, 16), frames 2-4
    shown = browser.execute_script(f"return {api}.wordPercentagesForBox(1, 1, 2, 2)")
    again = output.explain(((8, 8), (16, 16)), explanation_frames=(2, 5))
    np.testing.assert_allclose(shown, [value for _, value in again.word_attributions.normalized], rtol=1e-4)
    boxes = browser.find_elements("css selector", f"#{uid}-stage .di-box")
    tops = sorted(round(float(box.value_of_css_property("top")[:-2])) for box in boxes)
    scale = round(float(boxes[0].value_of_css_property("width")[:-2]) / 8)
    assert tops == [(k * 16 + 8) * scale for k in (2, 3, 4)]
    assert "frames 2 to 4" in browser.find_element("id", f"{uid}-note").text
