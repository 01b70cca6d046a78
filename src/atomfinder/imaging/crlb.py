"""Cramér-Rao bound of locating one atom in an HRTEM image with shot noise.

An ideal detector counts ``lambda(r) = N0 * I(r - r_atom)`` electrons per pixel
(Poisson), with ``N0 = dose * sampling²`` and ``I`` the noise-free image intensity
relative to vacuum. Any unbiased estimate of the atom's x coordinate then has a
standard deviation of at least ``1 / sqrt(F_xx)``, with the Fisher information

    F_xx = sum over pixels of (d lambda / d x)² / lambda
         = N0 * sum (dI/dx)² / I.

``I`` is the image of an isolated atom (abTEM exit wave, then this project's
lens, :func:`atomfinder.imaging.transfer.image_intensity`): the bound ignores the
detector's MTF (an ideal detector) and the neighbours (whose overlap only adds
unknowns), so it is a lower bound on what any detector can reach. The derivative
is taken in Fourier space (a shifted atom gives a shifted image under a uniform
defocus).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import scipy.fft

from atomfinder.imaging.hrtem import resample_spectrum
from atomfinder.imaging.microscope import Microscope
from atomfinder.imaging.multislice import exit_waves
from atomfinder.imaging.transfer import image_intensity


@functools.lru_cache(maxsize=32)
def _atom_spectrum(element: str, energy_eV: float, sampling_A: float, box_px: int) -> np.ndarray:
    from ase import Atoms

    side = box_px * sampling_A
    atoms = Atoms([element], positions=[[side / 2, side / 2, 1.0]], cell=[side, side, 2.0], pbc=True)
    waves = exit_waves(atoms, energy_eV, gpts=(box_px, box_px), slice_thickness_A=2.0)
    return resample_spectrum(waves, (box_px, box_px))[0]


def atom_image(microscope: Microscope, element: str = "C", box_px: int = 160) -> np.ndarray:
    """Noise-free image (vacuum = 1) of one atom at the centre of a ``box_px`` square field.

    Uses ``microscope`` without its defocus gradient or curvature (uniform defocus).
    """
    m = dataclasses.replace(microscope, defocus_gradient=(0.0, 0.0), defocus_curvature_A=0.0)
    spectrum = _atom_spectrum(element, float(m.energy_eV), float(m.sampling_A), int(box_px))
    return image_intensity(spectrum, m)


def position_crlb_A(microscope: Microscope, element: str = "C", box_px: int = 160) -> float:
    """Cramér-Rao bound (Å, 1 σ per coordinate) of one atom's position at the microscope's dose.

    Parameters
    ----------
    microscope : Microscope
        Lens, coherence, pixel size (Å) and dose (e/Å²); the MTF is ignored.
    element : str
        The atom (e.g. ``"C"``).
    box_px : int
        Side of the simulated field in pixels (the atom's image must fit well inside).

    Returns
    -------
    float
        ``sqrt(2 / (F_xx + F_yy))`` in Å (``inf`` for a dose of 0, 0 for infinite dose).
    """
    dose = float(microscope.dose_e_per_A2)
    if not math.isfinite(dose):
        return 0.0
    if dose <= 0:
        return math.inf
    img = atom_image(microscope, element, box_px).astype(np.float64)
    ky = np.fft.fftfreq(box_px)[:, None]
    kx = np.fft.fftfreq(box_px)[None, :]
    f = scipy.fft.fft2(img)
    d_dx = np.real(scipy.fft.ifft2(2j * np.pi * kx * f))  # per pixel
    d_dy = np.real(scipy.fft.ifft2(2j * np.pi * ky * f))
    n0 = dose * microscope.sampling_A**2
    inv = 1.0 / np.maximum(img, 1e-6)
    fisher = n0 * (np.sum(d_dx**2 * inv) + np.sum(d_dy**2 * inv))  # F_xx + F_yy, per pixel²
    return float(np.sqrt(2.0 / fisher) * microscope.sampling_A)


__all__ = ["atom_image", "position_crlb_A"]
