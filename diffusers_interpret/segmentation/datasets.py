r"""
Images with true masks, as samples a segmentation benchmark explains: the toy models' scenes rendered directly (exact
masks, images the model never made), and the data sets users keep locally: ImageNet-Segmentation (`gtsegs_ijcv.mat`)
and PASCAL VOC 2012. Nothing is downloaded: a missing file is a clear error.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..text.tokens import prompt_words


@dataclass
class SegmentObject:
    r"""
    One class of a sample: its name, the words of the sample's prompt that name it, and its true mask.

    Args:
        name (`str`): The class name (the concept concept attention is asked for).
        words (`List[int]`): Indices of the prompt's words (runs of non-space characters) that name it.
        mask (`np.ndarray`): (H, W) bool, at the image's size.
    """

    name: str
    words: List[int]
    mask: np.ndarray


@dataclass
class SegmentationSample:
    r"""
    An image, the prompt it is explained with, and its classes' true masks.

    Args:
        image (`PIL.Image.Image`): The RGB image.
        prompt (`str`): The prompt (e.g. `"a dog"`, or a toy scene's own prompt).
        objects (`List[SegmentObject]`): The classes in the image, with their masks.
        ignore (`np.ndarray`, *optional*): (H, W) bool: pixels no protocol scores (VOC's void border).
        key (`str`): Where the sample comes from (file, index), for the results.
    """

    image: Image.Image
    prompt: str
    objects: List[SegmentObject]
    ignore: Optional[np.ndarray] = None
    key: str = ""
    words: List[str] = field(default_factory=list)

    def __post_init__(self):
        self.words = [word for word, _, _ in prompt_words(self.prompt)]
        for item in self.objects:
            if not item.words or any(not 0 <= index < len(self.words) for index in item.words):
                raise ValueError(f"{item.name!r} names words {item.words} of a prompt of {len(self.words)} words.")
            if item.mask.shape != (self.image.height, self.image.width):
                raise ValueError(
                    f"The mask of {item.name!r} is {item.mask.shape[1]}x{item.mask.shape[0]} but the image is "
                    f"{self.image.width}x{self.image.height}: give a mask of the image's size."
                )


def _phrase_sample(image: Image.Image, names: Sequence[str], masks: Sequence[np.ndarray], key: str, ignore=None):
    # "a {first} and a {second}": each class's words located in the prompt.
    words: List[str] = []
    objects = []
    for index, (name, mask) in enumerate(zip(names, masks)):
        if index:
            words.append("and")
        words.append("a")
        start = len(words)
        words.extend(name.split())
        objects.append(SegmentObject(name, list(range(start, len(words))), np.asarray(mask, bool)))
    return SegmentationSample(image, " ".join(words), objects, ignore, key)


def toy_scenes(
    count: int, seed: int = 0, resolution: int = 32, order: Optional[str] = None, num_objects: Optional[int] = 2
) -> List[SegmentationSample]:
    r"""
    Toy scenes rendered directly by the toy models' training renderer (flat shapes, exact masks), each with its own
    prompt (`"a red circle on the left and a blue square on the right"`): images the model never made.

    Args:
        count (`int`): Scenes.
        seed (`int`, *optional*, defaults to 0): Scene `k` is drawn from seed `seed + k`.
        resolution (`int`, *optional*, defaults to 32): 32 or 64 (the toy models' sizes).
        order (`str`, *optional*): The prompts' object order (`"left_first"`, `"random"`); the toy model's own by
            default.
        num_objects (`int`, *optional*, defaults to 2): 1 or 2 objects; `None` for either.
    """
    from ..toy import TOY_PROMPT_ORDERS
    from ..toy.scenes import render_scene, sample_scene_spec

    order = order or TOY_PROMPT_ORDERS.get(resolution, "left_first")
    samples = []
    for k in range(count):
        scene = render_scene(sample_scene_spec(seed + k, num_objects, image_size=resolution, order=order))
        words = [word for word, _, _ in prompt_words(scene.prompt)]
        objects = []
        for index, (item, mask) in enumerate(zip(scene.objects, scene.masks)):
            start = 7 * index + 1  # "a COLOUR SHAPE on the SIDE" [+ " and a COLOUR SHAPE on the SIDE"]
            assert words[start : start + 2] == [item.color, item.shape], (scene.prompt, index)
            objects.append(SegmentObject(f"{item.color} {item.shape}", [start, start + 1], np.asarray(mask, bool)))
        samples.append(SegmentationSample(scene.to_pil(), scene.prompt, objects, key=f"toy-{resolution}-{seed + k}"))
    return samples


def imagenet_segmentation(
    path: Union[str, Path], class_names: Union[str, Path, Dict[str, str]], limit: Optional[int] = None
) -> Iterator[SegmentationSample]:
    r"""
    ImageNet-Segmentation (Guillaumin et al.; the Chefer et al. evaluation set, 4,276 images) from its
    `gtsegs_ijcv.mat` (MATLAB v7.3, read with `h5py`): each image with one class and its foreground mask, explained
    with the prompt `"a {class}"`.

    Args:
        path (`str` or `Path`): The `gtsegs_ijcv.mat` file.
        class_names (`dict`, or the path of a JSON file of one): Each image's synset id (e.g. `"n02085620"`) to the
            class name used in its prompt (e.g. `"dog"`; ConceptAttention's experiments map every synset to a simple
            name). The file stores synset ids only.
        limit (`int`, *optional*): The first `limit` images only.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"`path` {str(path)!r} is not a file: give the ImageNet-Segmentation `gtsegs_ijcv.mat` you keep locally "
            "(nothing is downloaded)."
        )
    names = _class_names(class_names)
    try:
        import h5py
    except ImportError:
        raise ImportError("Reading `gtsegs_ijcv.mat` needs h5py: `pip install h5py`.") from None
    with h5py.File(path, "r") as data:
        count = data["/value/id"].shape[0] if limit is None else min(limit, data["/value/id"].shape[0])
        for index in range(count):
            synset = "".join(chr(c) for c in np.asarray(data[data["/value/id"][index, 0]]).ravel()).strip()
            synset = synset.split("_")[0]
            if synset not in names:
                raise KeyError(f"`class_names` has no name for synset {synset!r} (image {index}): add one.")
            image = np.asarray(data[data["/value/img"][index, 0]]).transpose((2, 1, 0))
            mask = np.asarray(data[data[data["/value/gt"][index, 0]][0, 0]]).transpose((1, 0))
            yield _phrase_sample(
                Image.fromarray(image.astype(np.uint8)), [names[synset]], [mask > 0], f"imagenet-seg-{index}"
            )


def _class_names(class_names) -> Dict[str, str]:
    if isinstance(class_names, dict):
        return {str(k): str(v) for k, v in class_names.items()}
    path = Path(class_names).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"`class_names` {str(path)!r} is not a file: give a JSON object synset -> name.")
    return {str(k): str(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table", "dog",
    "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor",
)  # fmt: skip


def pascal_voc(
    root: Union[str, Path], split: str = "val", limit: Optional[int] = None
) -> Iterator[SegmentationSample]:
    r"""
    PASCAL VOC 2012 segmentation from a local `VOC2012` folder (`JPEGImages/`, `SegmentationClass/` palette PNGs,
    `ImageSets/Segmentation/{split}.txt`): each image with the classes its mask holds (image-level labels, as
    ConceptAttention's VOC split and the open-vocabulary protocol take them), explained with the prompt
    `"a {class} and a {class} ..."`; label 255 (the void border) is scored by no protocol.

    Args:
        root (`str` or `Path`): The `VOC2012` folder.
        split (`str`, *optional*, defaults to `"val"`): The image list in `ImageSets/Segmentation/`.
        limit (`int`, *optional*): The first `limit` images only.
    """
    root = Path(root).expanduser()
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(
            f"{str(listing)!r} is missing: give the `VOC2012` folder you keep locally (with JPEGImages/, "
            "SegmentationClass/ and ImageSets/Segmentation/); nothing is downloaded."
        )
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    for name in names[:limit]:
        image = Image.open(root / "JPEGImages" / f"{name}.jpg").convert("RGB")
        labels = np.asarray(Image.open(root / "SegmentationClass" / f"{name}.png"))
        present = [int(c) for c in np.unique(labels) if 0 < c < 255]
        if not present:
            continue
        yield _phrase_sample(
            image, [VOC_CLASSES[c - 1] for c in present], [labels == c for c in present], f"voc-{name}", labels == 255
        )
