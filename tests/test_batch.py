"""`diffusers-interpret batch` / `explain_dataset`: many processes, kills and resumes, failing records, the output."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")
pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

from diffusers_interpret.batch import explain_dataset, read_maps, read_records  # noqa: E402
from diffusers_interpret.cli import main  # noqa: E402

OPTIONS = ["--model", "toy", "--steps", "3", "--traced", "1", "--seed", "7", "--threads", "1"]
API_OPTIONS = dict(steps=3, traced=1, seed=7)
PROMPTS = [
    "a red circle on the left and a blue square on the right",
    "a yellow triangle on the right",
    "a green square on the left and a yellow circle on the right",
    "a blue circle on the left",
    "a red square on the right",
    "a yellow square on the left and a green triangle on the right",
]
# Records that must fail, each with its own error, without stopping the run.
FAILING = {
    "empty": ({"prompt": ""}, "prompt"),
    "outside": ({"prompt": "a red circle", "boxes": [[0, 0, 40, 40]]}, "reaches outside"),
    "malformed": ({"prompt": "a red circle", "boxes": [[0, 0, 16]]}, "bad box"),
    "no_image": ({"prompt": "a red circle", "init_image": "missing.png"}, "not a file"),
    "control_no_controlnet": ({"prompt": "a red circle", "control_image": "start.png"}, "for a ControlNet model"),
}


def _records(tmp: Path):
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp / "start.png")
    records = [{"id": f"r{index}", "prompt": prompt} for index, prompt in enumerate(PROMPTS)]
    records[0]["boxes"] = [[0, 0, 16, 32], [16, 0, 32, 32]]  # two boxes, one image
    records[1]["seed"] = 123
    records.append({"id": "img2img", "prompt": "a red circle on the left", "init_image": "start.png"})
    records += [dict(record, id=name) for name, (record, _) in FAILING.items()]
    return records


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch")
    path = tmp / "prompts.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in _records(tmp)))
    return tmp


@pytest.fixture(scope="module")
def reference(workdir):
    # One process, in this one, with one thread as the command runs the toy model.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        output = explain_dataset("toy", workdir / "prompts.jsonl", workdir / "single", progress=False, **API_OPTIONS)
    finally:
        torch.set_num_threads(threads)
    return output


def _rows(out_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(Path(out_dir) / "data").sort_values(["id", "box_index"]).reset_index(drop=True)


def _assert_same_rows(out_dir: Path, reference_dir: Path) -> None:
    rows, expected = _rows(out_dir), _rows(reference_dir)
    assert list(zip(rows.id, rows.box_index)) == list(zip(expected.id, expected.box_index))
    assert list(rows.seed) == list(expected.seed)
    assert list(rows.error.fillna("")) == list(expected.error.fillna(""))
    for got, want in zip(rows.scores, expected.scores):
        assert (got is None) == (want is None)
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert list(rows.image_path.isna()) == list(expected.image_path.isna())
    for got, want in zip(rows.image_path, expected.image_path):
        if isinstance(want, str):
            assert np.array_equal(_pixels(out_dir / got), _pixels(reference_dir / want))


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


def _command(*args) -> list:
    return [sys.executable, "-m", "diffusers_interpret", "batch", *map(str, args)]


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def test_single_run_rows_and_failures(workdir, reference):
    rows = _rows(reference.out_dir)
    records = _records(workdir)
    # One row per box (two for r0), every record once, in complete shards only.
    assert len(rows) == len(records) + 1
    assert reference.records == len(records)
    assert (reference.done, reference.failed, reference.resumed) == (len(records) - len(FAILING), len(FAILING), 0)
    by_id = rows.groupby("id")
    for name, (_, message) in FAILING.items():
        (error,) = by_id.get_group(name).error
        assert message in error, (name, error)
    ok = rows[rows.error.isna()]
    assert ok.image_path.notna().all() and ok.method.eq("word_attention").all()
    assert all(
        len(tokens) == len(scores) == len(normalized)
        for tokens, scores, normalized in zip(ok.tokens, ok.scores, ok.normalized_scores)
    )
    np.testing.assert_allclose([sum(values) for values in ok.normalized_scores], 100.0, atol=1e-6)
    # The two boxes of r0 share one image and seed, and read different words.
    first = rows[rows.id == "r0"]
    assert first.image_path.nunique() == 1 and first.seed.nunique() == 1
    assert [list(box) for box in first.box] == [[0, 0, 16, 32], [16, 0, 32, 32]]
    assert not np.allclose(first.scores.iloc[0], first.scores.iloc[1])
    # Own seed kept; the others derived from (run seed, id): not all equal, and not the run seed itself.
    assert rows[rows.id == "r1"].seed.iloc[0] == 123
    assert rows.seed.nunique() > len(PROMPTS) - 1
    manifest = json.loads((reference.out_dir / "manifest.json").read_text())
    assert manifest["options"]["steps"] == 3 and manifest["options"]["seed"] == 7 and manifest["version"]
    assert not list((reference.out_dir / "data").glob(".tmp-*"))


def test_two_processes_write_the_single_process_rows(workdir, reference):
    out = workdir / "two"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffusers_interpret"]
    args = ["batch", workdir / "prompts.jsonl", "--out", out, "--cpu", "--quiet", "--batch-size", "2", *OPTIONS]
    result = subprocess.run(launch + list(map(str, args)), env=_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = sorted(path.name for path in (out / "data").glob("part-*.parquet"))
    assert any(name.startswith("part-r00000-") for name in shards), shards
    assert any(name.startswith("part-r00001-") for name in shards), shards  # both processes wrote rows
    _assert_same_rows(out, reference.out_dir)


def test_killed_run_resumes_every_record_once(workdir, reference):
    out = workdir / "killed"
    command = _command(workdir / "prompts.jsonl", "--out", out, "--quiet", "--batch-size", "1", *OPTIONS)
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if len(list((out / "data").glob("part-*.parquet"))) >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    written = len(list((out / "data").glob("part-*.parquet")))
    assert 2 <= written < len(_records(workdir))
    # A shard being written when the kill came: left as a temp file, never read.
    (out / "data" / ".tmp-part-r00000-999999.parquet").write_bytes(b"PAR1 half a shard")
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list((out / "data").glob(".tmp-*"))
    rows = _rows(out)
    assert not rows.duplicated(["id", "box_index"]).any()
    _assert_same_rows(out, reference.out_dir)


def test_output_loads_with_datasets(reference, tmp_path):
    datasets = pytest.importorskip("datasets")
    dataset = datasets.load_dataset(
        "parquet", data_dir=str(reference.out_dir / "data"), split="train", cache_dir=str(tmp_path)
    )
    rows = _rows(reference.out_dir)
    assert dataset.num_rows == len(rows)
    assert {"id", "prompt", "seed", "method", "box", "tokens", "scores", "error", "image_path"} <= set(
        dataset.column_names
    )
    row = dataset.filter(lambda row: row["id"] == "r2")[0]
    np.testing.assert_allclose(row["scores"], rows[rows.id == "r2"].scores.iloc[0])


def test_changed_options_refused_unless_restart(workdir, reference, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference.out_dir, out)
    records = [{"id": "r0", "prompt": PROMPTS[1]}]
    with pytest.raises(ValueError, match=r"steps=3 before, 4 now.*restart"):
        explain_dataset("toy", records, out, progress=False, **dict(API_OPTIONS, steps=4))
    with pytest.raises(SystemExit) as exit_info:
        main(["batch", str(workdir / "prompts.jsonl"), "--out", str(out), *OPTIONS[:-2], "--seed", "8"])
    assert exit_info.value.code == 2 and "seed=7 before, 8 now" in capsys.readouterr().err
    # The same options resume (nothing left to do); --restart discards the old rows and starts again.
    again = explain_dataset("toy", workdir / "prompts.jsonl", out, progress=False, **API_OPTIONS)
    assert again.explained == 0 and again.resumed == reference.records
    jsonl = tmp_path / "one.jsonl"
    jsonl.write_text(json.dumps(records[0]) + "\n")
    argv = ["batch", str(jsonl), "--out", str(out), "--quiet", "--restart", *OPTIONS[:4], "--steps", "2"]
    argv += ["--maps", "4"]
    assert main(argv) == 0
    rows = _rows(out)
    assert list(rows.id) == ["r0"] and rows.error.isna().all()
    assert json.loads((out / "manifest.json").read_text())["options"]["steps"] == 2
    assert sorted(path.name for path in (out / "images").iterdir()) == [Path(rows.image_path[0]).name]
    # --maps: the record's per-token maps, 32x32 averaged down to 4x4, one per token, float16.
    maps = read_maps(rows.iloc[0])
    assert maps.shape == (len(rows.tokens[0]), 4, 4) and maps.dtype == np.float16 and np.isfinite(maps).all()
    assert read_maps(_rows(reference.out_dir).iloc[0]) is None  # none unless asked for


def test_missing_dependency_says_how_to_install():
    from diffusers_interpret.batch.dependencies import require

    with pytest.raises(ImportError, match=r'pip install "diffusers-interpret\[batch\]"'):
        require("no_such_module_for_batch")


def test_records_from_jsonl_csv_and_saved_dataset_agree(workdir, tmp_path):
    datasets = pytest.importorskip("datasets")
    from_jsonl = read_records(workdir / "prompts.jsonl")
    rows = [
        {
            "id": record.id,
            "prompt": record.prompt,
            "seed": record.seed,
            "boxes": None if record.boxes is None else json.dumps(record.boxes),
        }
        for record in from_jsonl
    ]
    with open(tmp_path / "prompts.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["id", "prompt", "seed", "boxes"])
        writer.writeheader()
        writer.writerows(rows)
    from_csv = read_records(tmp_path / "prompts.csv")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    from_disk = read_records(tmp_path / "saved")
    for records in (from_csv, from_disk):
        assert [(r.id, r.prompt or None, r.seed, r.boxes) for r in records] == [
            (r.id, r.prompt or None, r.seed, r.boxes) for r in from_jsonl
        ]
    assert from_jsonl[0].seed_for_run(7) == from_csv[0].seed_for_run(7) != from_jsonl[0].seed_for_run(8)
    with pytest.raises(ValueError, match="given twice"):
        read_records([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])


def test_toy_truth_scores_half_boxes_against_the_scene(tmp_path):
    from diffusers_interpret.batch import toy_truth
    from diffusers_interpret.batch.writer import ShardWriter, save_image
    from diffusers_interpret.toy.scenes import generate_scenes

    # True renders of two-object scenes (the detector finds them drawn as named) with made-up word scores: each box
    # scores the colour word it favours highest.
    writer = ShardWriter(tmp_path, 0)

    def add(record_id, scene, boxes):
        image_path = save_image(scene.to_pil(), tmp_path, record_id)
        words = scene.prompt.split()
        colours = {obj.side: obj.color for obj in scene.objects}
        rows = []
        for index, (box, favoured_side) in enumerate(boxes):
            favoured = colours[favoured_side]
            scores = [0.9 if word == favoured else 0.2 if word in colours.values() else 0.1 for word in words]
            rows.append(
                dict(
                    id=record_id,
                    box_index=index,
                    prompt=scene.prompt,
                    box=box,
                    words=words,
                    word_scores=scores,
                    image_path=image_path,
                )
            )
        writer.add(rows)

    first, second = generate_scenes(2, seed=5, num_objects=2)
    left, right, middle = [0, 0, 16, 32], [16, 0, 32, 32], [8, 0, 24, 32]
    add("a", first, [(left, "left"), (right, "right"), (middle, "left")])  # flips; the middle box is not scored
    add("b", second, [(left, "left"), (right, "left")])  # the right box reads the left object: no flip
    writer.add([dict(id="c", box_index=0, prompt="a cat", box=left, words=["a", "cat"], word_scores=[1.0, 2.0])])
    writer.flush()
    truth = toy_truth(tmp_path)
    assert (truth.scenes, truth.drawn, truth.boxes, truth.passed, truth.pairs, truth.flips) == (2, 2, 4, 3, 2, 1)
    assert "3/4 (75%)" in truth.summary() and "1/2 (50%)" in truth.summary()


def test_control_image_records_on_a_controlnet_model(tmp_path):
    # A saved ControlNet pipeline: records with a control image get its dependence; a record without one fails alone.
    from PIL import Image

    from diffusers_interpret.testing.controlnet import make_tiny_controlnet_pipeline

    make_tiny_controlnet_pipeline("sd").save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "edges.png")
    records = [
        {"id": "c0", "prompt": "a red circle on the left", "control_image": "edges.png", "boxes": [[0, 0, 16, 32]]},
        {"id": "c1", "prompt": "a red circle on the left"},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    output = explain_dataset(str(tmp_path / "model"), path, tmp_path / "out", progress=False, steps=2, traced=1)
    rows = _rows(output.out_dir)
    done = rows[rows.id == "c0"].iloc[0]
    assert done.control_image.endswith("edges.png") and 0.0 <= done.control_dependence <= 1.0
    assert "control image" in rows[rows.id == "c1"].iloc[0].error


def test_init_image_records_on_an_instruction_editor(tmp_path):
    # A saved InstructPix2Pix pipeline reads a record's init_image as its own input image (no img2img variant made).
    from PIL import Image

    from diffusers_interpret.testing import make_tiny_pipeline

    make_tiny_pipeline("instruct_pix2pix", sample_size=16, layers_per_block=1).save_pretrained(tmp_path / "model")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    records = [{"id": "e0", "prompt": "make it red", "init_image": "in.png", "boxes": [[0, 0, 16, 32]]}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    output = explain_dataset(str(tmp_path / "model"), path, tmp_path / "out", progress=False, steps=2, traced=1)
    row = _rows(output.out_dir).iloc[0]
    assert not isinstance(row.error, str) and row.init_image.endswith("in.png") and len(row.words) == 3


def test_prompt_2_records_on_the_toy_flux(tmp_path):
    # A record's prompt_2 is the text Flux's T5 reads: its row keeps it, and its words are each text's, labelled. The
    # shipped toy runs with its own call (64x64, T5 length 16, true CFG), not at its pipeline's default 512x512.
    from PIL import Image

    prompt_2 = "a red circle on the left and a blue square on the right"
    records = [{"id": "f0", "prompt": "a red circle", "prompt_2": prompt_2, "boxes": [[0, 0, 32, 64]]}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    output = explain_dataset("toy-flux", path, tmp_path / "out", progress=False, steps=2, traced=1)
    row = _rows(output.out_dir).iloc[0]
    assert not isinstance(row.error, str) and row.prompt_2 == prompt_2
    assert list(row.words) == [f"{w} (T5)" for w in prompt_2.split()] + ["a (CLIP)", "red (CLIP)", "circle (CLIP)"]
    assert read_records(path)[0].prompt_2 == prompt_2
    with Image.open(output.out_dir / row.image_path) as image:
        assert image.size == (64, 64)
    from diffusers_interpret.toy import TOY_MODELS

    own = {k: v for k, v in TOY_MODELS["toy-flux"].call.items() if k not in ("num_inference_steps", "guidance_scale")}
    assert json.loads((output.out_dir / "manifest.json").read_text())["options"]["toy_call"] == own
