"""Overlay of detected atoms on their micrograph, with a legend and a scale bar.

Positions follow DESIGN.md (``x`` = column, ``y`` = row, pixel centres at integers),
so they are drawn directly in the image's pixel coordinates.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["overlay_figure", "scale_bar_length_A", "scale_bar_label"]

#: Most columns whose heights are written as text on the overlay.
MAX_HEIGHT_LABELS = 300
#: Figure width in inches.
FIGURE_WIDTH_IN = 8.0


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


#: Images wider or taller than this (pixels) are block-averaged for display: the
#: saved figure has fewer pixels than that anyway, and drawing a 4096² overlay
#: takes less time (2.7 -> 2.0 s in one profile).
MAX_DISPLAY_PX = 2048


def display_image(image: np.ndarray, max_px: int = MAX_DISPLAY_PX) -> np.ndarray:
    """The image block-averaged by the smallest integer factor that fits ``max_px``.

    Edge rows and columns that do not fill a block are dropped (at most
    ``factor - 1`` pixels, invisible at display size).
    """
    img = np.asarray(image, dtype=np.float64)
    f = -(-max(img.shape) // max_px)
    if f <= 1:
        return img
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def _stretch(image: np.ndarray) -> tuple[float, float]:
    """Grey limits: the 1 and 99 % percentiles (widened if they coincide)."""
    lo, hi = np.percentile(image[np.isfinite(image)], [1, 99])
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _draw_scale_bar(ax, shape: tuple[int, int], sampling_A: float) -> None:
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    h, w = shape
    length_A = scale_bar_length_A(w * sampling_A)
    length_px = length_A / sampling_A
    thick = max(1.0, 0.012 * h)
    x0 = 0.04 * w - 0.5
    y0 = h - 0.5 - 0.05 * h - thick
    outline = [patheffects.withStroke(linewidth=2.0, foreground="black")]
    bar = Rectangle((x0, y0), length_px, thick, facecolor="white", edgecolor="black", linewidth=0.6, zorder=5)
    ax.add_patch(bar)
    ax.text(x0 + length_px / 2, y0 - 0.015 * h, scale_bar_label(length_A), color="white", ha="center",
            va="bottom", fontsize=10, zorder=6, path_effects=outline)


def overlay_figure(
    image: np.ndarray,
    table: pd.DataFrame,
    class_names: Sequence[str],
    sampling_A: float,
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Draw atoms as rings coloured by class on the image and save it as a PNG.

    The image is grey with a 1-99 % percentile stretch; the legend lists each class
    with its count; a white scale bar of a round length (about a fifth of the width)
    sits at the bottom left. When the table has column heights (gold-like models) and
    fewer than :data:`MAX_HEIGHT_LABELS` rows, each height is written beside its ring.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The micrograph (any linear scale).
    table : DataFrame
        Atom table with ``x``, ``y`` (pixels of ``image``), ``label`` (class name) and
        optionally ``height``.
    class_names : sequence of str
        All class names of the model, in class order (for colours and the legend).
    sampling_A : float
        Pixel size of ``image`` in Å/px (for the scale bar).
    path : path
        PNG to write (atomically, via :func:`atomfinder._figures.save_figure`).
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        The written file.
    """
    from matplotlib.lines import Line2D

    from atomfinder._figures import CLASS_COLOURS, plt, save_figure

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"overlay needs an [H, W] image, got shape {img.shape}")
    h, w = img.shape
    fig_h = FIGURE_WIDTH_IN * h / w
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_IN, max(2.0, fig_h)))
    shown = display_image(img)
    lo, hi = _stretch(shown)
    ax.imshow(shown, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()

    points_per_px = FIGURE_WIDTH_IN * 72.0 / w
    diameter_pt = float(np.clip(0.55 / sampling_A * points_per_px, 2.5, 9.0))  # ~0.55 Å rings: the atom stays visible
    labels = table["label"].astype(str).to_numpy() if len(table) else np.zeros(0, dtype=str)
    handles = []
    for i, name in enumerate(class_names, start=1):
        colour = CLASS_COLOURS[i % len(CLASS_COLOURS)]
        sel = labels == name
        if sel.any():
            ax.scatter(table["x"].to_numpy()[sel], table["y"].to_numpy()[sel], s=diameter_pt**2,
                       facecolors="none", edgecolors=colour, linewidths=0.6, alpha=0.9)
        handles.append(Line2D([], [], marker="o", linestyle="none", markerfacecolor="none",
                              markeredgecolor=colour, markersize=8, label=f"{name} ({int(sel.sum())})"))
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)

    if "height" in table and 0 < len(table) < MAX_HEIGHT_LABELS:
        heights = pd.to_numeric(table["height"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        offset = 0.6 * diameter_pt / points_per_px
        for x, y, z in zip(table["x"].to_numpy(), table["y"].to_numpy(), heights):
            if np.isfinite(z):
                ax.text(x + offset, y - offset, f"{int(z)}", color="yellow", fontsize=6, ha="left", va="bottom")

    _draw_scale_bar(ax, (h, w), sampling_A)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
