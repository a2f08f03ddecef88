"""Small inline SVG charts for the status page and the replay report (no scripts, no CDN).

Every function returns an ``<svg>`` element as a string; inputs are plain sequences.

>>> svg = line_chart([0, 1, 2], [0.1, 0.3, 0.2], threshold=0.25, markers=[1])
>>> svg.startswith("<svg") and "<polyline" in svg and svg.count("<line") == 2
True
>>> "<rect" in bars(["a", "b"], [0.5, 0.5], [0.2, 0.8])
True
>>> lines([("a", [0, 1], [1.0, 2.0]), ("b", [0, 1], [2.0, 1.0])]).count("<polyline")
2
>>> many = lines([(f"series {i}", [0, 1], [i, i]) for i in range(30)])
>>> many.count("<polyline"), many.count("...</text>"), "series 29" in many
(30, 1, False)
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

__all__ = ["PALETTE", "bars", "line_chart", "lines", "sparkline"]

_BLUE, _RED, _GREY, _ORANGE = "#2f5bd3", "#b3261e", "#9aa3b2", "#e08a00"
# Colours of the series of ``lines``, in order (then repeated).
PALETTE = ("#2f5bd3", "#e08a00", "#1b6e35", "#8e44ad", "#b3261e", "#0f8b8d", "#6b7280")


def _short(x: float) -> str:
    """An axis label of at most about five characters: 0.785, 12.3, 9.8k, 1.2M.

    >>> [_short(v) for v in (0.7854, 12.34, 9786.0, 1_234_567.0)]
    ['0.785', '12.3', '9.79k', '1.23M']
    """
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= limit:
            return f"{x / limit:.3g}{suffix}"
    return f"{x:.3g}"


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def sparkline(
    values: Sequence[float],
    thresholds: Sequence[float] = (),
    verdicts: Sequence[bool] = (),
    *,
    width: int = 160,
    height: int = 32,
) -> str:
    """A line of ``values`` (oldest first), the latest threshold dashed, drift points red.

    >>> '<polyline' in sparkline([0.1, 0.2, 0.3], [0.25, 0.25, 0.25], [False, False, True])
    True
    """
    pts = [v if math.isfinite(v) else 0.0 for v in values]
    thr = _finite(thresholds)
    if not pts:
        return f'<svg class="spark" width="{width}" height="{height}"></svg>'
    hi = max([*pts, *thr, 1e-12])
    lo = min([*pts, *thr, 0.0])
    span = hi - lo or 1.0
    n = len(pts)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = 2 + (width - 4) * (i / (n - 1) if n > 1 else 0.5)
        return x, height - 2 - (height - 4) * (v - lo) / span

    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in enumerate(pts)))
    parts = [
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="statistic over the last {n} verdicts">'
    ]
    if thresholds and math.isfinite(thresholds[-1]):
        _, ty = xy(0, thresholds[-1])
        parts.append(
            f'<line x1="0" x2="{width}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="{_RED}" '
            'stroke-dasharray="3,3" stroke-width="1"/>'
        )
    parts.append(f'<polyline fill="none" stroke="{_BLUE}" stroke-width="1.5" points="{line}"/>')
    for i, (v, d) in enumerate(zip(pts, verdicts, strict=False)):
        if d:
            x, y = xy(i, v)
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{_RED}"/>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    xs: Sequence[float],
    ys: Sequence[float],
    *,
    threshold: float | None = None,
    markers: Sequence[float] = (),
    resolves: Sequence[float] = (),
    width: int = 640,
    height: int = 160,
    label: str = "",
    x_label: str = "events",
) -> str:
    """``ys`` against ``xs`` with axes, a dashed threshold and vertical alert markers.

    ``markers`` (red) and ``resolves`` (green) are x positions of alerts firing and
    resolving.
    """
    pad_l, pad_r, pad_t, pad_b = 48, 8, 14, 22
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    pairs = [(x, y) for x, y in zip(xs, ys, strict=False) if math.isfinite(x) and math.isfinite(y)]
    e = html.escape
    out = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{e(label)}">',
        f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="#fff" stroke="#d5d9e0"/>',
    ]
    if not pairs:
        out.append(f'<text x="{pad_l + 8}" y="{pad_t + 18}" fill="{_GREY}">no verdicts</text>')
        out.append("</svg>")
        return "".join(out)
    x0 = min(p[0] for p in pairs)
    x1 = max([p[0] for p in pairs] + [m for m in (*markers, *resolves) if math.isfinite(m)])
    ys_all = [p[1] for p in pairs] + ([threshold] if threshold is not None else [])
    ys_all = _finite(ys_all)
    lo, hi = min([*ys_all, 0.0]), max([*ys_all, 1e-12])
    xspan, yspan = (x1 - x0) or 1.0, (hi - lo) or 1.0

    def sx(x: float) -> float:
        return pad_l + w * (x - x0) / xspan

    def sy(y: float) -> float:
        return pad_t + h - h * (y - lo) / yspan

    for m, colour in [(m, _RED) for m in markers] + [(r, "#1b6e35") for r in resolves]:
        if math.isfinite(m):
            out.append(
                f'<line x1="{sx(m):.1f}" x2="{sx(m):.1f}" y1="{pad_t}" y2="{pad_t + h}" '
                f'stroke="{colour}" stroke-width="1.5" opacity="0.7"/>'
            )
    if threshold is not None and math.isfinite(threshold):
        ty = sy(threshold)
        out.append(
            f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="{_ORANGE}" '
            'stroke-dasharray="5,4" stroke-width="1.2"/>'
        )
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pairs)
    out.append(f'<polyline fill="none" stroke="{_BLUE}" stroke-width="1.5" points="{line}"/>')
    out.append(_axis_labels(pad_l, pad_t, w, h, height, lo, hi, x0, x1, x_label))
    out.append("</svg>")
    return "".join(out)


def bars(
    labels: Sequence[str],
    reference: Sequence[float],
    current: Sequence[float],
    *,
    width: int = 640,
    height: int = 150,
    label: str = "",
) -> str:
    """Side-by-side bars: reference share (grey) and current share (blue) per bin."""
    n = len(labels)
    pad_l, pad_b, pad_t = 36, 28, 8
    w, h = width - pad_l - 4, height - pad_b - pad_t
    top = max([*_finite(reference), *_finite(current), 1e-12])
    out = [
        f'<svg class="bars" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{html.escape(label)}">'
    ]
    slot = w / max(n, 1)
    for i, (ref, cur) in enumerate(zip(reference, current, strict=True)):
        x = pad_l + i * slot
        for j, (v, colour) in enumerate(((ref, _GREY), (cur, _BLUE))):
            v = v if math.isfinite(v) else 0.0
            bh = h * v / top
            out.append(
                f'<rect x="{x + j * slot * 0.42 + slot * 0.06:.1f}" y="{pad_t + h - bh:.1f}" '
                f'width="{slot * 0.4:.1f}" height="{bh:.1f}" fill="{colour}"/>'
            )
    step = max(1, n // 8)
    for i in range(0, n, step):
        out.append(
            f'<text x="{pad_l + (i + 0.5) * slot:.1f}" y="{height - 12}" font-size="9" '
            f'text-anchor="middle">{html.escape(labels[i][:10])}</text>'
        )
    out.append(
        f'<text x="{pad_l - 4}" y="{pad_t + 8}" text-anchor="end" font-size="10">{top:.0%}</text>'
    )
    out.append("</svg>")
    return "".join(out)


def lines(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    threshold: float | None = None,
    markers: Sequence[float] = (),
    width: int = 640,
    height: int = 170,
    label: str = "",
    x_label: str = "events",
    steps: bool = False,
) -> str:
    """Several named series ``(name, xs, ys)`` on shared axes, with a legend, an
    optional dashed ``threshold`` and red vertical ``markers``; ``steps`` draws each
    series as a step function (counts that hold until the next point)."""
    pad_l, pad_r, pad_t, pad_b = 48, 8, 22, 22
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    e = html.escape
    clean = [
        (
            name,
            [(x, y) for x, y in zip(xs, ys, strict=False) if math.isfinite(x) and math.isfinite(y)],
        )
        for name, xs, ys in series
    ]
    out = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{e(label)}">',
        f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="#fff" stroke="#d5d9e0"/>',
    ]
    pts = [p for _, ps in clean for p in ps]
    if not pts:
        out.append(f'<text x="{pad_l + 8}" y="{pad_t + 18}" fill="{_GREY}">no data</text></svg>')
        return "".join(out)
    xs_all = [p[0] for p in pts] + [m for m in markers if math.isfinite(m)]
    x0, x1 = min(xs_all), max(xs_all)
    ys_all = _finite([p[1] for p in pts] + ([threshold] if threshold is not None else []))
    lo, hi = min(ys_all), max(ys_all)
    if steps:
        lo = min(lo, 0.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    xspan, yspan = (x1 - x0) or 1.0, hi - lo

    def sx(x: float) -> float:
        return pad_l + w * (x - x0) / xspan

    def sy(y: float) -> float:
        return pad_t + h - h * (y - lo) / yspan

    for m in markers:
        if math.isfinite(m):
            out.append(
                f'<line x1="{sx(m):.1f}" x2="{sx(m):.1f}" y1="{pad_t}" y2="{pad_t + h}" '
                f'stroke="{_RED}" stroke-width="1.2" opacity="0.6"/>'
            )
    if threshold is not None and math.isfinite(threshold):
        ty = sy(threshold)
        out.append(
            f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="{_GREY}" '
            'stroke-dasharray="5,4" stroke-width="1.2"/>'
        )
    legend_x = pad_l
    for i, (name, ps) in enumerate(clean):
        colour = PALETTE[i % len(PALETTE)]
        if ps:
            if steps:
                coords = []
                for j, (x, y) in enumerate(ps):
                    if j:
                        coords.append(f"{sx(x):.1f},{sy(ps[j - 1][1]):.1f}")
                    coords.append(f"{sx(x):.1f},{sy(y):.1f}")
                line = " ".join(coords)
            else:
                line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ps)
            out.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{line}"/>'
            )
        step = 24 + 6 * len(name)
        if legend_x + step > width + 12:  # no room left: say so once
            if legend_x <= width:
                out.append(f'<text x="{legend_x}" y="14" font-size="10">...</text>')
                legend_x = width + 1
            continue
        out.append(
            f'<rect x="{legend_x}" y="6" width="9" height="9" fill="{colour}"/>'
            f'<text x="{legend_x + 12}" y="14" font-size="10">{e(name)}</text>'
        )
        legend_x += step
    out.append(_axis_labels(pad_l, pad_t, w, h, height, lo, hi, x0, x1, x_label))
    out.append("</svg>")
    return "".join(out)


def _axis_labels(
    pad_l: float,
    pad_t: float,
    w: float,
    h: float,
    height: int,
    lo: float,
    hi: float,
    x0: float,
    x1: float,
    x_label: str,
) -> str:
    """The y range at the left and the x range (with its label) under a chart."""
    return (
        f'<text x="{pad_l - 4}" y="{pad_t + 4}" text-anchor="end" font-size="10">'
        f"{_short(hi)}</text>"
        f'<text x="{pad_l - 4}" y="{pad_t + h}" text-anchor="end" font-size="10">'
        f"{_short(lo)}</text>"
        f'<text x="{pad_l}" y="{height - 6}" font-size="10">{x0:,.0f}</text>'
        f'<text x="{pad_l + w}" y="{height - 6}" text-anchor="end" font-size="10">'
        f"{x1:,.0f} {html.escape(x_label)}</text>"
    )
