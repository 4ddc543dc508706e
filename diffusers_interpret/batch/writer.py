"""Output rows as Parquet shards written atomically, images as PNG files, and what a previous run finished."""

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Set

from .dependencies import require

SHARD_DIR = "data"
IMAGE_DIR = "images"
_SHARD_NAME = re.compile(r"^part-r(\d+)-(\d+)\.parquet$")
_TEMP_PREFIX = ".tmp-"


def schema():
    r"""The columns of every shard (fixed, so that shards with only failures still load with the others)."""
    pa = require("pyarrow")
    floats, strings = pa.list_(pa.float64()), pa.list_(pa.string())
    return pa.schema(
        [
            ("id", pa.string()),
            ("box_index", pa.int32()),
            ("prompt", pa.string()),
            ("prompt_2", pa.string()),
            ("negative_prompt", pa.string()),
            ("init_image", pa.string()),
            ("control_image", pa.string()),
            ("seed", pa.int64()),
            ("method", pa.string()),
            ("level", pa.string()),
            ("box", pa.list_(pa.int64())),
            ("tokens", strings),
            ("scores", floats),
            ("normalized_scores", floats),
            ("words", strings),
            ("word_scores", floats),
            ("prompt_dependence", pa.float64()),
            ("control_dependence", pa.float64()),
            ("maps", pa.binary()),
            ("map_shape", pa.list_(pa.int32())),
            ("seconds", pa.float64()),
            ("image_path", pa.string()),
            ("error", pa.string()),
        ]
    )


def shard_paths(out_dir: Path) -> List[Path]:
    r"""The complete shards under `out_dir` (temp files of an interrupted write are not among them)."""
    folder = Path(out_dir) / SHARD_DIR
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if _SHARD_NAME.match(path.name))


def finished_ids(out_dir: Path) -> Set[str]:
    r"""The ids of the records whose rows are in a complete shard."""
    pq = require("pyarrow.parquet")
    ids: Set[str] = set()
    for path in shard_paths(out_dir):
        ids.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    return ids


def remove_temp_files(out_dir: Path) -> int:
    r"""Remove the temp files a killed run left behind (a shard or image not yet renamed into place)."""
    removed = 0
    for folder in (Path(out_dir) / SHARD_DIR, Path(out_dir) / IMAGE_DIR):
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name.startswith(_TEMP_PREFIX):
                    path.unlink(missing_ok=True)
                    removed += 1
    return removed


def image_name(record_id: str) -> str:
    r"""The image file of a record, relative to the output folder: readable and unique per id."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", record_id)[:40].strip("._") or "record"
    return f"{IMAGE_DIR}/{slug}-{hashlib.sha1(record_id.encode()).hexdigest()[:8]}.png"


def save_image(image, out_dir: Path, record_id: str) -> str:
    r"""Write a record's image as PNG (temp file, then renamed into place) and return its relative path."""
    name = image_name(record_id)
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{_TEMP_PREFIX}{os.getpid()}-{path.name}")
    image.save(temp, format="PNG")
    os.replace(temp, path)
    return name


class ShardWriter:
    r"""
    Collects the rows of one process and writes them to `data/part-r{process}-{number}.parquet` every `batch_size`
    records: each shard is written to a temp file in the same folder, synced, then renamed into place, so a shard
    is either complete or absent, and the rows of one record are always in the same shard.

    Args:
        out_dir (`Path`): The run's output folder.
        process_index (`int`): This process's rank (part of the shard names, so processes never collide).
        batch_size (`int`, *optional*, defaults to 8): Records per shard.
    """

    def __init__(self, out_dir: Path, process_index: int, batch_size: int = 8):
        self.folder = Path(out_dir) / SHARD_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process_index = process_index
        self.batch_size = max(1, int(batch_size))
        self.rows: List[Dict[str, Any]] = []
        self.records = 0
        self.number = self._next_number()

    def _next_number(self) -> int:
        numbers = [
            int(match[2])
            for match in (_SHARD_NAME.match(path.name) for path in shard_paths(self.folder.parent))
            if int(match[1]) == self.process_index
        ]
        return max(numbers, default=-1) + 1

    def add(self, rows: List[Dict[str, Any]]) -> None:
        r"""Add the rows of one record; writes a shard once `batch_size` records are waiting."""
        self.rows.extend(rows)
        self.records += 1
        if self.records >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        r"""Write the waiting rows as one shard (nothing when none wait)."""
        if not self.rows:
            return
        pa, pq = require("pyarrow"), require("pyarrow.parquet")
        table = pa.Table.from_pylist(self.rows, schema=schema())
        name = f"part-r{self.process_index:05d}-{self.number:06d}.parquet"
        temp = self.folder / f"{_TEMP_PREFIX}{name}"
        pq.write_table(table, temp)
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temp, self.folder / name)
        self.number += 1
        self.rows, self.records = [], 0
