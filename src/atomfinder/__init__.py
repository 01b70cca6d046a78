"""atomfinder: find atoms and atomic columns in HRTEM images.

Networks trained only on multislice simulations (after Madsen et al., Adv. Theory
Simul. 2018) turn noisy micrographs into per-class probability maps; peaks in those
maps are the atoms. ``import atomfinder`` is light: it loads neither abTEM nor ase.
"""

__version__ = "0.1.0"
