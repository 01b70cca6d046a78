"""Figures people would rather look at than read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from atomfinder._figures import CLASS_COLOURS, add_scale_bar, new_figure, percentile_limits, plt, save_figure

__all__ = ["CLASS_COLOURS", "plt", "preview_grid", "save_figure"]


def preview_grid(
    images: Sequence[np.ndarray],
    positions_px: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    class_names: Sequence[str],
    path: Path | str,
    titles: Sequence[str] | None = None,
    columns: int = 4,
    *,
    sampling_A: float | Sequence[float] | None = None,
    dpi: int = 150,
) -> Path:
    """A grid of images with their labelled sites overlaid, coloured by class.

    Parameters
    ----------
    images : sequence of ndarray [rows, cols]
        Images to show (grey, each scaled to its 1-99 % range).
    positions_px : sequence of ndarray (n, 2)
        Site positions ``(x, y)`` in pixels per image.
    labels : sequence of ndarray (n,)
        1-based classes per site.
    class_names : sequence of str
        Names for the legend.
    path : path
        File to write (the suffix picks the format: ``.png``, ``.svg``, ``.pdf``).
    titles : sequence of str, optional
        One title per image.
    columns : int
        Panels per row.
    sampling_A : float or sequence of float, optional
        Pixel size in Å/px (one for all, or one per image): each panel gets a scale
        bar (Å or nm). None: no scale bar.
    dpi : int
        Resolution of a raster file.
    """
    n = len(images)
    columns = max(1, min(columns, n))
    rows = int(np.ceil(n / columns))
    if sampling_A is None or np.ndim(sampling_A) == 0:
        samplings = [sampling_A] * n
    else:
        samplings = [float(v) for v in sampling_A]
        if len(samplings) != n:
            raise ValueError(f"{len(samplings)} pixel sizes for {n} images")
    fig = new_figure((3.2 * columns, 3.4 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (img, xy, lab) in enumerate(zip(images, positions_px, labels)):
        ax = axes.flat[i]
        lo, hi = percentile_limits(img)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        for c in np.unique(lab):
            sel = lab == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=9, facecolors="none",
                       edgecolors=CLASS_COLOURS[int(c) % len(CLASS_COLOURS)],
                       label=class_names[int(c) - 1], linewidths=0.6, alpha=0.9)
        ax.set_xlim(-0.5, img.shape[1] - 0.5)
        ax.set_ylim(img.shape[0] - 0.5, -0.5)
        if samplings[i] is not None:
            add_scale_bar(ax, img.shape[:2], float(samplings[i]), fontsize=7)
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    handles = {}
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(l, h)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), markerscale=3, frameon=False)
    return save_figure(fig, path, dpi=dpi)
