r"""
Time of `edge_aware_maps` (maps given the image's edges) at real sizes, beside the bilinear upsampling it follows.

Random maps and images (the filter's cost does not depend on their content): `--maps` maps of each size, the cell of
SD's finest cross-attention grid (8 pixels: 64x64 latents at 512x512; SDXL's finest is 16 at 1024x1024), median of
`--repeats` runs.

    python benchmarks/bench_edge_aware.py
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from diffusers_interpret import edge_aware_maps  # noqa: E402


def median_seconds(function, repeats, *args):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def upsample(grid, size):
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", type=int, default=13, help="maps per image (e.g. a prompt's words)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"{args.maps} maps, median of {args.repeats}, {args.threads} threads\n")
    print("| image | cell (px) | bilinear upsampling (s) | edge_aware_maps (s) |")
    print("|---|---|---|---|")
    for size, cell in ((32, 4), (64, 4), (512, 8), (1024, 16)):
        grid = torch.from_numpy(rng.random((1, args.maps, size // cell, size // cell)).astype(np.float32))
        image = rng.random((size, size, 3)).astype(np.float32)
        maps = upsample(grid, size)[0]
        bilinear = median_seconds(upsample, args.repeats, grid, size)
        filtered = median_seconds(edge_aware_maps, args.repeats, maps, image, float(cell))
        print(f"| {size}x{size} | {cell} | {bilinear:.4f} | {filtered:.3f} |")


if __name__ == "__main__":
    main()
