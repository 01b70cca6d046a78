"""Atomic columns as an image resolves them: peaks of the blurred projected atom density.

A column is what a micrograph shows as one peak. Each atom's projection ``(x, y)``
along the beam is replaced by a Gaussian of standard deviation ``blur_A`` (the
resolution scale of the image) and unit peak height, so the *projected density*
is in units of "atoms": an isolated atom peaks at 1, an untilted column of ``n``
atoms at ``n``. Then

- every peak of that density whose saddle to any higher peak lies at least a
  fraction ``min_dip`` below it is one column (shallower peaks belong to the
  higher neighbour: they are shoulders, not separate columns);
- every atom belongs to the peak whose basin (watershed of the density) holds it,
  and a column's height is its number of atoms;
- a column's position is the density-weighted centre of its atoms: their mean,
  each weighted by its contribution ``exp(-|x_j - p|^2 / 2 blur^2)`` to the
  density at the peak ``p`` (the exact maximum, found on a grid of ``blur / 6``
  and refined by mean-shift steps). That is exactly the column for atoms stacked
  along the beam, the middle of a symmetrically tilted column, and near the peak
  for merged sub-columns;
- a peak lower than ``min_peak_atoms`` is no column, and its atoms are unlabelled.

So columns closer than about ``2 * blur_A`` merge into one (the Sparrow limit of
two equal Gaussians), a twinned or off-axis segment whose sub-columns merge is
one column holding all their atoms, a mistilted column (its atoms spread along a
short streak) is one column, and a lone adatom is a column of height 1.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

#: Grid spacing of the density as a fraction of ``blur_A``.
_GRID_PER_BLUR = 1.0 / 6.0
#: Density (atoms) below which the grid is treated as empty.
_FLOOR_ATOMS = 1e-3
#: Largest number of mean-shift steps from a grid peak to the exact maximum.
_PEAK_ITERATIONS = 50


def projected_density(
    xy_A: np.ndarray, blur_A: float, spacing_A: float, pad_A: float
) -> tuple[np.ndarray, np.ndarray]:
    """The projected atom density blurred by a Gaussian, on a grid around the atoms.

    Parameters
    ----------
    xy_A : ndarray, shape (n, 2)
        Projected atom positions ``(x, y)`` in Å.
    blur_A : float
        Standard deviation of the Gaussian (Å).
    spacing_A : float
        Grid spacing (Å).
    pad_A : float
        Empty margin around the atoms (Å).

    Returns
    -------
    density : ndarray, shape (rows, cols)
        ``[row, col]`` = ``[y, x]``; in atoms (an isolated atom peaks at about 1).
    origin_A : ndarray, shape (2,)
        ``(x, y)`` in Å of grid point ``[0, 0]``.
    """
    xy_A = np.asarray(xy_A, dtype=float).reshape(-1, 2)
    origin = xy_A.min(axis=0) - pad_A
    n_xy = np.ceil((xy_A.max(axis=0) + pad_A - origin) / spacing_A).astype(int) + 2
    u = (xy_A - origin) / spacing_A
    i0 = np.floor(u).astype(int)
    frac = u - i0
    grid = np.zeros((n_xy[1], n_xy[0]))
    for dx in (0, 1):  # bilinear splatting: each atom's unit weight shared by its 4 grid points
        for dy in (0, 1):
            w = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
            np.add.at(grid, (i0[:, 1] + dy, i0[:, 0] + dx), w)
    sigma = blur_A / spacing_A
    density = ndimage.gaussian_filter(grid, sigma, mode="constant", truncate=4.0) * (2 * np.pi * sigma**2)
    return density, origin


def density_basins(density: np.ndarray, min_dip: float) -> tuple[np.ndarray, int]:
    """Watershed basins of the peaks that stand at least ``min_dip`` above their saddles.

    Parameters
    ----------
    density : ndarray, shape (rows, cols)
        Non-negative density (:func:`projected_density`).
    min_dip : float
        Smallest relative depth ``1 - saddle / peak`` of the saddle between a
        peak and any higher peak for the peak to count (0 < ``min_dip`` < 1).

    Returns
    -------
    basins : ndarray of int, shape (rows, cols)
        1..n inside the occupied region (density above a small floor), 0 outside.
    n : int
        Number of peaks.
    """
    # A relative dip of the density is an absolute dip of its logarithm. Taken
    # relative to the floor, the logarithm is >= 0 and far from 0 at every peak:
    # h_maxima's allowance for rounding scales with |value| and misses peaks near 0.
    log_d = np.log(np.maximum(density, _FLOOR_ATOMS) / _FLOOR_ATOMS)
    tops = h_maxima(log_d, -np.log1p(-min_dip))
    markers, n = ndimage.label(tops, structure=np.ones((3, 3)))
    basins = watershed(-log_d, markers, mask=density > _FLOOR_ATOMS)
    return basins, int(n)


def refine_peaks(xy_A: np.ndarray, peaks_A: np.ndarray, blur_A: float) -> np.ndarray:
    """Move grid peaks onto the exact maxima of the blurred density (mean-shift steps).

    Each step moves a point ``p`` to ``sum_j w_j x_j / sum_j w_j`` with
    ``w_j = exp(-|x_j - p|^2 / 2 blur^2)`` over all atoms within ``4 blur``: the
    fixed points are the maxima of the density, so a point on the grid next to a
    maximum climbs onto it.

    Parameters
    ----------
    xy_A : ndarray, shape (n, 2)
        Atom positions ``(x, y)`` in Å.
    peaks_A : ndarray, shape (m, 2)
        Starting points (Å), each the highest grid point of a peak.
    blur_A : float
        Gaussian standard deviation (Å).

    Returns
    -------
    ndarray, shape (m, 2)
        The maxima in Å.
    """
    peaks = np.asarray(peaks_A, dtype=float).copy()
    if len(peaks) == 0:
        return peaks
    tree = cKDTree(xy_A)
    for _ in range(_PEAK_ITERATIONS):
        near = tree.query_ball_point(peaks, 4.0 * blur_A)
        which = np.repeat(np.arange(len(peaks)), [len(v) for v in near])
        atoms = np.concatenate([np.asarray(v, dtype=int) for v in near])
        w = np.exp(-np.sum((xy_A[atoms] - peaks[which]) ** 2, axis=1) / (2 * blur_A**2))
        total = np.bincount(which, w, len(peaks))
        new = np.stack([np.bincount(which, w * xy_A[atoms, c], len(peaks)) for c in range(2)], axis=1)
        new = np.where(total[:, None] > 0, new / np.maximum(total, 1e-300)[:, None], peaks)
        step = np.max(np.abs(new - peaks))
        peaks = new
        if step < 1e-4:
            break
    return peaks


def weighted_centres(
    xy_A: np.ndarray, column: np.ndarray, peaks_A: np.ndarray, blur_A: float
) -> np.ndarray:
    """Centre of each column's atoms, each atom weighted by its share of the column's peak.

    ``c = sum_j w_j x_j / sum_j w_j`` over the atoms ``j`` of the column, with
    ``w_j = exp(-|x_j - p|^2 / 2 blur^2)`` the atom's contribution to the blurred
    density at the column's peak ``p``: the mean of the atoms of a straight or
    symmetrically tilted column, and near the peak for merged sub-columns.

    Parameters
    ----------
    xy_A : ndarray, shape (n, 2)
        Atom positions ``(x, y)`` in Å.
    column : ndarray of int, shape (n,)
        Column of each atom, 0..m-1 (every column holds at least one atom).
    peaks_A : ndarray, shape (m, 2)
        The peak of each column (Å).
    blur_A : float
        Gaussian standard deviation (Å).

    Returns
    -------
    ndarray, shape (m, 2)
        Centres in Å.
    """
    m = len(peaks_A)
    w = np.exp(-np.sum((xy_A - peaks_A[column]) ** 2, axis=1) / (2 * blur_A**2))
    w = np.maximum(w, 1e-300)  # an atom far down the basin still counts, however little
    total = np.bincount(column, w, m)
    return np.stack([np.bincount(column, w * xy_A[:, c], m) for c in range(2)], axis=1) / total[:, None]


def density_columns(
    xy_A: np.ndarray, blur_A: float, min_dip: float, min_peak_atoms: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The columns an image at resolution ``blur_A`` shows, with their atoms (module docstring).

    Parameters
    ----------
    xy_A : ndarray, shape (n, 2)
        Projected atom positions ``(x, y)`` in Å (beam along ``z``).
    blur_A : float
        Resolution scale: standard deviation (Å) of the Gaussian each atom is
        blurred with.
    min_dip : float
        Smallest relative depth of the saddle below a peak for the peak to be a
        column of its own (see :func:`density_basins`).
    min_peak_atoms : float
        Smallest peak height of the density (atoms; an isolated atom peaks at 1)
        for a peak to be a column.

    Returns
    -------
    positions_A : ndarray, shape (m, 2)
        Column positions ``(x, y)`` in Å.
    heights : ndarray of int, shape (m,)
        Atoms per column.
    column : ndarray of int, shape (n,)
        Column of each atom, -1 for atoms of no column (in a peak lower than
        ``min_peak_atoms``); ``heights == bincount(column[column >= 0])``.
    """
    xy_A = np.asarray(xy_A, dtype=float).reshape(-1, 2)
    if len(xy_A) == 0:
        return np.zeros((0, 2)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    spacing = blur_A * _GRID_PER_BLUR
    density, origin = projected_density(xy_A, blur_A, spacing, pad_A=4.0 * blur_A)
    basins, n = density_basins(density, min_dip)
    index = np.arange(1, n + 1)
    peak_value = np.asarray(ndimage.maximum(density, basins, index), dtype=float).reshape(n)
    peak_rc = np.asarray(ndimage.maximum_position(density, basins, index), dtype=float).reshape(n, 2)
    peak_xy = peak_rc[:, ::-1] * spacing + origin
    # each atom belongs to the basin of its nearest grid point
    ij = np.rint((xy_A - origin) / spacing).astype(int)
    basin = basins[ij[:, 1], ij[:, 0]] - 1
    n_atoms = np.bincount(basin[basin >= 0], minlength=n)
    kept = np.flatnonzero((peak_value >= min_peak_atoms) & (n_atoms > 0))
    renumber = np.full(n + 1, -1)
    renumber[kept] = np.arange(len(kept))
    column = renumber[basin]  # basin -1 (none) maps to renumber[-1] = -1
    on = column >= 0
    heights = np.bincount(column[on], minlength=len(kept)).astype(np.int64)
    peaks = refine_peaks(xy_A, peak_xy[kept], blur_A)
    positions = weighted_centres(xy_A[on], column[on], peaks, blur_A)
    return positions, heights, column
