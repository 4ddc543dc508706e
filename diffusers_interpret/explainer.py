"""The explainer: run the pipeline's own call with a traced graph (or recorded attention), then attribute."""

import contextlib
import dataclasses
import inspect
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .assembly import Pictures, assemble_outputs
from .attribution import Aggregation, AttributionLevel
from .box import BoxLike
from .defaults import DEFAULT_ATTRIBUTION_LEVEL
from .dependence import DependenceMap
from .families import InputKind, PipelineFamily, SupportedPipeline, supported_pipeline
from .methods import AttributionMethod, GradientAggregation, Scores
from .outputs import (
    ExplanationStats,
    GeneratedImages,
    PipelineControlNetExplainerOutput,
    PipelineExplainerOutput,
    PipelineImageToVideoExplainerOutput,
    PipelineImg2ImgExplainerOutput,
    PipelineInpaintExplainerOutput,
    PipelineVideoExplainerOutput,
)
from .progress import interactive_output, progress_bar
from .regeneration import Regeneration, generator_factory, generator_state
from .request import CheckedRequest, ExplainRequest, check_inputs, with_concepts
from .session import Session
from .step_images import StepImageDecoder
from .text import ConditioningLeaves, PromptTokens, tokenize
from .trace import CallRecord, Trace, TracedGraph
from .tracing.denoising import ImageDenoising
from .tracing.redraw import redraw_changes
from .tracing.replay import UntracedDenoiserCache
from .tracing.run import RunPlan, RunResult, decode, run
from .tracing.scoped import pipeline_lock, truncation_noted_once
from .tracing.steps import SchedulerSteps

# The output class of each kind of pipeline input.
OUTPUT_CLASSES = {
    None: PipelineExplainerOutput,
    InputKind.IMAGE: PipelineImg2ImgExplainerOutput,
    InputKind.INPAINT: PipelineInpaintExplainerOutput,
    InputKind.CONTROL: PipelineControlNetExplainerOutput,
}


@dataclass
class PipelineCall:
    r"""
    The pipeline's call arguments of an explainer call (the explainer's second phase).

    Args:
        kwargs (`Dict[str, Any]`): What the pipeline's `__call__` gets: the user's arguments, `output_type="latent"`
            and, where the pipeline takes one, a step callback (chained with the user's) that keeps every step's
            latents.
        step_latents (`List[torch.Tensor]`): Every step's latents, filled as the call runs (by the callback, or from
            the scheduler's steps).
        steps_from_scheduler (`bool`, *optional*, defaults to `False`): The pipeline takes no step callback: the
            steps' latents are kept from its scheduler's `step` instead ([`~tracing.steps.SchedulerSteps`]).
    """

    kwargs: Dict[str, Any]
    step_latents: List[torch.Tensor]
    steps_from_scheduler: bool = False

    @property
    def generator(self):
        return self.kwargs.get("generator")

    def without_callbacks(self) -> Dict[str, Any]:
        return {k: v for k, v in self.kwargs.items() if not k.startswith("callback")}


def _own_entry(pipe) -> Optional[SupportedPipeline]:
    # The registry's entry of the pipeline's own class, where it has one.
    try:
        return supported_pipeline(pipe)
    except (TypeError, ValueError):
        return None


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
            cost of one more forward pass per traced step. Where even one step's recomputation would not fit in free
            memory, the memory guard turns the denoiser's own gradient checkpointing on for it (one block's
            activations at a time, the blocks run once more). By default (`None`) it is on when more than one step is
            traced (e.g. pixel attributions, which trace every step) and the graph is not kept for re-explanation:
            on SD 1.5 at 512x512, 20 traced steps took 32 GiB of CUDA memory without it and 2.9 GiB with it, for 1.4x
            the time (docs/benchmarks.md).
    """

    # The registry's entry of the pipeline class an explainer class was made for (the classes of `explainers.py`,
    # e.g. `StableDiffusionImg2ImgPipelineExplainer`); `None` explains any supported pipeline, by its own class.
    supported: Optional[SupportedPipeline] = None

    def __init__(self, pipe, verbose: bool = True, gradient_checkpointing: Optional[bool] = None):
        supported = self.supported or supported_pipeline(pipe)
        family = supported.family
        for name in family.required_components:
            if not hasattr(pipe, name):
                raise TypeError(f"{type(pipe).__name__} has no `{name}`: pass a {family.display_name} pipeline.")
        needed = {None: None, InputKind.IMAGE: "image", InputKind.INPAINT: "mask_image"}.get(
            supported.input_kind, family.input_image(pipe)[0]
        )
        if needed is not None and needed not in inspect.signature(type(pipe).__call__).parameters:
            kind = {InputKind.IMAGE: "an img2img", InputKind.INPAINT: "an inpainting"}.get(
                supported.input_kind, "a ControlNet"
            )
            raise TypeError(
                f"{type(self).__name__} explains {kind} pipeline; {type(pipe).__name__} takes no `{needed}`: use "
                "`explainer_for(pipe)` to get the explainer of this pipeline."
            )
        own = _own_entry(pipe)
        if self.supported is not None and own is not None and own.input_kind is not supported.input_kind:
            raise TypeError(
                f"{type(self).__name__} explains {supported.class_name}; {type(pipe).__name__} is another kind of "
                f"pipeline: use {own.explainer_name} (or `explainer_for(pipe)`)."
            )
        if not hasattr(type(pipe).__call__, "__wrapped__"):
            raise TypeError(f"{type(pipe).__name__}.__call__ is not a decorated diffusers pipeline call.")
        if gradient_checkpointing is not None and not isinstance(gradient_checkpointing, bool):
            raise TypeError(f"`gradient_checkpointing` must be None, True or False, got {gradient_checkpointing!r}.")
        if not isinstance(verbose, bool):
            raise TypeError(f"`verbose` must be True or False, got {verbose!r}.")
        self.family: PipelineFamily = family
        self.input_kind: Optional[InputKind] = supported.input_kind
        self.output_class = OUTPUT_CLASSES[supported.input_kind]
        if family.video:
            self.output_class = PipelineVideoExplainerOutput
            if supported.input_kind is InputKind.IMAGE:
                self.output_class = PipelineImageToVideoExplainerOutput
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
        prompt_dependence: bool = True,
        init_image=None,
        image=None,
        mask_image=None,
        explanation_frames: Optional[Sequence[int]] = None,
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
                benchmark on the toy models (docs/methods.md): `"word_attention"` for every family. Otherwise
                `"attention"`, `"jacobian_norm"`, `"integrated_gradients"`, `"smoothgrad"`, `"ablation"`,
                `"linearized_ablation"` (the closest to ablation without generating again), the original's gradient
                aggregations `"grad_x_input"`, `"max_grad"`, `"mean_grad"`, `"min_grad"`, or a method object with
                parameters (e.g. `IntegratedGradients(n_steps=32)`), see [`~methods`] for what each costs.
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
                Keep the latents after every step for `output.all_images_during_generation`, decoded when it is
                first looked at (the slider, the GIF, the report).
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
                `"attention"` method records them anyway, over its traced steps (the last N, all by default). Flux
                Kontext: also where every region of the result looks in the reference image (`output.correspondence`,
                the second image of the interactive view).
            check_memory (`bool`, *optional*, defaults to `True`):
                Before the first denoising step of a call that keeps a graph, estimate its peak memory and raise
                `NotEnoughMemoryError` (a `MemoryError`) with the estimate and the ways out when the device has less
                free; `False` goes on anyway. The estimate is in `output.stats.memory_estimate`.
            prompt_dependence (`bool`, *optional*, defaults to `True`):
                Measure how much the box depends on the prompt at all (`output.prompt_dependence`: the share of it
                the model redraws differently without the prompt, see [`~dependence`]): 12 redraws of two rows
                (about 12 guided steps) and their decodes after the generation, whatever the method (about one more
                plain generation).
                `False` skips it.
            init_image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`, *optional*):
                Img2img and inpainting explainers: the input image (the original 0.5.0's name); `image=` (diffusers'
                name) is the same. Give one of them.
            mask_image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`, *optional*):
                Inpainting explainers: white (1) where the image is repainted, black (0) where it is kept; the size of
                the image.
            explanation_frames (`(start, stop)`, *optional*):
                Video pipelines (Wan): the explained frames, `start` to `stop - 1` (counted from 0); `None` for every
                frame. The box is then the region of each of these frames, in a frame's pixels (a space-time region);
                without a box, the whole of these frames. The clip is explained as one picture of its frames laid
                out top to bottom (`output.image`; `output.frames` splits it).
            pipeline_kwargs:
                Every other argument of the pipeline's `__call__` (`guidance_scale`, `negative_prompt`,
                `generator`, `latents`, `eta`, `num_images_per_prompt`, `callback_on_step_end`, `strength`,
                `prompt_2`, ...), passed through unchanged.

        Returns:
            The output class of the explainer (e.g. [`PipelineExplainerOutput`]) for a single image, or an
            [`ExplanationOutputList`] of them, one per image, when several images are made.
        """
        request = ExplainRequest(
            prompt=prompt,
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
            prompt_dependence=prompt_dependence,
            init_image=init_image,
            image=image,
            mask_image=mask_image,
            explanation_frames=explanation_frames,
            pipeline_kwargs=pipeline_kwargs,
        )
        return self.explain(request)

    def explain(self, request: ExplainRequest, replay: Optional[UntracedDenoiserCache] = None):
        r"""
        Explain one call given as an [`ExplainRequest`] (what [`__call__`] makes of its arguments); for a lean
        re-explanation, with the `replay` of a kept call's untraced denoiser outputs.
        """
        # 1. Check the inputs (before any model runs) and resolve the method, level, box and input image.
        checked = check_inputs(request, self.pipe, self.family, self.input_kind, type(self).__name__)
        # The pipeline's hooks are seen by every thread: calls on one pipeline from several threads take turns.
        with pipeline_lock(self.pipe), truncation_noted_once(self.pipe):
            # 2. The pipeline's call arguments, with a step callback that keeps every step's latents.
            call = self.prepare_call(checked)
            # 3. Run the pipeline's own call, traced, and decode its images with their graph.
            trace, record = self.run_traced(checked, call, replay)
            # 4. The pictures the pipeline itself would give.
            pictures = self.pictures(checked, trace, call)
            # 5. Attribute: the method scores the prompt (and the input image) for the box.
            started = time.perf_counter()
            scores = self.attribute(checked, trace)
            seconds = time.perf_counter() - started
            # 6. How much each image depends on the prompt at all (and on a ControlNet's control image): redrawn with
            # and without it.
            dependence = self.dependence_maps(checked, trace)
            control = None
            if self.input_kind is InputKind.CONTROL:
                control = self.dependence_maps(checked, trace, without=self.family.without_control())
            # 7. Assemble the outputs, and keep what the call's re-explanations need.
            stats = ExplanationStats(record.traced_calls, record.denoiser_calls, seconds, record.memory_estimate)
            session = Session(self, trace, checked, pictures.images, record)
            outputs = assemble_outputs(
                self.output_class, checked, trace, scores, pictures, stats, session, dependence, control
            )
        session.finish()
        return outputs[0] if len(outputs) == 1 else outputs

    def explain_image(
        self,
        image,
        prompt: Union[str, List[str]],
        explanation_2d_bounding_box: Optional[BoxLike] = None,
        attribution_method: Union[str, Aggregation, AttributionMethod, None] = None,
        attribution_level: Union[str, AttributionLevel] = DEFAULT_ATTRIBUTION_LEVEL,
        concepts: Optional[Sequence[str]] = None,
        noise_levels: Optional[Sequence[float]] = None,
        noise_seed: int = 0,
        height: Optional[int] = None,
        width: Optional[int] = None,
        consider_special_tokens: bool = False,
        clean_token_prefixes_and_suffixes: bool = True,
        output_type: str = "pil",
        keep_for_reexplanation: Optional[str] = None,
        attention_maps: bool = False,
        check_memory: bool = True,
        prompt_dependence: bool = True,
        **pipeline_kwargs,
    ):
        r"""
        Explain an image the user already has, with a prompt: which words of the prompt the model reads where in the
        image, without generating anything.

        The image is preprocessed by the pipeline's own image processor (resized down to a multiple of the VAE's
        cell where it is not one, with a note), encoded by its VAE (the posterior's mode, scaled as the pipeline's
        img2img scales it), noised to each of `noise_levels` with seeded noise, and the denoiser is called once per
        level with the prompt (no guidance). Attention methods read the maps recorded over those calls. Gradient and
        perturbation methods explain the *predicted clean image*: the clean latents the denoiser predicts at each
        level, averaged and decoded; the target is that image's pixel sum inside the box (for a gradient method: how
        much each word moves the model's reconstruction of the region; for ablation: how much the reconstruction of
        the region changes without the word). The output is the same kind as a generated explanation's, its `image`
        the input image as the pipeline processed it.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a path): An RGB image.
            prompt (`str` or `List[str]`): The text to explain the image with (a list: each explained on the image).
            explanation_2d_bounding_box (`((x0, y0), (x1, y1))`, *optional*): The region, in pixels of the processed
                image (see [`__call__`]); `None` explains the whole image.
            attribution_method (`str` or `AttributionMethod`, *optional*): As for [`__call__`]; the family's default
                by default (`"concept_attention"` where `concepts` are given).
            attribution_level (`str`, *optional*, defaults to `"token_embeddings"`): As for [`__call__`].
            concepts (`List[str]`, *optional*): Concepts beside the prompt's words for `"concept_attention"` (SD3,
                Flux), e.g. `["background", "sky"]`.
            noise_levels (`List[float]`, *optional*, defaults to `(0.1, 0.3, 0.5)`): Levels of the schedule's noise
                (0: clean, 1: pure noise) the image is denoised at, one denoiser call each; the maps and predictions
                are averaged over them.
            noise_seed (`int`, *optional*, defaults to 0): Seed of the noise (level `k` uses `noise_seed + k`).
            height (`int`, *optional*), width (`int`, *optional*): Resize the image to this size first.
            output_type (`str`, *optional*, defaults to `"pil"`): `"pil"` (box drawn), `"np"` or `"pt"`.
            keep_for_reexplanation (`str`, *optional*): `"graph"` (gradient methods) for `output.explain(box)`; the
                attention methods need nothing kept.
            prompt_dependence (`bool`, *optional*, defaults to `True`): Measure how much the box depends on the prompt
                (`output.prompt_dependence`), as for [`__call__`].
            pipeline_kwargs: The pipeline arguments that shape the conditioning (`prompt_2`, `max_sequence_length`,
                `clip_skip`, `guidance_scale` for Flux-dev's guidance embedding, ...).

        Returns:
            The explainer's output for the image ([`PipelineExplainerOutput`] kind), or a list, one per prompt.
        """
        request = ExplainRequest(
            prompt=prompt,
            height=height,
            width=width,
            explanation_2d_bounding_box=explanation_2d_bounding_box,
            attribution_method=with_concepts(attribution_method, concepts, self.family.default_method),
            attribution_level=attribution_level,
            consider_special_tokens=consider_special_tokens,
            clean_token_prefixes_and_suffixes=clean_token_prefixes_and_suffixes,
            get_images_for_all_inference_steps=False,
            output_type=output_type,
            keep_for_reexplanation=keep_for_reexplanation,
            attention_maps=attention_maps,
            check_memory=check_memory,
            prompt_dependence=prompt_dependence,
            explained_image=image,
            noise_levels=noise_levels,
            noise_seed=noise_seed,
            pipeline_kwargs=pipeline_kwargs,
        )
        return self.explain(request)

    # -- 2. the pipeline's arguments ------------------------------------------------------------------------------
    def prepare_call(self, request: CheckedRequest) -> PipelineCall:
        pipeline_kwargs = dict(request.pipeline_kwargs)
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

        kwargs = dict(pipeline_kwargs)
        kwargs.update(
            prompt=request.request.prompt,
            num_inference_steps=request.request.num_inference_steps,
            height=request.height,
            width=request.width,
            output_type="latent",
            return_dict=True,
        )
        # A pipeline without step callbacks (HunyuanVideo 1.5) hands its steps' latents over through its scheduler.
        with_callbacks = "callback_on_step_end" in inspect.signature(type(self.pipe).__call__).parameters
        if with_callbacks:
            kwargs.update(
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=sorted(set(user_inputs) | {"latents"}),
            )
        if request.image_input is not None:
            kwargs.pop("height"), kwargs.pop("width")
            kwargs.update(request.image_input.pipeline_kwargs())
        return PipelineCall(kwargs, step_latents, steps_from_scheduler=request.step_images and not with_callbacks)

    # -- 3. the traced run ----------------------------------------------------------------------------------------
    def run_plan(self, request: CheckedRequest, tokens: Sequence[PromptTokens]) -> RunPlan:
        r"""How the call runs: its traced steps, checkpointing, size and memory check, where the prompts' own tokens
        are (`tokens`); for an existing image, the denoiser on the image's encoded latents instead of the pipeline's
        loop."""
        call = None
        if request.existing is not None:
            with torch.no_grad():
                latents = self.family.encode_image(self.pipe, request.existing.pixels)
            existing = request.existing
            call = ImageDenoising(
                self.pipe, self.family, latents, existing.levels, existing.seed, (request.height, request.width)
            )
        return RunPlan(
            pipe=self.pipe,
            family=self.family,
            size=(request.height, request.width),
            n_traced=request.n_traced,
            checkpoint=self.checkpoints(request.n_traced, request.keep),
            graph=request.needs_graph,
            pixels=request.image_input is not None,
            check_memory=request.check_memory,
            # The pipeline's own bar, too, only where it redraws in place (not one line per step in a log).
            quiet=not (self.verbose and interactive_output()),
            call=call,
            text_positions=tuple(tuple(prompt.positions) for prompt in tokens),
            text_lengths=(
                tuple(len(ids) for ids in tokens[0].ids)
                if request.needs_graph and request.level is AttributionLevel.TOKEN_EMBEDDINGS
                else None
            ),
        )

    def run_traced(
        self, request: CheckedRequest, call: PipelineCall, replay: Optional[UntracedDenoiserCache] = None
    ) -> Tuple[Trace, CallRecord]:
        r"""Run the pipeline's own call under the plan's scopes and the request's recordings, decode its images with
        the graph, and make the [`Trace`] the method reads and the [`CallRecord`] the session keeps."""
        tokens = tokenize(
            self.family, self.pipe, request.prompts, request.request.consider_special_tokens,
            request.request.clean_token_prefixes_and_suffixes, call.without_callbacks(), request.level,
        )  # fmt: skip
        plan = self.run_plan(request, tokens)
        leaves = None
        if request.needs_graph:
            leaves = ConditioningLeaves(self.family, self.pipe, request.prompts, call.kwargs, request.level)
        # The generators' state before the run draws from them: to make the image again from the same noise.
        device = self.pipe._execution_device
        snapshot = generator_state(call.generator, device) if request.num_images == 1 else None
        fresh_generators = generator_factory(call.generator, device) if request.keep == "latents" else None
        steps = SchedulerSteps(self.pipe, call.step_latents) if call.steps_from_scheduler else contextlib.nullcontext()
        with steps:
            result = run(
                plan,
                call.kwargs,
                conditioning=leaves,
                recordings=request.recordings(),
                keep_untraced=request.keep == "latents",
                replay=replay,
            )
        graph = TracedGraph(
            decode(plan, self.family.output_latents(result.output), call.generator),
            pixels=result.recordings.get("pixels"),
        )
        if leaves is not None:
            graph.conditioning, graph.encoding = leaves.conditioning, leaves.encoding
        trace = self.make_trace(request, call, plan, tokens, result, graph, snapshot)
        # Methods that read recorded maps instead of a graph use the calls they recorded.
        recorded = [len(result.recordings[r.name].steps) for r in request.method_recordings()]
        record = CallRecord(
            traced_calls=result.traced_calls or max(recorded, default=0),
            denoiser_calls=result.denoiser_calls,
            memory_estimate=result.memory_estimate,
            untraced_outputs=result.untraced_outputs,
            fresh_generators=fresh_generators,
        )
        return trace, record

    def make_trace(
        self,
        request: CheckedRequest,
        call: PipelineCall,
        plan: RunPlan,
        tokens: List[PromptTokens],
        result: RunResult,
        graph: TracedGraph,
        snapshot,
    ) -> Trace:
        r"""What the method reads of a run: the graph, the tokens, the recorded maps and (one image per call, from the
        generator state `snapshot`) how to make the image again."""
        kwargs = call.without_callbacks()
        regeneration = None
        if snapshot is not None:
            regeneration = Regeneration(
                dataclasses.replace(plan, checkpoint=self.checkpoints(request.n_traced), quiet=True),
                request.prompts,
                kwargs,
                request.level,
                tokens[0],
                snapshot,
                input_pixels=request.image_input.pixels() if request.image_input is not None else None,
                verbose=self.verbose,
            )
        return Trace(
            self.family,
            self.pipe,
            request.level,
            tokens,
            graph=graph,
            prompts=request.prompts,
            call_kwargs=kwargs,
            attention_maps=result.recordings.get("attention_maps"),
            concept_maps=result.recordings.get("concept_maps"),
            correspondence=result.recordings.get("correspondence"),
            regeneration=regeneration,
            retain_graph=request.keep is not None,
            verbose=self.verbose,
        )

    # -- 4. images ------------------------------------------------------------------------------------------------
    def pictures(self, request: CheckedRequest, trace: Trace, call: PipelineCall) -> Pictures:
        r"""The images as the pipeline post-processes them (safety checker, watermark), and every step's image; for an
        existing image, that image as the pipeline processed it."""
        if request.existing is not None:
            return Pictures([request.existing.picture(self.pipe, request.output_type)] * request.num_images)
        with torch.no_grad():
            images, nsfw = self.family.postprocess(self.pipe, trace.decoded.detach(), request.output_type)
            steps = self._step_images(request, call.step_latents, call.generator) if request.step_images else None
        return Pictures(images, nsfw, steps)

    def _step_images(self, request: CheckedRequest, step_latents, generator) -> List[GeneratedImages]:
        # Kept as latents, decoded when first looked at (the slider, the GIF, the report); an image-to-video call's
        # steps are clips, which its input image (one frame) does not start.
        start = request.image_input.picture() if request.image_input is not None and not self.family.video else None
        size = (request.height, request.width)
        return StepImageDecoder(self.pipe, self.family, step_latents, size, generator, start, self.verbose).sequences()

    # -- 5. attribution -------------------------------------------------------------------------------------------
    def attribute(self, request: CheckedRequest, trace: Trace) -> Optional[Scores]:
        r"""The method's scores for the request's box, and the input image's pixel scores where the method has none."""
        if not request.wants_scores:
            return None
        method = request.method
        if method.needs_graph and not trace.has_graph:
            warnings.warn(
                "No gradient reached the prompt (no denoiser call was traced): token attributions are None.",
                stacklevel=4,
            )
            return None
        target = trace.target(request.box)
        with torch.enable_grad() if trace.has_graph else torch.no_grad():
            scores = method.attribute(trace, target)
            if not method.scores_pixels and trace.has_graph and trace.pixels is not None:
                GradientAggregation().attribute_pixels(trace, target, scores)
        return scores

    # -- 6. prompt dependence -------------------------------------------------------------------------------------
    def dependence_maps(
        self, request: CheckedRequest, trace: Trace, without: Optional[Dict[str, Any]] = None
    ) -> Optional[List[DependenceMap]]:
        r"""Each image's [`DependenceMap`]: the image (generated, or the user's) redrawn from noised copies with its
        prompt and with the empty prompt (with `without`, with the call arguments `without` on top instead: a
        ControlNet's control switched off), zero outside an inpainting mask (the pipeline keeps those pixels). `None`
        where it is not asked for, or where the denoiser also reads a mask (an inpainting model, which cannot redraw
        an image alone; an InstructPix2Pix model redraws beside its input image)."""
        if not request.request.prompt_dependence:
            return None
        if self.family.denoiser_reads_mask(self.pipe) and not self.family.reads_input_image_latents:
            return None
        if request.existing is not None:
            images = request.existing.pixels.expand(request.num_images, -1, -1, -1)
        else:
            with torch.no_grad():
                images = self.family.unit_image(self.pipe, trace.decoded.detach()).float() * 2 - 1
            images = self.family.clip_pixels(self.pipe, images, (request.height, request.width))
        kwargs = {k: v for k, v in request.pipeline_kwargs.items() if not k.startswith("callback")}
        if request.image_input is not None:  # a ControlNet's redraws read the control image
            kwargs[request.image_input.argument] = request.image_input.image
        # Inpainting keeps the pixels outside its mask: they depend on nothing.
        kept = None if request.image_input is None else request.image_input.mask()
        title = "Prompt dependence" if without is None else "Control dependence"
        maps = []
        for index in progress_bar(range(request.num_images), title, disable=not self.verbose):
            prompts = {name: [texts[index]] for name, texts in request.prompts.items()}
            made = redraw_changes(self.pipe, self.family, images[index : index + 1], prompts, kwargs, without=without)
            maps.append(made if kept is None else DependenceMap(made.changed * kept))
        return maps
