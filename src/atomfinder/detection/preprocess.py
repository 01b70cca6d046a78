"""Clean a micrograph before detection: finite values, no dead or hot pixels, not constant.

:func:`clean_image` is what every detection input goes through
(:func:`atomfinder.detection.sample.load_sample`): NaN/inf pixels become the median
of the finite pixels (:func:`fill_nonfinite`); dead and hot pixels, more than
``n_sigma`` robust standard deviations from a 3x3 median filter, become that median
(:func:`repair_outliers`); a constant image is refused. Each frame of a stack is
cleaned on its own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from atomfinder.detection.io import MicrographError

__all__ = [
    "NO_DATA_DISTANCE_A",
    "OUTLIER_SIGMA",
    "clean_image",
    "fill_nonfinite",
    "frame_cleaner",
    "in_no_data",
    "median3x3",
    "no_data_mask",
    "repair_outliers",
]

#: An atom farther than this (Å) from every finite pixel lies in a region without data (NaN/inf
#: pixels, e.g. a masked area or a detector gap) and is dropped: the filled pixels are flat, and
#: the network continues the lattice into them.
NO_DATA_DISTANCE_A = 0.5

#: Robust standard deviations (1.4826 MAD) from the 3x3 median that mark a dead/hot pixel.
OUTLIER_SIGMA = 8.0


def fill_nonfinite(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN and ±inf by the median of the finite pixels.

    Parameters
    ----------
    image : ndarray
        Any shape; pixel values in any linear unit.

    Returns
    -------
    (ndarray of float32, int)
        The filled copy and the number of pixels replaced.

    Raises
    ------
    ValueError
        When no pixel is finite.
    """
    img = _as_float32(image)
    bad = ~np.isfinite(img)
    n_bad = int(bad.sum())
    if n_bad == img.size:
        raise ValueError("no finite pixel values (all NaN or infinite)")
    if n_bad:
        img[bad] = np.median(img[~bad])
    return img, n_bad


#: Compare-exchange steps of a 19-step sorting network whose 5th output (index 4)
#: is the median of 9 values (Paeth's network, as in Devillard's ``opt_med9``).
_MEDIAN9_NETWORK = (
    (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
    (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2),
)


def _as_float32(image: np.ndarray) -> np.ndarray:
    """A float32 copy; a constant offset that float32 could not keep apart from the image's
    variation (e.g. 1e6 + a few counts) is removed first, in double precision, so that the
    grey levels survive (the network normalises locally: an offset changes nothing else).
    The offset and spread are those of the finite pixels (NaN and ±inf mark no data)."""
    data = np.asarray(image)
    if data.size and data.dtype.itemsize > 4 and (np.issubdtype(data.dtype, np.floating)
                                                  or np.issubdtype(data.dtype, np.integer)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN image is refused later
            low, high = float(np.nanmin(data)), float(np.nanmax(data))
        if not (np.isfinite(low) and np.isfinite(high)):  # ±inf pixels: the finite ones' range
            finite = data[np.isfinite(data)]
            if not finite.size:  # no finite pixel: refused later
                return np.array(data, dtype=np.float32)
            low, high = float(finite.min()), float(finite.max())
        spread, largest = high - low, max(abs(low), abs(high))
        if np.isfinite(spread) and spread > 0 and float(np.spacing(np.float32(largest))) > 1e-4 * spread:
            return (data.astype(np.float64) - low).astype(np.float32)
    return np.array(data, dtype=np.float32)


def no_data_mask(image: np.ndarray) -> np.ndarray | None:
    """Where an image holds no data (NaN or ±inf), or None when every pixel is finite."""
    data = np.asarray(image)
    if not np.issubdtype(data.dtype, np.floating):
        return None
    bad = ~np.isfinite(data)
    return bad if bad.any() else None


def in_no_data(x_px: np.ndarray, y_px: np.ndarray, mask: np.ndarray | None, sampling_A: float,
               distance_A: float = NO_DATA_DISTANCE_A) -> np.ndarray:
    """Which positions lie farther than ``distance_A`` from every finite pixel of ``mask``'s image.

    Parameters
    ----------
    x_px, y_px : ndarray
        Positions (column, row) in pixels of the image.
    mask : ndarray of bool, shape (H, W), or None
        :func:`no_data_mask` of the image (None: no position is in a region without data).
    sampling_A : float
        Pixel size in Å/px.
    distance_A : float
        Distance (Å) to the nearest finite pixel beyond which a position has no data.

    Returns
    -------
    ndarray of bool
    """
    x, y = np.asarray(x_px, dtype=np.float64), np.asarray(y_px, dtype=np.float64)
    if mask is None or not len(x):
        return np.zeros(len(x), dtype=bool)
    from scipy.ndimage import distance_transform_edt

    dist_px = distance_transform_edt(mask)  # 0 on finite pixels, else the distance to the nearest one
    rows = np.clip(np.rint(y).astype(int), 0, mask.shape[0] - 1)
    cols = np.clip(np.rint(x).astype(int), 0, mask.shape[1] - 1)
    return dist_px[rows, cols] * float(sampling_A) > distance_A


def median3x3(image: np.ndarray) -> np.ndarray:
    """3x3 median filter with mirrored edges, equal to
    ``scipy.ndimage.median_filter(image, size=3, mode="reflect")``.

    Runs a fixed sorting network on the nine shifted copies of the image, in
    cache-sized row blocks: ~4x faster than scipy's general rank filter (0.46 ->
    0.11 s on 2048², measured).
    """
    img = np.asarray(image)
    padded = np.pad(img, 1, mode="symmetric")  # numpy "symmetric" == scipy "reflect"
    h, w = img.shape
    out = np.empty_like(img)
    rows = max(1, (1 << 16) // max(w, 1))  # blocks of ~64k pixels stay in cache
    lo = np.empty((rows, w), dtype=img.dtype)
    for r0 in range(0, h, rows):
        n = min(rows, h - r0)
        v = [padded[r0 + i : r0 + i + n, j : j + w].copy() for i in range(3) for j in range(3)]
        tmp = lo[:n]
        for a, b in _MEDIAN9_NETWORK:
            np.minimum(v[a], v[b], out=tmp)
            np.maximum(v[a], v[b], out=v[b])
            v[a], tmp = tmp, v[a]
        out[r0 : r0 + n] = v[4]
    return out


def repair_outliers(image: np.ndarray, n_sigma: float = OUTLIER_SIGMA) -> tuple[np.ndarray, int]:
    """Replace dead and hot pixels by the median of their 3x3 neighbourhood.

    A pixel is an outlier when it differs from the 3x3 median-filtered image by more
    than ``n_sigma`` robust standard deviations of that difference (``1.4826 *`` the
    median absolute deviation; the standard deviation when the MAD is 0, as in
    low-count images that are mostly zeros). Atoms several pixels wide are barely
    changed by a 3x3 median, so they are never taken for outliers.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Finite pixel values (see :func:`fill_nonfinite`).
    n_sigma : float
        Threshold in robust standard deviations.

    Returns
    -------
    (ndarray of float32, int)
        The repaired copy and the number of pixels replaced.
    """
    img = np.array(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected an [H, W] image, got shape {img.shape}")
    return img, _repair_outliers_in_place(img, n_sigma)


def _repair_outliers_in_place(img: np.ndarray, n_sigma: float) -> int:
    """:func:`repair_outliers` on a float32 image it may overwrite; the count replaced.

    Single precision and in place, so a large image needs about three more copies of
    itself (the median-filtered image, the residual, and a copy for the median).
    """
    med = median3x3(img)
    resid = np.subtract(img, med)
    centre = np.median(resid)
    resid -= centre
    np.abs(resid, out=resid)
    sigma = 1.4826 * float(np.median(resid))
    if not sigma > 0:
        sigma = float(np.std(img - med, dtype=np.float64))
    if not sigma > 0:
        return 0
    bad = resid > n_sigma * sigma
    del resid
    img[bad] = med[bad]
    return int(bad.sum())


def clean_image(
    image: np.ndarray, source: str = "<array>", n_sigma: float = OUTLIER_SIGMA
) -> np.ndarray:
    """Make an image safe for detection: finite values, no dead/hot pixels, not constant.

    Each frame of a stack is cleaned on its own: :func:`fill_nonfinite`, then
    :func:`repair_outliers`.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (N, H, W)
        Pixel values (any linear unit).
    source : str
        Name of the input, for error messages.
    n_sigma : float
        Outlier threshold in robust standard deviations.

    Returns
    -------
    ndarray of float32, same shape
        The cleaned copy.

    Raises
    ------
    MicrographError
        A frame with no finite pixel, or a constant frame (nothing to detect).
    """
    img = np.asarray(image)
    frames = img[None] if img.ndim == 2 else img
    out = np.empty(frames.shape, dtype=np.float32) if img.ndim == 3 else None
    for i, frame in enumerate(frames):
        where = f" (frame {i})" if img.ndim == 3 else ""
        try:
            filled, _ = fill_nonfinite(frame)
        except ValueError as exc:
            raise MicrographError(source, f"{exc}{where}") from None
        low, high = float(filled.min()), float(filled.max())
        if low == high:
            raise MicrographError(
                source, f"constant image{where} (every pixel is {low:g}): nothing to detect; is it a blank frame?"
            )
        _repair_outliers_in_place(filled, n_sigma)  # filled is our own copy
        if out is None:
            return filled
        out[i] = filled
    return out


def frame_cleaner(source: str, no_data: dict[int, np.ndarray] | None = None) -> Callable[[np.ndarray, int], np.ndarray]:
    """``clean(frame, i)``: :func:`clean_image` of one frame of a lazily read stack (errors name the frame).

    With ``no_data``, the :func:`no_data_mask` of a frame that has one is put in it under
    the frame's index, for the detection of that frame to take (and remove).
    """

    def clean(frame: np.ndarray, i: int) -> np.ndarray:
        if no_data is not None:
            mask = no_data_mask(frame)
            if mask is not None:
                no_data[i] = mask
        try:
            return clean_image(frame, source)
        except MicrographError as exc:
            raise MicrographError(source, f"{str(exc).removeprefix(source + ': ')} (frame {i})") from None

    return clean
