r"""
Cost of explaining another region without generating again, vs a fresh explainer call (`grad_x_input`), on the tiny
offline pipeline (64x64, 10 steps, CFG 7.5), measured side by side in one process (medians): with the graph kept, with
the latents kept (lean), region grids; and for the `attention` method, whose new boxes come from the recorded maps.

    python benchmarks/bench_reexplain.py                # N = 2 traced steps
    python benchmarks/bench_reexplain.py --traced 5 --grid 4 8
"""

import argparse
import statistics
import time
import warnings

import torch

from diffusers_interpret import StableDiffusionPipelineExplainer
from diffusers_interpret.testing import make_tiny_pipeline

PROMPT = "a red circle on the left and a blue square on the right"


def median_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--traced", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grid", type=int, nargs="+", default=[4, 8], help="k for k x k grids")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    pipe = make_tiny_pipeline()
    explainer = StableDiffusionPipelineExplainer(pipe, verbose=False)
    kwargs = dict(
        num_inference_steps=args.steps,
        guidance_scale=7.5,
        n_last_diffusion_steps_to_consider_for_attributions=args.traced,
        get_images_for_all_inference_steps=False,
        attribution_method="grad_x_input",
    )
    box = ((8, 8), (40, 40))

    def fresh():
        explainer(PROMPT, generator=torch.Generator().manual_seed(0), explanation_2d_bounding_box=box, **kwargs)

    kept = explainer(PROMPT, generator=torch.Generator().manual_seed(0), keep_for_reexplanation="graph", **kwargs)
    lean = explainer(PROMPT, generator=torch.Generator().manual_seed(0), keep_for_reexplanation="latents", **kwargs)
    t_fresh = median_time(fresh, args.repeats)
    t_again = median_time(lambda: kept.explain(explanation_2d_bounding_box=box), args.repeats)
    t_lean = median_time(lambda: lean.explain(explanation_2d_bounding_box=box), args.repeats)
    print(f"tiny pipeline 64x64, {args.steps} steps, N={args.traced}, CFG 7.5, median of {args.repeats}")
    print(f"fresh call with a box:                  {t_fresh:.3f} s")
    print(f"output.explain(new box), graph kept:    {t_again:.3f} s  ({t_again / t_fresh:.2f}x of a fresh call)")
    print(f"output.explain(new box), latents kept:  {t_lean:.3f} s  ({t_lean / t_fresh:.2f}x of a fresh call)")
    attention = dict(kwargs, attribution_method="attention")
    seen = explainer(PROMPT, generator=torch.Generator().manual_seed(0), **attention)
    t_attention_fresh = median_time(
        lambda: explainer(
            PROMPT, generator=torch.Generator().manual_seed(0), explanation_2d_bounding_box=box, **attention
        ),
        args.repeats,
    )
    t_attention = median_time(lambda: seen.explain(explanation_2d_bounding_box=box), args.repeats)
    print(
        f"attention method: fresh call {t_attention_fresh:.3f} s, output.explain(new box) {t_attention * 1000:.1f} ms "
        f"(from the recorded maps)"
    )
    for k in args.grid:
        cell = 64 // k

        def grid(cell=cell):
            kept.session.clear_grids()
            kept.region_grid(cell)

        def loop(cell=cell):
            # The same cells, one plain backward pass each (what the batched products replace).
            state = kept.session
            for r in range(64 // cell):
                for c in range(64 // cell):
                    box = ((c * cell, r * cell), ((c + 1) * cell, (r + 1) * cell))
                    with torch.enable_grad():
                        state.trace.gradients(state.trace.target(box))

        t_grid = median_time(grid, max(1, args.repeats // 2))
        t_loop = median_time(loop, max(1, args.repeats // 2))
        print(
            f"region grid {k}x{k} ({k * k} vector-Jacobian products, batched): {t_grid:.3f} s  "
            f"({t_grid / t_fresh:.2f}x of a fresh call); one backward pass per cell: {t_loop:.3f} s"
        )


if __name__ == "__main__":
    main()
