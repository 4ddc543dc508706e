"""Ground truth for runs on the toy model: does each half's box rank its own object's colour word first?"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .dependencies import require


@dataclass
class ToyTruth:
    r"""
    How a run's boxes on toy scenes agree with the truth. A box lying in one half of the image passes when the colour
    word of the object named on that side scores above the other object's colour word; a scene flips when its left
    and right boxes both pass (an explanation that ignores the box cannot flip; random rankings flip 25% of the time).
    Only two-object scene prompts the toy detector finds drawn as named (each colour on its side) are scored.

    Args:
        scenes (`int`): Records with a two-object scene prompt (distinct colours) and at least one half box.
        drawn (`int`): Of those, the scenes drawn as named.
        boxes (`int`): Half boxes scored on drawn scenes.
        passed (`int`): Boxes that rank their own object's colour word first.
        pairs (`int`): Drawn scenes with both a left and a right box.
        flips (`int`): Of those, the scenes where both pass.
    """

    scenes: int = 0
    drawn: int = 0
    boxes: int = 0
    passed: int = 0
    pairs: int = 0
    flips: int = 0

    def summary(self) -> str:
        def rate(part: int, whole: int) -> str:
            return f"{part}/{whole}" + (f" ({100 * part / whole:.0f}%)" if whole else "")

        return (
            f"toy truth: {rate(self.drawn, self.scenes)} scenes drawn as named; boxes ranking their object's colour "
            f"first {rate(self.passed, self.boxes)}; left/right flips {rate(self.flips, self.pairs)}"
        )


def toy_truth(out_dir: Union[str, Path]) -> ToyTruth:
    r"""
    Score the rows of a run in `out_dir` against the truth of the toy scenes (see [`ToyTruth`]). Rows of other
    prompts, failed rows and boxes across the middle of the image are left out.

    Args:
        out_dir (`str` or `Path`): The output folder of `explain_dataset` / `diffusers-interpret batch`.
    """
    from PIL import Image

    from ..toy.detector import check_prompt
    from ..toy.scenes import parse_prompt
    from .writer import shard_paths

    pq = require("pyarrow.parquet")
    out_dir = Path(out_dir)
    columns = ["id", "prompt", "box", "words", "word_scores", "image_path", "error"]
    records = {}
    for path in shard_paths(out_dir):
        for row in pq.read_table(path, columns=columns).to_pylist():
            if row["error"] is None and row["words"] and row["image_path"]:
                records.setdefault(row["id"], []).append(row)
    truth = ToyTruth()
    for rows in records.values():
        named = _scene(rows[0]["prompt"], parse_prompt)
        if named is None:
            continue
        image = Image.open(out_dir / rows[0]["image_path"]).convert("RGB")
        sides = [(_side(row["box"], image.width), row) for row in rows]
        sides = [(side, row) for side, row in sides if side is not None]
        if not sides:
            continue
        truth.scenes += 1
        if not check_prompt(image, rows[0]["prompt"]).correct:
            continue
        truth.drawn += 1
        results = {}
        for side, row in sides:
            passed = _ranks_own_colour(row, named, side)
            truth.boxes += 1
            truth.passed += int(passed)
            results.setdefault(side, []).append(passed)
        if "left" in results and "right" in results:
            truth.pairs += 1
            truth.flips += int(all(results["left"]) and all(results["right"]))
    return truth


def _scene(prompt: Optional[str], parse_prompt) -> Optional[dict]:
    # {side: colour} of a two-object scene prompt with distinct colours, else None.
    try:
        named = parse_prompt(prompt or "")
    except ValueError:
        return None
    colours = {side: colour for colour, _, side in named}
    if len(named) != 2 or len(colours) != 2 or len(set(colours.values())) != 2:
        return None
    return colours


def _side(box, width: int) -> Optional[str]:
    if box is None:
        return None
    x0, _, x1, _ = box
    if x1 <= width // 2:
        return "left"
    if x0 >= width - width // 2:
        return "right"
    return None


def _ranks_own_colour(row: dict, colours: dict, side: str) -> bool:
    scores = dict(zip(row["words"], row["word_scores"]))
    own, other = colours[side], colours["right" if side == "left" else "left"]
    return scores.get(own, float("-inf")) > scores.get(other, float("-inf"))
