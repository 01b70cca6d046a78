"""Finding atoms in micrographs (needs no simulation dependencies).

Kept import-free on purpose: import the submodules (``atomfinder.detection.peaks``, ...)
where you need them. This package must never import abtem or ase.
"""
