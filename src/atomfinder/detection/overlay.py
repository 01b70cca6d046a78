"""Overlay of detected atoms on their micrograph, with a legend, a scale bar and an
optional colour bar; the figure of the Python API's result in Jupyter.

Positions follow DESIGN.md (``x`` = column, ``y`` = row, pixel centres at integers),
so they are drawn directly in the image's pixel coordinates.

* :func:`overlay_plot` returns a matplotlib Figure (atoms coloured by class,
  confidence, probability or column height, with a colour bar for the latter);
  :func:`overlay_figure` writes it to a file whose suffix picks the format (PNG, SVG,
  PDF...) at a chosen dpi.
* :func:`overlay_stack_plot` draws every frame of a stack in a grid with one colour
  scale; :func:`write_overlay_frames` writes a grid or one file per frame.
* :class:`Detection` is ``(table, info)`` as :func:`atomfinder.detect` returns it,
  with ``plot()`` and a Jupyter ``_repr_html_`` (thumbnail and summary).

This module imports matplotlib only when it draws.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# the scale bar helpers live with the other figure helpers; re-exported here (public API)
from atomfinder._figures import scale_bar_label, scale_bar_length_A

__all__ = [
    "COLOUR_MODES",
    "Detection",
    "detection_summary",
    "display_image",
    "marker_diameter_pt",
    "overlay_figure",
    "overlay_plot",
    "overlay_stack_plot",
    "plot_detection",
    "scale_bar_label",
    "scale_bar_length_A",
    "write_overlay_frames",
]

#: Most columns whose heights are written as numbers (``height_labels=True``).
MAX_HEIGHT_LABELS = 300
#: Figure width in inches.
FIGURE_WIDTH_IN = 8.0
#: What the markers' colour can show (``"auto"``: the column height when the table
#: has heights, else the class).
COLOUR_MODES = ("auto", "class", "confidence", "probability", "height")
#: Formats of the overlay that ``atomfinder detect`` writes (``--overlay-format``).
OVERLAY_FORMATS = ("png", "svg", "pdf")


@dataclass(frozen=True)
class OverlayStyle:
    """How :func:`atomfinder.detection.batch.detect_files` draws ``<stem>.<format>``.

    Attributes
    ----------
    format : {"png", "svg", "pdf"}
        File format (raster PNG, or vector SVG/PDF for a paper).
    dpi : int
        Resolution of a PNG (dots per inch of the figure; the vector formats embed
        the image at this resolution too).
    colour_by : {"auto", "class", "confidence", "probability", "height"}
        What the marker colour shows (:func:`overlay_plot`); ``"auto"`` is the class,
        or the height for a model with a height head.
    marker_size : float, optional
        Marker diameter in points (default: from the atom spacing).
    title : str, optional
        Figure title; ``None``: the number of atoms, model and pixel size; ``""``: none.
    """

    format: str = "png"
    dpi: int = 150
    colour_by: str = "auto"
    marker_size: float | None = None
    title: str | None = None

    def __post_init__(self) -> None:
        if self.format not in OVERLAY_FORMATS:
            raise ValueError(f"overlay format must be one of {', '.join(OVERLAY_FORMATS)}; got {self.format!r}")
        if not (isinstance(self.dpi, int) and 10 <= self.dpi <= 2400):
            raise ValueError(f"overlay dpi must be an integer in 10-2400; got {self.dpi!r}")
        if self.colour_by not in COLOUR_MODES:
            raise ValueError(f"colour_by must be one of {', '.join(COLOUR_MODES)}; got {self.colour_by!r}")
        if self.marker_size is not None and not (math.isfinite(self.marker_size) and self.marker_size > 0):
            raise ValueError(f"marker size must be a positive number of points; got {self.marker_size!r}")

    def figure_title(self, automatic: str) -> str | None:
        """The title to draw: the given one, ``automatic`` when none was given, nothing for ``""``."""
        if self.title is None:
            return automatic
        return self.title or None

    def options(self) -> dict[str, Any]:
        """Keywords of :func:`overlay_figure` for this style."""
        return {"dpi": self.dpi, "colour_by": self.colour_by, "marker_size": self.marker_size}

#: Marker shapes by class when the colour shows a number.
CLASS_MARKERS = ("o", "s", "^", "D", "v", "p", "h", "*")
#: Automatic marker diameters are kept in this range (points).
MARKER_PT_RANGE = (3.0, 16.0)
#: Markers smaller than this (points) are drawn as filled dots, which stay visible.
MIN_RING_PT = 4.5
#: Colour of atoms whose value (height, confidence) is unknown.
UNKNOWN_COLOUR = "#9e9e9e"
#: Jupyter thumbnail: width (inches), resolution and largest image side drawn.
THUMBNAIL_WIDTH_IN = 4.0
THUMBNAIL_DPI = 90
THUMBNAIL_MAX_PX = 512
#: Colours of the thumbnail's palette PNG (a quarter of the bytes of an RGBA one).
THUMBNAIL_COLOURS = 64


#: Images wider or taller than this (pixels) are block-averaged for display: the
#: saved figure has fewer pixels than that anyway, and drawing a 4096² overlay
#: takes less time (2.7 -> 2.0 s in one profile).
MAX_DISPLAY_PX = 2048


def _display_factor(shape: tuple[int, ...], max_px: int) -> int:
    return max(1, -(-max(shape) // max(1, int(max_px))))


def display_image(image: np.ndarray, max_px: int = MAX_DISPLAY_PX) -> np.ndarray:
    """The image block-averaged by the smallest integer factor that fits ``max_px``.

    Edge rows and columns that do not fill a block are dropped (at most
    ``factor - 1`` pixels, invisible at display size).
    """
    img = np.asarray(image)
    f = _display_factor(img.shape, max_px)
    if f <= 1:
        return img.astype(np.float64)
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    out = np.empty((h // f, w // f))
    for i in range(h // f):  # a strip of f rows at a time: no full-size copy of a large image
        out[i] = img[i * f : (i + 1) * f, :w].reshape(f, w // f, f).mean(axis=(0, 2), dtype=np.float64)
    return out


def _check_sampling(sampling_A: float) -> float:
    s = float(sampling_A)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"pixel size must be a positive number of Å/px, got {sampling_A}")
    return s


def _numeric(table: pd.DataFrame, column: str) -> np.ndarray | None:
    """A column as float (NA -> NaN; negative heights, "unknown", -> NaN), None if absent."""
    if column not in table.columns:
        return None
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    if column == "height":
        values = np.where(values >= 0, values, np.nan)
    return values


def marker_diameter_pt(xy_px: np.ndarray, sampling_A: float, points_per_px: float) -> float:
    """Automatic marker diameter (points): half the median nearest-neighbour distance.

    With fewer than two atoms a 1.1 Å ring is used. The result is clipped to
    :data:`MARKER_PT_RANGE`, so markers neither overlap their neighbours in a
    small image nor vanish in a large one (below :data:`MIN_RING_PT` they become
    filled dots).
    """
    xy = np.asarray(xy_px, dtype=np.float64).reshape(-1, 2)
    xy = xy[np.isfinite(xy).all(axis=1)]
    target_px = 1.1 / sampling_A
    if len(xy) >= 2:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(xy).query(xy, k=2)
        nn = float(np.median(d[:, 1]))
        if nn > 0:
            target_px = 0.5 * nn
    return float(np.clip(target_px * points_per_px, *MARKER_PT_RANGE))


@dataclass(frozen=True)
class _ColourScale:
    """How markers are coloured: by class, or by a column through a colour map."""

    mode: str  # "class", "confidence", "probability" or "height"
    column: str | None = None
    label: str = ""
    cmap: Any = None
    norm: Any = None
    ticks: Any = None
    vrange: tuple[float, float] | None = None

    def colours(self, table: pd.DataFrame) -> np.ndarray:
        from matplotlib.colors import to_rgba

        values = _numeric(table, self.column)
        rgba = np.asarray(self.cmap(self.norm(np.nan_to_num(values, nan=0.0))), dtype=float).reshape(-1, 4)
        rgba[~np.isfinite(values)] = to_rgba(UNKNOWN_COLOUR)
        return rgba

    def mappable(self) -> Any:
        from matplotlib.cm import ScalarMappable

        return ScalarMappable(norm=self.norm, cmap=self.cmap)


def _colour_scale(table: pd.DataFrame, colour_by: str, cmap: Any = None,
                  colour_range: tuple[float, float] | None = None) -> _ColourScale:
    import matplotlib as mpl
    from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize

    if colour_by not in COLOUR_MODES:
        raise ValueError(f"colour_by must be one of {', '.join(COLOUR_MODES)}; got {colour_by!r}")
    heights = _numeric(table, "height")
    mode = colour_by
    if mode == "auto":
        mode = "height" if heights is not None and np.isfinite(heights).any() else "class"
    if mode == "class":
        return _ColourScale("class")

    def colour_map(n: int | None) -> Any:
        if cmap is not None:
            base = mpl.colormaps[cmap] if isinstance(cmap, str) else cmap
            return base.resampled(n) if n else base
        # viridis without its darkest fifth: dark purple rings vanish on a dark image
        return ListedColormap(mpl.colormaps["viridis"](np.linspace(0.2, 1.0, n or 256)), name="viridis_bright")

    if mode == "height":
        if heights is None or (len(heights) and not np.isfinite(heights).any()):
            raise ValueError("colour_by='height' needs column heights (a model with a height head, e.g. gold); "
                             "this table has none")
        finite = heights[np.isfinite(heights)]
        if colour_range is not None:
            lo, hi = colour_range
        else:
            lo, hi = (finite.min(), finite.max()) if finite.size else (1.0, 1.0)
        lo, hi = int(math.floor(lo)), int(math.ceil(hi))
        hi = max(hi, lo)
        n = hi - lo + 1
        if n <= 24:
            step = max(1, math.ceil(n / 12))
            return _ColourScale("height", "height", "atoms per column", colour_map(n),
                                BoundaryNorm(np.arange(lo - 0.5, hi + 1.0), n), np.arange(lo, hi + 1, step),
                                (float(lo), float(hi)))
        return _ColourScale("height", "height", "atoms per column", colour_map(None), Normalize(lo, hi), None,
                            (float(lo), float(hi)))

    column, label = mode, {"confidence": "confidence", "probability": "detection probability"}[mode]
    if mode == "confidence":
        conf = _numeric(table, "confidence")
        if conf is None or (len(table) and not np.isfinite(conf).any()):
            column, label = "probability", "probability (model not calibrated)"
    if _numeric(table, column) is None:
        raise ValueError(f"colour_by={mode!r} needs a {column!r} column in the table")
    lo, hi = colour_range if colour_range is not None else (0.0, 1.0)
    return _ColourScale(mode, column, label, colour_map(None), Normalize(float(lo), float(hi)), None,
                        (float(lo), float(hi)))


def _colorbar(fig: Any, scale: _ColourScale, axes: Any, fraction: float = 0.046) -> Any:
    cb = fig.colorbar(scale.mappable(), ax=axes, fraction=fraction, pad=0.02, ticks=scale.ticks)
    cb.set_label(scale.label)
    return cb


def _draw_overlay(
    ax: Any,
    image: np.ndarray,
    table: pd.DataFrame,
    class_names: Sequence[str],
    sampling_A: float,
    scale: _ColourScale,
    *,
    image_sampling_A: float | None,
    marker_size: float | None,
    ring_width: float | None,
    outline: bool,
    height_labels: bool,
    scale_bar: bool,
    title: str | None,
    max_display_px: int,
    image_cmap: str,
    counts: bool = True,
) -> list[Any]:
    """Draw one overlay into ``ax``; return its legend handles."""
    from matplotlib import patheffects
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D

    from atomfinder._figures import CLASS_COLOURS, add_scale_bar, percentile_limits

    img = np.asarray(image)  # display_image makes the small float64 copy that is drawn
    if img.ndim != 2:
        raise ValueError(f"overlay needs an [H, W] image, got shape {img.shape}")
    r = 1.0 if image_sampling_A is None else _check_sampling(image_sampling_A) / sampling_A
    ih, iw = img.shape
    h, w = ih * r, iw * r  # the image's size in pixels of the table
    f = _display_factor(img.shape, max_display_px)
    shown = display_image(img, max_display_px)
    lo, hi = percentile_limits(shown)
    sh, sw = shown.shape
    ax.imshow(shown, cmap=image_cmap, vmin=lo, vmax=hi, interpolation="nearest",
              extent=(-0.5 * r, (sw * f - 0.5) * r, (sh * f - 0.5) * r, -0.5 * r))
    ax.set_xlim(-0.5 * r, (iw - 0.5) * r)
    ax.set_ylim((ih - 0.5) * r, -0.5 * r)
    ax.set_axis_off()

    box = ax.get_position()
    fig = ax.figure
    points_per_px = 72.0 * min(box.width * fig.get_figwidth() / w, box.height * fig.get_figheight() / h)
    x = table["x"].to_numpy(dtype=float) if len(table) else np.zeros(0)
    y = table["y"].to_numpy(dtype=float) if len(table) else np.zeros(0)
    d = float(marker_size) if marker_size is not None else marker_diameter_pt(np.column_stack([x, y]), sampling_A,
                                                                                points_per_px)
    filled = d < MIN_RING_PT
    lw = float(ring_width) if ring_width is not None else float(np.clip(0.1 * d, 0.8, 2.0))
    labels = table["label"].astype(str).to_numpy() if len(table) else np.zeros(0, dtype=str)
    names = [str(n) for n in class_names]
    names += sorted(set(labels) - set(names))  # labels the names do not list are still drawn
    colours = scale.colours(table) if scale.mode != "class" and len(table) else np.zeros((len(table), 4))
    handles = []
    for i, name in enumerate(names, start=1):
        sel = labels == name
        n_sel = int(sel.sum())
        if scale.mode == "class":
            marker = "o"
            legend_colour = CLASS_COLOURS[i % len(CLASS_COLOURS)]
            col = np.tile(to_rgba(legend_colour), (n_sel, 1))
        else:
            marker = CLASS_MARKERS[(i - 1) % len(CLASS_MARKERS)]
            legend_colour = "#404040"
            col = colours[sel]
        if n_sel:
            if filled:
                ax.scatter(x[sel], y[sel], s=d**2, marker=marker, facecolors=col, edgecolors="black",
                           linewidths=0.3, zorder=3)
            else:
                if outline:  # a dark halo keeps light rings visible on a bright image
                    ax.scatter(x[sel], y[sel], s=d**2, marker=marker, facecolors="none", edgecolors="black",
                               linewidths=lw + 0.8, alpha=0.5, zorder=2.9)
                ax.scatter(x[sel], y[sel], s=d**2, marker=marker, facecolors="none", edgecolors=col,
                           linewidths=lw, zorder=3)
        if n_sel or name in class_names:
            handles.append(Line2D([], [], marker=marker, linestyle="none",
                                  markerfacecolor=legend_colour if filled else "none",
                                  markeredgecolor=legend_colour, markeredgewidth=1.5, markersize=8,
                                  label=f"{name} ({n_sel})" if counts else name))
    if scale.mode != "class" and len(table):
        unknown = int((~np.isfinite(_numeric(table, scale.column))).sum())
        if unknown:
            what = "height" if scale.mode == "height" else scale.column
            handles.append(Line2D([], [], marker="o", linestyle="none", markerfacecolor="none",
                                  markeredgecolor=UNKNOWN_COLOUR, markeredgewidth=1.5, markersize=8,
                                  label=f"{what} unknown ({unknown})" if counts else f"{what} unknown"))

    heights = _numeric(table, "height")
    if height_labels and heights is not None and 0 < len(table) < MAX_HEIGHT_LABELS and np.isfinite(heights).any():
        offset = 0.6 * d / points_per_px
        stroke = [patheffects.withStroke(linewidth=1.5, foreground="black")]
        for xi, yi, z in zip(x, y, heights):
            if np.isfinite(z):
                ax.text(xi + offset, yi - offset, f"{int(z)}", color="white", fontsize=7, ha="left", va="bottom",
                        path_effects=stroke, zorder=4)
        handles.append(Line2D([], [], marker="$3$", linestyle="none", color="black", markersize=7,
                              label="number: atoms per column"))

    if scale_bar:
        add_scale_bar(ax, (h, w), sampling_A)
    if title:
        ax.set_title(title, fontsize=10)
    return handles


def overlay_plot(
    image: np.ndarray,
    table: pd.DataFrame,
    class_names: Sequence[str],
    sampling_A: float,
    *,
    title: str | None = None,
    colour_by: str = "auto",
    cmap: Any = None,
    colour_range: tuple[float, float] | None = None,
    marker_size: float | None = None,
    ring_width: float | None = None,
    outline: bool = True,
    height_labels: bool = False,
    legend: bool = True,
    colorbar: bool = True,
    scale_bar: bool = True,
    image_sampling_A: float | None = None,
    image_cmap: str = "gray",
    width_in: float = FIGURE_WIDTH_IN,
    max_display_px: int = MAX_DISPLAY_PX,
    ax: Any = None,
) -> Any:
    """The atoms drawn on their image, as a matplotlib Figure (nothing is written).

    The image is grey with a 1-99 % percentile stretch; a white scale bar of a round
    length (about a fifth of the width, labelled in Å, nm or µm) sits at the bottom
    left; the legend below the image lists each class with its count.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The micrograph (any linear scale), or any map to draw under the atoms.
    table : DataFrame
        Atom table with ``x``, ``y`` (pixels of ``image``), ``label`` (class name) and
        optionally ``confidence``, ``probability`` and ``height``.
    class_names : sequence of str
        All class names of the model, in class order (for colours and the legend).
    sampling_A : float
        Pixel size of the table's pixels in Å/px (for the scale bar).
    title : str, optional
        Figure title; none by default.
    colour_by : {"auto", "class", "confidence", "probability", "height"}
        What the marker colour shows. ``"class"``: one colour per class.
        ``"confidence"`` / ``"probability"``: a colour map over [0, 1] with a colour
        bar (an uncalibrated model, whose confidences are all NaN, falls back to the
        probability, and the colour bar says so). ``"height"``: atoms per column,
        one colour per integer with a colour bar "atoms per column". With a colour
        map the classes differ by marker shape. ``"auto"`` (default): ``"height"``
        when the table has heights, else ``"class"``. Atoms with no value are grey.
    cmap : str or Colormap, optional
        Colour map for the numbers (default: viridis without its darkest fifth).
    colour_range : (low, high), optional
        Range of the colour map (default: [0, 1] for confidence/probability, the
        table's heights for heights); give it to share a scale between figures.
    marker_size : float, optional
        Marker diameter in points (default: half the median nearest-neighbour
        distance, within :data:`MARKER_PT_RANGE`). Markers smaller than
        :data:`MIN_RING_PT` are filled dots, else rings.
    ring_width : float, optional
        Ring line width in points (default: a tenth of the diameter, 0.8 to 2.0).
    outline : bool
        Draw a thin dark halo under each ring (visible on bright and dark areas).
    height_labels : bool
        Also write each column's height as a number beside it (tables with fewer
        than :data:`MAX_HEIGHT_LABELS` rows), explained in the legend.
    legend : bool
        Draw the legend (below the image).
    colorbar : bool
        Draw the colour bar when the colour shows a number.
    scale_bar : bool
        Draw the scale bar.
    image_sampling_A : float, optional
        Pixel size of ``image`` when it differs from ``sampling_A`` (for instance a
        probability map at the model's sampling): the image is stretched onto the
        table's pixel grid.
    image_cmap : str
        Colour map of the image.
    width_in : float
        Figure width in inches (ignored with ``ax``).
    max_display_px : int
        Larger images are block-averaged to this size for drawing.
    ax : Axes, optional
        Draw into these axes (the colour bar is added to their figure).

    Returns
    -------
    matplotlib.figure.Figure
        Made outside pyplot: Jupyter shows it once, and :func:`overlay_figure`
        (or ``fig.savefig``) writes it.
    """
    from atomfinder._figures import new_figure

    sampling_A = _check_sampling(sampling_A)
    img = np.asarray(image)  # display_image makes the small float64 copy that is drawn
    if img.ndim != 2:
        raise ValueError(f"overlay needs an [H, W] image, got shape {img.shape}")
    scale = _colour_scale(table, colour_by, cmap, colour_range)
    if ax is None:
        h, w = img.shape
        fig = new_figure((width_in, max(2.0, width_in * h / w)))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    if colorbar and scale.mode != "class":
        _colorbar(fig, scale, ax)
    handles = _draw_overlay(ax, img, table, class_names, sampling_A, scale, image_sampling_A=image_sampling_A,
                            marker_size=marker_size, ring_width=ring_width, outline=outline,
                            height_labels=height_labels, scale_bar=scale_bar, title=title,
                            max_display_px=max_display_px, image_cmap=image_cmap)
    if legend and handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=min(4, len(handles)),
                  fontsize=8, frameon=False)
    return fig


def overlay_figure(
    image: np.ndarray,
    table: pd.DataFrame,
    class_names: Sequence[str],
    sampling_A: float,
    path: str | os.PathLike[str],
    title: str | None = None,
    *,
    dpi: int = 150,
    **options: Any,
) -> Path:
    """Draw the overlay (:func:`overlay_plot`) and save it; the suffix picks the format.

    Parameters
    ----------
    image, table, class_names, sampling_A
        As for :func:`overlay_plot`.
    path : path
        File to write atomically (:func:`atomfinder._figures.save_figure`):
        ``.png``, ``.svg``, ``.pdf`` (or another suffix of
        :data:`atomfinder._figures.FIGURE_FORMATS`).
    title : str, optional
        Figure title; none by default.
    dpi : int
        Resolution of a raster file (and of the image embedded in SVG/PDF).
    **options
        Keywords of :func:`overlay_plot` (``colour_by``, ``marker_size``,
        ``ring_width``, ``height_labels``, ``scale_bar``, ``legend``...).

    Returns
    -------
    Path
        The written file.
    """
    from atomfinder._figures import figure_format, save_figure

    figure_format(path)  # a bad suffix fails before drawing
    fig = overlay_plot(image, table, class_names, sampling_A, title=title, **options)
    return save_figure(fig, path, dpi=dpi)


# --------------------------------------------------------------------------- stacks


def _frames(images: Any) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) or hasattr(images, "shape"):
        arr = np.asarray(images)
        if arr.ndim == 2:
            return [arr]
        if arr.ndim == 3:
            return list(arr)
        raise ValueError(f"a stack of frames must be [N, H, W], got shape {arr.shape}")
    return [np.asarray(a) for a in images]


def _frame_table(table: pd.DataFrame, frame: int) -> pd.DataFrame:
    """The rows of one frame (all rows when the table has no ``frame`` column)."""
    return table[table["frame"] == frame] if "frame" in table.columns else table


def overlay_stack_plot(
    images: Any,
    table: pd.DataFrame,
    class_names: Sequence[str],
    sampling_A: float,
    *,
    frames: Sequence[int] | None = None,
    columns: int | None = None,
    panel_width_in: float = 3.2,
    title: str | None = None,
    frame_titles: bool = True,
    colour_by: str = "auto",
    cmap: Any = None,
    colour_range: tuple[float, float] | None = None,
    legend: bool = True,
    colorbar: bool = True,
    **options: Any,
) -> Any:
    """Every frame of a stack (or the chosen ``frames``) in a grid, with one colour scale.

    Parameters
    ----------
    images : ndarray [N, H, W] or sequence of [H, W]
        The frames.
    table : DataFrame
        Atom table with a ``frame`` column (rows of frame ``i`` drawn on
        ``images[i]``); without one, the same atoms are drawn on every frame.
    class_names, sampling_A
        As for :func:`overlay_plot`.
    frames : sequence of int, optional
        Frames to show (default: all).
    columns : int, optional
        Panels per row (default: about square).
    panel_width_in : float
        Width of one panel in inches.
    title : str, optional
        Figure title (none by default).
    frame_titles : bool
        Title each panel ``"frame i: n atoms"``.
    colour_by, cmap, colour_range, legend, colorbar
        As for :func:`overlay_plot`; the colour scale is that of the whole table,
        drawn once, as is the legend (class names without counts).
    **options
        Other keywords of :func:`overlay_plot` (``marker_size``, ``ring_width``,
        ``outline``, ``height_labels``, ``scale_bar``, ``image_sampling_A``,
        ``image_cmap``, ``max_display_px``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from atomfinder._figures import new_figure

    sampling_A = _check_sampling(sampling_A)
    stack = _frames(images)
    idx = list(range(len(stack))) if frames is None else [int(i) for i in frames]
    if not idx:
        raise ValueError("no frames to draw")
    for i in idx:
        if not 0 <= i < len(stack):
            raise ValueError(f"frame {i} is not in a stack of {len(stack)}")
    scale = _colour_scale(table, colour_by, cmap, colour_range)
    cols = max(1, min(len(idx), columns or math.ceil(math.sqrt(len(idx)))))
    rows = math.ceil(len(idx) / cols)
    h, w = stack[idx[0]].shape[:2]
    fig = new_figure((panel_width_in * cols, panel_width_in * rows * h / w + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    if colorbar and scale.mode != "class":
        _colorbar(fig, scale, axes.ravel().tolist(), fraction=0.03)
    opts = {"image_sampling_A": None, "marker_size": None, "ring_width": None, "outline": True,
            "height_labels": False, "scale_bar": True, "max_display_px": MAX_DISPLAY_PX, "image_cmap": "gray"}
    unknown = set(options) - set(opts)
    if unknown:
        raise TypeError(f"overlay_stack_plot() got unexpected keyword arguments {sorted(unknown)}")
    opts.update(options)
    handles: dict[str, Any] = {}
    for ax, i in zip(axes.flat, idx):
        t = _frame_table(table, i)
        for hnd in _draw_overlay(ax, stack[i], t, class_names, sampling_A, scale, counts=False,
                                 title=f"frame {i}: {len(t)} atoms" if frame_titles else None, **opts):
            handles.setdefault(hnd.get_label(), hnd)
    if legend and handles:
        fig.legend(handles=list(handles.values()), loc="lower center", ncol=min(4, len(handles)), fontsize=8,
                   frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def write_overlay_frames(
    images: Any,
    table: pd.DataFrame,
    class_names: Sequence[str],
    sampling_A: float,
    path: str | os.PathLike[str],
    *,
    layout: str = "files",
    frames: Sequence[int] | None = None,
    dpi: int = 150,
    title: str | None = None,
    colour_by: str = "auto",
    cmap: Any = None,
    colour_range: tuple[float, float] | None = None,
    **options: Any,
) -> list[Path]:
    """Write the overlay of every frame of a stack: one file per frame, or one grid.

    Parameters
    ----------
    images, table, class_names, sampling_A
        As for :func:`overlay_stack_plot`.
    path : path
        ``layout="grid"``: the file. ``layout="files"``: the pattern, frame ``i``
        going to ``<stem>_frame<i><suffix>`` (``o.png`` -> ``o_frame000.png``...). The
        suffix picks the format.
    layout : {"files", "grid"}
    frames : sequence of int, optional
        Frames to draw (default: all).
    dpi : int
        Resolution of raster files.
    title : str, optional
        Title (none by default); with ``"files"`` a ``{frame}`` in it becomes the
        frame number.
    colour_by, cmap, colour_range
        As for :func:`overlay_plot`; every file uses the colour scale of the whole table.
    **options
        Other keywords of :func:`overlay_plot` / :func:`overlay_stack_plot`.

    Returns
    -------
    list of Path
        The written files, in frame order.
    """
    from atomfinder._figures import figure_format, save_figure

    figure_format(path)
    path = Path(path)
    if layout == "grid":
        fig = overlay_stack_plot(images, table, class_names, sampling_A, frames=frames, title=title,
                                 colour_by=colour_by, cmap=cmap, colour_range=colour_range, **options)
        return [save_figure(fig, path, dpi=dpi)]
    if layout != "files":
        raise ValueError(f"layout must be 'files' or 'grid', got {layout!r}")
    stack = _frames(images)
    idx = list(range(len(stack))) if frames is None else [int(i) for i in frames]
    scale = _colour_scale(table, colour_by, cmap, colour_range)
    digits = max(3, len(str(len(stack) - 1)))
    written = []
    for i in idx:
        if not 0 <= i < len(stack):
            raise ValueError(f"frame {i} is not in a stack of {len(stack)}")
        target = path.with_name(f"{path.stem}_frame{i:0{digits}d}{path.suffix}")
        fig = overlay_plot(stack[i], _frame_table(table, i), class_names, sampling_A,
                           title=title.replace("{frame}", str(i)) if title else None, colour_by=scale.mode,
                           cmap=cmap, colour_range=scale.vrange, **options)
        written.append(save_figure(fig, target, dpi=dpi))
    return written


# --------------------------------------------------------------------------- API result


def detection_summary(table: pd.DataFrame, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a detection found, in numbers (the Jupyter summary of :class:`Detection`).

    Parameters
    ----------
    table : DataFrame
        Atom table of :func:`atomfinder.detect` (its ``.attrs`` may carry the
        provenance and validity).
    info : dict, optional
        The second value :func:`atomfinder.detect` returns.

    Returns
    -------
    dict
        ``atoms`` (total), ``per_class`` (name -> count, every class of the model),
        ``frames``, ``sampling_A``, ``model``, ``model_version``, ``threshold``,
        ``confidence_median`` (NaN for an uncalibrated model) and ``warnings``
        (validity lines).
    """
    info = info or {}
    prov = info.get("provenance") or table.attrs.get("provenance") or {}
    validity = info.get("validity") or table.attrs.get("validity") or {}
    model = prov.get("model") or {}
    names = [str(n) for n in (info.get("class_names") or ())]
    counts = table["label"].astype(str).value_counts() if "label" in table.columns and len(table) else pd.Series(
        dtype=int)
    per_class = {n: int(counts.get(n, 0)) for n in names}
    for extra in counts.index:
        per_class.setdefault(str(extra), int(counts[extra]))
    conf = _numeric(table, "confidence")
    median = float(np.nanmedian(conf)) if conf is not None and np.isfinite(conf).any() else float("nan")
    if "frame" in table.columns:
        frames = int(prov.get("frames") or (int(table["frame"].max()) + 1 if len(table) else 1))
    else:
        frames = 1
    sampling = info.get("sampling_A", prov.get("sampling_A"))
    return {
        "atoms": int(len(table)),
        "per_class": per_class,
        "frames": frames,
        "sampling_A": None if sampling is None else float(sampling),
        "model": model.get("name"),
        "model_version": model.get("version"),
        "threshold": prov.get("threshold"),
        "confidence_median": median,
        "warnings": [str(w) for w in validity.get("warnings", ())],
    }


def plot_detection(
    table: pd.DataFrame,
    info: dict[str, Any],
    image: np.ndarray | None = None,
    *,
    frame: int | str | None = 0,
    **options: Any,
) -> Any:
    """The overlay Figure of what :func:`atomfinder.detect` returned.

    Parameters
    ----------
    table, info
        The two values :func:`atomfinder.detect` returns.
    image : ndarray, optional
        The input image ``[H, W]`` (``[N, H, W]`` for a stack; the first frame of a
        focal series is used). Without it the atom probability map
        (``1 - probabilities[0]``, at the model's sampling) is drawn under the atoms.
    frame : int or "all"
        Frame of a stack to draw, or ``"all"`` (or None) for a grid of every frame
        (:func:`overlay_stack_plot`).
    **options
        Keywords of :func:`overlay_plot` (or :func:`overlay_stack_plot`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    sampling = _check_sampling(info.get("sampling_A", (table.attrs.get("provenance") or {}).get("sampling_A", 0)))
    names = tuple(info.get("class_names") or sorted(set(table["label"].astype(str))))
    stacked = "frame" in table.columns
    if image is not None:
        img = np.asarray(image, dtype=np.float64)
        if img.ndim == 3 and not stacked:
            img = img[0]  # focal series: positions are in the first frame's pixels
        img_sampling = None
    else:
        probs = info.get("probabilities")
        if probs is None:
            raise ValueError("no image and no probability maps to draw under the atoms: pass image=")
        probs = np.asarray(probs)
        img = 1.0 - (probs[:, 0] if probs.ndim == 4 else probs[0])
        img_sampling = float(info["model_sampling_A"])
    options.setdefault("image_sampling_A", img_sampling)
    if stacked and (frame is None or frame == "all"):
        n = img.shape[0] if img.ndim == 3 else detection_summary(table, info)["frames"]
        stack = img if img.ndim == 3 else [img] * n
        return overlay_stack_plot(stack, table, names, sampling, **options)
    if stacked:
        frame = int(frame or 0)
        rows = _frame_table(table, frame)
        if img.ndim == 3:
            if not 0 <= frame < img.shape[0]:
                raise ValueError(f"frame {frame} is not in a stack of {img.shape[0]}")
            img = img[frame]
    else:
        if frame not in (0, None, "all"):
            raise ValueError(f"frame {frame!r}: the detection is of one image, not of a stack of frames")
        rows = table
    if image is not None and len(rows):
        height, width = img.shape[-2:]
        if rows["x"].max() > width - 0.5 + 1e-6 or rows["y"].max() > height - 0.5 + 1e-6:
            raise ValueError(f"image= of {height}x{width} pixels is smaller than the one the atoms were found in "
                             "(atoms lie outside it); pass the whole input image")
    return overlay_plot(img, rows, names, sampling, **options)


def _fmt(value: Any, spec: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    return format(v, spec) if math.isfinite(v) else "—"


class Detection(tuple):
    """``(table, info)`` as :func:`atomfinder.detect` returns it, that also draws itself.

    It *is* the 2-tuple (``table, info = detection`` still works); in addition:

    * :meth:`plot` returns the overlay as a matplotlib Figure,
    * :meth:`summary` returns the numbers (:func:`detection_summary`),
    * in Jupyter it shows an overlay thumbnail (a small PNG, inline) beside a summary:
      atoms per class, pixel size, model and version, threshold, median confidence,
      validity warnings.

    Parameters
    ----------
    table : DataFrame
    info : dict
    image : ndarray, optional
        The input image (``[H, W]``, or ``[N, H, W]``), drawn under the atoms;
        without it the atom probability map is.
    signal_calibration : SignalCalibration, optional
        The axes of the HyperSpy signal the atoms were found in
        (:func:`atomfinder.detection.signals.signal_calibration`), which
        :meth:`to_signal` gives the results back in.
    """

    image: np.ndarray | None
    signal_calibration: Any

    def __new__(cls, table: pd.DataFrame, info: dict[str, Any], image: np.ndarray | None = None,
                signal_calibration: Any = None) -> "Detection":
        self = super().__new__(cls, (table, info))
        self.image = None if image is None else np.asarray(image)
        self.signal_calibration = signal_calibration
        return self

    def __getnewargs__(self) -> tuple[Any, Any]:  # pickling (the image travels in __dict__)
        return (self[0], self[1])

    @property
    def table(self) -> pd.DataFrame:
        """The atom table."""
        return self[0]

    @property
    def info(self) -> dict[str, Any]:
        """Maps, pixel sizes, class names, provenance and validity."""
        return self[1]

    def summary(self) -> dict[str, Any]:
        """:func:`detection_summary` of this detection."""
        return detection_summary(self.table, self.info)

    def plot(self, image: np.ndarray | None = None, *, frame: int | str | None = 0, **options: Any) -> Any:
        """The overlay as a matplotlib Figure (:func:`plot_detection`; ``frame="all"``: a grid)."""
        return plot_detection(self.table, self.info, self.image if image is None else image, frame=frame,
                              **options)

    def to_signal(self, signal: Any = None, **options: Any) -> Any:
        """The image as a HyperSpy ``Signal2D`` with calibrated axes and one marker set per
        class (:func:`atomfinder.detection.signals.to_signal`; needs HyperSpy)."""
        from atomfinder.detection.signals import to_signal

        return to_signal(self, signal, **options)

    def probabilities_signal(self, signal: Any = None, **options: Any) -> Any:
        """The probability maps as a calibrated HyperSpy ``Signal2D``, or None
        (:func:`atomfinder.detection.signals.probabilities_signal`; needs HyperSpy)."""
        from atomfinder.detection.signals import probabilities_signal

        return probabilities_signal(self, signal, **options)

    def to_atomap(self, signal: Any = None, **options: Any) -> Any:
        """An Atomap ``Sublattice`` of the atoms (:func:`atomfinder.detection.signals.to_atomap`;
        needs Atomap); default image: the detection's own, calibrated in Å."""
        from atomfinder.detection.signals import to_atomap

        return to_atomap(self.table, self.image if signal is None else signal, **options)

    def thumbnail_png(self, width_in: float = THUMBNAIL_WIDTH_IN, dpi: int = THUMBNAIL_DPI) -> bytes:
        """A small PNG of the overlay (first frame), without legend: 64-colour palette, tens of kB."""
        from PIL import Image

        fig = self.plot(frame=0, width_in=width_in, legend=False, max_display_px=THUMBNAIL_MAX_PX)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        buf.seek(0)
        with Image.open(buf) as im:
            small = im.convert("RGB").quantize(colors=THUMBNAIL_COLOURS, dither=Image.Dither.NONE)
        out = io.BytesIO()
        small.save(out, format="PNG", optimize=True)
        return out.getvalue()

    def _repr_html_(self) -> str:
        s = self.summary()
        try:
            data = base64.b64encode(self.thumbnail_png()).decode("ascii")
            picture = (f'<img src="data:image/png;base64,{data}" alt="atoms found" '
                       f'style="max-width:{round(THUMBNAIL_WIDTH_IN * THUMBNAIL_DPI)}px"/>')
        except Exception as exc:  # a summary without a picture beats no summary
            picture = f"<p>(no thumbnail: {html.escape(str(exc))})</p>"
        rows = [("atoms", str(s["atoms"]) + (f" in {s['frames']} frames" if s["frames"] > 1 else ""))]
        rows += [(f"&nbsp;&nbsp;{html.escape(name)}", str(n)) for name, n in s["per_class"].items()]
        rows.append(("pixel size", f"{_fmt(s['sampling_A'], '.4g')} Å/px"))
        model = " ".join(str(v) for v in (s["model"], s["model_version"]) if v is not None) or "—"
        rows.append(("model", html.escape(model)))
        rows.append(("threshold", _fmt(s["threshold"], ".3g")))
        med = s["confidence_median"]
        rows.append(("median confidence", _fmt(med, ".3f") if math.isfinite(med) else "— (model not calibrated)"))
        if s["warnings"]:
            rows.append(("validity", "<br/>".join(html.escape(w) for w in s["warnings"])))
        else:
            rows.append(("validity", "all checks passed"))
        if s["frames"] > 1:
            rows.append(("shown", f"frame 0 of {s['frames']}"))
        body = "".join(f'<tr><th style="text-align:left">{k}</th><td style="text-align:left">{v}</td></tr>'
                       for k, v in rows)
        return (f'<div style="display:flex;gap:1em;align-items:flex-start">{picture}'
                f"<table>{body}</table></div>")

    def __repr__(self) -> str:
        s = self.summary()
        classes = ", ".join(f"{k} {v}" for k, v in s["per_class"].items())
        return (f"Detection({s['atoms']} atoms ({classes}), {_fmt(s['sampling_A'], '.4g')} Å/px, "
                f"model {s['model']} {s['model_version']}, threshold {_fmt(s['threshold'], '.3g')})")
