"""Stable Diffusion 1.x / 2.x: one CLIP text encoder into the UNet's cross-attention."""

from typing import Any, Dict, List

import torch

from ..explainer import BasePipelineExplainer
from ..outputs import PipelineImg2ImgExplainerOutput, PipelineInpaintExplainerOutput
from .base import PipelineFamily, TextEncoderSlot, register_explainer, register_family


class StableDiffusionFamily(PipelineFamily):
    r"""
    `StableDiffusionPipeline`, `StableDiffusionImg2ImgPipeline` and `StableDiffusionInpaintPipeline`: CLIP's output
    states are the UNet's `encoder_hidden_states`; rows [negative, positive] with guidance; `vae.decode(latents /
    scaling_factor)`; the safety checker, where the pipeline has one, on the decoded image.
    """

    name = "stable_diffusion"
    display_name = "Stable Diffusion"
    pipeline_class_names = (
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    )

    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [TextEncoderSlot("tokenizer", "text_encoder", "prompt", slice(None))]

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        embeddings, _ = pipe.encode_prompt(
            prompt=prompts["prompt"],
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            lora_scale=(call_kwargs.get("cross_attention_kwargs") or {}).get("scale"),
            clip_skip=call_kwargs.get("clip_skip"),
        )
        return {"encoder_hidden_states": embeddings}

    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        vae = pipe.vae
        return vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=generator)[0]

    def postprocess(self, pipe, decoded: torch.Tensor, output_type: str):
        dtype = getattr(pipe.text_encoder, "dtype", decoded.dtype)
        image, nsfw = pipe.run_safety_checker(decoded, decoded.device, dtype)
        denormalize = [True] * image.shape[0] if nsfw is None else [not flagged for flagged in nsfw]
        return pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize), nsfw


STABLE_DIFFUSION = register_family(StableDiffusionFamily())


@register_explainer("StableDiffusionPipeline")
class StableDiffusionPipelineExplainer(BasePipelineExplainer):
    r"""
    Explains images made by a `StableDiffusionPipeline` (and pipelines with the same call).

    Example:
        ```py
        >>> explainer = StableDiffusionPipelineExplainer(pipe)
        >>> output = explainer("a red circle on the left", num_inference_steps=15,
        ...                    n_last_diffusion_steps_to_consider_for_attributions=5,
        ...                    explanation_2d_bounding_box=((0, 0), (16, 32)))
        >>> output.token_attributions.normalized
        ```
    """

    family = STABLE_DIFFUSION


@register_explainer("StableDiffusionImg2ImgPipeline")
class StableDiffusionImg2ImgPipelineExplainer(BasePipelineExplainer):
    r"""
    Explains images made by a `StableDiffusionImg2ImgPipeline`: token attributions and pixel attributions of the init
    image.

    The input image enters img2img only at the first denoising step (as the noised start latents), so pixel
    attributions need every step traced (`n_last_diffusion_steps_to_consider_for_attributions=None`, the default).
    With fewer traced steps, token attributions are computed and `pixel_attributions` is `None` (with a warning).

    Example:
        ```py
        >>> explainer = StableDiffusionImg2ImgPipelineExplainer(pipe)
        >>> output = explainer(prompt="a fantasy landscape", init_image=image, strength=0.75)
        >>> output.input_saliency_map.show()
        ```
    """

    family = STABLE_DIFFUSION
    input_kind = "image"
    output_class = PipelineImg2ImgExplainerOutput


@register_explainer("StableDiffusionInpaintPipeline")
class StableDiffusionInpaintPipelineExplainer(BasePipelineExplainer):
    r"""
    Explains images made by a `StableDiffusionInpaintPipeline`, with the 9-channel inpainting UNet or a plain
    4-channel UNet (the pipeline's blending path).

    The input image is re-injected at every step (as masked-image latents for 9 channels, by blending for 4), so pixel
    attributions are available with any number of traced steps. With a 9-channel UNet the pipeline feeds the model
    `image * (mask < 0.5)`: pixels inside the mask get exactly zero attribution unless the traced steps include the
    first one with `strength < 1` (where the noised image itself starts the loop).

    Example:
        ```py
        >>> explainer = StableDiffusionInpaintPipelineExplainer(pipe)
        >>> output = explainer(prompt="a cat sitting on a bench", init_image=image, mask_image=mask, strength=0.75)
        >>> output.input_saliency_map.show()
        ```
    """

    family = STABLE_DIFFUSION
    input_kind = "inpaint"
    output_class = PipelineInpaintExplainerOutput
