"""Graphene sheets with point defects, grain boundaries and general local disorder.

:func:`build_graphene` draws one sheet that fills the lateral box: a honeycomb
lattice (C-C 1.42 Å) in one or more rotated domains, with random mixes of
mono- and di-vacancies, Stone-Wales pairs, 5-8-5 and 555-777 divacancies,
random ring reconstructions (chains of bond rotations), rotated patches,
dislocation dipoles, holes with edges, substitutions (Si, N) and adatoms,
then small strain and ripples. Every atom is a labelled site (class ``"C"``,
height 1), so the labels are exact whatever the disorder.

Local topological defects are made on the flat, unstrained sheet: the atoms near
the defect are re-bonded and then relaxed with a small spring model (bond and
second-neighbour springs plus a short-range repulsion), so 5-, 7- and 8-membered
rings have plausible (not DFT) shapes. Everything is vectorised NumPy /
:class:`scipy.spatial.cKDTree`; Python loops run over defects, never over atom pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from ase import Atoms
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from atomfinder._config import ConfigMixin
from atomfinder.structures.base import Sites, Structure
from atomfinder.structures.support import (
    check_probability,
    check_range,
    close_pair_mask,
    random_strain,
    rotation_2d,
    spaced_choice,
    uniform,
)

CLASS_NAMES = ("C",)

#: The defect kinds whose densities the config draws, in the order they are made.
DEFECT_KINDS = (
    "dislocation_dipole",
    "rotated_patch",
    "vacancy",
    "divacancy",
    "stone_wales",
    "divacancy_585",
    "divacancy_555777",
    "ring_reconstruction",
    "hole",
    "substitution",
    "adatom",
)
_LOCAL_KINDS = ("vacancy", "divacancy", "stone_wales", "divacancy_585", "divacancy_555777", "ring_reconstruction")
_BOND_CUTOFF = 1.75  # Å, neighbour cutoff for bonding tests
_GENERATION_MARGIN = 6.0  # Å of sheet built beyond each box edge before cropping
_GB_OVERLAP = 0.4  # Å that each domain reaches beyond its Voronoi cell (too-close atoms then merge)
_HEAL_CUTOFF = 2.5  # Å, longest bond that healing pulls back


@dataclass(frozen=True)
class GrapheneConfig(ConfigMixin):
    """What :func:`build_graphene` draws from.

    Densities are ``(min, max)`` ranges in defects per nm² of box area; per
    structure a density is drawn uniformly from its range and the count from a
    Poisson distribution (a kind is switched off altogether with probability
    ``1 - p_each_kind``).

    Attributes
    ----------
    bond_length_A : float
        C-C bond length in Å.
    p_clean : float
        Probability of a sheet without any defect (strain and ripples still apply).
    p_each_kind : float
        Probability that a given defect kind is present at all in a structure.
    vacancy_density_nm2, divacancy_density_nm2, stone_wales_density_nm2,
    divacancy_585_density_nm2, divacancy_555777_density_nm2,
    ring_reconstruction_density_nm2, rotated_patch_density_nm2,
    dislocation_dipole_density_nm2, hole_density_nm2, substitution_density_nm2,
    adatom_density_nm2 : (float, float)
        Density ranges (per nm²) of each defect kind.
    p_grain_boundary : float
        Probability that the sheet has several rotated domains (grain boundaries).
    n_domains : (int, int)
        Range of the number of domains when there are grain boundaries.
    min_misorientation_deg : float
        Smallest misorientation between neighbouring domains in degrees (the
        largest is ``60 - min``).
    rotated_patch_radius_A : (float, float)
        Radius range of rotated discs in Å.
    rotated_patch_angle_deg : (float, float)
        Range of the rotation angle of a patch in degrees (sign random).
    dislocation_separation_A : (float, float)
        Range of the distance between the two cores of a dislocation dipole in Å.
    hole_radius_A : (float, float)
        Mean radius range of holes in Å (the outline is a random blob).
    ring_reconstruction_rotations : (int, int)
        Range of the number of chained bond rotations in a random ring reconstruction.
    substitution_elements : tuple of str
        Elements that replace C atoms (drawn uniformly).
    si_pucker_A : float
        Out-of-plane displacement of substitutional Si in Å (sign random).
    adatom_elements : tuple of str
        Adatom elements (drawn uniformly); they sit over bond centres (bridge sites).
    adatom_height_A : float
        Height of adatoms above the local sheet in Å.
    max_strain : float
        Largest absolute strain component (0.02 = 2 %).
    ripple_rms_A : (float, float)
        Range of the RMS out-of-plane ripple height in Å.
    ripple_wavelength_A : (float, float)
        Wavelength range of the ripple's plane waves in Å.
    min_distance_A : float
        Atoms closer than this (Å) are merged or removed wherever the builder
        joins lattices (grain boundaries, patches, dislocations, the box seam).
    vacuum_A : float
        Vacuum above and below the sheet along z in Å.
    """

    bond_length_A: float = 1.42
    p_clean: float = 0.1
    p_each_kind: float = 0.5
    vacancy_density_nm2: tuple[float, float] = (0.0, 0.08)
    divacancy_density_nm2: tuple[float, float] = (0.0, 0.04)
    stone_wales_density_nm2: tuple[float, float] = (0.0, 0.04)
    divacancy_585_density_nm2: tuple[float, float] = (0.0, 0.04)
    divacancy_555777_density_nm2: tuple[float, float] = (0.0, 0.04)
    ring_reconstruction_density_nm2: tuple[float, float] = (0.0, 0.04)
    rotated_patch_density_nm2: tuple[float, float] = (0.0, 0.02)
    dislocation_dipole_density_nm2: tuple[float, float] = (0.0, 0.01)
    hole_density_nm2: tuple[float, float] = (0.0, 0.01)
    substitution_density_nm2: tuple[float, float] = (0.0, 0.04)
    adatom_density_nm2: tuple[float, float] = (0.0, 0.04)
    p_grain_boundary: float = 0.2
    n_domains: tuple[int, int] = (2, 3)
    min_misorientation_deg: float = 5.0
    rotated_patch_radius_A: tuple[float, float] = (3.0, 7.0)
    rotated_patch_angle_deg: tuple[float, float] = (10.0, 30.0)
    dislocation_separation_A: tuple[float, float] = (6.0, 16.0)
    hole_radius_A: tuple[float, float] = (3.0, 9.0)
    ring_reconstruction_rotations: tuple[int, int] = (1, 3)
    substitution_elements: tuple[str, ...] = ("Si", "N")
    si_pucker_A: float = 1.0
    adatom_elements: tuple[str, ...] = ("C", "Si")
    adatom_height_A: float = 2.0
    max_strain: float = 0.02
    ripple_rms_A: tuple[float, float] = (0.0, 0.5)
    ripple_wavelength_A: tuple[float, float] = (20.0, 80.0)
    min_distance_A: float = 1.2
    vacuum_A: float = 3.0

    def __post_init__(self) -> None:
        for name in ("p_clean", "p_each_kind", "p_grain_boundary"):
            check_probability(name, getattr(self, name))
        for kind in DEFECT_KINDS:
            check_range(f"{kind}_density_nm2", getattr(self, f"{kind}_density_nm2"), 0.0)
        for name in ("rotated_patch_radius_A", "rotated_patch_angle_deg", "dislocation_separation_A",
                     "hole_radius_A", "ripple_rms_A", "ripple_wavelength_A"):
            check_range(name, getattr(self, name), 0.0)
        check_range("n_domains", self.n_domains, 2)
        check_range("ring_reconstruction_rotations", self.ring_reconstruction_rotations, 1)
        if not 0 <= self.min_misorientation_deg < 30:
            raise ValueError("min_misorientation_deg must be in [0, 30)")
        if not 0 <= self.max_strain <= 0.1:
            raise ValueError("max_strain must be in [0, 0.1]")
        if not 1.0 <= self.min_distance_A < self.bond_length_A:
            raise ValueError("min_distance_A must be in [1.0, bond_length_A)")
        if not self.substitution_elements or not self.adatom_elements:
            raise ValueError("substitution_elements and adatom_elements must not be empty")


# --------------------------------------------------------------------------------------
# Lattice and global clean-up
# --------------------------------------------------------------------------------------
def honeycomb(
    lo: np.ndarray, hi: np.ndarray, angle_deg: float, bond_A: float, offset: np.ndarray
) -> np.ndarray:
    """Honeycomb sites inside the rectangle ``[lo, hi]``.

    Parameters
    ----------
    lo, hi : ndarray, shape (2,)
        Corners of the rectangle in Å.
    angle_deg : float
        Rotation of the lattice in degrees (0: a lattice vector along x).
    bond_A : float
        Nearest-neighbour distance in Å.
    offset : ndarray, shape (2,)
        Position of one lattice site in Å.

    Returns
    -------
    ndarray, shape (n, 2)
    """
    a = bond_A * np.sqrt(3.0)
    cell = rotation_2d(angle_deg) @ np.array([[a, a / 2], [0.0, a * np.sqrt(3) / 2]])  # columns a1, a2
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]]]) - offset
    frac = np.linalg.solve(cell, corners.T)
    i0, j0 = np.floor(frac.min(axis=1)).astype(int) - 1
    i1, j1 = np.ceil(frac.max(axis=1)).astype(int) + 1
    ij = np.stack(np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij"), -1).reshape(-1, 2)
    base = ij @ cell.T + offset
    second = cell @ np.array([1 / 3, 1 / 3])
    pos = np.concatenate([base, base + second])
    inside = np.all((pos >= lo) & (pos <= hi), axis=1)
    return pos[inside]


def coordination(pos: np.ndarray, cutoff: float = _BOND_CUTOFF) -> np.ndarray:
    """Number of neighbours of each atom within ``cutoff`` (Å), in the plane of ``pos``."""
    pairs = cKDTree(pos).query_pairs(cutoff, output_type="ndarray")
    return np.bincount(pairs.ravel(), minlength=len(pos))


def merge_close(pos: np.ndarray, min_distance: float) -> np.ndarray:
    """Drop atoms until no two are closer than ``min_distance`` (Å).

    Atoms are dropped in order of how many too-close partners they have (most
    first), so a crowded spot loses its extra atoms, not its lattice.
    """
    for _ in range(20):
        pairs = cKDTree(pos).query_pairs(min_distance, output_type="ndarray")
        if len(pairs) == 0:
            break
        crowd = np.bincount(pairs.ravel(), minlength=len(pos))
        drop = np.zeros(len(pos), dtype=bool)
        worst = np.where(crowd[pairs[:, 0]] >= crowd[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
        # drop the more crowded atom of each pair, unless its partner is already dropped
        for (i, j), w in zip(pairs, worst):  # loop over the few close pairs only
            if not (drop[i] or drop[j]):
                drop[w] = True
        pos = pos[~drop]
    return pos


def prune_dangling(pos: np.ndarray, min_neighbours: int = 2) -> np.ndarray:
    """Repeatedly remove atoms with fewer than ``min_neighbours`` bonded neighbours."""
    for _ in range(50):
        keep = coordination(pos) >= min_neighbours
        if keep.all():
            break
        pos = pos[keep]
    return pos


def break_small_rings(pos: np.ndarray, max_removed: int = 50) -> np.ndarray:
    """Remove atoms, one at a time, until no 3- or 4-membered ring is left.

    The atom removed is the one in most small rings (3-rings: bonded pairs with a
    common neighbour; 4-rings: non-bonded pairs with two common neighbours).
    """
    for _ in range(max_removed):
        pairs = cKDTree(pos).query_pairs(_BOND_CUTOFF, output_type="ndarray")
        n = len(pos)
        a = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)).tocsr()
        a = a + a.T
        a2 = (a @ a).tocoo()
        off = a2.row != a2.col
        row, col, common = a2.row[off], a2.col[off], a2.data[off]
        bonded = np.asarray(a[row, col]).ravel() > 0
        small = (bonded & (common >= 1)) | (~bonded & (common >= 2))
        if not small.any():
            break
        score = np.bincount(row[small], minlength=n)
        pos = np.delete(pos, int(np.argmax(score)), axis=0)
    return pos


def clean_up(pos: np.ndarray, min_distance: float) -> np.ndarray:
    """Merge too-close atoms, break 3- and 4-membered rings, then drop atoms left with fewer than two neighbours."""
    return prune_dangling(break_small_rings(merge_close(pos, min_distance)))


# --------------------------------------------------------------------------------------
# Extended disorder: domains, dislocations, rotated patches, holes
# --------------------------------------------------------------------------------------
def _domains(
    rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, box: np.ndarray, n: int, cfg: GrapheneConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sheet of ``n`` rotated domains (Voronoi cells of random seeds in the box).

    Returns positions, the domain angles (degrees) and the seeds (Å).
    """
    base = rng.uniform(0.0, 60.0)
    mis = cfg.min_misorientation_deg
    angles = np.array([base] + [base + rng.uniform(mis, 60.0 - mis) for _ in range(n - 1)]) % 60.0
    seeds = rng.uniform(0.0, 1.0, (n, 2)) * box
    parts = []
    a = cfg.bond_length_A * np.sqrt(3)
    for k in range(n):
        pos = honeycomb(lo, hi, angles[k], cfg.bond_length_A, rng.uniform(0.0, a, 2))
        for other in range(n):
            if other != k:  # keep the Voronoi cell, widened by the overlap beyond each bisector
                normal = (seeds[other] - seeds[k]) / np.linalg.norm(seeds[other] - seeds[k])
                pos = pos[(pos - 0.5 * (seeds[k] + seeds[other])) @ normal < _GB_OVERLAP]
        parts.append(pos)
    pos = np.concatenate(parts)
    return pos, angles, seeds


def _local_angle(p: np.ndarray, angles: np.ndarray, seeds: np.ndarray) -> float:
    """Lattice angle (degrees) of the domain that contains point ``p``."""
    return float(angles[np.argmin(np.linalg.norm(seeds - p, axis=1))])


def edge_dislocation_displacement(pos: np.ndarray, core: np.ndarray, burgers: np.ndarray, nu: float = 0.17,
                                  core_radius: float = 0.5) -> np.ndarray:
    """Isotropic-elasticity displacement field of an edge dislocation (Volterra), in Å.

    Parameters
    ----------
    pos : ndarray, shape (n, 2)
        Positions in Å.
    core : ndarray, shape (2,)
        Core position in Å.
    burgers : ndarray, shape (2,)
        Burgers vector in Å (use a lattice vector: the cut along ``-burgers`` then
        maps the lattice onto itself).
    nu : float
        Poisson ratio (graphene: ~0.17).
    core_radius : float
        Regularisation radius in Å.
    """
    b = np.linalg.norm(burgers)
    e = burgers / b
    n = np.array([-e[1], e[0]])
    d = pos - core
    x, y = d @ e, d @ n
    r2 = x * x + y * y + core_radius**2
    ux = b / (2 * np.pi) * (np.arctan2(y, x) + x * y / (2 * (1 - nu) * r2))
    uy = -b / (2 * np.pi) * ((1 - 2 * nu) / (4 * (1 - nu)) * np.log(r2) + (x * x - y * y) / (4 * (1 - nu) * r2))
    return ux[:, None] * e + uy[:, None] * n


def _dislocation_dipole(rng, pos, box, angles, seeds, cfg) -> tuple[np.ndarray, list[np.ndarray]]:
    """Displace all atoms by the field of a dislocation dipole inside the box; returns the cores too."""
    centre = rng.uniform(0.2, 0.8, 2) * box
    theta = _local_angle(centre, angles, seeds) + 60.0 * rng.integers(6)
    burgers = cfg.bond_length_A * np.sqrt(3) * np.array([np.cos(np.deg2rad(theta)), np.sin(np.deg2rad(theta))])
    e = burgers / np.linalg.norm(burgers)
    half = 0.5 * uniform(rng, cfg.dislocation_separation_A) * (rotation_2d(rng.uniform(-30, 30)) @ e)
    u = edge_dislocation_displacement(pos, centre - half, burgers) - edge_dislocation_displacement(
        pos, centre + half, burgers
    )
    return pos + u, [centre - half, centre + half]


def _rotated_patch(rng, pos, box, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a disc of atoms about its centre by a random angle."""
    centre = rng.uniform(0.0, 1.0, 2) * box
    radius = uniform(rng, cfg.rotated_patch_radius_A)
    angle = uniform(rng, cfg.rotated_patch_angle_deg) * rng.choice([-1.0, 1.0])
    inside = np.linalg.norm(pos - centre, axis=1) < radius
    pos = pos.copy()
    pos[inside] = (pos[inside] - centre) @ rotation_2d(angle).T + centre
    return pos, centre


def _hole(rng, pos, box, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Remove the atoms inside a random blob (the caller prunes the dangling ones)."""
    centre = rng.uniform(0.0, 1.0, 2) * box
    r0 = uniform(rng, cfg.hole_radius_A)
    k = np.arange(2, 5)
    amp = rng.uniform(0.0, 0.15, 3)
    phase = rng.uniform(0.0, 2 * np.pi, 3)
    d = pos - centre
    phi = np.arctan2(d[:, 1], d[:, 0])
    radius = r0 * (1.0 + (amp[None] * np.cos(k[None] * phi[:, None] + phase[None])).sum(axis=1))
    return pos[np.linalg.norm(d, axis=1) >= radius], centre


# --------------------------------------------------------------------------------------
# Local topological defects (re-bond, then relax a small patch)
# --------------------------------------------------------------------------------------
_R_LOCAL = 6.0  # Å, atoms gathered around a local defect
_R_FREE = 4.2  # Å, atoms that may move during the local relaxation
_EXCLUSION = 10.5  # Å, smallest distance between the centres of two local defects


class _Patch:
    """Atoms around a local defect: positions, bonds and which atoms stay."""

    def __init__(self, idx: np.ndarray, pos: np.ndarray, centre: np.ndarray):
        self.idx = idx
        self.pos = pos.copy()
        self.orig = pos.copy()
        d = np.linalg.norm(pos[:, None] - pos[None], axis=2)
        self.adj = (d > 0.5) & (d < _BOND_CUTOFF)
        self.keep = np.ones(len(idx), dtype=bool)
        self.free = np.linalg.norm(pos - centre, axis=1) < _R_FREE

    def neighbours(self, i: int) -> np.ndarray:
        return np.flatnonzero(self.adj[i] & self.keep)

    def remove(self, i: int) -> None:
        self.keep[i] = False
        self.adj[i, :] = False
        self.adj[:, i] = False

    def bond(self, i: int, j: int, on: bool = True) -> None:
        self.adj[i, j] = self.adj[j, i] = on


def _stone_wales(patch: _Patch, p: int, q: int, sign: float = 1.0) -> bool:
    """Rotate bond p-q by 90° about its midpoint and re-bond to the nearest old neighbours."""
    P = [k for k in patch.neighbours(p) if k != q]
    Q = [k for k in patch.neighbours(q) if k != p]
    cands = list(dict.fromkeys(P + Q))
    if len(P) != 2 or len(Q) != 2 or len(cands) != 4:
        return False
    mid = 0.5 * (patch.pos[p] + patch.pos[q])
    rot = rotation_2d(90.0 * sign)
    patch.pos[[p, q]] = (patch.pos[[p, q]] - mid) @ rot.T + mid
    for k in P:
        patch.bond(p, k, False)
    for k in Q:
        patch.bond(q, k, False)
    best, best_cost = None, np.inf
    for pair in combinations(range(4), 2):
        rest = [c for c in range(4) if c not in pair]
        cost = sum(np.linalg.norm(patch.pos[p] - patch.pos[cands[c]]) for c in pair) + sum(
            np.linalg.norm(patch.pos[q] - patch.pos[cands[c]]) for c in rest
        )
        if cost < best_cost:
            best, best_cost = (pair, rest), cost
    for c in best[0]:
        patch.bond(p, cands[c])
    for c in best[1]:
        patch.bond(q, cands[c])
    return True


def _divacancy_585(patch: _Patch, i: int, j: int) -> tuple[list[int], list[int]] | None:
    """Remove bonded atoms i, j and bond their neighbours pairwise (two pentagons, one octagon)."""
    a = [k for k in patch.neighbours(i) if k != j]
    b = [k for k in patch.neighbours(j) if k != i]
    if len(a) != 2 or len(b) != 2:
        return None
    patch.remove(i)
    patch.remove(j)
    patch.bond(a[0], a[1])
    patch.bond(b[0], b[1])
    return a, b


def _divacancy_555777(patch: _Patch, i: int, j: int, rng: np.random.Generator) -> bool:
    """A 5-8-5 divacancy followed by a Stone-Wales rotation of an octagon bond opposite i-j."""
    ab = _divacancy_585(patch, i, j)
    if ab is None:
        return False
    a, b = ab
    a1 = a[int(rng.integers(2))]
    b1 = b[int(np.argmin([np.linalg.norm(patch.pos[a1] - patch.pos[k]) for k in b]))]
    for c in patch.neighbours(a1):
        for d in patch.neighbours(b1):
            if c not in a and d not in b and patch.adj[c, d]:
                return _stone_wales(patch, int(c), int(d))
    return False


def _ring_reconstruction(patch: _Patch, centre_local: int, n_rot: int, rng: np.random.Generator) -> bool:
    """A chain of ``n_rot`` Stone-Wales rotations of random bonds near the centre."""
    done = 0
    centre = patch.pos[centre_local].copy()
    for _ in range(4 * n_rot):
        if done == n_rot:
            break
        near = np.flatnonzero(patch.keep & (np.linalg.norm(patch.pos - centre, axis=1) < 2.6))
        pairs = [(p, q) for p in near for q in patch.neighbours(p) if q > p and q in near]
        if not pairs:
            break
        p, q = pairs[int(rng.integers(len(pairs)))]
        if _stone_wales(patch, int(p), int(q), sign=float(rng.choice([-1.0, 1.0]))):
            done += 1
    return done > 0


def relax_springs(
    pos: np.ndarray, free: np.ndarray, bonds: np.ndarray, bond_A: float, n_steps: int = 300
) -> np.ndarray:
    """Relax a bonded network with springs; only the ``free`` atoms move.

    Energy: bonds ``(r - b)²``, second neighbours (two bonds sharing an atom)
    ``0.3 (r - sqrt(3) b)²`` (which favours 120° angles) and, for all other pairs
    closer than ``1.6 b``, a one-sided repulsion ``(r - 1.6 b)²``.

    Parameters
    ----------
    pos : ndarray, shape (m, 2)
        Positions in Å.
    free : ndarray of bool, shape (m,)
        Atoms that may move.
    bonds : ndarray of int, shape (nb, 2)
        Bonded pairs.
    bond_A : float
        Bond length ``b`` in Å.
    n_steps : int
        Most FIRE steps.

    Returns
    -------
    ndarray, shape (m, 2)
        Relaxed positions.
    """
    m = len(pos)
    if not free.any() or len(bonds) == 0:
        return pos
    b = np.sort(np.asarray(bonds), axis=1)
    a = coo_matrix((np.ones(len(b)), (b[:, 0], b[:, 1])), shape=(m, m)).tocsr()
    a = ((a + a.T) > 0).astype(np.int32)
    a2 = (a @ a).tocoo()
    sec = np.stack([a2.row, a2.col], axis=1)
    sec = sec[sec[:, 0] < sec[:, 1]]
    bond_keys = b[:, 0] * m + b[:, 1]
    sec = sec[~np.isin(sec[:, 0] * m + sec[:, 1], bond_keys)]
    near = cKDTree(pos).query_pairs(1.6 * bond_A, output_type="ndarray")
    near = np.sort(near, axis=1) if len(near) else np.zeros((0, 2), dtype=int)
    taken = np.concatenate([bond_keys, sec[:, 0] * m + sec[:, 1]])
    rep = near[~np.isin(near[:, 0] * m + near[:, 1], taken)]
    pairs = np.concatenate([b, sec, rep])
    target = np.concatenate([np.full(len(b), bond_A), np.full(len(sec), bond_A * np.sqrt(3)),
                             np.full(len(rep), 1.6 * bond_A)])
    k = np.concatenate([np.ones(len(b)), np.full(len(sec), 0.3), np.ones(len(rep))])
    one_sided = np.concatenate([np.zeros(len(b) + len(sec), bool), np.ones(len(rep), bool)])
    moving = free[pairs[:, 0]] | free[pairs[:, 1]]
    I, J = pairs[moving, 0], pairs[moving, 1]
    target, k, one_sided = target[moving], k[moving], one_sided[moving]
    pos0 = np.array(pos, dtype=float)

    def energy(x: np.ndarray) -> tuple[float, np.ndarray]:
        p = pos0.copy()
        p[free] = x.reshape(-1, 2)
        d = p[J] - p[I]
        r = np.sqrt(np.einsum("ij,ij->i", d, d))
        stretch = r - target
        stretch = np.where(one_sided & (stretch > 0), 0.0, stretch)
        g = (2 * k * stretch / np.maximum(r, 1e-9))[:, None] * d
        grad = np.stack([np.bincount(J, g[:, c], m) - np.bincount(I, g[:, c], m) for c in range(2)], axis=1)
        return float(np.sum(k * stretch**2)), grad[free].ravel()

    out = pos0.copy()
    out[free] = fire(energy, pos0[free].ravel(), n_steps=n_steps).reshape(-1, 2)
    return out


def _relax(patch: _Patch, bond: float) -> None:
    """Relax the free atoms of a local patch with :func:`relax_springs` (removed atoms are ignored)."""
    keep = np.flatnonzero(patch.keep)
    adj = patch.adj[np.ix_(keep, keep)]
    bonds = np.argwhere(np.triu(adj, 1))
    patch.pos[keep] = relax_springs(patch.pos[keep], patch.free[keep], bonds, bond)


def mutual_nearest_bonds(pos: np.ndarray, cutoff: float = 2.0, k: int = 3) -> np.ndarray:
    """Bonds of a distorted sheet: pairs within ``cutoff`` (Å) that are among each other's ``k`` nearest."""
    n = len(pos)
    d, j = cKDTree(pos).query(pos, k=k + 1, distance_upper_bound=cutoff)
    d, j = d[:, 1:], j[:, 1:]
    ok = np.isfinite(d)
    i = np.repeat(np.arange(n), k)[ok.ravel()]
    j = j.ravel()[ok.ravel()]
    mutual = np.isin(i * n + j, j * n + i)
    sel = mutual & (i < j)
    return np.stack([i[sel], j[sel]], axis=1)


def irregular_atoms(pos: np.ndarray, bond_A: float, tolerance_A: float = 0.12) -> np.ndarray:
    """Atoms that are not three-fold coordinated with bonds within ``tolerance_A`` of ``bond_A``."""
    pairs = cKDTree(pos).query_pairs(_BOND_CUTOFF, output_type="ndarray")
    irregular = np.bincount(pairs.ravel(), minlength=len(pos)) != 3
    r = np.linalg.norm(pos[pairs[:, 0]] - pos[pairs[:, 1]], axis=1)
    irregular[pairs[np.abs(r - bond_A) > tolerance_A].ravel()] = True
    return irregular


def fill_gaps(pos: np.ndarray, box: np.ndarray, bond_A: float, rounds: int = 2) -> np.ndarray:
    """Add atoms where under-coordinated atoms miss a bond, so broken regions reconnect.

    Each round, every atom inside the box (give or take 2 Å) with two neighbours
    proposes a third at one bond length opposite its two bonds, and one with a
    single neighbour proposes two at ±120°. Proposals within 1 Å of each other
    become one atom (a ring closes there); proposals closer than ``0.85 * bond_A``
    to an atom are dropped.
    """
    for _ in range(rounds):
        pairs = cKDTree(pos).query_pairs(_BOND_CUTOFF, output_type="ndarray")
        n = len(pos)
        coord = np.bincount(pairs.ravel(), minlength=n)
        inside = np.all((pos > -2.0) & (pos < box + 2.0), axis=1)
        if not np.any(inside & (coord < 3) & (coord > 0)):
            break
        vec = pos[pairs[:, 1]] - pos[pairs[:, 0]]
        unit = vec / np.linalg.norm(vec, axis=1, keepdims=True)
        usum = np.zeros((n, 2))
        np.add.at(usum, pairs[:, 0], unit)
        np.add.at(usum, pairs[:, 1], -unit)
        two = np.flatnonzero(inside & (coord == 2))
        d2 = -usum[two]
        d2 /= np.maximum(np.linalg.norm(d2, axis=1, keepdims=True), 1e-9)
        one = np.flatnonzero(inside & (coord == 1))
        d1 = np.concatenate([usum[one] @ rotation_2d(120.0).T, usum[one] @ rotation_2d(-120.0).T])
        cand = np.concatenate([pos[two] + bond_A * d2, np.tile(pos[one], (2, 1)) + bond_A * d1])
        if len(cand) == 0:
            break
        dist, _ = cKDTree(pos).query(cand, k=1)
        cand = cand[dist >= 0.85 * bond_A]
        if len(cand) > 1:
            close = cKDTree(cand).query_pairs(1.0, output_type="ndarray")
            graph = coo_matrix((np.ones(len(close)), (close[:, 0], close[:, 1])), shape=(len(cand),) * 2)
            n_comp, comp = connected_components(graph, directed=False)
            cand = np.stack([np.bincount(comp, cand[:, c], n_comp) for c in range(2)], axis=1) / np.bincount(
                comp, minlength=n_comp
            )[:, None]
            cand = cand[close_pair_mask(cand, 0.85 * bond_A)]
        if len(cand) == 0:
            break
        pos = np.concatenate([pos, cand])
    return pos


def heal(pos: np.ndarray, box: np.ndarray, cfg: GrapheneConfig, radius_A: float = 3.0) -> np.ndarray:
    """Reconnect and relax the disordered regions of a sheet (grain boundaries, patch rims, dislocation cores).

    Too-close atoms are dropped (:func:`merge_close`), gaps are filled
    (:func:`fill_gaps`), then atoms within ``radius_A`` of an irregular atom
    (inside the box, give or take 2 Å) are relaxed with bonds between mutual three
    nearest neighbours within ``_HEAL_CUTOFF``, so stretched bonds pull back
    instead of breaking; finally dangling atoms are pruned.
    """
    pos = merge_close(pos, cfg.min_distance_A)
    pos = fill_gaps(pos, box, cfg.bond_length_A)
    irregular = irregular_atoms(pos, cfg.bond_length_A)
    irregular &= np.all((pos > -2.0) & (pos < box + 2.0), axis=1)
    if irregular.any():
        dist, _ = cKDTree(pos[irregular]).query(pos, k=1)
        free = (dist <= radius_A) & np.all((pos > -3.0) & (pos < box + 3.0), axis=1)
        idx = np.flatnonzero(dist <= radius_A + 2.5)
        sub = pos[idx]
        pos = pos.copy()
        pos[idx] = relax_springs(sub, free[idx], mutual_nearest_bonds(sub, _HEAL_CUTOFF), cfg.bond_length_A,
                                 n_steps=200)
    return clean_up(pos, cfg.min_distance_A)


def fire(energy, x: np.ndarray, n_steps: int = 300, dt: float = 0.1, dt_max: float = 0.4, f_tol: float = 1e-3):
    """Minimise ``energy(x) -> (e, grad)`` with FIRE (Bitzek et al. 2006), unit masses.

    Small and dependency-free: scipy's L-BFGS-B spends most of its time in
    multi-threaded BLAS calls on problems this small.
    """
    v = np.zeros_like(x)
    alpha, n_pos = 0.1, 0
    for _ in range(n_steps):
        _, g = energy(x)
        f = -g
        f_norm = np.sqrt(f @ f)
        if f_norm < f_tol:
            break
        if f @ v > 0:
            v = (1 - alpha) * v + alpha * np.sqrt(v @ v) * f / f_norm
            n_pos += 1
            if n_pos > 5:
                dt, alpha = min(dt * 1.1, dt_max), alpha * 0.99
        else:
            v[:] = 0.0
            dt, alpha, n_pos = dt * 0.5, 0.1, 0
        v = v + dt * f
        x = x + dt * v
    return x


def _small_rings(patch: _Patch) -> bool:
    """Whether the bonds near the moved atoms close a 3- or 4-membered ring."""
    keep = np.flatnonzero(patch.keep)
    free = patch.free[keep]
    adj = patch.adj[np.ix_(keep, keep)]
    a = adj.astype(int)
    common = a @ a  # common neighbours: >= 2 means a 4-ring, >= 1 on a bond a 3-ring
    np.fill_diagonal(common, 0)
    near_free = free[:, None] | free[None, :]
    return bool((common[near_free] >= 2).any() or (common[adj & near_free] >= 1).any())


def _patch_ok(patch: _Patch, min_distance: float) -> bool:
    """Around the moved atoms: no 3- or 4-rings, bonds 1.2-1.75 Å, non-bonded > 1.85 Å, >= 2 bonds each."""
    keep = np.flatnonzero(patch.keep)
    free = patch.free[keep]
    p = patch.pos[keep]
    adj = patch.adj[np.ix_(keep, keep)]
    d = np.linalg.norm(p[:, None] - p[None], axis=2)
    np.fill_diagonal(d, np.inf)
    near_free = free[:, None] | free[None, :]
    bonds = d[adj & near_free]
    nonbonded = d[~adj & near_free]
    if _small_rings(patch):
        return False
    return bool(
        (bonds.size == 0 or (bonds.min() > 1.2 and bonds.max() < _BOND_CUTOFF))
        and nonbonded.min() > max(min_distance, 1.85)
        and (adj[free].sum(axis=1) >= 2).all()
    )


def _make_local(kind: str, rng, pos, alive, tree, centre_atom: int, cfg: GrapheneConfig) -> bool:
    """Try to make one local defect around ``centre_atom``; commit it to ``pos``/``alive`` if sane."""
    idx = np.array(tree.query_ball_point(pos[centre_atom], _R_LOCAL))
    idx = idx[alive[idx]]
    patch = _Patch(idx, pos[idx], pos[centre_atom])
    c = int(np.flatnonzero(idx == centre_atom)[0])
    nb = patch.neighbours(c)
    if len(nb) != 3:
        return False
    partner = int(nb[rng.integers(3)])
    if kind == "vacancy":
        patch.remove(c)
    elif kind == "divacancy":
        patch.remove(c)
        patch.remove(partner)
    elif kind == "stone_wales":
        if not _stone_wales(patch, c, partner):
            return False
    elif kind == "divacancy_585":
        if _divacancy_585(patch, c, partner) is None:
            return False
    elif kind == "divacancy_555777":
        if not _divacancy_555777(patch, c, partner, rng):
            return False
    elif kind == "ring_reconstruction":
        lo, hi = cfg.ring_reconstruction_rotations
        if not _ring_reconstruction(patch, c, int(rng.integers(lo, hi + 1)), rng):
            return False
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(kind)
    if kind not in ("vacancy", "divacancy"):
        if _small_rings(patch):
            return False
        _relax(patch, cfg.bond_length_A)
        if not _patch_ok(patch, cfg.min_distance_A):
            return False
    pos[idx] = patch.pos
    alive[idx[~patch.keep]] = False
    return True


def _regular_candidates(pos: np.ndarray, box: np.ndarray, bond: float) -> np.ndarray:
    """Atoms inside the box whose surroundings (5 Å) are perfect three-fold coordinated lattice."""
    irregular = irregular_atoms(pos, bond)
    inside = np.all((pos >= 0) & (pos <= box), axis=1)
    if not irregular.any():
        return inside
    dist, _ = cKDTree(pos[irregular]).query(pos, k=1)
    return inside & ~irregular & (dist > 5.0)


def _local_defects(rng, pos, box, counts: dict[str, int], cfg) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Place the local defects one by one, at least ``_EXCLUSION`` apart; returns (kind, centre) pairs."""
    kinds = [k for k in _LOCAL_KINDS for _ in range(counts.get(k, 0))]
    made: list[tuple[str, np.ndarray]] = []
    if not kinds:
        return pos, made
    rng.shuffle(kinds)
    cand = _regular_candidates(pos, box, cfg.bond_length_A)
    tree = cKDTree(pos)
    alive = np.ones(len(pos), dtype=bool)
    for kind in kinds:
        for _attempt in range(6):
            choices = np.flatnonzero(cand)
            if len(choices) == 0:
                break
            atom = int(choices[rng.integers(len(choices))])
            if _make_local(kind, rng, pos, alive, tree, atom, cfg):
                made.append((kind, pos[atom].copy()))
                cand &= np.linalg.norm(pos - pos[atom], axis=1) > _EXCLUSION
                break
            cand[atom] = False
    return pos[alive], made


# --------------------------------------------------------------------------------------
# Substitutions, adatoms, ripples
# --------------------------------------------------------------------------------------
def _substitute(rng, pos, box, n: int, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Symbols (C or a substituent) and z offsets (Si puckers out of plane)."""
    symbols = np.full(len(pos), "C", dtype=object)
    dz = np.zeros(len(pos))
    coord = coordination(pos)
    inside = np.all((pos >= 0) & (pos < box), axis=1)
    choices = np.flatnonzero((coord == 3) & inside)
    if n == 0 or len(choices) == 0:
        return symbols, dz
    picked = rng.choice(choices, size=min(n, len(choices)), replace=False)
    elements = rng.choice(np.array(cfg.substitution_elements, dtype=object), size=len(picked))
    symbols[picked] = elements
    si = picked[elements == "Si"]
    dz[si] = cfg.si_pucker_A * rng.choice([-1.0, 1.0], size=len(si))
    return symbols, dz


def _adatom_sites(rng, pos, box, n: int) -> np.ndarray:
    """Up to ``n`` bridge sites (bond centres) inside the box, at least 3 Å apart, in Å."""
    if n == 0:
        return np.zeros((0, 2))
    pairs = cKDTree(pos).query_pairs(_BOND_CUTOFF, output_type="ndarray")
    mids = 0.5 * (pos[pairs[:, 0]] + pos[pairs[:, 1]])
    mids = mids[np.all((mids >= 0) & (mids < box), axis=1)]
    return spaced_choice(rng, mids, n, 3.0)


def ripple_field(rng: np.random.Generator, rms_A: float, wavelength_A: tuple[float, float], n_waves: int = 4):
    """A smooth random height field ``z(x, y)`` (sum of plane waves) with RMS ``rms_A`` (Å).

    Returns a function mapping positions ``(n, 2)`` in Å to heights ``(n,)`` in Å.
    """
    lam = rng.uniform(wavelength_A[0], wavelength_A[1], n_waves)
    theta = rng.uniform(0.0, 2 * np.pi, n_waves)
    q = (2 * np.pi / lam)[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    phase = rng.uniform(0.0, 2 * np.pi, n_waves)
    amp = rng.normal(size=n_waves)
    norm = rms_A / max(np.sqrt(0.5 * np.sum(amp**2)), 1e-12)

    def z(p: np.ndarray) -> np.ndarray:
        return norm * (np.cos(p @ q.T + phase) * amp).sum(axis=1)

    return z


# --------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------
def _draw_counts(rng: np.random.Generator, area_nm2: float, cfg: GrapheneConfig) -> dict[str, int]:
    """Number of defects of each kind (all zero for a clean sheet)."""
    clean = rng.random() < cfg.p_clean
    counts = {}
    for kind in DEFECT_KINDS:
        on = rng.random() < cfg.p_each_kind
        density = uniform(rng, getattr(cfg, f"{kind}_density_nm2"))
        counts[kind] = 0 if (clean or not on) else int(rng.poisson(density * area_nm2))
    counts["grain_boundary"] = int(not clean and rng.random() < cfg.p_grain_boundary)
    return counts


def build_graphene(
    rng: np.random.Generator, box_A: tuple[float, float], config: GrapheneConfig | None = None
) -> Structure:
    """A random graphene sheet filling the box, every atom a labelled site.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness (same seed, same structure).
    box_A : (float, float)
        Lateral box ``(Lx, Ly)`` in Å.
    config : GrapheneConfig, optional
        Defect densities and ranges; the defaults when omitted.

    Returns
    -------
    Structure
        Atoms in an orthogonal cell ``(Lx, Ly, Lz)`` (``Lz`` = sheet thickness incl.
        ripples and adatoms + ``2 * vacuum_A``), class ``"C"`` for every atom
        (substituents and adatoms included, height 1), and ``info`` with the drawn
        counts, domain angles, strain and ripple.
    """
    cfg = config or GrapheneConfig()
    box = np.array(box_A, dtype=float)
    if box.shape != (2,) or np.any(box <= 5.0):
        raise ValueError(f"box_A must be (Lx, Ly) with both > 5 Å, got {box_A}")
    area_nm2 = float(box.prod() / 100.0)
    counts = _draw_counts(rng, area_nm2, cfg)
    lo = np.full(2, -_GENERATION_MARGIN)
    hi = box + _GENERATION_MARGIN

    n_dom = int(rng.integers(cfg.n_domains[0], cfg.n_domains[1] + 1)) if counts["grain_boundary"] else 1
    pos, angles, seeds = _domains(rng, lo, hi, box, n_dom, cfg)

    defects: list[tuple[str, np.ndarray]] = []
    for _ in range(counts["dislocation_dipole"]):
        pos, cores = _dislocation_dipole(rng, pos, box, angles, seeds, cfg)
        defects += [("dislocation", c) for c in cores]
    for _ in range(counts["rotated_patch"]):
        pos, c = _rotated_patch(rng, pos, box, cfg)
        defects.append(("rotated_patch", c))
    if n_dom > 1 or defects:
        pos = heal(pos, box, cfg)

    pos, local = _local_defects(rng, pos, box, counts, cfg)
    defects += local

    for _ in range(counts["hole"]):
        pos, c = _hole(rng, pos, box, cfg)
        defects.append(("hole", c))
    if counts["hole"]:
        pos = prune_dangling(pos)

    symbols, dz = _substitute(rng, pos, box, counts["substitution"], cfg)
    adatoms = _adatom_sites(rng, pos, box, counts["adatom"])
    ad_symbols = rng.choice(np.array(cfg.adatom_elements, dtype=object), size=len(adatoms))

    # strain about the box centre, then ripples
    eps = random_strain(rng, cfg.max_strain)
    centre = 0.5 * box
    xy = np.concatenate([pos, adatoms])
    xy = (xy - centre) @ (np.eye(2) + eps).T + centre
    defect_xy = (np.array([c for _, c in defects]).reshape(-1, 2) - centre) @ (np.eye(2) + eps).T + centre
    rms = uniform(rng, cfg.ripple_rms_A)
    z = ripple_field(rng, rms, cfg.ripple_wavelength_A)(xy)
    z += np.concatenate([dz, np.full(len(adatoms), cfg.adatom_height_A)])
    symbols = np.concatenate([symbols, ad_symbols]).astype(str)
    is_adatom = np.concatenate([np.zeros(len(pos), bool), np.ones(len(adatoms), bool)])

    # crop to the box, drop atoms that meet across the periodic seam
    inside = np.all((xy >= 0) & (xy < box), axis=1)
    keep = np.flatnonzero(inside)
    keep = keep[close_pair_mask(np.column_stack([xy[keep], z[keep]]), cfg.min_distance_A, periodic_box=tuple(box))]
    xy, z, symbols, is_adatom = xy[keep], z[keep], symbols[keep], is_adatom[keep]

    z = z - z.min() + cfg.vacuum_A
    lz = float(z.max() + cfg.vacuum_A)
    atoms = Atoms(symbols.tolist(), positions=np.column_stack([xy, z]), cell=[box[0], box[1], lz], pbc=True)
    n = len(atoms)
    sites = Sites(xy.copy(), np.ones(n, dtype=np.int64), np.ones(n, dtype=np.int64))
    info = {
        "system": "graphene",
        "n_atoms": n,
        "n_domains": n_dom,
        "domain_angles_deg": [float(a) for a in angles],
        "rotation_deg": float(angles[0]),
        "strain": [[float(v) for v in row] for row in eps],
        "ripple_rms_A": float(rms),
        "clean": not any(counts[k] for k in DEFECT_KINDS) and n_dom == 1,
        "requested": {k: int(counts[k]) for k in DEFECT_KINDS},
        "defects": [
            {"kind": kind, "position_A": [float(v) for v in c]} for (kind, _), c in zip(defects, defect_xy)
        ],
        "counts": {
            **{k: sum(kind == k for kind, _ in local) for k in _LOCAL_KINDS},
            "dislocation_dipole": int(counts["dislocation_dipole"]),
            "rotated_patch": int(counts["rotated_patch"]),
            "hole": int(counts["hole"]),
            "substitution": {str(e): int(np.sum((symbols == e) & ~is_adatom)) for e in cfg.substitution_elements},
            "adatom": {str(e): int(np.sum((symbols == e) & is_adatom)) for e in cfg.adatom_elements},
        },
    }
    return Structure(atoms=atoms, sites=sites, class_names=CLASS_NAMES, info=info)
