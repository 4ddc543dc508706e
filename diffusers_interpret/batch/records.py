"""Reading a prompt set: JSONL, CSV, a `datasets` dataset saved on disk, or dictionaries, as one `Record` each."""

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

from .dependencies import require

FIELDS = ("id", "prompt", "prompt_2", "seed", "negative_prompt", "boxes", "init_image", "control_image")


@dataclass
class Record:
    r"""
    One prompt to explain. Fields are kept as read: what is wrong with them (a bad box, a missing image) is reported in
    the record's output row when it is explained, and the run goes on.

    Args:
        id (`str`): Unique in the set; the line's 0-based index when the file gives none.
        prompt (`Any`): The prompt text.
        prompt_2 (`str`, *optional*): The text the second text encoder reads (SDXL's and SD3's CLIP-G, Flux's T5);
            the prompt where not given.
        seed (`int`, *optional*): The record's own seed; otherwise one derived from the run's seed and `id`.
        negative_prompt (`str`, *optional*): The negative prompt.
        boxes (`Any`, *optional*): Regions `[[x0, y0, x1, y1], ...]` in pixels, each explained on its own; `None`
            for the whole image.
        init_image (`str`, *optional*): Path of an init image (img2img), relative to the records file.
        control_image (`str`, *optional*): Path of a control image (for a ControlNet model), relative to the records
            file.
    """

    id: str
    prompt: Any
    prompt_2: Optional[str] = None
    seed: Optional[int] = None
    negative_prompt: Optional[str] = None
    boxes: Any = None
    init_image: Optional[str] = None
    control_image: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)

    def seed_for_run(self, run_seed: int) -> int:
        r"""The record's seed, else one derived from `(run_seed, id)` alone (the same on any number of processes)."""
        if self.seed is not None:
            return int(self.seed)
        digest = hashlib.sha256(f"{run_seed}:{self.id}".encode()).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def read_records(source: Union[str, Path, Iterable[Dict[str, Any]]]) -> List[Record]:
    r"""
    Read a prompt set: a `.jsonl` file, a `.csv` file, a folder holding a `datasets` dataset (`save_to_disk`), or
    dictionaries. Each record has a `prompt` and optionally `id`, `prompt_2` (the second text encoder's text),
    `seed`, `negative_prompt`, `boxes` (a list of `[x0, y0, x1, y1]`; a JSON string in CSV), `init_image` and
    `control_image` (paths, relative to the file).

    Raises:
        `FileNotFoundError`: for a missing file.
        `ValueError`: for an unknown format, a line that is not JSON, or ids given twice.
    """
    base = None
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"prompt file {str(source)!r} does not exist")
        base = path if path.is_dir() else path.parent
        rows = _read_path(path)
    else:
        rows = list(source)
    records = [_record(index, row, base) for index, row in enumerate(rows)]
    seen = set()
    for record in records:
        if record.id in seen:
            raise ValueError(f"record id {record.id!r} is given twice: ids must be unique (or leave them out)")
        seen.add(record.id)
    return records


def _read_path(path: Path) -> List[Dict[str, Any]]:
    if path.is_dir():
        return _read_dataset(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = []
        with path.open(encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number} is not a JSON object: {error.msg}") from None
        return rows
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as file:
            reader = csv.DictReader(file, delimiter="\t" if suffix == ".tsv" else ",")
            return [{key: (value if value != "" else None) for key, value in row.items()} for row in reader]
    raise ValueError(
        f"cannot read {str(path)!r}: give a .jsonl or .csv file, or a folder saved with datasets' save_to_disk"
    )


def _read_dataset(path: Path) -> List[Dict[str, Any]]:
    datasets = require("datasets")
    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise ValueError(f"{str(path)!r} is not a dataset saved with datasets' save_to_disk") from None
    if isinstance(dataset, datasets.DatasetDict):
        if len(dataset) != 1:
            raise ValueError(
                f"{str(path)!r} holds the splits {sorted(dataset)}: save the one split to explain on its own"
            )
        dataset = next(iter(dataset.values()))
    return [dict(row) for row in dataset]


def _record(index: int, row: Any, base: Optional[Path]) -> Record:
    if isinstance(row, str):
        row = {"prompt": row}
    if not isinstance(row, dict):
        raise ValueError(f"record {index} is a {type(row).__name__}: each record must be an object with a 'prompt'")
    record_id = row.get("id")
    boxes = row.get("boxes")
    if isinstance(boxes, str):
        try:
            boxes = json.loads(boxes)
        except json.JSONDecodeError:
            pass  # reported as a bad box when explained
    seed = row.get("seed")
    if isinstance(seed, str):
        seed = int(seed) if seed.strip().lstrip("-").isdigit() else seed
    init_image, control_image = (_relative(row.get(name), base) for name in ("init_image", "control_image"))
    return Record(
        id=str(index) if record_id is None else str(record_id),
        prompt=row.get("prompt"),
        prompt_2=row.get("prompt_2"),
        seed=seed if isinstance(seed, int) or seed is None else seed,
        negative_prompt=row.get("negative_prompt"),
        boxes=boxes,
        init_image=init_image,
        control_image=control_image,
        extra={key: value for key, value in row.items() if key not in FIELDS},
    )


def _relative(path: Any, base: Optional[Path]) -> Optional[str]:
    # An image path of a record, relative to the records file.
    if path is None:
        return None
    if base is not None and not Path(str(path)).is_absolute():
        return str(base / str(path))
    return str(path)
