r"""
Throughput and memory of `diffusers-interpret batch` on the shipped toy model (32x32, offline): records per minute
with 1 and 2 processes (`accelerate launch --multi_gpu --num_processes 2 ... --cpu`, one torch thread each), and the
resident memory (RSS) of each explaining process sampled over the run: at the first shard, at the end, and its peak.
Each record is one prompt explained for the whole image and for its left half (two rows).

Records per minute are given two ways: over the whole command (interpreter start and model loading included) and
steady (from the first shard written to the last, per process count).

    python benchmarks/bench_batch.py                    # 200 records, 10 steps, 2 traced
    python benchmarks/bench_batch.py --records 40 --processes 1 2
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from diffusers_interpret.toy.scenes import COLORS, SHAPES


def prompts(count: int):
    objects = [f"a {color} {shape}" for color, shape in itertools.product(COLORS, SHAPES)]
    pairs = itertools.cycle(itertools.permutations(objects, 2))
    for index in range(count):
        left, right = next(pairs)
        yield {"id": f"p{index:05d}", "prompt": f"{left} on the left and {right} on the right"}


def command(records: Path, out: Path, processes: int, args) -> list:
    batch = ["batch", str(records), "--out", str(out), "--model", "toy", "--cpu", "--quiet", "--threads", "1"]
    batch += ["--steps", str(args.steps), "--traced", str(args.traced), "--box", "0,0,32,32", "--box", "0,0,16,32"]
    batch += ["--batch-size", str(args.batch_size)]
    if processes == 1:
        return [sys.executable, "-m", "diffusers_interpret", *batch]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, "-m", "diffusers_interpret", *batch]


def workers(root: psutil.Process) -> list:
    # The explaining processes: the command itself (one process) or the launcher's children.
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    found = []
    for process in tree:
        try:
            line = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "diffusers_interpret" in line and "accelerate" not in line and "torch.distributed" not in line:
            found.append(process)
    return found


def run(records: Path, processes: int, args) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"bench_batch_{processes}_"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    child = subprocess.Popen(command(records, out, processes, args), env=env, stdout=subprocess.DEVNULL)
    root = psutil.Process(child.pid)
    samples = {}  # pid -> [(shards written, rss)]
    first_shard = None
    while child.poll() is None:
        shards = len(list((out / "data").glob("part-*.parquet"))) if (out / "data").is_dir() else 0
        if shards and first_shard is None:
            first_shard = time.perf_counter()
        for process in workers(root):
            try:
                samples.setdefault(process.pid, []).append((shards, process.memory_info().rss))
            except psutil.Error:
                pass
        time.sleep(args.sample_every)
    ended = time.perf_counter()
    if child.returncode != 0:
        raise SystemExit(f"the {processes}-process run failed with exit code {child.returncode}")
    manifest = json.loads((out / "manifest.json").read_text())
    rss = []
    for series in samples.values():
        after_first = [value for shards, value in series if shards > 0] or [series[-1][1]]
        rss.append((after_first[0], series[-1][1], max(value for _, value in series)))
    return {
        "processes": processes,
        "wall": ended - started,
        "per_minute": 60 * args.records / (ended - started),
        "steady": steady_rate(out),
        "rss": rss,
        "version": manifest["version"],
    }


def steady_rate(out: Path):
    r"""Records per minute after each process's first shard (model loading done), summed over the processes."""
    import pyarrow.parquet as pq

    shards = {}
    for path in (out / "data").glob("part-*.parquet"):
        rank = path.name.split("-")[1]
        records = len(set(pq.read_table(path, columns=["id"]).column("id").to_pylist()))
        shards.setdefault(rank, []).append((path.stat().st_mtime, records))
    rate = 0.0
    for series in shards.values():
        series.sort()
        if len(series) < 2 or series[-1][0] <= series[0][0]:
            return None
        rate += 60 * sum(records for _, records in series[1:]) / (series[-1][0] - series[0][0])
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200, help="records per run (default: %(default)s)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--traced", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sample-every", type=float, default=0.25, help="seconds between RSS samples")
    args = parser.parse_args()

    records = Path(tempfile.mkdtemp(prefix="bench_batch_")) / "prompts.jsonl"
    records.write_text("".join(json.dumps(record) + "\n" for record in prompts(args.records)))
    print(
        f"{args.records} records (2 boxes each), toy model, {args.steps} steps, {args.traced} traced, "
        f"{psutil.cpu_count()} CPUs, one torch thread per process"
    )
    header = "| processes | wall s | records/min (whole command) | records/min (steady) | RSS per process MB: "
    header += "at first shard -> end (peak) |"
    print(header)
    print("|---|---|---|---|---|")
    for processes in args.processes:
        result = run(records, processes, args)
        rss = "; ".join(
            f"{first / 2**20:.0f} -> {last / 2**20:.0f} ({peak / 2**20:.0f})" for first, last, peak in result["rss"]
        )
        steady = "-" if result["steady"] is None else f"{result['steady']:.0f}"
        print(f"| {processes} | {result['wall']:.1f} | {result['per_minute']:.0f} | {steady} | {rss} |", flush=True)


if __name__ == "__main__":
    main()
