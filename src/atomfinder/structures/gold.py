"""Au nanoparticles in zone-axis orientations, free or on a CeO2 support.

:func:`build_gold` draws one particle (1.5-6 nm) of one of these shapes, built
with :mod:`ase.cluster`:

- ``"wulff"``: a Wulff construction from {111}, {100}, {110} surface energies
  drawn around those of Au;
- ``"truncated_octahedron"``: :func:`ase.cluster.Octahedron` with a random cutoff
  (from a sharp octahedron to a cuboctahedron);
- ``"decahedron"``: :func:`ase.cluster.Decahedron` with random (100) facets and
  Marks re-entrances;
- ``"icosahedron"``: :func:`ase.cluster.Icosahedron`;
- ``"twinned"``: a truncated octahedron mirrored across a {111} atomic plane
  (a coherent Σ3 twin).

The particle is rotated so that a zone axis lies along the beam (``z``): [100],
[110] or [111] for single crystals, a <110> axis inside the twin plane for
twinned particles, the 5-fold or a 2-fold axis for decahedra and icosahedra. Its
surface is modified (random surface atoms removed, a few adatoms added on lattice
sites next to the surface), and it is mistilted by up to a few degrees. CeO2
support atoms are background and never labelled.

Which columns are labelled is chosen by ``GoldConfig.column_rule``:

- ``"density_peaks"`` (the gold recipe, :func:`atomfinder.datasets.generate.default_config`):
  the columns the image resolves
  (:func:`atomfinder.structures.columns.density_columns`). The Au atoms of the
  mistilted particle are projected along the beam, each blurred by a Gaussian of
  ``column_blur_A`` (the resolution scale); every peak of that density that
  stands at least ``column_min_dip`` above its saddles and ``column_min_peak_atoms``
  high is a column, holding the atoms of its watershed basin (its height), at
  the density-weighted centre of those atoms. Columns closer than about
  ``2 * column_blur_A`` merge into one peak: where twinned segments overlap
  along the beam (most of an icosahedron; a decahedron seen along a 2-fold axis,
  whose sub-columns lie 0.4-1 Å apart) the merged peak is one column holding all
  its atoms, not background; a lone adatom is a column of height 1.
- ``"separation"`` (the field's default, so that configs written before the field
  existed keep their labels: gold 0.1-0.3, their stores and model cards): atoms whose projections agree
  within ``column_tolerance_A`` in the exact zone axis form a column (its site
  the mean projected position of its atoms after the tilt, its height its number
  of atoms); two columns closer than ``min_column_separation_A`` are not
  labelled, nor is a column within twice that distance of such a crowded pair
  (:func:`resolved_columns`); a single atom (an adatom off the lattice) that
  close to a column is not labelled, and the column is. Their atoms stay in the
  potential and count as background, like the support. This left most of the
  visible columns of some particles unlabelled (all those of overlapping
  segments, and the ones next to them).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from ase import Atoms
from ase.cluster import Decahedron, Icosahedron, Octahedron
from ase.cluster.cubic import FaceCenteredCubic
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from atomfinder._config import ConfigMixin
from atomfinder.structures.base import Sites, Structure
from atomfinder.structures.columns import density_columns
from atomfinder.structures.support import (
    CEO2_ORIENTATIONS,
    ceria_slab,
    check_probability,
    check_range,
    rotation_about_axis,
    spaced_choice,
    uniform,
)

CLASS_NAMES = ("Au",)
SHAPES = ("wulff", "truncated_octahedron", "decahedron", "icosahedron", "twinned")
#: How columns are labelled (module docstring): the image's peaks, or the gold 0.1-0.3 rule.
COLUMN_RULES = ("density_peaks", "separation")
FCC_ZONES = {"100": (0, 0, 1), "110": (1, 1, 0), "111": (1, 1, 1)}
_NN_CUTOFF = 3.3  # Å, Au nearest neighbours (2.88 Å) but not second neighbours (4.08 Å)
_MIN_DIAMETER_A = 8.0


@dataclass(frozen=True)
class GoldConfig(ConfigMixin):
    """What :func:`build_gold` draws from.

    Attributes
    ----------
    lattice_constant_A : float
        Au lattice constant in Å.
    diameter_A : (float, float)
        Range of the particle's equivalent-sphere diameter in Å (the diameter of
        a sphere holding as many atoms at bulk density). A particle that does not
        fit the box is shrunk.
    shapes : tuple of str
        Shapes to draw from (see :data:`SHAPES`).
    shape_weights : tuple of float
        Relative probabilities of ``shapes``.
    zone_axes : tuple of str
        Zone axes for single-crystal fcc particles, from ``"100"``, ``"110"``, ``"111"``.
    max_mistilt_deg : float
        Largest mistilt away from the exact zone axis in degrees.
    surface_vacancy_fraction : (float, float)
        Range of the fraction of surface atoms removed.
    n_adatoms : (int, int)
        Range of the number of adatoms added on empty lattice sites at the surface.
    p_support : float
        Probability that the particle rests on a CeO2 support.
    support_orientations : tuple of str
        Ceria orientations ``"<zone axis>/<surface normal>"`` (keys of
        :data:`atomfinder.structures.support.CEO2_ORIENTATIONS`).
    support_height_fraction : (float, float)
        Range of the support's height as a fraction of the box height ``Ly``.
    support_min_height_A : float
        Smallest support height in Å (a particle shrinks to leave this room).
    support_extra_thickness_A : (float, float)
        Range of how much thicker (along the beam) the support is than the particle, in Å.
    support_gap_A : float
        Gap between the lowest Au atom and the highest support atom in Å.
    p_facet_down : float
        Probability that a low-index lattice direction of an fcc particle points
        straight down at the support (a flat facet on the support); otherwise the
        in-plane rotation is random.
    edge_margin_A : float
        Smallest vacuum between a particle and a lateral box edge in Å.
    column_rule : {"density_peaks", "separation"}
        How columns are labelled (module docstring): ``"density_peaks"``, the
        peaks of the blurred projected density, which the gold recipe selects
        (``default_config("gold").structure``); ``"separation"``, the rule of gold
        0.1-0.3, the default so that every structure config written before this
        field (configs/gold-0.1..0.3-simulation.toml, the configs recorded in their
        stores and model cards) keeps its labels. A recipe with its own
        ``[simulation.structure]`` table replaces the recipe's and must set
        ``column_rule = "density_peaks"`` itself.
    column_blur_A : float
        ``"density_peaks"``: the resolution scale, the standard deviation (Å) of the
        Gaussian each projected atom is blurred with. Two equal columns closer than
        about twice this merge into one. The default 0.45 Å keeps every column of
        the [100], [110], [111] and [112] projections (>= 1.44 Å apart) and merges
        the sub-columns of overlapping segments that lie 0.4-0.9 Å apart; on
        noise-free multislice images at Scherzer focus over the gold recipe's
        microscopes (200-300 kV, Cs -40..-10 µm, focal spread 10-60 Å) it balanced
        image peaks left unlabelled against labels without a peak best among
        0.4-0.7 Å (0.6 Å left a third of the peaks of 2-fold decahedra and
        icosahedra unlabelled).
    column_min_dip : float
        ``"density_peaks"``: smallest relative depth ``1 - saddle / peak`` (0-1) of
        the density between a peak and a higher one for the peak to be a column of
        its own; shallower peaks are shoulders of the higher one.
    column_min_peak_atoms : float
        ``"density_peaks"``: smallest peak of the blurred density for a column, in
        atoms (an isolated atom peaks at 1, so a lone adatom is a column; below 1).
    column_tolerance_A : float
        ``"separation"``: atoms whose projections (in the exact zone axis) agree
        within this (Å) form one column.
    min_column_separation_A : float
        ``"separation"``: columns closer than this (Å, in the exact zone axis) are
        not resolvable and not labelled (:func:`resolved_columns`, module
        docstring); 0 labels all. 1.2 Å keeps every column of the [100], [110],
        [111] and [112] projections (>= 1.44 Å) and drops the sub-resolution
        columns of off-axis segments (<= 0.91 Å).
    vacuum_A : float
        Vacuum above and below the structure along z in Å.
    """

    lattice_constant_A: float = 4.08
    diameter_A: tuple[float, float] = (15.0, 60.0)
    shapes: tuple[str, ...] = SHAPES
    shape_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 0.5, 1.0)
    zone_axes: tuple[str, ...] = ("100", "110", "111")
    max_mistilt_deg: float = 3.0
    surface_vacancy_fraction: tuple[float, float] = (0.0, 0.1)
    n_adatoms: tuple[int, int] = (0, 5)
    p_support: float = 0.5
    support_orientations: tuple[str, ...] = ("110/111", "110/001", "100/001")
    support_height_fraction: tuple[float, float] = (0.15, 0.35)
    support_min_height_A: float = 8.0
    support_extra_thickness_A: tuple[float, float] = (0.0, 20.0)
    support_gap_A: float = 2.5
    p_facet_down: float = 0.7
    edge_margin_A: float = 5.0
    column_rule: str = "separation"
    column_blur_A: float = 0.45
    column_min_dip: float = 0.05
    column_min_peak_atoms: float = 0.5
    column_tolerance_A: float = 0.3
    min_column_separation_A: float = 1.2
    vacuum_A: float = 3.0

    def __post_init__(self) -> None:
        check_range("diameter_A", self.diameter_A, _MIN_DIAMETER_A)
        check_range("surface_vacancy_fraction", self.surface_vacancy_fraction, 0.0, 0.9)
        check_range("n_adatoms", self.n_adatoms, 0)
        check_range("support_height_fraction", self.support_height_fraction, 0.0, 1.0)
        check_range("support_extra_thickness_A", self.support_extra_thickness_A, 0.0)
        for name in ("p_support", "p_facet_down"):
            check_probability(name, getattr(self, name))
        if not self.shapes or len(self.shapes) != len(self.shape_weights) or set(self.shapes) - set(SHAPES):
            raise ValueError(f"shapes must be a non-empty subset of {SHAPES} with one weight each")
        if min(self.shape_weights) < 0 or sum(self.shape_weights) <= 0:
            raise ValueError("shape_weights must be non-negative with a positive sum")
        if not self.zone_axes or set(self.zone_axes) - set(FCC_ZONES):
            raise ValueError(f"zone_axes must be a non-empty subset of {tuple(FCC_ZONES)}")
        if not self.support_orientations or set(self.support_orientations) - set(CEO2_ORIENTATIONS):
            raise ValueError(f"support_orientations must be a non-empty subset of {tuple(CEO2_ORIENTATIONS)}")
        if not 0 <= self.max_mistilt_deg <= 15:
            raise ValueError("max_mistilt_deg must be in [0, 15]")
        if self.column_rule not in COLUMN_RULES:
            raise ValueError(f"unknown column_rule {self.column_rule!r}: use one of {COLUMN_RULES}")
        if not 0.1 <= self.column_blur_A <= 2.0:
            raise ValueError("column_blur_A must be in [0.1, 2] Å")
        if not 0 < self.column_min_dip < 1:
            raise ValueError("column_min_dip must be in (0, 1)")
        if not 0 < self.column_min_peak_atoms < 1:
            raise ValueError("column_min_peak_atoms must be in (0, 1): a lone atom (peak 1) must stay a column")
        if not 0 < self.column_tolerance_A < 1.0:
            raise ValueError("column_tolerance_A must be in (0, 1) Å")
        if not 0 <= self.min_column_separation_A < 3.0:
            raise ValueError("min_column_separation_A must be in [0, 3) Å")


# --------------------------------------------------------------------------------------
# Particle shapes (positions centred on the origin, cubic frame of the fcc lattice)
# --------------------------------------------------------------------------------------
def _n_atoms_for(diameter_A: float, a: float) -> float:
    """Number of atoms in a sphere of ``diameter_A`` at fcc density (4 atoms per a³)."""
    return np.pi / 6 * diameter_A**3 / (a**3 / 4)


def equivalent_diameter(n_atoms: int, lattice_constant_A: float) -> float:
    """Diameter (Å) of a sphere that holds ``n_atoms`` at fcc bulk density."""
    return float((6 * n_atoms * lattice_constant_A**3 / 4 / np.pi) ** (1 / 3))


def _centred(atoms: Atoms) -> np.ndarray:
    pos = atoms.get_positions()
    return pos - pos.mean(axis=0)


def truncated_octahedron(rng: np.random.Generator, diameter_A: float, a: float) -> np.ndarray:
    """Octahedron with ``length`` atoms per edge and a random vertex cutoff, close to ``diameter_A``."""
    target = _n_atoms_for(diameter_A, a)
    t = rng.uniform(0.15, 0.5)  # cutoff / (length - 1): 0 sharp octahedron, 0.5 cuboctahedron
    best, best_err = (2, 0), np.inf
    for length in range(2, 60):
        cut = min(int(round(t * (length - 1))), (length - 1) // 2)
        n = (2 * length**3 + length) / 3 - cut * (cut + 1) * (2 * cut + 1)
        if abs(np.log(n / target)) < best_err:
            best, best_err = (length, cut), abs(np.log(n / target))
    return _centred(Octahedron("Au", best[0], best[1], latticeconstant=a))


def wulff_particle(rng: np.random.Generator, diameter_A: float, a: float) -> np.ndarray:
    """Wulff shape from random surface energies (γ100/γ111 in 1.0-1.25, γ110/γ111 in 1.05-1.35)."""
    surfaces = [(1, 1, 1), (1, 0, 0), (1, 1, 0)]
    gamma = np.array([1.0, rng.uniform(1.0, 1.25), rng.uniform(1.05, 1.35)])
    spacing = np.array([a / np.sqrt(3), a / 2, a / (2 * np.sqrt(2))])  # interlayer distances
    target = _n_atoms_for(diameter_A, a)
    h = 0.45 * diameter_A  # distance of the {111} facets from the centre, first guess
    for _ in range(2):
        layers = np.maximum(np.round(h * gamma / spacing).astype(int), 1)
        atoms = FaceCenteredCubic("Au", surfaces, layers, latticeconstant=a)
        ratio = target / max(len(atoms), 1)
        if abs(np.log(ratio)) < 0.15:
            break
        h *= ratio ** (1 / 3)
    return _centred(atoms)


def _decahedron_count(p: int, q: int, r: int) -> int:
    """Number of atoms of ``ase.cluster.Decahedron(p, q, r)`` (same loops, counting only)."""
    h = p + q + 2 * r - 1
    g = h - q + 1
    n = h
    for shell in range(1, min(h, g)):
        i = np.arange(shell)
        n += 5 * int(np.sum((shell - i < g - r) & (i < g - r))) * (h - shell)
    return n


def decahedron(rng: np.random.Generator, diameter_A: float, a: float) -> np.ndarray:
    """Marks decahedron (5-fold axis along z) with random (100) facets and re-entrances."""
    target = _n_atoms_for(diameter_A, a)
    fq, fr = rng.uniform(0.15, 0.8), rng.uniform(0.0, 0.3)
    best, best_err = (2, 1, 0), np.inf
    for p in range(2, 40):
        q, r = max(1, int(round(fq * p))), int(round(fr * p))
        err = abs(np.log(_decahedron_count(p, q, r) / target))
        if err < best_err:
            best, best_err = (p, q, r), err
    return _centred(Decahedron("Au", *best, latticeconstant=a))


def icosahedron(rng: np.random.Generator, diameter_A: float, a: float) -> np.ndarray:
    """Mackay icosahedron with the number of shells closest to ``diameter_A``."""
    target = _n_atoms_for(diameter_A, a)
    shells = np.arange(2, 30)
    counts = (10 * shells**3 - 15 * shells**2 + 11 * shells - 3) / 3
    n = int(shells[np.argmin(np.abs(np.log(counts / target)))])
    return _centred(Icosahedron("Au", n, latticeconstant=a))


def twinned_particle(rng: np.random.Generator, diameter_A: float, a: float) -> np.ndarray:
    """A truncated octahedron whose lower part is the mirror image of its upper part across a (111) plane.

    The twin plane is an atomic (111) layer at or somewhat above the centre, so the
    two halves are mirror twins (stacking ...ABCACBA...).
    """
    pos = truncated_octahedron(rng, diameter_A, a)
    normal = np.ones(3) / np.sqrt(3)
    s = pos @ normal
    layers = np.unique(np.round(s, 3))  # heights of the atomic (111) layers
    radius = np.abs(s).max()
    ok = layers[(layers >= -0.05 * radius) & (layers <= 0.3 * radius)]
    plane = float(ok[rng.integers(len(ok))] if len(ok) else layers[np.argmin(np.abs(layers))])
    upper = pos[s >= plane - 0.3]  # layers are a / sqrt(3) = 2.36 Å apart
    above = upper[upper @ normal > plane + 0.3]
    mirrored = above - 2 * ((above @ normal) - plane)[:, None] * normal
    out = np.concatenate([upper, mirrored])
    return out - out.mean(axis=0)


_BUILDERS = {
    "wulff": wulff_particle,
    "truncated_octahedron": truncated_octahedron,
    "decahedron": decahedron,
    "icosahedron": icosahedron,
    "twinned": twinned_particle,
}


# --------------------------------------------------------------------------------------
# Orientation
# --------------------------------------------------------------------------------------
def _icosahedron_axes(pos: np.ndarray) -> dict[str, np.ndarray]:
    """5-fold (a vertex) and 2-fold (an edge centre) axes of a centred icosahedron."""
    r = np.linalg.norm(pos, axis=1)
    vertices = pos[r > r.max() - 1e-3]
    v0 = vertices[0]
    d = np.linalg.norm(vertices - v0, axis=1)
    d[d < 1e-6] = np.inf
    v1 = vertices[np.argmin(d)]
    return {"5fold": v0, "2fold": v0 + v1}


def _perpendicular(v: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to ``v``."""
    trial = np.array([1.0, 0.0, 0.0]) if abs(v[0]) < 0.9 * np.linalg.norm(v) else np.array([0.0, 1.0, 0.0])
    u = np.cross(v, trial)
    return u / np.linalg.norm(u)


def _in_zone_directions(zone: np.ndarray) -> list[np.ndarray]:
    """Low-index directions (<100>, <110>, <111>, <112>) perpendicular to ``zone``."""
    out = []
    for v in product((-2, -1, 0, 1, 2), repeat=3):
        v = np.array(v, dtype=float)
        if np.any(v) and np.sum(np.abs(v) == 2) <= 1 and abs(v @ zone) < 1e-9:
            if not (np.abs(v).max() == 2 and np.sum(v != 0) < 3):  # keep <112>, not <210>/<200>
                out.append(v / np.linalg.norm(v))
    return out


def zone_rotation(zone: np.ndarray, down: np.ndarray | None, in_plane_deg: float) -> np.ndarray:
    """Rotation that puts ``zone`` along +z and either ``down`` along -y or turns in-plane by ``in_plane_deg``.

    Returns
    -------
    ndarray, shape (3, 3)
        Apply as ``pos @ R.T``.
    """
    e3 = zone / np.linalg.norm(zone)
    if down is not None:
        e1 = down - (down @ e3) * e3
        e1 /= np.linalg.norm(e1)
        angle = -90.0  # e1 -> -y
    else:
        e1 = _perpendicular(e3)
        angle = in_plane_deg
    e2 = np.cross(e3, e1)
    r0 = np.stack([e1, e2, e3])
    return rotation_about_axis(np.array([0.0, 0.0, 1.0]), angle) @ r0


def _orientation(shape: str, rng: np.random.Generator, cfg: GoldConfig) -> dict:
    """Draw the zone axis (and the low-index direction to point down, if any)."""
    if shape in ("decahedron", "icosahedron"):
        return {"zone": str(rng.choice(["5fold", "2fold"])), "facet_down": False}
    if shape == "twinned":  # a <110> axis inside the (111) twin plane
        zones = [np.array(v, float) for v in ((1, -1, 0), (1, 0, -1), (0, 1, -1))]
        zone_vec = zones[rng.integers(3)]
        label = "110"
    else:
        label = str(rng.choice(list(cfg.zone_axes)))
        zone_vec = np.array(FCC_ZONES[label], dtype=float)
    facet_down = bool(rng.random() < cfg.p_facet_down)
    down = None
    if facet_down:
        dirs = _in_zone_directions(zone_vec)
        down = dirs[rng.integers(len(dirs))]
    return {"zone": label, "zone_vector": zone_vec, "facet_down": facet_down, "down": down}


def _zone_vector(shape: str, orient: dict, pos: np.ndarray) -> np.ndarray:
    if shape == "decahedron":
        return np.array([0.0, 0.0, 1.0]) if orient["zone"] == "5fold" else np.array([0.0, 1.0, 0.0])
    if shape == "icosahedron":
        return _icosahedron_axes(pos)[orient["zone"]]
    return orient["zone_vector"]


# --------------------------------------------------------------------------------------
# Surface modification and columns
# --------------------------------------------------------------------------------------
def coordination(pos: np.ndarray, cutoff: float = _NN_CUTOFF) -> np.ndarray:
    """Number of neighbours within ``cutoff`` (Å) of each atom."""
    pairs = cKDTree(pos).query_pairs(cutoff, output_type="ndarray")
    return np.bincount(pairs.ravel(), minlength=len(pos))


def remove_surface_atoms(rng: np.random.Generator, pos: np.ndarray, fraction: float) -> np.ndarray:
    """Remove a random ``fraction`` of the surface atoms (fewer than 12 neighbours), then loose atoms (< 3)."""
    coord = coordination(pos)
    surface = np.flatnonzero(coord < 12)
    n = int(rng.binomial(len(surface), fraction))
    pos = np.delete(pos, rng.choice(surface, n, replace=False), axis=0)
    for _ in range(5):
        loose = coordination(pos) < 3
        if not loose.any():
            break
        pos = pos[~loose]
    return pos


def add_adatoms(rng: np.random.Generator, pos: np.ndarray, n: int) -> np.ndarray:
    """Add up to ``n`` atoms on empty lattice sites next to the surface.

    Candidate sites are ``2 r_i - r_j`` for neighbouring atoms ``i`` (surface) and
    ``j``: the site opposite a neighbour, a lattice site of the local crystal, so it
    falls on a column of the zone axis. A site is used when it is empty (no atom
    within 2.6 Å), binds to at least three atoms and lies within the particle's
    current lateral (x, y) extent (adatoms sit on the entrance and exit surfaces
    or in surface steps, and never make the particle wider).

    Returns
    -------
    ndarray, shape (m, 3)
        The added positions in Å (``m <= n``).
    """
    if n <= 0:
        return np.zeros((0, 3))
    tree = cKDTree(pos)
    pairs = tree.query_pairs(_NN_CUTOFF, output_type="ndarray")
    coord = np.bincount(pairs.ravel(), minlength=len(pos))
    both = np.concatenate([pairs, pairs[:, ::-1]])
    both = both[coord[both[:, 0]] < 12]
    cand = 2 * pos[both[:, 0]] - pos[both[:, 1]]
    dist, _ = tree.query(cand, k=1)
    cand = cand[dist > 2.6]
    if len(cand) == 0:
        return np.zeros((0, 3))
    cand = cand[tree.query_ball_point(cand, _NN_CUTOFF, return_length=True) >= 3]
    lo, hi = pos[:, :2].min(axis=0), pos[:, :2].max(axis=0)
    cand = cand[np.all((cand[:, :2] >= lo) & (cand[:, :2] <= hi), axis=1)]
    cand = np.unique(np.round(cand, 2), axis=0)
    return spaced_choice(rng, cand, n, 2.6)


def group_columns(xy: np.ndarray, tolerance_A: float) -> tuple[int, np.ndarray]:
    """Group projected positions into columns: connected components of pairs closer than ``tolerance_A``.

    Returns
    -------
    n_columns : int
    column : ndarray of int, shape (n,)
        Column index of each atom.
    """
    pairs = cKDTree(xy).query_pairs(tolerance_A, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(xy), len(xy)))
    return connected_components(graph, directed=False)


def resolved_columns(xy: np.ndarray, column: np.ndarray, n_columns: int, min_separation_A: float) -> np.ndarray:
    """Which columns an image can resolve, by their distances to the other columns.

    Parameters
    ----------
    xy : ndarray, shape (n, 2)
        Projected atom positions (Å) in the exact zone axis.
    column, n_columns
        Column index of each atom and the number of columns (:func:`group_columns`).
    min_separation_A : float
        Smallest centre-to-centre distance (Å) of two resolvable columns. A
        single atom closer than this to another column is not resolved (the
        column is); two columns of two or more atoms closer than this are
        crowded, and a column within twice this distance of a crowded one is not
        resolved either.

    Returns
    -------
    ndarray of bool, shape (n_columns,)
    """
    counts = np.bincount(column, minlength=n_columns)
    centres = np.stack([np.bincount(column, xy[:, c], n_columns) for c in range(2)], axis=1) / counts[:, None]
    if n_columns < 2 or min_separation_A <= 0:
        return np.ones(n_columns, dtype=bool)
    tree = cKDTree(centres)
    pairs = tree.query_pairs(min_separation_A, output_type="ndarray")
    ok = np.ones(n_columns, dtype=bool)
    # A single atom next to a column (an adatom off the lattice) is not labelled,
    # but the column it sits by stays resolved.
    single = counts[pairs] == 1
    ok[pairs[single]] = False
    crowded = np.zeros(n_columns, dtype=bool)
    crowded[pairs[~single.any(axis=1)].ravel()] = True
    # A column at the rim of a crowded region sits in the same unresolved contrast:
    # drop it too when a crowded column lies within twice the separation.
    ok &= ~crowded
    if crowded.any():
        near = tree.query_ball_point(centres[ok], 2 * min_separation_A)
        ok[np.flatnonzero(ok)] = [not crowded[j].any() for j in near]
    return ok


# --------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------
def build_gold(rng: np.random.Generator, box_A: tuple[float, float], config: GoldConfig | None = None) -> Structure:
    """A random Au nanoparticle in a zone axis, free or on a CeO2 support, with labelled columns.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness (same seed, same structure).
    box_A : (float, float)
        Lateral box ``(Lx, Ly)`` in Å.
    config : GoldConfig, optional
        Size, shape, orientation, surface and support parameters; the defaults
        when omitted.

    Returns
    -------
    Structure
        Atoms (Au, plus Ce and O for a supported particle) in an orthogonal cell
        ``(Lx, Ly, Lz)``; one site per Au column labelled by ``column_rule``
        (class ``"Au"``, height = atoms in the column); ``info`` with shape, size,
        zone axis, tilt, surface changes, support, the column rule and the number
        of Au atoms in no labelled column.

    Raises
    ------
    ValueError
        If the box is too small for the smallest particle.
    """
    cfg = config or GoldConfig()
    box = np.array(box_A, dtype=float)
    a = cfg.lattice_constant_A
    margin = cfg.edge_margin_A
    weights = np.array(cfg.shape_weights, dtype=float)
    shape = str(cfg.shapes[rng.choice(len(cfg.shapes), p=weights / weights.sum())])
    supported = bool(rng.random() < cfg.p_support)
    avail = box - 2 * margin
    if supported:
        avail[1] = box[1] - margin - cfg.support_gap_A - cfg.support_min_height_A
    if np.any(avail < _MIN_DIAMETER_A + 2):
        raise ValueError(f"box {' x '.join(f'{float(b):.3g}' for b in box)} Å is too small for a gold particle with {margin} Å margins")
    orient = _orientation(shape, rng, cfg)
    in_plane = float(rng.uniform(0.0, 360.0))
    tilt_deg = float(rng.uniform(0.0, cfg.max_mistilt_deg))
    tilt_axis_deg = float(rng.uniform(0.0, 360.0))
    diameter = uniform(rng, cfg.diameter_A)
    drawn_diameter = diameter

    # build, orient, shrink until it fits (with room for the mistilt)
    for _ in range(12):
        pos = _BUILDERS[shape](rng, diameter, a)
        zone = _zone_vector(shape, orient, pos)
        rot = zone_rotation(zone, orient.get("down"), in_plane)
        pos = pos @ rot.T
        ext = np.ptp(pos, axis=0)
        need = ext[:2] + ext[2] * np.sin(np.deg2rad(cfg.max_mistilt_deg)) + 0.5
        if np.all(need <= avail) or diameter <= _MIN_DIAMETER_A:
            break
        diameter = max(_MIN_DIAMETER_A, diameter * 0.97 * float(np.min(avail / need)))

    n_built = len(pos)
    pos = remove_surface_atoms(rng, pos, uniform(rng, cfg.surface_vacancy_fraction))
    n_removed = n_built - len(pos)
    adatoms = add_adatoms(rng, pos, int(rng.integers(cfg.n_adatoms[0], cfg.n_adatoms[1] + 1)))
    pos = np.concatenate([pos, adatoms])

    # "separation" groups columns in the exact zone axis; then the mistilt about the particle centre
    if cfg.column_rule == "separation":
        n_col, column = group_columns(pos[:, :2], cfg.column_tolerance_A)
        resolved = resolved_columns(pos[:, :2], column, n_col, cfg.min_column_separation_A)
    axis = np.array([np.cos(np.deg2rad(tilt_axis_deg)), np.sin(np.deg2rad(tilt_axis_deg)), 0.0])
    centre = pos.mean(axis=0)
    pos = (pos - centre) @ rotation_about_axis(axis, tilt_deg).T + centre

    # place it: on the support or free in the box
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    if np.any(hi[:2] - lo[:2] > avail):
        raise ValueError(f"box {' x '.join(f'{float(b):.3g}' for b in box)} Å is too small for a {shape} particle with {margin} Å margins")
    support_atoms = None
    support_info = None
    if supported:
        height_room = box[1] - margin - cfg.support_gap_A - (hi[1] - lo[1])
        height = float(np.clip(uniform(rng, cfg.support_height_fraction) * box[1], cfg.support_min_height_A,
                               max(cfg.support_min_height_A, height_room - 1.5)))
        thickness = float(hi[2] - lo[2] + uniform(rng, cfg.support_extra_thickness_A))
        orientation = str(rng.choice(list(cfg.support_orientations)))
        support_atoms = ceria_slab(rng, (box[0], box[1]), height, thickness, cfg.vacuum_A, orientation)
        top = support_atoms.positions[:, 1].max()
        shift_x = rng.uniform(margin - lo[0], box[0] - margin - hi[0])
        shift_y = top + cfg.support_gap_A - lo[1]
        shift_z = cfg.vacuum_A + 0.5 * thickness - 0.5 * (lo[2] + hi[2])
        lz = thickness + 2 * cfg.vacuum_A
        support_info = {"material": "CeO2", "orientation": orientation, "height_A": height,
                        "thickness_A": thickness, "n_atoms": len(support_atoms)}
    else:
        shift_x = rng.uniform(margin - lo[0], box[0] - margin - hi[0])
        shift_y = rng.uniform(margin - lo[1], box[1] - margin - hi[1])
        shift_z = cfg.vacuum_A - lo[2]
        lz = hi[2] - lo[2] + 2 * cfg.vacuum_A
    pos = pos + np.array([shift_x, shift_y, shift_z])

    atoms = Atoms(["Au"] * len(pos), positions=pos, cell=[box[0], box[1], lz], pbc=True)
    if support_atoms is not None:
        support_atoms.set_cell([box[0], box[1], lz])
        atoms += support_atoms

    column_info = {}
    if cfg.column_rule == "separation":
        counts = np.bincount(column, minlength=n_col)
        xy = np.stack([np.bincount(column, pos[:, c], n_col) for c in range(2)], axis=1) / counts[:, None]
        xy, counts = xy[resolved], counts[resolved]
        column_info["n_unresolved_columns"] = int(n_col - resolved.sum())
    else:  # the peaks the image shows, from the particle as imaged (mistilted)
        xy, counts, _ = density_columns(pos[:, :2], cfg.column_blur_A, cfg.column_min_dip, cfg.column_min_peak_atoms)
    sites = Sites(xy, np.ones(len(xy), dtype=np.int64), counts.astype(np.int64))
    info = {
        "system": "gold",
        "shape": shape,
        "n_au": int(len(pos)),
        "column_rule": cfg.column_rule,
        "n_columns": int(len(xy)),
        **column_info,
        "n_au_unlabelled": int(len(pos) - counts.sum()),
        "diameter_A": equivalent_diameter(len(pos), a),
        "drawn_diameter_A": float(drawn_diameter),
        "shrunk": bool(diameter < drawn_diameter),
        "extent_A": [float(v) for v in hi - lo],
        "zone_axis": orient["zone"],
        "facet_down": bool(orient["facet_down"]),
        "in_plane_rotation_deg": in_plane if orient.get("down") is None else -90.0,
        "mistilt_deg": tilt_deg,
        "mistilt_axis_deg": tilt_axis_deg,
        "n_surface_removed": int(n_removed),
        "n_adatoms": int(len(adatoms)),
        "support": support_info,
    }
    return Structure(atoms=atoms, sites=sites, class_names=CLASS_NAMES, info=info)
