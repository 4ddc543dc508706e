r"""
Cross-attention maps recorded while a pipeline runs (DAAM-style): the public entry points.

```python
from diffusers_interpret.attention import record_cross_attention

with record_cross_attention(pipe) as recorder:
    image = pipe(prompt, height=512, width=768).images[0]
maps = recorder.maps  # an `AttentionMaps`, `maps.maps` of shape (num_images, num_tokens, 512, 768)
maps.overlay(image, position=2)  # the third token of the padded sequence (position 0 is the start token)
```
"""

from typing import Iterable, Optional

from .families import family_for
from .tracing.attention import (
    CrossAttentionRecorder,
    CrossAttentionRecordingProcessor,
    JointAttentionRecorder,
    make_recorder,
)
from .tracing.self_attention import CorrespondenceRecorder, SelfAttentionRecorder, TextRelationRecorder
from .views.attention_maps import AttentionMaps, colorize


def record_cross_attention(
    pipe,
    steps: Optional[Iterable[int]] = None,
    keep_per_step: bool = False,
    layers: Optional[Iterable[str]] = None,
    heads: Optional[Iterable[int]] = None,
    keep_per_layer: bool = False,
    max_record_bytes: int = 2 * 1024**3,
) -> CrossAttentionRecorder:
    r"""
    Record the cross-attention maps of the pipeline calls made inside a `with` block.

    ```python
    with record_cross_attention(pipe) as recorder:
        image = pipe(prompt).images[0]
    recorder.maps.overlay(image, position=1)
    ```

    Args:
        pipe (`DiffusionPipeline`): A pipeline of a supported family. For a transformer family (Flux, SD3) the maps
            are of joint attention: image queries against the text tokens, the softmax taken over all keys, padding
            and end tokens included (the explainer's own maps leave those out: docs/explore.md).
        steps (`Iterable[int]`, *optional*, defaults to `None`):
            Indices of the denoiser calls to record, counted from 0 (negative ones count from the end of the
            pipeline's schedule, `pipe.num_timesteps`). `None` records every call.
        keep_per_step (`bool`, *optional*, defaults to `False`):
            Also keep one map per recorded step (`AttentionMaps.per_step`, of size steps x images x tokens x H x W
            float32 once built).
        layers (`Iterable[str]`, *optional*, defaults to `None`):
            Names of the cross-attention layers to record, as in `pipe.unet.attn_processors` (the `.processor`
            suffix may be left out). `None` records all of them.
        heads (`Iterable[int]`, *optional*, defaults to `None`):
            Indices of the attention heads to average (each recorded layer must have them); `None` averages all of
            a layer's heads. A map of one head: `heads=[3]`.
        keep_per_layer (`bool`, *optional*, defaults to `False`):
            Also keep each layer's own maps at every recorded step (`AttentionMaps.per_layer`: by layer name, steps x
            images x tokens x h x w at the layer's attention grid): raw records of layer x step, over the `heads`
            chosen. What they would hold is checked at the first step against `max_record_bytes`.
        max_record_bytes (`int`, *optional*, defaults to 2 GiB):
            The most memory `keep_per_layer` records may take; more is refused at the first step with what to select.

    Returns:
        A [`CrossAttentionRecorder`] (a [`JointAttentionRecorder`] for Flux) to enter; `.maps` gives the
        [`AttentionMaps`]. Record one pipeline call per block. With classifier-free guidance only the conditional rows
        (or calls) of the denoiser are recorded.
    """
    return make_recorder(
        pipe,
        family_for(pipe),
        steps=steps,
        keep_per_step=keep_per_step,
        layers=layers,
        heads=heads,
        keep_per_layer=keep_per_layer,
        max_record_bytes=max_record_bytes,
        maps_class=AttentionMaps,
    )


def record_self_attention(
    pipe,
    box,
    steps: Optional[Iterable[int]] = None,
    keep_per_step: bool = False,
    layers: Optional[Iterable[str]] = None,
    heads: Optional[Iterable[int]] = None,
) -> SelfAttentionRecorder:
    r"""
    Record where a region of the image looks in the image (its image-to-image, self-attention relation map) during
    the pipeline calls made inside a `with` block.

    ```python
    from diffusers_interpret.attention import record_self_attention

    with record_self_attention(pipe, box=((0, 0), (256, 512))) as recorder:
        image = pipe(prompt).images[0]
    recorder.maps.overlay(image, position=0)  # where the left half's pixels attend
    ```

    Args:
        pipe (`DiffusionPipeline`): A pipeline of a supported family: the self-attention layers of a UNet family
            (`attn1`), the image-to-image block of a transformer family's joint attention (the softmax over all keys,
            text included, of which the image keys are kept: the map sums to the share of attention the image gets).
        box (`((x0, y0), (x1, y1))`): The query region in pixels of the generated image (x the column, the lower
            right corner exclusive); the attention grid's cells whose centres fall in it are its queries.
        steps, keep_per_step, layers, heads: As for [`record_cross_attention`] (layer names: the denoiser's
            self-attention modules, e.g. `"down_blocks.0.attentions.0.transformer_blocks.0.attn1"`).

    Returns:
        A [`SelfAttentionRecorder`] to enter; `.maps` gives [`AttentionMaps`] with one row per image: `maps.maps[i, 0]`
        is image `i`'s map (H, W), the layers upsampled to the image's size and averaged, then the steps.
    """
    return SelfAttentionRecorder(
        pipe,
        box,
        family=family_for(pipe),
        steps=steps,
        keep_per_step=keep_per_step,
        layers=layers,
        heads=heads,
        maps_class=AttentionMaps,
    )


def record_correspondence(
    pipe,
    box,
    steps: Optional[Iterable[int]] = None,
    layers: Optional[Iterable[str]] = None,
    heads: Optional[Iterable[int]] = None,
) -> CorrespondenceRecorder:
    r"""
    Record where a region of the generated image looks in the reference image of an editing call (Flux Kontext, whose
    reference tokens sit in the same joint-attention sequence) during the pipeline calls made inside a `with` block.

    ```python
    from diffusers_interpret.attention import record_correspondence

    with record_correspondence(pipe, box=((0, 0), (256, 512))) as recorder:
        edited = pipe(image=reference, prompt="make the dress red").images[0]
    where = recorder.maps.maps[0, 0]  # (H, W) at the reference's size as the pipeline resized it
    ```

    Args:
        pipe (`FluxKontextPipeline`): A pipeline whose denoiser reads a reference image's tokens beside the generated
            ones.
        box (`((x0, y0), (x1, y1))`): The query region in pixels of the generated image (x the column, the lower
            right corner exclusive).
        steps (`Iterable[int]`, *optional*): The denoiser calls to record (negative indices count from the end);
            all by default.
        layers (`Iterable[str]`, *optional*): The joint-attention layers to record, by module name; all by default.
        heads (`Iterable[int]`, *optional*): The heads to average; all by default.

    Returns:
        A `CorrespondenceRecorder` to enter; `.maps` gives [`AttentionMaps`] at the reference image's size as the
        pipeline processed it, one row per image: `maps.maps[i, 0]` is image `i`'s map, the softmax over every key of
        which the reference's columns are kept (it sums to the share of the region's attention the reference gets,
        per cell of the reference's grid).
    """
    return CorrespondenceRecorder(
        pipe, box, family=family_for(pipe), steps=steps, layers=layers, heads=heads, maps_class=AttentionMaps
    )


def record_text_relations(
    pipe,
    steps: Optional[Iterable[int]] = None,
    layers: Optional[Iterable[str]] = None,
    heads: Optional[Iterable[int]] = None,
) -> TextRelationRecorder:
    r"""
    Record how the prompt's tokens attend to one another inside a transformer's joint attention (SD3, Flux, Chroma,
    Flux 2) during the pipeline calls made inside a `with` block.

    ```python
    with record_text_relations(pipe) as recorder:
        pipe(prompt)
    relations = recorder.relations  # (images, text tokens, text tokens), each row a token's look at the others
    ```

    Args:
        pipe (`DiffusionPipeline`): A pipeline of a transformer family (a UNet family's tokens meet only in the text
            encoder: refused).
        steps, layers, heads: As for [`record_cross_attention`].

    Returns:
        A [`TextRelationRecorder`] to enter; `.relations` gives the (images, text tokens, text tokens) attention, the
        softmax over all keys (text and image) of which the text columns are kept, averaged over the heads, the
        layers and the steps.
    """
    return TextRelationRecorder(pipe, family=family_for(pipe), steps=steps, layers=layers, heads=heads)


__all__ = [
    "AttentionMaps",
    "CrossAttentionRecorder",
    "CrossAttentionRecordingProcessor",
    "JointAttentionRecorder",
    "SelfAttentionRecorder",
    "TextRelationRecorder",
    "colorize",
    "record_cross_attention",
    "record_correspondence",
    "record_self_attention",
    "record_text_relations",
]
