"""Drift registration of image series, shared by time series and focal series.

Both series are expressed in the first frame's pixel grid (DESIGN.md). Two
measurements live here, because the frames of the two kinds of series differ:

* **Time series** (:func:`register_frames`, used by
  :mod:`atomfinder.analysis.timeseries`): frames of the same contrast. Band-pass
  (:func:`bandpass`); whole-pixel masked normalised cross-correlation
  (:func:`coarse_shift`, picks the right lattice peak from non-periodic content such
  as a particle outline); then sub-pixel Hann-windowed cross-correlation of the
  band-passed frames (:func:`frame_shift`, upsampled DFT). Returns the drift
  ``(dx, dy)`` of each frame: a feature at ``(x, y)`` in the reference frame is at
  ``(x + dx, y + dy)`` in frame ``i``. Detection then runs on the raw frames
  (:func:`register_images` resamples them for display only).
  :func:`register_series` also checks every frame's registration
  (:class:`Registration`): the correlation at the measured shift must stand above
  the noise, and a second measurement of the drift through another frame must
  agree with the first.
* **Focal series** (:func:`register_focal_series`, used by
  :mod:`atomfinder.detection.micrograph` before inference): frames at different defoci,
  whose contrast differs and may invert. Phase correlation (only the Fourier phase,
  so the frames align on their shared lattice whatever their contrast) to
  ``1/UPSAMPLE`` pixel, applied by cubic-spline interpolation, because the network
  needs the frames stacked on one grid. Returns the ``(dy, dx)`` shift *applied* to
  each frame, i.e. minus the drift, in ``(row, col)`` order.

This module needs NumPy, SciPy and scikit-image only; it never imports
:mod:`atomfinder.analysis`, ``imaging``, ``structures`` or ``datasets``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter
from scipy.ndimage import shift as nd_shift

__all__ = [
    "MAX_DISAGREEMENT_PX",
    "MIN_CORRELATION_SIGMAS",
    "REGISTRATION_MODES",
    "UPSAMPLE",
    "Registration",
    "RegistrationWarning",
    "bandpass",
    "bin_image",
    "coarse_bin",
    "coarse_shift",
    "correlation_sigmas",
    "frame_shift",
    "hann_window",
    "overlap_correlation",
    "overlap_fraction",
    "pair_shift",
    "register_focal_series",
    "register_frames",
    "register_images",
    "register_series",
    "smooth",
]


class RegistrationWarning(UserWarning):
    """A frame's registration failed a check of :func:`register_series` (one line per frame)."""


#: Registration modes of :func:`register_frames`.
REGISTRATION_MODES = ("first", "previous")
#: Sub-pixel precision of the focal-series registration: 1/UPSAMPLE pixels.
UPSAMPLE = 10
#: A frame's registration is trusted when the correlation at its shift stands at least this many
#: noise sigmas above zero (:func:`correlation_sigmas`); two unrelated frames reach about 4-5 at
#: the best of all the shifts searched.
MIN_CORRELATION_SIGMAS = 8.0
#: Two measurements of a frame's drift (through different frames, :func:`register_series`) must
#: agree within this many pixels; a wrong lattice peak is a lattice period (several pixels) away.
MAX_DISAGREEMENT_PX = 2.0


# --------------------------------------------------------------------------- time series


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


def frame_shift(reference: np.ndarray, moving: np.ndarray, upsample: int = 10,
                max_lag_px: float | None = None) -> np.ndarray:
    """Sub-pixel displacement ``(dx, dy)`` of ``moving`` relative to ``reference`` (band-passed).

    Both images are multiplied by a Hann window (so the frame edges do not correlate)
    and cross-correlated (:func:`skimage.registration.phase_cross_correlation` with
    ``normalization=None``: phase normalisation would whiten the spectrum and undo
    the band-pass, letting noise dominate), to ``1 / upsample`` pixel. A feature at
    ``(x, y)`` in ``reference`` is at ``(x + dx, y + dy)`` in ``moving``
    (skimage returns the ``(row, col)`` shift that moves ``moving`` back, i.e. minus
    the displacement). The window favours small lags: the true displacement must be
    under about half a lattice period (see :func:`coarse_shift`). With ``max_lag_px``
    (what the coarse stage leaves: a pixel or two) a peak farther out is a lattice alias
    (it wins when part of one frame's field is missing, e.g. a band without data): the
    highest peak within ``max_lag_px`` is taken instead, to a fraction of a pixel by a
    parabola through it and its neighbours.
    """
    from skimage.registration import phase_cross_correlation

    w = hann_window(reference.shape)
    s, _, _ = phase_cross_correlation(reference * w, moving * w, upsample_factor=max(1, int(upsample)),
                                      normalization=None)
    shift = np.array([-float(s[1]), -float(s[0])])
    if max_lag_px is not None and np.max(np.abs(shift)) > max_lag_px:
        shift = _nearby_peak_shift(reference * w, moving * w, max_lag_px)
    return shift


def _nearby_peak_shift(reference: np.ndarray, moving: np.ndarray, max_lag_px: float) -> np.ndarray:
    """Displacement ``(dx, dy)`` at the highest cross-correlation peak within ``max_lag_px`` of zero
    lag, refined by a parabola through the peak and its neighbours on each axis."""
    cc = np.real(np.fft.ifft2(np.fft.fft2(reference) * np.conj(np.fft.fft2(moving))))
    h, w = cc.shape
    lag_y = np.fft.fftfreq(h, 1.0 / h)
    lag_x = np.fft.fftfreq(w, 1.0 / w)
    near = (np.abs(lag_y)[:, None] <= max_lag_px) & (np.abs(lag_x)[None, :] <= max_lag_px)
    r, c = np.unravel_index(np.argmax(np.where(near, cc, -np.inf)), cc.shape)

    def vertex(m1: float, m0: float, p1: float) -> float:
        curve = m1 - 2.0 * m0 + p1
        return 0.5 * (m1 - p1) / curve if curve < 0 else 0.0

    ty = lag_y[r] + vertex(cc[(r - 1) % h, c], cc[r, c], cc[(r + 1) % h, c])
    tx = lag_x[c] + vertex(cc[r, (c - 1) % w], cc[r, c], cc[r, (c + 1) % w])
    return np.array([-tx, -ty])  # the peak is at minus the displacement


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
    from skimage.registration import phase_cross_correlation

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
    # after the whole-pixel stage the rest is within a binned pixel: a farther peak is an alias
    limit = coarse_bin(ref.shape) + 1.0 if coarse else None
    return c + frame_shift(ref, _shift_whole(mov, -c), upsample, max_lag_px=limit)


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


def overlap_correlation(reference: np.ndarray, moving: np.ndarray, shift_xy: np.ndarray) -> tuple[float, int]:
    """Correlation coefficient of two frames over their overlap at a whole-pixel displacement.

    Parameters
    ----------
    reference, moving : ndarray, shape (H, W)
        E.g. band-passed frames (:func:`bandpass`).
    shift_xy : array of 2 numbers
        ``(dx, dy)``, rounded to whole pixels: a feature at ``(x, y)`` in
        ``reference`` is at ``(x + dx, y + dy)`` in ``moving``.

    Returns
    -------
    (float, int)
        Pearson's correlation over the overlapping pixels (0 when either is flat or
        fewer than 2 overlap), and the number of those pixels.
    """
    h, w = reference.shape
    dx, dy = (int(round(float(v))) for v in shift_xy)
    rows, cols = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
    a = np.asarray(reference, dtype=np.float64)[rows, cols]
    b = np.asarray(moving, dtype=np.float64)[rows.start + dy : rows.stop + dy, cols.start + dx : cols.stop + dx]
    if a.size < 2:
        return 0.0, int(a.size)
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return (float((a * b).sum()) / norm if norm > 0 else 0.0), int(a.size)


def correlation_sigmas(correlation: float, n_pixels: int, sigma_px: float) -> float:
    """A correlation coefficient in units of its noise for two unrelated band-passed frames.

    White noise smoothed by a Gaussian of ``sigma_px`` pixels has a correlation area of
    ``2 pi sigma_px^2`` pixels (at least 1), so the coefficient of two unrelated
    such frames over ``n_pixels`` has a standard deviation of about
    ``sqrt(area / n_pixels)``; the coefficient is returned in those units. The best of
    all the shifts a registration searches reaches about 4-5 for unrelated frames.
    """
    area = max(1.0, 2.0 * np.pi * float(sigma_px) ** 2)
    return float(correlation) * float(np.sqrt(max(int(n_pixels), 0) / area))


def overlap_fraction(shape: tuple[int, int], shift_xy: np.ndarray) -> float:
    """Share of a frame's area that a frame displaced by ``(dx, dy)`` pixels still covers."""
    h, w = shape
    dx, dy = np.abs(np.asarray(shift_xy, dtype=np.float64))
    return float(max(0.0, w - dx) * max(0.0, h - dy) / (h * w))


def _xy(v: np.ndarray) -> str:
    return f"({v[0]:+.1f}, {v[1]:+.1f}) px"


@dataclass(frozen=True)
class Registration:
    """The drift of every frame of a series and how far each registration can be trusted.

    Made by :func:`register_series`. Frame ``i``'s drift is measured against frame
    ``partner[i]`` (the reference in mode ``"first"``, the frame before in mode
    ``"previous"``); ``second`` holds a second measurement of it through another frame
    (``route[i]``: frame ``i - 1`` towards the reference in mode ``"first"``, frame
    ``i - 2`` in mode ``"previous"``).

    Attributes
    ----------
    drift : ndarray, shape (N, 2)
        ``(dx, dy)`` in pixels, as :func:`register_frames` returns it.
    correlation : ndarray, shape (N,)
        Correlation coefficient of the band-passed (binned) frame and its partner over
        their overlap at the measured whole-pixel shift (:func:`overlap_correlation`);
        NaN where nothing was measured (the reference in mode ``"first"``, frame 0).
    sigmas : ndarray, shape (N,)
        ``correlation`` in noise sigmas (:func:`correlation_sigmas`).
    second : ndarray, shape (N, 2)
        The drift measured again through frame ``route[i]``; NaN where there is no such
        frame or the check was not run.
    partner, route : ndarray of int, shape (N,)
        The frames described above (-1: none).
    mode : str
        ``"first"`` or ``"previous"``.
    shape : (int, int)
        ``(H, W)`` of the frames.
    """

    drift: np.ndarray
    correlation: np.ndarray
    sigmas: np.ndarray
    second: np.ndarray
    partner: np.ndarray
    route: np.ndarray
    mode: str
    shape: tuple[int, int]

    @property
    def disagreement_px(self) -> np.ndarray:
        """Distance in pixels between the two measurements of each drift (NaN where only one)."""
        return np.hypot(*(self.second - self.drift).T)

    @property
    def reliable(self) -> np.ndarray:
        """Frames whose registration passed both checks (or had nothing to check), shape (N,)."""
        with np.errstate(invalid="ignore"):
            weak = self.sigmas < MIN_CORRELATION_SIGMAS
            split = self.disagreement_px > MAX_DISAGREEMENT_PX
        return ~(weak | split)

    def problems(self) -> list[str]:
        """One line per frame whose registration failed a check: what was measured and what to try."""
        return [self._problem(i) for i in np.flatnonzero(~self.reliable)]

    def _problem(self, i: int) -> str:
        doubts = []
        if self.sigmas[i] < MIN_CORRELATION_SIGMAS:
            doubts.append(f"the frames correlate at only {self.sigmas[i]:.1f} noise sigmas (correlation "
                          f"{self.correlation[i]:.2f}; at least {MIN_CORRELATION_SIGMAS:g} expected)")
        hint = ""
        if self.disagreement_px[i] > MAX_DISAGREEMENT_PX:
            doubts.append(f"{_xy(self.second[i])} through frame {self.route[i]}")
            if self.mode == "first" and overlap_fraction(self.shape, self.second[i]) < 0.5:
                hint = ("; a drift leaving less than half of the field in common with the reference is not "
                        "searched, registering each frame to the one before follows it (--registration previous; "
                        "mode='previous')")
        return (f"frame {i}: registration doubtful: drift {_xy(self.drift[i])} against frame {self.partner[i]} but "
                + " and ".join(doubts) + hint)


def _second_route(i: int, ref: int, mode: str) -> int:
    """The frame through which frame ``i``'s drift is measured a second time (-1: none)."""
    if mode == "previous":
        return i - 2 if i >= 2 else -1
    j = i - 1 if i > ref else i + 1
    return -1 if i == ref or j == ref else j


def register_series(
    frames: np.ndarray,
    reference: int = 0,
    upsample: int = 10,
    mode: str = "first",
    *,
    sigma_low_px: float = 1.0,
    sigma_high_px: float | None = None,
    coarse: bool = True,
    check: bool = True,
) -> Registration:
    """Drift of every frame of a series relative to the reference frame, with its checks.

    Measures the drift as :func:`register_frames` does (same numbers) and checks each
    frame's registration twice:

    * the correlation coefficient of the band-passed frames over their overlap at the
      measured shift must stand :data:`MIN_CORRELATION_SIGMAS` noise sigmas above zero
      (:func:`correlation_sigmas`): unrelated frames (pure noise, another field)
      reach 4-5 at the best of all the shifts searched;
    * with ``check``, the drift is measured a second time through another frame (in
      mode ``"first"``: ``drift[i - 1] + shift(i - 1 -> i)``, the neighbour towards
      the reference; in mode ``"previous"``: ``drift[i - 2] + shift(i - 2 -> i)``); the
      two must agree within :data:`MAX_DISAGREEMENT_PX`. This catches a wrong lattice
      peak, noise, and in mode ``"first"`` a drift leaving less than half of the field
      in common with the reference, which the whole-pixel stage does not search
      (:func:`coarse_shift`). It costs one more pair registration per frame.

    Parameters are those of :func:`register_frames`, and ``check`` (run the second
    measurement).

    Returns
    -------
    Registration
        The drift, the checks' figures, :attr:`Registration.reliable` and
        :meth:`Registration.problems` (one line per doubtful frame).
    """
    stack = np.asarray(frames, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"expected frames of shape (N, H, W), got {stack.shape}")
    n = stack.shape[0]
    if n and not -n <= reference < n:
        raise ValueError(f"reference {reference} out of range for {n} frames")
    if mode not in REGISTRATION_MODES:
        raise ValueError(f"mode must be one of {REGISTRATION_MODES}, got {mode!r}")
    band = [bandpass(f, sigma_low_px, sigma_high_px) for f in stack]
    k = coarse_bin(stack.shape[1:])
    binned = [bin_image(b, k) for b in band]
    ref = reference % n if n else 0
    drift, corr, sigmas = np.zeros((n, 2)), np.full(n, np.nan), np.full(n, np.nan)
    partner = np.full(n, -1, dtype=np.int64)

    def step(a: int, b: int) -> np.ndarray:
        pair = (binned[a], binned[b]) if coarse else None
        return _pair_shift_bandpassed(band[a], band[b], upsample, coarse, pair)

    def measure(a: int, b: int) -> np.ndarray:
        shift = step(a, b)
        r, n_px = overlap_correlation(binned[a], binned[b], np.rint(shift / k))
        partner[b], corr[b], sigmas[b] = a, r, correlation_sigmas(r, n_px, sigma_low_px / k)
        return shift

    if mode == "first":
        for i in range(n):
            if i != ref:
                drift[i] = measure(ref, i)
    else:
        for i in range(1, n):
            drift[i] = drift[i - 1] + measure(i - 1, i)
        drift = drift - drift[ref] if n else drift
    route = np.array([_second_route(i, ref, mode) if check else -1 for i in range(n)], dtype=np.int64)
    second = np.full((n, 2), np.nan)
    for i in np.flatnonzero(route >= 0):
        second[i] = drift[route[i]] + step(int(route[i]), int(i))
    return Registration(drift, corr, sigmas, second, partner, route, mode, tuple(stack.shape[1:]))


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
    :func:`register_series` gives the same drift with a check of every frame.

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
        (errors do not accumulate; best when the field changes little; the frame
        must keep at least half of its field in common with the reference).
        ``"previous"``: each frame is correlated with the frame before it and the
        steps are summed (follows a field that evolves a lot, or drifts farther than
        half the field, at the cost of a random-walk error of about ``sqrt(N)``
        times the per-step error).
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
    frames (``mode="previous"`` keeps that step small). Shifts leaving less than half
    of the field in common are not searched (:func:`coarse_shift`).
    """
    stack = np.asarray(frames, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"expected frames of shape (N, H, W), got {stack.shape}")
    if stack.shape[0] == 0:
        return np.zeros((0, 2))
    return register_series(stack, reference, upsample, mode, sigma_low_px=sigma_low_px,
                           sigma_high_px=sigma_high_px, coarse=coarse, check=False).drift


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


# --------------------------------------------------------------------------- focal series


def register_focal_series(
    stack: np.ndarray, upsample_factor: int = UPSAMPLE
) -> tuple[np.ndarray, np.ndarray]:
    """Align every frame of a stack to the first (drift correction).

    Shifts are measured by phase correlation
    (:func:`skimage.registration.phase_cross_correlation`, to ``1/upsample_factor``
    pixel) on Hann-windowed, mean-free frames (a second pass on the shifted frame
    removes the window's bias towards zero shift), and applied with a cubic spline
    (:func:`scipy.ndimage.shift`, edges extended with the nearest pixel). Phase
    correlation uses only the Fourier phase, so frames at different defoci (different
    contrast) still align on their shared lattice.

    Parameters
    ----------
    stack : ndarray, shape (N, H, W)
        Frames; the first is the reference.
    upsample_factor : int
        Sub-pixel precision (1/upsample_factor px).

    Returns
    -------
    (ndarray of float32, shape (N, H, W); ndarray of float64, shape (N, 2))
        The registered frames, and the ``(dy, dx)`` shift in pixels applied to each
        (the first row is 0): frame ``i`` content at ``(y, x)`` moved to
        ``(y + dy, x + dx)``.
    """
    from skimage.filters import window
    from skimage.registration import phase_cross_correlation

    frames = np.asarray(stack, dtype=np.float32)
    if frames.ndim != 3:
        raise ValueError(f"expected an [N, H, W] stack, got shape {frames.shape}")
    win = window("hann", frames.shape[1:])

    def prepared(frame: np.ndarray) -> np.ndarray:
        f = frame.astype(np.float64)
        return (f - f.mean()) * win

    ref = prepared(frames[0])
    out = frames.copy()
    shifts = np.zeros((len(frames), 2))
    for i in range(1, len(frames)):
        frame = frames[i].astype(np.float64)
        total = np.zeros(2)
        for _ in range(2):  # the window biases a large shift towards 0; a second pass removes it
            moved = nd_shift(frame, total, order=3, mode="nearest") if total.any() else frame
            step, _, _ = phase_cross_correlation(
                ref, prepared(moved), upsample_factor=upsample_factor, normalization="phase"
            )
            total += step
        shifts[i] = total
        out[i] = nd_shift(frame, total, order=3, mode="nearest")
    return out, shifts
