"""imaging.crlb: the Cramér-Rao bound of an atom's position under shot noise, checked on its physics.

A single carbon atom at 80 kV (corrected lens, 0.1 Å/px, ideal detector): seconds in all.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

pytest.importorskip("abtem")

from atomfinder.imaging.crlb import image_position_crlb_A, position_crlb_A  # noqa: E402
from atomfinder.imaging.microscope import Microscope  # noqa: E402

LENS = Microscope(energy_eV=80e3, sampling_A=0.1, defocus_A=-60.0, Cs_A=-15e4, mtf_c0=1.0, blur_px=0.0,
                  dose_e_per_A2=1e4)
BOX = 96  # px: a 9.6 Å field around the atom


def _at_dose(dose: float) -> Microscope:
    return dataclasses.replace(LENS, dose_e_per_A2=dose)


def _lone_atom(element: str = "C"):
    """One atom at the centre of a periodic BOX-px cell, as position_crlb_A simulates it."""
    from ase import Atoms

    side = BOX * LENS.sampling_A
    return Atoms([element], positions=[[side / 2, side / 2, 1.0]], cell=[side, side, 2.0], pbc=True), side


def test_the_bound_scales_as_one_over_the_square_root_of_the_dose():
    """Poisson noise: the Fisher information grows with the electrons, so 4x the dose halves the bound
    (and 100x divides it by 10); no dose gives no bound, infinite dose a perfect one."""
    bound = {d: position_crlb_A(_at_dose(d), "C", BOX) for d in (1e3, 4e3, 1e5)}
    assert 0.05 < bound[1e3] < 0.3  # Å: 0.13 Å for carbon at 1e3 e/Å²
    assert bound[4e3] == pytest.approx(bound[1e3] / 2, rel=1e-9)
    assert bound[1e5] == pytest.approx(bound[1e3] / 10, rel=1e-9)
    assert position_crlb_A(_at_dose(0.0), "C", BOX) == math.inf
    assert position_crlb_A(_at_dose(math.inf), "C", BOX) == 0.0
    # the whole-image bound follows the same law
    atoms, side = _lone_atom()
    site = np.array([[side / 2, side / 2]])
    one, four = (image_position_crlb_A(atoms, site, _at_dose(d), (0, 0), BOX)[0] for d in (1e3, 4e3))
    assert four == pytest.approx(one / 2, rel=1e-9)


def test_a_heavier_atom_is_located_better():
    """Gold scatters far more than carbon: a stronger, sharper image, a smaller bound at the same dose."""
    assert position_crlb_A(LENS, "Au", BOX) < 0.5 * position_crlb_A(LENS, "C", BOX)


def test_the_whole_image_bound_of_a_lone_atom_is_the_isolated_atom_bound():
    """image_position_crlb_A (finite differences of the exit wave on a local patch, through
    crlb_from_derivatives) and position_crlb_A (Fourier derivative of the atom's image) are two routes
    to the same number for an atom with no neighbours: they agree within 2 % (0.3-0.4 % on 96-160 px
    fields)."""
    atoms, side = _lone_atom()
    isolated = position_crlb_A(LENS, "C", BOX)
    whole = image_position_crlb_A(atoms, np.array([[side / 2, side / 2]]), LENS, (0, 0), BOX)
    assert whole.shape == (1,)
    assert whole[0] == pytest.approx(isolated, rel=0.02)
    # a site with no atom carries no information, and does not change the atom's bound
    two = image_position_crlb_A(atoms, np.array([[side / 2, side / 2], [1.0, 1.0]]), LENS, (0, 0), BOX)
    assert two[0] == pytest.approx(whole[0], rel=1e-9) and math.isinf(two[1])
