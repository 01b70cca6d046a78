"""Training targets from site positions: per-class maps and column-height maps.

Targets live on the image's pixel grid: ``(x, y)`` = (column, row), pixel
centres at integers. Channel 0 is background; channel ``c`` is class ``c``.
"""

from __future__ import annotations

import numpy as np


def class_maps(
    positions_px: np.ndarray,
    labels: np.ndarray,
    shape: tuple[int, int],
    n_classes: int,
    radius_px: float,
    kind: str = "disk",
) -> np.ndarray:
    """Per-class target maps.

    Parameters
    ----------
    positions_px : ndarray, shape (n, 2)
        Site positions ``(x, y)`` in pixels (sub-pixel allowed; sites outside the
        image still paint the pixels they reach).
    labels : ndarray of int, shape (n,)
        Class of each site, 1..n_classes.
    shape : (int, int)
        ``(rows, cols)`` of the image.
    n_classes : int
        Number of site classes (the maps have ``n_classes + 1`` channels).
    radius_px : float
        Disk radius, or the Gaussian's standard deviation, in pixels.
    kind : {"disk", "gaussian"}
        Hard disks (one-hot maps) or Gaussians (soft maps, peak 1).

    Returns
    -------
    ndarray, float32, shape (n_classes + 1, rows, cols)
        Channel 0 is ``1 - sum`` of the class channels; where sites of two
        classes overlap, the nearer site wins, so channels sum to 1.
    """
    if kind not in ("disk", "gaussian"):
        raise ValueError(f"unknown label kind {kind!r}: use 'disk' or 'gaussian'")
    rows, cols = shape
    out = np.zeros((n_classes + 1, rows, cols), np.float32)
    best_d2, best_label = nearest_site(positions_px, labels, shape, radius_px if kind == "disk" else 3.0 * radius_px)
    hit = np.isfinite(best_d2)
    if kind == "disk":
        value = hit.astype(np.float32)
    else:
        value = np.where(hit, np.exp(-0.5 * best_d2 / radius_px**2), 0.0).astype(np.float32)
    for c in range(1, n_classes + 1):
        out[c] = np.where(best_label == c, value, 0.0)
    out[0] = 1.0 - out[1:].sum(axis=0)
    return out


def nearest_site(
    positions_px: np.ndarray, labels: np.ndarray, shape: tuple[int, int], reach_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance to, and label of, the nearest site within ``reach_px`` of each pixel.

    Returns ``(d2, label)`` maps; pixels out of reach have ``d2 = inf`` and label 0.
    Vectorised over all sites at once: each site paints a small window, and
    where windows overlap the nearest site wins.
    """
    rows, cols = shape
    best_d2 = np.full(rows * cols, np.inf, np.float32)
    best_label = np.zeros(rows * cols, np.int32)
    xy = np.asarray(positions_px, float).reshape(-1, 2)
    if len(xy) == 0:
        return best_d2.reshape(shape), best_label.reshape(shape)
    r = int(np.ceil(reach_px)) + 1
    off = np.arange(-r, r + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    px = np.rint(xy[:, 0])[:, None] + ox.ravel()[None]  # (n, window)
    py = np.rint(xy[:, 1])[:, None] + oy.ravel()[None]
    d2 = (px - xy[:, :1]) ** 2 + (py - xy[:, 1:]) ** 2
    ok = (d2 <= reach_px**2) & (px >= 0) & (px < cols) & (py >= 0) & (py < rows)
    flat = (py * cols + px)[ok].astype(np.int64)
    d2 = d2[ok]
    lab = np.broadcast_to(np.asarray(labels)[:, None], ok.shape)[ok]
    order = np.argsort(-d2, kind="stable")  # farthest first, so the nearest is written last
    best_d2[flat[order]] = d2[order]
    best_label[flat[order]] = lab[order]
    return best_d2.reshape(shape), best_label.reshape(shape)


def height_map(
    positions_px: np.ndarray,
    heights: np.ndarray,
    shape: tuple[int, int],
    radius_px: float,
) -> np.ndarray:
    """Column heights painted as disks (0 elsewhere).

    Parameters
    ----------
    positions_px : ndarray, shape (n, 2)
        Column positions ``(x, y)`` in pixels.
    heights : ndarray of int, shape (n,)
        Atoms per column.
    shape : (int, int)
        ``(rows, cols)``.
    radius_px : float
        Disk radius (pixels).

    Returns
    -------
    ndarray, uint8, shape (1, rows, cols)
    """
    # label each site by its index + 1, then look the nearest site's height up
    _, nearest = nearest_site(positions_px, np.arange(1, len(heights) + 1), shape, radius_px)
    lookup = np.concatenate([[0], np.clip(np.asarray(heights), 0, 255)]).astype(np.uint8)
    return lookup[nearest][None]
