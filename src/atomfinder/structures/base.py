"""The common currency of the structure builders: atoms plus labelled sites.

Every builder in :mod:`atomfinder.structures` returns a :class:`Structure`: an
:class:`ase.Atoms` object in an orthogonal box (Å, beam along ``z``) and the
labelled *sites* that a network should find in its projection (single atoms for
graphene, atomic columns for gold and MoS2, empty sites for vacancies).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase import Atoms


@dataclass(frozen=True)
class Sites:
    """Labelled sites in the projected structure.

    Attributes
    ----------
    positions_A : ndarray, shape (n, 2)
        Projected positions ``(x, y)`` in Å, in the frame of ``Structure.atoms``
        (ase ``x`` and ``y`` axes; the beam runs along ``z``).
    labels : ndarray of int, shape (n,)
        1-based index into ``Structure.class_names`` (0 is background and never
        appears here).
    heights : ndarray of int, shape (n,)
        Number of atoms in the site's column (1 for a single atom, 0 for a vacancy).
    """

    positions_A: np.ndarray
    labels: np.ndarray
    heights: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.positions_A)
        if np.shape(self.positions_A) != (n, 2) or len(self.labels) != n or len(self.heights) != n:
            raise ValueError("Sites: positions_A must be (n, 2) and labels, heights (n,)")

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls) -> "Sites":
        return cls(np.zeros((0, 2)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    def select(self, mask: np.ndarray) -> "Sites":
        """The sites where ``mask`` is true."""
        return Sites(self.positions_A[mask], self.labels[mask], self.heights[mask])


@dataclass(frozen=True)
class Structure:
    """Atoms to image and the sites to label.

    Attributes
    ----------
    atoms : ase.Atoms
        Atoms in an orthogonal cell ``(Lx, Ly, Lz)`` in Å, all inside the cell,
        beam along ``z``.
    sites : Sites
        The labelled sites (see :class:`Sites`).
    class_names : tuple of str
        Names of the site classes; ``sites.labels == i`` means ``class_names[i - 1]``.
    info : dict
        What the builder drew (defect counts, orientation, ...), JSON-serialisable.
    """

    atoms: Atoms
    sites: Sites
    class_names: tuple[str, ...]
    info: dict = field(default_factory=dict)

    @property
    def box_A(self) -> tuple[float, float, float]:
        """The cell lengths ``(Lx, Ly, Lz)`` in Å."""
        return tuple(float(v) for v in np.diag(self.atoms.cell[:]))
