"""Exit waves by multislice (abTEM), transposed once to ``[row, col]``.

abTEM indexes arrays ``[x, y]``; everything in atomfinder is ``[row, col]`` =
``[y, x]``. :func:`exit_waves` is the one place where that transpose happens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@functools.cache
def _abtem():
    """Import abTEM once, configured for reproducible CPU runs.

    FFTW plans chosen by measurement can differ between processes and change
    the last bits of a result; ``FFTW_ESTIMATE`` plans are deterministic, so
    the same seed gives identical arrays in any worker.
    """
    import abtem

    abtem.config.set(
        {
            "device": "cpu",
            "fftw.planning_effort": "FFTW_ESTIMATE",
            "fftw.threads": 1,
            "dask.lazy": False,
            "diagnostics.progress_bar": False,
        }
    )
    return abtem


@dataclass(frozen=True)
class ExitWaves:
    """Exit waves of one structure.

    Attributes
    ----------
    array : ndarray, complex64, shape (n_configs, rows, cols)
        One wave per frozen-phonon configuration (1 without phonons), ``[row, col]``.
    sampling_A : float
        Pixel size (Å) of the wave grid (equal in x and y).
    energy_eV : float
        Acceleration energy (eV).
    """

    array: np.ndarray
    sampling_A: float
    energy_eV: float


def exit_waves(
    atoms,
    energy_eV: float,
    gpts: tuple[int, int],
    slice_thickness_A: float = 1.0,
    frozen_phonons: int = 0,
    phonon_sigma_A: float = 0.08,
    seed: int = 0,
) -> ExitWaves:
    """Plane-wave exit waves of ``atoms`` (multislice, Lobato potentials).

    Parameters
    ----------
    atoms : ase.Atoms
        Orthogonal cell ``(Lx, Ly, Lz)`` in Å with ``Lx / gpts[1] == Ly / gpts[0]``.
    energy_eV : float
        Acceleration energy (eV).
    gpts : (int, int)
        Grid ``(rows, cols)``; FFT-friendly sizes (products of 2, 3, 5) are fastest.
    slice_thickness_A : float
        Multislice slice thickness (Å).
    frozen_phonons : int
        Number of frozen-phonon configurations (0 = static lattice).
    phonon_sigma_A : float
        Root-mean-square thermal displacement (Å) of the frozen phonons.
    seed : int
        Seed of the phonon displacements.
    """
    abtem = _abtem()
    lx, ly = float(atoms.cell[0, 0]), float(atoms.cell[1, 1])
    if not np.isclose(lx / gpts[1], ly / gpts[0], rtol=1e-6):
        raise ValueError(f"non-square pixels: cell {lx:.3f} x {ly:.3f} Å on grid {gpts}")
    specimen = atoms
    if frozen_phonons > 0:
        specimen = abtem.FrozenPhonons(atoms, num_configs=frozen_phonons, sigmas=phonon_sigma_A, seed=seed)
    thickness = max(float(atoms.cell[2, 2]), 1e-3)
    potential = abtem.Potential(
        specimen,
        gpts=(gpts[1], gpts[0]),
        slice_thickness=min(slice_thickness_A, thickness),
        parametrization="lobato",
        projection="infinite",
    )
    waves = abtem.PlaneWave(energy=energy_eV).multislice(potential, lazy=False)
    array = np.asarray(waves.array)
    if array.ndim == 2:
        array = array[None]
    array = np.ascontiguousarray(np.swapaxes(array, -1, -2)).astype(np.complex64)
    return ExitWaves(array=array, sampling_A=lx / gpts[1], energy_eV=energy_eV)
