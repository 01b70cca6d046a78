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
from atomfinder.imaging.transfer import defocus_map_A, image_intensity


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


# --------------------------------------------------------------------------- whole images


def column_members(atom_xy_A: np.ndarray, sites_xy_A: np.ndarray, tolerance_A: float = 0.5) -> np.ndarray:
    """Index of the site each atom belongs to (nearest site within ``tolerance_A``, else -1).

    Parameters
    ----------
    atom_xy_A : ndarray, shape (n_atoms, 2)
        Projected atom positions (Å).
    sites_xy_A : ndarray, shape (n_sites, 2)
        Projected site (column) positions (Å), same frame.
    tolerance_A : float
        Largest projected distance of an atom from its column (Å).
    """
    from scipy.spatial import cKDTree

    if len(sites_xy_A) == 0 or len(atom_xy_A) == 0:
        return np.full(len(atom_xy_A), -1, dtype=np.int64)
    d, k = cKDTree(np.asarray(sites_xy_A, dtype=np.float64)).query(np.asarray(atom_xy_A, dtype=np.float64))
    return np.where(d <= tolerance_A, k, -1).astype(np.int64)


def _patch_wave_changes(
    atoms, members: np.ndarray, centre_A: np.ndarray, shifts_A: tuple[tuple[float, float], ...], energy_eV: float,
    wave_sampling_A: float, patch_px: int, slice_thickness_A: float,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Exit-wave changes when the atoms ``members`` move by each of ``shifts_A``, on a local patch.

    The patch is ``patch_px`` wave pixels square, centred on the wave pixel nearest
    ``centre_A``; it holds the atoms whose projected position lies inside it
    (periodic distance in the structure's cell). Returns ``(changes, origin)`` with
    ``origin`` the patch's top-left wave pixel ``(x0, y0)`` (may be negative:
    the cell is periodic). Each change is kept in full within a sixth of the patch
    side of the centre and tapered to 0 at a quarter (the patch's own edges, where
    its cut neighbourhood differs from the whole structure, never contribute).
    """
    from ase import Atoms

    lx, ly = float(atoms.cell[0, 0]), float(atoms.cell[1, 1])
    origin = np.round(np.asarray(centre_A) / wave_sampling_A).astype(int) - patch_px // 2
    side = patch_px * wave_sampling_A
    rel = atoms.positions[:, :2] - origin * wave_sampling_A
    rel -= np.floor(rel / (lx, ly)) * (lx, ly)  # into [0, L)
    inside = (rel[:, 0] < side) & (rel[:, 1] < side)
    local = np.flatnonzero(inside)
    pos = np.column_stack([rel[local], atoms.positions[local, 2]])
    moved = np.isin(local, members)
    cell = [side, side, float(atoms.cell[2, 2])]
    waves = []
    for dxy in ((0.0, 0.0),) + tuple(shifts_A):
        p = pos.copy()
        p[moved, :2] += dxy
        patch = Atoms(np.asarray(atoms.numbers)[local], positions=p, cell=cell, pbc=True)
        wave = exit_waves(patch, energy_eV, gpts=(patch_px, patch_px), slice_thickness_A=slice_thickness_A)
        waves.append(wave.array[0])
    yy, xx = np.mgrid[0:patch_px, 0:patch_px] - (patch_px - 1) / 2
    window = np.clip(3.0 - np.hypot(xx, yy) / (patch_px / 12), 0.0, 1.0)  # 1 inside r = side/6, 0 beyond side/4
    return [(w - waves[0]) * window for w in waves[1:]], origin


def _add_periodic(grid: np.ndarray, patch: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """``grid`` plus ``patch`` placed at wave pixel ``origin = (x0, y0)`` (periodic)."""
    out = grid.copy()
    rows = (origin[1] + np.arange(patch.shape[0])) % grid.shape[0]
    cols = (origin[0] + np.arange(patch.shape[1])) % grid.shape[1]
    out[np.ix_(rows, cols)] += patch
    return out


def image_position_crlb_A(
    atoms,
    sites_xy_A: np.ndarray,
    microscope: Microscope,
    origin_px: tuple[int, int],
    image_px: int,
    *,
    wave_oversampling: int = 1,
    slice_thickness_A: float = 2.0,
    step_A: float = 0.02,
    patch_A: float = 16.0,
    member_tolerance_A: float = 0.5,
) -> np.ndarray:
    """Cramér-Rao bound (Å, 1 σ per coordinate) of every site's position in one simulated image.

    The noise-free image of the whole structure (this project's multislice and
    lens, uniform over its cell, ideal detector: no MTF, no blur) is recorded
    with Poisson noise at the microscope's dose. Its derivative with respect to
    each site's ``x`` and ``y`` is a finite difference: the site's atoms (a
    column: all atoms within ``member_tolerance_A`` of it) move by ``step_A``;
    the exit wave's change is simulated on a local patch and added to the whole
    exit wave, which then goes through the lens. The Fisher information of all
    sites' coordinates together,

        F_ab = N0 * sum over the image's pixels of (dI/da)(dI/db) / I,

    with ``N0 = dose * sampling²``, is inverted, so neighbours that overlap raise
    each other's bound; the other unknowns (column heights, defocus, ...) are
    taken as known, so the result is still a lower bound on any unbiased
    estimator's error.

    Parameters
    ----------
    atoms : ase.Atoms
        The imaged structure in its periodic cell (static lattice).
    sites_xy_A : ndarray, shape (n, 2)
        Projected site positions (Å, the structure's frame).
    microscope : Microscope
        Lens, coherence, pixel size of the image (Å) and dose (e/Å²); the
        defocus gradient and curvature are kept, the MTF and blur ignored.
    origin_px : (int, int)
        Top-left ``(x0, y0)`` of the image in the cell's output-pixel grid.
    image_px : int
        Side of the square image (pixels).
    wave_oversampling : int
        Exit-wave grid = output grid x this factor.
    slice_thickness_A : float
        Multislice slice thickness (Å).
    step_A : float
        Finite-difference step (Å).
    patch_A : float
        Side of the local patch on which a moved column's exit wave is simulated (Å).
    member_tolerance_A : float
        Largest projected distance of an atom from its site (Å).

    Returns
    -------
    ndarray, shape (n,)
        ``sqrt((C_xx + C_yy) / 2)`` per site (Å), ``C = F⁻¹`` (pseudo-inverse);
        ``inf`` for a site with no information (outside the image, or no dose).
    """
    sites = np.asarray(sites_xy_A, dtype=np.float64).reshape(-1, 2)
    s = float(microscope.sampling_A)
    lx = float(atoms.cell[0, 0])
    box_px = int(round(lx / s))
    f = int(wave_oversampling)
    wave_s = lx / (box_px * f)
    gpts = (box_px * f, box_px * f)
    full = exit_waves(atoms, float(microscope.energy_eV), gpts=gpts, slice_thickness_A=slice_thickness_A)
    x0, y0 = origin_px
    centre = (x0 + (image_px - 1) / 2, y0 + (image_px - 1) / 2)
    m = dataclasses.replace(microscope, mtf_c0=1.0, blur_px=0.0)
    df = None
    if m.defocus_gradient != (0.0, 0.0) or m.defocus_curvature_A:
        df = defocus_map_A((box_px, box_px), m, centre)
    crop = (slice(y0, y0 + image_px), slice(x0, x0 + image_px))

    def crop_intensity(wave: np.ndarray) -> np.ndarray:
        from atomfinder.imaging.multislice import ExitWaves

        spectrum = resample_spectrum(ExitWaves(array=wave[None], sampling_A=wave_s, energy_eV=m.energy_eV),
                                     (box_px, box_px))[0]
        return image_intensity(spectrum, m, df)[crop].astype(np.float64)

    base = crop_intensity(full.array[0])
    members = column_members(atoms.positions[:, :2], sites, member_tolerance_A)
    patch_px = int(math.ceil(patch_A / wave_s / 2)) * 2
    derivs = np.zeros((2 * len(sites), image_px * image_px))
    for k, xy in enumerate(sites):
        who = np.flatnonzero(members == k)
        if len(who) == 0:
            continue
        changes, origin = _patch_wave_changes(atoms, who, xy, ((step_A, 0.0), (0.0, step_A)), float(m.energy_eV),
                                              wave_s, patch_px, slice_thickness_A)
        for axis, change in enumerate(changes):
            moved = crop_intensity(_add_periodic(full.array[0], change, origin))
            derivs[2 * k + axis] = ((moved - base) / step_A).ravel()
    return crlb_from_derivatives(derivs, base.ravel(), float(m.dose_e_per_A2) * s**2)


def crlb_from_derivatives(derivs: np.ndarray, intensity: np.ndarray, electrons_per_unit: float) -> np.ndarray:
    """Per-site bound ``sqrt((C_xx + C_yy) / 2)`` from image derivatives under Poisson noise.

    Parameters
    ----------
    derivs : ndarray, shape (2n, p)
        ``dI/dx_k`` and ``dI/dy_k`` (rows ``2k`` and ``2k + 1``) per unit of length.
    intensity : ndarray, shape (p,)
        Noise-free intensity per pixel (vacuum = 1).
    electrons_per_unit : float
        Electrons per pixel for intensity 1 (dose x pixel area).

    Returns
    -------
    ndarray, shape (n,)
        In the unit of length of ``derivs``; ``inf`` where a site carries no information.
    """
    n = derivs.shape[0] // 2
    if n == 0:
        return np.zeros(0)
    if not electrons_per_unit > 0:
        return np.full(n, math.inf)
    weight = electrons_per_unit / np.maximum(np.asarray(intensity, dtype=np.float64), 1e-6)
    fisher = (derivs * weight) @ derivs.T
    informed = np.diag(fisher) > 1e-12 * max(float(np.max(np.diag(fisher))), 1e-300)
    cov = np.full((2 * n, 2 * n), np.nan)
    if informed.any():
        sub = fisher[np.ix_(informed, informed)]
        cov[np.ix_(informed, informed)] = np.linalg.pinv(sub, rcond=1e-10, hermitian=True)
    var = np.diag(cov).reshape(n, 2)
    out = np.sqrt(np.clip(var.mean(axis=1), 0.0, None))
    out[~np.all(np.isfinite(var), axis=1)] = math.inf
    return out


__all__ = ["atom_image", "column_members", "crlb_from_derivatives", "image_position_crlb_A", "position_crlb_A"]
