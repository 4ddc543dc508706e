r"""
One self-contained, interactive HTML view of an explanation: drag a box on the image and the token bars show that
box's attributions at once, computed in the browser from per-cell gradients.

Gradients are additive over pixels, so with `cell_grad_x_input[r, c, t, :]` the gradient of grid cell (r, c)'s sum with
respect to token t's embedding times the embedding, a grid-aligned box's score for token t is
`|| sum over the box's cells of cell_grad_x_input[r, c, t, :] ||_2` and its percentages are
`scores / sum(scores) * 100` ([`box_scores_from_cells`] is the Python reference of what the page computes).

Everything is inline (images as data URIs, the per-cell array as base64 float32, strings as escaped JSON): no server,
no network, no files beside it. Every element id starts with the view's own random id, so several views can live in
one notebook. For tests and scripting, `window.diffusersInterpretViews[viewId]` exposes `scoresForBox(r0, c0, r1, c1)`,
`percentagesForBox(r0, c0, r1, c1)`, `setBox(r0, c0, r1, c1)`, `showToken(i)`, `setStep(i)` and `box()`, and where
the view shows words (`words=`), `wordPercentagesForBox(r0, c0, r1, c1)` (each word's tokens' scores merged as the
method merges them, in percent of all the words'), `showWord(i)` and `words`; each bar's value element
`[data-role="pct"]` (in a `[data-role="token"]` or `[data-role="word"]` row) holds its percentage in `data-value`,
and the root element holds the current box in `data-box` (`"r0,c0,r1,c1"`, cells, half-open).
"""

import base64
import html
import math
import uuid
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..dependence import DEPENDS_THRESHOLD
from .markup import BAR, BAR_TOP, colour_legend, image_to_data_uri, json_for_script, show_html, standalone_page


def box_scores_from_cells(cell_grad_x_input: np.ndarray, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
    r"""
    Token scores of a grid-aligned box: the L2 norm over the hidden dimension of the sum of its cells' gradient x
    input (the reference of the interactive view's JavaScript).

    Args:
        cell_grad_x_input (`np.ndarray`): Array of shape (rows, cols, num_tokens, hidden).
        r0 (`int`): First row of cells (inclusive).
        c0 (`int`): First column of cells (inclusive).
        r1 (`int`): Last row of cells (exclusive).
        c1 (`int`): Last column of cells (exclusive).

    Returns:
        `np.ndarray` of shape (num_tokens,), float64.
    """
    cells = np.asarray(cell_grad_x_input)
    if cells.ndim != 4:
        raise ValueError(f"`cell_grad_x_input` must have shape (rows, cols, num_tokens, hidden), got {cells.shape}.")
    rows, cols = cells.shape[:2]
    if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
        raise ValueError(f"Box rows [{r0}, {r1}) and columns [{c0}, {c1}) must be non-empty within {rows}x{cols}.")
    summed = cells[r0:r1, c0:c1].astype(np.float64).sum(axis=(0, 1))
    return np.sqrt((summed * summed).sum(axis=-1))


def cell_pixels(rows: int, cols: int, cell_size: Tuple[int, int], image_size: Tuple[int, int]) -> np.ndarray:
    r"""(rows, cols) pixel counts of a grid's cells over an image of `image_size` (height, width): the last row and
    column may be cut by the border."""
    (cell_h, cell_w), (height, width) = cell_size, image_size
    heights = np.minimum(height, (np.arange(rows) + 1) * cell_h) - np.arange(rows) * cell_h
    widths = np.minimum(width, (np.arange(cols) + 1) * cell_w) - np.arange(cols) * cell_w
    return np.outer(heights, widths).astype(np.float64)


def word_attention_box_scores(
    cell_sums: np.ndarray, r0: int, c0: int, r1: int, c1: int, cell_size: Tuple[int, int], image_size: Tuple[int, int]
) -> np.ndarray:
    r"""
    `word_attention` scores of a grid-aligned box from each cell's sum of each word map, (rows, cols, tokens, 1):
    `mean_box(m) * sum_box(m) / sum(m) = sum_box(m)^2 / (pixels in the box * sum(m))` (the reference of the
    interactive view's JavaScript in that mode).
    """
    cells = np.asarray(cell_sums, dtype=np.float64)[..., 0]
    inside = cells[r0:r1, c0:c1].sum(axis=(0, 1))
    totals = cells.sum(axis=(0, 1))
    pixels = cell_pixels(*cells.shape[:2], cell_size, image_size)[r0:r1, c0:c1].sum()
    return np.where(totals > 0, inside * inside / (pixels * np.maximum(totals, 1e-300)), 0.0)


def percentages(scores: np.ndarray) -> np.ndarray:
    r"""`scores / sum(scores) * 100` (all zeros when the sum is zero), as the view shows them."""
    scores = np.asarray(scores, dtype=np.float64)
    total = float(scores.sum())
    if total == 0.0 or not math.isfinite(total):
        return np.zeros_like(scores)
    return scores / total * 100.0


def _float32_base64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def _attention_uris(
    attention_maps: Optional[Sequence[Optional[np.ndarray]]], num_tokens: int, size: Tuple[int, int]
) -> Optional[List[Optional[str]]]:
    if attention_maps is None:
        return None
    from .attention_maps import colorize

    maps = list(attention_maps)
    if len(maps) != num_tokens:
        raise ValueError(f"Got {len(maps)} attention maps for {num_tokens} tokens: give one per token (or None).")
    uris = []
    for index, values in enumerate(maps):
        if values is None:
            uris.append(None)
            continue
        values = np.asarray(values, dtype=np.float32)
        if values.shape != size:
            raise ValueError(f"Attention map {index} has shape {values.shape}, expected the image's {size}.")
        uris.append(image_to_data_uri(colorize(values)))
    return uris


_STYLE = """
#{uid} {{font-family:sans-serif;font-size:13px;display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}}
#{uid} .di-stage {{position:relative;cursor:crosshair;user-select:none;-webkit-user-select:none;line-height:0}}
#{uid} .di-stage img {{image-rendering:pixelated;display:block;pointer-events:none}}
#{uid} .di-stage img.di-overlay {{position:absolute;left:0;top:0;opacity:0.5;display:none}}
#{uid} .di-box {{position:absolute;border:2px solid red;box-sizing:border-box;pointer-events:none}}
#{uid} .di-bars {{min-width:280px}}
#{uid} .di-row {{display:flex;align-items:center;gap:6px;margin:2px 0;cursor:pointer}}
#{uid} .di-row.di-active .di-label {{font-weight:bold;text-decoration:underline}}
#{uid} .di-label {{width:110px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;text-align:right}}
#{uid} .di-track {{display:inline-block;width:160px;height:12px;background:#eee}}
#{uid} .di-fill {{height:12px;background:BAR_COLOUR;width:0}}
#{uid} .di-bars .di-fill {{opacity:var(--di-opacity, 1)}}
#{uid} .di-dependence {{font-weight:bold;max-width:360px;margin:4px 0}}
#{uid} .di-pct {{width:64px;font-variant-numeric:tabular-nums}}
#{uid} .di-note {{color:#555;margin:4px 0}}
""".replace("BAR_COLOUR", BAR)

_SCRIPT = r"""
(function() {
  var uid = %(uid)s;
  var cfg = %(config)s;
  var root = document.getElementById(uid);
  var bin = atob(cfg.cells);
  var view = new DataView(new ArrayBuffer(bin.length));
  for (var i = 0; i < bin.length; i++) view.setUint8(i, bin.charCodeAt(i));
  var cells = new Float32Array(bin.length / 4);
  for (var i = 0; i < cells.length; i++) cells[i] = view.getFloat32(4 * i, true);
  var R = cfg.rows, C = cfg.cols, T = cfg.numTokens, D = cfg.hidden;
  var stage = document.getElementById(uid + "-stage");
  var mainImg = document.getElementById(uid + "-image");
  var overlay = document.getElementById(uid + "-overlay");
  var boxEl = document.getElementById(uid + "-box");
  var note = document.getElementById(uid + "-note");
  var rowsEl = document.getElementById(uid + "-bars").querySelectorAll('[data-role="token"]');
  var wordEls = document.getElementById(uid + "-bars").querySelectorAll('[data-role="word"]');
  var words = cfg.words || [];
  var current = [0, 0, R, C], activeToken = -1, activeWord = -1;
  // A clip's picture: the box stays within one frame and stands for that box on each frame of the span.
  var F = cfg.frames, span = F ? [0, F.count] : null;
  if (F) current = [0, 0, F.rows, C];

  function check(r0, c0, r1, c1) {
    if (!(0 <= r0 && r0 < r1 && r1 <= R && 0 <= c0 && c0 < c1 && c1 <= C)) {
      throw new RangeError("box outside the " + R + "x" + C + " grid: " + [r0, c0, r1, c1]);
    }
  }
  var totals = new Float64Array(T * D);
  for (var i = 0; i < cells.length; i++) totals[i %% (T * D)] += cells[i];
  function pixelsOf(r0, c0, r1, c1) {
    var pixels = 0;
    for (var r = r0; r < r1; r++) for (var c = c0; c < c1; c++) {
      pixels += (Math.min(cfg.height, (r + 1) * cfg.cellH) - r * cfg.cellH) *
                (Math.min(cfg.width, (c + 1) * cfg.cellW) - c * cfg.cellW);
    }
    return pixels;
  }
  // The boxes of the grid a drawn box stands for: itself, or on a clip that box on each frame of the span.
  function regionOf(r0, c0, r1, c1) {
    if (!F) return [[r0, c0, r1, c1]];
    var first = Math.floor(r0 / F.rows) * F.rows, boxes = [];
    for (var k = span[0]; k < span[1]; k++) {
      boxes.push([k * F.rows + r0 - first, c0, k * F.rows + r1 - first, c1]);
    }
    return boxes;
  }
  function scoresForBox(r0, c0, r1, c1) {
    return scoresForRegion(regionOf(r0, c0, r1, c1));
  }
  function scoresForRegion(boxes) {
    var sums = new Float64Array(T * D), pixels = 0, whole = true;
    boxes.forEach(function(box) {
      check(box[0], box[1], box[2], box[3]);
      for (var r = box[0]; r < box[2]; r++) for (var c = box[1]; c < box[3]; c++) {
        var base = (r * C + c) * T * D;
        for (var k = 0; k < T * D; k++) sums[k] += cells[base + k];
      }
      pixels += pixelsOf(box[0], box[1], box[2], box[3]);
    });
    var covered = boxes.reduce(function(n, b) { return n + (b[2] - b[0]) * (b[3] - b[1]); }, 0);
    whole = covered === R * C;
    if (cfg.score !== "grad_x_input") {
      if (whole && cfg.whole) return cfg.whole.slice();
      return Array.prototype.map.call(sums, function(v, t) {
        return totals[t] > 0 ? v * v / (pixels * totals[t]) : 0;
      });
    }
    var scores = [];
    for (var t = 0; t < T; t++) {
      var s = 0;
      for (var d = 0; d < D; d++) { var v = sums[t * D + d]; s += v * v; }
      scores.push(Math.sqrt(s));
    }
    return scores;
  }
  function percentagesForBox(r0, c0, r1, c1) {
    var scores = scoresForBox(r0, c0, r1, c1);
    var total = 0;
    for (var t = 0; t < T; t++) total += scores[t];
    return scores.map(function(s) { return (total > 0 && isFinite(total)) ? s / total * 100 : 0; });
  }
  // A word's score is the sum of its tokens' (every encoder's pieces of it), or with "max" (the methods that read
  // maps) each encoder's most-read piece summed over the encoders; in percent of all the words'.
  function wordScore(word, scores) {
    if (cfg.wordMerge !== "max") return word[1].reduce(function(total, t) { return total + scores[t]; }, 0);
    var best = {};
    word[1].forEach(function(t) {
      var encoder = cfg.tokenEncoders ? cfg.tokenEncoders[t] : "";
      if (!(encoder in best) || scores[t] > best[encoder]) best[encoder] = scores[t];
    });
    return Object.keys(best).reduce(function(total, encoder) { return total + best[encoder]; }, 0);
  }
  function wordPercentagesForBox(r0, c0, r1, c1) {
    var scores = scoresForBox(r0, c0, r1, c1);
    var sums = words.map(function(word) { return wordScore(word, scores); });
    var total = sums.reduce(function(a, b) { return a + b; }, 0);
    return sums.map(function(s) { return (total > 0 && isFinite(total)) ? s / total * 100 : 0; });
  }
  function fill(rows, pct) {
    var top = Math.max.apply(null, pct.concat([1e-12]));
    for (var t = 0; t < rows.length; t++) {
      var row = rows[t];
      var bar = row.querySelector('[data-role="fill"]');
      bar.style.width = (100 * pct[t] / top) + "%%";
      bar.style.background = pct[t] === top ? cfg.barTop : cfg.bar;
      var value = row.querySelector('[data-role="pct"]');
      value.textContent = pct[t].toFixed(2) + "%%";
      value.setAttribute("data-value", String(pct[t]));
    }
  }
  // How much the box depends on the prompt: the mean over its pixels of the share of redraws that change them.
  function dependenceForBox(r0, c0, r1, c1) {
    if (!cfg.dependence) return null;
    var changed = 0, pixels = 0;
    regionOf(r0, c0, r1, c1).forEach(function(box) {
      check(box[0], box[1], box[2], box[3]);
      for (var r = box[0]; r < box[2]; r++) for (var c = box[1]; c < box[3]; c++) changed += cfg.dependence[r * C + c];
      pixels += pixelsOf(box[0], box[1], box[2], box[3]);
    });
    return changed / pixels;
  }
  var dependenceEl = document.getElementById(uid + "-dependence");
  var barsEl = document.getElementById(uid + "-bars");
  // The same words and fading as the library's `describe_dependence` and `bar_opacity`.
  function showDependence(share, whole) {
    if (!dependenceEl || share === null) return;
    var percent = Math.round(100 * share) + "%%";
    var low = share < cfg.dependsThreshold;
    dependenceEl.textContent = whole ?
      "The model redraws " + percent + " of the image differently without the prompt." : low ?
      "Depends little on the prompt: the model redraws only " + percent + " of this region differently without " +
      "it (a box drawn tight around one thing reads that thing alone)." :
      "Depends on the prompt: the model redraws " + percent + " of this region differently without it.";
    dependenceEl.setAttribute("data-value", String(share));
    var opacity = whole ? 1 : Math.round(1000 * (0.25 + 0.75 * Math.min(1, share / cfg.dependsThreshold))) / 1000;
    barsEl.style.setProperty("--di-opacity", String(opacity));
    barsEl.setAttribute("data-opacity", String(opacity));
  }
  // Where the box looks in the reference image: its cells' correspondence sums over their token counts, painted in
  // the same colour scale as the maps (jet), scaled to the map's maximum.
  var ref = cfg.reference, refSums = null, refCanvas = document.getElementById(uid + "-reference");
  if (ref) {
    var refBin = atob(ref.sums);
    var refView = new DataView(new ArrayBuffer(refBin.length));
    for (var i = 0; i < refBin.length; i++) refView.setUint8(i, refBin.charCodeAt(i));
    refSums = new Float32Array(refBin.length / 4);
    for (var i = 0; i < refSums.length; i++) refSums[i] = refView.getFloat32(4 * i, true);
  }
  function jet(v) {
    function part(x) { return Math.round(255 * Math.max(0, Math.min(1, 1.5 - Math.abs(4 * v - x)))); }
    return [part(3), part(2), part(1)];
  }
  function correspondenceForBox(r0, c0, r1, c1) {
    if (!ref) return null;
    check(r0, c0, r1, c1);
    var K = ref.rows * ref.cols, map = new Float64Array(K), count = 0;
    for (var r = r0; r < r1; r++) for (var c = c0; c < c1; c++) {
      var base = (r * C + c) * K;
      for (var k = 0; k < K; k++) map[k] += refSums[base + k];
      count += ref.counts[r * C + c];
    }
    return Array.prototype.map.call(map, function(v) { return count > 0 ? v / count : 0; });
  }
  function paintReference(map) {
    if (!map || !refCanvas) return;
    var top = Math.max.apply(null, map.concat([1e-12]));
    var context = refCanvas.getContext("2d"), picture = context.createImageData(ref.cols, ref.rows);
    for (var k = 0; k < map.length; k++) {
      var rgb = jet(map[k] / top);
      picture.data[4 * k] = rgb[0]; picture.data[4 * k + 1] = rgb[1]; picture.data[4 * k + 2] = rgb[2];
      picture.data[4 * k + 3] = 255;
    }
    context.putImageData(picture, 0, 0);
    refCanvas.setAttribute("data-peak", String(map.indexOf(top)));
  }
  var extraBoxes = [];
  function placeBox(element, box) {
    var x0 = box[1] * cfg.cellW, y0 = box[0] * cfg.cellH;
    var x1 = Math.min(cfg.width, box[3] * cfg.cellW), y1 = Math.min(cfg.height, box[2] * cfg.cellH);
    element.style.left = (x0 * cfg.scale) + "px";
    element.style.top = (y0 * cfg.scale) + "px";
    element.style.width = ((x1 - x0) * cfg.scale) + "px";
    element.style.height = ((y1 - y0) * cfg.scale) + "px";
    return [x0, y0, x1, y1];
  }
  function render() {
    var r0 = current[0], c0 = current[1], r1 = current[2], c1 = current[3];
    var region = regionOf(r0, c0, r1, c1);
    paintReference(correspondenceForBox(r0, c0, r1, c1));
    var covered = region.reduce(function(n, b) { return n + (b[2] - b[0]) * (b[3] - b[1]); }, 0);
    var whole = covered === R * C;
    showDependence(dependenceForBox(r0, c0, r1, c1), whole);
    fill(rowsEl, percentagesForBox(r0, c0, r1, c1));
    if (words.length) fill(wordEls, wordPercentagesForBox(r0, c0, r1, c1));
    extraBoxes.forEach(function(element) { element.remove(); });
    extraBoxes = [];
    var pixels = placeBox(boxEl, region.length ? region[0] : current);
    region.slice(1).forEach(function(box) {
      var element = boxEl.cloneNode(false);
      element.removeAttribute("id");
      boxEl.parentNode.appendChild(element);
      placeBox(element, box);
      extraBoxes.push(element);
    });
    var x0 = pixels[0], y0 = pixels[1], x1 = pixels[2], y1 = pixels[3];
    root.setAttribute("data-box", [r0, c0, r1, c1].join(","));
    root.setAttribute("data-box-pixels", [x0, y0, x1, y1].join(","));
    if (F) {
      var top = (r0 %% F.rows) * cfg.cellH, bottom = Math.min(cfg.height, (r1 - r0) * cfg.cellH + top);
      root.setAttribute("data-frames", span.join(","));
      note.textContent = (whole ? "Whole clip. " : "Box: x " + x0 + "-" + x1 + ", y " + top + "-" + bottom +
        " px of frames " + span[0] + " to " + (span[1] - 1) + ". ") +
        "Drag a box on a frame; choose the frames below the clip (double-click: whole frames).";
      return;
    }
    note.textContent = whole ? "Whole image. Drag a box on the image." :
      "Box: x " + x0 + "-" + x1 + ", y " + y0 + "-" + y1 + " px (double-click: whole image).";
  }
  function setFrames(start, stop) {
    if (!F) throw new RangeError("not a clip: it has no frames");
    start = Math.floor(Number(start)); stop = Math.floor(Number(stop));
    if (!(0 <= start && start < stop && stop <= F.count)) {
      throw new RangeError("frames " + start + " to " + stop + " are not a span of the clip's " + F.count);
    }
    span = [start, stop];
    var startEl = document.getElementById(uid + "-frame-start"), stopEl = document.getElementById(uid + "-frame-stop");
    if (startEl) startEl.value = String(start);
    if (stopEl) stopEl.value = String(stop);
    render();
  }
  function setBox(r0, c0, r1, c1) {
    check(r0, c0, r1, c1);
    current = [r0, c0, r1, c1];
    render();
  }
  function cellAt(event) {
    var rect = stage.getBoundingClientRect();
    var x = (event.clientX - rect.left) / rect.width * cfg.width;
    var y = (event.clientY - rect.top) / rect.height * cfg.height;
    var r = Math.min(R - 1, Math.max(0, Math.floor(y / cfg.cellH)));
    var c = Math.min(C - 1, Math.max(0, Math.floor(x / cfg.cellW)));
    return [r, c];
  }
  var anchor = null, pending = null;
  function dragTo(event) {
    var cell = cellAt(event);
    if (F) {  // within the anchor's frame
      var first = Math.floor(anchor[0] / F.rows) * F.rows;
      cell[0] = Math.max(first, Math.min(first + F.rows - 1, cell[0]));
    }
    setBox(Math.min(anchor[0], cell[0]), Math.min(anchor[1], cell[1]),
           Math.max(anchor[0], cell[0]) + 1, Math.max(anchor[1], cell[1]) + 1);
  }
  stage.addEventListener("mousedown", function(event) {
    if (event.button !== 0) return;
    event.preventDefault();
    anchor = cellAt(event);
    dragTo(event);
  });
  window.addEventListener("mousemove", function(event) {
    if (anchor === null) return;
    pending = event;
    window.requestAnimationFrame(function() {
      if (pending !== null && anchor !== null) dragTo(pending);
      pending = null;
    });
  });
  window.addEventListener("mouseup", function(event) {
    if (anchor === null) return;
    dragTo(event);
    anchor = null; pending = null;
  });
  stage.addEventListener("dblclick", function() { setBox(0, 0, F ? F.rows : R, C); });
  if (F) {
    ["start", "stop"].forEach(function(which) {
      var input = document.getElementById(uid + "-frame-" + which);
      input.addEventListener("change", function() {
        var start = Number(document.getElementById(uid + "-frame-start").value);
        var stop = Number(document.getElementById(uid + "-frame-stop").value);
        if (0 <= start && start < stop && stop <= F.count) setFrames(start, stop);
      });
    });
  }

  function showOverlay(uri, index) {
    if (uri) {
      overlay.src = uri;
      overlay.style.display = "block";
      overlay.setAttribute("data-token-index", String(index));
    } else {
      overlay.style.display = "none";
      overlay.removeAttribute("src");
      overlay.setAttribute("data-token-index", "-1");
    }
  }
  function highlight() {
    for (var i = 0; i < T; i++) rowsEl[i].classList.toggle("di-active", i === activeToken);
    for (var i = 0; i < wordEls.length; i++) wordEls[i].classList.toggle("di-active", i === activeWord);
  }
  function showToken(t) {
    activeToken = (t === activeToken) ? -1 : t;
    activeWord = -1;
    overlay.setAttribute("data-word-index", "-1");
    highlight();
    showOverlay((activeToken >= 0 && cfg.attention) ? cfg.attention[activeToken] : null, activeToken);
  }
  function showWord(w) {
    activeWord = (w === activeWord) ? -1 : w;
    activeToken = -1;
    highlight();
    overlay.setAttribute("data-word-index", String(activeWord));
    showOverlay((activeWord >= 0 && cfg.wordAttention) ? cfg.wordAttention[activeWord] : null, -1);
  }
  for (var t = 0; t < T; t++) {
    rowsEl[t].addEventListener("click", (function(index) { return function() { showToken(index); }; })(t));
  }
  for (var w = 0; w < wordEls.length; w++) {
    wordEls[w].addEventListener("click", (function(index) { return function() { showWord(index); }; })(w));
  }

  var slider = document.getElementById(uid + "-step");
  var stepLabel = document.getElementById(uid + "-step-label");
  function setStep(i) {
    var n = cfg.steps.length;
    i = Math.max(0, Math.min(n, Number(i)));
    if (slider) slider.value = String(i);
    mainImg.src = i < n ? cfg.steps[i] : cfg.image;
    if (stepLabel) stepLabel.textContent = i < n ? "step " + (i + 1) + "/" + n : "final image";
  }
  if (slider) slider.addEventListener("input", function() { setStep(this.value); });

  window.diffusersInterpretViews = window.diffusersInterpretViews || {};
  window.diffusersInterpretViews[uid] = {
    scoresForBox: scoresForBox, percentagesForBox: percentagesForBox, setBox: setBox, showToken: showToken,
    setStep: setStep, box: function() { return current.slice(); }, tokens: cfg.tokens,
    wordPercentagesForBox: wordPercentagesForBox, showWord: showWord, dependenceForBox: dependenceForBox,
    correspondenceForBox: correspondenceForBox, setFrames: setFrames,
    frames: function() { return span ? span.slice() : null; },
    regionForBox: regionOf,
    words: words.map(function(word) { return word[0]; })
  };
  render();
})();
"""


def _reference_panel(uid: str, reference, grid: Tuple[int, int], scale: int):
    # The reference image beside the result, with a canvas over it that the script paints with the drawn box's
    # correspondence map.
    if reference is None:
        return "", None
    picture, sums, counts, reference_grid = reference
    sums, counts = np.asarray(sums, dtype=np.float32), np.asarray(counts, dtype=np.float32)
    tokens = int(reference_grid[0]) * int(reference_grid[1])
    if sums.shape != (*grid, tokens) or counts.shape != tuple(grid):
        raise ValueError(
            f"`reference` cell sums must have shape ({grid[0]}, {grid[1]}, {tokens}) and counts ({grid[0]}, "
            f"{grid[1]}); got {sums.shape} and {counts.shape}."
        )
    width, height = picture.size
    shown_w, shown_h = width * scale, height * scale
    config = {
        "sums": _float32_base64(sums),
        "counts": [float(v) for v in counts.ravel()],
        "rows": int(reference_grid[0]),
        "cols": int(reference_grid[1]),
    }
    panel = (
        f'<div data-role="reference"><div class="di-note">the reference image: where the box looks in it</div>'
        f'<div class="di-stage" style="width:{shown_w}px;height:{shown_h}px;cursor:default">'
        f'<img data-role="reference-image" src="{image_to_data_uri(picture.convert("RGB"))}" width="{shown_w}" '
        f'height="{shown_h}" alt="reference image"/>'
        f'<canvas id="{uid}-reference" data-role="reference-map" width="{reference_grid[1]}" '
        f'height="{reference_grid[0]}" style="position:absolute;left:0;top:0;width:{shown_w}px;height:{shown_h}px;'
        'opacity:0.55;image-rendering:pixelated"></canvas></div>'
        '<div class="di-note" style="max-width:320px">The share of the box\'s attention that goes to each of the '
        "reference's tokens (joint attention, averaged over layers, heads and steps), scaled to its maximum.</div>"
        "</div>"
    )
    return panel, config


def interactive_view_html(
    image: Image.Image,
    step_images: Sequence[Image.Image],
    tokens: Sequence[str],
    cell_size: Tuple[int, int],
    cell_grad_x_input: np.ndarray,
    attention_maps: Optional[Sequence[Optional[np.ndarray]]] = None,
    title: Optional[str] = None,
    scale: Optional[int] = None,
    score: str = "grad_x_input",
    whole_image_scores: Optional[Sequence[float]] = None,
    words: Optional[Sequence[Tuple[str, Sequence[int]]]] = None,
    word_attention_maps: Optional[Sequence[Optional[np.ndarray]]] = None,
    dependence_map: Optional[np.ndarray] = None,
    word_merge: str = "sum",
    token_encoders: Optional[Sequence[str]] = None,
    method_description: Optional[str] = None,
    reference: Optional[Tuple[Image.Image, np.ndarray, np.ndarray, Tuple[int, int]]] = None,
    frames: Optional[Tuple[int, int]] = None,
) -> str:
    r"""
    The HTML of one interactive view (a `<div>` with its own `<style>` and `<script>`), self-contained.

    Args:
        image (`PIL.Image.Image`): The generated image (with no box drawn).
        step_images (`Sequence[PIL.Image.Image]`): The images during generation (may be empty: no slider then).
        tokens (`Sequence[str]`): The token strings shown, one per row of bars (any text: everything is escaped).
        cell_size (`(int, int)`): `(cell_h, cell_w)`, the size in pixels of a grid cell; the grid starts at the
            upper-left corner and its last row and column may be cut by the image border.
        cell_grad_x_input (`np.ndarray`):
            Array of shape (rows, cols, num_tokens, hidden) with rows = ceil(H / cell_h), cols = ceil(W / cell_w),
            num_tokens = len(tokens): for each cell, the gradient of the cell's sum with respect to each token
            embedding, times the embedding. Sent as float32.
        attention_maps (`Sequence[np.ndarray]`, *optional*):
            One (H, W) array in [0, 1] per token (or `None` for a token without one), shown over the image when the
            token is clicked.
        title (`str`, *optional*): A heading.
        scale (`int`, *optional*): Display scale of the image (pixelated); by default the largest integer that keeps
            the longer side within 512 pixels (at least 1), or, for a tall or wide picture (a clip's frames), the
            largest that brings its narrow side to at most 96 pixels and keeps its long side within 1024.
        score (`str`, *optional*, defaults to `"grad_x_input"`): How a box's bars come from the cells (the method named
            in the view): `"grad_x_input"`, the L2 norm over the hidden dimension of the sum of the box's cells
            ([`box_scores_from_cells`]); `"word_attention"`, the cells hold each word map's sum over the cell (hidden
            size 1) and a box scores `sum_box(m)^2 / (pixels * sum(m))` ([`word_attention_box_scores`]).
        whole_image_scores (`Sequence[float]`, *optional*): `"word_attention"`: the scores shown for the whole image
            (the method scores the whole image differently from a box).
        words (`Sequence[(str, Sequence[int])]`, *optional*): The prompt's words, each with the indices of its tokens
            (every text encoder's pieces of it): the bars show the words (a word's score its tokens' merged by
            `word_merge`; a clicked word's map their maps summed: where the word is read), and the tokens are one
            click away, under "each text encoder's tokens". For prompts whose tokens are their
            words (one encoder, one token a word) leave it out: the bars are the tokens.
        word_attention_maps (`Sequence[np.ndarray]`, *optional*): One (H, W) array in [0, 1] per word (or `None`),
            shown when the word is clicked.
        word_merge (`str`, *optional*, defaults to `"sum"`): How a word's bar comes from its tokens' scores, as the
            method merges them (`PromptTokens.word_scores`): `"sum"`, or `"max"` (each encoder's most-read piece of
            the word, summed over the encoders: `token_encoders` says which encoder each token is of).
        token_encoders (`Sequence[str]`, *optional*): Each token's encoder label (for `word_merge="max"`; one encoder
            where not given).
        dependence_map (`np.ndarray`, *optional*): (H, W), the output's `prompt_dependence_map`: the view says how
            much the drawn box depends on the prompt, and fades the bars as `dependence.bar_opacity` does.
        method_description (`str`, *optional*): What was explained and how, in words (shown above the bars).
        reference (`(PIL.Image.Image, np.ndarray, np.ndarray, (int, int))`, *optional*): A reference image the model
            read (Flux Kontext's), shown as a second image with where the drawn box looks in it: the picture, each
            view cell's sum of its tokens' correspondence rows (rows, cols, reference tokens), how many tokens each
            cell sums (rows, cols), and the reference's token grid ([`Correspondence.cell_sums`]).
        frames (`(int, int)`, *optional*): A clip's picture (its frames laid out top to bottom): the number of frames
            and a frame's height in pixels (a multiple of the cell height). The drawn box stays within one frame and
            is the box of each frame of a span the view lets one choose ("frames start to stop - 1", every frame by
            default): the bars are that space-time region's.

    Returns:
        `str`: The HTML.
    """
    width, height = image.size
    cell_h, cell_w = (int(v) for v in cell_size)
    if cell_h <= 0 or cell_w <= 0:
        raise ValueError(f"`cell_size` must be positive, got {cell_size}.")
    cells = np.asarray(cell_grad_x_input, dtype=np.float32)
    tokens = [str(token) for token in tokens]
    rows, cols = math.ceil(height / cell_h), math.ceil(width / cell_w)
    if cells.ndim != 4 or cells.shape[:3] != (rows, cols, len(tokens)):
        raise ValueError(
            f"`cell_grad_x_input` must have shape ({rows}, {cols}, {len(tokens)}, hidden) for a {height}x{width} "
            f"image, cells of {cell_h}x{cell_w} and {len(tokens)} tokens; got {cells.shape}."
        )
    if score not in ("grad_x_input", "word_attention", "concept_attention"):
        raise ValueError(f"`score` must be 'grad_x_input', 'word_attention' or 'concept_attention', got {score!r}.")
    if scale is None:
        # A clip's tall picture of small frames is scaled up too, until its narrow side is about 96 pixels.
        scale = max(1, 512 // max(width, height), min(96 // min(width, height), 1024 // max(width, height)))
    scale = int(scale)
    uid = "di-view-" + uuid.uuid4().hex[:12]
    image_uri = image_to_data_uri(image.convert("RGB"))
    step_uris = [image_to_data_uri(step.convert("RGB")) for step in step_images]
    attention = _attention_uris(attention_maps, len(tokens), (height, width))
    words = None if words is None else [(str(label), [int(t) for t in indices]) for label, indices in words]
    if word_merge not in ("sum", "max"):
        raise ValueError(f"`word_merge` must be 'sum' or 'max', got {word_merge!r}.")
    if token_encoders is not None and len(token_encoders) != len(tokens):
        raise ValueError(f"Got {len(token_encoders)} encoder labels for {len(tokens)} tokens: give one per token.")
    for label, indices in words or []:
        if any(not 0 <= t < len(tokens) for t in indices):
            raise ValueError(f"Word {label!r} names tokens {indices} of {len(tokens)}.")
    word_attention = None
    if words is not None and word_attention_maps is not None:
        word_attention = _attention_uris(word_attention_maps, len(words), (height, width))
    dependence = None
    if dependence_map is not None:
        changed = np.asarray(dependence_map, dtype=np.float64)
        if changed.shape != (height, width):
            raise ValueError(f"`dependence_map` must have shape ({height}, {width}), got {changed.shape}.")
        padded = np.zeros((rows * cell_h, cols * cell_w))
        padded[:height, :width] = changed
        dependence = [round(v, 4) for v in padded.reshape(rows, cell_h, cols, cell_w).sum((1, 3)).ravel().tolist()]
    reference_html, reference_config = _reference_panel(uid, reference, (rows, cols), scale)
    span = ""
    if frames is not None:
        count, frame_height = (int(v) for v in frames)
        if count < 1 or frame_height * count != height or frame_height % cell_h:
            raise ValueError(
                f"`frames` {frames} must be a clip's frames and a frame's height, a multiple of the cell height "
                f"{cell_h}, {count} of them making the picture's {height} rows: choose a cell size that divides the "
                "frame height."
            )
        frames = {"count": count, "rows": frame_height // cell_h}
        span = (
            f'<div class="di-note" data-role="frames">frames <input id="{uid}-frame-start" data-role="frame-start" '
            f'type="number" min="0" max="{count - 1}" value="0" style="width:4em"/> to <input id="{uid}-frame-stop" '
            f'data-role="frame-stop" type="number" min="1" max="{count}" value="{count}" style="width:4em"/> (the '
            "last excluded): the box drawn on one frame is that box on each of them</div>"
        )
    config = {
        "frames": frames,
        "reference": reference_config,
        "dependence": dependence,
        "dependsThreshold": DEPENDS_THRESHOLD,
        "bar": BAR,
        "barTop": BAR_TOP,
        "rows": rows,
        "cols": cols,
        "numTokens": len(tokens),
        "hidden": int(cells.shape[3]),
        "cellH": cell_h,
        "cellW": cell_w,
        "width": width,
        "height": height,
        "scale": scale,
        "tokens": tokens,
        "image": image_uri,
        "steps": step_uris,
        "attention": attention,
        "cells": _float32_base64(cells),
        "score": score,
        "whole": None if whole_image_scores is None else [float(v) for v in whole_image_scores],
        "words": words,
        "wordMerge": word_merge,
        "tokenEncoders": None if token_encoders is None else [str(label) for label in token_encoders],
        "wordAttention": word_attention,
    }
    shown_w, shown_h = width * scale, height * scale
    bars = "\n".join(
        f'<div class="di-row" data-role="token" data-token-index="{i}">'
        f'<span class="di-label" data-role="label" title="{html.escape(token)}">{html.escape(token)}</span>'
        f'<span class="di-track"><span class="di-fill" data-role="fill" style="display:block"></span></span>'
        f'<span class="di-pct" data-role="pct" data-value="0"></span></div>'
        for i, token in enumerate(tokens)
    )
    if words is not None:
        word_bars = "\n".join(
            f'<div class="di-row" data-role="word" data-word-index="{i}">'
            f'<span class="di-label" data-role="word-label" title="{html.escape(label)}">{html.escape(label)}</span>'
            f'<span class="di-track"><span class="di-fill" data-role="fill" style="display:block"></span></span>'
            f'<span class="di-pct" data-role="pct" data-value="0"></span></div>'
            for i, (label, _) in enumerate(words)
        )
        bars = (
            f'{word_bars}\n<details data-role="tokens"><summary class="di-note" style="cursor:pointer">'
            f"each text encoder's tokens</summary>\n{bars}\n</details>"
        )
    slider = ""
    if step_uris:
        n = len(step_uris)
        slider = (
            f'<div><input id="{uid}-step" data-role="step" type="range" min="0" max="{n}" value="{n}" step="1" '
            f'style="width:{shown_w}px"/><div id="{uid}-step-label" class="di-note">final image</div>'
            '<div class="di-note">The slider moves the picture only: the bars and maps are the final image\'s.</div>'
            "</div>"
        )
    heading = (
        f'<div class="di-title" style="flex-basis:100%;font-weight:bold">{html.escape(title)}</div>' if title else ""
    )
    has_attention = attention is not None and any(uri is not None for uri in attention)
    has_attention = has_attention or (word_attention is not None and any(uri is not None for uri in word_attention))
    # The maps' colour scale (matplotlib's jet, as the overlays are drawn), under the image (and no narrower than a
    # line of its words).
    legend_width = max(shown_w, 240)
    legend = (
        colour_legend(
            f'<div class="di-note" data-role="legend" style="width:{legend_width}px">attention map: {{scale}} '
            "low to high (each map scaled to its own maximum)</div>"
        )
        if has_attention
        else ""
    )
    thing = "word" if words is not None else "token"
    hint = f"Click a {thing} to show its attention map." if has_attention else ""
    return f"""<div id="{uid}" class="di-view" data-view-id="{uid}">
<style>{_STYLE.format(uid=uid)}</style>
{heading}
<div>
<div id="{uid}-stage" class="di-stage" style="width:{shown_w}px;height:{shown_h}px">
<img id="{uid}-image" data-role="image" src="{image_uri}" width="{shown_w}" height="{shown_h}" alt="generated image"/>
<img id="{uid}-overlay" class="di-overlay" data-role="overlay" data-token-index="-1" width="{shown_w}" \
height="{shown_h}" alt=""/>
<div id="{uid}-box" class="di-box" data-role="box"></div>
</div>
{legend}
{span}
{slider}
</div>
{reference_html}
<div class="di-bars" id="{uid}-bars">
<div class="di-note" data-role="method">{html.escape(method_description or "Method: " + score)}</div>
<div id="{uid}-note" class="di-note" data-role="note"></div>
<div id="{uid}-dependence" class="di-dependence" data-role="dependence"></div>
{bars}
<div class="di-note">Bars: each {thing}'s share of the scores in the box (they add up to 100% in every box). {hint}\
</div>
</div>
<script>{_SCRIPT % {"uid": json_for_script(uid), "config": json_for_script(config)}}</script>
</div>"""


class InteractiveView:
    r"""
    An interactive view (see [`interactive_view_html`]): rendered inline by notebooks through `_repr_html_`, shown
    with `show()`, written as a standalone page with `save(path)`. Takes the arguments of [`interactive_view_html`].
    """

    def __init__(
        self,
        image: Image.Image,
        step_images: Sequence[Image.Image],
        tokens: Sequence[str],
        cell_size: Tuple[int, int],
        cell_grad_x_input: np.ndarray,
        attention_maps: Optional[Sequence[Optional[np.ndarray]]] = None,
        title: Optional[str] = None,
        scale: Optional[int] = None,
        score: str = "grad_x_input",
        whole_image_scores: Optional[Sequence[float]] = None,
        words: Optional[Sequence[Tuple[str, Sequence[int]]]] = None,
        word_attention_maps: Optional[Sequence[Optional[np.ndarray]]] = None,
        dependence_map: Optional[np.ndarray] = None,
        word_merge: str = "sum",
        token_encoders: Optional[Sequence[str]] = None,
        method_description: Optional[str] = None,
        reference=None,
        frames: Optional[Tuple[int, int]] = None,
    ):
        self.reference = reference
        self.frames = frames
        self.score = score
        self.dependence_map = dependence_map
        self.method_description = method_description
        self.words = None if words is None else [(str(label), list(indices)) for label, indices in words]
        self.word_merge = word_merge
        self.token_encoders = None if token_encoders is None else [str(label) for label in token_encoders]
        self.word_attention_maps = None if word_attention_maps is None else list(word_attention_maps)
        self.whole_image_scores = None if whole_image_scores is None else list(whole_image_scores)
        self.image = image
        self.step_images = list(step_images or [])
        self.tokens = [str(token) for token in tokens]
        self.cell_size = (int(cell_size[0]), int(cell_size[1]))
        self.cell_grad_x_input = np.asarray(cell_grad_x_input, dtype=np.float32)
        self.attention_maps = None if attention_maps is None else list(attention_maps)
        self.title = title
        self.scale = scale
        self.to_html()  # validate now rather than at display time

    def to_html(self) -> str:
        r"""The view's HTML fragment (a new element id on each call)."""
        return interactive_view_html(
            self.image,
            self.step_images,
            self.tokens,
            self.cell_size,
            self.cell_grad_x_input,
            attention_maps=self.attention_maps,
            title=self.title,
            scale=self.scale,
            score=self.score,
            whole_image_scores=self.whole_image_scores,
            words=self.words,
            word_attention_maps=self.word_attention_maps,
            dependence_map=self.dependence_map,
            method_description=self.method_description,
            reference=self.reference,
            frames=self.frames,
            word_merge=self.word_merge,
            token_encoders=self.token_encoders,
        )

    def box_correspondence(self, r0: int, c0: int, r1: int, c1: int) -> Optional[np.ndarray]:
        r"""Where the cell box rows [r0, r1) x columns [c0, c1) looks in the reference image, as the view paints it
        (before scaling to its maximum): (reference rows, reference columns); `None` without a reference."""
        if self.reference is None:
            return None
        _, sums, counts, grid = self.reference
        total = float(np.asarray(counts)[r0:r1, c0:c1].sum())
        values = np.asarray(sums, dtype=np.float64)[r0:r1, c0:c1].sum((0, 1))
        return (values / total if total else np.zeros_like(values)).reshape(grid)

    def box_dependence(self, r0: int, c0: int, r1: int, c1: int) -> Optional[float]:
        r"""The prompt dependence of the cell box rows [r0, r1) x columns [c0, c1), as the view shows it (`None`
        without a dependence map)."""
        if self.dependence_map is None:
            return None
        cell_h, cell_w = self.cell_size
        region = np.asarray(self.dependence_map, dtype=np.float64)[
            r0 * cell_h : r1 * cell_h, c0 * cell_w : c1 * cell_w
        ]
        return float(region.mean())

    def box_scores(self, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
        r"""The token scores of the cell box rows [r0, r1) x columns [c0, c1) (see [`box_scores_from_cells`])."""
        if self.score != "grad_x_input":  # word maps: word_attention, concept_attention
            if (r0, c0, r1, c1) == (0, 0, *self.cell_grad_x_input.shape[:2]) and self.whole_image_scores is not None:
                return np.asarray(self.whole_image_scores, dtype=np.float64)
            size = (self.image.size[1], self.image.size[0])
            return word_attention_box_scores(self.cell_grad_x_input, r0, c0, r1, c1, self.cell_size, size)
        return box_scores_from_cells(self.cell_grad_x_input, r0, c0, r1, c1)

    def word_box_scores(self, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
        r"""The word scores of the cell box (each word's tokens' [`box_scores`] merged by `word_merge`), where the view
        has words."""
        if self.words is None:
            raise ValueError("This view shows tokens, not words: use `box_scores`.")
        scores = self.box_scores(r0, c0, r1, c1)
        merged = []
        for _, indices in self.words:
            if self.word_merge == "sum":
                merged.append(float(scores[list(indices)].sum()))
                continue
            best = {}
            for t in indices:
                encoder = "" if self.token_encoders is None else self.token_encoders[t]
                best[encoder] = max(best.get(encoder, -np.inf), float(scores[t]))
            merged.append(float(sum(best.values())))
        return np.array(merged)

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        rows, cols = self.cell_grad_x_input.shape[:2]
        title = f"{self.title!r}, " if self.title else ""
        return f"InteractiveView({title}{rows}x{cols} cells of {self.cell_size[0]}x{self.cell_size[1]} px)"

    def show(self) -> None:
        r"""Display the view once: inline in a notebook; elsewhere it is saved to a temporary HTML page whose path is
        printed (or use `.save(path)`)."""
        show_html(self.to_html(), "interactive view")

    def save(self, path: Union[str, Path]) -> Path:
        r"""
        Write the view as a standalone HTML page (nothing else needed beside it).

        Args:
            path (`str` or `Path`): Where to write it.

        Returns:
            The `Path` written.
        """
        path = Path(path)
        path.write_text(standalone_page(self.to_html(), self.title or "diffusers-interpret"), encoding="utf-8")
        return path
