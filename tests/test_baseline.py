"""The conventional (band-pass + local maxima) baseline on synthetic lattices."""

import numpy as np
import pytest

from atomfinder.analysis.metrics import detection_scores
from atomfinder.detection.baseline import bandpass, choose_polarity, conventional_atoms

SAMPLING = 0.1  # Å/px


def _honeycomb(shape, a=1.42, sigma_A=0.3, theta=0.3):
    """Graphene-like honeycomb of Gaussian atoms; returns image and positions (x, y) px."""
    h, w = shape
    a1 = np.array([1.5 * a, np.sqrt(3) / 2 * a])
    a2 = np.array([1.5 * a, -np.sqrt(3) / 2 * a])
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    n = int(max(h, w) * SAMPLING / a) + 4
    ij = np.array([(i, j) for i in range(-n, n) for j in range(-n, n)], float)
    cells = ij[:, :1] * a1 + ij[:, 1:] * a2
    pts = np.vstack([cells, cells + [a, 0.0]]) @ rot.T / SAMPLING + [w / 2, h / 2]
    pts = pts[(pts >= -8).all(axis=1) & (pts[:, 0] < w + 8) & (pts[:, 1] < h + 8)]
    yy, xx = np.mgrid[:h, :w]
    s = sigma_A / SAMPLING
    img = np.zeros(shape)
    for x, y in pts:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    return img, pts


@pytest.fixture(scope="module")
def lattice():
    img, pts = _honeycomb((160, 160))
    noisy = img + np.random.default_rng(0).normal(0, 0.15, img.shape)
    return noisy, pts


def _inner(xy, margin=6, size=160):
    return ((xy >= margin) & (xy <= size - 1 - margin)).all(axis=1)


def _check(atoms, pts):
    """Recall over atoms inside the field, precision over detections inside it.

    ``pts`` includes atoms just outside the field (their tails reach in), so a
    detection at the border is not miscounted; a 6-px band is left out of each side.
    """
    xy = atoms.xy
    s_recall = detection_scores(xy * SAMPLING, pts[_inner(pts)] * SAMPLING, radius=0.5)  # Å
    s_prec = detection_scores(xy[_inner(xy)] * SAMPLING, pts * SAMPLING, radius=0.5)
    assert s_recall["recall"] >= 0.98 and s_prec["precision"] >= 0.98
    # Away from the border (where blobs are cut off) positions are accurate.
    t = pts[_inner(pts)][s_recall["true_idx"]]
    err = np.hypot(*(xy[s_recall["pred_idx"]] - t).T)
    inner = _inner(t, margin=12)
    assert np.sqrt((err[inner] ** 2).mean()) < 0.3  # px, i.e. < 0.03 Å
    assert np.all(atoms.label == 1) and np.all(atoms.height == -1)
    assert atoms.probability.min() >= 0 and atoms.probability.max() <= 1


def test_finds_bright_atoms(lattice):
    noisy, pts = lattice
    image = 50.0 + noisy
    assert choose_polarity(bandpass(image, SAMPLING)) == 1
    _check(conventional_atoms(image, SAMPLING), pts)


def test_finds_dark_atoms(lattice):
    noisy, pts = lattice
    image = 50.0 - noisy  # inverted contrast, e.g. the other side of Gaussian focus
    assert choose_polarity(bandpass(image, SAMPLING)) == -1
    _check(conventional_atoms(image, SAMPLING), pts)
    # Forcing the wrong polarity finds the hexagon centres instead: not the atoms.
    wrong = conventional_atoms(image, SAMPLING, polarity="bright")
    s = detection_scores(wrong.xy * SAMPLING, pts * SAMPLING, radius=0.5)
    assert s["tp"] < 0.1 * len(wrong)


def test_flat_image_and_bad_arguments():
    assert len(conventional_atoms(np.full((64, 64), 3.0), SAMPLING)) == 0
    with pytest.raises(ValueError):
        conventional_atoms(np.zeros((64, 64)), SAMPLING, polarity="up")
    with pytest.raises(ValueError):
        conventional_atoms(np.zeros((2, 64, 64)), SAMPLING)
