"""Atoms as peaks of a probability map, refined to sub-pixel positions.

Coordinates follow DESIGN.md: ``x`` = column index, ``y`` = row index, pixel centres
at integers, origin at the centre of the top-left pixel. This module needs only
NumPy, SciPy, scikit-image and pandas.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.ndimage import label, maximum_filter
from scipy.spatial import cKDTree
from skimage.morphology import disk

from atomfinder.detection.sublattice import Honeycomb, allowed_classes, sublattice_of

#: Columns of the atom table (DESIGN.md).
TABLE_COLUMNS = (
    "x", "y", "x_angstrom", "y_angstrom", "label", "confidence", "sigma_angstrom", "probability", "height",
)
_CHUNK = 2048


@dataclass(frozen=True)
class AtomTable:
    """Detected atoms (or atomic columns) as parallel arrays.

    Attributes
    ----------
    x, y : ndarray of float, shape (n,)
        Positions in pixels (x = column, y = row).
    label : ndarray of int, shape (n,)
        1-based class index (0, the background, never appears).
    probability : ndarray of float, shape (n,)
        Detection score in [0, 1] (the atom probability at the peak for networks).
    height : ndarray of int, shape (n,)
        Atoms per column, or -1 where unknown.
    confidence : ndarray of float, shape (n,), optional
        Calibrated probability that the detection is a real atom of its class
        (:mod:`atomfinder.detection.confidence`); NaN where not calibrated.
    sigma_A : ndarray of float, shape (n,), optional
        1-σ error of each coordinate in Å; NaN where not calibrated.
    """

    x: np.ndarray
    y: np.ndarray
    label: np.ndarray
    probability: np.ndarray
    height: np.ndarray
    confidence: np.ndarray | None = None
    sigma_A: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", np.asarray(self.x, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "y", np.asarray(self.y, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "label", np.asarray(self.label, dtype=np.int64).reshape(-1))
        object.__setattr__(
            self, "probability", np.asarray(self.probability, dtype=np.float64).reshape(-1)
        )
        object.__setattr__(self, "height", np.asarray(self.height, dtype=np.int64).reshape(-1))
        n = len(self.x)
        for name in ("confidence", "sigma_A"):
            v = getattr(self, name)
            v = np.full(n, np.nan) if v is None else np.asarray(v, dtype=np.float64).reshape(-1)
            object.__setattr__(self, name, v)
        if not all(len(a) == n for a in (self.y, self.label, self.probability, self.height,
                                          self.confidence, self.sigma_A)):
            raise ValueError("AtomTable arrays must all have the same length")

    def __len__(self) -> int:
        return len(self.x)

    @classmethod
    def empty(cls) -> "AtomTable":
        """A table with no atoms."""
        return cls(np.zeros(0), np.zeros(0), np.zeros(0, int), np.zeros(0), np.zeros(0, int))

    def subset(self, keep: np.ndarray) -> "AtomTable":
        """The rows where ``keep`` (a boolean mask or an index array) selects."""
        return AtomTable(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    def plot(self, image: np.ndarray, sampling_A: float, class_names: Sequence[str] | None = None,
             **options):
        """The atoms drawn on ``image`` as a matplotlib Figure (nothing is written).

        Parameters
        ----------
        image : ndarray, shape (H, W)
            The image the positions are in pixels of.
        sampling_A : float
            Pixel size in Å/px (scale bar).
        class_names : sequence of str, optional
            Names of classes ``1..k-1`` (default ``"class 1"``, ``"class 2"``...).
        **options
            Keywords of :func:`atomfinder.detection.overlay.overlay_plot`
            (``colour_by``, ``marker_size``, ``title``, ``scale_bar``...).

        Returns
        -------
        matplotlib.figure.Figure
        """
        from atomfinder.detection.overlay import overlay_plot

        if class_names is None:
            class_names = [f"class {i}" for i in range(1, int(self.label.max(initial=0)) + 1)]
        names = tuple(str(n) for n in class_names)
        return overlay_plot(image, self.to_frame(names, sampling_A), names, sampling_A, **options)

    @property
    def xy(self) -> np.ndarray:
        """Positions as an ``(n, 2)`` array of ``(x, y)`` in pixels."""
        return np.column_stack([self.x, self.y])

    def to_frame(self, class_names: Sequence[str], sampling_A: float) -> pd.DataFrame:
        """The table as a DataFrame with the DESIGN.md columns.

        Parameters
        ----------
        class_names : sequence of str
            Names of classes ``1..k-1`` (``label`` ``i`` becomes ``class_names[i-1]``).
        sampling_A : float
            Pixel size in Å/pixel (for ``x_angstrom`` and ``y_angstrom``).

        Returns
        -------
        DataFrame
            Columns ``x, y, x_angstrom, y_angstrom, label, confidence,
            sigma_angstrom, probability, height``; ``height`` is a nullable integer
            column, NA (written empty to CSV) where unknown; ``confidence`` and
            ``sigma_angstrom`` are NaN (empty in CSV) for an uncalibrated model.
        """
        names = np.asarray(list(class_names), dtype=object)
        if len(self) and (self.label.min() < 1 or self.label.max() > len(names)):
            raise ValueError(f"labels must be in 1..{len(names)} for class names {list(names)}")
        height = pd.array(self.height, dtype="Int64")
        height[self.height < 0] = pd.NA
        return pd.DataFrame(
            {
                "x": self.x,
                "y": self.y,
                "x_angstrom": self.x * sampling_A,
                "y_angstrom": self.y * sampling_A,
                "label": names[self.label - 1] if len(self) else np.zeros(0, dtype=str),  # same dtype when empty
                "confidence": self.confidence,
                "sigma_angstrom": self.sigma_A,
                "probability": self.probability,
                "height": height,
            },
            columns=list(TABLE_COLUMNS),
        )


def refine_subpixel(
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    radius_px: float,
    n_iter: int = 10,
    tol_px: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """Refine peak positions by an iterated, intensity-weighted centroid.

    At each iteration the centroid of ``max(image, 0)`` is taken inside an
    anti-aliased disk of radius ``radius_px`` centred at the current estimate, which
    then moves to that centroid. A peak symmetric about its centre is a fixed point,
    so Gaussian blobs and flat-topped (saturated) disks are both located without the
    bias of a window centred on the integer maximum. Moves are limited to
    ``radius_px`` from the start.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Map whose peaks are refined (non-negative where it matters).
    rows, cols : ndarray of int, shape (n,)
        Integer peak positions.
    radius_px : float
        Window radius in pixels (about half the smallest peak separation).
    n_iter : int
        Largest number of centroid iterations.
    tol_px : float
        An estimate that moves by less than this (pixels) is final.

    Returns
    -------
    (y, x) : ndarrays of float, shape (n,)
        Refined row and column positions in pixels.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if len(rows) == 0:
        return np.zeros(0), np.zeros(0)
    r = max(float(radius_px), 1.0)
    reach = int(np.ceil(r + 1.0))  # window half-size around the rounded estimate
    pad = int(np.ceil(r + 0.5)) + reach  # the estimate stays within r of its start
    img = np.pad(np.asarray(image, dtype=np.float32), pad, mode="constant")
    np.maximum(img, 0.0, out=img)  # in place: one padded copy of a large map, not two
    width = img.shape[1]
    offs = np.arange(-reach, reach + 1)
    gy, gx = (g.ravel().astype(np.float32) for g in np.meshgrid(offs, offs, indexing="ij"))
    flat_offsets = (offs[:, None] * width + offs[None, :]).ravel()
    dy = np.zeros(len(rows))
    dx = np.zeros(len(rows))
    flat = img.ravel()
    active = np.arange(len(rows))
    for _ in range(n_iter):
        still = []
        for part in np.array_split(active, -(-len(active) // _CHUNK)):  # chunks bound memory
            iy = np.rint(dy[part])
            ix = np.rint(dx[part])
            base = (rows[part] + pad + iy.astype(np.int64)) * width + cols[part] + pad + ix.astype(np.int64)
            patch = flat[base[:, None] + flat_offsets[None, :]]  # [n, P*P] around the rounded estimate
            # Weights from the exact sub-pixel distance to the estimate.
            fy = (dy[part] - iy).astype(np.float32)[:, None]
            fx = (dx[part] - ix).astype(np.float32)[:, None]
            w = np.clip(np.float32(r + 0.5) - np.sqrt((gy - fy) ** 2 + (gx - fx) ** 2), 0.0, 1.0) * patch
            s = w.sum(axis=1, dtype=np.float64)
            ok = s > 0
            safe = np.where(ok, s, 1.0)
            ny = np.where(ok, iy + (w @ gy) / safe, dy[part])
            nx = np.where(ok, ix + (w @ gx) / safe, dx[part])
            step = np.hypot(ny, nx)
            scale = np.where(step > r, r / np.maximum(step, 1e-12), 1.0)
            ny, nx = ny * scale, nx * scale
            moving = np.hypot(ny - dy[part], nx - dx[part]) >= tol_px
            dy[part], dx[part] = ny, nx
            still.append(part[moving])
        active = np.concatenate(still)
        if len(active) == 0:
            break
    return rows + dy, cols + dx


def enforce_spacing(xy: np.ndarray, score: np.ndarray, min_distance: float) -> np.ndarray:
    """Indices of a subset of points no two of which are closer than ``min_distance``.

    Greedy by descending ``score``: a point is kept unless a kept point lies within
    less than ``min_distance`` of it. Returned indices are sorted by descending score.
    """
    order = np.argsort(-np.asarray(score), kind="stable")
    if len(order) == 0 or min_distance <= 0:
        return order
    tree = cKDTree(xy)
    neighbours = tree.query_ball_point(xy, r=min_distance)
    kept = []
    removed = np.zeros(len(xy), dtype=bool)
    for i in order:
        if removed[i]:
            continue
        kept.append(i)
        for j in neighbours[i]:
            if j != i and np.hypot(*(xy[j] - xy[i])) < min_distance:
                removed[j] = True
    return np.asarray(kept, dtype=np.int64)


def local_maxima(image: np.ndarray, radius_px: float, threshold: float) -> np.ndarray:
    """Integer local maxima: pixels that are the largest in the disk of ``radius_px``.

    A pixel is a maximum when it equals the maximum of the disk of radius
    ``floor(radius_px)`` around it and exceeds ``threshold``. A plateau of equal
    maxima (a saturated peak) gives one pixel, its first in row-major order.
    Maxima are *not* thinned to a minimum spacing here: refine them
    (:func:`refine_subpixel`) and then thin with :func:`enforce_spacing`, which is
    what :func:`find_atoms` does.

    Returns
    -------
    ndarray of int, shape (n, 2)
        ``(row, col)`` of the maxima, highest first.
    """
    img = np.asarray(image)
    if img.dtype != np.float32:
        img = img.astype(np.float64)
    d = max(1, int(np.floor(radius_px)))
    peak = (img == maximum_filter(img, footprint=disk(d).astype(bool), mode="nearest")) & (img > threshold)
    labels, n = label(peak, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    # First pixel of each plateau (labels are numbered in row-major order of first pixels).
    flat = np.flatnonzero(labels)
    first = flat[np.unique(labels.ravel()[flat], return_index=True)[1]]
    coords = np.column_stack(np.unravel_index(first, img.shape)).astype(np.int64)
    order = np.argsort(-img[coords[:, 0], coords[:, 1]], kind="stable")
    return coords[order]


def candidate_radius_px(min_distance_px: float) -> float:
    """Radius (pixels) of the neighbourhood in which a peak candidate must be the maximum.

    A third of the minimum atom distance (at least one pixel): small enough that
    two atoms ``min_distance_px`` or more apart never share one.
    """
    return max(1.0, float(min_distance_px) / 3.0)


def biased_labels(
    class_probabilities: np.ndarray, log_bias: Sequence[float] | None = None, allowed: np.ndarray | None = None
) -> np.ndarray:
    """1-based class of each detection: the argmax over ``log p + log_bias``.

    Parameters
    ----------
    class_probabilities : ndarray, shape (m, n)
        Probabilities of the ``m`` non-background classes at ``n`` detections.
    log_bias : sequence of float, length m, optional
        Log-prior shift per class (a card's ``detection["class_log_bias"]``, fitted by
        :func:`atomfinder.analysis.calibration.fit_class_bias`); None is the plain
        argmax.
    allowed : ndarray of bool, shape (m, n), optional
        Classes each detection may take (e.g. its sublattice's,
        :func:`atomfinder.detection.sublattice.allowed_classes`); None allows all.

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    q = np.asarray(class_probabilities)
    if log_bias is None and allowed is None:
        return q.argmax(axis=0).astype(np.int64) + 1
    b = np.zeros(q.shape[0]) if log_bias is None else np.asarray(log_bias, dtype=np.float64).reshape(-1)
    if len(b) != q.shape[0]:
        raise ValueError(f"class_log_bias has {len(b)} values for {q.shape[0]} classes")
    score = np.log(np.maximum(q.astype(np.float64), 1e-12)) + b[:, None]
    if allowed is not None:
        score = np.where(np.asarray(allowed, dtype=bool), score, -np.inf)
    return score.argmax(axis=0).astype(np.int64) + 1


def find_atoms(
    probabilities: np.ndarray,
    *,
    min_distance_px: float,
    threshold: float = 0.5,
    heights: np.ndarray | None = None,
    class_log_bias: Sequence[float] | None = None,
    honeycomb: Honeycomb | None = None,
) -> AtomTable:
    """Find atoms as peaks of the atom probability ``1 - p(background)``.

    Parameters
    ----------
    probabilities : ndarray, shape (k, H, W)
        Per-class probabilities (class 0 = background), e.g. from
        :func:`atomfinder.nn.infer.predict`.
    min_distance_px : float
        Smallest allowed distance between two atoms in pixels (Euclidean; refined
        positions closer than this are merged, keeping the more probable one).
    threshold : float
        Peaks with atom probability below this are dropped.
    heights : ndarray, shape (H, W), optional
        Column-height map; the height of an atom is its value at the peak, rounded.
    class_log_bias : sequence of float, optional
        Log-prior shift of the non-background classes (:func:`biased_labels`).
    honeycomb : Honeycomb, optional
        Two sublattices and their classes, lengths in pixels: each atom's class is
        chosen among its sublattice's classes
        (:func:`atomfinder.detection.sublattice.sublattice_of`).

    Returns
    -------
    AtomTable
        Sorted by descending probability. ``label`` is the argmax over the
        non-background classes at the peak pixel (1-based; shifted by
        ``class_log_bias`` and limited to the atom's sublattice when given),
        ``probability`` the atom
        probability there (the sum of the non-background classes), ``height`` the
        rounded height or -1 without a height map.
    """
    p = np.asarray(probabilities)
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"expected [k, H, W] probabilities with k >= 2, got {p.shape}")
    # float32 is plenty for probabilities (and halves the memory traffic of a 4096² map).
    atom = p[1:].sum(axis=0, dtype=np.float32)
    # Candidates come from a small neighbourhood, not from a disk of radius
    # min_distance_px: a confident network saturates near 1 over each atom, and a
    # neighbour's disk edge a hair brighter than this atom's centre, within
    # min_distance_px of it, would otherwise hide it. The centroid refinement pulls
    # the candidates of one atom together and enforce_spacing merges them.
    coords = local_maxima(atom, candidate_radius_px(min_distance_px), threshold)
    if len(coords) == 0:
        return AtomTable.empty()
    rows, cols = coords[:, 0], coords[:, 1]
    y, x = refine_subpixel(atom, rows, cols, radius_px=max(1.0, 0.5 * min_distance_px))
    score = atom[rows, cols]
    keep = enforce_spacing(np.column_stack([x, y]), score, min_distance_px)
    rows, cols, x, y, score = rows[keep], cols[keep], x[keep], y[keep], score[keep]
    q = p[1:, rows, cols]
    allowed = None
    if honeycomb is not None:
        allowed = allowed_classes(sublattice_of(np.column_stack([x, y]), q, honeycomb), honeycomb, len(q))
    label = biased_labels(q, class_log_bias, allowed)
    if heights is not None:
        h = np.rint(np.asarray(heights)[rows, cols]).astype(np.int64)
    else:
        h = np.full(len(rows), -1, dtype=np.int64)
    return AtomTable(x=x, y=y, label=label, probability=np.clip(score, 0.0, 1.0), height=h)
