r"""
Maps of images the model never made: the field's segmentation protocols, the box rankings and the agreement with
measured word removal, on toy scenes rendered directly (the toy models' training renderer, exact masks) or on your
own copy of ImageNet-Segmentation or PASCAL VOC 2012. Every number is printed with its protocol card and written as
JSON (`--json`).

    python benchmarks/segmentation.py                                  # the SD toy (32x32): 40 rendered scenes
    python benchmarks/segmentation.py --toy 64 --num-scenes 30         # the 64x64 SD toy
    python benchmarks/segmentation.py --toy flux --num-scenes 20       # the toy Flux (concept attention too)
    python benchmarks/segmentation.py --model ./FLUX.1-schnell --imagenet-seg gtsegs_ijcv.mat \
        --class-names imagenet_names.json --mask-size 224 --limit 500    # your data, your model

Parts (`--parts`):
- `protocols`: binary (mean threshold: pixel accuracy, mIoU foreground/background, mAP; and the figure
  ConceptAttention's scripts publish, `accuracy / (2 - accuracy)`), open-vocabulary multi-class (mIoU) and DAAM's
  per-word threshold (mIoU), for every map method, as made, given the image's edges and given its regions.
- `boxes` (toy scenes): a box around each object of a two-object scene, the default method: how often the object's
  colour word is first among the prompt's words, and its colour and shape words the top two.
- `removal` (toy scenes): gradient and ablation methods on the predicted clean image: Spearman of their word scores
  with the measured effect of removing each word (`faithfulness.word_ablation_effects`), median over boxes.
- `cost`: per image and method: seconds (median of 3), denoiser calls, and peak memory (resident, and CUDA's
  allocation on a GPU) of a fresh process that loads the model and runs it once; beside a plain 20-step generation.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffusers_interpret.box import mask_box  # noqa: E402

REMOVAL_METHODS = ("grad_x_input", "linearized_ablation", "integrated_gradients")


def load(args):
    from diffusers_interpret import explainer_for

    if args.model:
        from diffusers_interpret.loading import load_pipeline

        pipe, name = load_pipeline(args.model, args.device, args.dtype), args.model
    elif args.toy == "flux":
        from diffusers_interpret.toy import load_toy_flux_pipeline

        pipe, name = load_toy_flux_pipeline(), "toy Flux (64x64)"
    else:
        from diffusers_interpret.toy import load_toy_pipeline

        pipe, name = load_toy_pipeline(resolution=int(args.toy)), f"toy SD ({args.toy}x{args.toy})"
    return explainer_for(pipe, verbose=False), name


def samples_of(args):
    from diffusers_interpret.segmentation import imagenet_segmentation, pascal_voc, toy_scenes

    if args.imagenet_seg:
        return list(imagenet_segmentation(args.imagenet_seg, args.class_names, limit=args.limit))
    if args.voc:
        return list(pascal_voc(args.voc, limit=args.limit))
    resolution = 64 if args.toy == "flux" else int(args.toy)
    return toy_scenes(args.num_scenes, seed=args.seed, resolution=resolution)


def boxes_part(explainer, samples, call):
    colour_first = top_two = total = 0
    for sample in samples:
        if len(sample.objects) != 2:
            continue
        for item in sample.objects:
            box = mask_box(item.mask)
            output = explainer.explain_image(sample.image, sample.prompt, explanation_2d_bounding_box=box, **call)
            scores = output.word_attributions.scores
            colour, shape = item.words
            ranked = list(np.argsort(-scores, kind="mergesort"))
            colour_first += ranked[0] == colour
            top_two += set(ranked[:2]) == {colour, shape}
            total += 1
    return {
        "method": output.attribution_method,
        "boxes": total,
        "colour_first": 100 * colour_first / max(total, 1),
        "colour_shape_top_two": 100 * top_two / max(total, 1),
    }


def removal_part(explainer, samples, call, methods):
    from diffusers_interpret.faithfulness import spearman, word_ablation_effects

    found = {method: [] for method in methods}
    for sample in samples:
        for item in sample.objects:
            box = mask_box(item.mask)
            for method in methods:
                output = explainer.explain_image(
                    sample.image, sample.prompt, attribution_method=method, explanation_2d_bounding_box=box, **call
                )
                measured = word_ablation_effects(output, box)
                found[method].append(spearman(output.word_attributions.scores, measured))
    return {method: {"median_spearman": float(np.nanmedian(v)), "boxes": len(v)} for method, v in found.items()}


def one_call(explainer, sample, method, call, generation):
    # One image: a plain 20-step generation of its size (`method` "plain"), or its explanation by `method`.
    if method == "plain":
        plain_call = {k: v for k, v in call.items() if k not in ("noise_levels", "noise_seed")}
        size = {"height": sample.image.height, "width": sample.image.width}
        return explainer.pipe(sample.prompt, num_inference_steps=20, **size, **plain_call, **generation)
    return explainer.explain_image(sample.image, sample.prompt, attribution_method=method, **call)


def peak_resident_mib() -> float:
    # The process's own peak resident memory (Linux's VmHWM; `ru_maxrss` would carry over the parent's peak through
    # fork and exec).
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_of(explainer, sample, method, call, generation):
    # Run in a fresh process (`--peak-of`): the process's peak resident memory after loading and one call, how much of
    # it the call added, and the accelerator's peak allocation during the call.
    cuda = explainer.pipe.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    loaded = peak_resident_mib()
    one_call(explainer, sample, method, call, generation)
    peak = peak_resident_mib()
    print(
        json.dumps(
            {
                "peak RSS MiB": peak,
                "peak rise in the call MiB": peak - loaded,
                "peak CUDA MiB": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            }
        )
    )


def measured_peak(method):
    proc = subprocess.run(
        [sys.executable, __file__, *sys.argv[1:], "--peak-of", method], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cost_part(explainer, samples, call, methods, generation, repeats=3):
    sample = samples[0]
    calls = []  # the denoiser's forward calls, counted as they happen
    hook = explainer.family.denoiser(explainer.pipe).register_forward_hook(lambda *_: calls.append(1))
    rows = {}
    try:
        for method in ["plain", *methods]:
            times = []
            for _ in range(repeats):
                calls.clear()
                started = time.perf_counter()
                one_call(explainer, sample, method, call, generation)
                times.append(time.perf_counter() - started)
            rows[method] = {"seconds": float(np.median(times)), "denoiser calls": len(calls), **measured_peak(method)}
    finally:
        hook.remove()
    plain = rows.pop("plain")
    rows = {"plain 20-step generation": plain, **rows}
    for row in rows.values():
        row["x plain"] = row["seconds"] / plain["seconds"]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", default="32", choices=("32", "64", "flux"), help="which toy model (default: 32)")
    parser.add_argument("--model", default=None, help="a diffusers pipeline folder instead of a toy")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--imagenet-seg", default=None, help="your gtsegs_ijcv.mat")
    parser.add_argument("--class-names", default=None, help="JSON synset -> class name, for --imagenet-seg")
    parser.add_argument("--voc", default=None, help="your VOC2012 folder")
    parser.add_argument("--limit", type=int, default=None, help="first N images of a data set")
    parser.add_argument("--num-scenes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2000, help="first scene seed (the toys trained on other seeds)")
    parser.add_argument("--noise-levels", type=float, nargs="+", default=None)
    parser.add_argument("--mask-size", type=int, default=None, help="score at this square size (224 as published)")
    parser.add_argument("--methods", nargs="+", default=None, help="map methods (default: every one the family has)")
    parser.add_argument("--parts", nargs="+", default=["protocols", "boxes", "removal", "cost"])
    parser.add_argument("--removal-scenes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write every number and card here")
    parser.add_argument("--peak-of", default=None, help=argparse.SUPPRESS)  # the cost part's fresh processes
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers_interpret.segmentation import MAP_METHODS, segmentation_benchmark
    from diffusers_interpret.toy import TOY_FLUX_CALL

    started = time.perf_counter()
    explainer, name = load(args)
    samples = samples_of(args)
    call = {"noise_levels": args.noise_levels} if args.noise_levels else {}
    # The plain generation as the model is meant to run (the toy Flux: true classifier-free guidance).
    generation = {}
    if args.toy == "flux" and not args.model:
        call.update({k: v for k, v in TOY_FLUX_CALL.items() if k in ("max_sequence_length", "guidance_scale")})
        generation = {k: TOY_FLUX_CALL[k] for k in ("negative_prompt", "true_cfg_scale")}
    if args.peak_of:
        return peak_of(explainer, samples[0], args.peak_of, call, generation)
    dit = explainer.family.joint_attention is not None
    methods = args.methods or [m for m in MAP_METHODS if dit or not m.startswith("concept_attention")]
    report = {"model": name, "samples": len(samples), "seed": args.seed}
    print(f"{name}: {len(samples)} images (seeds from {args.seed}); explain_image, noise levels "
          f"{args.noise_levels or 'default'}")  # fmt: skip
    if "protocols" in args.parts:
        mask_size = (args.mask_size, args.mask_size) if args.mask_size else None
        results = segmentation_benchmark(
            explainer, samples, methods=methods, mask_size=mask_size, model=name, verbose=False, **call
        )
        print("\n" + results.table())
        report["protocols"] = results.to_dict()
    toy = not (args.imagenet_seg or args.voc)
    if "boxes" in args.parts and toy:
        report["boxes"] = boxes_part(explainer, samples, call)
        print(f"\nboxes (the default method, {report['boxes']['method']}): {json.dumps(report['boxes'])}")
    if "removal" in args.parts and toy:
        report["removal"] = removal_part(explainer, samples[: args.removal_scenes], call, REMOVAL_METHODS)
        print(f"\nagreement with measured word removal (predicted clean image): {json.dumps(report['removal'])}")
    if "cost" in args.parts:
        cost_methods = ["word_attention", "attention", "grad_x_input"] + (["concept_attention"] if dit else [])
        report["cost"] = cost_part(explainer, samples, call, cost_methods, generation)
        print("\ncost per image: median seconds of 3; peak memory of a fresh process that loads and runs it once:")
        for method, row in report["cost"].items():
            print(f"  {method}: {json.dumps(row)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
