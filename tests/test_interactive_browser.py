r"""
The interactive view in a real headless Chromium, driven by Selenium with real mouse actions.

Needs the Debian packages `chromium` and `chromium-driver` (at /usr/bin/chromium and /usr/bin/chromedriver) and the
pip package `selenium`; skipped, with the reason, when any of them is missing. No driver is ever downloaded.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_interpret.views.interactive import (
    InteractiveView,
    box_scores_from_cells,
    interactive_view_html,
    percentages,
)
from diffusers_interpret.views.markup import image_to_data_uri

MALICIOUS = "</script><script>window.__pwned = 1; alert(1)</script>"
TOKENS = ["a", "red", MALICIOUS, "<img src=x onerror=window.__pwned=2>", "circle"]
HEIGHT, WIDTH = 48, 64
CELL = (8, 16)  # rows 6, columns 4
ROWS, COLS = 6, 4
HIDDEN = 16


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    cells = rng.normal(size=(ROWS, COLS, len(TOKENS), HIDDEN)).astype(np.float32)
    cells[:, :, 4] *= 3.0  # one dominant token, so percentages differ clearly
    image = Image.fromarray(rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8))
    steps = [Image.new("RGB", (WIDTH, HEIGHT), color) for color in ("black", "gray", "white")]
    attention = [rng.random((HEIGHT, WIDTH)).astype(np.float32) for _ in TOKENS]
    attention[0] = None  # a token without a map
    return dict(image=image, steps=steps, cells=cells, attention=attention)


@pytest.fixture(scope="module")
def page(browser, data, tmp_path_factory):
    view = InteractiveView(
        data["image"], data["steps"], TOKENS, CELL, data["cells"], attention_maps=data["attention"], title=MALICIOUS
    )
    path = view.save(tmp_path_factory.mktemp("view") / "view.html")
    browser.get(path.resolve().as_uri())
    browser.get_log("browser")  # start the next check from an empty log
    uid = browser.find_element("css selector", ".di-view").get_attribute("data-view-id")
    return browser, uid


def bar_values(driver, uid, role="token"):
    elements = driver.find_elements("css selector", f'#{uid}-bars [data-role="{role}"] [data-role="pct"]')
    return np.array([float(element.get_attribute("data-value")) for element in elements])


def severe_logs(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_python_reference():
    rng = np.random.default_rng(1)
    cells = rng.normal(size=(3, 2, 4, 5))
    expected = np.linalg.norm(cells[1:3, 0:2].sum(axis=(0, 1)), axis=-1)
    np.testing.assert_allclose(box_scores_from_cells(cells, 1, 0, 3, 2), expected)
    np.testing.assert_allclose(percentages(expected).sum(), 100.0)
    with pytest.raises(ValueError):
        box_scores_from_cells(cells, 2, 0, 2, 1)


def test_validation_and_escaping_in_markup(data):
    with pytest.raises(ValueError, match="shape"):
        interactive_view_html(data["image"], [], TOKENS, (8, 8), data["cells"])
    markup = interactive_view_html(data["image"], [], TOKENS, CELL, data["cells"], title=MALICIOUS)
    assert "<script>window.__pwned" not in markup and "<img src=x" not in markup
    assert markup.count("<script>") == 1 and markup.count("</script>") == 1
    assert interactive_view_html(data["image"], [], TOKENS, CELL, data["cells"]) != markup  # fresh ids


def test_loads_without_errors_and_shows_whole_image(page, data):
    driver, uid = page
    assert driver.execute_script("return window.__pwned") is None
    assert severe_logs(driver) == []
    root = driver.find_element("id", uid)
    assert root.get_attribute("data-box") == f"0,0,{ROWS},{COLS}"
    expected = percentages(box_scores_from_cells(data["cells"], 0, 0, ROWS, COLS))
    np.testing.assert_allclose(bar_values(driver, uid), expected, rtol=1e-4)
    labels = driver.find_elements("css selector", f'#{uid}-bars [data-role="label"]')
    assert [label.text for label in labels][:2] == TOKENS[:2]
    assert labels[2].get_attribute("textContent") == MALICIOUS  # shown as text, not run
    assert driver.find_element("css selector", ".di-title").get_attribute("textContent") == MALICIOUS


def test_scores_function_matches_reference(page, data):
    driver, uid = page
    for box in [(0, 0, ROWS, COLS), (1, 2, 3, 4), (5, 0, 6, 1)]:
        scores = driver.execute_script(
            f"return window.diffusersInterpretViews[{uid!r}].scoresForBox(...arguments)", *box
        )
        np.testing.assert_allclose(scores, box_scores_from_cells(data["cells"], *box), rtol=1e-4)


def test_mouse_drag_updates_bars(page, data):
    from selenium.webdriver.common.action_chains import ActionChains

    driver, uid = page
    stage = driver.find_element("id", f"{uid}-stage")
    rect = driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", stage)
    sx, sy = rect["width"] / WIDTH, rect["height"] / HEIGHT  # display pixels per image pixel

    def offset(row, col):  # from the element's centre (Selenium 4) to the middle of cell (row, col)
        x = ((col + 0.5) * CELL[1]) * sx - rect["width"] / 2
        y = ((row + 0.5) * CELL[0]) * sy - rect["height"] / 2
        return int(round(x)), int(round(y))

    # Drag from cell (4, 3) up-left to cell (1, 1): the box covers rows 1..4 and columns 1..3.
    start, end = offset(4, 3), offset(1, 1)
    actions = ActionChains(driver)
    actions.move_to_element_with_offset(stage, *start).click_and_hold()
    actions.move_by_offset(end[0] - start[0], (end[1] - start[1]) // 2)
    actions.move_by_offset(0, end[1] - start[1] - (end[1] - start[1]) // 2).release().perform()

    assert driver.find_element("id", uid).get_attribute("data-box") == "1,1,5,4"
    expected = percentages(box_scores_from_cells(data["cells"], 1, 1, 5, 4))
    values = bar_values(driver, uid)
    np.testing.assert_allclose(values, expected, rtol=1e-4)
    whole = percentages(box_scores_from_cells(data["cells"], 0, 0, ROWS, COLS))
    assert not np.allclose(values, whole, rtol=1e-3)
    box = driver.find_element("id", f"{uid}-box")
    assert abs(box.size["width"] - 3 * CELL[1] * sx) <= 1 and abs(box.size["height"] - 4 * CELL[0] * sy) <= 1

    # A click without moving selects one cell; a double click goes back to the whole image.
    ActionChains(driver).move_to_element_with_offset(stage, *offset(0, 2)).click().perform()
    assert driver.find_element("id", uid).get_attribute("data-box") == "0,2,1,3"
    np.testing.assert_allclose(
        bar_values(driver, uid), percentages(box_scores_from_cells(data["cells"], 0, 2, 1, 3)), rtol=1e-4
    )
    ActionChains(driver).move_to_element(stage).double_click().perform()
    assert driver.find_element("id", uid).get_attribute("data-box") == f"0,0,{ROWS},{COLS}"
    assert severe_logs(driver) == []


def test_click_token_shows_attention_map(page, data):
    from diffusers_interpret.attention import colorize

    driver, uid = page
    overlay = driver.find_element("id", f"{uid}-overlay")
    rows = driver.find_elements("css selector", f'#{uid}-bars [data-role="token"]')
    assert not overlay.is_displayed()
    rows[1].click()
    assert overlay.is_displayed()
    assert overlay.get_attribute("data-token-index") == "1"
    assert overlay.get_attribute("src") == image_to_data_uri(colorize(data["attention"][1]))
    rows[3].click()
    assert overlay.get_attribute("src") == image_to_data_uri(colorize(data["attention"][3]))
    rows[3].click()  # the same token again hides it
    assert not overlay.is_displayed()
    rows[0].click()  # a token without a map
    assert not overlay.is_displayed()
    assert driver.execute_script("return window.__pwned") is None
    assert severe_logs(driver) == []


def test_step_slider_changes_image(page, data):
    from selenium.webdriver.common.keys import Keys

    driver, uid = page
    image = driver.find_element("id", f"{uid}-image")
    slider = driver.find_element("id", f"{uid}-step")
    assert image.get_attribute("src") == image_to_data_uri(data["image"])
    slider.click()
    slider.send_keys(Keys.HOME)
    assert image.get_attribute("src") == image_to_data_uri(data["steps"][0])
    assert driver.find_element("id", f"{uid}-step-label").text == "step 1/3"
    slider.send_keys(Keys.ARROW_RIGHT)
    assert image.get_attribute("src") == image_to_data_uri(data["steps"][1])
    slider.send_keys(Keys.END)
    assert image.get_attribute("src") == image_to_data_uri(data["image"])
    assert severe_logs(driver) == []


def test_two_views_in_one_page(browser, data, tmp_path):
    first = interactive_view_html(data["image"], [], TOKENS, CELL, data["cells"])
    second = interactive_view_html(data["image"], data["steps"], TOKENS, CELL, data["cells"] * 2)
    path = tmp_path / "two.html"
    path.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"/></head><body>{first}{second}</body></html>')
    browser.get(path.as_uri())
    ids = browser.execute_script("return Object.keys(window.diffusersInterpretViews)")
    assert len(ids) == 2 and ids[0] != ids[1]
    browser.execute_script(f"window.diffusersInterpretViews[{ids[0]!r}].setBox(0, 0, 1, 1)")
    assert browser.find_element("id", ids[0]).get_attribute("data-box") == "0,0,1,1"
    assert browser.find_element("id", ids[1]).get_attribute("data-box") == f"0,0,{ROWS},{COLS}"
    assert browser.execute_script("return window.__pwned") is None
    assert severe_logs(browser) == []


def test_view_of_a_real_explanation(browser, tiny_pipe, tmp_path):
    # A real explainer output: the bars for a drawn box equal a separate backward pass for that box
    # (output.explain), and a clicked token shows that token's recorded attention map.
    from selenium.webdriver.common.action_chains import ActionChains

    from diffusers_interpret import StableDiffusionPipelineExplainer
    from diffusers_interpret.attention import colorize

    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    prompt = "a red circle </script><script>window.__pwned=3</script> on the left"
    output = explainer(
        prompt,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
        attribution_method="grad_x_input",  # the view scores boxes by the call's method: here from the graph
        keep_for_reexplanation="graph",
        attention_maps=True,
        n_last_diffusion_steps_to_consider_for_attributions=2,
    )
    cell = 8
    path = output.interactive_view(cell).save(tmp_path / "real.html")
    browser.get(path.resolve().as_uri())
    uid = browser.find_element("css selector", ".di-view").get_attribute("data-view-id")
    stage = browser.find_element("id", f"{uid}-stage")
    rect = browser.execute_script("return arguments[0].getBoundingClientRect().toJSON()", stage)
    height, width = output.image.size[1], output.image.size[0]
    sx, sy = rect["width"] / width, rect["height"] / height

    def offset(row, col):
        return (
            int(round((col + 0.5) * cell * sx - rect["width"] / 2)),
            int(round((row + 0.5) * cell * sy - rect["height"] / 2)),
        )

    start, end = offset(0, 0), offset(1, 2)  # cells rows 0..1, columns 0..2
    ActionChains(browser).move_to_element_with_offset(stage, *start).click_and_hold().move_by_offset(
        end[0] - start[0], end[1] - start[1]
    ).release().perform()
    assert browser.find_element("id", uid).get_attribute("data-box") == "0,0,2,3"
    expected = output.explain(
        explanation_2d_bounding_box=((0, 0), (3 * cell, 2 * cell)), attribution_method="grad_x_input"
    )
    np.testing.assert_allclose(
        bar_values(browser, uid), [pct for _, pct in expected.token_attributions.normalized], rtol=1e-3, atol=1e-3
    )
    # The script tags split one word into many tokens: the bars show the words (each its tokens' scores summed), the
    # tokens under "each text encoder's tokens".
    assert len(expected.word_attributions) < len(expected.token_attributions)
    np.testing.assert_allclose(
        bar_values(browser, uid, "word"), [pct for _, pct in expected.word_attributions.normalized], atol=1e-3
    )
    browser.find_element("css selector", f'#{uid}-bars details[data-role="tokens"] summary').click()
    rows = browser.find_elements("css selector", f'#{uid}-bars [data-role="token"]')
    rows[1].click()
    overlay = browser.find_element("id", f"{uid}-overlay")
    position = output.extras["token_positions"][1]
    assert overlay.get_attribute("src") == image_to_data_uri(colorize(output.attention_maps.for_token(position)))
    assert browser.execute_script("return window.__pwned") is None
    assert severe_logs(browser) == []
    output.release()


def test_cli_report_with_interactive_view_loads(browser, tmp_path):
    from diffusers_interpret.cli import main

    assert (
        main(["demo", "--out", str(tmp_path), "--quiet", "--steps", "3", "--traced", "1", "--interactive", "16"]) == 0
    )
    browser.get((tmp_path / "report.html").resolve().as_uri())
    views = browser.execute_script("return Object.keys(window.diffusersInterpretViews)")
    assert len(views) == 3  # one per demo prompt
    view = views[0]
    browser.execute_script(f"window.diffusersInterpretViews[{view!r}].setBox(0, 0, 1, 1)")
    assert browser.find_element("id", view).get_attribute("data-box") == "0,0,1,1"
    assert severe_logs(browser) == []


def test_word_attention_view_is_the_methods_own(browser, tiny_pipe, tmp_path):
    # The default method's view: the bars for a box (cells of 12 px on a 32 px image: the last row and column are cut)
    # equal output.explain(box) of the same method, the whole image its whole-image scores; no gradient involved.
    from diffusers_interpret import StableDiffusionPipelineExplainer

    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    output = explainer("a red circle on the left", num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert output.attribution_method == "word_attention"
    view = output.interactive_view(12)
    assert view.score == "word_attention" and view.cell_grad_x_input.shape[:2] == (3, 3)
    path = view.save(tmp_path / "words.html")
    browser.get(path.resolve().as_uri())
    uid = browser.find_element("css selector", ".di-view").get_attribute("data-view-id")
    assert "word_attention" in browser.find_element("css selector", f'#{uid} [data-role="method"]').text
    whole = [pct for _, pct in output.token_attributions.normalized]
    np.testing.assert_allclose(bar_values(browser, uid), whole, rtol=1e-3, atol=1e-3)
    browser.execute_script(f"window.diffusersInterpretViews[{uid!r}].setBox(1, 0, 3, 2)")
    expected = output.explain(explanation_2d_bounding_box=((0, 12), (24, 32)))
    np.testing.assert_allclose(
        bar_values(browser, uid), [pct for _, pct in expected.token_attributions.normalized], rtol=1e-3, atol=1e-3
    )
    assert severe_logs(browser) == []


def test_a_flux_view_shows_each_word_once_and_the_tokens_one_click_away(browser, tmp_path):
    # The toy Flux reads the prompt with T5 (where "triangle" is two pieces) and CLIP: the bars are the prompt's words,
    # each scored as the method merges its tokens (T5's most-read piece, plus CLIP's token); a clicked word shows its
    # tokens' maps summed; the tokens are labelled by encoder.
    from diffusers_interpret import explainer_for
    from diffusers_interpret.attention import colorize
    from diffusers_interpret.toy import TOY_FLUX_CALL, load_toy_flux_pipeline

    prompt = "a yellow triangle on the left and a blue circle on the right"
    call = {**TOY_FLUX_CALL, "num_inference_steps": 4}
    explainer = explainer_for(load_toy_flux_pipeline(), verbose=False)
    output = explainer(prompt, generator=torch.Generator().manual_seed(0), attribution_method="word_attention", **call)
    browser.get(output.interactive_view(8).save(tmp_path / "flux.html").resolve().as_uri())
    uid = browser.find_element("css selector", ".di-view").get_attribute("data-view-id")
    shown = [e.text for e in browser.find_elements("css selector", f'#{uid}-bars [data-role="word-label"]')]
    assert shown == prompt.split()
    tokens = browser.find_elements("css selector", f'#{uid}-bars [data-role="token"]')
    assert len(tokens) == len(output.token_attributions) and not tokens[0].is_displayed()
    np.testing.assert_allclose(
        bar_values(browser, uid, "word"), [pct for _, pct in output.word_attributions.normalized], atol=1e-3
    )
    browser.find_element("css selector", f'#{uid}-bars details[data-role="tokens"] summary').click()
    labels = [e.text for e in browser.find_elements("css selector", f'#{uid}-bars [data-role="label"]')]
    assert "tri (T5)" in labels and "angle (T5)" in labels and "triangle (CLIP)" in labels
    word = prompt.split().index("triangle")
    browser.find_elements("css selector", f'#{uid}-bars [data-role="word"]')[word].click()
    positions = [output.token_positions[t] for t in output.word_tokens[word]]
    in_maps = [p for p in positions if p < output.attention_maps.num_tokens]  # T5's two pieces; CLIP's has no map
    assert len(in_maps) == 2
    overlay = browser.find_element("id", f"{uid}-overlay")
    assert overlay.get_attribute("src") == image_to_data_uri(colorize(output.attention_maps.for_tokens(in_maps)))
    assert severe_logs(browser) == []
