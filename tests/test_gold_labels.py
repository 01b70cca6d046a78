"""Gold column labels match what the image resolves (column_rule = "density_peaks").

The labels are the peaks of the projected Au density blurred at the resolution
scale (:mod:`atomfinder.structures.columns`). Checked on hand-made geometries, and
per particle shape and zone axis against noise-free images: the blurred
projected density evaluated here independently (exact Gaussian sums on a pixel
grid, every shape), and abTEM exit-wave intensities under negative-Cs imaging at
Scherzer focus for shapes whose columns all lie in a zone axis.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.feature import peak_local_max
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from atomfinder.datasets.generate import default_config, job_structure, load_config
from atomfinder.structures.columns import density_columns
from atomfinder.structures.gold import GoldConfig, build_gold, zone_rotation

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPE = GoldConfig.from_dict(default_config("gold").structure)  # the gold recipe's structure config
BLUR = RECIPE.column_blur_A
MATCH_A = 0.3  # a label and an image peak agree within this (Å)
STRONG_DIP = 0.10  # a column-like peak: at least 10 % above its saddles
WEAK_DIP = 0.01  # any peak at all, for the label -> peak direction


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def particle(shape: str, zone: str | None = None, min_tilt_deg: float = 0.0, box=(40.0, 40.0), **kw):
    """The first seeded recipe particle (free unless told) of ``shape`` in ``zone``, mistilted >= ``min_tilt_deg``."""
    cfg = replace(RECIPE, shapes=(shape,), shape_weights=(1.0,), p_support=kw.pop("p_support", 0.0),
                  max_mistilt_deg=3.0 if min_tilt_deg > 0 else 0.0, **kw)
    for seed in range(300):
        s = build_gold(np.random.default_rng(seed), box, cfg)
        if (zone is None or s.info["zone_axis"] == zone) and s.info["mistilt_deg"] >= min_tilt_deg:
            return s
    raise AssertionError(f"no {shape} in {zone} with mistilt >= {min_tilt_deg} in 300 seeds")


def au_xy(s) -> np.ndarray:
    return s.atoms.positions[np.array(s.atoms.get_chemical_symbols()) == "Au", :2]


def blurred_density_image(xy: np.ndarray, blur_A: float, sampling_A: float, shape: tuple[int, int]) -> np.ndarray:
    """Sum of unit Gaussians (std ``blur_A``) at the atoms, exactly, on a ``[row, col]`` pixel grid."""
    gy = np.exp(-((np.arange(shape[0]) * sampling_A)[None] - xy[:, 1:2]) ** 2 / (2 * blur_A**2))
    gx = np.exp(-((np.arange(shape[1]) * sampling_A)[None] - xy[:, 0:1]) ** 2 / (2 * blur_A**2))
    return gy.T @ gx


def image_peaks(image: np.ndarray, sampling_A: float, min_dip: float) -> tuple[np.ndarray, np.ndarray]:
    """The maxima that stand at least ``min_dip`` (relative) above their saddles.

    Returns
    -------
    peaks : ndarray, shape (m, 2)
        ``(x, y)`` in Å of each peak's highest point.
    basins : ndarray of int, shape (rows, cols)
        The watershed basin (1..m) of each peak.
    """
    floor = image.max() * 1e-3
    log_i = np.log(np.maximum(image, floor) / floor)  # >= 0, and far from 0 at peaks (h_maxima's rounding)
    regions, n = ndimage.label(h_maxima(log_i, -np.log1p(-min_dip)), structure=np.ones((3, 3)))
    rc = np.array(ndimage.maximum_position(image, regions, np.arange(1, n + 1)), float).reshape(-1, 2)
    return rc[:, ::-1] * sampling_A, watershed(-log_i, regions)


def peak_tops(image: np.ndarray, sampling_A: float, min_dip: float) -> list[np.ndarray]:
    """Each column-like peak as the set of its tops (Å).

    A flat-topped peak (merged sub-columns) can hold several local maxima that no
    dip of ``min_dip`` separates; its highest point is then a matter of the last
    digits. Its tops are the maxima in its basin within ``min_dip`` of its height.
    """
    peaks, basins = image_peaks(image, sampling_A, min_dip)
    maxima = peak_local_max(image, min_distance=1, exclude_border=False)  # [row, col]
    owner = basins[maxima[:, 0], maxima[:, 1]]
    value = image[maxima[:, 0], maxima[:, 1]]
    out = []
    for k, top in enumerate(peaks, start=1):
        height = image[tuple(np.rint(top[::-1] / sampling_A).astype(int))]
        mine = (owner == k) & (value >= (1 - min_dip) * height)
        out.append(np.concatenate([top[None], maxima[mine][:, ::-1] * sampling_A]))
    return out


def assert_labels_match_peaks(labels_A: np.ndarray, image: np.ndarray, sampling_A: float, atoms_xy: np.ndarray):
    """Every column-like peak within 1 Å of an atom has a label within 0.3 Å of a top, every label a peak."""
    tops = [t for t in peak_tops(image, sampling_A, STRONG_DIP) if cKDTree(atoms_xy).query(t[0])[0] < 1.0]
    any_top = np.concatenate(peak_tops(image, sampling_A, WEAK_DIP))
    assert len(tops) > 0 and len(labels_A) > 0
    labels = cKDTree(labels_A)
    d_peak = np.array([labels.query(t)[0].min() for t in tops])
    d_label = cKDTree(any_top).query(labels_A)[0]
    assert d_peak.max() <= MATCH_A, f"{(d_peak > MATCH_A).sum()} of {len(tops)} image peaks unlabelled"
    assert d_label.max() <= MATCH_A, f"{(d_label > MATCH_A).sum()} of {len(labels_A)} labels without a peak"


# --------------------------------------------------------------------------------------
# the rule on hand-made geometries
# --------------------------------------------------------------------------------------
def test_density_columns_hand_made():
    blur = 0.45
    straight = np.repeat([[0.0, 0.0], [2.0, 0.0]], [6, 4], axis=0)  # two columns 2 Å apart
    merged = np.repeat([[10.0, 0.0], [10.4, 0.0]], [3, 2], axis=0)  # sub-columns 0.4 Å apart
    adatom = np.array([[20.0, 0.0]])  # a lone atom
    streak = np.stack([30.0 + np.linspace(-0.5, 0.5, 8), np.zeros(8)], axis=1)  # a tilted column
    xy = np.concatenate([straight, merged, adatom, streak])
    positions, heights, column = density_columns(xy, blur, min_dip=0.05, min_peak_atoms=0.5)
    # each atom in one column, and a column's height is its number of atoms
    assert np.all(column >= 0) and np.array_equal(np.bincount(column, minlength=len(heights)), heights)
    order = np.argsort(positions[:, 0])
    positions, heights = positions[order], heights[order]
    assert heights.tolist() == [6, 4, 5, 1, 8]
    assert np.allclose(positions[[0, 1, 3]], [[0.0, 0.0], [2.0, 0.0], [20.0, 0.0]], atol=1e-3)
    # the merged pair: one column between its sub-columns, nearer the one with more atoms
    assert 10.0 < positions[2, 0] < 10.2 and abs(positions[2, 1]) < 1e-6
    assert positions[4] == pytest.approx([30.0, 0.0], abs=1e-6)  # the streak's centre


@pytest.mark.parametrize("blur", [0.3, 0.45, 0.7])
def test_blur_sets_which_columns_merge(blur):
    """Two equal columns closer than twice the blur (the Sparrow limit) are one column of both."""
    for d, n_expected in ((1.6 * blur, 1), (3.0 * blur, 2)):
        xy = np.repeat([[0.0, 0.0], [d, 0.0]], 5, axis=0)
        positions, heights, _ = density_columns(xy, blur, 0.05, 0.5)
        assert len(heights) == n_expected and heights.sum() == 10
    positions, _, _ = density_columns(np.repeat([[0.0, 0.0], [3.0 * blur, 0.0]], 5, axis=0), blur, 0.05, 0.5)
    assert np.allclose(np.sort(positions[:, 0]), [0.0, 3.0 * blur], atol=1e-3)  # each at its own atoms


def test_min_dip_merges_shallow_peaks():
    # 2.4 blur apart: two peaks with a saddle about 8 % below them
    xy = np.repeat([[0.0, 0.0], [2.4 * 0.45, 0.0]], 3, axis=0)
    assert len(density_columns(xy, 0.45, min_dip=0.01, min_peak_atoms=0.5)[1]) == 2
    assert len(density_columns(xy, 0.45, min_dip=0.2, min_peak_atoms=0.5)[1]) == 1


def test_lone_adatom_is_a_column_and_a_shoulder_is_not():
    column = np.zeros((12, 2))
    lone = np.array([[5.0, 0.0]])
    shoulder = np.array([[0.0, 0.8]])  # an atom 0.8 Å from a 12-atom column: no peak of its own
    positions, heights, which = density_columns(np.concatenate([column, lone, shoulder]), 0.45, 0.05, 0.5)
    assert sorted(heights.tolist()) == [1, 13]
    assert which[12] != which[0] and which[13] == which[0]
    assert positions[which[12]] == pytest.approx([5.0, 0.0], abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_lone_atoms_anywhere_are_columns_and_weaker_peaks_are_not(seed):
    # a lone atom peaks at 1 atom wherever it sits on the grid: any floor below 1 keeps it
    lone = np.random.default_rng(seed).uniform(0, 30, (5, 2)) * [1, 0] + np.arange(5)[:, None] * [0, 7.0]
    xy = np.concatenate([[[0.0, -10.0], [0.0, -10.0]], lone])  # a 2-atom column and 5 lone atoms
    for floor, kept in ((0.5, 6), (0.95, 6), (1.5, 1)):
        positions, heights, column = density_columns(xy, 0.45, 0.05, min_peak_atoms=floor)
        assert len(heights) == kept and heights.sum() == (column >= 0).sum()
    # a peak lower than the floor is no column, and its atoms belong to none
    assert heights.tolist() == [2] and column.tolist() == [0, 0, -1, -1, -1, -1, -1]
    assert density_columns(np.zeros((0, 2)), 0.45, 0.05, 0.5)[1].shape == (0,)


# --------------------------------------------------------------------------------------
# every shape and zone axis the recipe draws: labels vs the peaks of a noise-free image
# --------------------------------------------------------------------------------------
CASES = [
    ("wulff", "100", 0.0), ("wulff", "110", 0.0), ("wulff", "111", 0.0),
    ("truncated_octahedron", "100", 0.0), ("truncated_octahedron", "110", 0.0), ("truncated_octahedron", "111", 0.0),
    ("twinned", "110", 0.0), ("decahedron", "5fold", 0.0), ("decahedron", "2fold", 0.0),
    ("icosahedron", "5fold", 0.0), ("icosahedron", "2fold", 0.0),
    ("truncated_octahedron", "110", 2.7), ("twinned", "110", 2.7), ("decahedron", "2fold", 2.7),
    ("icosahedron", "5fold", 2.7), ("wulff", "100", 2.7),
]


@pytest.mark.parametrize("shape, zone, min_tilt", CASES)
def test_labels_are_the_peaks_of_the_blurred_projection(shape, zone, min_tilt):
    s = particle(shape, zone, min_tilt, diameter_A=(18.0, 28.0))
    xy = au_xy(s)
    sampling = 0.05
    box = s.box_A
    image = blurred_density_image(xy, BLUR, sampling, (int(box[1] / sampling), int(box[0] / sampling)))
    assert s.info["column_rule"] == "density_peaks"
    assert_labels_match_peaks(s.sites.positions_A, image, sampling, xy)
    # every atom is in a column, counted once
    assert s.info["n_au_unlabelled"] == 0 and s.sites.heights.sum() == len(xy) == s.info["n_au"]
    assert np.all(s.sites.heights >= 1)


def test_labels_on_a_support_skip_the_ceria():
    s = particle("truncated_octahedron", "110", 0.0, p_support=1.0, diameter_A=(18.0, 28.0))
    xy = au_xy(s)
    box = s.box_A
    image = blurred_density_image(xy, BLUR, 0.05, (int(box[1] / 0.05), int(box[0] / 0.05)))
    assert_labels_match_peaks(s.sites.positions_A, image, 0.05, xy)
    assert s.sites.heights.sum() == len(xy) and s.info["support"]["material"] == "CeO2"


def test_cuboctahedron_labels_are_its_columns():
    """A cuboctahedron (the truncated octahedron's largest cutoff) in [110] and [100]: every column a label."""
    from ase.cluster import Octahedron

    pos = Octahedron("Au", 7, 3, latticeconstant=4.08).get_positions()
    pos -= pos.mean(axis=0)
    for zone in ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)):
        xy = (pos @ zone_rotation(np.array(zone), None, 17.0).T)[:, :2]
        positions, heights, column = density_columns(xy, BLUR, 0.05, 0.5)
        # untilted in a zone axis: each label is one column of atoms stacked along the beam, and
        # since the heights add up to all atoms, every column is a label
        stacked = cKDTree(xy).query_ball_point(positions, 0.05, return_length=True)
        assert np.array_equal(stacked, heights) and heights.sum() == len(pos)
        image = blurred_density_image(xy + 10.0, BLUR, 0.05, (int((np.ptp(xy[:, 1]) + 20) / 0.05),
                                                            int((np.ptp(xy[:, 0]) + 20) / 0.05)))
        assert_labels_match_peaks(positions + 10.0, image, 0.05, xy + 10.0)


@pytest.mark.parametrize("shape, zone, min_tilt", [("truncated_octahedron", "110", 2.7), ("twinned", "110", 0.0)])
def test_labels_are_the_peaks_of_a_multislice_image(shape, zone, min_tilt):
    """A real abTEM exit wave of the particle, imaged noise-free (infinite dose) by negative-Cs imaging
    at Scherzer focus (300 kV, Cs -15 µm, focal spread 30 Å), as the gold recipe draws."""
    pytest.importorskip("abtem")
    from atomfinder.imaging.hrtem import resample_spectrum
    from atomfinder.imaging.microscope import Microscope, scherzer_defocus_A
    from atomfinder.imaging.multislice import exit_waves
    from atomfinder.imaging.transfer import image_intensity

    s = particle(shape, zone, min_tilt, box=(36.0, 36.0), diameter_A=(15.0, 20.0))
    sampling, n = 0.05, 720
    spectrum = resample_spectrum(exit_waves(s.atoms, 300e3, (n, n), slice_thickness_A=2.0), (n, n))[0]
    lens = Microscope(energy_eV=300e3, sampling_A=sampling, Cs_A=-15e4, defocus_A=scherzer_defocus_A(-15e4, 300e3),
                      focal_spread_A=30.0, angular_spread_mrad=0.1, semiangle_cutoff_mrad=float("inf"))
    image = image_intensity(spectrum, lens)
    assert_labels_match_peaks(s.sites.positions_A, image, sampling, au_xy(s))


# --------------------------------------------------------------------------------------
# the default and the old recipes
# --------------------------------------------------------------------------------------
def test_new_recipes_label_density_peaks_and_old_configs_keep_their_rule():
    assert RECIPE.column_rule == "density_peaks"
    # configs written before the field existed keep the rule they were made with: the field's
    # default, the old recipes, and a store's recorded config ({} for the default recipe then)
    assert GoldConfig().column_rule == "separation"
    assert GoldConfig.from_dict({}).column_rule == "separation"
    for version, separation in (("0.1", 0.0), ("0.2", 0.0), ("0.3", 1.2)):
        cfg = GoldConfig.from_dict(load_config(CONFIGS / f"gold-{version}-simulation.toml", "gold").structure)
        assert cfg.column_rule == "separation" and cfg.min_column_separation_A == separation


def test_the_separation_rule_drops_the_overlapping_segments_the_density_rule_labels():
    """A 2-fold decahedron: the old rule leaves atoms of the overlapping segments unlabelled; the new labels all."""
    new = particle("decahedron", "2fold", 0.0, diameter_A=(20.0, 30.0))
    old = particle("decahedron", "2fold", 0.0, diameter_A=(20.0, 30.0), column_rule="separation")
    assert np.array_equal(new.atoms.positions, old.atoms.positions)  # the same particle: the rule draws nothing
    assert old.info["n_au_unlabelled"] > 0 and new.info["n_au_unlabelled"] == 0
    assert len(new.sites) > len(old.sites)


def test_the_recipes_preview_particle_has_every_atom_in_a_column():
    """The particle of `atomfinder simulate --system gold --seed 5 --preview` (issue 13: 6 labels under
    the old rule on a particle showing about 40 column-like peaks)."""
    recipe = default_config("gold")
    new = job_structure(recipe, 5, 0)
    old = job_structure(recipe.replace(structure={"column_rule": "separation"}), 5, 0)
    assert new.info["column_rule"] == "density_peaks" and np.array_equal(new.atoms.positions, old.atoms.positions)
    assert new.info["n_au_unlabelled"] == 0 and new.sites.heights.sum() == new.info["n_au"]
    assert old.info["n_au_unlabelled"] > new.info["n_au"] / 2  # the old rule left most atoms as background
    assert len(new.sites) > 4 * len(old.sites)


def test_column_config_round_trip_and_checks():
    cfg = GoldConfig(column_rule="density_peaks", column_blur_A=0.6, column_min_dip=0.1, column_min_peak_atoms=0.3)
    assert GoldConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"column_rule": "nearest"}, {"column_blur_A": 0.0}, {"column_min_dip": 1.0},
                {"column_min_peak_atoms": 1.0}):
        with pytest.raises(ValueError):
            GoldConfig(**bad)
