"""The fidelity/diversity plot, drawn with matplotlib: adherence (seen, held-out) and diversity against the
guidance weight w. Left panel: adherence in [0, 1]; right panel: diversity on its own scale."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit, the same pixels on every machine
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

PLOT_SIZE = (880, 380)  # (width, height) in pixels of the saved PNG
DPI = 100  # PLOT_SIZE / DPI is the figure size in inches
SERIES_COLOURS = {"seen": "#1f77b4", "held_out": "#ff7f0e", "diversity": "#2ca02c"}  # matplotlib's first three
X_LABEL = "guidance weight w (guidance_scale = w + 1)"


def nice_ceiling(value: float) -> float:
    """Smallest of 1, 2, 2.5, 5 × 10^k that is ≥ value (1.0 for value ≤ 0): the diversity axis top."""
    if not value or value <= 0 or math.isnan(value):
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= value * (1 - 1e-9))


def _series(ax, weights, values, *, colour: str, label: str | None) -> None:
    """Line and markers through the measured points; None (not measured) breaks the line, as NaN does."""
    ys = [math.nan if v is None else float(v) for v in values]
    ax.plot(weights, ys, color=colour, marker="o", markersize=6, linewidth=2, label=label)


def guidance_sweep_figure(*, weights, adherence_seen, adherence_held_out, diversity,
                          size=PLOT_SIZE) -> Figure:
    """The two-panel figure (axes: `fig.axes[0]` adherence, `fig.axes[1]` diversity).

    weights: guidance weights w (x axis, linear). adherence_seen / adherence_held_out: rates in [0, 1] per w;
    diversity: mean pairwise RMS distance per w (axis from 0 to `nice_ceiling(max)`). Any value may be None
    (not measured): no marker is drawn for it.
    """
    weights = [float(w) for w in weights]
    if not weights or not (len(weights) == len(adherence_seen) == len(adherence_held_out) == len(diversity)):
        raise ValueError("plot_guidance_sweep needs one value per guidance weight in every series.")
    fig, (left, right) = plt.subplots(1, 2, figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    _series(left, weights, adherence_seen, colour=SERIES_COLOURS["seen"], label="seen")
    _series(left, weights, adherence_held_out, colour=SERIES_COLOURS["held_out"], label="held-out")
    left.set(ylim=(-0.03, 1.03), title="prompt adherence (every stated attribute right)")
    left.yaxis.set_major_formatter(PercentFormatter(1.0))
    left.legend(loc="lower right")  # adherence usually rises with w, so that corner stays empty

    top = nice_ceiling(max((v for v in diversity if v is not None), default=0.0))
    _series(right, weights, diversity, colour=SERIES_COLOURS["diversity"], label=None)
    right.set(ylim=(-0.03 * top, 1.03 * top), title="diversity (mean pairwise RMS pixel distance)")
    for ax in (left, right):
        ax.set_xticks(weights, [f"{w:g}" for w in weights])
        ax.set_xlabel(X_LABEL)
        ax.grid(True, color="#e1e1e1")
        ax.title.set_fontsize(10)
    fig.tight_layout()
    return fig


def plot_guidance_sweep(path, *, weights, adherence_seen, adherence_held_out, diversity,
                        size=PLOT_SIZE) -> Path:
    """Write `guidance_sweep_figure(...)` as a PNG of `size` pixels and return its path."""
    fig = guidance_sweep_figure(weights=weights, adherence_seen=adherence_seen,
                                adherence_held_out=adherence_held_out, diversity=diversity, size=size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    plt.close(fig)
    return path
