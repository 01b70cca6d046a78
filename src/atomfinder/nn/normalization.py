"""Image normalisation shared by training and inference (NumPy/SciPy only, no torch).

The same function must run on simulated training images and on real micrographs, so
it lives here and nowhere else. Model cards record which one a model expects, e.g.
``{"kind": "local", "window_A": 12.0}`` or ``{"kind": "global"}``; use
:func:`apply_normalization` to apply such a record.

Both functions accept ``[H, W]`` or ``[C, H, W]`` arrays (each channel is normalised
on its own) and return ``float32``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import scipy.fft
from scipy.ndimage import gaussian_filter

#: Relative floor on the local standard deviation (fraction of the image's global std).
STD_FLOOR_REL = 1e-3
#: Floor relative to the image's largest magnitude (covers rounding in the filters).
STD_FLOOR_SCALE = 1e-7
#: Absolute floor on any standard deviation, so a constant image gives zeros, not NaN.
STD_FLOOR_ABS = 1e-30


def _per_channel(func, image: np.ndarray, channel_kwargs: Sequence[Mapping[str, Any]] | None = None,
                 **kwargs) -> np.ndarray:
    # ``channel_kwargs[i]``: further arguments of channel i (one mapping for an [H, W] image)
    image = np.asarray(image)
    if image.ndim == 2:
        return func(image, **kwargs, **(channel_kwargs[0] if channel_kwargs else {})).astype(np.float32, copy=False)
    if image.ndim == 3:
        out = np.empty(image.shape, dtype=np.float32)
        for i, ch in enumerate(image):
            out[i] = func(ch, **kwargs, **(channel_kwargs[i] if channel_kwargs else {}))
        return out
    raise ValueError(f"expected an [H, W] or [C, H, W] image, got shape {image.shape}")


#: Wider Gaussians than this (pixels) are applied by FFT rather than by direct convolution.
FFT_SIGMA_MIN_PX = 8.0


def gaussian_blur_reflect(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian filter with mirror boundaries, by FFT for wide kernels.

    Equal (to ~1e-4 of the image's range) to
    ``scipy.ndimage.gaussian_filter(image, sigma_px, mode="reflect")``: the image is
    mirror-padded by ``4 sigma`` (as that filter's default truncation) and multiplied
    by the Gaussian's transfer function (on the far sides up to a fast FFT length).
    For the 12 Å normalisation window at 0.1 Å/pixel (sigma = 60 px) this is ~4x
    faster than the direct 481-tap kernel (0.43 -> 0.12 s on 1024², measured); the
    fast length took a 4096² image from 0.98 to 0.31 s (measured).
    Narrow kernels use ``gaussian_filter`` itself.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Input.
    sigma_px : float
        Standard deviation in pixels.

    Returns
    -------
    ndarray, shape (H, W)
        float32 for a float32 input (the FFT runs in single precision either way,
        and a large image then needs half the memory), float64 otherwise.
    """
    x = np.asarray(image)
    dtype = np.float32 if x.dtype == np.float32 else np.float64
    if sigma_px < FFT_SIGMA_MIN_PX:
        return gaussian_filter(x, sigma_px, mode="reflect", output=dtype)
    pad = int(4.0 * sigma_px + 0.5)
    # Pad by at least 4 sigma, and on the far sides up to a fast FFT length (a
    # 4096² image padded by 240 px is 4576 = 2^5 * 11 * 13 wide; 4608 = 2^9 * 9 is
    # ~2x faster). More mirrored margin only moves the wrap-around further away.
    shape = (scipy.fft.next_fast_len(x.shape[0] + 2 * pad, real=True),
             scipy.fft.next_fast_len(x.shape[1] + 2 * pad, real=True))
    widths = ((pad, shape[0] - x.shape[0] - pad), (pad, shape[1] - x.shape[1] - pad))
    padded = np.pad(x.astype(np.float32, copy=False), widths, mode="symmetric")  # numpy "symmetric" == scipy "reflect"
    # The Gaussian's transfer function is separable: an outer product of two 1-D ones.
    ty = np.exp(-2.0 * np.pi**2 * sigma_px**2 * np.fft.fftfreq(shape[0]) ** 2).astype(np.float32)
    tx = np.exp(-2.0 * np.pi**2 * sigma_px**2 * np.fft.rfftfreq(shape[1]) ** 2).astype(np.float32)
    spectrum = scipy.fft.rfft2(padded, workers=-1)
    del padded
    spectrum *= ty[:, None]
    spectrum *= tx[None, :]
    blurred = scipy.fft.irfft2(spectrum, s=shape, workers=-1, overwrite_x=True)
    del spectrum
    return blurred[pad : pad + x.shape[0], pad : pad + x.shape[1]].astype(dtype)


#: ``median(|4 x - sum of the 4 neighbours|) / NOISE_MAD_FACTOR`` estimates the std of
#: white noise: the Laplacian of unit white noise has std sqrt(20), and the median of
#: |N(0, s²)| is 0.6745 s.
NOISE_MAD_FACTOR = 0.6744897501960817 * np.sqrt(20.0)
#: Pixels used by :func:`estimate_noise_std` (a regular subset beyond this many).
NOISE_MAX_SAMPLES = 1 << 18


def estimate_noise_std(image: np.ndarray) -> float:
    """Standard deviation of the pixel noise of an image, from its discrete Laplacian.

    The 5-point Laplacian ``4 x[i, j] - x[i±1, j] - x[i, j±1]`` suppresses smooth
    signal (a lattice fringe of period ``p`` pixels by ``2 - 2 cos(2 pi / p)``: 0.26
    for the 1.23 Å graphene fringes at 0.1 Å/px, against ``sqrt(20)`` for white
    noise), and the median of its magnitude ignores edges and outliers. Noise that
    the detector's MTF correlates between neighbours is underestimated.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Raw intensities (any units), at least 3 x 3 pixels.

    Returns
    -------
    float
        Estimated noise standard deviation in the image's units (0 for a noise-free
        smooth image).
    """
    x = np.asarray(image)
    if x.ndim != 2 or min(x.shape) < 3:
        raise ValueError(f"estimate_noise_std needs a 2-D image of at least 3 x 3 pixels, got {x.shape}")
    # Laplacian on a regular subset of rows (each with its two neighbours), so that
    # large images cost no more than NOISE_MAX_SAMPLES values.
    step = max(1, (x.shape[0] - 2) * (x.shape[1] - 2) // NOISE_MAX_SAMPLES)
    r = np.arange(1, x.shape[0] - 1, step)
    mid = x[r].astype(np.float32)
    lap = 4.0 * mid[:, 1:-1] - x[r - 1, 1:-1] - x[r + 1, 1:-1] - mid[:, :-2] - mid[:, 2:]
    return float(np.median(np.abs(lap))) / NOISE_MAD_FACTOR


#: Rows per block when a whole-image pass would otherwise need a float64 copy.
_BLOCK_ROWS = 512


def _standardised_float32(image: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """``(image - mean) / std`` as float32, with the std, largest magnitude and ``1 / std``.

    Works through row blocks, so that a large integer or float64 image never needs a
    full float64 copy. Mean and std are taken in float64 first, so an image with a
    large offset (counts around 1e6) keeps its fluctuations, and one with tiny or huge
    values neither underflows nor overflows in single precision. A constant image
    (std 0) is only centred.
    """
    n = image.size
    mean = float(np.mean(image, dtype=np.float64)) if n else 0.0
    sum_sq, scale = 0.0, 0.0
    for start in range(0, image.shape[0], _BLOCK_ROWS):
        block = image[start : start + _BLOCK_ROWS].astype(np.float64)
        if block.size:
            scale = max(scale, float(np.abs(block).max()))
        block -= mean
        sum_sq += float(np.dot(block.ravel(), block.ravel()))
    std = float(np.sqrt(sum_sq / n)) if n else 0.0
    unit = 1.0
    for spread in (std, scale):  # the std, or the largest magnitude if its square overflowed
        if 0.0 < spread < np.inf and 0.0 < 1.0 / spread < np.inf:
            unit = 1.0 / spread
            break
    out = np.empty(image.shape, dtype=np.float32)
    for start in range(0, image.shape[0], _BLOCK_ROWS):
        out[start : start + _BLOCK_ROWS] = (image[start : start + _BLOCK_ROWS].astype(np.float64) - mean) * unit
    return out, std, scale, unit


def _local_2d(image: np.ndarray, sigma_px: float, noise_floor: float = 0.0,
              noise_std: float | None = None) -> np.ndarray:
    # In float32 and in place where possible: an 8192² image costs about 4 copies of
    # 256 MB (the image, its local mean or variance, and the padded FFT buffers).
    # The image is first brought to unit global std (the result does not depend on
    # its scale), so single precision neither underflows nor overflows.
    image = np.asarray(image)
    x, global_std, scale, unit = _standardised_float32(image)
    floor = max(STD_FLOOR_REL * global_std, STD_FLOOR_SCALE * scale, STD_FLOOR_ABS)
    if noise_floor > 0 and noise_std is not None:
        floor = max(floor, noise_floor * float(noise_std))
    elif noise_floor > 0 and min(image.shape) >= 3:
        floor = max(floor, noise_floor * estimate_noise_std(image))
    x -= gaussian_blur_reflect(x, sigma_px)  # centred on the local mean
    std = gaussian_blur_reflect(np.square(x), sigma_px)  # local variance
    np.maximum(std, 0.0, out=std)
    np.sqrt(std, out=std)
    np.maximum(std, np.float32(min(floor * unit, np.finfo(np.float32).max)), out=std)
    x /= std
    return x


def normalize_local(
    image: np.ndarray, sampling_A: float, window_A: float = 12.0, noise_floor: float = 0.0,
    noise_std: float | Sequence[float] | None = None,
) -> np.ndarray:
    """Subtract a local mean and divide by a local standard deviation.

    Both are Gaussian-weighted averages with standard deviation ``window_A / 2`` (Å),
    i.e. ~68 % of the weight lies within a band ``window_A`` wide. Because the scale is
    set locally, regions of weak and strong contrast come out with the same amplitude,
    and a field whose contrast reverses (defocus or thickness changing across a tilted
    sheet or a wedge) keeps unit amplitude on both sides of the reversal instead of
    fading to zero around it, as a global standardisation would make it.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (C, H, W)
        Raw intensities (any units); channels are normalised independently.
    sampling_A : float
        Pixel size in Å/pixel.
    window_A : float, optional
        Size of the averaging window in Å (default 12 Å; see above).
    noise_floor : float, optional
        If > 0, the local standard deviation is floored at this multiple of the
        image's pixel noise (:func:`estimate_noise_std`): a region that holds only
        noise (vacuum in a hole, a field without specimen) then comes out with
        amplitude ``<= 1 / noise_floor`` instead of being raised to unit contrast,
        while any region whose contrast stands above that level is unchanged.
        0 (default) keeps the plain local normalisation of the earlier models.
    noise_std : float or sequence of float, optional
        The pixel noise standard deviation of ``image`` (one per channel), in its
        units, when it is known better than :func:`estimate_noise_std` can read it
        from ``image``: an image interpolated onto finer pixels has noise correlated
        between neighbours, which the Laplacian estimate reads as several times too
        low (:func:`atomfinder.detection.pipeline.resampled_noise_gain`). Default:
        estimated from ``image``.

    Returns
    -------
    ndarray of float32, same shape as ``image``
        Locally zero-mean, unit-variance image. The local standard deviation is
        floored at ``1e-3`` times the global one (and at ``1e-7`` times the largest
        magnitude), so flat regions and uniform images give finite values (zeros, up to
        rounding, for a uniform image), never NaN.
    """
    if sampling_A <= 0 or window_A <= 0:
        raise ValueError("sampling_A and window_A must be positive")
    if noise_floor < 0:
        raise ValueError("noise_floor must be >= 0")
    sigma_px = 0.5 * window_A / sampling_A
    image = np.asarray(image)
    per_channel = None
    if noise_std is not None:
        stds = np.ravel(np.asarray(noise_std, dtype=np.float64))
        n = image.shape[0] if image.ndim == 3 else 1
        if np.ndim(noise_std) == 0:  # one value for every channel; a sequence gives one per channel
            stds = np.repeat(stds, n)
        if stds.size != n:
            raise ValueError(f"noise_std has {stds.size} values for an image of shape {image.shape}: "
                             "give one per channel")
        per_channel = [{"noise_std": float(v)} for v in stds]
    return _per_channel(_local_2d, image, per_channel, sigma_px=sigma_px, noise_floor=float(noise_floor))


def _global_2d(image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float64)
    centred = x - x.mean()
    scale = float(np.abs(x).max()) if x.size else 0.0
    return centred / max(float(centred.std()), STD_FLOOR_SCALE * scale, STD_FLOOR_ABS)


def normalize_global(image: np.ndarray) -> np.ndarray:
    """Standardise to zero mean and unit standard deviation (per channel).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (C, H, W)
        Raw intensities.

    Returns
    -------
    ndarray of float32, same shape
        ``(image - mean) / std``; a constant channel becomes zeros.
    """
    return _per_channel(_global_2d, image)


def apply_normalization(
    image: np.ndarray, spec: Mapping[str, Any], sampling_A: float | None = None,
    noise_std: float | Sequence[float] | None = None,
) -> np.ndarray:
    """Apply the normalisation described by a model card's ``normalization`` record.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (C, H, W)
        Raw image, already resampled to the model's sampling.
    spec : mapping
        ``{"kind": "local", "window_A": float, "noise_floor": float}`` (``noise_floor``
        optional, default 0) or ``{"kind": "global"}``.
    sampling_A : float, optional
        Pixel size in Å/pixel (required for ``"local"``).
    noise_std : float or sequence of float, optional
        Known pixel noise of ``image`` per channel, for the noise floor
        (:func:`normalize_local`); default: estimated from ``image``.
    """
    kind = spec.get("kind")
    if kind == "local":
        if sampling_A is None:
            raise ValueError("local normalisation needs sampling_A")
        return normalize_local(image, sampling_A, float(spec.get("window_A", 12.0)),
                               float(spec.get("noise_floor", 0.0)), noise_std=noise_std)
    if kind == "global":
        return normalize_global(image)
    raise ValueError(f"unknown normalisation kind {kind!r} (expected 'local' or 'global')")
