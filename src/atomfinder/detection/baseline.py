"""The conventional pipeline the networks are compared against.

Band-pass filter (difference of Gaussians tuned to the atom size) -> local maxima ->
sub-pixel refinement, with the contrast polarity decided from the image alone. No
training, no ground truth.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.stats import skew

from atomfinder.detection.peaks import AtomTable, enforce_spacing, local_maxima, refine_subpixel

POLARITIES = ("auto", "bright", "dark")


def bandpass(image: np.ndarray, sampling_A: float, atom_radius_A: float = 0.5) -> np.ndarray:
    """Difference-of-Gaussians band-pass tuned to atoms of radius ``atom_radius_A``.

    ``G(sigma_small) - G(sigma_large)`` with ``sigma_small = atom_radius / 2`` (removes
    noise finer than an atom) and ``sigma_large = 2 * atom_radius`` (removes
    background varying over more than an atom), both converted to pixels.

    Parameters
    ----------
    image : ndarray, shape (H, W)
    sampling_A : float
        Pixel size in Å/pixel.
    atom_radius_A : float
        Apparent atom radius in Å.

    Returns
    -------
    ndarray of float64, shape (H, W)
    """
    r_px = atom_radius_A / sampling_A
    x = np.asarray(image, dtype=np.float64)
    small = gaussian_filter(x, max(0.5 * r_px, 0.5), mode="reflect")
    large = gaussian_filter(x, 2.0 * r_px, mode="reflect")
    return small - large


def choose_polarity(filtered: np.ndarray) -> int:
    """Contrast sign of the atoms in a band-passed image: +1 bright, -1 dark.

    Rule: the sign of the skewness of the band-passed pixel values. Atoms are compact
    peaks that cover a minority of the field, so after the band-pass their side of the
    zero line has the long tail: bright atoms make the distribution skewed to positive
    values, dark atoms to negative ones. Ties (zero skew) count as bright. The rule uses
    no ground truth; it can fail where atoms and the gaps between them look alike
    (e.g. graphene near a defocus at which the hexagon centres image as dots as sharp
    as the atoms), where no rule without prior knowledge can decide.
    """
    f = np.asarray(filtered, dtype=np.float64).ravel()
    if not f.std() > 0:
        return 1
    return -1 if float(skew(f)) < 0 else 1


def conventional_atoms(
    image: np.ndarray,
    sampling_A: float,
    *,
    atom_radius_A: float = 0.5,
    min_distance_A: float = 1.0,
    threshold_rel: float = 0.2,
    polarity: str = "auto",
) -> AtomTable:
    """Find atoms with a band-pass filter and local maxima (no network).

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Raw or normalised micrograph.
    sampling_A : float
        Pixel size in Å/pixel.
    atom_radius_A : float
        Apparent atom radius in Å (tunes the band-pass, see :func:`bandpass`).
    min_distance_A : float
        Smallest allowed distance between two atoms in Å.
    threshold_rel : float
        Peaks of the (sign-corrected) band-passed image below ``threshold_rel`` times
        its 99.9th percentile are dropped (a percentile rather than the maximum, so
        one hot pixel cannot raise the bar).
    polarity : {"auto", "bright", "dark"}
        Atom contrast; ``"auto"`` applies :func:`choose_polarity` (sign of the
        skewness of the band-passed image).

    Returns
    -------
    AtomTable
        Positions in pixels (x = column, y = row), ``label`` 1, ``probability`` the
        peak's band-pass value relative to the 99.9th percentile, clipped to [0, 1] (a
        score, not a calibrated probability), ``height`` -1.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected an [H, W] image, got shape {img.shape}")
    filtered = bandpass(img, sampling_A, atom_radius_A)
    if not filtered.std() > 1e-9 * max(float(np.abs(img).max()), 1e-300):
        return AtomTable.empty()  # flat image (up to rounding): nothing to find
    sign = {"bright": 1, "dark": -1}.get(polarity) or choose_polarity(filtered)
    f = sign * filtered
    ref = float(np.percentile(f, 99.9))
    if not ref > 0:
        return AtomTable.empty()
    min_px = min_distance_A / sampling_A
    coords = local_maxima(f, min_px, threshold_rel * ref)
    if len(coords) == 0:
        return AtomTable.empty()
    rows, cols = coords[:, 0], coords[:, 1]
    radius = max(1.0, min(atom_radius_A / sampling_A, 0.5 * min_px))
    y, x = refine_subpixel(f, rows, cols, radius_px=radius)
    score = f[rows, cols]
    keep = enforce_spacing(np.column_stack([x, y]), score, min_px)
    n = len(keep)
    return AtomTable(
        x=x[keep],
        y=y[keep],
        label=np.ones(n, dtype=np.int64),
        probability=np.clip(score[keep] / ref, 0.0, 1.0),
        height=np.full(n, -1, dtype=np.int64),
    )
