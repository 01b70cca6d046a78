"""Moving images and maps between pixel grids of different sizes.

Leaf of :mod:`atomfinder.detection` (NumPy and SciPy only), so that every module
that resamples (the pipeline, the writers of ``detect``, the HyperSpy glue) can use
it without importing the others.
"""

from __future__ import annotations

import numpy as np

__all__ = ["antialias_sigma_px", "probabilities_on_input_grid"]


def antialias_sigma_px(from_sampling_A: float, to_sampling_A: float) -> float:
    """Standard deviation (input pixels) of the Gaussian pre-filter used when downsampling.

    ``sigma = 0.5 * sqrt(f**2 - 1)`` with ``f = to / from`` the downsampling factor,
    and 0 when not downsampling (``f <= 1``). This is the extra blur that, added in
    quadrature to the ~0.5 px already implied by the input grid, gives 0.5 output
    pixels: it damps content at the output's Nyquist frequency to about 30 % (so
    little aliases) while leaving atom-sized features (several output pixels) nearly
    untouched.
    """
    f = to_sampling_A / from_sampling_A
    return 0.5 * float(np.sqrt(f * f - 1.0)) if f > 1.0 else 0.0


def probabilities_on_input_grid(
    probabilities: np.ndarray, model_sampling_A: float, sampling_A: float, shape: tuple[int, int]
) -> np.ndarray:
    """Probability maps resampled from the model's grid onto the input image's pixels.

    Input pixel ``(r, c)`` takes the maps at ``(r, c) * sampling_A / model_sampling_A``
    model pixels (both grids start at the centre of the top-left pixel, as in
    :func:`atomfinder.detection.pipeline.resample`), interpolated linearly after the
    same Gaussian anti-aliasing filter when the input's pixels are larger. Both steps
    average with positive weights, so the values stay in [0, 1] and the classes of a
    pixel still sum to 1.

    Parameters
    ----------
    probabilities : ndarray, shape (k, h, w) or (N, k, h, w)
        Per-class maps at ``model_sampling_A``.
    model_sampling_A, sampling_A : float
        Pixel sizes of the maps and of the input, in Å/px.
    shape : (int, int)
        Height and width of the input image.

    Returns
    -------
    ndarray of float32, shape (k, H, W) or (N, k, H, W)
    """
    from scipy.ndimage import affine_transform, gaussian_filter

    maps = np.asarray(probabilities, dtype=np.float32)
    flat = maps.reshape(-1, *maps.shape[-2:])
    scale = float(sampling_A) / float(model_sampling_A)
    sigma = antialias_sigma_px(model_sampling_A, sampling_A)
    out = np.empty((len(flat), *shape), dtype=np.float32)
    for i, m in enumerate(flat):
        x = m.astype(np.float64)
        if sigma > 0:
            x = gaussian_filter(x, sigma, mode="reflect")
        out[i] = affine_transform(x, np.array([scale, scale]), offset=0.0, output_shape=tuple(shape), order=1,
                                  mode="nearest")
    return out.reshape(*maps.shape[:-2], *shape)
