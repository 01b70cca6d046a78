"""A calibrated confidence and a positional error bar for every detection.

The raw peak value of a probability map is no confidence: a network trained with
disk targets saturates at 1 over most atoms, real or not. Each detection is
described instead by a few *features* of the maps and of the network's input
around it (:func:`peak_features`):

- ``peak``: the atom probability at the peak pixel (the table's ``probability``);
- ``disk_mean``: the mean atom probability within ``radius_px`` of the refined
  position (a blob that is only partly filled, or smeared, scores lower);
- ``local_noise``: the mean magnitude of the discrete Laplacian of the normalised
  input around the atom, divided by ``sqrt(20)``: about 1 where the input is white
  noise at unit contrast, small where a clean lattice dominates;
- ``neighbour_spread``: the coefficient of variation of the distances to the three
  nearest other detections (:func:`neighbour_spread`): near 0 inside any regular
  lattice of atoms or columns, larger at edges and for detections scattered over
  noise, amorphous carbon or contamination;
- ``map_background``: the mean atom probability around the detection, over a
  window of ``BACKGROUND_WINDOW_RADII`` disk radii, outside the disks of all
  detections (:func:`map_background`): near 0 where the network sees a clean
  lattice (atoms and crisp background), 0.2-0.35 where it paints a haze of partial
  atoms over vacuum, amorphous carbon or noise.

A calibration uses the first three features, optionally followed by any of the
others (cards calibrated before those existed name three in
``calibration.features``).

:class:`Calibration` maps them to

- ``confidence``: the probability that the detection is a real atom of its class,
  a logistic score of the features followed by an isotonic regression, both
  fitted on held-out simulations (:func:`fit_calibration`);
- ``sigma_A``: the 1-σ error of each coordinate (x and y alike) in Å, a
  log-linear function of the features fitted by Gaussian maximum likelihood to
  the true errors of matched detections and rescaled so that 68.3 % of the
  calibration errors lie within ``sigma_A``.

The fitted numbers live in the model card (``card.calibration``); the report
functions (:func:`expected_calibration_error`, :func:`reliability_bins`,
:func:`sigma_coverage`) measure both on independent images. NumPy and SciPy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.optimize import isotonic_regression, minimize

#: Names of the features, in the order of the columns of :func:`peak_features`.
FEATURES = ("peak", "disk_mean", "local_noise", "neighbour_spread", "map_background")
#: The features every calibration uses (the first columns of the feature matrix).
BASE_FEATURES = FEATURES[:3]
#: Neighbours whose distances make up ``neighbour_spread``.
SPREAD_NEIGHBOURS = 3
#: Offset added to ``neighbour_spread`` and ``map_background`` before their logarithm is taken.
LOG_OFFSET = 0.01
#: Side of the ``map_background`` window, in units of the disk radius (0.4 Å: a 4 Å window).
BACKGROUND_WINDOW_RADII = 10.0
#: Disks of this many disk radii around each detection are left out of ``map_background``.
BACKGROUND_DISK_RADII = 1.25
#: Probabilities are clipped to [EPS, 1 - EPS] before their logit is taken.
EPS = 1e-4
#: Side (pixels) of the window over which the Laplacian magnitude is averaged.
NOISE_WINDOW_PX = 9
#: Detections handled at a time where each needs a patch of pixels (bounds memory:
#: an 8192² image has ~250 000 atoms).
_CHUNK = 8192
#: Rows of a map filtered at a time (plus a halo) where a whole-map copy would be large.
_BLOCK_ROWS = 1024
#: Share of errors within ±1 σ of a normal distribution.
ONE_SIGMA_SHARE = 0.6826894921370859


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def disk_means(image: np.ndarray, x_px: np.ndarray, y_px: np.ndarray, radius_px: float) -> np.ndarray:
    """Mean of ``image`` over the pixels within ``radius_px`` of each ``(x, y)``.

    Pixels outside the image do not count; a disk with no pixel inside gives NaN.

    Parameters
    ----------
    image : ndarray, shape (H, W)
    x_px, y_px : ndarray, shape (n,)
        Sub-pixel positions (x = column, y = row).
    radius_px : float
        Disk radius in pixels (at least 0.5).

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    img = np.asarray(image, dtype=np.float32)
    x = np.asarray(x_px, dtype=np.float64).reshape(-1)
    y = np.asarray(y_px, dtype=np.float64).reshape(-1)
    if len(x) == 0:
        return np.zeros(0)
    r = max(float(radius_px), 0.5)
    reach = int(np.ceil(r)) + 1
    offs = np.arange(-reach, reach + 1)
    oy, ox = (g.ravel() for g in np.meshgrid(offs, offs, indexing="ij"))
    out = np.empty(len(x))
    for start in range(0, len(x), _CHUNK):
        cy, cx = y[start : start + _CHUNK], x[start : start + _CHUNK]
        iy, ix = np.rint(cy).astype(np.int64), np.rint(cx).astype(np.int64)
        py = iy[:, None] + oy[None]
        px = ix[:, None] + ox[None]
        inside_disk = (py - cy[:, None]) ** 2 + (px - cx[:, None]) ** 2 <= r * r
        inside_img = (py >= 0) & (py < img.shape[0]) & (px >= 0) & (px < img.shape[1])
        w = inside_disk & inside_img
        vals = img[np.clip(py, 0, img.shape[0] - 1), np.clip(px, 0, img.shape[1] - 1)]
        n = w.sum(axis=1)
        total = np.where(w, vals, 0.0).sum(axis=1, dtype=np.float64)
        out[start : start + _CHUNK] = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return out


def _abs_laplacian(image: np.ndarray) -> np.ndarray:
    """``|4 x - sum of the 4 neighbours|`` with mirrored edges (numpy's ``"reflect"`` pad).

    Subtracts one shifted neighbour at a time into one float32 array, without a padded
    copy, in the order ``up, down, left, right`` (the same rounding as the padded
    expression).
    """
    ch = np.asarray(image, dtype=np.float32)
    h, w = ch.shape
    term = np.multiply(ch, np.float32(4.0))
    term[1:] -= ch[:-1]
    term[0] -= ch[1 if h > 1 else 0]
    term[:-1] -= ch[1:]
    term[-1] -= ch[-2 if h > 1 else 0]
    term[:, 1:] -= ch[:, :-1]
    term[:, 0] -= ch[:, 1 if w > 1 else 0]
    term[:, :-1] -= ch[:, 1:]
    term[:, -1] -= ch[:, -2 if w > 1 else 0]
    return np.abs(term, out=term)


def local_noise_map(normalised: np.ndarray, window_px: int = NOISE_WINDOW_PX) -> np.ndarray:
    """``|Laplacian|`` of the normalised input averaged over a square window, over ``sqrt(20)``.

    About ``sqrt(2 / pi) ~ 0.8`` times the local noise-to-contrast ratio for white
    noise (1 / 0.8 for unit white noise), near 0 for smooth, noise-free contrast.

    Parameters
    ----------
    normalised : ndarray, shape (H, W) or (C, H, W)
        The network's input; channels are averaged.
    window_px : int
        Side of the averaging window in pixels.

    Returns
    -------
    ndarray of float32, shape (H, W)
    """
    x = np.asarray(normalised, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    lap = None
    for ch in x:
        term = _abs_laplacian(ch)
        if lap is None:
            lap = term
        else:
            lap += term
        del term
    lap /= np.float32(len(x) * np.sqrt(20.0))
    return uniform_filter(lap, size=window_px, mode="reflect", output=lap)  # line by line: safe in place


def neighbour_spread(x_px: np.ndarray, y_px: np.ndarray, k: int = SPREAD_NEIGHBOURS) -> np.ndarray:
    """Coefficient of variation (std / mean) of the distances to the ``k`` nearest other detections.

    Scale-free, so pixels of any grid will do. 0 where the ``k`` nearest neighbours
    are equidistant (the three neighbours of a graphene atom, the nearest columns of
    a projected crystal), about 0.3 at an edge with one neighbour missing, and
    typically 0.2-0.5 for points scattered at random. With fewer than ``k + 1``
    detections in the image it is 1 for all of them.

    Parameters
    ----------
    x_px, y_px : ndarray, shape (n,)
        Positions of all detections of an image (x = column, y = row).
    k : int
        Number of neighbours.

    Returns
    -------
    ndarray of float64, shape (n,), values in [0, 1]
    """
    from scipy.spatial import cKDTree

    xy = np.column_stack([np.asarray(x_px, np.float64).reshape(-1), np.asarray(y_px, np.float64).reshape(-1)])
    if len(xy) <= k:
        return np.ones(len(xy))
    d, _ = cKDTree(xy).query(xy, k=k + 1)
    d = d[:, 1:]
    mean = d.mean(axis=1)
    cv = np.where(mean > 0, d.std(axis=1) / np.maximum(mean, 1e-12), 1.0)
    return np.clip(cv, 0.0, 1.0)


def map_background(atom_map: np.ndarray, x_px: np.ndarray, y_px: np.ndarray, radius_px: float) -> np.ndarray:
    """Mean atom probability around each detection, outside the disks of all detections.

    The window is a square of ``BACKGROUND_WINDOW_RADII * radius_px`` pixels centred
    on the detection; the disks of ``BACKGROUND_DISK_RADII * radius_px`` around every
    detection are left out. A window with nothing left gives 0.

    Parameters
    ----------
    atom_map : ndarray, shape (H, W)
        Atom probability ``1 - p(background)``.
    x_px, y_px : ndarray, shape (n,)
        Positions of all detections of the image (pixels of ``atom_map``).
    radius_px : float
        Disk radius in pixels (about the label radius).

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    amap = np.asarray(atom_map, dtype=np.float32)
    x = np.asarray(x_px, dtype=np.float64).reshape(-1)
    y = np.asarray(y_px, dtype=np.float64).reshape(-1)
    if len(x) == 0:
        return np.zeros(0)
    h, w = amap.shape
    r = max(BACKGROUND_DISK_RADII * float(radius_px), 0.5)
    reach = int(np.ceil(r))
    offs = np.arange(-reach, reach + 1)
    oy, ox = (g.ravel() for g in np.meshgrid(offs, offs, indexing="ij"))
    inside = oy**2 + ox**2 <= r * r
    oy, ox = oy[inside], ox[inside]
    iy, ix = np.rint(y).astype(np.int64), np.rint(x).astype(np.int64)
    outside = np.ones((h, w), bool)
    for start in range(0, len(x), _CHUNK):
        py = (iy[start : start + _CHUNK, None] + oy[None]).ravel()
        px = (ix[start : start + _CHUNK, None] + ox[None]).ravel()
        ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
        outside[py[ok], px[ok]] = False
    size = max(3, int(round(BACKGROUND_WINDOW_RADII * float(radius_px))) | 1)
    cy, cx = np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)
    total, count = np.empty(len(x)), np.empty(len(x))
    # Box sums in blocks of rows with a halo of half a window (zeros beyond the image,
    # as mode="constant" of the whole map): a large map needs no full-size float copy.
    half = size // 2
    for top in range(0, h, _BLOCK_ROWS):
        here = (cy >= top) & (cy < top + _BLOCK_ROWS)
        if not here.any():
            continue
        lo, hi = max(0, top - half), min(h, top + _BLOCK_ROWS + half)
        weight = outside[lo:hi].astype(np.float32)
        masked = np.multiply(amap[lo:hi], weight)
        uniform_filter(masked, size=size, mode="constant", output=masked)  # line by line: safe in place
        uniform_filter(weight, size=size, mode="constant", output=weight)
        total[here], count[here] = masked[cy[here] - lo, cx[here]], weight[cy[here] - lo, cx[here]]
    return np.where(count > 1e-3, total / np.maximum(count, 1e-3), 0.0)


def peak_features(
    atom_map: np.ndarray,
    x_px: np.ndarray,
    y_px: np.ndarray,
    peak: np.ndarray,
    normalised: np.ndarray,
    radius_px: float,
) -> np.ndarray:
    """The :data:`FEATURES` of each detection, on the model's grid.

    Parameters
    ----------
    atom_map : ndarray, shape (H, W)
        Atom probability ``1 - p(background)``.
    x_px, y_px : ndarray, shape (n,)
        Refined positions on the model grid (pixels) of all detections of the image.
    peak : ndarray, shape (n,)
        Atom probability at each peak pixel.
    normalised : ndarray, shape (H, W) or (C, H, W)
        The normalised network input.
    radius_px : float
        Radius (pixels) of the disk for ``disk_mean``, about the label radius.

    Returns
    -------
    ndarray of float64, shape (n, 5)
        Columns ``peak, disk_mean, local_noise, neighbour_spread, map_background``.
    """
    x = np.asarray(x_px, dtype=np.float64).reshape(-1)
    y = np.asarray(y_px, dtype=np.float64).reshape(-1)
    if len(x) == 0:
        return np.zeros((0, len(FEATURES)))
    noise = local_noise_map(normalised)
    iy = np.clip(np.rint(y).astype(np.int64), 0, noise.shape[0] - 1)
    ix = np.clip(np.rint(x).astype(np.int64), 0, noise.shape[1] - 1)
    noise_at = noise[iy, ix].astype(np.float64)
    del noise  # one large map at a time
    return np.column_stack([
        np.asarray(peak, dtype=np.float64).reshape(-1),
        disk_means(atom_map, x, y, radius_px),
        noise_at,
        neighbour_spread(x, y),
        map_background(atom_map, x, y, radius_px),
    ])


def _check_feature_names(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(names)
    known = all(n in FEATURES for n in names)
    ordered = known and [FEATURES.index(n) for n in names] == sorted(FEATURES.index(n) for n in names)
    if names[: len(BASE_FEATURES)] != BASE_FEATURES or len(set(names)) != len(names) or not ordered:
        raise ValueError(f"calibration features {list(names)} must be {list(BASE_FEATURES)} followed by any of "
                         f"{list(FEATURES[len(BASE_FEATURES):])}")
    return names


def design_matrix(features: np.ndarray, names: Sequence[str] = BASE_FEATURES) -> np.ndarray:
    """The regressors of a calibration, one row per detection.

    ``[1, logit(peak), logit(disk_mean), log(local_noise)]``, followed by
    ``log(neighbour_spread + 0.01)`` and ``log(map_background + 0.01)`` when
    ``names`` includes them (in that order).

    Parameters
    ----------
    features : ndarray, shape (n, m)
        Columns in the order of :data:`FEATURES` (the first ``m`` of them).
    names : sequence of str
        The features the calibration uses: :data:`BASE_FEATURES`, optionally followed
        by any of the others in the order of :data:`FEATURES`.
    """
    names = _check_feature_names(names)
    f = np.asarray(features, dtype=np.float64)
    f = f.reshape(-1, f.shape[-1] if f.ndim > 1 else len(BASE_FEATURES))
    if f.shape[1] < max(FEATURES.index(n) for n in names) + 1:
        raise ValueError(f"feature matrix has {f.shape[1]} columns; the calibration needs {list(names)}")
    disk = np.where(np.isfinite(f[:, 1]), f[:, 1], f[:, 0])
    columns = [np.ones(len(f)), _logit(f[:, 0]), _logit(disk), np.log(np.maximum(f[:, 2], 1e-3))]
    for name in names[len(BASE_FEATURES):]:
        columns.append(np.log(np.clip(f[:, FEATURES.index(name)], 0.0, 1.0) + LOG_OFFSET))
    return np.column_stack(columns)


@dataclass(frozen=True)
class Calibration:
    """Fitted maps from peak features to ``confidence`` and ``sigma_A``.

    Attributes
    ----------
    logistic : tuple of float
        Weights of :func:`design_matrix`'s columns in the logistic score.
    isotonic_score, isotonic_value : tuple of float
        Knots of the isotonic map from the logistic score to the confidence
        (linear interpolation, constant beyond the ends).
    sigma_log : tuple of float
        Weights of :func:`design_matrix`'s columns in ``log(sigma_A)``.
    sigma_scale : float
        Factor applied to ``exp(...)`` so that 68.3 % of the calibration errors
        fall within ±``sigma_A``.
    radius_px : float
        Disk radius of the ``disk_mean`` feature (model pixels).
    match_radius_A : float
        Matching radius that defined "real atom" in the fit (Å).
    n_detections, n_matched : int
        Detections and matched detections the fit used.
    features : tuple of str
        The features of :func:`design_matrix` (:data:`BASE_FEATURES`, optionally
        followed by others of :data:`FEATURES`, in its order).
    """

    logistic: tuple[float, ...]
    isotonic_score: tuple[float, ...]
    isotonic_value: tuple[float, ...]
    sigma_log: tuple[float, ...]
    sigma_scale: float
    radius_px: float
    match_radius_A: float = 0.5
    n_detections: int = 0
    n_matched: int = 0
    features: tuple[str, ...] = BASE_FEATURES

    def confidence(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probability that each detection is a real atom of its class."""
        if len(features) == 0:
            return np.zeros(0)
        score = design_matrix(features, self.features) @ np.asarray(self.logistic)
        return np.clip(np.interp(score, self.isotonic_score, self.isotonic_value), 0.0, 1.0)

    def sigma_A(self, features: np.ndarray) -> np.ndarray:
        """1-σ positional error of each coordinate in Å."""
        if len(features) == 0:
            return np.zeros(0)
        log_s = design_matrix(features, self.features) @ np.asarray(self.sigma_log)
        return self.sigma_scale * np.exp(np.clip(log_s, -20.0, 5.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "logistic score of the peak features + isotonic regression; log-linear Gaussian sigma",
            "features": list(self.features),
            "logistic": list(self.logistic),
            "isotonic_score": list(self.isotonic_score),
            "isotonic_value": list(self.isotonic_value),
            "sigma_log": list(self.sigma_log),
            "sigma_scale": float(self.sigma_scale),
            "radius_px": float(self.radius_px),
            "match_radius_A": float(self.match_radius_A),
            "n_detections": int(self.n_detections),
            "n_matched": int(self.n_matched),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        names = _check_feature_names(d.get("features", BASE_FEATURES))
        if len(d["logistic"]) != len(names) + 1 or len(d["sigma_log"]) != len(names) + 1:
            raise ValueError(f"calibration weights do not fit its features {list(names)}")
        return cls(
            logistic=tuple(float(v) for v in d["logistic"]),
            isotonic_score=tuple(float(v) for v in d["isotonic_score"]),
            isotonic_value=tuple(float(v) for v in d["isotonic_value"]),
            sigma_log=tuple(float(v) for v in d["sigma_log"]),
            sigma_scale=float(d["sigma_scale"]),
            radius_px=float(d["radius_px"]),
            match_radius_A=float(d.get("match_radius_A", 0.5)),
            n_detections=int(d.get("n_detections", 0)),
            n_matched=int(d.get("n_matched", 0)),
            features=names,
        )


def _fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = X @ w
        # log(1 + exp(z)) - y z, stably
        value = np.logaddexp(0.0, z) - y * z
        grad = X.T @ (1.0 / (1.0 + np.exp(-z)) - y)
        return float(value.mean() + l2 * w[1:] @ w[1:]), grad / len(y) + 2 * l2 * np.r_[0.0, w[1:]]

    return minimize(loss, np.zeros(X.shape[1]), jac=True, method="L-BFGS-B").x


def _fit_isotonic(score: np.ndarray, y: np.ndarray, max_knots: int = 64) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(score, kind="stable")
    s, t = score[order], y[order].astype(np.float64)
    fitted = isotonic_regression(t, increasing=True).x
    # knots: the centre of each block of equal fitted values, thinned to max_knots
    change = np.flatnonzero(np.diff(fitted) != 0) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, len(s)]
    knot_s = np.array([0.5 * (s[a] + s[b - 1]) for a, b in zip(starts, ends)])
    knot_v = fitted[starts]
    if len(knot_s) > max_knots:
        idx = np.unique(np.linspace(0, len(knot_s) - 1, max_knots).round().astype(int))
        knot_s, knot_v = knot_s[idx], knot_v[idx]
    return knot_s, knot_v


def _fit_sigma(X: np.ndarray, err_A: np.ndarray) -> tuple[np.ndarray, float]:
    """Gaussian MLE of log sigma = X w for per-axis errors ``err_A`` (n, 2), then a 68.3 % rescale."""
    e2 = np.sum(err_A**2, axis=1)

    def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
        log_s = np.clip(X @ w, -20.0, 5.0)
        inv = np.exp(-2.0 * log_s)
        value = 2.0 * log_s + 0.5 * e2 * inv  # two axes
        grad = X.T @ (2.0 - e2 * inv)
        return float(value.mean()), grad / len(e2)

    w0 = np.zeros(X.shape[1])
    w0[0] = np.log(np.sqrt(np.mean(e2) / 2.0) + 1e-12)
    w = minimize(nll, w0, jac=True, method="L-BFGS-B").x
    s = np.exp(np.clip(X @ w, -20.0, 5.0))
    ratio = np.abs(err_A).ravel() / np.repeat(s, 2)
    return w, float(np.quantile(ratio, ONE_SIGMA_SHARE))


def fit_calibration(
    features: np.ndarray,
    is_true: np.ndarray,
    err_A: np.ndarray,
    radius_px: float,
    match_radius_A: float = 0.5,
    names: Sequence[str] | None = None,
) -> Calibration:
    """Fit :class:`Calibration` on detections in held-out simulations.

    Parameters
    ----------
    features : ndarray, shape (n, m)
        :func:`peak_features` of every scored detection (the first ``m`` of
        :data:`FEATURES`, ``m >= 3``).
    is_true : ndarray of bool, shape (n,)
        The detection matched a real site of its class (within ``match_radius_A``).
    err_A : ndarray, shape (n, 2)
        ``(dx, dy)`` = detected minus true position in Å; only rows with
        ``is_true`` are used.
    radius_px : float
        The ``disk_mean`` radius the features were computed with.
    match_radius_A : float
        The matching radius behind ``is_true`` (Å).
    names : sequence of str, optional
        The features to use (default: all columns of ``features``).

    Raises
    ------
    ValueError
        Fewer than 20 detections, or no true or no false one.
    """
    f = np.asarray(features, dtype=np.float64)
    f = f.reshape(-1, f.shape[-1] if f.ndim > 1 else len(BASE_FEATURES))
    names = _check_feature_names(FEATURES[: f.shape[1]] if names is None else names)
    y = np.asarray(is_true, dtype=bool).reshape(-1)
    err = np.asarray(err_A, dtype=np.float64).reshape(-1, 2)
    if len(f) != len(y) or len(err) != len(y):
        raise ValueError("features, is_true and err_A need one row per detection")
    if len(y) < 20 or y.all() or not y.any():
        raise ValueError(f"calibration needs >= 20 detections with both true and false ones, got "
                         f"{int(y.sum())} true of {len(y)}")
    X = design_matrix(f, names)
    w = _fit_logistic(X, y.astype(np.float64))
    knot_s, knot_v = _fit_isotonic(X @ w, y)
    w_sigma, scale = _fit_sigma(X[y], err[y])
    return Calibration(
        logistic=tuple(w.tolist()), isotonic_score=tuple(knot_s.tolist()), isotonic_value=tuple(knot_v.tolist()),
        sigma_log=tuple(w_sigma.tolist()), sigma_scale=scale, radius_px=float(radius_px),
        match_radius_A=float(match_radius_A), n_detections=len(y), n_matched=int(y.sum()), features=names,
    )


def reliability_bins(confidence: np.ndarray, is_true: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-width confidence bins: count, mean confidence and share of real atoms in each.

    Returns
    -------
    list of dict
        ``{"lo", "hi", "n", "mean_confidence", "fraction_true"}`` per non-empty bin.
    """
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    y = np.asarray(is_true, dtype=bool).reshape(-1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        m = idx == b
        if m.any():
            rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()),
                         "mean_confidence": float(c[m].mean()), "fraction_true": float(y[m].mean())})
    return rows


def expected_calibration_error(confidence: np.ndarray, is_true: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean ``|fraction_true - mean_confidence|`` over :func:`reliability_bins`."""
    rows = reliability_bins(confidence, is_true, n_bins)
    n = sum(r["n"] for r in rows)
    if n == 0:
        return float("nan")
    return float(sum(r["n"] * abs(r["fraction_true"] - r["mean_confidence"]) for r in rows) / n)


def sigma_coverage(err_A: np.ndarray, sigma_A: np.ndarray, multiples: Sequence[float] = (1.0, 2.0)) -> dict[str, float]:
    """Share of coordinate errors within ``k * sigma_A`` (x and y counted separately).

    For Gaussian errors with the right sigma: 68.3 % at 1 σ and 95.4 % at 2 σ.
    """
    e = np.abs(np.asarray(err_A, dtype=np.float64).reshape(-1, 2))
    s = np.asarray(sigma_A, dtype=np.float64).reshape(-1, 1)
    if len(e) == 0:
        return {f"within_{k:g}_sigma": float("nan") for k in multiples}
    return {f"within_{k:g}_sigma": float(np.mean(e <= k * s)) for k in multiples}


__all__ = [
    "BASE_FEATURES", "FEATURES", "Calibration", "design_matrix", "disk_means", "expected_calibration_error", "fit_calibration",
    "local_noise_map", "map_background", "neighbour_spread", "peak_features", "reliability_bins", "sigma_coverage",
]
