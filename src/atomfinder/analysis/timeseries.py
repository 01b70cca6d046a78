"""Time series: which atomic-column sites are occupied in each frame, and when that changes.

The chain (:func:`track` runs all of it)::

    frames ──► register_frames ──► drift (dx, dy) per frame
       │                               │
       └──► detect (per raw frame) ──► link_sites ──► Sites (first-frame grid)
                                       │
                       presence ──► events ──► summary ──► CSV + plots + GIF

Conventions (DESIGN.md, "Time series output")
---------------------------------------------
* Positions are ``(x, y)`` = (column, row) in pixels, pixel centres at integers,
  origin at the centre of the top-left pixel.
* **Drift sign**: ``drift[i] = (dx, dy)`` means a feature at ``(x, y)`` in the
  reference frame (frame 0) is at ``(x + dx, y + dy)`` in frame ``i``. A detection at
  ``(x_i, y_i)`` in frame ``i`` is therefore at ``(x_i - dx, y_i - dy)`` in the first
  frame's grid, and every coordinate written by this module is in that grid.
* Registration (:func:`register_frames`): band-pass; whole-pixel masked normalised
  cross-correlation (picks the right lattice peak from non-periodic content such as
  the particle outline); then sub-pixel Hann-windowed cross-correlation of the
  band-passed frames (upsampled DFT).
* Detection runs on the raw (unshifted) frames, so positions are never degraded by
  interpolation; only the overlay animation shows resampled, registered frames.

Linking (:func:`link_sites`) is frame-by-frame one-to-one assignment
(:func:`atomfinder.analysis.matching.match_positions`, i.e. connected components +
:func:`scipy.optimize.linear_sum_assignment`) of each frame's registered detections to
the running mean positions of the sites found so far, within ``tolerance_px``;
unmatched detections open new sites. A final pass merges sites closer than the
tolerance that are never detected in the same frame (a column whose first detections
were split by noise). Presence (:func:`presence`) is then recomputed from the final
site positions alone, with the same one-to-one matching, so it is a pure function of
detections, drift, sites and tolerance (sites may also come from elsewhere, e.g. a
lattice model).

This module never imports the simulation stack (imaging, structures, datasets,
abTEM, ase); it needs NumPy, SciPy, scikit-image, pandas, matplotlib and Pillow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter, uniform_filter
from scipy.ndimage import shift as nd_shift
from scipy.spatial import cKDTree
from skimage.registration import phase_cross_correlation

from atomfinder._files import atomic_write
from atomfinder.analysis.matching import match_positions
from atomfinder.analysis.plots import CLASS_COLOURS, plt, save_figure

#: Column order of the output tables (DESIGN.md).
SITES_COLUMNS = ("site", "x", "y", "x_angstrom", "y_angstrom", "label")
PRESENCE_COLUMNS = ("frame", "site", "present", "probability")
EVENTS_COLUMNS = ("frame", "site", "event", "x", "y")
DRIFT_COLUMNS = ("frame", "dx", "dy")
OCCUPANCY_COLUMNS = ("frame", "occupancy", "events", "event_rate")
#: Registration modes of :func:`register_frames`.
REGISTRATION_MODES = ("first", "previous")
#: Largest number of frames and largest side (display pixels) of ``overlay.gif``.
GIF_MAX_FRAMES = 50
GIF_MAX_SIDE = 400


# --------------------------------------------------------------------------- registration


def hann_window(shape: tuple[int, int]) -> np.ndarray:
    """Separable 2-D Hann window of the given ``(rows, cols)`` shape (peak 1, edges 0)."""
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1]))


def smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma_px`` pixels (mirrored edges).

    Exact (:func:`scipy.ndimage.gaussian_filter`) up to 8 px; above, three passes of
    a box filter of about the same variance (odd widths, so nothing moves; error
    about 1-2 % of an edge's height), whose cost does not grow with ``sigma_px``.
    """
    x = np.asarray(image, dtype=np.float64)
    if sigma_px <= 0:
        return x.copy()
    if sigma_px <= 8:
        return gaussian_filter(x, sigma_px, mode="reflect")
    # 3 boxes of odd width w (centred): variance 3 (w^2 - 1) / 12 = sigma^2
    width = 2 * int(round((np.sqrt(4.0 * sigma_px**2 + 1.0) - 1.0) / 2.0)) + 1
    for _ in range(3):
        x = uniform_filter(x, width, mode="reflect")
    return x


def bandpass(image: np.ndarray, sigma_low_px: float = 1.0, sigma_high_px: float | None = None) -> np.ndarray:
    """Difference of Gaussians ``G(sigma_low) - G(sigma_high)`` for registration.

    Removes shot noise finer than ``sigma_low_px`` and background varying over more
    than ``sigma_high_px`` (default ``min(H, W) / 8``): uneven illumination does not
    move with the sample and would pull the shift towards zero.

    Returns
    -------
    ndarray of float64, shape (H, W), mean 0
    """
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected an [H, W] frame, got shape {x.shape}")
    if sigma_high_px is None:
        sigma_high_px = min(x.shape) / 8.0
    band = smooth(x, sigma_low_px) - smooth(x, sigma_high_px)
    return band - band.mean()


def frame_shift(reference: np.ndarray, moving: np.ndarray, upsample: int = 10) -> np.ndarray:
    """Sub-pixel displacement ``(dx, dy)`` of ``moving`` relative to ``reference`` (band-passed).

    Both images are multiplied by a Hann window (so the frame edges do not correlate)
    and cross-correlated (:func:`skimage.registration.phase_cross_correlation` with
    ``normalization=None``: phase normalisation would whiten the spectrum and undo
    the band-pass, letting noise dominate), to ``1 / upsample`` pixel. A feature at
    ``(x, y)`` in ``reference`` is at ``(x + dx, y + dy)`` in ``moving``
    (skimage returns the ``(row, col)`` shift that moves ``moving`` back, i.e. minus
    the displacement). The window favours small lags: the true displacement must be
    under about half a lattice period (see :func:`coarse_shift`).
    """
    w = hann_window(reference.shape)
    s, _, _ = phase_cross_correlation(reference * w, moving * w, upsample_factor=max(1, int(upsample)),
                                      normalization=None)
    return np.array([-float(s[1]), -float(s[0])])


def bin_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks (rows/columns that do not fill a block are dropped)."""
    if factor <= 1:
        return np.asarray(image, dtype=np.float64)
    h, w = (np.asarray(image.shape) // factor) * factor
    x = np.asarray(image, dtype=np.float64)[:h, :w]
    return x.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def coarse_bin(shape: tuple[int, int]) -> int:
    """Binning of the coarse stage: ``max(1, min(H, W) // 256)`` (about 256 px left per side)."""
    return max(1, min(shape) // 256)


def coarse_shift(reference: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Whole-pixel displacement ``(dx, dy)`` of ``moving`` relative to ``reference`` (band-passed).

    Masked normalised cross-correlation (:func:`phase_cross_correlation` with all-true
    masks, Padfield 2012): each lag is scored by the correlation coefficient over the
    overlap of the two frames only, so neither a window nor the shrinking overlap
    favours small lags, and lattice aliases score lower than the true lag wherever
    non-periodic content (particle outline, surface, support) is in the field. Lags
    leaving less than half the frame overlapping are not considered.
    """
    mask = np.ones(reference.shape, dtype=bool)
    out = phase_cross_correlation(reference, moving, reference_mask=mask, moving_mask=mask, overlap_ratio=0.5)
    s = np.asarray(out[0] if isinstance(out, tuple) else out, dtype=np.float64)
    return np.array([-s[1], -s[0]])


def _shift_whole(image: np.ndarray, dxy: np.ndarray) -> np.ndarray:
    """Move content by whole pixels ``(dx, dy)`` (exact; uncovered pixels repeat the edge)."""
    if not np.any(dxy):
        return image
    return nd_shift(image, (float(dxy[1]), float(dxy[0])), order=0, mode="nearest")


def _pair_shift_bandpassed(
    ref: np.ndarray,
    mov: np.ndarray,
    upsample: int,
    coarse: bool,
    binned: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    c = np.zeros(2)
    if coarse:
        k = coarse_bin(ref.shape)
        b_ref, b_mov = binned if binned is not None else (bin_image(ref, k), bin_image(mov, k))
        c = np.rint(coarse_shift(b_ref, b_mov) * k)
    return c + frame_shift(ref, _shift_whole(mov, -c), upsample)


def pair_shift(
    reference: np.ndarray,
    moving: np.ndarray,
    upsample: int = 10,
    *,
    sigma_low_px: float = 1.0,
    sigma_high_px: float | None = None,
    coarse: bool = True,
) -> np.ndarray:
    """Displacement ``(dx, dy)`` in pixels of raw frame ``moving`` relative to raw ``reference``.

    Both frames are band-passed (:func:`bandpass`); then two stages, because a
    crystal lattice correlates with itself at every lattice vector and the windowed
    sub-pixel correlation favours the alias nearest zero lag:

    1. *coarse* (:func:`coarse_shift`): masked normalised cross-correlation, on
       frames binned by :func:`coarse_bin` (1 up to 511 px, 4 for 1024 px), to the
       nearest pixel;
    2. *fine* (:func:`frame_shift`): ``moving`` is shifted back by that whole number of
       pixels (exactly, no interpolation) and Hann-windowed cross-correlation finds
       the rest to ``1 / upsample`` pixel; the true peak is now the one near zero lag.

    ``coarse=False`` skips stage 1 (the displacement must then be under about half a
    lattice period). With binning, the lattice period must stay above ~2 binned
    pixels (e.g. > 8 px for a 1024 px frame).

    Returns
    -------
    ndarray of float64, shape (2,)
        A feature at ``(x, y)`` in ``reference`` is at ``(x + dx, y + dy)`` in ``moving``.
    """
    ref = np.asarray(reference, dtype=np.float64)
    mov = np.asarray(moving, dtype=np.float64)
    if ref.shape != mov.shape or ref.ndim != 2:
        raise ValueError(f"frames must be 2-D and of equal shape, got {ref.shape} and {mov.shape}")
    band_ref = bandpass(ref, sigma_low_px, sigma_high_px)
    band_mov = bandpass(mov, sigma_low_px, sigma_high_px)
    return _pair_shift_bandpassed(band_ref, band_mov, upsample, coarse)


def register_frames(
    frames: np.ndarray,
    reference: int = 0,
    upsample: int = 10,
    mode: str = "first",
    *,
    sigma_low_px: float = 1.0,
    sigma_high_px: float | None = None,
    coarse: bool = True,
) -> np.ndarray:
    """Drift of every frame of a series relative to the reference frame.

    Each pair of frames is registered as in :func:`pair_shift` (band-pass; whole-pixel
    masked normalised cross-correlation; sub-pixel Hann-windowed cross-correlation).

    Parameters
    ----------
    frames : ndarray, shape (N, H, W)
        The series (raw counts or any linear scale).
    reference : int
        Index of the frame whose grid everything is expressed in (its drift is
        exactly 0). DESIGN.md uses the first frame (0).
    upsample : int
        Sub-pixel resolution of the correlation peak: ``1 / upsample`` pixels.
    mode : {"first", "previous"}
        ``"first"``: each frame is correlated with the reference frame directly
        (errors do not accumulate; best when the field changes little).
        ``"previous"``: each frame is correlated with the frame before it and the
        steps are summed (follows a field that evolves a lot, at the cost of a
        random-walk error of about ``sqrt(N)`` times the per-step error).
    sigma_low_px, sigma_high_px : float
        Band-pass (:func:`bandpass`), in pixels.
    coarse : bool
        Run the whole-pixel stage first (see :func:`pair_shift`).

    Returns
    -------
    ndarray of float64, shape (N, 2)
        ``(dx, dy)`` in pixels: a feature at ``(x, y)`` in the reference frame is at
        ``(x + dx, y + dy)`` in frame ``i``.

    Notes
    -----
    Cross-correlation finds a shift only modulo the period of a perfectly periodic
    field. The coarse stage scores each lag by its correlation coefficient over the
    overlap, so non-periodic content (particle outline, surface, support) picks the
    right lattice peak; a crystal filling the whole field with no such content can
    still be ambiguous for drifts above half a lattice period between the correlated
    frames (``mode="previous"`` keeps that step small).
    """
    stack = np.asarray(frames, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"expected frames of shape (N, H, W), got {stack.shape}")
    n = stack.shape[0]
    if n == 0:
        return np.zeros((0, 2))
    if not -n <= reference < n:
        raise ValueError(f"reference {reference} out of range for {n} frames")
    if mode not in REGISTRATION_MODES:
        raise ValueError(f"mode must be one of {REGISTRATION_MODES}, got {mode!r}")
    band = [bandpass(f, sigma_low_px, sigma_high_px) for f in stack]
    k = coarse_bin(stack.shape[1:])
    binned = [bin_image(b, k) for b in band] if coarse else [None] * n
    ref = reference % n
    drift = np.zeros((n, 2))

    def step(a: int, b: int) -> np.ndarray:
        pair = (binned[a], binned[b]) if coarse else None
        return _pair_shift_bandpassed(band[a], band[b], upsample, coarse, pair)

    if mode == "first":
        for i in range(n):
            if i != ref:
                drift[i] = step(ref, i)
        return drift
    for i in range(1, n):
        drift[i] = drift[i - 1] + step(i - 1, i)
    return drift - drift[ref]


def register_images(frames: np.ndarray, drift_px: np.ndarray, order: int = 1) -> np.ndarray:
    """Shift each frame onto the reference grid (for display; detection uses raw frames).

    Frame ``i`` is resampled at ``(x + dx_i, y + dy_i)``, so a feature at ``(x, y)``
    in the reference frame lands at ``(x, y)``. Pixels that came from outside the
    frame take the frame's median.

    Returns
    -------
    ndarray of float32, shape (N, H, W)
    """
    stack = np.asarray(frames, dtype=np.float64)
    out = np.empty(stack.shape, dtype=np.float32)
    for i, (f, (dx, dy)) in enumerate(zip(stack, np.asarray(drift_px, dtype=np.float64))):
        out[i] = nd_shift(f, (-dy, -dx), order=order, mode="constant", cval=float(np.median(f)))
    return out


# --------------------------------------------------------------------------- detections


def as_detections(table: Any) -> pd.DataFrame:
    """A frame's detections as a DataFrame with columns ``x, y, label, probability``.

    Accepts a DataFrame (the DESIGN.md atom table, or any with ``x`` and ``y``) or an
    :class:`atomfinder.detection.peaks.AtomTable`-like object with those attributes.
    A missing ``label`` becomes 1 and a missing ``probability`` 1.0.
    """
    if table is None:
        return pd.DataFrame({"x": [], "y": [], "label": [], "probability": []})

    def get(name: str) -> Any:
        if isinstance(table, pd.DataFrame):
            return table[name].to_numpy() if name in table.columns else None
        return getattr(table, name, None)

    x, y = get("x"), get("y")
    if x is None or y is None:
        raise ValueError("detections need x and y (pixels)")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    label, prob = get("label"), get("probability")
    label = np.ones(len(x), dtype=np.int64) if label is None else np.asarray(label).reshape(-1)
    prob = np.ones(len(x)) if prob is None else np.asarray(prob, dtype=np.float64).reshape(-1)
    return pd.DataFrame({"x": x, "y": y, "label": label, "probability": prob})


def _check_drift(drift_px: np.ndarray, n: int) -> np.ndarray:
    d = np.asarray(drift_px, dtype=np.float64).reshape(-1, 2) if np.size(drift_px) else np.zeros((0, 2))
    if d.shape != (n, 2):
        raise ValueError(f"drift must have shape ({n}, 2) for {n} frames, got {np.shape(drift_px)}")
    return d


def registered_xy(table: Any, drift: np.ndarray) -> np.ndarray:
    """Detections of one frame moved into the reference grid: ``(x - dx, y - dy)``, shape (n, 2)."""
    det = as_detections(table)
    return np.column_stack([det["x"].to_numpy() - drift[0], det["y"].to_numpy() - drift[1]])


# --------------------------------------------------------------------------- sites


@dataclass(frozen=True)
class Sites:
    """Column sites of a time series, in the reference frame's pixel grid.

    Attributes
    ----------
    x, y : ndarray of float, shape (S,)
        Mean position of the site's detections in pixels (x = column, y = row).
    label : ndarray, shape (S,)
        Majority label of the site's detections (as given: class names or indices).
    n_detections : ndarray of int, shape (S,)
        Number of frames the site was detected in while linking.

    Site ``i`` is row ``i``; :func:`link_sites` numbers sites in reading order (by
    ``y``, then ``x``).
    """

    x: np.ndarray
    y: np.ndarray
    label: np.ndarray
    n_detections: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", np.asarray(self.x, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "y", np.asarray(self.y, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "label", np.asarray(self.label).reshape(-1))
        object.__setattr__(self, "n_detections", np.asarray(self.n_detections, dtype=np.int64).reshape(-1))
        n = len(self.x)
        if not all(len(a) == n for a in (self.y, self.label, self.n_detections)):
            raise ValueError("Sites arrays must all have the same length")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def xy(self) -> np.ndarray:
        """Positions as an ``(S, 2)`` array of ``(x, y)`` in pixels."""
        return np.column_stack([self.x, self.y]) if len(self) else np.zeros((0, 2))

    def subset(self, keep: np.ndarray) -> "Sites":
        """The sites selected by a boolean mask or index array (renumbered from 0)."""
        return Sites(self.x[keep], self.y[keep], self.label[keep], self.n_detections[keep])

    def to_frame(self, sampling_A: float) -> pd.DataFrame:
        """``sites.csv`` table: ``site, x, y, x_angstrom, y_angstrom, label`` (pixels, Å)."""
        return pd.DataFrame(
            {
                "site": np.arange(len(self), dtype=np.int64),
                "x": self.x,
                "y": self.y,
                "x_angstrom": self.x * sampling_A,
                "y_angstrom": self.y * sampling_A,
                "label": self.label,
            },
            columns=list(SITES_COLUMNS),
        )


def _majority(labels: Sequence[Any]) -> Any:
    """Most common label; ties go to the one seen first."""
    return Counter(labels).most_common(1)[0][0] if len(labels) else 1


_Member = tuple[int, float, float, Any]  # (frame, x, y, label) of a linked detection


def _mean_xy(members: list[_Member]) -> np.ndarray:
    return np.array([[m[1], m[2]] for m in members]).mean(axis=0)


def _merge_disjoint(members: list[list[_Member]], tolerance_px: float) -> list[list[_Member]]:
    """Merge sites closer than the tolerance that never share a frame, closest pair first.

    In rounds: pairs within the tolerance are visited by increasing distance and
    merged unless one of the two already merged this round (its mean has moved) or
    they share a frame; means are then recomputed, until a round merges nothing.
    """
    members = [m for m in members if m]
    while len(members) > 1:
        means = np.array([_mean_xy(m) for m in members])
        pairs = cKDTree(means).query_pairs(r=tolerance_px, output_type="ndarray")
        if len(pairs) == 0:
            break
        frames = [{d[0] for d in m} for m in members]
        dist = np.hypot(*(means[pairs[:, 0]] - means[pairs[:, 1]]).T)
        touched: set[int] = set()
        for k in np.argsort(dist, kind="stable"):
            a, b = (int(v) for v in pairs[k])
            if a in touched or b in touched or frames[a] & frames[b]:
                continue
            members[a], members[b] = members[a] + members[b], []
            touched.update((a, b))
        if not touched:
            break
        members = [m for m in members if m]
    return members


def link_sites(
    tables: Sequence[Any],
    drift_px: np.ndarray,
    tolerance_px: float,
    *,
    min_frames: int = 1,
    merge: bool = True,
) -> Sites:
    """Cluster detections of all frames into column sites.

    Every frame's detections are moved into the reference grid (minus the drift).
    Frame by frame, they are matched one-to-one to the running mean positions of the
    sites found so far (:func:`atomfinder.analysis.matching.match_positions`: the
    largest number of pairs within ``tolerance_px``, then the smallest summed
    distance); a matched detection joins its site (whose mean is updated), an
    unmatched one opens a new site. So a site holds at most one detection per frame.
    With ``merge``, sites closer than ``tolerance_px`` that never occur in the same
    frame are then merged, closest first.

    Parameters
    ----------
    tables : sequence of DataFrame or AtomTable
        Detections per frame (``x, y`` in that frame's pixels; ``label``,
        ``probability``), see :func:`as_detections`.
    drift_px : ndarray, shape (N, 2)
        ``(dx, dy)`` per frame from :func:`register_frames`.
    tolerance_px : float
        Largest distance in pixels between a detection and its site (about a third
        of the smallest column spacing).
    min_frames : int
        Sites detected in fewer frames are dropped (1 keeps every site).
    merge : bool
        Run the merge pass described above.

    Returns
    -------
    Sites
        Position = mean of the site's registered detections, label = majority label;
        numbered in reading order (by ``y``, then ``x``).
    """
    if not tolerance_px > 0:
        raise ValueError(f"tolerance_px must be positive, got {tolerance_px}")
    drift = _check_drift(drift_px, len(tables))
    members: list[list[_Member]] = []
    sums = np.zeros((0, 2))
    counts = np.zeros(0)
    for f, table in enumerate(tables):
        det = as_detections(table)
        xy = registered_xy(det, drift[f])
        if len(xy) == 0:
            continue
        labels = det["label"].to_numpy()
        means = sums / counts[:, None] if len(counts) else np.zeros((0, 2))
        det_idx, site_idx = match_positions(xy, means, tolerance_px)
        for d, s in zip(det_idx, site_idx):
            members[s].append((f, xy[d, 0], xy[d, 1], labels[d]))
        sums[site_idx] += xy[det_idx]
        counts[site_idx] += 1
        new = np.setdiff1d(np.arange(len(xy)), det_idx)
        members.extend([(f, xy[d, 0], xy[d, 1], labels[d])] for d in new)
        sums = np.vstack([sums, xy[new]])
        counts = np.concatenate([counts, np.ones(len(new))])
    if merge:
        members = _merge_disjoint(members, tolerance_px)
    members = [m for m in members if len({d[0] for d in m}) >= max(1, int(min_frames))]
    if not members:
        return Sites(np.zeros(0), np.zeros(0), np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64))
    xy = np.array([_mean_xy(m) for m in members])
    labels = [_majority([d[3] for d in m]) for m in members]
    if all(isinstance(v, (int, np.integer)) for v in labels):
        lab = np.asarray(labels, dtype=np.int64)
    else:
        lab = np.empty(len(labels), dtype=object)
        lab[:] = labels
    n_det = np.array([len({d[0] for d in m}) for m in members], dtype=np.int64)
    order = np.lexsort((xy[:, 0], xy[:, 1]))
    return Sites(xy[order, 0], xy[order, 1], lab[order], n_det[order])


def refine_drift(
    tables: Sequence[Any], drift_px: np.ndarray, sites: Sites, tolerance_px: float, min_fraction: float = 0.5
) -> np.ndarray:
    """Refine image-registration drift with the detected columns themselves.

    Only persistent sites are used: those detected in at least ``min_fraction`` of
    the frames (and at least 2), so noise detections and transient surface columns
    do not pull the estimate. Each frame's registered detections are matched to
    these sites (as in :func:`presence`); the mean offset ``c_i`` (pixels) of the
    matched detections from their sites is a residual drift, so the refined drift is
    ``drift_i + c_i - c_0`` (the reference frame 0 keeps drift 0; ``c_0 = 0`` when it
    has no matches, and frames without matches keep their drift). Its error is about
    the per-column position error over ``sqrt(n_columns)`` (times sqrt 2 for the
    anchor), so it beats image correlation only with many well-located columns;
    relink afterwards with :func:`link_sites`.

    Returns
    -------
    ndarray of float64, shape (N, 2)
    """
    drift = _check_drift(drift_px, len(tables)).copy()
    corr = np.zeros_like(drift)
    sites = sites.subset(sites.n_detections >= max(2, int(np.ceil(min_fraction * len(tables)))))
    for f, table in enumerate(tables):
        xy = registered_xy(table, drift[f])
        if len(xy) == 0 or len(sites) == 0:
            continue
        d, s = match_positions(xy, sites.xy, tolerance_px)
        if len(d):
            corr[f] = (xy[d] - sites.xy[s]).mean(axis=0)
    return drift + corr - corr[0] if len(drift) else drift


def sites_in_view(
    sites: Sites, drift_px: np.ndarray, shape: tuple[int, int], margin_px: float = 0.0
) -> np.ndarray:
    """Which sites stay inside every frame's field of view, ``margin_px`` from the edges.

    Site ``(x, y)`` is at ``(x + dx_i, y + dy_i)`` in frame ``i``; it is in view when
    that lies within ``[margin, W - 1 - margin] x [margin, H - 1 - margin]`` for every
    frame. Sites outside (drifted out, or near the edge where detection is unreliable)
    cannot be told absent from unseen, so :func:`track` drops them.

    Returns
    -------
    ndarray of bool, shape (S,)
    """
    drift = np.asarray(drift_px, dtype=np.float64).reshape(-1, 2)
    if len(sites) == 0 or len(drift) == 0:
        return np.ones(len(sites), dtype=bool)
    h, w = shape
    x = sites.x[:, None] + drift[None, :, 0]
    y = sites.y[:, None] + drift[None, :, 1]
    ok = (x >= margin_px) & (x <= w - 1 - margin_px) & (y >= margin_px) & (y <= h - 1 - margin_px)
    return ok.all(axis=1)


# --------------------------------------------------------------------------- presence and events


def presence(tables: Sequence[Any], drift_px: np.ndarray, sites: Sites, tolerance_px: float) -> pd.DataFrame:
    """Which sites are occupied in each frame.

    A site is present in frame ``i`` when one of that frame's registered detections
    is matched to it one-to-one (:func:`atomfinder.analysis.matching.match_positions`
    against the site positions, within ``tolerance_px`` pixels).

    Returns
    -------
    DataFrame
        ``frame, site, present, probability``, one row per (frame, site), sorted by
        frame then site; ``present`` is 0/1, ``probability`` the matched detection's
        probability, 0 when absent.
    """
    drift = _check_drift(drift_px, len(tables))
    n_sites = len(sites)
    present = np.zeros((len(tables), n_sites), dtype=np.int64)
    prob = np.zeros((len(tables), n_sites))
    for f, table in enumerate(tables):
        det = as_detections(table)
        if len(det) == 0 or n_sites == 0:
            continue
        d, s = match_positions(registered_xy(det, drift[f]), sites.xy, tolerance_px)
        present[f, s] = 1
        prob[f, s] = det["probability"].to_numpy()[d]
    return pd.DataFrame(
        {
            "frame": np.repeat(np.arange(len(tables), dtype=np.int64), n_sites),
            "site": np.tile(np.arange(n_sites, dtype=np.int64), len(tables)),
            "present": present.reshape(-1),
            "probability": prob.reshape(-1),
        },
        columns=list(PRESENCE_COLUMNS),
    )


def presence_matrix(
    presence_df: pd.DataFrame, n_sites: int | None = None, n_frames: int | None = None
) -> np.ndarray:
    """``present`` as an int array of shape (n_frames, n_sites) (missing rows count as 0).

    Sizes default to the largest frame and site numbers in the table plus one.
    """
    empty = len(presence_df) == 0
    if n_frames is None:
        n_frames = 0 if empty else int(presence_df["frame"].max()) + 1
    if n_sites is None:
        n_sites = 0 if empty else int(presence_df["site"].max()) + 1
    if empty:
        return np.zeros((n_frames, n_sites), dtype=np.int64)
    m = np.zeros((n_frames, n_sites), dtype=np.int64)
    rows, cols = presence_df["frame"].to_numpy(int), presence_df["site"].to_numpy(int)
    m[rows, cols] = presence_df["present"].to_numpy(int)
    return m


def smooth_states(states: np.ndarray, min_run: int = 1) -> np.ndarray:
    """Suppress flicker: a change of state counts only once it lasts ``min_run`` frames.

    Hysteresis along axis 0 (frames): the smoothed state starts as the raw state of
    frame 0 and switches at frame ``t`` only when the raw state differs from it in
    every frame ``t .. t + min_run - 1``. So runs shorter than ``min_run`` frames
    between two runs of the other state are ignored, and a change in the last
    ``min_run - 1`` frames (not yet confirmed) is ignored too. ``min_run = 1``
    returns the states unchanged.

    Parameters
    ----------
    states : ndarray of 0/1, shape (n_frames, ...)
    min_run : int
        Frames a new state must last (>= 1).

    Returns
    -------
    ndarray of int, same shape
    """
    s = np.asarray(states, dtype=np.int64)
    k = max(1, int(min_run))
    if k == 1 or len(s) == 0:
        return s.copy()
    out = np.empty_like(s)
    cur = s[0].copy()
    n = len(s)
    for t in range(n):
        if t + k <= n:
            window = s[t : t + k]
            switch = np.all(window != cur[None], axis=0)
            cur = np.where(switch, s[t], cur)
        out[t] = cur
    return out


def events(
    presence_df: pd.DataFrame, sites: Sites, min_run: int = 1, n_frames: int | None = None
) -> pd.DataFrame:
    """Appearances and disappearances of sites.

    An event is written for frame ``t`` and site ``s`` when the site's state in ``t``
    differs from its state in ``t - 1`` (DESIGN.md); frame 0 has no events. With
    ``min_run > 1`` the states are first smoothed by :func:`smooth_states` (a change
    must last ``min_run`` frames), which removes single-frame flicker from missed or
    spurious detections; ``presence.csv`` keeps the raw states. ``n_frames`` is
    needed only when ``presence_df`` is empty (no sites).

    Returns
    -------
    DataFrame
        ``frame, site, event, x, y`` (event ``"appear"`` or ``"disappear"``; ``x, y``
        the site position in reference-frame pixels), sorted by frame then site.
    """
    m = smooth_states(presence_matrix(presence_df, len(sites), n_frames), min_run)
    if len(m) < 2 or m.shape[1] == 0:
        dtypes = (np.int64, np.int64, object, np.float64, np.float64)
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(EVENTS_COLUMNS, dtypes)})
    change = np.diff(m, axis=0)
    f, s = np.nonzero(change)
    return pd.DataFrame(
        {
            "frame": (f + 1).astype(np.int64),
            "site": s.astype(np.int64),
            "event": np.where(change[f, s] > 0, "appear", "disappear").astype(object),
            "x": sites.x[s],
            "y": sites.y[s],
        },
        columns=list(EVENTS_COLUMNS),
    )


def summary(
    presence_df: pd.DataFrame,
    events_df: pd.DataFrame,
    frame_interval_s: float | None = None,
    *,
    n_frames: int | None = None,
    n_sites: int | None = None,
) -> pd.DataFrame:
    """Occupancy and event rate per frame.

    Parameters
    ----------
    presence_df : DataFrame
        From :func:`presence`.
    events_df : DataFrame
        From :func:`events`.
    frame_interval_s : float, optional
        Time between frames in seconds. Without it the rate is per frame.
    n_frames, n_sites : int, optional
        Sizes of the series, needed only when they cannot be read from
        ``presence_df`` (no sites: the table is empty).

    Returns
    -------
    DataFrame
        ``frame, occupancy, events, event_rate``: ``occupancy`` = fraction of sites
        present (0 when there are no sites), ``events`` = number of appear +
        disappear events in the frame, ``event_rate`` = events per site per frame, or
        per site per second when ``frame_interval_s`` is given (0 for frame 0).
    """
    m = presence_matrix(presence_df, n_sites, n_frames)
    n_frames, n_sites = m.shape
    occ = m.mean(axis=1) if n_sites else np.zeros(n_frames)
    n_ev = np.zeros(n_frames, dtype=np.int64)
    if len(events_df):
        n_ev += np.bincount(events_df["frame"].to_numpy(int), minlength=n_frames)[:n_frames]
    rate = n_ev / max(n_sites, 1)
    if frame_interval_s is not None:
        if not frame_interval_s > 0:
            raise ValueError(f"frame_interval_s must be positive, got {frame_interval_s}")
        rate = rate / frame_interval_s
    return pd.DataFrame(
        {"frame": np.arange(n_frames, dtype=np.int64), "occupancy": occ, "events": n_ev, "event_rate": rate},
        columns=list(OCCUPANCY_COLUMNS),
    )


# --------------------------------------------------------------------------- outputs


def drift_table(drift_px: np.ndarray) -> pd.DataFrame:
    """``drift.csv`` table: ``frame, dx, dy`` (pixels, sign as in :func:`register_frames`)."""
    d = np.asarray(drift_px, dtype=np.float64).reshape(-1, 2)
    frame = np.arange(len(d), dtype=np.int64)
    return pd.DataFrame({"frame": frame, "dx": d[:, 0], "dy": d[:, 1]}, columns=list(DRIFT_COLUMNS))


def write_csv(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a table atomically (temporary file in the same folder + ``os.replace``)."""
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def plot_presence(
    presence_df: pd.DataFrame,
    sites: Sites,
    path: Path | str,
    frame_interval_s: float | None = None,
    n_frames: int | None = None,
) -> Path:
    """Raster of sites (rows, most occupied first) x frames (columns); present = dark."""
    m = presence_matrix(presence_df, len(sites), n_frames)
    n_frames, n_sites = m.shape
    order = np.argsort(-m.sum(axis=0), kind="stable") if n_sites else np.zeros(0, int)
    fig, ax = plt.subplots(figsize=(min(12, 3 + 0.15 * n_frames), min(12, 2 + 0.12 * max(n_sites, 1))))
    if n_sites and n_frames:
        ax.imshow(m[:, order].T, cmap="gray_r", vmin=0, vmax=1, aspect="auto", interpolation="nearest",
                  extent=(-0.5, n_frames - 0.5, n_sites - 0.5, -0.5))
        if n_sites <= 40:
            ax.set_yticks(range(n_sites), [str(s) for s in order], fontsize=6)
    else:
        ax.text(0.5, 0.5, "no sites", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("frame" if frame_interval_s is None else f"frame ({frame_interval_s:g} s per frame)")
    ax.set_ylabel("site (by occupancy)")
    ax.set_title(f"site presence (dark = present): {n_sites} sites, {n_frames} frames")
    return save_figure(fig, path)


def plot_occupancy(summary_df: pd.DataFrame, path: Path | str, frame_interval_s: float | None = None) -> Path:
    """Occupancy (fraction of sites present) and event rate against frame or time."""
    t = summary_df["frame"].to_numpy(dtype=np.float64)
    xlabel, rate_unit = "frame", "events / site / frame"
    if frame_interval_s is not None:
        t = t * frame_interval_s
        xlabel, rate_unit = "time (s)", "events / site / s"
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 4.5), sharex=True)
    a1.plot(t, summary_df["occupancy"], "o-", ms=3, color="#007aff")
    a1.set_ylabel("occupancy")
    a1.set_ylim(-0.02, 1.02)
    a1.grid(alpha=0.3)
    width = (t[1] - t[0]) * 0.8 if len(t) > 1 else 0.8
    a2.bar(t, summary_df["event_rate"], width=width, color="#ff3b30")
    a2.set_ylabel(rate_unit)
    a2.set_xlabel(xlabel)
    return save_figure(fig, path)


def _colour_rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def gif_frame_indices(n_frames: int, max_frames: int = GIF_MAX_FRAMES) -> np.ndarray:
    """At most ``max_frames`` evenly spaced frame indices (all of them when there are few)."""
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n_frames - 1, min(n_frames, max_frames)).round().astype(np.int64))


def overlay_frames(
    frames: np.ndarray,
    drift_px: np.ndarray,
    presence_df: pd.DataFrame,
    sites: Sites,
    ring_px: float,
    max_side: int = GIF_MAX_SIDE,
    max_frames: int = GIF_MAX_FRAMES,
) -> tuple[list[Any], np.ndarray]:
    """Render registered frames with present sites as rings and absent ones as faint crosses.

    Parameters
    ----------
    frames : ndarray, shape (N, H, W)
        Raw frames; the shown ones are registered (:func:`register_images`).
    drift_px : ndarray, shape (N, 2)
        Drift per frame, pixels.
    presence_df : DataFrame
        From :func:`presence`.
    sites : Sites
    ring_px : float
        Ring radius in frame pixels.
    max_side : int
        Largest side of an output image in display pixels (larger frames are scaled
        down, small ones up by a whole factor of at most 4).
    max_frames : int
        Largest number of frames (evenly spaced, :func:`gif_frame_indices`).

    Returns
    -------
    (images, frame_indices)
        Pillow RGB images (each labelled with its frame number) and the frames shown.
    """
    from PIL import Image, ImageDraw, ImageFont

    raw = np.asarray(frames)
    n, h, w = raw.shape
    idx = gif_frame_indices(n, max_frames)
    stack = register_images(raw[idx], np.asarray(drift_px, dtype=np.float64)[idx])
    side = max(h, w)
    scale = max_side / side if side > max_side else float(max(1, min(4, max_side // side)))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # whole-factor enlargement repeats pixels (exact, and compresses well); reduction averages
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
    step = max(1, max(h, w) // 256)  # percentiles on a subsample
    lo, hi = np.percentile(stack[:, ::step, ::step], [1, 99]) if stack.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    m = presence_matrix(presence_df, len(sites), n)
    uniq = sorted({str(v) for v in sites.label})
    colour = {lab: _colour_rgb(CLASS_COLOURS[1 + i % (len(CLASS_COLOURS) - 1)]) for i, lab in enumerate(uniq)}
    r = max(2.0, ring_px * scale)
    font = ImageFont.load_default()
    images = []
    for j, f in enumerate(idx):
        grey = np.clip((stack[j] - lo) / (hi - lo), 0, 1) * 255
        img = Image.fromarray(grey.astype(np.uint8), "L").resize(size, resample).convert("RGBA")
        layer = Image.new("RGBA", size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for s in range(len(sites)):
            cx, cy = (sites.x[s] + 0.5) * scale - 0.5, (sites.y[s] + 0.5) * scale - 0.5
            c = colour[str(sites.label[s])]
            if m[f, s]:
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=c + (255,), width=max(1, round(r / 5)))
            else:
                k, lw = 0.8 * r, max(1, round(r / 6))
                draw.line((cx - k, cy - k, cx + k, cy + k), fill=c + (160,), width=lw)
                draw.line((cx - k, cy + k, cx + k, cy - k), fill=c + (160,), width=lw)
        text = f"frame {f}"
        box = draw.textbbox((3, 2), text, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0, 255))
        draw.text((3, 2), text, fill=(255, 255, 255, 255), font=font)
        images.append(Image.alpha_composite(img, layer).convert("RGB"))
    return images, idx


def write_gif(images: Sequence[Any], path: Path | str, duration_ms: int = 300) -> Path:
    """Write Pillow images as a looping GIF atomically, ``duration_ms`` per frame.

    (Pillow merges identical consecutive frames; :func:`overlay_frames` labels each
    image with its frame number, so none are.)
    """
    from PIL import Image

    pal = [im.convert("P", palette=Image.Palette.ADAPTIVE, colors=128) for im in images]
    return atomic_write(path, lambda tmp: pal[0].save(
        tmp, format="GIF", save_all=True, append_images=pal[1:], duration=duration_ms, loop=0, optimize=False, disposal=1
    ))


def track(
    frames_images: np.ndarray,
    detect: Callable[[np.ndarray], Any],
    sampling_A: float,
    out_dir: Path | str,
    tolerance_A: float = 0.7,
    frame_interval_s: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    min_run: int = 1,
    border_A: float = 1.0,
    mode: str = "first",
    upsample: int = 10,
    min_frames: int = 1,
    refine: bool = False,
    gif: bool = True,
) -> dict[str, Path]:
    """Track column sites through a time series and write every output.

    Steps: :func:`register_frames` → ``detect`` on each raw frame →
    :func:`link_sites` → (:func:`refine_drift` → :func:`link_sites` again) → drop
    sites not in every frame's view (:func:`sites_in_view`) → :func:`presence` →
    :func:`events` → :func:`summary`.

    Parameters
    ----------
    frames_images : ndarray, shape (N, H, W)
        The series, in time order.
    detect : callable
        ``detect(frame) -> table`` with ``x, y`` (pixels of that frame), ``label``,
        ``probability`` (DataFrame or AtomTable), e.g. a closure over
        :func:`atomfinder.detection.pipeline.detect_array`.
    sampling_A : float
        Pixel size in Å/pixel.
    out_dir : path
        Folder for the outputs (created).
    tolerance_A : float
        Largest distance in Å between a detection and its site.
    frame_interval_s : float, optional
        Time between frames in seconds (rates per second and a time axis).
    progress : callable, optional
        ``progress(done, total)`` after each frame is detected.
    min_run : int
        Frames a change must last to count as an event (:func:`smooth_states`).
    border_A : float
        Sites closer than this (Å) to the edge of any frame's field are dropped.
    mode : {"first", "previous"}
        Registration mode (:func:`register_frames`).
    upsample : int
        Registration resolution ``1 / upsample`` pixels.
    min_frames : int
        Sites detected in fewer frames are dropped (:func:`link_sites`).
    refine : bool
        Refine the image-correlation drift with the detected columns
        (:func:`refine_drift`); ``drift.csv`` holds the drift actually used. Off by
        default: with a few dozen noisy columns it is no more precise than the
        correlation; it pays off with hundreds of well-located columns.
    gif : bool
        Write ``overlay.gif``.

    Returns
    -------
    dict of str to Path
        Keyed by file name: ``sites.csv``, ``presence.csv``, ``events.csv``,
        ``drift.csv``, ``occupancy.csv``, ``presence.png``, ``occupancy.png`` and
        ``overlay.gif``. All coordinates are in the first frame's pixel grid; every
        file is written atomically.
    """
    stack = np.asarray(frames_images)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3 or stack.shape[0] == 0:
        raise ValueError(f"expected frames of shape (N, H, W) with N >= 1, got {np.shape(frames_images)}")
    if not (np.isfinite(sampling_A) and sampling_A > 0):
        raise ValueError(f"sampling must be a positive finite number of Å/pixel, got {sampling_A}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = stack.shape[0]
    tol_px = tolerance_A / sampling_A
    drift = register_frames(stack, reference=0, upsample=upsample, mode=mode)
    tables = []
    for i in range(n):
        tables.append(as_detections(detect(stack[i])))
        if progress is not None:
            progress(i + 1, n)
    sites = link_sites(tables, drift, tol_px, min_frames=min_frames)
    if refine:
        drift = refine_drift(tables, drift, sites, tol_px)
        sites = link_sites(tables, drift, tol_px, min_frames=min_frames)
    sites = sites.subset(sites_in_view(sites, drift, stack.shape[1:], border_A / sampling_A))
    pres = presence(tables, drift, sites, tol_px)
    ev = events(pres, sites, min_run=min_run, n_frames=n)
    summ = summary(pres, ev, frame_interval_s, n_frames=n, n_sites=len(sites))
    paths = {
        "sites.csv": write_csv(sites.to_frame(sampling_A), out / "sites.csv"),
        "presence.csv": write_csv(pres, out / "presence.csv"),
        "events.csv": write_csv(ev, out / "events.csv"),
        "drift.csv": write_csv(drift_table(drift), out / "drift.csv"),
        "occupancy.csv": write_csv(summ, out / "occupancy.csv"),
        "presence.png": plot_presence(pres, sites, out / "presence.png", frame_interval_s, n_frames=n),
        "occupancy.png": plot_occupancy(summ, out / "occupancy.png", frame_interval_s),
    }
    if gif:
        images, _ = overlay_frames(stack, drift, pres, sites, ring_px=max(2.0, 0.6 * tol_px))
        paths["overlay.gif"] = write_gif(images, out / "overlay.gif")
    return paths


__all__ = [
    "Sites",
    "as_detections",
    "bandpass",
    "bin_image",
    "coarse_bin",
    "coarse_shift",
    "drift_table",
    "events",
    "frame_shift",
    "gif_frame_indices",
    "hann_window",
    "link_sites",
    "overlay_frames",
    "pair_shift",
    "plot_occupancy",
    "plot_presence",
    "presence",
    "presence_matrix",
    "refine_drift",
    "register_frames",
    "register_images",
    "registered_xy",
    "sites_in_view",
    "smooth",
    "smooth_states",
    "summary",
    "track",
    "write_csv",
    "write_gif",
]
