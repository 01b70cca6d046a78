"""The detector: shot noise, MTF, blur, gain and offset.

The order follows a scintillator camera: electrons arrive as Poisson events
(the dose), each event is spread by the scintillator and optics (the MTF and
an extra Gaussian blur, which therefore also correlate the noise), and the
read-out scales and offsets the counts.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from atomfinder.imaging.microscope import Microscope


def parametric_mtf(shape: tuple[int, int], c0: float, c1: float, c2: float) -> np.ndarray:
    """Detector MTF on the FFT grid of an image of ``shape``.

    ``MTF(q) = (1 - c0) / (1 + (q / c1)^c2) + c0`` with ``q`` the spatial
    frequency in units of the Nyquist frequency (0.5 cycles / pixel). ``c0 = 1``
    is a perfect detector.
    """
    qy = np.fft.fftfreq(shape[0])[:, None] / 0.5
    qx = np.fft.fftfreq(shape[1])[None, :] / 0.5
    q = np.hypot(qx, qy)
    return ((1 - c0) / (1 + (q / c1) ** c2) + c0).astype(np.float32)


def gaussian_transfer(shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Fourier transform of a normalised Gaussian blur of ``sigma_px`` pixels."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    return np.exp(-2 * math.pi**2 * sigma_px**2 * (fx**2 + fy**2)).astype(np.float32)


def shot_noise(intensity: np.ndarray, electrons_per_pixel: float, rng: np.random.Generator) -> np.ndarray:
    """Electron counts: Poisson draws with mean ``intensity * electrons_per_pixel``.

    ``intensity`` is relative to vacuum (vacuum = 1); ``electrons_per_pixel`` is
    the dose (e/Å²) times the pixel area (Å²). Infinite dose returns the
    noise-free expectation.
    """
    expected = np.clip(intensity, 0, None) * electrons_per_pixel
    if math.isinf(electrons_per_pixel):
        return intensity.astype(np.float32)
    return rng.poisson(expected).astype(np.float32)


def detect(intensity: np.ndarray, microscope: Microscope, rng: np.random.Generator) -> np.ndarray:
    """Record an image: shot noise, MTF and blur, then gain and offset.

    Parameters
    ----------
    intensity : ndarray, shape (rows, cols)
        Image intensity relative to vacuum (vacuum = 1) on the detector grid.
    microscope : Microscope
        Dose (e/Å²), pixel size (Å), MTF, blur, gain (counts per electron) and
        offset (in units of the mean counts per pixel).
    rng : numpy.random.Generator
        Source of the shot noise.

    Returns
    -------
    ndarray, float32
        Detector counts ``gain * (MTF * blur) ⊛ Poisson(dose * area * I) + offset``.
        With infinite dose the counts are ``gain * (MTF * blur) ⊛ I`` (electrons
        per pixel taken as 1).
    """
    electrons = microscope.dose_e_per_A2 * microscope.sampling_A**2
    counts = shot_noise(intensity, electrons, rng)
    transfer = None
    if microscope.mtf_c0 < 1.0:
        transfer = parametric_mtf(counts.shape, microscope.mtf_c0, microscope.mtf_c1, microscope.mtf_c2)
    if microscope.blur_px > 0:
        g = gaussian_transfer(counts.shape, microscope.blur_px)
        transfer = g if transfer is None else transfer * g
    if transfer is not None:
        counts = scipy.fft.irfft2(
            scipy.fft.rfft2(counts, workers=1) * transfer[:, : counts.shape[1] // 2 + 1],
            s=counts.shape,
            workers=1,
        ).astype(np.float32)
    mean = float(counts.mean())
    return (microscope.gain * counts + microscope.offset * microscope.gain * mean).astype(np.float32)
