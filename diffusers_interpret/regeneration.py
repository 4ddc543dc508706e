r"""
Generate the explained image again from the same noise with the prompt's embeddings (or the input image) changed:
the engine of the perturbation methods and of the faithfulness metrics.
"""

import copy
import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .attribution import AttributionLevel
from .progress import progress_bar
from .target import Target
from .text import (
    ConditioningLeaves,
    PromptTokens,
    TextInputs,
    encode_replaced,
    token_blocks,
    token_embedding_values,
)
from .tracing.run import Recording, RunPlan, RunResult, decode, run


def generator_state(generator, device: torch.device):
    r"""The state to start every regeneration from: the user's generator, or the global RNG the pipeline draws from
    when it has none (CPU, or the CUDA device's)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != 1:
            raise ValueError("Perturbation methods explain one image per call: pass one generator.")
        generator = generator[0]
    if isinstance(generator, torch.Generator):
        return generator.device, generator.get_state()
    if device.type == "cuda":
        return device, torch.cuda.get_rng_state(device)
    return torch.device("cpu"), torch.get_rng_state()


def clone_generator(state_device: torch.device, state: torch.Tensor) -> torch.Generator:
    clone = torch.Generator(device=state_device)
    clone.set_state(state)
    return clone


def generator_factory(generator, device: torch.device):
    r"""A function that returns new generators in the state `generator` is in now (a generator, a list of them, or
    `None` for the global generator the pipeline then draws from): to run a call again with the same noise."""
    items = generator if isinstance(generator, (list, tuple)) else [generator]
    states = [generator_state(g, device) for g in items]
    as_list = isinstance(generator, (list, tuple))

    def fresh():
        made = [clone_generator(state_device, state) for state_device, state in states]
        return made if as_list else made[0]

    return fresh


def chunks(count: int, size: Optional[int]) -> List[range]:
    r"""Ranges covering `range(count)` in pieces of at most `size` (all at once when `size` is None)."""
    size = count if not size else max(1, int(size))
    return [range(start, min(count, start + size)) for start in range(0, count, size)]


class Regeneration:
    r"""
    Everything needed to generate the explained image again with the prompt's embeddings changed, from the same
    initial noise (and the same scheduler noise: every image of a batch gets its own copy of the generator state the
    explained call started from). Made by an explainer call for a single image; every generation runs through
    `tracing.run` with the call's plan, the traced calls seeing the changed conditioning.

    Embeddings are given at the call's attribution level (`TextInputs`: every text encoder's features side by side),
    the input token embeddings (then run through the text encoders) or the denoiser's `encoder_hidden_states`. They
    replace the prompt's conditioning at the traced denoiser calls only, the last
    `n_last_diffusion_steps_to_consider_for_attributions` (all when `None`); earlier calls see the prompt as is.

    Args:
        plan (`RunPlan`): How the explained call runs (its traced steps, checkpointing, size, memory check).
        prompts (`Dict[str, List[str]]`): The image's texts by call argument.
        call_kwargs (`dict`): The explained call's pipeline arguments.
        level (`AttributionLevel`): Where the embeddings are given.
        tokens (`PromptTokens`): The image's tokens and scored units.
        generator_snapshot (`tuple`): The (device, state) of the generator the call started from
            ([`generator_state`]).
        input_pixels (`torch.Tensor`, *optional*): The input image's [0, 1] pixels, (1, 3, H, W) (img2img,
            inpainting).
        verbose (`bool`, *optional*, defaults to `True`): Progress bars over batches of generations.
    """

    def __init__(
        self,
        plan: RunPlan,
        prompts: Dict[str, List[str]],
        call_kwargs: Dict[str, Any],
        level: AttributionLevel,
        tokens: PromptTokens,
        generator_snapshot,
        input_pixels: Optional[torch.Tensor] = None,
        verbose: bool = True,
    ):
        self.plan = plan
        self.family = plan.family
        self.pipe = plan.pipe
        self.prompts = {name: texts[:1] for name, texts in prompts.items()}
        self.prompt = self.prompts["prompt"][0]
        self.call_kwargs = {k: v for k, v in call_kwargs.items() if not k.startswith("callback")}
        self.n_traced = plan.n_traced
        self.level = AttributionLevel(level)
        self.tokens = tokens
        self.units = tokens.units
        self.positions = [unit.position for unit in self.units]
        self.generator_device, self.generator_state = generator_snapshot
        self.size = plan.size
        # The input image's [0, 1] pixels (1, 3, H, W) for img2img / inpainting explainers.
        self.input_pixels = input_pixels
        self.verbose = verbose
        self._inputs: Optional[TextInputs] = None
        self._baselines: Dict[str, torch.Tensor] = {}

    # -- embeddings -----------------------------------------------------------------------------------------------
    def _at_level(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        tokens = token_embedding_values(self.family, self.pipe, ids, self.call_kwargs)
        if self.level is AttributionLevel.TEXT_ENCODER_OUTPUT:
            with torch.no_grad():
                return self._encode(tokens)["encoder_hidden_states"].detach()
        return tokens

    def _encode(self, token_embeddings: torch.Tensor) -> Dict[str, torch.Tensor]:
        blocks = token_blocks(self.family, self.pipe, self.tokens.ids, self.call_kwargs)
        return encode_replaced(self.family, self.pipe, self.prompts, self.call_kwargs, token_embeddings, blocks)

    def slices(self) -> List[Optional[slice]]:
        if self.level is AttributionLevel.TEXT_ENCODER_OUTPUT:
            return self.tokens.slices
        return [block.features for block in token_blocks(self.family, self.pipe, self.tokens.ids, self.call_kwargs)]

    @property
    def inputs(self) -> torch.Tensor:
        r"""The prompt's embeddings at the attribution level, shape (1, sequence length, features)."""
        if self._inputs is None:
            self._inputs = TextInputs(self._at_level(self.tokens.ids), self.slices())
        return self._inputs.values

    @property
    def text_inputs(self) -> TextInputs:
        self.inputs  # noqa: B018 (made on first use)
        return self._inputs

    def baseline(self, baseline: Union[str, torch.Tensor] = "pad") -> torch.Tensor:
        r"""
        The reference embeddings perturbation methods move towards, at the attribution level: (1, length, features).

        Args:
            baseline (`str` or `torch.Tensor`, *optional*, defaults to `"pad"`):
                `"pad"`: every attributed token replaced by its tokenizer's padding token (the prompt's other tokens,
                start, end and padding, unchanged); `"empty"`: the empty prompt's tokens; or a tensor of the inputs'
                shape (or without the batch dimension), at the attribution level.
        """
        if isinstance(baseline, torch.Tensor):
            tensor = baseline.to(self.inputs.device, self.inputs.dtype)
            tensor = tensor[None] if tensor.dim() == 2 else tensor
            if tensor.shape != self.inputs.shape:
                raise ValueError(
                    f"A baseline tensor must have shape {tuple(self.inputs.shape)}, got {tuple(tensor.shape)}."
                )
            return tensor
        if baseline not in self._baselines:
            ids = []
            for k, slot in enumerate(self.family.text_encoders(self.pipe)):
                tokenizer = self.family.tokenizer(self.pipe, slot)
                row = list(self.tokens.ids[k])
                if baseline == "pad":
                    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
                    for unit in self.units:
                        if k in unit.encoders:
                            row[unit.token_index] = pad
                elif baseline == "empty":
                    empty, _ = self.family.encoder_text(self.pipe, slot, "", self.call_kwargs)
                    extra = self.family.tokenizer_arguments(self.pipe, slot, empty)
                    row = tokenizer(empty, padding="max_length", max_length=len(row), truncation=True, **extra)
                    row = row.input_ids
                else:
                    raise ValueError(f"`baseline` must be 'pad', 'empty' or a tensor, got {baseline!r}.")
                ids.append(row)
            self._baselines[baseline] = self._at_level(ids).detach()
        return self._baselines[baseline]

    def replaced(self, position_sets: Sequence[Sequence[int]], baseline: Union[str, torch.Tensor] = "pad"):
        r"""One row of embeddings per set of token positions: the inputs with those positions' attributed features
        replaced by the baseline's."""
        unit_sets = [[i for i, unit in enumerate(self.units) if unit.position in set(ps)] for ps in position_sets]
        return self.replaced_units(unit_sets, baseline)

    def replaced_units(self, unit_sets: Sequence[Sequence[int]], baseline: Union[str, torch.Tensor] = "pad"):
        r"""As `replaced`, with sets of indices into `units` (one encoder's features of a token, where units are per
        encoder)."""
        inputs, reference = self.inputs, self.baseline(baseline)
        rows = inputs.repeat(len(unit_sets), 1, 1)
        for row, indices in enumerate(unit_sets):
            for index in indices:
                unit = self.units[index]
                features = self.text_inputs.unit_features(unit)
                rows[row, unit.position, features] = reference[0, unit.position, features]
        return rows

    # -- generation -----------------------------------------------------------------------------------------------
    def _batched(self, value, count: int):
        if isinstance(value, str):  # a negative prompt: one per row (Z-Image asserts as many as prompts)
            return [value] * count
        if isinstance(value, torch.Tensor) and value.shape[0] == 1:
            return value.repeat(count, *[1] * (value.dim() - 1))
        if isinstance(value, (list, tuple)) and len(value) == 1:
            return list(value) * count
        return value

    def _call_kwargs(self, count: int, **overrides) -> Dict[str, Any]:
        # The explained call's arguments for `count` rows, every row from the explained call's noise.
        kwargs = dict(self.call_kwargs)
        kwargs.update(
            {name: texts * count for name, texts in self.prompts.items() if name in kwargs or name == "prompt"},
            generator=[clone_generator(self.generator_device, self.generator_state) for _ in range(count)],
            output_type="latent",
            return_dict=True,
            **{self.family.images_per_prompt_argument: 1},
            **overrides,
        )
        per_row = (*self.family.negative_prompt_arguments(self.pipe), "latents", "ip_adapter_image", "mask_image")
        for name in per_row:
            if kwargs.get(name) is not None:
                kwargs[name] = self._batched(kwargs[name], count)
        return kwargs

    def _run(self, count: int, replacement, grad: bool, grad_before_loop: bool = False, **overrides) -> torch.Tensor:
        # The pipeline's own call for `count` rows, the prompt's conditioning at the traced calls given by
        # `replacement`; returns the decoded images.
        plan = dataclasses.replace(self.plan, graph=grad, replace=True, pixels=grad_before_loop)
        result = run(plan, self._call_kwargs(count, **overrides), conditioning=replacement)
        latents = self.family.output_latents(result.output)
        return decode(plan, latents)

    def traced_run(
        self, conditioning: ConditioningLeaves, recordings: Sequence[Recording] = (), graph: bool = True
    ) -> Tuple[torch.Tensor, RunResult]:
        r"""
        The explained image made once more from the same noise, the traced calls taking `conditioning`'s leaves
        (e.g. a perturbed prompt's), with `recordings` recorded beside it: the decoded image (with its graph back to
        the leaves when `graph`) and the run's result. What a method wrapped by another reads as its trace.
        """
        plan = dataclasses.replace(self.plan, graph=graph, replace=True)
        result = run(plan, self._call_kwargs(1), conditioning=conditioning, recordings=recordings)
        return decode(plan, self.family.output_latents(result.output)), result

    def leaves(self, embeddings: torch.Tensor) -> ConditioningLeaves:
        r"""The conditioning leaves of one row of `embeddings` at the attribution level, for `traced_run`."""
        blocks = token_blocks(self.family, self.pipe, self.tokens.ids, self.call_kwargs)
        return ConditioningLeaves(
            self.family, self.pipe, self.prompts, self.call_kwargs, self.level, embeddings=embeddings, blocks=blocks
        )

    def with_inputs(self, embeddings: torch.Tensor) -> "Regeneration":
        r"""This regeneration around other (1, rows, features) embeddings at the attribution level: its `inputs`
        (and the baselines methods move from them towards) are these."""
        moved = copy.copy(self)
        moved._inputs = TextInputs(embeddings, self.slices())
        return moved

    def generate(self, embeddings: torch.Tensor) -> torch.Tensor:
        r"""
        Generate one image per row of `embeddings` (at the attribution level), all from the explained call's noise.

        Gradients flow from the returned decoded images back to `embeddings` when it requires grad (through the traced
        denoiser calls only). Returns the VAE's decoded images, (rows, 3, H, W), in [-1, 1] before any clamp.
        """

        limit = self.family.images_per_call(self.pipe, self.call_kwargs)
        if limit and embeddings.shape[0] > limit:  # a pipeline that cannot make more images in one call
            return torch.cat([self.generate(embeddings[i : i + limit]) for i in range(0, embeddings.shape[0], limit)])

        def replacement(present: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
            return {**present, **self.conditioning(embeddings)}

        return self._run(embeddings.shape[0], replacement, grad=embeddings.requires_grad)

    def conditioning(self, embeddings: torch.Tensor) -> Dict[str, torch.Tensor]:
        r"""
        The denoiser's conditioning (prompt rows, by name) made from each row of `embeddings` (at the attribution
        level): at the token level the pipeline's own `encode_prompt` runs on them; at the text encoders' output level
        they are the `encoder_hidden_states` (and the tensors not given, e.g. a pooled embedding, stay the prompt's).
        """
        if self.level is AttributionLevel.TEXT_ENCODER_OUTPUT:
            return {"encoder_hidden_states": embeddings}
        return self._encode(embeddings)

    def generate_from_images(self, images: torch.Tensor) -> torch.Tensor:
        r"""
        Generate one image per input image (img2img / inpainting pipelines), all from the explained call's noise and
        with the prompt unchanged. `images` are (rows, 3, H, W) in [0, 1] at the pipeline's processing size. Returns
        the decoded images; when `images` requires grad, with the graph back to it through the traced denoiser calls
        (img2img: only if every call is traced, as the image enters at the first step).
        """
        argument = self.family.input_image(self.pipe)[0]
        if argument not in self.call_kwargs:
            raise ValueError("This explanation has no input image to perturb (text-to-image).")
        image = images.to(self.pipe._execution_device, torch.float32)  # differentiable: the graph reaches `images`
        return self._run(
            images.shape[0],
            lambda present: present,
            grad=images.requires_grad,
            grad_before_loop=True,
            **{argument: image},
        )

    def box_images(self, decoded: torch.Tensor) -> torch.Tensor:
        r"""The pipeline's [0, 1] output images (clamped) of decoded images."""
        return self.family.unit_image(self.pipe, decoded)

    def box_changes(
        self, rows: torch.Tensor, reference: torch.Tensor, box, batch_size: Optional[int], generate=None, desc=None
    ):
        r"""
        Generate an image from each row (with `generate`, `self.generate` by default), `batch_size` rows at a time and
        without a graph, and measure its change inside `box` from the [0, 1] `reference`. A progress bar titled `desc`
        when the explainer is verbose and there is more than one batch. Returns `(changes, images)`, on the CPU.
        """

        generate = generate or self.generate
        target = Target(box, self.box_images)
        changes, images = [], []
        pieces = chunks(rows.shape[0], batch_size)
        verbose = desc is not None and self.verbose and len(pieces) > 1
        for piece in progress_bar(pieces, desc, disable=not verbose):
            with torch.no_grad():
                made = self.box_images(generate(rows[piece.start : piece.stop]))
            changes.append(target.change(made, reference).cpu())
            images.append(made.cpu())
        return torch.cat(changes), torch.cat(images)
