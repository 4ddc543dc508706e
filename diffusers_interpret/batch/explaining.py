"""One record explained: its image generated once, each of its boxes explained, one output row per box."""

import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .maps import compact_maps
from .records import Record
from .writer import save_image

Box = Optional[Tuple[Tuple[int, int], Tuple[int, int]]]


def parse_boxes(boxes: Any) -> List[Box]:
    r"""
    A record's `boxes` (`None`, a list of `[x0, y0, x1, y1]`, or one such box) as the explainer's boxes; `[None]` (the
    whole image) when it gives none.

    Raises:
        `ValueError`: for anything but a list of four-integer lists.
    """
    if boxes is None or (isinstance(boxes, (list, tuple)) and len(boxes) == 0):
        return [None]
    if not isinstance(boxes, (list, tuple)):
        raise ValueError(f"bad boxes {boxes!r}: expected a list of [x0, y0, x1, y1] in pixels")
    if len(boxes) == 4 and all(isinstance(value, (int, np.integer)) for value in boxes):
        boxes = [boxes]  # one box given without the outer list
    parsed: List[Box] = []
    for box in boxes:
        if box is None:
            parsed.append(None)
            continue
        if (
            not isinstance(box, (list, tuple))
            or len(box) != 4
            or not all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in box)
        ):
            raise ValueError(f"bad box {box!r}: expected [x0, y0, x1, y1], four integers in pixels")
        x0, y0, x1, y1 = (int(value) for value in box)
        parsed.append(((x0, y0), (x1, y1)))
    return parsed


class RecordExplainer:
    r"""
    Explains records with one pipeline: text-to-image, or img2img (the same components) for records with an
    `init_image`. Every failure of a record (a bad box, a missing image, an empty prompt) becomes its rows' `error`.

    Args:
        pipe (`DiffusionPipeline`): The loaded pipeline.
        out_dir (`Path`): Where images are written.
        run_seed (`int`): The run's seed, from which records without their own seed get one.
        default_boxes (`list`, *optional*): Boxes for records that give none (`[x0, y0, x1, y1]` each).
        map_size (`int`, *optional*): Store per-token maps averaged down to this size (methods with maps only).
        call_options (`dict`): The explainer call's arguments shared by every record (steps, method, ...).
        explainer_options (`dict`): The explainer's own arguments (`gradient_checkpointing`).
        generated_call_options (`dict`, *optional*): Call arguments for the records generated from noise only, not
            those given an `init_image` (a shipped toy's own size: an image-to-image call takes the image's).
    """

    def __init__(
        self,
        pipe,
        out_dir,
        run_seed: int,
        default_boxes: Optional[List[List[int]]],
        map_size: Optional[int],
        call_options: Dict[str, Any],
        explainer_options: Dict[str, Any],
        generated_call_options: Optional[Dict[str, Any]] = None,
    ):
        from ..explainers import explainer_for

        self.pipe, self.out_dir, self.run_seed, self.default_boxes = pipe, out_dir, run_seed, default_boxes
        self.map_size = map_size
        self.call_options = call_options
        self.generated_call_options = dict(generated_call_options or {})
        self.explainer_options = dict(explainer_options, verbose=False)
        self.text_explainer = explainer_for(pipe, **self.explainer_options)
        self.image_explainer = None

    def _explainer_for(self, record: Record):
        if record.init_image is not None and record.control_image is not None:
            raise ValueError("a record gives an init_image or a control_image, not both")
        if record.init_image is None or self.text_explainer.input_kind is not None:
            return self.text_explainer  # a model that starts from an image itself (an editor) reads it as its own
        if self.image_explainer is None:
            from diffusers import AutoPipelineForImage2Image

            from ..explainers import explainer_for

            try:
                image_pipe = AutoPipelineForImage2Image.from_pipe(self.pipe)
            except ValueError as error:
                raise ValueError(f"this model has no img2img pipeline for init_image records: {error}") from None
            image_pipe.set_progress_bar_config(disable=True)
            self.image_explainer = explainer_for(image_pipe, **self.explainer_options)
        return self.image_explainer

    def _call(self, record: Record, seed: int, box: Box):
        from ..loading import seeded_generator

        explainer = self._explainer_for(record)
        generator = seeded_generator(seed, self.pipe.device)
        kwargs = dict(self.call_options)
        if record.init_image is None:
            kwargs.update(self.generated_call_options)
        else:
            kwargs["init_image"] = record.init_image
        if record.negative_prompt:
            kwargs["negative_prompt"] = record.negative_prompt
        if record.prompt_2:
            kwargs["prompt_2"] = record.prompt_2
        if record.control_image is not None:
            from ..families import InputKind

            if explainer.input_kind is not InputKind.CONTROL:
                raise ValueError(
                    f"control_image is for a ControlNet model; this model's pipeline is a {type(self.pipe).__name__}"
                )
            kwargs[explainer.family.input_image(self.pipe)[0]] = record.control_image
        return explainer(
            record.prompt,
            explanation_2d_bounding_box=box,
            generator=generator,
            output_type="np",
            get_images_for_all_inference_steps=False,
            **kwargs,
        )

    def __call__(self, record: Record) -> List[Dict[str, Any]]:
        r"""The record's rows, one per box (one row with the error when its seed or boxes are unusable)."""
        base = {
            "id": record.id,
            "prompt": record.prompt if isinstance(record.prompt, str) else _text(record.prompt),
            "prompt_2": _text(record.prompt_2),
            "negative_prompt": _text(record.negative_prompt),
            "init_image": record.init_image,
            "control_image": record.control_image,
            "level": self.call_options.get("attribution_level"),
        }
        try:
            base["seed"] = record.seed_for_run(self.run_seed)
            boxes = parse_boxes(record.boxes if record.boxes is not None else self.default_boxes)
        except (TypeError, ValueError) as error:
            return [dict(base, box_index=0, error=_message(error))]
        rows, first, image_path = [], None, None
        for index, box in enumerate(boxes):
            row = dict(base, box_index=index, box=None if box is None else [*box[0], *box[1]])
            started = time.perf_counter()
            output, reused = None, False
            try:
                output, reused = self._explain_box(record, base["seed"], box, first)
                if image_path is None:
                    image_path = save_image(_picture(output.image), self.out_dir, record.id)
                row.update(_scores(output), image_path=image_path)
                if self.map_size and not any(earlier.get("maps") for earlier in rows):  # once per record (one image)
                    row.update(compact_maps(output, self.map_size) or {})
            except Exception as error:  # any failure of this box is its row's error; the run goes on
                row["error"] = _message(error)
            row["seconds"] = time.perf_counter() - started
            rows.append(row)
            if first is None and output is not None:
                first = output
            elif output is not None and not reused:
                output.release()  # a call of its own: nothing kept for later boxes
        if first is not None:
            first.release()
        return rows

    def _explain_box(self, record: Record, seed: int, box: Box, first):
        if first is not None:
            try:  # maps kept by the first call (attention methods) explain another box without generating again
                return first.explain(box), True
            except RuntimeError:
                pass
        return self._call(record, seed, box), False


def _scores(output) -> Dict[str, Any]:
    attributions = output.token_attributions
    words = output.word_attributions
    row = {"method": output.attribution_method, "level": output.attribution_level}
    if attributions is not None:
        row["tokens"] = [str(token) for token, _ in attributions]
        row["scores"] = [float(score) for _, score in attributions]
        row["normalized_scores"] = [float(score) for _, score in attributions.normalized]
    if words is not None:
        row["words"] = [str(word) for word in words.labels]  # with their encoder where the encoders read two texts
        row["word_scores"] = [float(score) for _, score in words]
    if output.prompt_dependence is not None:
        row["prompt_dependence"] = float(output.prompt_dependence)
    if getattr(output, "control_dependence", None) is not None:
        row["control_dependence"] = float(output.control_dependence)
    return row


def _picture(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.ndim == 4:
        array = array[0]
    return Image.fromarray((np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8))


def _text(value) -> Optional[str]:
    return None if value is None else str(value)


def _message(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
