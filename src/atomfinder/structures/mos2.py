"""2H-MoS2 monolayers with Mo and S vacancies.

:func:`build_mos2` draws a rotated, slightly strained 2H monolayer
(a = 3.19 Å, S-S distance along the beam 3.13 Å) that fills the lateral box,
with random concentrations of Mo vacancies, single S vacancies (one of the two S
of a column missing) and double S vacancies (both missing).

Sites are columns in projection, with classes (1-based labels):

=================  =====  ======  ==========================================
class              label  height  meaning
=================  =====  ======  ==========================================
``"Mo"``           1      1       a Mo atom
``"S"``            2      2       an intact S2 column
``"S1"``           3      1       an S column with one of its two S missing
``"Mo_vacancy"``   4      0       a missing Mo (position of the missing atom)
``"S_vacancy"``    5      0       both S of a column missing
=================  =====  ======  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from atomfinder._config import ConfigMixin
from atomfinder.structures.base import Sites, Structure
from atomfinder.structures.support import (
    check_probability,
    check_range,
    close_pair_mask,
    random_strain,
    rotation_2d,
    uniform,
)

CLASS_NAMES = ("Mo", "S", "S1", "Mo_vacancy", "S_vacancy")
MO, S2, S1, MO_VACANCY, S_VACANCY = 1, 2, 3, 4, 5
_GENERATION_MARGIN = 5.0  # Å of lattice built beyond each box edge before cropping


@dataclass(frozen=True)
class MoS2Config(ConfigMixin):
    """What :func:`build_mos2` draws from.

    Vacancy fractions are ``(min, max)`` ranges; per structure a fraction is
    drawn uniformly from its range, and the number of vacancies is binomial over
    the sites of that kind in the box.

    Attributes
    ----------
    lattice_constant_A : float
        In-plane lattice constant in Å.
    s_s_distance_A : float
        Distance between the two S of a column (along the beam) in Å.
    max_strain : float
        Largest absolute strain component (0.02 = 2 %).
    p_clean : float
        Probability of a sheet without vacancies.
    mo_vacancy_fraction : (float, float)
        Range of the fraction of Mo sites left empty.
    s_single_vacancy_fraction : (float, float)
        Range of the fraction of S columns that lose one of their two S.
    s_double_vacancy_fraction : (float, float)
        Range of the fraction of S columns that lose both S.
    min_column_distance_A : float
        Columns closer than this (Å) across the periodic box seam are dropped.
    vacuum_A : float
        Vacuum above and below the layer along z in Å.
    """

    lattice_constant_A: float = 3.19
    s_s_distance_A: float = 3.13
    max_strain: float = 0.02
    p_clean: float = 0.1
    mo_vacancy_fraction: tuple[float, float] = (0.0, 0.03)
    s_single_vacancy_fraction: tuple[float, float] = (0.0, 0.08)
    s_double_vacancy_fraction: tuple[float, float] = (0.0, 0.03)
    min_column_distance_A: float = 1.2
    vacuum_A: float = 3.0

    def __post_init__(self) -> None:
        check_probability("p_clean", self.p_clean)
        check_range("mo_vacancy_fraction", self.mo_vacancy_fraction, 0.0, 1.0)
        check_range("s_single_vacancy_fraction", self.s_single_vacancy_fraction, 0.0, 1.0)
        check_range("s_double_vacancy_fraction", self.s_double_vacancy_fraction, 0.0, 1.0)
        if self.s_single_vacancy_fraction[1] + self.s_double_vacancy_fraction[1] > 1.0:
            raise ValueError("single + double S vacancy fractions must not exceed 1")
        if not 0 <= self.max_strain <= 0.1:
            raise ValueError("max_strain must be in [0, 0.1]")
        if self.lattice_constant_A <= 0 or self.s_s_distance_A <= 0 or self.vacuum_A < 0:
            raise ValueError("lattice_constant_A, s_s_distance_A must be positive and vacuum_A >= 0")


def mos2_columns(
    lo: np.ndarray, hi: np.ndarray, angle_deg: float, a: float, offset: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Projected Mo and S2 column positions of a 2H monolayer inside ``[lo, hi]``.

    Parameters
    ----------
    lo, hi : ndarray, shape (2,)
        Rectangle corners in Å.
    angle_deg : float
        Lattice rotation in degrees.
    a : float
        Lattice constant in Å.
    offset : ndarray, shape (2,)
        Position of one Mo column in Å.

    Returns
    -------
    mo, s : ndarray, shape (n, 2)
        Column positions in Å (Mo at the lattice points, S at ``(a1 + a2) / 3``).
    """
    cell = rotation_2d(angle_deg) @ np.array([[a, a / 2], [0.0, a * np.sqrt(3) / 2]])
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]]]) - offset
    frac = np.linalg.solve(cell, corners.T)
    i0, j0 = np.floor(frac.min(axis=1)).astype(int) - 1
    i1, j1 = np.ceil(frac.max(axis=1)).astype(int) + 1
    ij = np.stack(np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij"), -1).reshape(-1, 2)
    mo = ij @ cell.T + offset
    s = mo + cell @ np.array([1 / 3, 1 / 3])

    def inside(p: np.ndarray) -> np.ndarray:
        return p[np.all((p >= lo) & (p <= hi), axis=1)]

    return inside(mo), inside(s)


def build_mos2(rng: np.random.Generator, box_A: tuple[float, float], config: MoS2Config | None = None) -> Structure:
    """A random 2H-MoS2 monolayer filling the box, with labelled columns and vacancies.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness (same seed, same structure).
    box_A : (float, float)
        Lateral box ``(Lx, Ly)`` in Å.
    config : MoS2Config, optional
        Vacancy fractions and strain; the defaults when omitted.

    Returns
    -------
    Structure
        Atoms in an orthogonal cell ``(Lx, Ly, s_s_distance_A + 2 * vacuum_A)``
        (Mo plane in the middle), sites for every column (vacancies included, at
        the position of the missing column) with classes
        ``("Mo", "S", "S1", "Mo_vacancy", "S_vacancy")``, and ``info`` with the
        rotation, strain and vacancy counts.
    """
    cfg = config or MoS2Config()
    box = np.array(box_A, dtype=float)
    if box.shape != (2,) or np.any(box <= 5.0):
        raise ValueError(f"box_A must be (Lx, Ly) with both > 5 Å, got {box_A}")
    angle = float(rng.uniform(0.0, 360.0))
    offset = rng.uniform(0.0, cfg.lattice_constant_A, 2)
    eps = random_strain(rng, cfg.max_strain)
    clean = bool(rng.random() < cfg.p_clean)
    f_mo = 0.0 if clean else uniform(rng, cfg.mo_vacancy_fraction)
    f_s1 = 0.0 if clean else uniform(rng, cfg.s_single_vacancy_fraction)
    f_s2 = 0.0 if clean else uniform(rng, cfg.s_double_vacancy_fraction)

    mo, s = mos2_columns(-np.full(2, _GENERATION_MARGIN), box + _GENERATION_MARGIN, angle,
                         cfg.lattice_constant_A, offset)
    centre = 0.5 * box
    strain = np.eye(2) + eps
    mo = (mo - centre) @ strain.T + centre
    s = (s - centre) @ strain.T + centre
    mo = mo[np.all((mo >= 0) & (mo < box), axis=1)]
    s = s[np.all((s >= 0) & (s < box), axis=1)]
    columns = np.concatenate([mo, s])
    is_mo = np.arange(len(columns)) < len(mo)
    keep = close_pair_mask(columns, cfg.min_column_distance_A, periodic_box=tuple(box))
    columns, is_mo = columns[keep], is_mo[keep]

    labels = np.where(is_mo, MO, S2).astype(np.int64)
    mo_idx = np.flatnonzero(is_mo)
    s_idx = np.flatnonzero(~is_mo)
    n_mo_vac = int(rng.binomial(len(mo_idx), f_mo))
    labels[rng.choice(mo_idx, n_mo_vac, replace=False)] = MO_VACANCY
    n_s2 = int(rng.binomial(len(s_idx), f_s2))
    n_s1 = int(min(rng.binomial(len(s_idx), f_s1), len(s_idx) - n_s2))
    picked = rng.choice(s_idx, n_s1 + n_s2, replace=False)
    labels[picked[:n_s2]] = S_VACANCY
    labels[picked[n_s2:]] = S1

    # atoms: Mo at z0, S at z0 +- d/2; an S1 column keeps its top or bottom S at random
    z0 = cfg.vacuum_A + 0.5 * cfg.s_s_distance_A
    half = 0.5 * cfg.s_s_distance_A
    top = np.ones(len(columns), dtype=bool)
    bottom = np.ones(len(columns), dtype=bool)
    s1 = np.flatnonzero(labels == S1)
    keep_top = rng.random(len(s1)) < 0.5
    top[s1[~keep_top]] = False
    bottom[s1[keep_top]] = False
    mo_xy = columns[labels == MO]
    s_top = columns[((labels == S2) | (labels == S1)) & top]
    s_bottom = columns[((labels == S2) | (labels == S1)) & bottom]
    positions = np.concatenate([
        np.column_stack([mo_xy, np.full(len(mo_xy), z0)]),
        np.column_stack([s_top, np.full(len(s_top), z0 + half)]),
        np.column_stack([s_bottom, np.full(len(s_bottom), z0 - half)]),
    ])
    symbols = ["Mo"] * len(mo_xy) + ["S"] * (len(s_top) + len(s_bottom))
    lz = cfg.s_s_distance_A + 2 * cfg.vacuum_A
    atoms = Atoms(symbols, positions=positions, cell=[box[0], box[1], lz], pbc=True)

    heights = np.select([labels == MO, labels == S2, labels == S1], [1, 2, 1], 0).astype(np.int64)
    sites = Sites(columns.copy(), labels, heights)
    info = {
        "system": "mos2",
        "n_atoms": len(atoms),
        "rotation_deg": angle,
        "strain": [[float(v) for v in row] for row in eps],
        "clean": clean,
        "fractions": {"mo_vacancy": f_mo, "s_single_vacancy": f_s1, "s_double_vacancy": f_s2},
        "counts": {name: int(np.sum(labels == i + 1)) for i, name in enumerate(CLASS_NAMES)},
    }
    return Structure(atoms=atoms, sites=sites, class_names=CLASS_NAMES, info=info)
