r"""
What one traced pipeline run leaves for the attribution methods ([`Trace`]): the decoded image with its graph back to
the prompt's conditioning (and the input image's pixels), the text encoders' graph, the tokens, the recorded maps and
what is needed to generate the image again; and what the session keeps about the call ([`CallRecord`]).
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from .attribution import AttributionLevel
from .families import PipelineFamily
from .memory import MemoryEstimate
from .regeneration import Regeneration
from .target import Target
from .text import PromptTokens, TextEncoding, TextInputs, TokenMixing, token_mixing
from .tracing.maps import AttentionMapsData, ConceptMaps
from .tracing.replay import UntracedDenoiserCache


@dataclass
class CallGradients:
    r"""
    Gradients of one target, float32 on the CPU.

    Args:
        text (`torch.Tensor`, *optional*): (images, length, features) at the attribution level, every text encoder's
            features side by side.
        pixels (`torch.Tensor`, *optional*): (images or 1, 3, H, W) with respect to the [0, 1] input image.
        pooled_share (`List[float]`, *optional*): Per image, the share of the squared gradient x input norm at the
            text encoders' outputs that the pooled embedding carries (families with one, e.g. SDXL).
    """

    text: Optional[torch.Tensor] = None
    pixels: Optional[torch.Tensor] = None
    pooled_share: Optional[List[float]] = None


@dataclass
class TracedGraph:
    r"""
    The graph a traced run left, from the decoded images back to the prompt's conditioning (and the input image's
    pixels): what `release()` drops (the traced steps' activations with it).

    Args:
        decoded (`torch.Tensor`, *optional*): The decoded images, with their graph when the run was traced.
        conditioning (`Dict[str, torch.Tensor]`): The prompt rows of the denoiser's conditioning tensors, as leaves
            that require grad (their gradients are the `text_encoder_output` level's).
        encoding (`TextEncoding`, *optional*): The text encoders' graph from the token embeddings to `conditioning`
            (`token_embeddings` level).
        pixels (`torch.Tensor`, *optional*): The [0, 1] input image as a leaf (img2img, inpainting).
    """

    decoded: Optional[torch.Tensor] = None
    conditioning: Dict[str, torch.Tensor] = field(default_factory=dict)
    encoding: Optional[TextEncoding] = None
    pixels: Optional[torch.Tensor] = None

    def release(self) -> None:
        r"""Drop the graph (and with it the traced steps' activations)."""
        self.decoded = None
        self.conditioning = {}
        self.encoding = None
        self.pixels = None


@dataclass(frozen=True)
class Trace:
    r"""
    The product of one traced run, read by [`AttributionMethod.attribute`]; made once, after the run.

    Args:
        family (`PipelineFamily`): The pipeline's family.
        pipe: The pipeline.
        level (`AttributionLevel`): Where tokens are attributed.
        prompt_tokens (`List[PromptTokens]`): Each image's tokens and scored units.
        graph (`TracedGraph`): The decoded images and their graph (`decoded`, `conditioning`, `encoding` and
            `pixels` read it).
        prompts (`Dict[str, List[str]]`): Each image's texts by call argument.
        call_kwargs (`Dict[str, Any]`): The pipeline call's arguments (callbacks left out).
        attention_maps (`AttentionMapsData`, *optional*): Recorded cross-attention maps.
        concept_maps (`ConceptMaps`, *optional*): Recorded concept-attention maps.
        correspondence (`Correspondence`, *optional*): Where each token of the image looks in a reference image
            (Flux Kontext, with `attention_maps=True`).
        regeneration (`Regeneration`, *optional*): How to generate the image again (one image per call).
        retain_graph (`bool`): Keep the graph after a backward pass (for re-explanation); without it, a call's
            box-sum backward pass is the graph's last use.
        verbose (`bool`): Progress bars for long method loops.
    """

    family: PipelineFamily
    pipe: Any
    level: AttributionLevel
    prompt_tokens: List[PromptTokens]
    graph: TracedGraph = field(default_factory=TracedGraph)
    prompts: Dict[str, List[str]] = field(default_factory=dict)
    call_kwargs: Dict[str, Any] = field(default_factory=dict)
    attention_maps: Optional[AttentionMapsData] = None
    concept_maps: Optional[ConceptMaps] = None
    correspondence: Optional[Any] = None
    regeneration: Optional[Regeneration] = None
    retain_graph: bool = False
    verbose: bool = True
    _mixing: Dict[int, TokenMixing] = field(default_factory=dict, repr=False, compare=False)

    @property
    def decoded(self) -> Optional[torch.Tensor]:
        return self.graph.decoded

    @property
    def conditioning(self) -> Dict[str, torch.Tensor]:
        return self.graph.conditioning

    @property
    def encoding(self) -> Optional[TextEncoding]:
        return self.graph.encoding

    @property
    def pixels(self) -> Optional[torch.Tensor]:
        return self.graph.pixels

    @property
    def has_graph(self) -> bool:
        return self.decoded is not None and self.decoded.requires_grad

    def target(self, box) -> Target:
        return Target(box, lambda decoded: self.family.unit_image(self.pipe, decoded))

    def text_inputs(self) -> TextInputs:
        r"""The prompt's embeddings at the attribution level, (images, length, features)."""
        if self.level is AttributionLevel.TOKEN_EMBEDDINGS:
            return self.encoding.token_inputs()
        slices = self.prompt_tokens[0].slices if self.prompt_tokens else []
        return TextInputs(self.conditioning["encoder_hidden_states"].detach().float().cpu(), slices)

    def _leaves(self, text: bool, pixels: bool) -> Dict[str, torch.Tensor]:
        leaves = dict(self.conditioning) if text else {}
        if pixels and self.pixels is not None:
            leaves["pixels"] = self.pixels
        return leaves

    def gradients(self, target: Target, text: bool = True, pixels: bool = True) -> CallGradients:
        r"""One backward pass of the target's box sum to the prompt (at the level) and the input pixels."""
        if not self.has_graph:
            raise RuntimeError("No gradient reaches the prompt: trace at least one denoiser call.")
        # Without a kept graph, this backward pass is the graph's last use: it frees the graph as it goes.
        found = target.gradients(self.decoded, self._leaves(text, pixels), retain_graph=self.retain_graph)
        result = CallGradients(pixels=found.get("pixels"))
        if text and "encoder_hidden_states" in found:
            result.text = self._at_level(found, batched=False, retain_graph=self.retain_graph)
            result.pooled_share = self._pooled_share(found)
        return result

    def vector_jacobian_products(self, target: Target, vectors: torch.Tensor) -> torch.Tensor:
        r"""`vectors[k]^T d(image)/d(text inputs)` at the attribution level: (k, images, length, features)."""
        found = self.conditioning_vector_jacobian_products(target, vectors)
        return self._at_level(found, batched=True, retain_graph=True)

    def conditioning_vector_jacobian_products(self, target: Target, vectors: torch.Tensor) -> Dict[str, torch.Tensor]:
        r"""`vectors[k]^T d(image)/d(conditioning)` for each conditioning tensor the denoiser reads (its name ->
        (k, *tensor.shape)), keeping the graph."""
        if not self.has_graph:
            raise RuntimeError("No gradient reaches the prompt: trace at least one denoiser call.")
        return target.vector_jacobian_products(self.decoded, self._leaves(True, False), vectors)

    def _at_level(self, found: Dict[str, torch.Tensor], batched: bool, retain_graph: bool) -> torch.Tensor:
        if self.level is AttributionLevel.TEXT_ENCODER_OUTPUT:
            return found["encoder_hidden_states"]
        with torch.enable_grad():
            return self.encoding.token_gradients(found, retain_graph=retain_graph, batched=batched)

    def _pooled_share(self, found: Dict[str, torch.Tensor]) -> Optional[List[float]]:
        name = self.family.pooled_name
        if name is None or name not in found:
            return None
        sequence = found["encoder_hidden_states"] * self.conditioning["encoder_hidden_states"].detach().float().cpu()
        pooled = found[name] * self.conditioning[name].detach().float().cpu()
        a = pooled.pow(2).flatten(1).sum(1)
        b = sequence.pow(2).flatten(1).sum(1)
        return [float(x) for x in (a / (a + b).clamp_min(1e-30))]

    def token_mixing(self, index: int) -> TokenMixing:
        r"""How much each of image `index`'s input tokens feeds each conditioning position (made once per image)."""
        if index not in self._mixing:
            prompts = {name: texts[index : index + 1] for name, texts in self.prompts.items()}
            tokens = self.prompt_tokens[index]
            self._mixing[index] = token_mixing(self.family, self.pipe, prompts, self.call_kwargs, tokens)
        return self._mixing[index]

    def release(self) -> None:
        r"""Drop the graph (and with it the traced steps' activations)."""
        self.graph.release()


@dataclass(frozen=True)
class CallRecord:
    r"""
    What the session and the outputs keep about an explainer call's run (methods do not read it).

    Args:
        traced_calls (`int`): Denoiser calls traced (or, for methods that read recorded maps, recorded).
        denoiser_calls (`int`): Denoiser calls made.
        memory_estimate (`MemoryEstimate`, *optional*): The memory guard's estimate, for a call that built a graph.
        untraced_outputs (`UntracedDenoiserCache`, *optional*): The untraced calls' outputs
            (`keep_for_reexplanation="latents"`).
        fresh_generators (`Callable`, *optional*): New generators in the state the call's were in when it started
            (`keep_for_reexplanation="latents"`), to run it again with the same noise.
    """

    traced_calls: int = 0
    denoiser_calls: int = 0
    memory_estimate: Optional[MemoryEstimate] = None
    untraced_outputs: Optional[UntracedDenoiserCache] = None
    fresh_generators: Optional[Callable[[], Any]] = None
