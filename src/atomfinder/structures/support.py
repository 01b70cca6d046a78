"""Unlabelled supports (amorphous carbon, CeO2 slabs) and helpers shared by the builders.

Supports are background: their atoms are imaged but never labelled. The
functions here return plain :class:`ase.Atoms` in an orthogonal cell whose
lateral size is the requested box ``(Lx, Ly)`` in Å.

The module also holds the small helpers that the graphene, gold and MoS2
builders share: random strain, rotation matrices and the removal of
atoms that come too close to each other.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree

#: Lattice constant of CeO2 (fluorite) in Å.
CEO2_LATTICE_A = 5.411
#: Ceria orientations ``"<zone axis>/<surface normal>"``: beam along the zone axis
#: (``z``), the surface normal along ``+y``. Values are (x, y, z) in cubic indices.
CEO2_ORIENTATIONS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "110/111": ((1, 1, -2), (1, 1, 1), (1, -1, 0)),
    "110/001": ((1, 1, 0), (0, 0, 1), (1, -1, 0)),
    "100/001": ((0, 1, 0), (0, 0, 1), (1, 0, 0)),
}
_AVOGADRO = 6.02214076e23
_CARBON_MASS_G_MOL = 12.011


# --------------------------------------------------------------------------------------
# Helpers shared by the builders
# --------------------------------------------------------------------------------------
def check_range(name: str, value: tuple[float, float], lo: float = -np.inf, hi: float = np.inf) -> None:
    """Raise ``ValueError`` unless ``value`` is a ``(min, max)`` pair inside ``[lo, hi]``."""
    if len(value) != 2 or not (lo <= value[0] <= value[1] <= hi):
        raise ValueError(f"{name} must be (min, max) with {lo} <= min <= max <= {hi}, got {value}")


def check_probability(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def uniform(rng: np.random.Generator, value_range: tuple[float, float]) -> float:
    """A float drawn uniformly from ``value_range = (min, max)``."""
    return float(rng.uniform(value_range[0], value_range[1]))


def random_strain(rng: np.random.Generator, max_strain: float) -> np.ndarray:
    """A random symmetric 2-D strain tensor.

    Parameters
    ----------
    rng : numpy.random.Generator
    max_strain : float
        Largest absolute value of each component (0.02 = 2 %).

    Returns
    -------
    ndarray, shape (2, 2)
        ``[[exx, exy], [exy, eyy]]``; apply as ``x' = (I + eps) x``.
    """
    exx, eyy, exy = rng.uniform(-max_strain, max_strain, 3)
    return np.array([[exx, exy], [exy, eyy]])


def spaced_choice(rng: np.random.Generator, candidates: np.ndarray, n: int, min_distance_A: float) -> np.ndarray:
    """Up to ``n`` of ``candidates`` (rows), in random order, each more than ``min_distance_A`` from those chosen before.

    ``candidates`` is shuffled in place (by ``rng``); the choice is greedy.
    """
    rng.shuffle(candidates)
    chosen: list[np.ndarray] = []
    for c in candidates:
        if all(np.linalg.norm(c - x) > min_distance_A for x in chosen):
            chosen.append(c)
            if len(chosen) == n:
                break
    return np.array(chosen).reshape(-1, candidates.shape[1])


def rotation_2d(angle_deg: float) -> np.ndarray:
    """The 2x2 matrix rotating by ``angle_deg`` degrees (counter-clockwise)."""
    t = np.deg2rad(angle_deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def rotation_about_axis(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """The 3x3 matrix rotating by ``angle_deg`` degrees about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, dtype=float)
    k = k / np.linalg.norm(k)
    t = np.deg2rad(angle_deg)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(t) * kx + (1 - np.cos(t)) * kx @ kx


def periodic_frame(
    positions: np.ndarray, periodic_box: tuple[float, ...], margin: float = 10.0
) -> tuple[np.ndarray, np.ndarray]:
    """Positions and box sizes for a partly periodic :class:`scipy.spatial.cKDTree`.

    The first ``len(periodic_box)`` coordinates are wrapped into ``[0, L)``; the
    others are shifted to start at 0 and get a box so large (extent + ``margin``, Å)
    that nothing wraps across it.

    Returns
    -------
    positions : ndarray, shape (n, d)
    boxsize : ndarray, shape (d,)
    """
    pos = np.array(positions, dtype=float)
    npb = len(periodic_box)
    lengths = np.asarray(periodic_box, dtype=float)
    wrapped = np.mod(pos[:, :npb], lengths)
    pos[:, :npb] = np.where(wrapped >= lengths, wrapped - lengths, wrapped)
    box = np.empty(pos.shape[1])
    box[:npb] = lengths
    if pos.shape[1] > npb:
        pos[:, npb:] -= pos[:, npb:].min(axis=0)
        box[npb:] = pos[:, npb:].max(axis=0) + margin + 1.0
    return pos, box


def close_pair_mask(
    positions: np.ndarray, min_distance: float, periodic_box: tuple[float, ...] | None = None
) -> np.ndarray:
    """Which atoms to keep so that no two kept atoms are closer than ``min_distance``.

    For every pair closer than ``min_distance`` (Å) the atom with the higher index
    is dropped, which leaves no close pair among the kept atoms.

    Parameters
    ----------
    positions : ndarray, shape (n, d)
        Positions in Å.
    min_distance : float
        Smallest allowed distance in Å.
    periodic_box : tuple of float, optional
        Periodic lengths for the first ``len(periodic_box)`` coordinates (Å); the
        remaining coordinates are not periodic. Positions must lie in ``[0, L)``.

    Returns
    -------
    ndarray of bool, shape (n,)
    """
    pos = np.asarray(positions, dtype=float)
    keep = np.ones(len(pos), dtype=bool)
    if len(pos) < 2:
        return keep
    if periodic_box is not None:
        pos, box = periodic_frame(pos, periodic_box, margin=2 * min_distance)
        tree = cKDTree(pos, boxsize=box)
    else:
        tree = cKDTree(pos)
    pairs = tree.query_pairs(min_distance, output_type="ndarray")
    if len(pairs):
        keep[pairs.max(axis=1)] = False
    return keep


# --------------------------------------------------------------------------------------
# Amorphous carbon
# --------------------------------------------------------------------------------------
def amorphous_carbon(
    rng: np.random.Generator,
    box_A: tuple[float, float],
    thickness_A: float,
    z0_A: float,
    density_g_cm3: float = 2.0,
    min_distance_A: float = 1.3,
) -> Atoms:
    """A random amorphous carbon film (unlabelled background).

    Atoms are placed by random sequential addition: uniform random positions,
    rejecting any closer than ``min_distance_A`` to an atom already placed,
    until the number of atoms matches the density.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness.
    box_A : (float, float)
        Lateral box ``(Lx, Ly)`` in Å; the film fills it (periodic in x and y).
    thickness_A : float
        Film thickness along z in Å.
    z0_A : float
        z of the film's lower surface in Å.
    density_g_cm3 : float
        Mass density in g/cm³ (amorphous carbon: 1.8-2.2).
    min_distance_A : float
        Smallest C-C distance in Å.

    Returns
    -------
    ase.Atoms
        C atoms with ``z`` in ``[z0_A, z0_A + thickness_A)``, cell
        ``(Lx, Ly, z0_A + thickness_A)``, pbc True.
    """
    lx, ly = float(box_A[0]), float(box_A[1])
    if thickness_A <= 0 or lx <= 0 or ly <= 0:
        raise ValueError("amorphous_carbon: box and thickness must be positive")
    number_density = density_g_cm3 / _CARBON_MASS_G_MOL * _AVOGADRO * 1e-24  # atoms per Å³
    n_target = int(round(number_density * lx * ly * thickness_A))
    box = np.array([lx, ly, thickness_A + 2 * min_distance_A + 1.0])  # z is not periodic
    size = np.array([lx, ly, thickness_A])
    accepted = np.zeros((0, 3))  # in the film frame: z measured from z0_A
    for _ in range(200):
        missing = n_target - len(accepted)
        if missing <= 0:
            break
        trial = np.minimum(rng.random((int(missing * 1.2) + 16, 3)) * size, size * (1 - 1e-12))
        if len(accepted):
            dist, _ = cKDTree(accepted, boxsize=box).query(trial, k=1, distance_upper_bound=min_distance_A)
            trial = trial[~np.isfinite(dist)]
        trial = trial[close_pair_mask(trial, min_distance_A, periodic_box=(lx, ly))]
        accepted = np.concatenate([accepted, trial[:missing]])
    accepted[:, 2] += z0_A
    atoms = Atoms(["C"] * len(accepted), positions=accepted, cell=[lx, ly, z0_A + thickness_A], pbc=True)
    return atoms


# --------------------------------------------------------------------------------------
# CeO2 slab
# --------------------------------------------------------------------------------------
def ceria_rotation(orientation: str) -> np.ndarray:
    """Rows ``(x, y, z)``: the cubic directions along the slab's x, y (surface normal), z (beam).

    Parameters
    ----------
    orientation : str
        A key of :data:`CEO2_ORIENTATIONS`, e.g. ``"110/111"``.
    """
    if orientation not in CEO2_ORIENTATIONS:
        raise ValueError(f"unknown ceria orientation {orientation!r}; use one of {list(CEO2_ORIENTATIONS)}")
    rows = np.array(CEO2_ORIENTATIONS[orientation], dtype=float)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def ceria_slab(
    rng: np.random.Generator,
    box_A: tuple[float, float],
    height_A: float,
    thickness_A: float,
    z0_A: float = 0.0,
    orientation: str = "110/111",
    lattice_constant_A: float = CEO2_LATTICE_A,
) -> Atoms:
    """A CeO2 (fluorite) slab seen in profile (unlabelled background).

    The slab spans the full box width in x, ``y`` from 0 to about ``height_A``
    (its top surface, normal ``+y``) and ``z`` from ``z0_A`` to
    ``z0_A + thickness_A`` (along the beam). Ce atoms are cut at ``height_A``;
    an O atom is kept when it binds to at least two kept Ce atoms, so surfaces are
    O-terminated and no O dangles. The lattice offset is random, so the x and z
    terminations vary; atoms that come closer than 2 Å across the periodic x
    boundary (the seam) are dropped.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the lattice offset.
    box_A : (float, float)
        Lateral box ``(Lx, Ly)`` in Å.
    height_A : float
        Height of the top Ce layer's cut in Å (the top O layer may sit up to ~1.4 Å
        higher).
    thickness_A : float
        Extent along the beam (z) in Å.
    z0_A : float
        Lower z bound in Å.
    orientation : str
        ``"<zone axis>/<surface normal>"``, a key of :data:`CEO2_ORIENTATIONS`.
    lattice_constant_A : float
        Cubic lattice constant in Å (CeO2: 5.411).

    Returns
    -------
    ase.Atoms
        Ce and O atoms, cell ``(Lx, Ly, z0_A + thickness_A)``, pbc True.
    """
    lx, ly = float(box_A[0]), float(box_A[1])
    if height_A <= 0 or thickness_A <= 0 or height_A > ly:
        raise ValueError("ceria_slab: need 0 < height_A <= Ly and thickness_A > 0")
    rot = ceria_rotation(orientation)  # frame = rot @ cubic
    a = lattice_constant_A
    lo = np.array([0.0, 0.0, z0_A]) - 3.0
    hi = np.array([lx, height_A, z0_A + thickness_A]) + 3.0
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    offset = rng.random(3) * a
    cubic = (corners - offset @ rot.T) @ rot  # cubic = rot.T @ (frame - offset_frame)
    cmin = np.floor(cubic.min(axis=0) / a).astype(int) - 1
    cmax = np.ceil(cubic.max(axis=0) / a).astype(int) + 1
    grid = np.stack(np.meshgrid(*[np.arange(cmin[i], cmax[i] + 1) for i in range(3)], indexing="ij"), -1).reshape(-1, 3)
    ce_basis = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    o_basis = np.array([[x, y, z] for x in (0.25, 0.75) for y in (0.25, 0.75) for z in (0.25, 0.75)])

    def frame(basis: np.ndarray) -> np.ndarray:
        cub = (grid[:, None, :] + basis[None]).reshape(-1, 3) * a
        return cub @ rot.T + offset @ rot.T

    ce = frame(ce_basis)
    o = frame(o_basis)
    def inside_xz(p: np.ndarray) -> np.ndarray:
        return (p[:, 0] >= 0) & (p[:, 0] < lx) & (p[:, 2] >= z0_A) & (p[:, 2] < z0_A + thickness_A)

    ce = ce[inside_xz(ce) & (ce[:, 1] >= 0) & (ce[:, 1] <= height_A)]
    o = o[inside_xz(o) & (o[:, 1] >= 0) & (o[:, 1] < ly)]
    ce_o = a * np.sqrt(3) / 4  # Ce-O bond length
    both, box = periodic_frame(np.concatenate([ce, o]), (lx,))
    counts = cKDTree(both[: len(ce)], boxsize=box).query_ball_point(both[len(ce):], ce_o + 0.1, return_length=True)
    o = o[counts >= 2]
    positions = np.concatenate([ce, o])
    symbols = np.array(["Ce"] * len(ce) + ["O"] * len(o))
    keep = close_pair_mask(positions, 2.0, periodic_box=(lx,))
    return Atoms(symbols[keep].tolist(), positions=positions[keep], cell=[lx, ly, z0_A + thickness_A], pbc=True)
