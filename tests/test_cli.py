"""The `diffusers-interpret` command and its self-contained HTML report, on the shipped toy model."""

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_interpret import PipelineImg2ImgExplainerOutput, SaliencyMap, TokenAttributions
from diffusers_interpret.cli import DEMO_PROMPTS, main, parse_box
from diffusers_interpret.toy import TOY_GUIDANCE_SCALE, load_toy_pipeline, toy_model_available
from diffusers_interpret.toy.detector import object_boxes
from diffusers_interpret.views.report import write_report

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red circle on the left and a blue square on the right"

needs_toy = pytest.mark.skipif(not toy_model_available(), reason="the shipped toy model's files are missing")


def assert_self_contained(page: str) -> None:
    # Every src/href is a data URI: nothing is fetched, nothing needs to lie beside the file.
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert references and all(ref.startswith("data:image/png;base64,") for ref in references), references[:5]
    assert "url(" not in page and "@import" not in page
    assert not re.search(r"""src\s*=\s*["']?(?:https?:|file:|//)""", page)


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@needs_toy
def test_demo_writes_a_self_contained_report(tmp_path, capsys):
    code, out, _ = run_cli(["demo", "--out", str(tmp_path), "--steps", "10", "--quiet"], capsys)
    assert code == 0
    report = tmp_path / "report.html"
    assert out.strip() == str(report)
    page = report.read_text(encoding="utf-8")
    for prompt in DEMO_PROMPTS:
        assert f"<h2>{html.escape(prompt)}</h2>" in page
    # Per prompt: the whole image, a box around each object the toy drew and one over empty background (found by
    # the independent detector on the same image), each with its bars and how much it depends on the prompt.
    pipe = load_toy_pipeline()
    call = dict(height=32, width=32, num_inference_steps=10, guidance_scale=TOY_GUIDANCE_SCALE, output_type="np")
    boxes = []
    for prompt in DEMO_PROMPTS:
        image = pipe(prompt, generator=torch.Generator().manual_seed(0), **call).images[0]
        boxes += object_boxes(image)
    assert sum(kind == "object" for kind, _ in boxes) >= len(DEMO_PROMPTS)
    for _, ((x0, y0), (x1, y1)) in boxes:
        assert f"<h3>box ({x0}, {y0})-({x1}, {y1})</h3>" in page
    assert page.count("<h3>whole image</h3>") == len(DEMO_PROMPTS)
    assert page.count('<table class="bars') == len(DEMO_PROMPTS) + len(boxes)
    cards = re.findall(r'<div class="dependence">([^<]*)</div>', page)
    assert sum(line.startswith("Depends on the prompt:") for line in cards) == sum(k == "object" for k, _ in boxes)
    assert sum(line.startswith("Depends little on the prompt:") for line in cards) == sum(
        k == "empty" for k, _ in boxes
    )
    assert_self_contained(page)
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == len(DEMO_PROMPTS) + 2 * (len(DEMO_PROMPTS) + len(boxes))  # final step, image + plot per card
    assert Image.open(pngs[0]).size[0] > 0


@needs_toy
def test_explain_with_boxes_on_the_toy_model(tmp_path, capsys):
    argv = ["explain", PROMPT, "--box", "0,0,16,32", "--box", "16,0,32,32", "--steps", "8", "--traced", "2"]
    code, out, _ = run_cli(argv + ["--method", "mean_grad", "--seed", "3", "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0
    page = Path(out.strip()).read_text(encoding="utf-8")
    assert "box (0, 0)-(16, 32)" in page and "box (16, 0)-(32, 32)" in page and "whole image" not in page
    assert "mean_grad on the words of the prompt" in page and "2 denoiser calls read" in page
    assert page.count('<table class="bars') == 2
    assert_self_contained(page)
    boxed = Image.open(next(tmp_path.glob("*_e2_image.png"))).convert("RGB")
    assert boxed.getpixel((16, 0)) == (255, 0, 0)  # the right box's outline, on its own border pixels


def test_explain_an_image_file_on_the_toy_model(tmp_path, capsys):
    from diffusers_interpret.segmentation import toy_scenes

    scene = toy_scenes(1, seed=5)[0]  # "a yellow triangle on the left and a blue circle on the right", rendered
    scene.image.save(tmp_path / "scene.png")
    argv = ["explain-image", str(tmp_path / "scene.png"), "--prompt", scene.prompt, "--box", "0,0,16,32"]
    argv += ["--box", "16,0,32,32", "--interactive", "4", "--noise-levels", "0.4", "0.6", "--out", str(tmp_path / "o")]
    code, out, _ = run_cli(argv + ["--quiet"], capsys)
    assert code == 0
    page = Path(out.strip()).read_text(encoding="utf-8")
    assert "box (0, 0)-(16, 32)" in page and "box (16, 0)-(32, 32)" in page
    assert "noise levels" in page and "0.4, 0.6" in page and "scene.png (32x32" in page
    assert "interactive: drag a box" in page
    assert_self_contained(page)
    # The report's bars are the explanation's: the left box's top word is the triangle's colour.
    left = page[page.index("box (0, 0)-(16, 32)") : page.index("box (16, 0)-(32, 32)")]
    shares = dict(re.findall(r'<td class="token">([^<]+)</td>.*?([0-9.]+)%', left, re.S))
    assert max(shares, key=lambda word: float(shares[word])) == "yellow"


def test_the_toy_flux_runs_with_its_own_settings_and_shows_each_word_once(tmp_path, capsys):
    argv = ["explain", PROMPT, "--model", "toy-flux", "--box", "0,0,32,64", "--steps", "4", "--traced", "1"]
    argv += ["--method", "grad_x_input"]  # a gradient: the pooled vector's share is read too
    code, out, _ = run_cli(argv + ["--out", str(tmp_path / "a"), "--quiet"], capsys)
    assert code == 0
    page = Path(out.strip()).read_text(encoding="utf-8")
    settings = dict(re.findall(r"<tr><td>([^<]+)</td><td>([^<]*)</td></tr>", page))
    assert settings["model"] == "shipped toy Flux model (64x64)" and settings["image size"].startswith("64x64")
    assert settings["true CFG scale"] == "4.0" and settings["max sequence length"] == "16"
    assert settings["negative prompt"] == html.escape("''") and settings["steps"] == "4"
    card = page[page.index("box (0, 0)-(32, 64)") :]
    words, tokens = card.split("each text encoder's tokens")[:2]
    shown = re.findall(r'<td class="token">([^<]+)</td>', words)
    assert shown == PROMPT.split()  # every word once, T5's and CLIP's scores merged
    labelled = re.findall(r'<td class="token">([^<]+)</td>', tokens)
    assert "red (T5)" in labelled and "red (CLIP)" in labelled
    assert "summary vector" in card  # the pooled vector's share, in words
    argv = ["explain", PROMPT, "--model", "toy-flux", "--steps", "2", "--traced", "1", "--method", "attention"]
    argv += ["--max-sequence-length", "32", "--true-cfg-scale", "1", "--out", str(tmp_path / "b"), "--quiet"]
    code, out, _ = run_cli(argv, capsys)
    page = Path(out.strip()).read_text(encoding="utf-8")
    settings = dict(re.findall(r"<tr><td>([^<]+)</td><td>([^<]*)</td></tr>", page))
    assert code == 0 and settings["max sequence length"] == "32" and settings["true CFG scale"] == "1.0"
    assert "are not the prompt's words (padding" in html.unescape(page)  # the attention left out of the maps, in words
    # A text of its own for T5: the heading names it, the bars list its words and the prompt's, each labelled.
    argv = ["explain", "a red circle", "--model", "toy-flux", "--steps", "2", "--traced", "1"]
    argv += ["--prompt-2", PROMPT, "--out", str(tmp_path / "c"), "--quiet"]
    code, out, _ = run_cli(argv, capsys)
    page = Path(out.strip()).read_text(encoding="utf-8")
    assert code == 0 and f"<h2>a red circle; prompt_2: {PROMPT}</h2>" in page
    whole = page[page.index("<h3>whole image</h3>") :].split("each text encoder's tokens")[0]
    shown = re.findall(r'<td class="token">([^<]+)</td>', whole)
    assert shown == [f"{w} (T5)" for w in PROMPT.split()] + ["a (CLIP)", "red (CLIP)", "circle (CLIP)"]


@needs_toy
def test_prompt_2_for_a_model_without_it_is_refused_in_one_line(tmp_path, capsys):
    argv = ["explain", PROMPT, "--steps", "2", "--prompt-2", "a cat", "--out", str(tmp_path), "--quiet"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--prompt-2 is not an argument of this model's StableDiffusionPipeline" in err and "Traceback" not in err


def test_demo_of_the_toy_sd3_shows_each_word_once(tmp_path, capsys):
    argv = ["demo", "--family", "sd3", "--steps", "3", "--traced", "1", "--interactive", "0", "--quiet"]
    argv += ["--method", "grad_x_input"]
    code, out, _ = run_cli(argv + ["--out", str(tmp_path)], capsys)
    assert code == 0
    page = Path(out.strip()).read_text(encoding="utf-8")
    settings = dict(re.findall(r"<tr><td>([^<]+)</td><td>([^<]*)</td></tr>", page))
    assert settings["model"] == "shipped toy Stable Diffusion 3 model (64x64)" and settings["steps"] == "3"
    assert page.count("<h3>whole image</h3>") == len(DEMO_PROMPTS)
    card = page[page.index("<h3>whole image</h3>") :]
    words, tokens = card.split("each text encoder's tokens")[:2]
    shown = re.findall(r'<td class="token">([^<]+)</td>', words)
    assert shown == DEMO_PROMPTS[0].split()  # every word once: the CLIP tokens' and T5's pieces' scores merged
    labelled = re.findall(r'<td class="token">([^<]+)</td>', tokens.split("<h3>")[0])
    assert any(label.endswith("(T5)") for label in labelled) and any("(CLIP-L" in label for label in labelled)


def test_demo_of_the_toy_flux(tmp_path, capsys):
    argv = ["demo", "--family", "flux", "--steps", "3", "--traced", "1", "--interactive", "0", "--quiet"]
    code, out, _ = run_cli(argv + ["--out", str(tmp_path)], capsys)
    assert code == 0
    page = Path(out.strip()).read_text(encoding="utf-8")
    assert "toy Flux" in page and page.count("<h3>whole image</h3>") == len(DEMO_PROMPTS)


def test_demo_of_the_toy_wan(tmp_path, capsys):
    # Two clips of the toy video model, each whole and the object's box on its first and on its last frame, the box
    # moving the way the prompt says (found by the detector on the clip the call made).
    from diffusers_interpret.cli import VIDEO_DEMO_PROMPTS

    argv = ["demo", "--family", "wan", "--interactive", "0", "--quiet", "--out", str(tmp_path)]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    page = Path(out.strip()).read_text(encoding="utf-8")
    assert "toy Wan video model" in page and page.count("<h3>the whole clip</h3>") == len(VIDEO_DEMO_PROMPTS)
    for prompt in VIDEO_DEMO_PROMPTS:
        card = page[page.index(f">{prompt}<") :]
        first, last = re.findall(r"<h3>the box \(\((\d+), \d+\), .*? on frame (\d+) of the clip</h3>", card)[:2]
        assert (first[1], last[1]) == ("0", "8")
        moved = int(last[0]) - int(first[0])
        assert moved > 4 if prompt.endswith("right") else moved < -4, (prompt, first, last)


def test_demo_of_the_toy_wan_with_a_gradient_method(tmp_path, capsys):
    # A gradient method keeps no graph for the boxes by default: each box gets a call of its own.
    argv = ["demo", "--family", "wan", "--method", "grad_x_input", "--traced", "1", "--interactive", "0", "--quiet"]
    code, out, _ = run_cli(argv + ["--no-prompt-dependence", "--out", str(tmp_path)], capsys)
    assert code == 0
    page = Path(out.strip()).read_text(encoding="utf-8")
    assert len(re.findall(r"<h3>the box \(\(\d+, \d+\), .*? on frame [08] of the clip</h3>", page)) == 4


def test_demo_of_the_toy_controlnet(tmp_path, capsys):
    # Two held-out scenes' outlines, each with its full prompt and a colour-only one: a card per region with the
    # control image's attributions and how much the region depends on the control.
    argv = [
        "demo",
        "--family",
        "controlnet",
        "--steps",
        "3",
        "--interactive",
        "0",
        "--quiet",
        "--no-prompt-dependence",
    ]
    code, out, _ = run_cli(argv + ["--out", str(tmp_path)], capsys)
    assert code == 0
    page = Path(out.strip()).read_text(encoding="utf-8")
    assert "toy ControlNet" in page and page.count("<h3>whole image</h3>") == 4
    assert page.count("control image / pixel attributions") == 12  # every region's card, boxes included
    assert " object on the left" in page  # the colour-only prompts


@needs_toy
def test_explain_a_model_folder(tmp_path, capsys):
    from diffusers_interpret.toy import load_toy_pipeline

    load_toy_pipeline().save_pretrained(tmp_path / "model")  # any StableDiffusionPipeline folder
    argv = ["explain", PROMPT, "--model", str(tmp_path / "model"), "--steps", "4", "--traced", "1", "--quiet"]
    code, out, _ = run_cli(argv + ["--out", str(tmp_path / "out")], capsys)
    assert code == 0
    page = Path(out.strip()).read_text(encoding="utf-8")
    assert str(tmp_path / "model") in page and "whole image" in page
    with pytest.raises(SystemExit) as raised:
        main(["explain", PROMPT, "--model", str(tmp_path / "out"), "--out", str(tmp_path / "out2")])
    assert raised.value.code == 2
    assert "not a diffusers pipeline folder" in capsys.readouterr().err


@needs_toy
def test_prompt_with_markup_is_escaped(tmp_path, capsys):
    prompt = 'a red circle </script><script>alert("x")</script> & <b>bold</b>'
    code, out, _ = run_cli(
        ["explain", prompt, "--steps", "4", "--traced", "1", "--out", str(tmp_path), "--quiet"], capsys
    )
    assert code == 0
    page = Path(out.strip()).read_text(encoding="utf-8")
    assert html.escape(prompt) in page
    assert "alert(" not in page.replace("alert(&quot;", "")  # only the escaped text
    assert "<b>" not in page
    # The only script elements are the step slider's (one per prompt), whose data is script-safe JSON.
    assert page.count("<script>") == 1 and page.count("</script>") == 1
    assert_self_contained(page)


BAD_ARGUMENTS = {
    "box syntax": ["explain", PROMPT, "--box", "1,2,3"],
    "box not numbers": ["explain", PROMPT, "--box", "a,b,c,d"],
    "inverted box": ["explain", PROMPT, "--box", "16,0,0,32"],
    "box outside the image": ["explain", PROMPT, "--box", "0,0,64,64"],
    "missing model path": ["explain", PROMPT, "--model", "./no/such/model/dir"],
    "bad method": ["explain", PROMPT, "--method", "saliency"],
    "bad level": ["explain", PROMPT, "--level", "unet"],
    "zero steps": ["explain", PROMPT, "--steps", "0"],
    "negative traced": ["explain", PROMPT, "--traced", "-2"],
    "unknown command": ["frobnicate"],
    "no command": [],
}


@pytest.mark.parametrize("name", sorted(BAD_ARGUMENTS))
def test_bad_arguments_give_one_line_and_exit_2(name, tmp_path, capsys):
    argv = BAD_ARGUMENTS[name]
    if argv and argv[0] == "explain":
        argv = argv + ["--out", str(tmp_path / "out"), "--quiet"]
    if name == "box outside the image" and not toy_model_available():
        pytest.skip("the shipped toy model's files are missing")
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffusers-interpret: error: "), err
    assert not (tmp_path / "out" / "report.html").exists()


@needs_toy
def test_a_call_that_would_not_fit_in_memory_is_one_line_naming_the_way_out(tmp_path, capsys, monkeypatch):
    from diffusers_interpret import memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 1024)
    argv = ["explain", PROMPT, "--steps", "2", "--method", "grad_x_input", "--out", str(tmp_path), "--quiet"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("diffusers-interpret: error: This explanation would need about") and "Traceback" not in err
    assert not (tmp_path / "report.html").exists()
    code, out, _ = run_cli(argv + ["--no-memory-check"], capsys)
    assert code == 0 and (tmp_path / "report.html").is_file()


def test_parse_box():
    assert parse_box("0,0,16,32") == ((0, 0), (16, 32))
    assert parse_box(" 1, 2, 3, 4 ") == ((1, 2), (3, 4))


def test_help_reads_with_examples(capsys):
    for argv in (["--help"], ["explain", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as raised:
            main(argv)
        assert raised.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: diffusers-interpret")
        assert ("examples:" in out) == (argv[0] != "demo")
        assert ("--out DIR" in out) == (argv[0] != "--help")


def test_python_m_entry_point(tmp_path):
    # One subprocess (importing torch is slow): `python -m diffusers_interpret` exits 2 with the one-line error.
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    bad = subprocess.run(
        [sys.executable, "-m", "diffusers_interpret", "explain", PROMPT, "--box", "0,0,16", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "diffusers-interpret: error: argument --box: bad box '0,0,16': expected four integers x0,y0,x1,y1 (pixels, "
        "upper-left corner first), e.g. 0,0,16,32"
    ]


def test_report_shows_saliency_maps_of_image_inputs(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    output = PipelineImg2ImgExplainerOutput(
        image=image,
        token_attributions=TokenAttributions([("a", 1.0), ("cat", 3.0)]),
        prompt="a cat",
        input_saliency_map=SaliencyMap(image, rng.random((32, 32))),
        input_image=image,
    )
    path = write_report([output], tmp_path, save_plots=False)
    page = path.read_text(encoding="utf-8")
    assert "pixel attributions of the input image" in page
    assert (tmp_path / "p01_a_cat_e1_saliency.png").is_file() and (tmp_path / "p01_a_cat_e1_input.png").is_file()
    assert_self_contained(page)
    with pytest.raises(ValueError):
        write_report([], tmp_path)


def test_explain_an_sdxl_model_folder(tmp_path, capsys):
    from diffusers_interpret.testing.stable_diffusion_xl import make_tiny_sdxl_pipeline

    make_tiny_sdxl_pipeline("text2img").save_pretrained(tmp_path / "model")
    code = main(
        ["explain", PROMPT, "--model", str(tmp_path / "model"), "--steps", "2", "--box", "0,0,16,32", "--quiet"]
        + ["--out", str(tmp_path / "out")]
    )
    assert code == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "blue" in page and "32x32" in page
    assert_self_contained(page)


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_explain_a_controlnet_model_folder(tmp_path, family, capsys):
    # A saved ControlNet pipeline and a control image on disk: the report shows the control image's pixel
    # attributions and how much each box depends on it; a ControlNet without --control-image, and --control-image on
    # a pipeline without a ControlNet, are one error line each.
    import numpy as np
    from PIL import Image

    from diffusers_interpret.testing.controlnet import make_tiny_controlnet_pipeline

    size = 16 if family == "flux" else 32
    make_tiny_controlnet_pipeline(family).save_pretrained(tmp_path / "model")
    control = tmp_path / "edges.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(control)
    model, out = str(tmp_path / "model"), str(tmp_path / "out")
    common = ["--steps", "2", "--quiet", "--height", str(size), "--width", str(size), "--out", out]
    common += ["--max-sequence-length", "16"] if family == "flux" else []
    with pytest.raises(SystemExit):
        main(["explain", "a red circle", "--model", model, *common])
    assert "--control-image PATH" in capsys.readouterr().err
    code = main(
        ["explain", "a red circle", "--model", model, "--control-image", str(control), "--control-scale", "0.7"]
        + ["--box", "0,0,8,16", *common]
    )
    assert code == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "control image / pixel attributions" in page and "Without the control image the model redraws" in page
    assert "control scale" in page and "edges.png" in page
    assert_self_contained(page)
    with pytest.raises(SystemExit):
        main(["explain", "a red circle", "--model", "toy", "--control-image", str(control), "--out", out, "--quiet"])
    assert "has no ControlNet" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["instruct_pix2pix", "flux_fill"])
def test_explain_an_editing_model_folder(tmp_path, family, capsys):
    # An instruction editor (its size from --image) and Flux Fill (--image and --mask) from saved folders: the
    # report shows the input image's pixel attributions; a missing --mask is one error line.
    import numpy as np
    from PIL import Image

    size = 16 if family == "flux_fill" else 32
    if family == "flux_fill":
        from diffusers_interpret.testing.flux_edits import make_tiny_flux_fill_pipeline

        make_tiny_flux_fill_pipeline().save_pretrained(tmp_path / "model")
        extra = ["--max-sequence-length", "16", "--height", "16", "--width", "16"]
    else:
        from diffusers_interpret.testing import make_tiny_pipeline

        make_tiny_pipeline("instruct_pix2pix", sample_size=16, layers_per_block=1).save_pretrained(tmp_path / "model")
        extra = []
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
        tmp_path / "in.png"
    )
    mask = np.zeros((size, size), np.uint8)
    mask[2:10, 2:10] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    model, out = str(tmp_path / "model"), str(tmp_path / "out")
    common = ["--model", model, "--steps", "2", "--quiet", "--out", out, "--image", str(tmp_path / "in.png"), *extra]
    if family == "flux_fill":
        with pytest.raises(SystemExit):
            main(["explain", "make it red", *common])
        assert "--mask PATH" in capsys.readouterr().err
        common += ["--mask", str(tmp_path / "mask.png")]
    assert main(["explain", "make it red", "--box", "0,0,8,16", *common]) == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "input image / pixel attributions" in page and "in.png" in page
    assert_self_contained(page)


@pytest.mark.parametrize("method", [None, "concept_attention"])
@pytest.mark.parametrize("family", ["flux", "sd3", "chroma", "flux2_klein", "flux2_dev", "qwenimage", "prx", "sana"])
def test_explain_a_transformer_model_folder(tmp_path, family, method, capsys):
    # (PRX is left out: transformers 5.25 reloads a saved T5GemmaEncoder with the default, 2B config.)
    if family in ("qwenimage", "sana", "z_image"):
        import importlib

        module = importlib.import_module(f"diffusers_interpret.testing.{family}")

        def make(kind):
            return getattr(module, f"make_tiny_{family}_pipeline")()
    elif family == "flux":
        from diffusers_interpret.testing.flux import make_tiny_flux_pipeline as make
    elif family == "chroma":
        from diffusers_interpret.testing.chroma import make_tiny_chroma_pipeline as make
    elif family.startswith("flux2"):
        from diffusers_interpret.testing import flux2

        def make(kind):
            return getattr(flux2, f"make_tiny_{family}_pipeline")()
    else:
        from diffusers_interpret.testing.stable_diffusion_3 import make_tiny_sd3_pipeline as make

    make("text2img").save_pretrained(tmp_path / "model")
    size = 32 if family == "sana" else 16  # Sana's sides are multiples of 32
    if family in ("sana", "z_image") and method == "concept_attention":  # no text stream: refused, saying so
        with pytest.raises(SystemExit):
            model, out = str(tmp_path / "model"), str(tmp_path / "out")
            main(["explain", "a dog", "--model", model, "--method", method, "--quiet", "--out", out, "--height", "32"]
                 + ["--width", "32", "--no-resolution-binning"])  # fmt: skip
        assert "needs a text stream" in capsys.readouterr().err
        return
    code = main(
        ["explain", "a cute corgi on the left", "--model", str(tmp_path / "model"), "--steps", "2", "--quiet"]
        + ["--height", str(size), "--width", str(size), "--box", "0,0,8,16", "--out", str(tmp_path / "out")]
        + ([] if method is None else ["--method", method])
        # SD3 at its default length (256); the others at 64 (Flux's default 512 costs word_attention 20 s here, its
        # forward-mode passes through T5 one per position: the path is the same at any length)
        + (["--max-sequence-length", "64"] if family != "sd3" else [])
        + (["--no-resolution-binning"] if family == "sana" else [])  # the tiny sizes have no bin
    )
    assert code == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "corgi" in page and f"{size}x{size}" in page
    expected = method or "word_attention"
    assert f"method {expected}" in page
    assert_self_contained(page)


def test_every_method_of_the_registry_is_offered_by_the_commands():
    from diffusers_interpret.cli import build_parser
    from diffusers_interpret.methods import method_names, parse_method

    parser = build_parser()
    for name in method_names():
        assert parse_method(name).name == name
        for command in (["explain", "x"], ["demo"], ["batch", "prompts.jsonl"]):
            assert parser.parse_args([*command, "--out", "o", "--method", name]).method == name
    with pytest.raises(SystemExit):
        parser.parse_args(["explain", "x", "--out", "o", "--method", "shap"])


def test_help_and_argument_errors_import_neither_torch_nor_diffusers():
    # What made `--help` take 5-9 s: the package imported torch and diffusers before parsing the arguments.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from diffusers_interpret.cli import main\n"
        "for argv in (['--help'], ['explain', 'x', '--box', '1,2']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
    assert "usage: diffusers-interpret" in result.stdout
    explain_help = subprocess.run(
        [sys.executable, "-m", "diffusers_interpret", "explain", "--help"], capture_output=True, text=True, timeout=60
    )
    assert "concept_attention" in explain_help.stdout and "word_attention" in explain_help.stdout
