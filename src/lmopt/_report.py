"""What every report and plot states: chance level, binomial noise, score axes, and the data behind a figure.

``save_figure`` writes the PNG and, next to it, ``NAME.plot.json`` with what the figure shows (per panel: title,
axis labels and limits, each line or segment with its label and points, bar heights, scatter points, band
extents, text labels), so that a figure can be checked and re-plotted without reading pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def chance_level(task: Any, examples: Any) -> float | None:
    """Accuracy of always answering the most common label of ``examples`` (None for open-ended tasks)."""
    if not task.is_classification or not examples:
        return None
    targets = [e.target for e in examples]
    return max(targets.count(t) for t in set(targets)) / len(targets)


def noise_level(p: float, n: int) -> float:
    """One binomial standard error of an accuracy ``p`` measured on ``n`` examples (``p`` kept within
    [1/n, 1 - 1/n], so that a score of 0 or 1 does not claim a zero error)."""
    q = min(max(p, 1.0 / n), 1.0 - 1.0 / n)
    return (q * (1.0 - q) / n) ** 0.5


def score_ylim(ax: Any, values: Sequence[float | None]) -> None:
    """Scores in [0, 1] get the fixed axis 0–1 (an auto-scaled 0–0.002 makes noise look like a jump); other
    metrics keep matplotlib's limits, widened to include 0."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if all(0.0 <= v <= 1.0 for v in vals):
        ax.set_ylim(0, 1)
    else:
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, 0.0), max(hi, 0.0))


def label_bars(ax: Any, xs: Sequence[float], values: Sequence[float | None], fmt: str = "{:.2f}") -> None:
    """Write each bar's value above it, so that an all-zero chart still reads as zeros, not as an empty panel."""
    top = ax.get_ylim()[1]
    for x, v in zip(xs, values):
        ax.text(x, (v or 0.0) + 0.02 * top, "n/a" if v is None else fmt.format(v), ha="center", fontsize=8)


def _num(v: Any) -> Any:
    """A finite float, None for NaN/inf, or the value as text (categorical axes hold strings)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f if math.isfinite(f) else None


def _points(xy: Any) -> list[list[Any]]:
    return [[_num(a), _num(b)] for a, b in xy]


def figure_data(fig: Any) -> dict[str, Any]:
    """The content of a matplotlib figure as plain data (see the module docstring)."""
    from matplotlib.collections import LineCollection, PathCollection, PolyCollection
    from matplotlib.patches import Rectangle

    panels = []
    for ax in fig.get_axes():
        lines = [{"label": ln.get_label(), "style": ln.get_linestyle(),
                  "points": _points(zip(ln.get_xdata(), ln.get_ydata())),
                  # axhline / axvline span the panel in axes coordinates: name the constant value
                  **({"y": _num(ln.get_ydata()[0])} if ax.get_yaxis_transform() == ln.get_transform() else {})}
                 for ln in ax.get_lines()]
        bars = [{"label": r.get_label(), "x": _num(r.get_x() + r.get_width() / 2), "height": _num(r.get_height())}
                for r in ax.patches if isinstance(r, Rectangle)]
        scatter = [{"label": c.get_label(), "points": _points(c.get_offsets())}
                   for c in ax.collections if isinstance(c, PathCollection)]
        segments = [{"label": c.get_label(), "segments": [_points(seg) for seg in c.get_segments()]}
                    for c in ax.collections if isinstance(c, LineCollection)]
        bands = [{"label": c.get_label(), "y_range": [_num(min(ys)), _num(max(ys))] if len(ys) else []}
                 for c in ax.collections if isinstance(c, PolyCollection)
                 for ys in [[y for p in c.get_paths() for y in p.vertices[:, 1]]]]
        legend = ax.get_legend()
        panels.append({
            "title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "xlim": [_num(v) for v in ax.get_xlim()], "ylim": [_num(v) for v in ax.get_ylim()],
            "xticklabels": [t.get_text() for t in ax.get_xticklabels()],
            "lines": lines, "segments": segments, "bars": bars, "scatter": scatter, "bands": bands,
            "texts": [t.get_text() for t in ax.texts],
            "legend": [t.get_text() for t in legend.get_texts()] if legend is not None else []})
    return {"panels": panels}


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as PNG at ``path``, its data as ``NAME.plot.json`` beside it, and close it."""
    import matplotlib.pyplot as plt

    from ._io import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    data = figure_data(fig)
    plt.close(fig)
    write_text_atomic(path.with_suffix(".plot.json"), json.dumps(data, indent=1))
    return path
