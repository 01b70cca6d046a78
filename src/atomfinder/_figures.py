"""Shared figure basics: class colours, atomic saving in the format named by the suffix,
figures outside pyplot, scale bars (matplotlib and Pillow) and a grey-level stretch.

Used by detection (overlays), analysis (previews, time series) and the CLI.
"""

from __future__ import annotations

import functools
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

# Batch runs and dask workers draw without a display. Inside a Jupyter kernel (or once
# the user has imported pyplot) the backend is theirs: switching it would close their
# figures and stop inline display of the figures this package returns.
if "ipykernel" not in sys.modules and "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from atomfinder._files import atomic_write  # noqa: E402

__all__ = [
    "CLASS_COLOURS",
    "FIGURE_FORMATS",
    "NotebookFigure",
    "add_scale_bar",
    "figure_format",
    "new_figure",
    "percentile_limits",
    "pil_legend",
    "pil_scale_bar",
    "plt",
    "save_figure",
]

#: Marker colours by class index (1-based; index 0 unused).
CLASS_COLOURS = ("#000000", "#ff3b30", "#34c759", "#007aff", "#ff9500", "#af52de", "#5ac8fa", "#ffcc00")
#: File suffixes :func:`save_figure` writes (the format follows the suffix).
FIGURE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "tif", "tiff", "webp", "eps", "ps")


class NotebookFigure(Figure):
    """A matplotlib Figure that Jupyter shows as a PNG when it is a cell's value.

    Figures made outside pyplot are not shown by the inline backend's hooks, which
    matplotlib loads only with the first pyplot figure: in a fresh kernel such a
    figure would show as ``<Figure size ...>``. IPython calls :meth:`_repr_png_`
    unless a formatter is registered for figures (then that one draws it).
    """

    def _repr_png_(self) -> bytes:
        """The figure as PNG bytes (IPython's rich display)."""
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure outside pyplot (no global state, safe in threads, never shown twice in
    Jupyter, shown as a PNG when a cell returns it), drawn by Agg; :func:`save_figure`
    or ``fig.savefig`` write it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = NotebookFigure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def figure_format(path: Path | str) -> str:
    """The format a figure file is written in, from its suffix (``"png"``, ``"svg"``, ``"pdf"``...).

    Raises
    ------
    ValueError
        No suffix, or one that is not in :data:`FIGURE_FORMATS`.
    """
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"{path}: a figure file must end in one of "
                         f"{', '.join('.' + f for f in FIGURE_FORMATS)} (the format follows the suffix)")
    return fmt


def save_figure(fig: Figure, path: Path | str, dpi: int = 150) -> Path:
    """Save atomically (temporary file + rename) in the format of the suffix, and close the figure.

    Parameters
    ----------
    fig : Figure
    path : path
        Target; ``.png``, ``.svg``, ``.pdf`` (or another of :data:`FIGURE_FORMATS`).
    dpi : int
        Resolution of raster output (and of images embedded in vector output).
    """
    try:
        fmt = figure_format(path)
        if not (isinstance(dpi, (int, float)) and dpi > 0):
            raise ValueError(f"dpi must be a positive number, got {dpi!r}")
        # zlib level 1 writes a PNG ~3x faster than matplotlib's default 6, ~10 % larger.
        extra: dict[str, Any] = {"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", **extra))
    finally:
        plt.close(fig)


def percentile_limits(image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0),
                      max_samples: int = 1 << 18) -> tuple[float, float]:
    """Grey limits of one image: its ``percentiles`` over finite pixels (widened if they coincide).

    Images with more than ``max_samples`` pixels are subsampled on a regular grid.
    """
    img = np.asarray(image)
    step = max(1, int(np.ceil(np.sqrt(img.size / max_samples)))) if img.ndim == 2 else 1
    sub = img[::step, ::step] if img.ndim == 2 else img
    finite = sub[np.isfinite(sub)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, percentiles)
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def scale_bar_length_A(field_width_A: float, fraction: float = 0.2) -> float:
    """A round scale-bar length (1, 2 or 5 times a power of ten Å) near ``fraction`` of the field.

    Parameters
    ----------
    field_width_A : float
        Width of the image in Å.
    fraction : float
        Target length as a fraction of the width.

    Returns
    -------
    float
        The largest round length not above ``fraction * field_width_A`` (at least
        the smallest round length below it).
    """
    target = fraction * float(field_width_A)
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"field width must be positive, got {field_width_A}")
    power = 10.0 ** math.floor(math.log10(target))
    for step in (5.0, 2.0, 1.0):
        if step * power <= target * (1 + 1e-9):
            return step * power
    return power  # pragma: no cover - 1 * power <= target always


def scale_bar_label(length_A: float) -> str:
    """``"5 Å"``, ``"1 nm"``, ``"20 nm"``, ``"2 µm"``: the length in the handiest unit."""
    if length_A >= 1e4:
        return f"{length_A / 1e4:g} µm"
    if length_A >= 10:
        return f"{length_A / 10:g} nm"
    if length_A >= 0.1:
        return f"{length_A:g} Å"
    return f"{length_A * 100:g} pm"


def add_scale_bar(ax: Any, shape: tuple[int, int], sampling_A: float, *, fraction: float = 0.2,
                  fontsize: float = 10.0, colour: str = "white") -> Any:
    """Draw a round-length scale bar (Å, nm or µm label) at the bottom left of an image axes.

    Parameters
    ----------
    ax : Axes
        Axes showing an image in pixel coordinates (pixel centres at integers, y down).
    shape : (rows, cols)
        Image size in pixels of the axes' coordinates.
    sampling_A : float
        Pixel size in Å/px.
    fraction : float
        Target bar length as a fraction of the width (the bar has a round length
        at most this long, :func:`scale_bar_length_A`).
    fontsize : float
        Label size in points.
    colour : str
        Bar and label colour (outlined in black).

    Returns
    -------
    Text
        The label (its text is e.g. ``"2 nm"``).
    """
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    h, w = shape
    length_A = scale_bar_length_A(w * sampling_A, fraction)
    length_px = length_A / sampling_A
    thick = max(1.0, 0.012 * h)
    x0 = 0.04 * w - 0.5
    y0 = h - 0.5 - 0.05 * h - thick
    outline = [patheffects.withStroke(linewidth=2.0, foreground="black")]
    ax.add_patch(Rectangle((x0, y0), length_px, thick, facecolor=colour, edgecolor="black", linewidth=0.6,
                           zorder=5, gid="scale_bar"))
    return ax.text(x0 + length_px / 2, y0 - 0.015 * h, scale_bar_label(length_A), color=colour, ha="center",
                   va="bottom", fontsize=fontsize, zorder=6, path_effects=outline, gid="scale_bar_label")


# --------------------------------------------------------------------------- Pillow (GIF frames)


#: The TrueType font of the Pillow labels (scale bar, legend): matplotlib's, which has Å and µ.
PIL_FONT_FAMILY = "DejaVu Sans"


@functools.lru_cache(maxsize=32)
def _truetype_font(size_px: int) -> Any:
    """matplotlib's DejaVu Sans at ``size_px`` as a Pillow font, or None when it cannot be loaded."""
    from matplotlib import font_manager
    from PIL import ImageFont

    try:
        path = font_manager.findfont(PIL_FONT_FAMILY, fallback_to_default=False)
        return ImageFont.truetype(path, size_px)
    except (ValueError, OSError):
        return None


def _pil_font(font: Any, size_px: int) -> tuple[Any, bool]:
    """The font to draw with, and whether it has Å and µ.

    A given font is used as it is (assumed to have them); else matplotlib's DejaVu
    Sans (:func:`_truetype_font`); else Pillow's default font, which draws Å and µ as
    empty boxes: labels then spell them ``A`` and ``u`` (:func:`_ascii_units`).
    """
    from PIL import ImageFont

    if font is not None:
        return font, True
    truetype = _truetype_font(int(size_px))
    if truetype is not None:
        return truetype, True
    try:
        return ImageFont.load_default(size=size_px), False  # a scalable font (Pillow >= 10.1)
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default(), False


def _ascii_units(label: str) -> str:
    """``"5 Å"`` -> ``"5 A"``, ``"2 µm"`` -> ``"2 um"``: for a font without those letters."""
    return label.replace("Å", "A").replace("µ", "u")


def pil_scale_bar(draw: Any, size: tuple[int, int], sampling_A: float, *, fraction: float = 0.2,
                  font: Any = None) -> str:
    """Draw a white, black-outlined scale bar with its label at the bottom left of a Pillow image.

    Parameters
    ----------
    draw : PIL.ImageDraw.ImageDraw
        Drawing context of the image (RGB or RGBA).
    size : (width, height)
        Image size in display pixels.
    sampling_A : float
        Å per *display* pixel (the frame's pixel size divided by the display scale).
    fraction : float
        Target length as a fraction of the width.
    font : PIL font, optional
        Default: matplotlib's DejaVu Sans (it has Å and µ) at about 1/25 of the height
        (at least 10 px); when it cannot be loaded, Pillow's default font, with the
        unit spelt ``A`` or ``um``.

    Returns
    -------
    str
        The label drawn (``"1 nm"``, ``"5 Å"``...).
    """
    w, h = size
    length_A = scale_bar_length_A(w * sampling_A, fraction)
    length = max(1, round(length_A / sampling_A))
    thick = max(2, round(0.015 * h))
    x0 = max(2, round(0.04 * w))
    y1 = h - max(2, round(0.04 * h))
    y0 = y1 - thick
    draw.rectangle((x0 - 1, y0 - 1, x0 + length, y1 + 1), fill=(0, 0, 0))
    draw.rectangle((x0, y0, x0 + length - 1, y1), fill=(255, 255, 255))
    font, has_units = _pil_font(font, max(10, h // 25))
    label = scale_bar_label(length_A) if has_units else _ascii_units(scale_bar_label(length_A))
    box = draw.textbbox((0, 0), label, font=font)
    tx = x0 + length / 2 - (box[2] - box[0]) / 2
    ty = y0 - 3 - (box[3] - box[1]) - box[1]
    draw.text((tx, ty), label, fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return label


def pil_legend(draw: Any, entries: Sequence[tuple[str, tuple[int, int, int], str]], size: tuple[int, int], *,
               font: Any = None) -> tuple[int, int, int, int]:
    """Draw a legend box at the top right of a Pillow image.

    Parameters
    ----------
    draw : PIL.ImageDraw.ImageDraw
    entries : sequence of (label, rgb, symbol)
        ``symbol`` is ``"ring"`` or ``"cross"`` (as the sites are drawn).
    size : (width, height)
    font : PIL font, optional

    Returns
    -------
    (left, top, right, bottom)
        The box drawn.
    """
    w, h = size
    font, _ = _pil_font(font, max(10, h // 30))
    boxes = [draw.textbbox((0, 0), label, font=font) for label, _, _ in entries]
    line = max([b[3] - b[1] for b in boxes] + [8]) + 4
    sym = line - 4
    width = max([b[2] - b[0] for b in boxes] + [0]) + sym + 14
    right, top = w - 4, 4
    left, bottom = right - width, top + line * len(entries) + 4
    draw.rectangle((left, top, right, bottom), fill=(0, 0, 0))
    for k, ((label, rgb, symbol), b) in enumerate(zip(entries, boxes)):
        y = top + 4 + k * line
        sx, sy = left + 4, y
        lw = max(1, round(sym / 6))
        if symbol == "cross":
            draw.line((sx, sy, sx + sym, sy + sym), fill=tuple(rgb), width=lw)
            draw.line((sx, sy + sym, sx + sym, sy), fill=tuple(rgb), width=lw)
        else:
            draw.ellipse((sx, sy, sx + sym, sy + sym), outline=tuple(rgb), width=lw)
        draw.text((sx + sym + 6, y - b[1]), label, fill=(255, 255, 255), font=font)
    return left, top, right, bottom
