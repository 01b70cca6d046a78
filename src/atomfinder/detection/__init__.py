"""Finding atoms in micrographs (needs no simulation dependencies).

Kept import-free on purpose: import the submodules (``atomfinder.detection.peaks``, ...)
where you need them. This package must never import abtem or ase.
"""

from atomfinder._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
