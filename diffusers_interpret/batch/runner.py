"""`explain_dataset`: explain a prompt set on one or many processes, resumable, every record written exactly once."""

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union

from .dependencies import require
from .explaining import RecordExplainer
from .manifest import check_same_options, read_manifest, write_manifest
from .records import read_records
from .reporting import RunProgress
from .sharding import process_group, share
from .writer import IMAGE_DIR, SHARD_DIR, ShardWriter, finished_ids, remove_temp_files, shard_paths


@dataclass
class BatchOutput:
    r"""
    What a run left in its output folder (counted over every process's shards, the resumed ones included).

    Args:
        out_dir (`Path`): The output folder.
        records (`int`): Records in the prompt set.
        done (`int`): Records written with no error.
        failed (`int`): Records written with an error in at least one row.
        resumed (`int`): Records already finished by an earlier run, skipped by this one.
        seconds (`float`): Wall time of this call.
    """

    out_dir: Path
    records: int
    done: int
    failed: int
    resumed: int
    seconds: float

    @property
    def explained(self) -> int:
        r"""Records explained by this call (on every process)."""
        return self.done + self.failed - self.resumed

    @property
    def seconds_per_record(self) -> Optional[float]:
        return self.seconds / self.explained if self.explained else None

    def summary(self) -> str:
        per = "" if self.seconds_per_record is None else f", {self.seconds_per_record:.2f} s/record"
        resumed = f" ({self.resumed} from an earlier run)" if self.resumed else ""
        return (
            f"{self.done + self.failed}/{self.records} records written{resumed}: {self.done} done, "
            f"{self.failed} failed; {self.explained} explained in {self.seconds:.1f} s{per}"
        )


def explain_dataset(
    pipe_or_path: Union[str, Path, Any],
    records: Union[str, Path, Iterable[Dict[str, Any]]],
    out_dir: Union[str, Path],
    method: Optional[str] = None,
    level: str = "token_embeddings",
    steps: int = 15,
    traced: Optional[int] = 5,
    guidance: Optional[float] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    strength: Optional[float] = None,
    boxes: Optional[Iterable[Iterable[int]]] = None,
    map_size: Optional[int] = None,
    seed: int = 0,
    restart: bool = False,
    batch_size: int = 8,
    device: Optional[str] = None,
    dtype: str = "float32",
    gradient_checkpointing: Optional[bool] = None,
    cpu: bool = False,
    progress: bool = True,
    log_every: float = 30.0,
) -> BatchOutput:
    r"""
    Explain every record of a prompt set and write one row per (record, box) to Parquet shards in `out_dir`, images
    as PNG files, and a `manifest.json`. Runs plain, or on `N` processes under `accelerate launch --num_processes N`
    or `torchrun` (one pipeline per process, the records shared out by position). Every record's seed is its own or
    derived from `(seed, id)`, so the rows do not depend on the number of processes.

    Resumable: a run stopped at any moment (even by SIGKILL) and started again with the same arguments explains only
    the records no complete shard holds. A record that fails gets a row with its `error` and the run goes on.

    Args:
        pipe_or_path (`DiffusionPipeline`, `str` or `Path`): A loaded pipeline, a diffusers folder, a model id in the
            local cache, or a shipped toy model (`"toy"`, `"toy-64"`, `"toy-flux"`, `"toy-sd3"`: run with its own
            size, guidance and the rest of its call, e.g. the toy Flux's sequence length and true CFG).
        records (`str`, `Path` or iterable of `dict`): A `.jsonl` or `.csv` file, a folder saved with datasets'
            `save_to_disk`, or dictionaries; see [`~batch.read_records`].
        out_dir (`str` or `Path`): The output folder (created).
        method (`str`, *optional*): Attribution method; the model family's default otherwise.
        level (`str`, *optional*, defaults to `"token_embeddings"`): Attribution level.
        steps (`int`, *optional*, defaults to 15): Denoising steps.
        traced (`int`, *optional*, defaults to 5): Last steps back-propagated through; `None` for all.
        guidance (`float`, *optional*): Guidance scale; a shipped toy's own (4) and the pipeline's default
            otherwise.
        height (`int`, *optional*): Image height; a shipped toy's own, the model's default otherwise.
        width (`int`, *optional*): Image width; a shipped toy's own, the model's default otherwise.
        strength (`float`, *optional*): img2img strength for records with an `init_image`; the pipeline's default
            otherwise.
        boxes (`list` of `[x0, y0, x1, y1]`, *optional*): Boxes for the records that give none; the whole image
            otherwise.
        map_size (`int`, *optional*): Also store each record's per-token maps (methods that make them:
            `word_attention`, concept methods), averaged down to `map_size` x `map_size`, as float16 bytes in the
            `maps` column of its first row (read them with [`~batch.read_maps`]).
        seed (`int`, *optional*, defaults to 0): The run's seed, for records without their own.
        restart (`bool`, *optional*, defaults to `False`): Discard what `out_dir` holds and start again (needed to
            change the options of a run there).
        batch_size (`int`, *optional*, defaults to 8): Records per shard: at most this many are lost to a kill.
        device (`str`, *optional*): Torch device; accelerate's for this process otherwise (its GPU under a launcher).
        dtype (`str`, *optional*, defaults to `"float32"`): Weights dtype when loading from a path.
        gradient_checkpointing (`bool`, *optional*): The explainer's `gradient_checkpointing`.
        cpu (`bool`, *optional*, defaults to `False`): Keep every process on the CPU.
        progress (`bool`, *optional*, defaults to `True`): Progress on the main process (a bar in a terminal, a line
            every `log_every` seconds otherwise) and a summary at the end.
        log_every (`float`, *optional*, defaults to 30): Seconds between progress lines outside a terminal.

    Returns:
        [`BatchOutput`]: The counts of the finished output.

    Raises:
        `ValueError`: when `out_dir` holds a run made with other options and `restart` is not set.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir).expanduser()
    # 1. The processes of the run and the records
    group = process_group(cpu=cpu)
    records = read_records(records)
    options = _options(pipe_or_path, method, level, steps, traced, guidance, height, width, strength, seed, dtype)
    options["boxes"] = None if boxes is None else [[int(value) for value in box] for box in boxes]
    options["map_size"] = map_size
    # 2. The output folder: checked (or emptied on restart) by the main process, then read by all
    refused = None
    if group.is_main:
        try:
            _prepare(out_dir, options, restart)
        except ValueError as error:  # raised after the barrier, so that no process waits for the main one forever
            refused = error
    group.wait()
    if refused is not None:
        raise refused
    previous = read_manifest(out_dir)
    if previous is None:
        raise ValueError(f"{str(out_dir)!r} has no manifest.json: run one batch per output folder at a time")
    check_same_options(previous, options, out_dir)
    finished = finished_ids(out_dir)
    pending = [record for record in records if record.id not in finished]
    mine = share(pending, group.index, group.count)
    group.wait()  # every process has read the same finished ids before any writes new ones
    # 3. This process's pipeline and explainer
    pipe = _pipeline(pipe_or_path, device or group.device, dtype)
    explainer = RecordExplainer(
        pipe,
        out_dir,
        seed,
        options["boxes"],
        map_size,
        _call_options(options),
        {"gradient_checkpointing": gradient_checkpointing},
        generated_call_options=_toy_call(options, size=True),
    )
    # 4. Explain this process's share, a shard every `batch_size` records
    writer = ShardWriter(out_dir, group.index, batch_size)
    bar = RunProgress(len(mine), enabled=progress and group.is_main, every=log_every, processes=group.count)
    try:
        for record in mine:
            rows = explainer(record)
            writer.add(rows)
            bar.update(failed=any(row.get("error") for row in rows))
        writer.flush()
    finally:
        bar.close()
    # 5. The counts of the whole output, once every process has written its last shard
    group.wait()
    ids = {record.id for record in records}
    done, failed = _counts(out_dir, ids)
    output = BatchOutput(out_dir, len(records), done, failed, len(finished & ids), time.perf_counter() - started)
    if progress and group.is_main:
        sys.stderr.write(f"batch: {output.summary()}\n")
    return output


def _options(pipe_or_path, method, level, steps, traced, guidance, height, width, strength, seed, dtype):
    from ..toy import TOY_MODELS

    # A shipped toy's own call (its size, guidance, sequence length, true CFG), under what the run sets: as the CLI's
    # explain and demo run it. The toy Flux at its pipeline's default size would draw 512x512 noise.
    toy = TOY_MODELS.get(str(pipe_or_path)) if isinstance(pipe_or_path, (str, Path)) else None
    own = dict(toy.call) if toy is not None else {}
    guidance = own.get("guidance_scale") if guidance is None else guidance
    given = {"guidance_scale", "num_inference_steps"} | {k for k, v in (("height", height), ("width", width)) if v}
    toy_call = {k: v for k, v in own.items() if k not in given}
    options = {
        "model": _model_name(pipe_or_path),
        "method": method,
        "level": level,
        "steps": steps,
        "traced": traced,
        "guidance": guidance,
        "height": height,
        "width": width,
        "strength": strength,
        "seed": seed,
        "dtype": dtype if isinstance(pipe_or_path, (str, Path)) else str(getattr(pipe_or_path, "dtype", dtype)),
    }
    if toy_call:
        options["toy_call"] = toy_call
    return options


def _model_name(pipe_or_path) -> str:
    if isinstance(pipe_or_path, (str, Path)):
        path = Path(pipe_or_path).expanduser()
        return str(path.resolve()) if path.exists() else str(pipe_or_path)
    name = getattr(getattr(pipe_or_path, "config", None), "_name_or_path", None)
    return str(name) if name else type(pipe_or_path).__name__


def _call_options(options: Dict[str, Any]) -> Dict[str, Any]:
    call = {
        "num_inference_steps": options["steps"],
        "n_last_diffusion_steps_to_consider_for_attributions": options["traced"],
        "attribution_method": options["method"],
        "attribution_level": options["level"],
    }
    for name, key in (("guidance", "guidance_scale"), ("height", "height"), ("width", "width")):
        if options[name] is not None:
            call[key] = options[name]
    if options["strength"] is not None:
        call["strength"] = options["strength"]
    call.update(_toy_call(options, size=False))
    return call


def _toy_call(options: Dict[str, Any], size: bool) -> Dict[str, Any]:
    # A shipped toy's own call arguments: its size (`size=True`: for the records it generates from noise, a record
    # given an image takes the image's), or the others (for every record).
    return {k: v for k, v in (options.get("toy_call") or {}).items() if (k in ("height", "width")) == size}


def _prepare(out_dir: Path, options: Dict[str, Any], restart: bool) -> None:
    from .. import __version__

    previous = read_manifest(out_dir)
    if restart:
        for name in (SHARD_DIR, IMAGE_DIR):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    elif previous is not None:
        check_same_options(previous, options, out_dir)
    elif shard_paths(out_dir):
        raise ValueError(f"{str(out_dir)!r} holds shards but no manifest.json: use another folder, or restart=True")
    remove_temp_files(out_dir)
    write_manifest(
        out_dir,
        {
            "library": "diffusers-interpret",
            "version": __version__,
            "model": options["model"],
            "options": options,
            "shards": f"{SHARD_DIR}/part-r*-*.parquet",
            "images": f"{IMAGE_DIR}/",
        },
    )


def _pipeline(pipe_or_path, device: str, dtype: str):
    if not isinstance(pipe_or_path, (str, Path)):
        return pipe_or_path.to(device)
    from ..loading import load_pipeline

    pipe = load_pipeline(str(pipe_or_path), device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _counts(out_dir: Path, ids) -> tuple:
    pq = require("pyarrow.parquet")
    failed_ids, all_ids = set(), set()
    for path in shard_paths(out_dir):
        table = pq.read_table(path, columns=["id", "error"])
        for record_id, error in zip(table.column("id").to_pylist(), table.column("error").to_pylist()):
            if record_id in ids:
                all_ids.add(record_id)
                if error is not None:
                    failed_ids.add(record_id)
    return len(all_ids - failed_ids), len(failed_ids)
