"""The objective lens: exit wave spectrum to image intensity.

abTEM computes the exit wave (see :mod:`atomfinder.imaging.multislice`); this
module images it. It is written here rather than with ``abtem.CTF`` because
training needs two things abTEM's CTF does not offer: a defocus that varies
across the field (a tilted, bent or wedge-shaped specimen makes the contrast
change and even invert inside one image) and speed (one exit wave is imaged
under many microscope states). The aberration function and the spatial
envelope follow abTEM's conventions exactly (a test compares them with
``abtem.CTF``).

Arrays are ``[row, col]`` = ``[y, x]``; spectra are in numpy FFT order.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from atomfinder.imaging.microscope import Microscope

#: Largest number of defocus values in the incoherent focal-spread sum.
MAX_DEFOCUS_NODES = 32


def spatial_frequencies(shape: tuple[int, int], sampling_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequency grids ``(ky, kx)`` in 1/Å for an image of ``shape`` (FFT order)."""
    ky = np.fft.fftfreq(shape[0], sampling_A).astype(np.float32)[:, None]
    kx = np.fft.fftfreq(shape[1], sampling_A).astype(np.float32)[None, :]
    return ky, kx


def aberration_phase(
    kx: np.ndarray, ky: np.ndarray, microscope: Microscope, defocus_A: float | np.ndarray = 0.0
) -> np.ndarray:
    """Phase error ``chi(k)`` (radians) of the objective lens.

    Parameters
    ----------
    kx, ky : ndarray
        Spatial frequencies (1/Å), broadcastable.
    microscope : Microscope
        Aberrations (Cs, C5, astigmatism, coma); its ``defocus_A`` is ignored.
    defocus_A : float or ndarray
        Defocus (Å, positive = underfocus); an array of shape ``(n, 1, 1)``
        gives ``n`` phase maps at once.

    Returns
    -------
    ndarray
        ``chi`` in radians; the lens multiplies the wave spectrum by ``exp(-i chi)``.
    """
    lam = microscope.wavelength_A
    alpha = lam * np.hypot(kx, ky)
    phi = np.arctan2(ky, kx)
    C10 = -np.asarray(defocus_A, dtype=np.float32)
    a2 = alpha**2
    chi = 0.5 * a2 * (C10 + microscope.astigmatism_A * np.cos(2 * (phi - microscope.astigmatism_angle_rad)))
    if microscope.coma_A:
        chi = chi + (1 / 3) * a2 * alpha * microscope.coma_A * np.cos(phi - microscope.coma_angle_rad)
    chi = chi + 0.25 * a2**2 * microscope.Cs_A
    if microscope.C5_A:
        chi = chi + (1 / 6) * a2**3 * microscope.C5_A
    return (2 * np.pi / lam) * chi


def spatial_envelope(
    kx: np.ndarray, ky: np.ndarray, microscope: Microscope, defocus_A: float | np.ndarray = 0.0
) -> np.ndarray:
    """Partial spatial coherence envelope (abTEM's quasi-coherent form).

    ``exp(-(theta / 2)^2 |grad_alpha chi|^2)`` with ``theta`` the illumination
    semi-angle in radians and the gradient taken in polar angular coordinates.
    """
    theta = microscope.angular_spread_mrad * 1e-3
    if theta == 0:
        return np.ones(np.broadcast_shapes(np.shape(kx), np.shape(ky), np.shape(defocus_A)), np.float32)
    lam = microscope.wavelength_A
    alpha = lam * np.hypot(kx, ky)
    phi = np.arctan2(ky, kx)
    C10 = -np.asarray(defocus_A, dtype=np.float32)
    c12, p12 = microscope.astigmatism_A, microscope.astigmatism_angle_rad
    c21, p21 = microscope.coma_A, microscope.coma_angle_rad
    dchi_dk = (2 * np.pi / lam) * (
        (c12 * np.cos(2 * (phi - p12)) + C10) * alpha
        + c21 * np.cos(phi - p21) * alpha**2
        + microscope.Cs_A * alpha**3
        + microscope.C5_A * alpha**5
    )
    dchi_dphi = -(2 * np.pi / lam) * (c12 * np.sin(2 * (phi - p12)) * alpha + (1 / 3) * c21 * np.sin(phi - p21) * alpha**2)
    return np.exp(-((theta / 2) ** 2) * (dchi_dk**2 + dchi_dphi**2)).astype(np.float32)


def effective_cutoff_mrad(microscope: Microscope) -> float:
    """The objective aperture actually applied (mrad).

    The aperture is narrowed, if needed, so that (1) the intensity, whose
    frequencies reach twice the aperture's, is not aliased on the output grid,
    and (2) wave components that the focal spread damps below 1e-3 in the
    linear image (``exp(-(pi lambda sigma k^2)^2 / 2) < 1e-3``) are dropped: they
    would carry no contrast, but would need many more defocus values to
    average correctly.
    """
    lam = microscope.wavelength_A
    k_alias = 1.0 / (4.0 * microscope.sampling_A)
    k_max = min(microscope.semiangle_cutoff_mrad * 1e-3 / lam, k_alias)
    if microscope.focal_spread_A > 0:
        k_env = math.sqrt(math.sqrt(2 * math.log(1e3)) / (math.pi * lam * microscope.focal_spread_A))
        k_max = min(k_max, k_env)
    return k_max * lam * 1e3


def defocus_map_A(shape: tuple[int, int], microscope: Microscope, centre_px: tuple[float, float]) -> np.ndarray:
    """Defocus (Å) at every pixel: constant, plus the gradient and the parabolic bend.

    Parameters
    ----------
    shape : (int, int)
        Image shape ``(rows, cols)``.
    microscope : Microscope
        ``defocus_A`` applies at ``centre_px``.
    centre_px : (float, float)
        ``(x, y)`` pixel where the defocus equals ``microscope.defocus_A``.
    """
    s = microscope.sampling_A
    y = (np.arange(shape[0], dtype=np.float32)[:, None] - centre_px[1]) * s
    x = (np.arange(shape[1], dtype=np.float32)[None, :] - centre_px[0]) * s
    gx, gy = microscope.defocus_gradient
    df = microscope.defocus_A + gx * x + gy * y
    if microscope.defocus_curvature_A:
        u = np.cos(microscope.defocus_curvature_angle_rad) * x + np.sin(microscope.defocus_curvature_angle_rad) * y
        df = df + microscope.defocus_curvature_A * (u / 50.0) ** 2
    return np.broadcast_to(df, shape).astype(np.float32)


def defocus_nodes(defocus_min_A: float, defocus_max_A: float, focal_spread_A: float) -> np.ndarray:
    """Defocus values (Å) for the incoherent sum over the focal spread and the field.

    A uniform grid over ``[min - 2.5 sigma, max + 2.5 sigma]`` with spacing
    ``sigma / 2`` (at most :data:`MAX_DEFOCUS_NODES` values; 5 Å spacing when
    ``sigma`` is 0 and the defocus varies).
    """
    if focal_spread_A <= 0 and defocus_max_A - defocus_min_A < 1e-3:
        return np.array([defocus_min_A], dtype=np.float32)
    lo = defocus_min_A - 2.5 * focal_spread_A
    hi = defocus_max_A + 2.5 * focal_spread_A
    h = focal_spread_A / 2 if focal_spread_A > 0 else 5.0
    n = int(min(MAX_DEFOCUS_NODES, max(2, math.ceil((hi - lo) / h) + 1)))
    return np.linspace(lo, hi, n, dtype=np.float32)


def image_intensity(
    spectrum: np.ndarray,
    microscope: Microscope,
    defocus_A: np.ndarray | None = None,
) -> np.ndarray:
    """Image intensity of an exit wave under the objective lens.

    Parameters
    ----------
    spectrum : ndarray, complex, shape (rows, cols)
        FFT of the exit wave on the output grid (pixel size ``microscope.sampling_A``),
        normalised so that vacuum has intensity 1.
    microscope : Microscope
        Lens, aperture and coherence.
    defocus_A : ndarray, shape (rows, cols), optional
        Defocus at every pixel (see :func:`defocus_map_A`); default: uniform
        ``microscope.defocus_A``.

    Returns
    -------
    ndarray, float32, shape (rows, cols)
        ``sum_j w_j(r) |IFFT[spectrum A E_s(delta_j) exp(-i chi(delta_j))]|^2``, the
        incoherent sum over defocus values ``delta_j`` with Gaussian weights
        (standard deviation ``focal_spread_A``) centred on the local defocus.
    """
    shape = spectrum.shape
    ky, kx = spatial_frequencies(shape, microscope.sampling_A)
    if defocus_A is None:
        defocus_A = np.full(shape, microscope.defocus_A, dtype=np.float32)
    nodes = defocus_nodes(float(defocus_A.min()), float(defocus_A.max()), microscope.focal_spread_A)
    # work only on the frequencies inside the aperture (a few % of the grid)
    cutoff = effective_cutoff_mrad(microscope) * 1e-3 / microscope.wavelength_A
    inside = np.flatnonzero((kx**2 + ky**2 <= cutoff**2).ravel())
    kx_in = np.broadcast_to(kx, shape).ravel()[inside]
    ky_in = np.broadcast_to(ky, shape).ravel()[inside]
    lam = microscope.wavelength_A
    # chi(delta) = chi(0) - pi lambda k^2 delta
    chi = aberration_phase(kx_in, ky_in, microscope, 0.0)[None] - (
        np.pi * lam * (kx_in**2 + ky_in**2)
    )[None] * nodes[:, None]
    transfer = spatial_envelope(kx_in, ky_in, microscope, nodes[:, None]) * (np.cos(chi) - 1j * np.sin(chi))
    buffer = np.zeros((len(nodes), shape[0] * shape[1]), np.complex64)
    buffer[:, inside] = spectrum.ravel()[inside][None] * transfer
    waves = scipy.fft.ifft2(buffer.reshape((len(nodes),) + shape), axes=(-2, -1), workers=1, overwrite_x=True)
    intensities = (waves.real**2 + waves.imag**2).astype(np.float32)
    if len(nodes) == 1:
        return intensities[0]
    sigma = microscope.focal_spread_A if microscope.focal_spread_A > 0 else (nodes[1] - nodes[0])
    if float(defocus_A.max() - defocus_A.min()) < 1e-3:
        weights = np.exp(-0.5 * ((nodes - defocus_A.flat[0]) / sigma) ** 2).astype(np.float32)
        return np.tensordot(weights / weights.sum(), intensities, axes=1)
    weights = np.exp(-0.5 * ((nodes[:, None, None] - defocus_A[None]) / sigma) ** 2)
    weights /= weights.sum(axis=0, keepdims=True)
    return np.einsum("nij,nij->ij", weights.astype(np.float32), intensities)
