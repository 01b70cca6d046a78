"""Atomic structures with labelled sites (needs the ``simulate`` extra: ase)."""

from atomfinder.structures.base import Sites, Structure

__all__ = ["Sites", "Structure"]
