"""The explainers: run the pipeline's own loop with gradients for its last steps, then attribute."""

import contextlib
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from .attention import record_cross_attention
from .attribution import (
    AttributionLevel,
    AttributionMethods,
    aggregate,
    parse_attribution_level,
    parse_attribution_method,
)
from .box import BoxLike, box_mask, draw_box, normalize_box
from .defaults import DEFAULT_ATTRIBUTION_LEVEL, DEFAULT_ATTRIBUTION_METHOD
from .hooks import (
    DenoiserTracer,
    UntracedDenoiserCache,
    checkpointed,
    leaf_input_embeddings,
    progress_bar_disabled,
)
from .methods import AttentionScore, AttributionMethod, GradientAggregation, JacobianNorm, parse_method
from .outputs import ExplanationOutputList, GeneratedImages, PipelineExplainerOutput, TokenAttributions
from .perturbation import PerturbationContext, _generator_state, generator_factory

_N_STEPS_ARG = "n_last_diffusion_steps_to_consider_for_attributions"


def _expand(values: Union[str, List[str], None], batch_size: int, per_prompt: int, name: str) -> Optional[List[str]]:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values] * batch_size
    values = list(values)
    if len(values) != batch_size:
        raise ValueError(
            f"`{name}` has {len(values)} entries but there are {batch_size} prompts: give one per prompt."
        )
    return [value for value in values for _ in range(per_prompt)]


def clean_token(token: str) -> str:
    """A BPE token as text: CLIP's end-of-word marker `</w>` removed (as a suffix, not as a set of characters)."""
    return token[: -len("</w>")] if token.endswith("</w>") else token


def vector_jacobian_products(
    outputs: torch.Tensor, leaf: torch.Tensor, vectors: torch.Tensor, scale: float, non_finite_message: str
) -> torch.Tensor:
    r"""
    `vectors[k]^T d(outputs)/d(leaf)` for every k, float32 on the CPU, shape (k, *leaf.shape), keeping the graph. All
    in one batched backward pass where autograd can (`is_grads_batched`; on CPU about as fast as a loop, see
    benchmarks/bench_reexplain.py), one pass per vector otherwise (e.g. through checkpointed steps). `scale`
    multiplies the vectors before the backward pass and divides the result after (half precision overflow guard).
    """
    vectors = (vectors * scale).to(outputs.dtype)
    try:
        gradients = torch.autograd.grad(outputs, leaf, vectors, retain_graph=True, is_grads_batched=True)[0]
    except RuntimeError:
        gradients = torch.stack([torch.autograd.grad(outputs, leaf, v, retain_graph=True)[0] for v in vectors])
    gradients = gradients.float() / scale
    if not torch.isfinite(gradients).all():
        raise FloatingPointError(non_finite_message)
    return gradients.detach().cpu()


class BasePipelineExplainer:
    r"""
    Shared machinery of the explainers.

    The pipeline's own `__call__` runs (unwrapped from its `@torch.no_grad()`), so every scheduler, guidance option
    and pipeline feature behaves as in `pipe(...)` and the explained image is the image `pipe(...)` makes for the same
    arguments and seed. Scoped hooks on the UNet turn gradients on for the last
    `n_last_diffusion_steps_to_consider_for_attributions` denoiser calls; the (optionally boxed) decoded image's sum is
    then back-propagated in one backward pass to the prompt's token embeddings (or text encoder output).

    Args:
        pipe (`DiffusionPipeline`): A loaded Stable Diffusion pipeline.
        verbose (`bool`, *optional*, defaults to `True`): Show progress bars.
        gradient_checkpointing (`bool`, *optional*, defaults to `False`):
            Keep no activations of the traced steps (and of the VAE decoder) during generation and recompute them, one
            step at a time, in the backward pass: peak memory no longer grows with the number of traced steps, at the
            cost of one more forward pass per traced step.
    """

    output_class = PipelineExplainerOutput

    def __init__(self, pipe, verbose: bool = True, gradient_checkpointing: bool = False):
        for name in ("unet", "vae", "tokenizer", "text_encoder", "encode_prompt"):
            if not hasattr(pipe, name):
                raise TypeError(f"{type(pipe).__name__} has no `{name}`: pass a Stable Diffusion pipeline.")
        if not hasattr(type(pipe).__call__, "__wrapped__"):
            raise TypeError(f"{type(pipe).__name__}.__call__ is not a decorated diffusers pipeline call.")
        self.pipe = pipe
        self.verbose = verbose
        self.gradient_checkpointing = gradient_checkpointing

    # -- hooks for subclasses -------------------------------------------------------------------------------------
    def _prepare_pipeline_kwargs(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        return kwargs

    def _input_leaves(self, leaves: Dict[str, torch.Tensor]):
        # A context in which the pipeline's other explained inputs (e.g. init-image pixels) become leaves in `leaves`.
        return contextlib.nullcontext()

    # Whether the pipeline must run with grad on before its loop (to keep the graph from its input image's encoding).
    grad_before_loop = False

    def _finish_output(self, output, index: int, gradients: Dict[str, torch.Tensor], method) -> None:
        pass

    def _input_pixels(self) -> Optional[torch.Tensor]:
        # The explained input image's [0, 1] pixels (1, 3, H, W), for explainers of pipelines with one.
        return None

    # -- the call -------------------------------------------------------------------------------------------------
    def __call__(
        self,
        prompt: Union[str, List[str]],
        num_inference_steps: int = 50,
        height: Optional[int] = None,
        width: Optional[int] = None,
        n_last_diffusion_steps_to_consider_for_attributions: Optional[int] = None,
        explanation_2d_bounding_box: Optional[BoxLike] = None,
        attribution_method: Union[str, AttributionMethods, AttributionMethod] = DEFAULT_ATTRIBUTION_METHOD,
        attribution_level: Union[str, AttributionLevel] = DEFAULT_ATTRIBUTION_LEVEL,
        consider_special_tokens: bool = False,
        clean_token_prefixes_and_suffixes: bool = True,
        get_images_for_all_inference_steps: bool = True,
        output_type: str = "pil",
        keep_for_reexplanation: Optional[str] = None,
        attention_maps: bool = False,
        **pipeline_kwargs,
    ):
        r"""
        Generate with the pipeline and explain the result.

        Args:
            prompt (`str` or `List[str]`): The prompt(s), as for the pipeline.
            num_inference_steps (`int`, *optional*, defaults to 50): Denoising steps, as for the pipeline.
            height (`int`, *optional*): Image height; the pipeline's default otherwise.
            width (`int`, *optional*): Image width; the pipeline's default otherwise.
            n_last_diffusion_steps_to_consider_for_attributions (`int`, *optional*, defaults to `None`):
                Number of last denoiser calls to back-propagate through (equal to the last steps for first-order
                schedulers). `None` traces all of them, `0` computes no attributions and builds no graph.
            explanation_2d_bounding_box (`((x0, y0), (x1, y1))`, *optional*):
                The region of the output image to explain, in pixels, PIL's convention: x the column and y the row,
                `(x0, y0)` upper-left and inclusive, `(x1, y1)` lower-right and exclusive. `None` explains the whole
                image. The box is drawn in red on `output.image`, on the box's own border pixels.
            attribution_method (`str` or `AttributionMethod`, *optional*, defaults to `"attention"`):
                How tokens are scored: `"attention"` (chosen by the faithfulness benchmark, docs/methods.md),
                `"jacobian_norm"`, `"integrated_gradients"`, `"smoothgrad"`, `"ablation"`, the original's gradient
                aggregations `"grad_x_input"`, `"max_grad"`, `"mean_grad"`, `"min_grad"`, or a method object with
                parameters (e.g. `IntegratedGradients(n_steps=32)`), see [`~methods`] for what each costs.
                Perturbation methods (integrated gradients, SmoothGrad, ablation) explain one image per call.
            attribution_level (`str` or `AttributionLevel`, *optional*, defaults to `"token_embeddings"`):
                `"token_embeddings"` (input token embeddings, through the text encoder) or `"text_encoder_output"`
                (the original 0.5.0's level; confounded by position, as CLIP's encoder is causal).
            consider_special_tokens (`bool`, *optional*, defaults to `False`):
                Also score the start and end-of-text tokens.
            clean_token_prefixes_and_suffixes (`bool`, *optional*, defaults to `True`):
                Remove the tokenizer's `</w>` end-of-word marker from the token strings.
            get_images_for_all_inference_steps (`bool`, *optional*, defaults to `True`):
                Decode the latents after every step into `output.all_images_during_generation`.
            output_type (`str`, *optional*, defaults to `"pil"`): `"pil"` (box drawn), `"np"` or `"pt"`.
            keep_for_reexplanation (`str`, *optional*):
                What to keep so that `output.explain(explanation_2d_bounding_box=...)` explains another region without
                running the untraced steps again. `"graph"`: the traced steps' graph; a new box costs one backward
                pass, and the graph's memory (that of the traced steps' activations) stays held until
                `output.release()` or until the outputs are garbage collected; needed for `output.region_grid()` and
                `output.interactive_view()`. `"latents"` (lean): only the denoiser's outputs at the untraced steps
                (latent-sized) and the generator's state; a new box re-runs the traced steps and one backward pass.
                `None` keeps nothing. Gradient methods only.
            attention_maps (`bool`, *optional*, defaults to `False`):
                Record cross-attention maps per token (mean over heads, layers and steps) into
                `output.attention_maps`, with a scoped attention processor removed after the generation. The
                `"attention"` method records them anyway, over its traced steps (the last N, all by default).
            pipeline_kwargs:
                Every other argument of the pipeline's `__call__` (`guidance_scale`, `negative_prompt`,
                `generator`, `latents`, `eta`, `num_images_per_prompt`, `callback_on_step_end`, ...), passed
                through unchanged.

        Returns:
            The output class of the explainer (e.g. [`PipelineExplainerOutput`]) for a single image, or an
            [`ExplanationOutputList`] of them, one per image, when several images are made.
        """
        if "prompt_embeds" in pipeline_kwargs:
            raise ValueError("Pass `prompt` (text) instead of `prompt_embeds`: tokens are needed to attribute them.")
        if keep_for_reexplanation not in (None, "graph", "latents"):
            raise ValueError(
                f"`keep_for_reexplanation` must be None, 'graph' or 'latents', got {keep_for_reexplanation!r}."
            )
        replay_cache = pipeline_kwargs.pop("_replay_cache", None)
        replay_arguments = dict(
            pipeline_kwargs,
            num_inference_steps=num_inference_steps,
            height=height,
            width=width,
            n_last_diffusion_steps_to_consider_for_attributions=n_last_diffusion_steps_to_consider_for_attributions,
            attribution_method=attribution_method,
            attribution_level=attribution_level,
            consider_special_tokens=consider_special_tokens,
            clean_token_prefixes_and_suffixes=clean_token_prefixes_and_suffixes,
            output_type=output_type,
        )
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}.")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"`prompt` must be a non-empty string or list of non-empty strings, got {prompt!r}.")
        n_traced = n_last_diffusion_steps_to_consider_for_attributions
        if n_traced is not None and (not isinstance(n_traced, int) or n_traced < 0):
            raise ValueError(f"`{_N_STEPS_ARG}` must be None (all steps) or an integer >= 0, got {n_traced!r}.")
        method_object = parse_method(attribution_method)
        level = parse_attribution_level(attribution_level)
        pipe = self.pipe
        height, width = self._image_size(height, width, pipeline_kwargs)
        box = normalize_box(explanation_2d_bounding_box, height, width)
        per_prompt = int(pipeline_kwargs.get("num_images_per_prompt") or 1)
        expanded = _expand(prompts, len(prompts), per_prompt, "prompt")
        if isinstance(method_object, GradientAggregation):
            method = method_object.aggregation
        else:
            # Pixel attributions (image explainers) still come from the call's own gradient.
            method = AttributionMethods.GRAD_X_INPUT
            if keep_for_reexplanation is not None and not isinstance(method_object, AttentionScore):
                raise ValueError(
                    "`keep_for_reexplanation` needs a gradient method (e.g. 'grad_x_input') or 'attention', not "
                    f"{method_object.name!r}."
                )
        if method_object.regenerates and n_traced != 0 and len(expanded) != 1:
            raise ValueError(
                f"`attribution_method={method_object.name!r}` explains one image per call: pass one prompt and "
                "num_images_per_prompt=1 (call the explainer once per image)."
            )
        generator_snapshot = None
        if len(expanded) == 1:
            generator_snapshot = _generator_state(pipeline_kwargs.get("generator"), pipe._execution_device)
        fresh_generators = (
            generator_factory(pipeline_kwargs.get("generator"), pipe._execution_device)
            if keep_for_reexplanation == "latents"
            else None
        )

        user_callback = pipeline_kwargs.pop("callback_on_step_end", None)
        user_inputs = list(pipeline_kwargs.pop("callback_on_step_end_tensor_inputs", None) or ["latents"])
        if user_callback is not None and hasattr(user_callback, "tensor_inputs"):
            user_inputs = list(user_callback.tensor_inputs)
        step_latents: List[torch.Tensor] = []

        def on_step_end(pipeline, step, timestep, callback_kwargs):
            if get_images_for_all_inference_steps:
                step_latents.append(callback_kwargs["latents"].detach())
            if user_callback is None:
                return {}
            return user_callback(pipeline, step, timestep, {k: callback_kwargs[k] for k in user_inputs})

        call_kwargs = dict(pipeline_kwargs)
        call_kwargs.update(
            prompt=prompt,
            num_inference_steps=num_inference_steps,
            height=height,
            width=width,
            output_type="latent",
            return_dict=True,
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=sorted(set(user_inputs) | {"latents"}),
        )
        call_kwargs = self._prepare_pipeline_kwargs(call_kwargs)
        wants_scores = n_traced != 0
        # With 'attention', a kept graph serves gradient re-explanations, region grids and the interactive view.
        explain = wants_scores and (
            method_object.uses_call_gradient or self.grad_before_loop or keep_for_reexplanation is not None
        )
        record_attention = attention_maps or (wants_scores and isinstance(method_object, AttentionScore))
        attention_steps = None
        if isinstance(method_object, AttentionScore) and n_traced:
            attention_steps = list(range(-n_traced, 0))

        leaves: List[torch.Tensor] = []

        def positive_embeddings(pipeline_embeddings: torch.Tensor) -> torch.Tensor:
            if level is AttributionLevel.TEXT_ENCODER_OUTPUT:
                leaf = pipeline_embeddings.detach().clone().requires_grad_(True)
                leaves.append(leaf)
                return leaf
            return self._encode_with_graph(expanded, pipeline_embeddings, call_kwargs, leaves)

        tracer = DenoiserTracer(pipe, n_traced, positive_embeddings, checkpoint=self.gradient_checkpointing)
        input_leaves: Dict[str, torch.Tensor] = {}
        with progress_bar_disabled(pipe, not self.verbose), torch.no_grad():
            # Grad mode is switched by the tracer at each denoiser call and restored by these contexts on exit.
            with torch.set_grad_enabled(explain and self.grad_before_loop):
                recorder = (
                    record_cross_attention(pipe, steps=attention_steps)
                    if record_attention
                    else contextlib.nullcontext()
                )
                with recorder:
                    if explain:
                        untraced_cache = UntracedDenoiserCache() if keep_for_reexplanation == "latents" else None
                        if replay_cache is not None:
                            cache_context = replay_cache.replaying(tracer)
                        elif untraced_cache is not None:
                            cache_context = untraced_cache.recording(tracer)
                        else:
                            cache_context = contextlib.nullcontext()
                        with tracer, cache_context, self._input_leaves(input_leaves):
                            latents = type(pipe).__call__.__wrapped__(pipe, **call_kwargs).images
                    else:
                        latents = type(pipe).__call__.__wrapped__(pipe, **call_kwargs).images
                maps = recorder.maps if record_attention else None
            generator = call_kwargs.get("generator")
            with torch.set_grad_enabled(explain and latents.requires_grad):
                decoded = self._decode(latents, generator)
            images, nsfw = self._postprocess(decoded.detach(), output_type)
            all_step_images = (
                self._step_images(step_latents, generator) if get_images_for_all_inference_steps else None
            )

            gradients: Dict[str, torch.Tensor] = {}
            jacobian_norms: Optional[torch.Tensor] = None
            backward_seconds = 0.0
            if explain and decoded.requires_grad and leaves:
                started = time.perf_counter()
                all_leaves = {"token_embeddings": leaves[0], **input_leaves}
                with torch.enable_grad():
                    if isinstance(method_object, JacobianNorm):
                        jacobian_norms = self._jacobian_norms(decoded, box, all_leaves, method_object)
                        all_leaves = input_leaves  # pixels (image explainers) keep the box-sum gradient
                    if all_leaves:
                        gradients = self._backward(
                            decoded, box, all_leaves, retain_graph=keep_for_reexplanation is not None
                        )
                backward_seconds = time.perf_counter() - started
            elif explain and method_object.uses_call_gradient:
                warnings.warn(
                    f"No gradient reached the prompt (the pipeline made {tracer.calls} denoiser calls): "
                    "token attributions are None.",
                    stacklevel=2,
                )

        ids, tokens = self._tokens(expanded, call_kwargs)
        context = None
        if generator_snapshot is not None:
            context = PerturbationContext(
                self,
                expanded[0],
                call_kwargs,
                n_traced,
                level,
                ids[0],
                self._token_positions(ids[0], consider_special_tokens),
                generator_snapshot=generator_snapshot,
            )
            context.input_pixels = self._input_pixels()
        method_scores: Dict[int, Tuple[np.ndarray, dict]] = {}
        if jacobian_norms is not None:
            for index in range(len(expanded)):
                positions = self._token_positions(ids[index], consider_special_tokens)
                method_scores[index] = (jacobian_norms[index, positions].numpy(), {})
        if wants_scores and not method_object.uses_call_gradient:
            started = time.perf_counter()
            for index in range(len(expanded)):
                positions = self._token_positions(ids[index], consider_special_tokens)
                if isinstance(method_object, AttentionScore):
                    method_scores[index] = (method_object.scores_from_maps(maps.maps[index, positions], box), {})
                else:
                    image01 = self.pipe.image_processor.postprocess(
                        decoded.detach(), output_type="pt", do_denormalize=[True] * len(decoded)
                    )
                    method_scores[index] = method_object.token_scores(context, box, image01[index : index + 1])
            backward_seconds = time.perf_counter() - started
        outputs = ExplanationOutputList()
        for index in range(len(expanded)):
            output = self._make_output(
                index,
                images,
                nsfw,
                all_step_images,
                box,
                expanded[index],
                ids[index],
                tokens[index],
                gradients,
                method,
                level,
                output_type,
                consider_special_tokens,
                clean_token_prefixes_and_suffixes,
                method_scores.get(index),
                method_object.name,
            )
            self._finish_output(output, index, gradients, method)
            output._perturbation, output._method, output._index = context, method_object, index
            output.extras.update(backward_seconds=backward_seconds, traced_denoiser_calls=tracer.traced_calls)
            output.attention_maps = maps
            outputs.append(output)
        if keep_for_reexplanation == "latents" and gradients:
            lean = LeanReExplanation(self, prompt, replay_arguments, untraced_cache, fresh_generators)
            for index, output in enumerate(outputs):
                output._reexplanation, output._index = lean, index
        if keep_for_reexplanation == "graph" and gradients:
            state = ReExplanation(self, decoded, all_leaves, images, method, output_type)
            state.token_positions = [output.extras["token_positions"] for output in outputs]
            for index, output in enumerate(outputs):
                output._reexplanation, output._index = state, index
        return outputs[0] if len(outputs) == 1 else outputs

    # -- pieces ---------------------------------------------------------------------------------------------------
    def _image_size(self, height, width, pipeline_kwargs) -> Tuple[int, int]:
        pipe = self.pipe
        sample_size = pipe.unet.config.sample_size
        if isinstance(sample_size, int):
            sample_size = (sample_size, sample_size)
        height = height or sample_size[0] * pipe.vae_scale_factor
        width = width or sample_size[1] * pipe.vae_scale_factor
        return int(height), int(width)

    def _encode_with_graph(self, expanded, pipeline_embeddings, call_kwargs, leaves):
        # The pipeline's own `encode_prompt`, with grad on and the token embedding layer's output made a leaf: the
        # text encoder's graph from those leaves to the embeddings the UNet reads is kept.
        pipe = self.pipe
        cross_attention_kwargs = call_kwargs.get("cross_attention_kwargs") or {}
        with torch.enable_grad(), leaf_input_embeddings(pipe.text_encoder, leaves):
            embeddings, _ = pipe.encode_prompt(
                prompt=expanded,
                device=pipeline_embeddings.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
                lora_scale=cross_attention_kwargs.get("scale"),
                clip_skip=call_kwargs.get("clip_skip"),
            )
        if len(leaves) != 1:
            raise RuntimeError(f"Expected one text encoder call, saw {len(leaves)}.")
        scale = pipeline_embeddings.abs().max().clamp_min(1e-6)
        if (embeddings.shape != pipeline_embeddings.shape) or (
            (embeddings.detach() - pipeline_embeddings).abs().max() > 1e-3 * scale
        ):
            raise RuntimeError(
                "The prompt embeddings re-computed for attribution differ from the ones the pipeline used (was the "
                "prompt changed by a callback?). Use attribution_level='text_encoder_output'."
            )
        return embeddings

    def _decode(self, latents: torch.Tensor, generator) -> torch.Tensor:
        # The same decode call as the pipelines' own (`vae.decode(latents / scaling_factor)`).
        vae = self.pipe.vae

        def run(z):
            return vae.decode(z / vae.config.scaling_factor, return_dict=False, generator=generator)[0]

        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpointed(run, latents)
        return run(latents)

    def _postprocess(self, decoded: torch.Tensor, output_type: str):
        pipe = self.pipe
        dtype = getattr(pipe.text_encoder, "dtype", decoded.dtype)
        image, nsfw = pipe.run_safety_checker(decoded, decoded.device, dtype)
        denormalize = [True] * image.shape[0] if nsfw is None else [not flagged for flagged in nsfw]
        images = pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize)
        return images, nsfw

    def _step_images(self, step_latents: List[torch.Tensor], generator) -> List[GeneratedImages]:
        pipe = self.pipe
        per_image: List[GeneratedImages] = []
        for latents in tqdm(step_latents, desc="Decoding step images", disable=not self.verbose, leave=False):
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generator)
            pil = pipe.image_processor.postprocess(decoded[0], output_type="pil")
            if not per_image:
                per_image = [GeneratedImages() for _ in pil]
            for sequence, image in zip(per_image, pil):
                sequence.append(image)
        return per_image

    def _jacobian_norms(self, decoded: torch.Tensor, box, leaves: Dict[str, torch.Tensor], method) -> torch.Tensor:
        # Hutchinson estimate of the Frobenius norm of d(box pixels)/d(token embedding), per image and token position.
        leaf = leaves["token_embeddings"]
        image = self.pipe.image_processor.postprocess(decoded, output_type="pt", do_denormalize=[True] * len(decoded))
        mask = box_mask(box, image.shape[-2], image.shape[-1], device=image.device, dtype=torch.float32)
        probes = method.probes(tuple(image.shape), image.device) * mask
        scale = 1.0
        if decoded.dtype in (torch.float16, torch.bfloat16):
            scale = 1.0 / max(1.0, float(mask.sum()) * image.shape[1])
        gradients = vector_jacobian_products(
            image,
            leaf,
            probes,
            scale,
            f"The gradient with respect to the token embeddings is not finite ({decoded.dtype}). Load the pipeline "
            "in float32, or explain fewer steps.",
        )
        return gradients.pow(2).sum(-1).mean(0).sqrt()

    def _backward(
        self,
        decoded: torch.Tensor,
        box,
        leaves: Dict[str, torch.Tensor],
        retain_graph: bool = False,
    ) -> Dict[str, torch.Tensor]:
        # One backward pass of the sum of the explained region of every image (images are independent in the batch,
        # so each image's gradient lands in its own rows). The image is the pipeline's [0, 1] output image
        # (`postprocess(output_type="pt")`, clamp included), before quantization.
        image = self.pipe.image_processor.postprocess(decoded, output_type="pt", do_denormalize=[True] * len(decoded))
        mask = box_mask(box, image.shape[-2], image.shape[-1], device=image.device, dtype=torch.float32)
        target = (image.float() * mask).sum()
        inputs = {k: v for k, v in leaves.items() if v is not None and v.requires_grad}
        # Half precision: scale the target down before the backward so gradients do not overflow, and back after.
        scale = 1.0
        if decoded.dtype in (torch.float16, torch.bfloat16):
            scale = 1.0 / max(1.0, float(mask.sum()) * image.shape[1])
        grads = torch.autograd.grad(
            target * scale, list(inputs.values()), allow_unused=True, retain_graph=retain_graph
        )
        result = {}
        for (name, tensor), grad in zip(inputs.items(), grads):
            if grad is None:  # the traced steps do not reach this input
                continue
            grad = grad.float() / scale
            if not torch.isfinite(grad).all():
                raise FloatingPointError(
                    f"The gradient with respect to {name} is not finite ({decoded.dtype}). Load the pipeline in "
                    "float32, or explain fewer steps."
                )
            result[name] = grad.detach().cpu()
            result[name + "_input"] = tensor.detach().float().cpu()
        return result

    def _tokens(self, expanded: List[str], call_kwargs) -> Tuple[List[List[int]], List[List[str]]]:
        pipe = self.pipe
        texts = expanded
        if hasattr(pipe, "maybe_convert_prompt"):
            texts = pipe.maybe_convert_prompt(texts, pipe.tokenizer)
        ids = pipe.tokenizer(
            texts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True
        ).input_ids
        return ids, [pipe.tokenizer.convert_ids_to_tokens(row) for row in ids]

    def _token_positions(self, ids: List[int], consider_special_tokens: bool) -> List[int]:
        tokenizer = self.pipe.tokenizer
        eos = tokenizer.eos_token_id
        end = ids.index(eos) if eos in ids else len(ids)
        start = 1 if ids and ids[0] == tokenizer.bos_token_id else 0
        if consider_special_tokens:
            return list(range(0, min(end + 1, len(ids))))
        return list(range(start, end))

    def _make_output(
        self,
        index,
        images,
        nsfw,
        all_step_images,
        box,
        prompt,
        ids,
        tokens,
        gradients,
        method,
        level,
        output_type,
        consider_special_tokens,
        clean_tokens,
        method_scores=None,
        method_name=None,
    ):
        clean_image = image = images[index]
        if output_type == "pil":
            image = draw_box(image, box)
        positions = self._token_positions(ids, consider_special_tokens)
        shown = [clean_token(tokens[p]) if clean_tokens else tokens[p] for p in positions]
        token_attributions = token_gradients = token_embeddings = None
        if "token_embeddings" in gradients:
            token_gradients = gradients["token_embeddings"][index, positions]
            token_embeddings = gradients["token_embeddings_input"][index, positions]
            scores = aggregate(token_gradients, token_embeddings, method, dim=-1)
            token_attributions = TokenAttributions(list(zip(shown, scores.tolist())))
        extras = {}
        if method_scores is not None:
            scores, extras = method_scores
            token_attributions = TokenAttributions(list(zip(shown, np.asarray(scores).tolist())))
            token_gradients = extras.pop("token_gradients", None)
            token_embeddings = None
        output = self.output_class(
            image=image,
            nsfw_content_detected=None if nsfw is None else bool(nsfw[index]),
            all_images_during_generation=None if all_step_images is None else all_step_images[index],
            token_attributions=token_attributions,
            explanation_2d_bounding_box=box,
            prompt=prompt,
            attribution_method=method_name or method.value,
            attribution_level=level.value,
            token_ids=[ids[p] for p in positions],
            token_gradients=token_gradients,
            token_embeddings=token_embeddings,
        )
        output.extras["token_positions"] = positions
        output.extras.update(extras)
        output._clean_image = clean_image
        return output


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


class LeanReExplanation:
    r"""
    What a `keep_for_reexplanation="latents"` call kept: its arguments, the generator state it started from and the
    denoiser's outputs at its untraced steps. `explain()` runs the same call with another box, replaying the untraced
    steps from the kept outputs (no denoiser call) and running only the traced steps; the result is a fresh call's.
    """

    def __init__(self, explainer, prompt, arguments, cache, fresh_generators):
        self.explainer = explainer
        self.prompt = prompt
        self.arguments = arguments
        self.cache = cache
        self.fresh_generators = fresh_generators

    @property
    def released(self) -> bool:
        return self.cache is None

    def release(self) -> None:
        self.cache = None

    def region_grid(self, output, index: int, cell_size):
        raise RuntimeError("A region grid needs the graph: call the explainer with keep_for_reexplanation='graph'.")

    def explain(self, output, index: int, explanation_2d_bounding_box, attribution_method=None):
        if self.released:
            raise RuntimeError("What this explanation kept was released: call the explainer again.")
        arguments = dict(self.arguments)
        if attribution_method is not None:
            arguments["attribution_method"] = attribution_method
        arguments.update(
            generator=self.fresh_generators(),
            explanation_2d_bounding_box=explanation_2d_bounding_box,
            get_images_for_all_inference_steps=False,
            keep_for_reexplanation=None,
            _replay_cache=self.cache,
        )
        outputs = self.explainer(self.prompt, **arguments)
        new = outputs[index] if isinstance(outputs, list) else outputs
        new.all_images_during_generation = output.all_images_during_generation
        new.attention_maps = output.attention_maps
        new._reexplanation, new._index = self, index
        return new


class ReExplanation:
    r"""
    What one explainer call kept (the decoded image's graph back to the explained inputs) to explain other regions of
    the same images with one backward pass each and no generation. Shared by the outputs of that call; `release()`
    drops it (so does garbage collection of the outputs).
    """

    def __init__(self, explainer, decoded, leaves, images, method, output_type):
        self.explainer = explainer
        self.decoded = decoded
        self.leaves = leaves
        self.images = images
        self.method = method
        self.output_type = output_type
        self.token_positions: list = []
        self._grids: dict = {}

    @property
    def released(self) -> bool:
        return self.decoded is None

    def release(self) -> None:
        self.decoded = self.leaves = None
        self._grids = {}

    def region_grid(self, output, index: int, cell_size) -> np.ndarray:
        r"""
        Per-cell gradient x input of the attributed tokens, (rows, cols, tokens, hidden): the cells' vector-Jacobian
        products, `CELLS_PER_BATCH` at a time in one batched backward pass (`is_grads_batched`) where autograd can,
        one backward pass per cell otherwise (e.g. through checkpointed steps).
        """
        if self.released:
            raise RuntimeError("This explanation's graph was released: call the explainer again.")
        cell_h, cell_w = (cell_size, cell_size) if isinstance(cell_size, int) else cell_size
        height, width = self.decoded.shape[-2:]
        if cell_h <= 0 or cell_w <= 0 or cell_h > height or cell_w > width:
            raise ValueError(f"`cell_size` must be between 1 and the image size {width}x{height}, got {cell_size}.")
        key = (cell_h, cell_w)
        if key not in self._grids:
            positions = max(self.token_positions, key=len)
            rows, cols = -(-height // cell_h), -(-width // cell_w)
            leaf = self.leaves["token_embeddings"]
            inputs = leaf.detach().float().cpu()
            grid = np.zeros((leaf.shape[0], rows, cols, len(positions), leaf.shape[-1]), np.float32)
            cells = [(r, c) for r in range(rows) for c in range(cols)]
            batches = [cells[i : i + self.CELLS_PER_BATCH] for i in range(0, len(cells), self.CELLS_PER_BATCH)]
            with torch.enable_grad():
                image = self.explainer.pipe.image_processor.postprocess(
                    self.decoded, output_type="pt", do_denormalize=[True] * len(self.decoded)
                )
            for batch in tqdm(batches, desc="Region grid", disable=not self.explainer.verbose, leave=False):
                masks = torch.zeros((len(batch), *image.shape), device=image.device, dtype=torch.float32)
                for k, (r, c) in enumerate(batch):
                    masks[k, ..., r * cell_h : (r + 1) * cell_h, c * cell_w : (c + 1) * cell_w] = 1
                for (r, c), gradient in zip(batch, self._cell_gradients(image, leaf, masks)):
                    values = gradient * inputs
                    for i in range(values.shape[0]):
                        rows_of_image = self.token_positions[i]
                        grid[i, r, c, : len(rows_of_image)] = values[i][rows_of_image].numpy()
            self._grids[key] = grid
        return self._grids[key][index]

    CELLS_PER_BATCH = 8

    def _cell_gradients(self, image: torch.Tensor, leaf: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        # Gradients of each mask's pixel sum with respect to the leaf, float32 on the CPU: (masks, *leaf.shape).
        scale = 1.0
        if image.dtype in (torch.float16, torch.bfloat16):
            scale = 1.0 / max(1.0, float(masks[0].sum()))
        return vector_jacobian_products(
            image, leaf, masks, scale, "A region grid gradient is not finite: load the pipeline in float32."
        )

    def explain(self, output, index: int, explanation_2d_bounding_box, attribution_method=None):
        import dataclasses

        if self.released:
            raise RuntimeError("This explanation's graph was released: call the explainer again.")
        height, width = self.decoded.shape[-2:]
        box = normalize_box(explanation_2d_bounding_box, height, width)
        method = parse_attribution_method(attribution_method or self.method)
        with torch.enable_grad():
            gradients = self.explainer._backward(self.decoded, box, self.leaves, retain_graph=True)
        image = self.images[index]
        if self.output_type == "pil":
            image = draw_box(image, box)
        new = dataclasses.replace(
            output, image=image, explanation_2d_bounding_box=box, attribution_method=method.value
        )
        new.extras = dict(output.extras)
        positions = output.extras["token_positions"]
        if "token_embeddings" in gradients:
            grad = gradients["token_embeddings"][index, positions]
            emb = gradients["token_embeddings_input"][index, positions]
            scores = aggregate(grad, emb, method, dim=-1)
            new.token_gradients, new.token_embeddings = grad, emb
            new.token_attributions = TokenAttributions(list(zip(output.token_attributions.tokens, scores.tolist())))
        self.explainer._finish_output(new, index, gradients, method)
        new._method = GradientAggregation(method)
        new._reexplanation, new._index = self, index
        return new
