r"""
Make the docs' pictures from real outputs of the shipped toy models (nothing drawn by hand): `docs/images/*.png`.

    python scripts/make_doc_pictures.py             # every picture
    python scripts/make_doc_pictures.py controlnet  # the toy ControlNet's only
    python scripts/make_doc_pictures.py video       # the toy Wan's clip
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffusers_interpret import StableDiffusionPipelineExplainer, edge_aware_maps  # noqa: E402
from diffusers_interpret.box import mask_box  # noqa: E402
from diffusers_interpret.edge_aware import region_maps  # noqa: E402
from diffusers_interpret.segmentation import toy_scenes  # noqa: E402
from diffusers_interpret.toy import TOY_GUIDANCE_SCALE, load_toy_pipeline  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
PROMPT = "a red circle on the left and a blue square on the right"


def main() -> None:
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    explainer = StableDiffusionPipelineExplainer(load_toy_pipeline(), verbose=False)
    output = explainer(
        PROMPT,
        num_inference_steps=20,
        guidance_scale=TOY_GUIDANCE_SCALE,
        generator=torch.Generator().manual_seed(0),
        attention_maps=True,
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), gridspec_kw={"width_ratios": [1, 2.2, 2.2]})
    axes[0].imshow(output.image.resize((128, 128), 0))
    axes[0].set_title("toy model's image")
    axes[0].axis("off")
    for ax, (side, box) in zip(axes[1:], (("left", ((0, 0), (16, 32))), ("right", ((16, 0), (32, 32))))):
        explained = output.explain(explanation_2d_bounding_box=box)
        explained.token_attributions.plot(ax=ax, title=f"box around the {side} half ({explained.attribution_method})")
    fig.tight_layout()
    fig.savefig(OUT / "boxes.png", dpi=90)
    plt.close(fig)
    positions = output.token_positions
    maps = output.attention_maps.plot(output.image, positions, output.token_attributions.tokens)
    maps.savefig(OUT / "attention_maps.png", dpi=80)
    edge_aware_picture(output)
    existing_image_picture(explainer)
    print("wrote", sorted(p.name for p in OUT.glob("*.png")))


def edge_aware_picture(output) -> None:
    # The default method's word maps of the object words, as made (bilinear from the attention grid) and given the
    # image's own edges (`edge_aware_maps`).
    import matplotlib.pyplot as plt

    words = output.token_attributions.tokens
    chosen = [words.index(word) for word in ("red", "circle", "blue", "square")]
    raw = np.asarray(output.word_maps)[chosen]
    filtered = edge_aware_maps(raw, output.image, output.word_map_cell_size)
    image = np.asarray(output.image)
    fig, axes = plt.subplots(2, len(chosen) + 1, figsize=(2.1 * (len(chosen) + 1), 4.4))
    for row, (maps, label) in enumerate(((raw, "as made"), (filtered, "given the image's edges"))):
        axes[row, 0].imshow(image)
        axes[row, 0].set_title("image" if row == 0 else "")
        axes[row, 0].set_ylabel(label)
        for ax, values, index in zip(axes[row, 1:], maps, chosen):
            ax.imshow((values - values.min()) / (np.ptp(values) or 1), cmap="magma", vmin=0, vmax=1)
            ax.set_title(f'"{words[index]}"', fontsize=9)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(OUT / "edge_aware_maps.png", dpi=80)
    plt.close(fig)


def existing_image_picture(explainer) -> None:
    # A scene rendered directly (the model never made it), explained with its prompt: the object words' maps as made
    # and given the image's regions beside the true masks, and the word bars of a box around each object.
    import matplotlib.pyplot as plt

    (sample,) = toy_scenes(1, seed=2001)
    output = explainer.explain_image(sample.image, sample.prompt)
    words = sample.words
    chosen = [index for item in sample.objects for index in item.words]
    raw = np.asarray(output.word_maps)[chosen]
    maps = {"as made": raw, "given the image's regions": region_maps(raw, sample.image)}
    fig, axes = plt.subplots(3, len(chosen) + 1, figsize=(2.1 * (len(chosen) + 1), 6.6))
    for row, (label, values) in enumerate(maps.items()):
        axes[row, 0].imshow(sample.image)
        axes[row, 0].set_ylabel(label)
        for ax, value, index in zip(axes[row, 1:], values, chosen):
            ax.imshow((value - value.min()) / (np.ptp(value) or 1), cmap="magma", vmin=0, vmax=1)
            ax.set_title(f'"{words[index]}"', fontsize=9)
    axes[0, 0].set_title("rendered scene")
    axes[2, 0].set_ylabel("true masks")
    for ax, item in zip(axes[2, 1::2], sample.objects):
        for offset in range(2):
            axes[2, list(axes[2]).index(ax) + offset].imshow(item.mask, cmap="gray", vmin=0, vmax=1)
    for spine in axes[2, 0].spines.values():
        spine.set_visible(False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(OUT / "existing_image_maps.png", dpi=80)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(sample.objects), figsize=(5.5 * len(sample.objects), 3.0))
    for ax, item in zip(np.atleast_1d(axes), sample.objects):
        box = mask_box(item.mask)
        explained = output.explain(explanation_2d_bounding_box=box)
        explained.token_attributions.plot(ax=ax, title=f"box around the {item.name} ({explained.attribution_method})")
    fig.tight_layout()
    fig.savefig(OUT / "existing_image_boxes.png", dpi=90)
    plt.close(fig)


def control_picture() -> None:
    # The toy ControlNet on a held-out scene's outlines: for a box around each object, the control image's pixel
    # attributions (where in the control the box's pixels come from) and the words' bars, with the full prompt and
    # with a prompt that names the colours only.
    import matplotlib.pyplot as plt

    from diffusers_interpret import explainer_for
    from diffusers_interpret.toy.control import (
        TOY_CONTROL_CALL,
        color_only_prompt,
        load_toy_controlnet_pipeline,
        outline_image,
    )
    from diffusers_interpret.toy.scenes import render_scene, sample_scene_spec

    rng = np.random.default_rng(999)
    for _ in range(3):
        sample_scene_spec(rng, 2)
    scene, seed = render_scene(sample_scene_spec(rng, 2)), 999 + 3
    control = outline_image(scene)
    explainer = explainer_for(load_toy_controlnet_pipeline(), verbose=False)
    prompts = (scene.prompt, color_only_prompt(scene))
    fig, axes = plt.subplots(4, 3, figsize=(12, 11), gridspec_kw={"width_ratios": [1, 1, 2.4]})
    for row, (prompt, mask) in enumerate((p, m) for p in prompts for m in scene.masks):
        box = mask_box(mask)
        output = explainer(
            prompt, image=control, generator=torch.Generator().manual_seed(seed), explanation_2d_bounding_box=box,
            **TOY_CONTROL_CALL,
        )  # fmt: skip
        axes[row, 0].imshow(output.image.resize((128, 128), 0))
        axes[row, 0].set_title(f"box {box[0]}-{box[1]}", fontsize=9)
        axes[row, 1].imshow(output.control_saliency_map.overlay().resize((128, 128), 0))
        share = output.control_dependence
        axes[row, 1].set_title(f"control image's attributions\nwithout it {100 * share:.0f}% redrawn", fontsize=9)
        output.word_attributions.plot(ax=axes[row, 2], title=f'"{prompt}"')
        for ax in axes[row, :2]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(OUT / "controlnet_boxes.png", dpi=80)
    plt.close(fig)
    control.resize((128, 128), 0).save(OUT / "controlnet_outline.png")


def video_picture() -> None:
    r"""The toy Wan's clip of "a red circle moving right" (seed 0) explained: its frames, the colour word's map and the
    prompt-dependence map on every frame (both follow the object), and the words' shares for the object's box on the
    last frame."""
    import matplotlib.pyplot as plt

    from diffusers_interpret import explainer_for
    from diffusers_interpret.toy import TOY_WAN_CALL, load_toy_wan_pipeline
    from diffusers_interpret.toy.clips import check_clip

    prompt = "a red circle moving right"
    output = explainer_for(load_toy_wan_pipeline(), verbose=False)(
        prompt, generator=torch.Generator().manual_seed(0), **TOY_WAN_CALL
    )
    frames = output.num_frames
    boxes = check_clip(np.stack([np.asarray(frame) for frame in output.frames]), prompt).boxes()
    last = output.explain(boxes[-1], explanation_frames=(frames - 1, frames))
    words = output.word_attributions.tokens
    rows = {
        '"red"': output.frame_maps(output.word_maps[output.word_tokens[words.index("red")][0]]),
        "needs the prompt": output.frame_maps(output.prompt_dependence_map),
    }
    fig = plt.figure(figsize=(13, 6.2))
    grid = fig.add_gridspec(4, frames, height_ratios=[1, 1, 1, 1.3])
    for k in range(frames):
        top = fig.add_subplot(grid[0, k])
        top.imshow((last if k == frames - 1 else output).frames[k].resize((96, 96), 0))
        top.set_title(f"frame {k}", fontsize=9)
        top.axis("off")
        for row, (label, maps) in enumerate(rows.items(), start=1):
            ax = fig.add_subplot(grid[row, k])
            ax.imshow(output.frames[k].resize((96, 96), 0))
            ax.imshow(np.kron(maps[k], np.ones((3, 3))), cmap="jet", alpha=0.5, vmin=0, vmax=float(maps.max()))
            ax.axis("off")
            if k == 0:
                ax.set_title(label, fontsize=9, loc="left")
    last.word_attributions.plot(
        ax=fig.add_subplot(grid[3, 2:7]), title="the object's box on the last frame: the words' shares"
    )
    fig.tight_layout()
    fig.savefig(OUT / "video_clip.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    if sys.argv[1:] == ["controlnet"]:
        control_picture()
    elif sys.argv[1:] == ["video"]:
        video_picture()
    else:
        main()
        control_picture()
        video_picture()
