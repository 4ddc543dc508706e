"""Generate again from the same noise with the prompt's embeddings changed: the engine of the perturbation methods."""

import contextlib
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from .box import box_mask
from .hooks import DenoiserTracer, progress_bar_disabled


@contextlib.contextmanager
def replaced_input_embeddings(text_encoder: torch.nn.Module, embeddings: torch.Tensor):
    r"""Within the block, the text encoder's token embedding layer returns `embeddings` (same shape) instead."""

    def hook(module, args, output):
        if output.shape != embeddings.shape:
            raise RuntimeError(
                f"Replacement token embeddings have shape {tuple(embeddings.shape)}, the text encoder made "
                f"{tuple(output.shape)}."
            )
        return embeddings.to(output.dtype)

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _generator_state(generator, device: torch.device):
    # The state to start every perturbed generation from: the user's generator, or the global RNG the pipeline draws
    # from when it has none (CPU, or the CUDA device's).
    if isinstance(generator, (list, tuple)):
        if len(generator) != 1:
            raise ValueError("Perturbation methods explain one image per call: pass one generator.")
        generator = generator[0]
    if isinstance(generator, torch.Generator):
        return generator.device, generator.get_state()
    if device.type == "cuda":
        return device, torch.cuda.get_rng_state(device)
    return torch.device("cpu"), torch.get_rng_state()


def _clone_generator(state_device: torch.device, state: torch.Tensor) -> torch.Generator:
    clone = torch.Generator(device=state_device)
    clone.set_state(state)
    return clone


def generator_factory(generator, device: torch.device):
    r"""
    A function that returns new generators in the state `generator` is in now (a generator, a list of them, or
    `None` for the global generator the pipeline then draws from): to run a call again with the same noise.
    """
    if isinstance(generator, (list, tuple)):
        states = [_generator_state(g, device) for g in generator]
    else:
        states = [_generator_state(generator, device)]
    as_list = isinstance(generator, (list, tuple))

    def fresh():
        made = [_clone_generator(state_device, state) for state_device, state in states]
        return made if as_list else made[0]

    return fresh


class PerturbationContext:
    r"""
    Everything needed to generate the explained image again with the prompt's embeddings changed, from the same
    initial noise (and the same scheduler noise: every image of a batch gets its own copy of the generator state the
    explained call started from). Made by an explainer call for a single image and kept on its output.

    Embeddings are given at the call's attribution level: the text encoder's input token embeddings
    (`token_embeddings`, then run through the text encoder) or its output states (`text_encoder_output`). They replace
    the prompt's (positive) embeddings at the traced denoiser calls only, the last
    `n_last_diffusion_steps_to_consider_for_attributions` (all when `None`); earlier calls see the prompt as is.

    Args:
        explainer (`BasePipelineExplainer`): The explainer of the call.
        prompt (`str`): The explained prompt.
        call_kwargs (`dict`): The pipeline arguments of the call (before its callbacks were added).
        n_traced (`int`, *optional*): Number of last denoiser calls that see the replaced embeddings.
        level (`AttributionLevel`): Where the embeddings are replaced.
        token_ids (`List[int]`): The prompt's padded token ids.
        positions (`List[int]`): Positions (in `token_ids`) of the attributed tokens.
        generator_snapshot (`tuple`, *optional*):
            `(device, state)` of the random generator as the call started; the call's generator's current state if
            not given.
    """

    def __init__(
        self,
        explainer,
        prompt: str,
        call_kwargs: Dict[str, Any],
        n_traced,
        level,
        token_ids,
        positions,
        generator_snapshot=None,
    ):
        from .attribution import AttributionLevel

        self.explainer = explainer
        self.pipe = explainer.pipe
        self.prompt = prompt
        self.call_kwargs = {k: v for k, v in call_kwargs.items() if not k.startswith("callback")}
        self.n_traced = n_traced
        self.level = AttributionLevel(level)
        self.token_ids = list(token_ids)
        self.positions = list(positions)
        if generator_snapshot is None:
            generator_snapshot = _generator_state(call_kwargs.get("generator"), self.pipe._execution_device)
        self.generator_device, self.generator_state = generator_snapshot
        self._inputs: Optional[torch.Tensor] = None
        self._baselines: Dict[str, torch.Tensor] = {}
        # The input image's [0, 1] pixels (1, 3, H, W) for img2img / inpainting explainers, set by the explainer.
        self.input_pixels: Optional[torch.Tensor] = None

    # -- embeddings -----------------------------------------------------------------------------------------------
    def _ids_embeddings(self, ids: Sequence[int]) -> torch.Tensor:
        layer = self.pipe.text_encoder.get_input_embeddings()
        with torch.no_grad():
            return layer(torch.tensor([list(ids)], device=layer.weight.device)).detach()

    def _encode(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        # The pipeline's own `encode_prompt`, with the token embedding layer's output replaced.
        pipe = self.pipe
        cross_attention_kwargs = self.call_kwargs.get("cross_attention_kwargs") or {}
        with replaced_input_embeddings(pipe.text_encoder, token_embeddings):
            embeddings, _ = pipe.encode_prompt(
                prompt=[self.prompt] * token_embeddings.shape[0],
                device=token_embeddings.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
                lora_scale=cross_attention_kwargs.get("scale"),
                clip_skip=self.call_kwargs.get("clip_skip"),
            )
        return embeddings

    @property
    def inputs(self) -> torch.Tensor:
        r"""The prompt's embeddings at the attribution level, shape (1, sequence length, hidden)."""
        from .attribution import AttributionLevel

        if self._inputs is None:
            tokens = self._ids_embeddings(self.token_ids)
            if self.level is AttributionLevel.TEXT_ENCODER_OUTPUT:
                with torch.no_grad():
                    tokens = self._encode(tokens)
            self._inputs = tokens.detach()
        return self._inputs

    def baseline(self, baseline: Union[str, torch.Tensor] = "pad") -> torch.Tensor:
        r"""
        The reference embeddings perturbation methods move towards, at the attribution level: (1, length, hidden).

        Args:
            baseline (`str` or `torch.Tensor`, *optional*, defaults to `"pad"`):
                `"pad"`: every attributed token replaced by the tokenizer's padding token (the prompt's other tokens,
                start, end and padding, unchanged); `"empty"`: the empty prompt's tokens; or a tensor of the inputs'
                shape (or without the batch dimension), at the attribution level.
        """
        from .attribution import AttributionLevel

        if isinstance(baseline, torch.Tensor):
            tensor = baseline.to(self.inputs.device, self.inputs.dtype)
            tensor = tensor[None] if tensor.dim() == 2 else tensor
            if tensor.shape != self.inputs.shape:
                raise ValueError(
                    f"A baseline tensor must have shape {tuple(self.inputs.shape)}, got {tuple(tensor.shape)}."
                )
            return tensor
        if baseline not in self._baselines:
            tokenizer = self.pipe.tokenizer
            if baseline == "pad":
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
                ids = list(self.token_ids)
                for position in self.positions:
                    ids[position] = pad
            elif baseline == "empty":
                ids = tokenizer("", padding="max_length", max_length=len(self.token_ids), truncation=True).input_ids
            else:
                raise ValueError(f"`baseline` must be 'pad', 'empty' or a tensor, got {baseline!r}.")
            tokens = self._ids_embeddings(ids)
            if self.level is AttributionLevel.TEXT_ENCODER_OUTPUT:
                with torch.no_grad():
                    tokens = self._encode(tokens)
            self._baselines[baseline] = tokens.detach()
        return self._baselines[baseline]

    # -- generation -----------------------------------------------------------------------------------------------
    def _generators(self, count: int) -> List[torch.Generator]:
        return [_clone_generator(self.generator_device, self.generator_state) for _ in range(count)]

    def _batched(self, value, count: int):
        if isinstance(value, torch.Tensor) and value.shape[0] == 1:
            return value.repeat(count, *[1] * (value.dim() - 1))
        if isinstance(value, (list, tuple)) and len(value) == 1:
            return list(value) * count
        return value

    def _run(self, count: int, replacement, grad: bool, grad_before_loop: bool = False, **overrides) -> torch.Tensor:
        # The pipeline's own call for `count` rows, every row from the explained call's noise, the prompt's embeddings
        # at the traced calls given by `replacement` (the tracer switches grad off at untraced calls and on at traced
        # ones); returns the decoded images.
        pipe = self.pipe
        kwargs = dict(self.call_kwargs)
        kwargs.update(
            prompt=[self.prompt] * count,
            generator=self._generators(count),
            output_type="latent",
            return_dict=True,
            num_images_per_prompt=1,
            **overrides,
        )
        for name in ("negative_prompt", "negative_prompt_embeds", "latents", "ip_adapter_image", "mask_image"):
            if kwargs.get(name) is not None:
                kwargs[name] = self._batched(kwargs[name], count)
        tracer = DenoiserTracer(
            pipe, self.n_traced, replacement, checkpoint=self.explainer.gradient_checkpointing, replace=True, grad=grad
        )
        with progress_bar_disabled(pipe, True), torch.no_grad():
            with torch.set_grad_enabled(grad and grad_before_loop), tracer:
                latents = type(pipe).__call__.__wrapped__(pipe, **kwargs).images
            with torch.set_grad_enabled(grad and latents.requires_grad):
                return self.explainer._decode(latents, None)

    def generate(self, embeddings: torch.Tensor) -> torch.Tensor:
        r"""
        Generate one image per row of `embeddings` (at the attribution level), all from the explained call's noise.

        Gradients flow from the returned decoded images back to `embeddings` when it requires grad (through the traced
        denoiser calls only). Returns the VAE's decoded images, (rows, 3, H, W), in [-1, 1] before any clamp.
        """
        from .attribution import AttributionLevel

        def replacement(pipeline_embeddings: torch.Tensor) -> torch.Tensor:
            if self.level is AttributionLevel.TEXT_ENCODER_OUTPUT:
                return embeddings
            return self._encode(embeddings)

        return self._run(embeddings.shape[0], replacement, grad=embeddings.requires_grad)

    def generate_from_images(self, images: torch.Tensor) -> torch.Tensor:
        r"""
        Generate one image per input image (img2img / inpainting pipelines), all from the explained call's noise and
        with the prompt unchanged. `images` are (rows, 3, H, W) in [0, 1] at the pipeline's processing size. Returns
        the decoded images; when `images` requires grad, with the graph back to it through the traced denoiser calls
        (img2img: only if every call is traced, as the image enters at the first step).
        """
        if "image" not in self.call_kwargs:
            raise ValueError("This explanation has no input image to perturb (text-to-image).")
        image = images.to(self.pipe._execution_device, torch.float32)  # differentiable: the graph reaches `images`
        grad = images.requires_grad
        # The image is encoded before the loop: with grad on there, so that the graph starts at `images`.
        return self._run(images.shape[0], lambda e: e, grad=grad, grad_before_loop=True, image=image)

    def box_images(self, decoded: torch.Tensor) -> torch.Tensor:
        r"""The pipeline's [0, 1] output images (clamped, float32) of decoded images."""
        return self.pipe.image_processor.postprocess(decoded, output_type="pt", do_denormalize=[True] * len(decoded))

    def replaced(self, position_sets: Sequence[Sequence[int]], baseline: Union[str, torch.Tensor] = "pad"):
        r"""One row of embeddings per set of positions: the inputs with those positions replaced by the baseline's."""
        inputs, reference = self.inputs, self.baseline(baseline)
        rows = inputs.repeat(len(position_sets), 1, 1)
        for row, positions in enumerate(position_sets):
            positions = list(positions)
            if positions:
                rows[row, positions] = reference[0, positions]
        return rows

    def box_changes(
        self, rows: torch.Tensor, reference: torch.Tensor, box, batch_size: Optional[int], generate=None, desc=None
    ):
        r"""
        Generate an image from each row (with `generate`, `self.generate` by default), `batch_size` rows at a time and
        without a graph, and measure its `box_change` from the [0, 1] `reference`. A progress bar titled `desc` when
        the explainer is verbose and there is more than one batch. Returns `(changes, images)`, both on the CPU.
        """
        from tqdm.auto import tqdm

        generate = generate or self.generate
        changes, images = [], []
        pieces = chunks(rows.shape[0], batch_size)
        verbose = desc is not None and self.explainer.verbose and len(pieces) > 1
        for piece in tqdm(pieces, desc=desc, disable=not verbose, leave=False):
            with torch.no_grad():
                made = self.box_images(generate(rows[piece.start : piece.stop]))
            changes.append(self.box_change(made, reference.to(made.device), box).cpu())
            images.append(made.cpu())
        return torch.cat(changes), torch.cat(images)

    def box_change(self, images: torch.Tensor, reference: torch.Tensor, box) -> torch.Tensor:
        r"""L2 norm, over the box's pixels and channels, of each [0, 1] image's difference from `reference`."""
        mask = box_mask(box, images.shape[-2], images.shape[-1], device=images.device, dtype=torch.float32)
        difference = (images.float() - reference.float()) * mask
        return torch.linalg.vector_norm(difference.flatten(1), dim=1)


def chunks(count: int, size: Optional[int]) -> List[range]:
    r"""Ranges covering `range(count)` in pieces of at most `size` (all at once when `size` is None)."""
    size = count if not size else max(1, int(size))
    return [range(start, min(count, start + size)) for start in range(0, count, size)]
