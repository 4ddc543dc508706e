"""The explainers: run the pipeline's own call with a traced graph (or recorded attention), then attribute."""

import inspect
import time
import warnings
from typing import Any, Dict, List, Optional, Union

import torch

from .assembly import assemble_outputs
from .attribution import Aggregation, AttributionLevel
from .box import BoxLike
from .defaults import DEFAULT_ATTRIBUTION_LEVEL
from .memory import MemoryGuard
from .methods import AttributionMethod, GradientAggregation
from .outputs import GeneratedImages, PipelineExplainerOutput
from .progress import interactive_output, progress_bar
from .regeneration import Regeneration, generator_factory, generator_state
from .request import EXPLAINER_ARGUMENTS, ExplainRequest, check_inputs
from .session import Session
from .text import check_same, concept_states, encode_with_graph, tokenize
from .trace import Trace
from .tracing.attention import make_recorder
from .tracing.checkpoint import checkpointed
from .tracing.concepts import ConceptAttentionRecorder
from .tracing.replay import UntracedDenoiserCache
from .tracing.run import run_pipeline
from .tracing.scoped import pipeline_lock
from .tracing.steps import StepCounter
from .tracing.tracer import DenoiserTracer


class BasePipelineExplainer:
    r"""
    Explains the images a diffusers pipeline makes, through the family adapter of the pipeline's class.

    The pipeline's own `__call__` runs (unwrapped from its `@torch.no_grad()`), so every scheduler, guidance option
    and pipeline feature behaves as in `pipe(...)` and the explained image is the image `pipe(...)` makes for the same
    arguments and seed. Scoped hooks on the denoiser turn gradients on for the last
    `n_last_diffusion_steps_to_consider_for_attributions` denoiser calls (gradient methods) or record its
    cross-attention (the attention method); the method then scores the prompt's tokens for the (optionally boxed)
    decoded image.

    Args:
        pipe (`DiffusionPipeline`): A loaded pipeline of the explainer's family.
        verbose (`bool`, *optional*, defaults to `True`): Show progress bars.
        gradient_checkpointing (`bool`, *optional*):
            Keep no activations of the traced steps (and of the VAE decoder) during generation and recompute them, one
            step at a time, in the backward pass: peak memory no longer grows with the number of traced steps, at the
            cost of one more forward pass per traced step. By default (`None`) it is on when more than one step is
            traced (e.g. pixel attributions, which trace every step) and the graph is not kept for re-explanation:
            on SD 1.5 at 512x512, 20 traced steps took 32 GiB of CUDA memory without it and 2.9 GiB with it, for 1.4x
            the time (docs/benchmarks.md).
    """

    output_class = PipelineExplainerOutput
    # The family whose pipelines this explainer serves (a `PipelineFamily`), set by each family's explainers.
    family = None
    # "image" (img2img) or "inpaint" for explainers of pipelines that start from an input image.
    input_kind: Optional[str] = None

    def __init__(self, pipe, verbose: bool = True, gradient_checkpointing: Optional[bool] = None):
        family = self.family
        if family is None:
            raise TypeError(
                "BasePipelineExplainer serves no family by itself: use `explainer_for(pipe)` or a family's explainer "
                "(e.g. StableDiffusionPipelineExplainer)."
            )
        for name in family.required_components:
            if not hasattr(pipe, name):
                raise TypeError(f"{type(pipe).__name__} has no `{name}`: pass a {family.display_name} pipeline.")
        parameters = inspect.signature(type(pipe).__call__).parameters
        needed = {"image": "image", "inpaint": "mask_image"}.get(self.input_kind)
        if needed is not None and needed not in parameters:
            kind = "an img2img" if self.input_kind == "image" else "an inpainting"
            raise TypeError(
                f"{type(self).__name__} explains {kind} pipeline; {type(pipe).__name__} takes no `{needed}`: use "
                "`explainer_for(pipe)` to get the explainer of this pipeline."
            )
        if not hasattr(type(pipe).__call__, "__wrapped__"):
            raise TypeError(f"{type(pipe).__name__}.__call__ is not a decorated diffusers pipeline call.")
        if gradient_checkpointing is not None and not isinstance(gradient_checkpointing, bool):
            raise TypeError(f"`gradient_checkpointing` must be None, True or False, got {gradient_checkpointing!r}.")
        if not isinstance(verbose, bool):
            raise TypeError(f"`verbose` must be True or False, got {verbose!r}.")
        self.family = family
        self.pipe = pipe
        self.verbose = verbose
        self.gradient_checkpointing = gradient_checkpointing

    def checkpoints(self, n_traced: Optional[int], keep: Optional[str] = None) -> bool:
        r"""Whether a call tracing the last `n_traced` steps (`None`: all) checkpoints them. By default: when more
        than one step is traced, unless the graph is kept (`keep="graph"`: every later box or region-grid cell
        would recompute the steps again)."""
        if self.gradient_checkpointing is not None:
            return bool(self.gradient_checkpointing)
        return (n_traced is None or n_traced > 1) and keep != "graph"

    def __call__(
        self,
        prompt: Union[str, List[str]],
        num_inference_steps: int = 50,
        height: Optional[int] = None,
        width: Optional[int] = None,
        n_last_diffusion_steps_to_consider_for_attributions: Optional[int] = None,
        explanation_2d_bounding_box: Optional[BoxLike] = None,
        attribution_method: Union[str, Aggregation, AttributionMethod, None] = None,
        attribution_level: Union[str, AttributionLevel] = DEFAULT_ATTRIBUTION_LEVEL,
        consider_special_tokens: bool = False,
        clean_token_prefixes_and_suffixes: bool = True,
        get_images_for_all_inference_steps: bool = True,
        output_type: str = "pil",
        keep_for_reexplanation: Optional[str] = None,
        attention_maps: bool = False,
        check_memory: bool = True,
        init_image=None,
        image=None,
        mask_image=None,
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
            attribution_method (`str` or `AttributionMethod`, *optional*):
                How tokens are scored. `None` (the default) is the family's default, chosen by the faithfulness
                benchmark on its toy model (docs/methods.md): `"word_attention"` for SD, SDXL and SD3,
                `"grad_x_input"` for Flux. Otherwise `"word_attention"`, `"attention"`, `"jacobian_norm"`,
                `"integrated_gradients"`, `"smoothgrad"`, `"ablation"`, `"linearized_ablation"` (the closest to
                ablation without generating again), the original's gradient aggregations
                `"grad_x_input"`, `"max_grad"`, `"mean_grad"`, `"min_grad"`, or a method object with parameters
                (e.g. `IntegratedGradients(n_steps=32)`), see [`~methods`] for what each costs.
                Perturbation methods (integrated gradients, SmoothGrad, ablation, linearized ablation) explain one
                image per call.
            attribution_level (`str` or `AttributionLevel`, *optional*, defaults to `"token_embeddings"`):
                `"token_embeddings"` (input token embeddings, through the text encoders) or `"text_encoder_output"`
                (the conditioning the denoiser reads: the original 0.5.0's level; confounded by position, as CLIP's
                encoder is causal).
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
                `None` keeps nothing. Gradient methods (and `"attention"`) only.
            attention_maps (`bool`, *optional*, defaults to `False`):
                Record cross-attention maps per token (mean over heads, layers and steps) into
                `output.attention_maps`, with a scoped attention processor removed after the generation. The
                `"attention"` method records them anyway, over its traced steps (the last N, all by default).
            check_memory (`bool`, *optional*, defaults to `True`):
                Before the first denoising step of a call that keeps a graph, estimate its peak memory and raise
                `NotEnoughMemoryError` (a `MemoryError`) with the estimate and the ways out when the device has less
                free; `False` goes on anyway. The estimate is in `output.extras["memory_estimate"]`.
            init_image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`, *optional*):
                Img2img and inpainting explainers: the input image (the original 0.5.0's name); `image=` (diffusers'
                name) is the same. Give one of them.
            mask_image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`, *optional*):
                Inpainting explainers: white (1) where the image is repainted, black (0) where it is kept; the size of
                the image.
            pipeline_kwargs:
                Every other argument of the pipeline's `__call__` (`guidance_scale`, `negative_prompt`,
                `generator`, `latents`, `eta`, `num_images_per_prompt`, `callback_on_step_end`, `strength`,
                `prompt_2`, ...), passed through unchanged.

        Returns:
            The output class of the explainer (e.g. [`PipelineExplainerOutput`]) for a single image, or an
            [`ExplanationOutputList`] of them, one per image, when several images are made.
        """
        arguments = dict(
            pipeline_kwargs,
            num_inference_steps=num_inference_steps,
            height=height,
            width=width,
            n_last_diffusion_steps_to_consider_for_attributions=n_last_diffusion_steps_to_consider_for_attributions,
            explanation_2d_bounding_box=explanation_2d_bounding_box,
            attribution_method=attribution_method,
            attribution_level=attribution_level,
            consider_special_tokens=consider_special_tokens,
            clean_token_prefixes_and_suffixes=clean_token_prefixes_and_suffixes,
            get_images_for_all_inference_steps=get_images_for_all_inference_steps,
            output_type=output_type,
            keep_for_reexplanation=keep_for_reexplanation,
            attention_maps=attention_maps,
            check_memory=check_memory,
            init_image=init_image,
            image=image,
            mask_image=mask_image,
        )
        return self.explain_call(prompt, arguments)

    def explain_call(self, prompt, arguments: Dict[str, Any], replay: Optional[UntracedDenoiserCache] = None):
        r"""
        The explainer call with its arguments in a dict (as [`__call__`] takes them) and, for a lean re-explanation,
        the `replay` of a kept call's untraced denoiser outputs.
        """
        # 1. Check the inputs (before any model runs) and resolve the method, level, box and input image.
        request = check_inputs(self, prompt, dict(arguments))
        # The pipeline's hooks are seen by every thread: calls on one pipeline from several threads take turns.
        with pipeline_lock(self.pipe):
            # 2. The pipeline's call arguments, with a step callback that keeps every step's latents.
            call_kwargs, step_latents = self.prepare_call(request)
            # 3. Run the pipeline's own call, traced.
            trace, latents = self.run_traced(request, call_kwargs, replay)
            # 4. Decode, and the pictures the pipeline itself would give.
            images, nsfw, step_images = self.decode_images(request, trace, latents, step_latents, call_kwargs)
            # 5. Attribute: the method scores the prompt (and the input image) for the box.
            started = time.perf_counter()
            target = trace.target(request.box)
            scores = self.attribute(request, trace, target)
            seconds = time.perf_counter() - started
            # 6. Assemble the outputs, and keep what the call's re-explanations need.
            session = Session(self, trace, request, images, replay_cache=trace.replay_cache)
            outputs = assemble_outputs(self, request, trace, scores, images, nsfw, step_images, session)
        for output in outputs:
            output.extras.update(backward_seconds=seconds, traced_denoiser_calls=trace.traced_calls)
            if trace.memory_estimate is not None:
                output.extras["memory_estimate"] = trace.memory_estimate
        session.finish()
        return outputs[0] if len(outputs) == 1 else outputs

    # -- 2. the pipeline's arguments ------------------------------------------------------------------------------
    def prepare_call(self, request: ExplainRequest):
        pipeline_kwargs = {k: v for k, v in request.arguments.items() if k not in EXPLAINER_ARGUMENTS}
        user_callback = pipeline_kwargs.pop("callback_on_step_end", None)
        user_inputs = list(pipeline_kwargs.pop("callback_on_step_end_tensor_inputs", None) or ["latents"])
        if user_callback is not None and hasattr(user_callback, "tensor_inputs"):
            user_inputs = list(user_callback.tensor_inputs)
        step_latents: List[torch.Tensor] = []

        def on_step_end(pipeline, step, timestep, callback_kwargs):
            if request.step_images:
                step_latents.append(callback_kwargs["latents"].detach())
            if user_callback is None:
                return {}
            return user_callback(pipeline, step, timestep, {k: callback_kwargs[k] for k in user_inputs})

        call_kwargs = dict(pipeline_kwargs)
        call_kwargs.update(
            prompt=request.prompt,
            num_inference_steps=request.arguments["num_inference_steps"],
            height=request.height,
            width=request.width,
            output_type="latent",
            return_dict=True,
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=sorted(set(user_inputs) | {"latents"}),
        )
        if request.image_input is not None:
            call_kwargs.pop("height"), call_kwargs.pop("width")
            call_kwargs.update(request.image_input.pipeline_kwargs())
        return call_kwargs, step_latents

    # -- 3. the traced run ----------------------------------------------------------------------------------------
    def run_traced(self, request: ExplainRequest, call_kwargs: Dict[str, Any], replay=None):
        pipe, family = self.pipe, self.family
        trace = Trace(
            family,
            pipe,
            request.level,
            prompts=request.prompts,
            call_kwargs={k: v for k, v in call_kwargs.items() if not k.startswith("callback")},
            prompt_tokens=[],
            retain_graph=request.keep is not None,
            verbose=self.verbose,
        )
        generator = call_kwargs.get("generator")
        snapshot = generator_state(generator, pipe._execution_device) if request.num_images == 1 else None
        trace.fresh_generators = (
            generator_factory(generator, pipe._execution_device) if request.keep == "latents" else None
        )

        def conditioning(prompt_rows: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
            # The prompt rows of the denoiser's conditioning as leaves; at the token level, also the text encoders'
            # graph from the token embeddings to them (the pipeline's own `encode_prompt`, with grad).
            if request.level is AttributionLevel.TOKEN_EMBEDDINGS:
                device = next(iter(prompt_rows.values())).device
                trace.encoding = encode_with_graph(family, pipe, request.prompts, call_kwargs, device)
                check_same(trace.encoding.conditioning, prompt_rows)
                prompt_rows = trace.encoding.conditioning
            trace.conditioning = {name: t.detach().clone().requires_grad_(True) for name, t in prompt_rows.items()}
            return trace.conditioning

        counter = StepCounter(pipe, family.denoiser(pipe), family.calls_per_step(pipe, call_kwargs))
        scopes: List[Any] = [counter]
        pixel_store: Dict[str, torch.Tensor] = {}
        tracer = guard = None
        if request.needs_graph:
            checkpoint = self.checkpoints(request.n_traced, request.keep)
            tracer = DenoiserTracer(pipe, family, counter, request.n_traced, conditioning, checkpoint=checkpoint)
            scopes.append(tracer)
            trace.replay_cache = UntracedDenoiserCache() if request.keep == "latents" else None
            if replay is not None:
                scopes.append(replay.replaying(tracer))
            elif trace.replay_cache is not None:
                scopes.append(trace.replay_cache.recording(tracer))
            if request.image_input is not None:
                scopes.append(request.image_input.leaf_scope(pixel_store))
            guard = MemoryGuard(
                pipe,
                family,
                counter,
                request.n_traced,
                checkpoint,
                (request.height, request.width),
                pixels=request.image_input is not None,
                enforce=request.check_memory,
            )
            scopes.append(guard)
        # The denoiser calls of the traced steps, counted from the end (`None`: all of them), for the recorders.
        traced = list(range(-request.n_traced * counter.calls_per_step, 0)) if request.n_traced else None
        recorder = None
        if request.records_attention:
            steps = traced if request.method.needs_attention_maps else None
            recorder = make_recorder(pipe, family, steps=steps, counter=counter)
            scopes.append(recorder)
        concepts = None
        if request.wants_scores and request.method.needs_concept_maps:
            names = request.method.concept_list(request.prompts["prompt"])
            states = concept_states(family, pipe, names, call_kwargs, pipe._execution_device)
            concepts = ConceptAttentionRecorder(pipe, family, names, states, steps=traced, counter=counter)
            scopes.append(concepts)
        grad_before_loop = request.needs_graph and request.image_input is not None
        # The pipeline's own bar, too, only where it redraws in place (not one line per step in a log or an export).
        quiet = not (self.verbose and interactive_output())
        latents = run_pipeline(pipe, call_kwargs, scopes, grad_before_loop=grad_before_loop, quiet=quiet)
        latents = latents.images
        trace.traced_calls = tracer.traced_calls if tracer is not None else 0
        if recorder is not None and request.method.needs_attention_maps and not trace.traced_calls:
            trace.traced_calls = len(recorder.maps.steps)  # the method reads the steps it recorded
        if concepts is not None:
            trace.concept_maps = concepts.maps
            trace.traced_calls = trace.traced_calls or len(trace.concept_maps.steps)
        trace.denoiser_calls = counter.calls
        trace.memory_estimate = guard.estimate if guard is not None else None
        trace.pixels = pixel_store.get("pixels")
        trace.attention_maps = recorder.maps if recorder is not None else None
        trace.prompt_tokens = tokenize(
            family,
            pipe,
            request.prompts,
            request.consider_special_tokens,
            request.clean_tokens,
            trace.call_kwargs,
            request.level,
        )
        if snapshot is not None:
            trace.regeneration = Regeneration(
                self,
                request.prompts,
                call_kwargs,
                request.n_traced,
                request.level,
                trace.prompt_tokens[0],
                snapshot,
                lambda decoded: family.unit_image(pipe, decoded),
                size=(request.height, request.width),
            )
            if request.image_input is not None:
                trace.regeneration.input_pixels = request.image_input.pixels()
            trace.regeneration.check_memory = request.check_memory
        return trace, latents

    # -- 4. images ------------------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor, generator=None, size=None, checkpoint: bool = False) -> torch.Tensor:
        r"""The family's decode of final latents (of an image of `size`, (height, width)), checkpointed when
        `checkpoint` and grad is on."""

        def run(z):
            return self.family.decode(self.pipe, z, generator, size)

        if checkpoint and torch.is_grad_enabled():
            return checkpointed(run, latents)
        return run(latents)

    def decode_images(self, request: ExplainRequest, trace: Trace, latents, step_latents, call_kwargs):
        generator = call_kwargs.get("generator")
        with torch.set_grad_enabled(request.needs_graph and latents.requires_grad):
            checkpoint = self.checkpoints(request.n_traced, request.keep)
            trace.decoded = self.decode(latents, generator, (request.height, request.width), checkpoint)
        with torch.no_grad():
            images, nsfw = self.family.postprocess(self.pipe, trace.decoded.detach(), request.output_type)
            step_images = self._step_images(request, step_latents, generator) if request.step_images else None
        return images, nsfw, step_images

    def _step_images(self, request: ExplainRequest, step_latents, generator) -> List[GeneratedImages]:
        per_image: List[GeneratedImages] = []
        for latents in progress_bar(step_latents, "Decoding step images", disable=not self.verbose):
            decoded = self.family.decode(self.pipe, latents, generator, (request.height, request.width))
            pictures = self.pipe.image_processor.postprocess(decoded, output_type="pil")
            if not per_image:
                per_image = [GeneratedImages() for _ in pictures]
            for sequence, picture in zip(per_image, pictures):
                sequence.append(picture)
        if request.image_input is not None:
            start = request.image_input.picture()
            for sequence in per_image:
                sequence.insert(0, start)
        return per_image

    # -- 5. attribution -------------------------------------------------------------------------------------------
    def attribute(self, request: ExplainRequest, trace: Trace, target):
        r"""The method's scores for the target, and the input image's pixel scores where the method has none."""
        if not request.wants_scores:
            return None
        method = request.method
        if method.needs_graph and not trace.has_graph:
            warnings.warn(
                f"No gradient reached the prompt (the pipeline made {trace.denoiser_calls} denoiser calls): "
                "token attributions are None.",
                stacklevel=4,
            )
            return None
        with torch.enable_grad() if trace.has_graph else torch.no_grad():
            scores = method.attribute(trace, target)
            if not method.scores_pixels and trace.has_graph and trace.pixels is not None:
                GradientAggregation().attribute_pixels(trace, target, scores)
        return scores
