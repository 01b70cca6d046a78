"""Atomic structures with labelled sites (needs the ``simulate`` extra: ase).

Each builder draws one structure from a seeded generator and returns a
:class:`Structure`: ase atoms in an orthogonal box plus the labelled sites a
network should find (atoms for graphene, columns with heights for gold, column
sites with vacancy classes for MoS2).
"""

from atomfinder._lazy import submodule_getattr
from atomfinder.structures.base import Sites, Structure
from atomfinder.structures.gold import GoldConfig, build_gold
from atomfinder.structures.graphene import GrapheneConfig, build_graphene
from atomfinder.structures.mos2 import MoS2Config, build_mos2
from atomfinder.structures.support import amorphous_carbon, ceria_slab

__all__ = [
    "Sites",
    "Structure",
    "GoldConfig",
    "GrapheneConfig",
    "MoS2Config",
    "amorphous_carbon",
    "build_gold",
    "build_graphene",
    "build_mos2",
    "ceria_slab",
]

__getattr__ = submodule_getattr(__name__)
