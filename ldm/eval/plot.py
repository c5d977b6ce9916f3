"""The fidelity/diversity plot: adherence (seen, held-out) and diversity against the guidance weight w, drawn
with Pillow only. Left panel: adherence in [0, 1]; right panel: diversity on its own scale."""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PLOT_SIZE = (880, 380)  # (width, height) in pixels
MARGIN = (70, 40, 30, 60)  # left, top, right, bottom space around each panel (tick labels, title, axis label)
INSET = 16  # points sit this many pixels inside the panel box, so markers at the range ends stay visible
MARKER_RADIUS = 4
SERIES_COLOURS = {"seen": (31, 119, 180), "held_out": (255, 127, 14), "diversity": (44, 160, 44)}
AXIS_COLOUR, GRID_COLOUR, TEXT_COLOUR = (0, 0, 0), (225, 225, 225), (20, 20, 20)


def panel_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Pixel boxes (x0, y0, x1, y1) of the two panels, inclusive corners: [adherence, diversity]."""
    left, top, right, bottom = MARGIN
    half = width // 2
    return [(x, top, x + half - left - right, height - bottom) for x in (left, half + left)]


def to_pixel(box, x, y, *, x_range, y_range) -> tuple[int, int]:
    """Data (x, y) → pixel (px, py) inside `box`; a degenerate x range puts x at the box's centre."""
    x0, y0, x1, y1 = box
    lo, hi = x_range
    fx = 0.5 if hi == lo else (x - lo) / (hi - lo)
    fy = (y - y_range[0]) / (y_range[1] - y_range[0])
    return round(x0 + INSET + fx * (x1 - x0 - 2 * INSET)), round(y1 - INSET - fy * (y1 - y0 - 2 * INSET))


def nice_ceiling(value: float) -> float:
    """Smallest of 1, 2, 2.5, 5 × 10^k that is ≥ value (1.0 for value ≤ 0): the diversity axis top."""
    if not value or value <= 0 or math.isnan(value):
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= value * (1 - 1e-9))


def _text(draw, xy, text, font, anchor="la"):
    draw.text(xy, text, fill=TEXT_COLOUR, font=font, anchor=anchor)


def _draw_axes(draw, box, font, *, weights, x_range, y_range, y_ticks, y_format, title):
    x0, y0, x1, y1 = box
    for tick in y_ticks:
        _, py = to_pixel(box, x_range[0], tick, x_range=x_range, y_range=y_range)
        draw.line([(x0, py), (x1, py)], fill=GRID_COLOUR)
        draw.line([(x0 - 4, py), (x0, py)], fill=AXIS_COLOUR)
        _text(draw, (x0 - 7, py), y_format(tick), font, anchor="rm")
    for w in weights:
        px, _ = to_pixel(box, w, y_range[0], x_range=x_range, y_range=y_range)
        draw.line([(px, y1), (px, y1 + 4)], fill=AXIS_COLOUR)
        _text(draw, (px, y1 + 7), f"{w:g}", font, anchor="ma")
    draw.rectangle(box, outline=AXIS_COLOUR)
    _text(draw, ((x0 + x1) // 2, y0 - 24), title, font, anchor="ma")
    _text(draw, ((x0 + x1) // 2, y1 + 26), "guidance weight w (guidance_scale = w + 1)", font, anchor="ma")


def _draw_series(draw, box, weights, values, colour, *, x_range, y_range):
    """Line through the known points (None values break the line), then a filled marker on each."""
    points = [None if v is None else to_pixel(box, w, v, x_range=x_range, y_range=y_range)
              for w, v in zip(weights, values)]
    for a, b in zip(points, points[1:]):
        if a is not None and b is not None:
            draw.line([a, b], fill=colour, width=2)
    for point in points:
        if point is not None:
            px, py = point
            r = MARKER_RADIUS
            draw.ellipse([px - r, py - r, px + r, py + r], fill=colour)


def _draw_legend(draw, box, font, entries):
    x1, y1 = box[2], box[3]  # bottom right: adherence usually rises with w, so that corner stays empty
    for row, (label, colour) in enumerate(reversed(entries)):
        y = y1 - 12 - 16 * row
        draw.line([(x1 - 110, y), (x1 - 86, y)], fill=colour, width=3)
        _text(draw, (x1 - 80, y), label, font, anchor="lm")


def plot_guidance_sweep(path, *, weights, adherence_seen, adherence_held_out, diversity,
                        size=PLOT_SIZE) -> Path:
    """Write the PNG and return its path.

    weights: guidance weights w (x axis, linear). adherence_seen / adherence_held_out: rates in [0, 1] per w;
    diversity: mean pairwise RMS distance per w (axis from 0 to `nice_ceiling(max)`). Any value may be None
    (not measured): no marker is drawn for it.
    """
    weights = [float(w) for w in weights]
    if not weights or not (len(weights) == len(adherence_seen) == len(adherence_held_out) == len(diversity)):
        raise ValueError("plot_guidance_sweep needs one value per guidance weight in every series.")
    width, height = size
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    x_range = (min(weights), max(weights))
    left, right = panel_boxes(width, height)

    _draw_axes(draw, left, font, weights=weights, x_range=x_range, y_range=(0.0, 1.0),
               y_ticks=[i / 4 for i in range(5)], y_format=lambda t: f"{100 * t:.0f}%",
               title="prompt adherence (every stated attribute right)")
    for key, values in (("seen", adherence_seen), ("held_out", adherence_held_out)):
        _draw_series(draw, left, weights, values, SERIES_COLOURS[key], x_range=x_range, y_range=(0.0, 1.0))
    legend = [("seen", SERIES_COLOURS["seen"]), ("held-out", SERIES_COLOURS["held_out"])]
    _draw_legend(draw, left, font, legend)

    top = nice_ceiling(max((v for v in diversity if v is not None), default=0.0))
    _draw_axes(draw, right, font, weights=weights, x_range=x_range, y_range=(0.0, top),
               y_ticks=[top * i / 4 for i in range(5)], y_format=lambda t: f"{t:.3g}",
               title="diversity (mean pairwise RMS pixel distance)")
    _draw_series(draw, right, weights, diversity, SERIES_COLOURS["diversity"], x_range=x_range,
                 y_range=(0.0, top))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
