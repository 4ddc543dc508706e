r"""
ControlNet on Stable Diffusion 1.x/2.x, SDXL and Flux: a control image (edges, depth, pose) read by a ControlNet
beside the prompt. The ControlNet runs before the denoiser in every step, reads the same prompt conditioning and hands
the denoiser its residuals; the explanation traces both, so the prompt's gradients reach the image through the
ControlNet too, and the control image's pixels are a leaf of the graph (its pixel attributions).
"""

from typing import Any, Dict, List, Tuple

import torch

from .base import InputKind
from .flux import FluxFamily
from .registry import register_family
from .stable_diffusion import StableDiffusionFamily
from .stable_diffusion_xl import StableDiffusionXLFamily


class _ControlNet:
    r"""
    What the ControlNet pipelines of every family share: the ControlNet (`pipe.controlnet`) is a control model of the
    tracer, the control image is the explained input image, and a denoiser call made outside the pipeline's loop (an
    existing image, the redraws) runs the ControlNet first, as the loop does.
    """

    # The pipeline call's argument of the control image, and the attribute of the processor that preprocesses it.
    control_image_argument = "image"
    control_image_processor = "control_image_processor"

    def input_kind(self, pipeline_class: type):
        return InputKind.CONTROL

    def input_image(self, pipe) -> Tuple[str, str]:
        return self.control_image_argument, self.control_image_processor

    def control_models(self, pipe) -> List[torch.nn.Module]:
        return [pipe.controlnet]

    def check_arguments(self, pipe, pipeline_kwargs: Dict[str, Any]) -> None:
        super().check_arguments(pipe, pipeline_kwargs)
        if type(pipe.controlnet).__name__.startswith(("Multi", "FluxMulti")):
            raise ValueError(
                f"{type(pipe).__name__} holds several ControlNets ({type(pipe.controlnet).__name__}): the explanation "
                "gives one control image's pixel attributions; explain with one ControlNet at a time."
            )

    def control_scale(self, call_kwargs: Dict[str, Any]) -> float:
        r"""The call's ControlNet conditioning scale (the pipeline's default, 1.0, where not given)."""
        scale = call_kwargs.get("controlnet_conditioning_scale")
        if isinstance(scale, (list, tuple)):
            scale = scale[0]
        return 1.0 if scale is None else float(scale)

    def prepared_control(self, pipe, call_kwargs: Dict[str, Any], size, latents: torch.Tensor, dtype) -> torch.Tensor:
        r"""The call's control image as the pipeline's own `prepare_image` makes it, one row per row of `latents`
        (without guidance's rows): what a denoiser call outside the loop (an existing image, the redraws) reads."""
        return pipe.prepare_image(
            image=call_kwargs[self.control_image_argument],
            width=size[1],
            height=size[0],
            batch_size=latents.shape[0],
            num_images_per_prompt=1,
            device=latents.device,
            dtype=dtype,
        )

    def without_control(self) -> Dict[str, Any]:
        r"""The call arguments that switch the control off (the residuals scaled to zero)."""
        return {"controlnet_conditioning_scale": 0.0}


class _UNetControlNet(_ControlNet):
    # A UNet's ControlNet (Stable Diffusion's and SDXL's): it reads the denoiser's batch and hands the UNet residuals
    # of its down blocks and middle block.

    def control_rows(self, pipe, batch_size: int, control_kwargs: dict) -> slice:
        if control_kwargs.get("guess_mode") and getattr(pipe, "do_classifier_free_guidance", False):
            return slice(0, batch_size)  # the ControlNet reads the prompt's rows only
        return self.positive_rows(pipe, batch_size)

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        arguments = super().denoiser_arguments(pipe, latents, timestep, conditioning, size, call_kwargs)
        control = self.prepared_control(pipe, call_kwargs, size, latents, pipe.controlnet.dtype)
        extra = {"added_cond_kwargs": arguments["added_cond_kwargs"]} if "added_cond_kwargs" in arguments else {}
        down, middle = pipe.controlnet(
            latents,
            timestep,
            encoder_hidden_states=arguments["encoder_hidden_states"],
            controlnet_cond=control,
            conditioning_scale=self.control_scale(call_kwargs),
            guess_mode=bool(call_kwargs.get("guess_mode")),
            return_dict=False,
            **extra,
        )
        return {**arguments, "down_block_additional_residuals": down, "mid_block_additional_residual": middle}


class StableDiffusionControlNetFamily(_UNetControlNet, StableDiffusionFamily):
    r"""
    `StableDiffusionControlNetPipeline`: the control image (`image=`) is preprocessed to [0, 1] by the pipeline's
    `control_image_processor` and read by `controlnet` beside the prompt; the UNet adds the ControlNet's residuals to
    its own. With classifier-free guidance both read [negative, positive] rows; in `guess_mode` the ControlNet reads
    the prompt's rows alone.
    """

    name = "stable_diffusion_controlnet"
    display_name = "Stable Diffusion ControlNet"
    pipeline_class_names = ("StableDiffusionControlNetPipeline",)
    required_components = (*StableDiffusionFamily.required_components, "controlnet")


class StableDiffusionXLControlNetFamily(_UNetControlNet, StableDiffusionXLFamily):
    r"""`StableDiffusionXLControlNetPipeline`: as Stable Diffusion's ControlNet, with SDXL's two text encoders and
    pooled micro-conditioning, which the ControlNet reads too (`added_cond_kwargs`)."""

    name = "stable_diffusion_xl_controlnet"
    display_name = "Stable Diffusion XL ControlNet"
    pipeline_class_names = ("StableDiffusionXLControlNetPipeline",)
    required_components = (*StableDiffusionXLFamily.required_components, "controlnet")


class FluxControlNetFamily(_ControlNet, FluxFamily):
    r"""
    `FluxControlNetPipeline`: the control image (`control_image=`) is preprocessed by the pipeline's `image_processor`,
    encoded by the VAE and packed (InstantX-style ControlNets; an XLabs one reads the pixels), and read by
    `controlnet` with the prompt's T5 states and pooled vector once per step; its block residuals go to every
    transformer call of the step (the negative prompt's too, under true CFG).
    """

    name = "flux_controlnet"
    display_name = "Flux ControlNet"
    pipeline_class_names = ("FluxControlNetPipeline",)
    required_components = (*FluxFamily.required_components, "controlnet")
    control_image_argument = "control_image"
    control_image_processor = "image_processor"

    def check_arguments(self, pipe, pipeline_kwargs: Dict[str, Any]) -> None:
        super().check_arguments(pipe, pipeline_kwargs)
        given = pipeline_kwargs.get("control_image")
        if any(isinstance(item, torch.Tensor) for item in (given if isinstance(given, list) else [given])):
            raise ValueError(
                f"{type(pipe).__name__} reads a tensor `control_image` as already preprocessed ([-1, 1], not through "
                "its image processor), so its pixels cannot be attributed: pass a PIL image or a numpy array of "
                "[0, 1] values."
            )

    def control_rows(self, pipe, batch_size: int, control_kwargs: dict) -> slice:
        return slice(0, batch_size)

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        arguments = super().denoiser_arguments(pipe, latents, timestep, conditioning, size, call_kwargs)
        controlnet = pipe.controlnet
        control = self.prepared_control(pipe, call_kwargs, size, latents, pipe.vae.dtype)
        if controlnet.input_hint_block is None:  # as the pipeline: the control image's latents, packed
            vae = pipe.vae
            encoded = vae.encode(control).latent_dist.mode()
            encoded = (encoded - vae.config.shift_factor) * vae.config.scaling_factor
            control = pipe._pack_latents(encoded, *encoded.shape)
        mode = call_kwargs.get("control_mode")
        if mode is not None:
            mode = torch.tensor(mode, device=latents.device, dtype=torch.long).view(-1, 1).expand(len(control), 1)
        guidance = None
        if controlnet.config.guidance_embeds:
            scale = call_kwargs.get("guidance_scale")
            guidance = torch.full([latents.shape[0]], 3.5 if scale is None else float(scale), device=latents.device)
        blocks, single_blocks = controlnet(
            hidden_states=latents,
            controlnet_cond=control,
            controlnet_mode=mode,
            conditioning_scale=self.control_scale(call_kwargs),
            timestep=arguments["timestep"],
            guidance=guidance,
            pooled_projections=arguments["pooled_projections"],
            encoder_hidden_states=arguments["encoder_hidden_states"],
            txt_ids=arguments["txt_ids"],
            img_ids=arguments["img_ids"],
            joint_attention_kwargs=arguments["joint_attention_kwargs"],
            return_dict=False,
        )
        return {
            **arguments,
            "controlnet_block_samples": blocks,
            "controlnet_single_block_samples": single_blocks,
            "controlnet_blocks_repeat": controlnet.input_hint_block is not None,
        }


STABLE_DIFFUSION_CONTROLNET = register_family(StableDiffusionControlNetFamily())
STABLE_DIFFUSION_XL_CONTROLNET = register_family(StableDiffusionXLControlNetFamily())
FLUX_CONTROLNET = register_family(FluxControlNetFamily())
