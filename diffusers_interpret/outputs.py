"""What an explanation returns: `@dataclass` outputs and the rich objects they hold."""

import base64
import dataclasses
import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import fill
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .box import Box
from .checks import positive_int
from .dependence import bar_opacity, describe_control_dependence, describe_dependence
from .memory import MemoryEstimate
from .progress import in_notebook
from .views.markup import BAR, BAR_TOP, image_slider_html, plain_text, show_html, standalone_page


def _percentages(scores: np.ndarray) -> np.ndarray:
    total = float(np.sum(scores))
    if total == 0 or not np.isfinite(total):
        warnings.warn(
            "All attribution scores are zero (e.g. the explained region is saturated, where the image's clamp to "
            "[0, 1] has no gradient): normalized scores are all zero.",
            stacklevel=3,
        )
        return np.zeros_like(scores, dtype=np.float64)
    return np.asarray(scores, dtype=np.float64) / total * 100.0


class TokenAttributions(list):
    r"""
    A list of `(token, score)` pairs, one per prompt token, in prompt order.

    `.normalized` gives the same pairs with scores in percent (summing to 100); `.plot()` draws them as bars. Where
    the prompt is read by several text encoders whose tokens are listed one after the other (Flux's T5 and CLIP, SD3's
    CLIP and T5), `.encoders` names each token's encoder (`"T5"`, `"CLIP-L+CLIP-G"`), and the bars say it. An
    explainer's scores carry their region's `.prompt_dependence` (see [`~dependence`]) and `.whole_image`: the plot
    says it under the bars and, for a box, dims them as the box depends less on the prompt.
    """

    def __init__(
        self,
        pairs: List[Tuple[str, float]],
        encoders: Optional[Sequence[str]] = None,
        prompt_dependence: Optional[float] = None,
        whole_image: bool = False,
    ):
        super().__init__((str(token), float(score)) for token, score in pairs)
        if encoders is not None and len(encoders) != len(self):
            raise ValueError(f"Got {len(encoders)} encoder labels for {len(self)} tokens: give one per token.")
        self.encoders: Optional[List[str]] = None if encoders is None else [str(e) for e in encoders]
        self.prompt_dependence = prompt_dependence
        self.whole_image = whole_image

    @property
    def labels(self) -> List[str]:
        r"""The tokens as a view shows them: with their encoder where `encoders` is set (`"red (T5)"`)."""
        if self.encoders is None:
            return self.tokens
        return [f"{token} ({encoder})" for token, encoder in zip(self.tokens, self.encoders)]

    @property
    def tokens(self) -> List[str]:
        return [token for token, _ in self]

    @property
    def scores(self) -> np.ndarray:
        return np.array([score for _, score in self], dtype=np.float64)

    @property
    def normalized(self) -> List[Tuple[str, float]]:
        return [(token, float(pct)) for token, pct in zip(self.tokens, _percentages(self.scores))]

    def plot(self, normalize: bool = True, ax=None, title: Optional[str] = None):
        r"""
        Bar chart of the scores.

        Args:
            normalize (`bool`, *optional*, defaults to `True`): Plot percentages instead of raw scores.
            ax (`matplotlib.axes.Axes`, *optional*): Axes to draw into; a new figure otherwise.
            title (`str`, *optional*): Title of the plot.

        Returns:
            The `matplotlib.figure.Figure` drawn into.
        """
        import matplotlib.pyplot as plt

        if ax is not None and not hasattr(ax, "bar"):
            raise TypeError(f"`ax` must be matplotlib Axes (or None for a new figure), got {type(ax).__name__}.")
        values = [v for _, v in (self.normalized if normalize else self)]
        own_figure = ax is None
        if own_figure:
            fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(self) + 1), 3))
        else:
            fig = ax.figure
        alpha = bar_opacity(self.prompt_dependence, self.whole_image)
        if self.encoders is None:  # the views' bar style: red, the largest bar dark red
            top = max(values, default=0.0)
            colours = [BAR_TOP if value == top else BAR for value in values]
            ax.bar(range(len(values)), values, color=colours, alpha=alpha)
        else:  # one colour per text encoder, named in the legend
            palette = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple")
            names = list(dict.fromkeys(self.encoders))
            for k, name in enumerate(names):
                where = [i for i, encoder in enumerate(self.encoders) if encoder == name]
                colour = palette[k % len(palette)]
                ax.bar(where, [values[i] for i in where], color=colour, alpha=alpha, label=name)
            ax.legend(fontsize="small")
        ax.set_xticks(range(len(values)))
        # Labelled by encoder where there are several: a bar of 0 shows no colour to tell it by.
        ax.set_xticklabels([plain_text(label) for label in self.labels], rotation=45, ha="right")
        ax.set_ylabel("share of the scores (%)" if normalize else "score")
        if title:
            ax.set_title(plain_text(title))
        if self.prompt_dependence is not None:
            sentence = describe_dependence(self.prompt_dependence, self.whole_image)
            ax.set_xlabel(plain_text(fill(sentence, 70)), fontsize="small")
        fig.tight_layout()
        if own_figure:
            plt.close(fig)  # returned, not left to pyplot: a notebook displays it once, as the cell's result
        return fig


class PixelAttributions(np.ndarray):
    r"""An (H, W) float array of per-pixel scores; `.normalized` is the same in percent (summing to 100)."""

    def __new__(cls, scores):
        return np.asarray(scores, dtype=np.float32).view(cls)

    @property
    def normalized(self) -> np.ndarray:
        return _percentages(np.asarray(self)).astype(np.float32)


class GeneratedImages(list):
    r"""
    The images of every denoising step, as a list of PIL images.

    `.show()` renders a self-contained slider inline in Jupyter, Colab and VS Code (the same HTML as `_repr_html_`),
    and `.gif()` writes an animated GIF. An explainer's step images are decoded when first looked at (indexed,
    iterated, shown, written): the call keeps only the steps' latents, so a call whose steps nobody looks at does not
    pay for decoding them.

    Args:
        images (`Sequence[PIL.Image.Image]`, *optional*): The images.
        source (`Callable`, *optional*): Instead of `images`: returns them when first needed.
        length (`int`, *optional*): With `source`, how many it will return (`len()` without decoding).
    """

    def __init__(self, images=(), source=None, length: Optional[int] = None):
        super().__init__(images)
        self._source = source
        self._length = length

    def _filled(self) -> "GeneratedImages":
        if self._source is not None:
            source, self._source = self._source, None
            super().extend(source())
        return self

    def __len__(self) -> int:
        if self._source is not None and self._length is not None:
            return self._length
        return super(GeneratedImages, self._filled()).__len__()

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self):
        return super(GeneratedImages, self._filled()).__iter__()

    def __reversed__(self):
        return super(GeneratedImages, self._filled()).__reversed__()

    def __getitem__(self, index):
        return super(GeneratedImages, self._filled()).__getitem__(index)

    def __contains__(self, item) -> bool:
        return super(GeneratedImages, self._filled()).__contains__(item)

    def __eq__(self, other) -> bool:
        if isinstance(other, GeneratedImages):
            other._filled()
        return super(GeneratedImages, self._filled()).__eq__(other)

    __hash__ = None

    def __repr__(self) -> str:
        if self._source is not None:
            return f"GeneratedImages({self._length} step images, decoded when first looked at)"
        return super().__repr__()

    def copy(self) -> "GeneratedImages":
        return GeneratedImages(list(self._filled()))

    def index(self, *args):
        return super(GeneratedImages, self._filled()).index(*args)

    def count(self, item) -> int:
        return super(GeneratedImages, self._filled()).count(item)

    def __reduce__(self):
        return (GeneratedImages, (list(self._filled()),))

    def to_html(self, width: Optional[int] = None) -> str:
        positive_int(width, "width")
        return image_slider_html(self, width=width)

    def _repr_html_(self) -> str:
        return self.to_html()

    def show(self, width: Optional[int] = None) -> None:
        r"""
        Display the slider once: inline in a notebook; elsewhere it is saved to a temporary HTML page whose path is
        printed (or use `.save(path)`).

        Args:
            width (`int`, *optional*): Display width in pixels (the images are scaled, pixelated).
        """
        show_html(self.to_html(width=width), "slider of the denoising steps")

    def save(self, path: Union[str, Path], width: Optional[int] = None) -> Path:
        r"""Write the slider as a standalone HTML page at `path` and return the `Path`."""
        path = Path(path)
        path.write_text(standalone_page(self.to_html(width=width), "Denoising steps"), encoding="utf-8")
        return path

    def gif(self, file_name: Optional[Union[str, Path]] = None, duration: int = 400, loop: int = 0):
        r"""
        The images as an animated GIF: displayed inline in a notebook (embedded in the page, so it survives an HTML
        export), and written to `file_name` where one is given. Outside a notebook without `file_name`, it is written
        to `diffusion_process.gif` in the working directory, or to `diffusion_process-1.gif`, ... where that exists: a
        default name never overwrites a file.

        Args:
            file_name (`str` or `Path`, *optional*): Where to write the GIF.
            duration (`int`, *optional*, defaults to 400): Milliseconds per frame.
            loop (`int`, *optional*, defaults to 0): Number of loops, 0 for forever.

        Returns:
            The `Path` written, or `None` where nothing was written (a notebook, no `file_name`).
        """
        if not self:
            raise ValueError("No images to write: call the explainer with `get_images_for_all_inference_steps=True`.")
        positive_int(duration, "duration", allow_none=False)
        if isinstance(loop, bool) or not isinstance(loop, int) or loop < 0:
            raise ValueError(f"`loop` must be an integer >= 0 (0 loops forever), got {loop!r}.")
        buffer = io.BytesIO()
        # Fast octree quantisation: Pillow's default (median cut, dithered) takes about 0.3 s per 448x448 frame.
        frames = [
            image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
            for image in self
        ]
        frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=duration, loop=loop)
        data = buffer.getvalue()
        notebook = in_notebook()
        path = None
        if file_name is not None:
            path = Path(file_name)
        elif not notebook:
            path = _unused_path(Path("diffusion_process.gif"))
        if path is not None:
            path.write_bytes(data)
        if notebook:
            from IPython.display import HTML, display

            uri = "data:image/gif;base64," + base64.b64encode(data).decode("ascii")
            display(HTML(f'<img src="{uri}" style="image-rendering:pixelated;width:{max(256, frames[0].width)}px"/>'))
        elif file_name is None:
            print(f"Not in a notebook: the GIF is saved to {path}.")
        return path


def _unused_path(path: Path) -> Path:
    # `name.ext`, else `name-1.ext`, `name-2.ext`, ...: the first that does not exist.
    candidate, k = path, 0
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return candidate


@dataclass
class ExplanationStats:
    r"""
    What an explainer call cost.

    Args:
        traced_denoiser_calls (`int`): Denoiser calls traced (for the attention methods: recorded).
        denoiser_calls (`int`): Denoiser calls made.
        backward_seconds (`float`, *optional*): Seconds the attribution took after the generation.
        memory_estimate (`MemoryEstimate`, *optional*): The estimated peak memory of a call that built a graph.
    """

    traced_denoiser_calls: int = 0
    denoiser_calls: int = 0
    backward_seconds: Optional[float] = None
    memory_estimate: Optional[MemoryEstimate] = None


# An output's `extras` names -> how each is read from the output (the named fields, by the names they had in `extras`).
_EXTRAS = {
    "token_positions": lambda o: o.token_positions,
    "method_summary": lambda o: o.method_summary,
    "word_maps": lambda o: o.word_maps,
    "cell_size": lambda o: o.word_map_cell_size,
    "concept_maps": lambda o: o.concept_maps,
    "concept_scores": lambda o: o.concept_scores,
    "signed_scores": lambda o: o.signed_scores,
    "completeness": lambda o: o.completeness,
    "pixel_completeness": lambda o: getattr(o, "pixel_completeness", None),
    "ablated_images": lambda o: o.ablated_images,
    "projections": lambda o: o.probe_projections,
    "backward_seconds": lambda o: o.stats.backward_seconds,
    "traced_denoiser_calls": lambda o: o.stats.traced_denoiser_calls,
    "memory_estimate": lambda o: o.stats.memory_estimate,
}


class _Extras(Mapping):
    # `output.extras`: the named fields under their earlier names (those that are set), then `method_extras`.

    def __init__(self, output: "BaseExplanationOutput"):
        self._values = {name: read(output) for name, read in _EXTRAS.items()}
        self._values = {name: value for name, value in self._values.items() if value is not None}
        self._values.update(output.method_extras)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"extras({', '.join(self._values)})"


@dataclass
class BaseExplanationOutput:
    r"""
    The explanation of one generated image.

    Args:
        image (`PIL.Image.Image` or `np.ndarray`):
            The generated image (for `output_type="pil"`, with the explained box drawn in red on the box's own border
            pixels).
        nsfw_content_detected (`bool`, *optional*):
            The pipeline's safety checker verdict, `None` without a checker.
        all_images_during_generation (`GeneratedImages`, *optional*):
            The image after every denoising step, decoded when first looked at (`None` with
            `get_images_for_all_inference_steps=False`).
        token_attributions (`TokenAttributions`, *optional*):
            `(token, score)` pairs; `None` when no step was traced.
        explanation_2d_bounding_box (`((x0, y0), (x1, y1))`, *optional*):
            The explained region (see `diffusers_interpret.box.BOX_CONVENTION`); `None` for the whole image.
        prompt (`str`): The prompt of this image.
        other_prompts (`Dict[str, str]`): The texts the call gave other text encoders where they differ from `prompt`,
            by call argument (`{"prompt_2": ...}`: Flux's T5, SDXL's and SD3's CLIP-G; SD3's `prompt_3`); empty
            where every encoder read `prompt`.
        attribution_method (`str`): The aggregation used for the scores.
        attribution_level (`str`): Where the tokens were attributed.
        token_ids (`List[int]`): Ids of the attributed tokens, aligned with `token_attributions`.
        token_gradients (`torch.Tensor`, *optional*):
            Raw gradient of the explained region's sum with respect to the attributed embeddings, one row per
            attributed token (float32, CPU).
        token_embeddings (`torch.Tensor`, *optional*): The embeddings the gradient was taken at, same shape. With
            several text encoders (SDXL), every encoder's features side by side (CLIP-L's, then CLIP-G's).
        token_positions (`List[int]`): Each attributed token's row in the layout of every text encoder's tokens (for
            CLIP alone, its position in the padded sequence: 0 is the start token), aligned with `token_attributions`.
        word_tokens (`List[List[int]]`): For each word of `word_attributions`, the indices of its tokens in
            `token_attributions` (and in `word_maps`): every tokenizer's pieces of the word.
        method_summary (`str`): One sentence: what the method's numbers mean.
        attention_maps (`AttentionMaps`, *optional*): Cross-attention maps, when recorded.
        pooled_share (`float`, *optional*): Families with a pooled text embedding (SDXL, SD3, Flux): how much of the
            explanation came through the prompt's summary vector rather than through its words (the pooled vector's
            share of the squared gradient x input norm at the text encoders' outputs; gradient methods).
        prompt_dependence (`float`, *optional*): How much the explained region depends on the prompt at all, in
            [0, 1]: the share of its pixels the model redraws differently without the prompt (see
            [`~dependence`]), comparable across boxes, prompts and images. At or above
            `dependence.DEPENDS_THRESHOLD` (0.22) the region "depends on the prompt"; below it the shares of the
            scores, which add up to 100% in every box, say which words shape the little the prompt does there.
            `None` with `prompt_dependence=False`.
        prompt_dependence_map (`np.ndarray`, *optional*): (H, W): at each pixel the share of the redraws in which it
            changes without the prompt; a box's `prompt_dependence` is its mean over the box.
        attention_sink_share (`float`, *optional*): Transformer families (SD3, Flux), methods that read attention:
            the share of the image's attention to the text that went to positions other than the prompt's tokens
            (padding, end and template tokens: attention sinks), averaged over the image. It is left out of the
            maps and the rankings (`attention_maps.excluded_share` has it per pixel).
        encoder_token_attributions (`Dict[str, TokenAttributions]`, *optional*): Families with several text encoders:
            each encoder's own token scores, by the encoder's pipeline attribute (SDXL: from the gradients over each
            encoder's features of shared tokens; Flux, SD3: each encoder's own tokens).
        word_attributions (`TokenAttributions`, *optional*): The prompt's words (runs of non-space characters), each
            scored with the sum of the scores of every token of every tokenizer that falls in it (T5's pieces of a word
            and the same word under CLIP merge into one); for a method that reads attention maps (`word_merge="max"`:
            `"word_attention"`, `"attention"`), each encoder's most-read piece of the word, summed over the encoders.
            Where the encoders read different texts (`other_prompts`), each text's words, text after text, each
            named with its encoders in `.encoders`.
        word_maps (`np.ndarray`, *optional*): (tokens, H, W) where in the image each attributed token is read,
            aligned with `token_attributions` (`"word_attention"`, `"concept_attention"`).
        word_map_cell_size (`float`, *optional*): Pixels per cell of the attention grid behind `word_maps` (what
            [`edge_aware_maps`] filters over).
        concept_maps (`Dict[str, np.ndarray]`, *optional*): (H, W) map of each concept (`"concept_attention"`): at
            each pixel a softmax across the concepts.
        concept_scores (`Dict[str, float]`, *optional*): Each concept's score for the explained region.
        signed_scores (`np.ndarray`, *optional*): Signed token scores, where the method has them
            (`"integrated_gradients"`).
        completeness (`float`, *optional*): What the signed scores of every position add up to.
        ablated_images (`torch.Tensor`, *optional*): (tokens, 3, H, W) [0, 1] images made again with each token
            removed (`"ablation"`).
        probe_projections (`np.ndarray`, *optional*): (probes, tokens) random projections of the region's change
            behind the scores (`"linearized_ablation"`).
        stats (`ExplanationStats`): What the call cost: denoiser calls traced and made, seconds, memory estimate.
        method_extras (`dict`): Values of an attribution method defined outside the library (`Scores.extras`).
        session (`Session`): What the call kept, behind `explain()`, `region_grid()`, `interactive_view()`.
        image_index (`int`): This image's index in its call.

    `extras` is the same values by their earlier names (`output.extras["word_maps"]`, ...), read-only.
    """

    image: Any
    nsfw_content_detected: Optional[bool] = None
    all_images_during_generation: Optional[GeneratedImages] = None
    token_attributions: Optional[TokenAttributions] = None
    explanation_2d_bounding_box: Optional[Box] = None
    prompt: Optional[str] = None
    other_prompts: Dict[str, str] = field(default_factory=dict, repr=False)
    attribution_method: Optional[str] = None
    attribution_level: Optional[str] = None
    token_ids: List[int] = field(default_factory=list)
    token_gradients: Optional[torch.Tensor] = field(default=None, repr=False)
    token_embeddings: Optional[torch.Tensor] = field(default=None, repr=False)
    token_positions: List[int] = field(default_factory=list, repr=False)
    word_tokens: List[List[int]] = field(default_factory=list, repr=False)
    method_summary: str = field(default="", repr=False)
    attention_maps: Any = field(default=None, repr=False)
    pooled_share: Optional[float] = None
    prompt_dependence: Optional[float] = None
    prompt_dependence_map: Optional[np.ndarray] = field(default=None, repr=False)
    attention_sink_share: Optional[float] = None
    encoder_token_attributions: Optional[Dict[str, TokenAttributions]] = field(default=None, repr=False)
    word_attributions: Optional[TokenAttributions] = None
    word_maps: Optional[np.ndarray] = field(default=None, repr=False)
    word_map_cell_size: Optional[float] = field(default=None, repr=False)
    concept_maps: Optional[Dict[str, np.ndarray]] = field(default=None, repr=False)
    concept_scores: Optional[Dict[str, float]] = field(default=None, repr=False)
    signed_scores: Optional[np.ndarray] = field(default=None, repr=False)
    completeness: Optional[float] = field(default=None, repr=False)
    ablated_images: Optional[torch.Tensor] = field(default=None, repr=False)
    probe_projections: Optional[np.ndarray] = field(default=None, repr=False)
    stats: ExplanationStats = field(default_factory=ExplanationStats, repr=False)
    method_extras: Dict[str, Any] = field(default_factory=dict, repr=False)
    session: Any = field(default=None, repr=False, compare=False)
    image_index: int = field(default=0, repr=False, compare=False)

    @property
    def extras(self) -> Mapping[str, Any]:
        r"""The output's method values and costs by their earlier names (`"word_maps"`, `"cell_size"`,
        `"concept_maps"`, `"signed_scores"`, `"memory_estimate"`, ...), and the values of a method defined outside
        the library; read-only. The named fields (`word_maps`, `stats`, ...) are the same values."""
        return _Extras(self)

    def _repr_html_(self) -> str:
        from .views.summary import explanation_html

        return explanation_html(self)

    def __getitem__(self, key: str):
        # Compatibility with the original's dict-like outputs (`output["image"]`).
        if not isinstance(key, str) or key.startswith("_") or not hasattr(self, key):
            fields = ", ".join(f.name for f in dataclasses.fields(self))
            raise KeyError(f"{key!r}: an explanation output has {fields}.")
        return getattr(self, key)

    def explain(self, explanation_2d_bounding_box=None, attribution_method=None) -> "BaseExplanationOutput":
        r"""
        Explain another region of the same image without generating it again.

        With the `"attention"` method this needs nothing kept: the scores come from the recorded attention maps. The
        gradient methods need the explainer called with `keep_for_reexplanation="graph"` (one backward pass per new
        box) or `"latents"` (lean: the traced steps run again, the untraced ones are replayed from kept outputs). The
        result equals a fresh explainer call with that box (same arguments and seed).

        Args:
            explanation_2d_bounding_box (`((x0, y0), (x1, y1))`, *optional*): The new region; `None` for all of it.
            attribution_method (`str` or `AttributionMethod`, *optional*): Another method; the call's own by default.
        """
        return self._session().explain(self, explanation_2d_bounding_box, attribution_method)

    def region_grid(self, cell_size: Union[int, Tuple[int, int]] = 8) -> np.ndarray:
        r"""
        Gradient x input of every attributed token for each cell of a grid over the image, from batched
        vector-Jacobian products (cached per cell size). Needs `keep_for_reexplanation="graph"`.

        Gradients are additive over pixels, so the gradient of any grid-aligned box is the sum of its cells' gradients
        (and its `grad_x_input` score is the L2 norm over the features of the sum of the cells' values here). Norms
        and max/mean/min of absolute gradients are not additive: only these raw per-cell values are.

        Args:
            cell_size (`int` or `(int, int)`, *optional*, defaults to 8): Cell (height, width) in pixels.

        Returns:
            `np.ndarray` of shape (rows, cols, num_tokens, features).
        """
        return self._session().region_grid(self.image_index, cell_size)

    def interactive_view(
        self, cell_size: Union[int, Tuple[int, int]] = 8, title: Optional[str] = None, edge_aware: bool = False
    ):
        r"""
        A self-contained interactive HTML view: draw a box on the image and the token bars update at once (from
        `region_grid(cell_size)`); click a token to see its attention map (when recorded with `attention_maps=True`);
        a slider over the images during generation. Displays inline in notebooks; `.save(path)` writes a file.

        Args:
            cell_size (`int` or `(int, int)`, *optional*, defaults to 8): Grid cell size in pixels.
            title (`str`, *optional*): A title; the prompt by default.
            edge_aware (`bool`, *optional*, defaults to `False`): Show the attention maps given the image's own edges
                ([`edge_aware_maps`]) instead of as made.
        """
        return self._session().interactive_view(self, cell_size, title, edge_aware)

    def export_maps(
        self, folder: Union[str, Path], cmap: str = "jet", alpha: float = 0.5, pictures: bool = True
    ) -> Dict[str, Path]:
        r"""
        Write this image's maps (word, attention, concept and prompt-dependence maps) to `folder` as `maps.npz`, the
        settings that made them as `maps.json`, and each word's map over the image as a PNG (see
        `diffusers_interpret.views.export.export_maps`). Returns the files written, by name.
        """
        from .views.export import export_maps

        return export_maps(self, folder, cmap=cmap, alpha=alpha, pictures=pictures)

    def release(self) -> None:
        r"""Free what was kept for `explain()` (shared by every output of the same call)."""
        if self.session is not None:
            self.session.release()

    def _session(self):
        if self.session is None:
            raise RuntimeError("This output was not made by an explainer call: nothing to explain again.")
        return self.session


@dataclass
class PipelineExplainerOutput(BaseExplanationOutput):
    r"""The explanation of an image made by a text-to-image pipeline. See [`BaseExplanationOutput`]."""


@dataclass
class PipelineVideoExplainerOutput(BaseExplanationOutput):
    r"""
    The explanation of a clip made by a text-to-video pipeline (Wan). Everything of [`BaseExplanationOutput`], where
    the image is the clip's **picture**: its frames laid out top to bottom (`num_frames` x `frame_size[0]` rows, with
    the explained box drawn on each explained frame), and every map (`word_maps`, `attention_maps`,
    `prompt_dependence_map`) is of that picture; and:

    Args:
        num_frames (`int`): The clip's frames.
        frame_size (`(height, width)`): A frame's size in pixels.
        explanation_frames (`(start, stop)`, *optional*): The explained frames, `start` to `stop - 1`; `None` for
            every frame. `explanation_2d_bounding_box` is the box of each of them, in a frame's pixels.
        explained_region (*optional*): The explained region of the picture: the box moved down to each explained
            frame (one box, or one per frame; `None` for the whole clip).

    `frames` are the clip's frames, `frame_maps(maps)` splits any picture-sized map into the frames', and
    `explain(box, explanation_frames=(start, stop))` explains another box or span of frames without generating again.
    """

    num_frames: int = 0
    frame_size: Tuple[int, int] = (0, 0)
    explanation_frames: Optional[Tuple[int, int]] = None
    explained_region: Any = field(default=None, repr=False)

    @property
    def frames(self) -> list:
        r"""The clip's frames, of the picture's kind (PIL images with the box drawn on the explained ones, or arrays
        or tensors)."""
        height = self.frame_size[0]
        image = self.image
        if hasattr(image, "crop"):
            return [image.crop((0, k * height, image.width, (k + 1) * height)) for k in range(self.num_frames)]
        rows = 1 if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] in (1, 3) else 0
        return [image[k * height : (k + 1) * height] if rows == 0 else image[:, k * height : (k + 1) * height]
                for k in range(self.num_frames)]  # fmt: skip

    def frame_maps(self, maps) -> np.ndarray:
        r"""Picture-sized maps (..., num_frames x height, width) as the frames' (..., num_frames, height, width)."""
        maps = np.asarray(maps)
        return maps.reshape(*maps.shape[:-2], self.num_frames, self.frame_size[0], maps.shape[-1])

    def clip_view(self, fps: float = 8.0, width: Optional[int] = None):
        r"""
        The clip played in the page (no GIF or video file: self-contained HTML), with a button per word of the
        prompt that lays the word's map over the playing frames (`word_maps`, else the recorded attention maps; one
        colour scale for every word). Shown inline in a notebook; `.save(path)` writes a page.

        Args:
            fps (`float`, *optional*, defaults to 8): Frames per second when playing.
            width (`int`, *optional*): Display width in pixels.
        """
        from .views.clip import clip_view

        return clip_view(self, fps=fps, width=width)

    def explain(
        self, explanation_2d_bounding_box=None, attribution_method=None, explanation_frames=None
    ) -> "PipelineVideoExplainerOutput":
        r"""
        Explain another box, or span of frames, of the same clip without generating it again (see
        [`BaseExplanationOutput.explain`] for what must be kept).

        Args:
            explanation_2d_bounding_box (`((x0, y0), (x1, y1))`, *optional*): The box of each explained frame, in a
                frame's pixels; `None` for whole frames.
            attribution_method (`str` or `AttributionMethod`, *optional*): Another method; the call's own by default.
            explanation_frames (`(start, stop)`, *optional*): The frames `start` to `stop - 1`; `None` for all.
        """
        return self._session().explain(self, explanation_2d_bounding_box, attribution_method, explanation_frames)


@dataclass
class PipelineImageToVideoExplainerOutput(PipelineVideoExplainerOutput):
    r"""
    The explanation of a clip made from an input image (Wan image-to-video): everything of
    [`PipelineVideoExplainerOutput`], and the input image's attributions as [`PipelineImg2ImgExplainerOutput`] holds
    them (`pixel_attributions`, `input_saliency_map`, `pixel_gradients`, `input_image`, `pixel_completeness`).
    """

    pixel_attributions: Optional[PixelAttributions] = None
    input_saliency_map: Any = None
    pixel_gradients: Optional[torch.Tensor] = None
    input_image: Any = None
    pixel_completeness: Optional[float] = None
    correspondence: Any = field(default=None, repr=False)


class ExplanationOutputList(list):
    r"""One explanation per generated image, in the pipeline's order (prompt by prompt, then image by image)."""

    @property
    def images(self) -> list:
        return [output.image for output in self]


@dataclass
class PipelineImg2ImgExplainerOutput(BaseExplanationOutput):
    r"""
    The explanation of an image made from an input image. Everything of [`BaseExplanationOutput`], and:

    Args:
        pixel_attributions (`PixelAttributions`, *optional*):
            (H, W) scores of the input image's pixels (at the pipeline's processing size), aggregated over channels
            with the attribution method; `.normalized` in percent. `None` where the traced steps do not reach the
            image (img2img with fewer traced steps than steps).
        input_saliency_map (`SaliencyMap`, *optional*): The pixel attributions as pictures (`.show()`, `.overlay()`).
        pixel_gradients (`torch.Tensor`, *optional*): Raw (3, H, W) gradient w.r.t. the [0, 1] input pixels.
        input_image (`PIL.Image.Image`, *optional*): The input image as the pipeline processed it.
        pixel_completeness (`float`, *optional*): What the pixels' signed contributions add up to
            (`"integrated_gradients"`).
        correspondence (`Correspondence`, *optional*): Flux Kontext with `attention_maps=True`: where every token of
            the result looks among the reference image's tokens; `.for_box(box)` gives a region's map, and the
            interactive view shows it beside the result.
    """

    pixel_attributions: Optional[PixelAttributions] = None
    input_saliency_map: Any = None
    pixel_gradients: Optional[torch.Tensor] = None
    input_image: Any = None
    pixel_completeness: Optional[float] = None
    correspondence: Any = field(default=None, repr=False)


@dataclass
class PipelineInpaintExplainerOutput(PipelineImg2ImgExplainerOutput):
    r"""As [`PipelineImg2ImgExplainerOutput`], plus the inpainting `mask` ((H, W) bool, True where repainted)."""

    mask: Optional[np.ndarray] = None


@dataclass
class PipelineControlNetExplainerOutput(PipelineImg2ImgExplainerOutput):
    r"""
    The explanation of an image made with a ControlNet from a control image (edges, depth, pose). Everything of
    [`PipelineImg2ImgExplainerOutput`], where the input image is the **control image** (`pixel_attributions`,
    `input_saliency_map` and `input_image` are the control image's; `control_pixel_attributions`,
    `control_saliency_map` and `control_image` name them so), and:

    Args:
        control_dependence (`float`, *optional*): How much the region depends on the control image at all, in
            [0, 1]: the share of its pixels the model redraws differently without the control (the ControlNet's
            residuals scaled to zero), as `prompt_dependence` is without the prompt (see [`~dependence`]). `None`
            when `prompt_dependence=False`.
        control_dependence_map (`np.ndarray`, *optional*): (H, W): at each pixel the share of the redraws in which it
            changes without the control image; a box's `control_dependence` is its mean over the box.
    """

    control_dependence: Optional[float] = None
    control_dependence_map: Optional[np.ndarray] = field(default=None, repr=False)

    def describe_control_dependence(self) -> str:
        r"""One sentence for a person: how much the region depends on the control image."""
        return describe_control_dependence(self.control_dependence, self.explanation_2d_bounding_box is None)

    @property
    def control_pixel_attributions(self) -> Optional[PixelAttributions]:
        r"""The control image's pixel attributions (the same object as `pixel_attributions`)."""
        return self.pixel_attributions

    @property
    def control_saliency_map(self):
        r"""The control image's pixel attributions as pictures (the same object as `input_saliency_map`)."""
        return self.input_saliency_map

    @property
    def control_image(self):
        r"""The control image as the pipeline processed it (the same object as `input_image`)."""
        return self.input_image
