"""Class labels that respect a honeycomb's two sublattices.

A monolayer such as 2H-MoS2 seen along [001] is a honeycomb: two triangular
sublattices (Mo columns on one, S2 columns on the other) whose nearest-neighbour
bonds point along three directions 120° apart, turned by 60° (opposite) between
the two. A site's sublattice is therefore a matter of geometry, and which
sublattice carries which species a matter of a vote among many sites; each
detection's class is then chosen among its sublattice's classes only (Mo or
Mo_vacancy on one side; S, S1 or S_vacancy on the other). On held-out MoS2 focal
series this removes most Mo↔S confusions, which a per-peak argmax makes where the
two columns look alike (Mo Z = 42, S2 2 × 16 = 32).

Each detection's bond phase ``z`` is the mean of ``exp(3iφ)`` over its bonds
(``φ`` the bond's direction); the two sublattices have opposite ``z``. Around each
detection (``radius``) the phases set a local reference (the square root of the
summed ``z²``, blind to the sublattice) and the network's class probabilities
vote on which side is the first sublattice (sums weighted by a Gaussian of
standard deviation ``radius / 2``). Everything is local, so rotated grains
are handled; a detection without bonds, or with a phase too far from its
neighbours', keeps its unrestricted label.

Lengths are in the unit of the positions: Å in a model card, pixels inside
:func:`atomfinder.detection.peaks.find_atoms`. Needs only NumPy and SciPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

#: Largest log-probability evidence one detection gives the sublattice vote.
MAX_EVIDENCE = 10.0


@dataclass(frozen=True)
class Honeycomb:
    """Two sublattices of a honeycomb and the classes each may hold.

    Attributes
    ----------
    sublattices : (tuple of int, tuple of int)
        1-based classes allowed on the first and on the second sublattice (disjoint;
        a class in neither is allowed on both).
    bond : (float, float)
        Nearest-neighbour distance range (lower, upper); for MoS2 the projected
        Mo–S distance is a / √3 = 1.84 Å (a = 3.19 Å).
    radius : float
        Size of the neighbourhood that fixes the local reference and votes (twice the
        standard deviation of its Gaussian weight).
    min_order : float
        Smallest agreement (0-1) between a detection's bond phase and its
        neighbourhood's for the sublattice to be trusted.
    """

    sublattices: tuple[tuple[int, ...], tuple[int, ...]]
    bond: tuple[float, float]
    radius: float
    min_order: float = 0.3

    def __post_init__(self) -> None:
        subs = tuple(tuple(int(c) for c in s) for s in self.sublattices)
        if len(subs) != 2 or not all(subs) or set(subs[0]) & set(subs[1]) or min(subs[0] + subs[1]) < 1:
            raise ValueError(f"honeycomb: two disjoint, non-empty lists of classes >= 1 needed, got {self.sublattices}")
        lo, hi = (float(b) for b in self.bond)
        if not 0 <= lo < hi < float("inf"):
            raise ValueError(f"honeycomb: bond range must be 0 <= lower < upper, got {self.bond}")
        if not hi <= float(self.radius) < float("inf"):
            raise ValueError(f"honeycomb: radius must be finite and at least the bond's upper end, got {self.radius}")
        if not 0 <= float(self.min_order) <= 1:
            raise ValueError(f"honeycomb: min_order must be in [0, 1], got {self.min_order}")
        object.__setattr__(self, "sublattices", subs)
        object.__setattr__(self, "bond", (lo, hi))
        object.__setattr__(self, "radius", float(self.radius))
        object.__setattr__(self, "min_order", float(self.min_order))

    @classmethod
    def from_card(cls, spec: Mapping[str, Any], class_names: Sequence[str]) -> "Honeycomb":
        """From a card's ``detection["honeycomb"]``: ``{"sublattices": [[names], [names]],
        "bond_A": [lower, upper], "radius_A": r, "min_order": m}`` (lengths in Å)."""
        names = list(class_names)
        try:
            subs = tuple(tuple(names.index(n) + 1 for n in group) for group in spec["sublattices"])
        except ValueError as err:
            raise ValueError(f"honeycomb: a sublattice names a class the model lacks ({err})") from None
        return cls(subs, tuple(spec["bond_A"]), spec["radius_A"], spec.get("min_order", 0.3))

    def scaled(self, factor: float) -> "Honeycomb":
        """The same rule with lengths multiplied by ``factor`` (e.g. ``1 / sampling_A`` for pixels)."""
        return Honeycomb(self.sublattices, (self.bond[0] * factor, self.bond[1] * factor),
                         self.radius * factor, self.min_order)


def bond_phase(xy: np.ndarray, bond: tuple[float, float]) -> np.ndarray:
    """Mean ``exp(3iφ)`` over each point's bonds (0 for a point without bonds).

    Parameters
    ----------
    xy : ndarray, shape (n, 2)
        Positions.
    bond : (float, float)
        A bond is a pair of points at a distance in ``(lower, upper]``.

    Returns
    -------
    ndarray of complex, shape (n,)
        Magnitude 1 for a perfect honeycomb site, opposite signs on the two
        sublattices (a bond seen from its other end is turned by 180°).
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    n = len(xy)
    z = np.zeros(n, dtype=np.complex128)
    if n < 2:
        return z
    pairs = cKDTree(xy).query_pairs(bond[1], output_type="ndarray")
    if len(pairs) == 0:
        return z
    v = xy[pairs[:, 1]] - xy[pairs[:, 0]]
    pairs = pairs[np.hypot(v[:, 0], v[:, 1]) > bond[0]]
    v = xy[pairs[:, 1]] - xy[pairs[:, 0]]
    e = np.exp(3j * np.arctan2(v[:, 1], v[:, 0]))
    count = np.bincount(pairs.ravel(), minlength=n).astype(np.float64)
    np.add.at(z, pairs[:, 0], e)
    np.add.at(z, pairs[:, 1], -e)
    has = count > 0
    z[has] /= count[has]
    return z


#: Largest side of the grid of :func:`neighbourhood_sum`, in cells.
MAX_GRID_CELLS = 1024


def grid_cell(xy: np.ndarray, radius: float) -> float:
    """Cell side for :func:`neighbourhood_sum`: an eighth of ``radius`` (σ = 4 cells), but
    coarse enough that the points' extent spans at most :data:`MAX_GRID_CELLS` cells."""
    extent = float(np.ptp(xy, axis=0).max()) if len(xy) else 0.0
    return max(radius / 8.0, extent / MAX_GRID_CELLS, np.finfo(np.float64).tiny)


def neighbourhood_sum(xy: np.ndarray, values: np.ndarray, radius: float, cell: float) -> np.ndarray:
    """Gaussian-weighted sum of ``values`` around each point (σ = ``radius`` / 2).

    The values are binned on a grid of ``cell``-sized squares and blurred, so the cost
    grows with the field's area, not with the number of pairs.

    Parameters
    ----------
    xy : ndarray, shape (n, 2)
        Positions.
    values : ndarray, shape (n,)
        Real or complex values at the positions.
    radius : float
        Twice the Gaussian's standard deviation, in the unit of ``xy``.
    cell : float
        Grid spacing, in the unit of ``xy`` (well below ``radius``).

    Returns
    -------
    ndarray, shape (n,), of the values' dtype (complex or float64)
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    values = np.asarray(values)
    if len(xy) == 0:
        return values.astype(np.result_type(values, np.float64))
    ij = np.floor((xy - xy.min(axis=0)) / cell).astype(np.int64)
    shape = tuple(ij.max(axis=0)[::-1] + 1)
    grid = np.zeros(shape, dtype=np.result_type(values, np.float64))
    np.add.at(grid, (ij[:, 1], ij[:, 0]), values)
    return gaussian_filter(grid, 0.5 * radius / cell, mode="constant", truncate=3.0)[ij[:, 1], ij[:, 0]]


def sublattice_of(xy: np.ndarray, class_probabilities: np.ndarray, rule: Honeycomb) -> np.ndarray:
    """Which sublattice each detection lies on: 0 (first), 1 (second) or -1 (unknown).

    Parameters
    ----------
    xy : ndarray, shape (n, 2)
        Detections, in the unit of ``rule``'s lengths.
    class_probabilities : ndarray, shape (m, n)
        Probabilities of the ``m`` non-background classes at each detection; they
        decide, neighbourhood by neighbourhood, which side is the first sublattice
        (log of the summed probabilities of its classes against the other's).
    rule : Honeycomb
        Bond range, neighbourhood radius and classes per sublattice.

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    q = np.asarray(class_probabilities, dtype=np.float64)
    n = len(xy)
    side = np.full(n, -1, dtype=np.int64)
    if n < 3:
        return side
    z = bond_phase(xy, rule.bond)
    first = np.asarray(rule.sublattices[0]) - 1
    second = np.asarray(rule.sublattices[1]) - 1
    if max(first.max(), second.max()) >= q.shape[0]:
        raise ValueError(f"honeycomb names class {max(first.max(), second.max()) + 1} but the model has {q.shape[0]}")
    with np.errstate(divide="ignore"):
        evidence = np.log(q[first].sum(axis=0)) - np.log(q[second].sum(axis=0))
    evidence = np.clip(np.nan_to_num(evidence, nan=0.0), -MAX_EVIDENCE, MAX_EVIDENCE)
    # The reference is blind to the sublattice (z² is the same on both), its sign is
    # arbitrary; the vote is measured against the same reference, so the sign cancels.
    cell = grid_cell(xy, rule.radius)
    reference = np.sqrt(neighbourhood_sum(xy, z * z, rule.radius, cell))
    vote = np.real(np.conj(reference) * neighbourhood_sum(xy, z * evidence, rule.radius, cell))
    size = np.abs(reference)
    order = np.real(z * np.conj(reference)) / np.where(size > 0, size, 1.0)
    known = (size > 0) & (np.abs(order) >= rule.min_order) & (vote != 0)
    side[known] = (np.sign(order[known]) * np.sign(vote[known]) < 0).astype(np.int64)
    return side


def allowed_classes(side: np.ndarray, rule: Honeycomb, n_classes: int) -> np.ndarray:
    """Mask of the classes each detection may take: shape (n_classes, n), 1-based class c in row c - 1.

    A detection of unknown sublattice (``side == -1``) may take any class; one on a
    sublattice may not take the other sublattice's classes.
    """
    side = np.asarray(side, dtype=np.int64).reshape(-1)
    allowed = np.ones((n_classes, len(side)), dtype=bool)
    for s, other in ((0, rule.sublattices[1]), (1, rule.sublattices[0])):
        allowed[np.ix_(np.asarray(other) - 1, side == s)] = False
    return allowed


__all__ = ["Honeycomb", "allowed_classes", "bond_phase", "grid_cell", "neighbourhood_sum", "sublattice_of"]
