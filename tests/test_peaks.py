"""Peak finding on probability maps: sub-pixel accuracy, spacing, threshold, labels, table."""

import numpy as np
import pandas as pd
import pytest

from atomfinder.detection.peaks import TABLE_COLUMNS, AtomTable, find_atoms


def _blobs(shape, centres, sigma=1.5, amplitudes=None):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape)
    amplitudes = np.ones(len(centres)) if amplitudes is None else amplitudes
    for (x, y), a in zip(centres, amplitudes):
        out += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return out


def _probs(atom, split=None):
    """[k, H, W] probabilities whose atom probability is ``atom``."""
    atom = np.clip(atom, 0, 1)
    if split is None:
        return np.stack([1 - atom, atom])
    return np.stack([1 - atom, atom * split, atom * (1 - split)])


def _match_error(found_xy, true_xy):
    d = np.hypot(*(found_xy[:, None, :] - true_xy[None, :, :]).transpose(2, 0, 1))
    return d.min(axis=0)


def test_subpixel_gaussian_blobs():
    rng = np.random.default_rng(0)
    grid = np.array([(x, y) for x in range(10, 60, 12) for y in range(10, 50, 12)], float)
    true = grid + rng.uniform(-0.5, 0.5, grid.shape)
    atoms = find_atoms(_probs(0.95 * _blobs((60, 70), true)), min_distance_px=5)
    assert len(atoms) == len(true)
    assert _match_error(atoms.xy, true).max() < 0.1
    assert np.all(atoms.label == 1) and np.all(atoms.height == -1)
    assert np.all(np.diff(atoms.probability) <= 0)  # sorted by probability


def test_subpixel_saturated_disks():
    """Flat-topped (saturated) peaks, as confident networks produce, are centred too."""
    true = np.array([[12.3, 14.6], [30.7, 15.2], [20.5, 31.8]])
    yy, xx = np.mgrid[:45, :45]
    atom = np.zeros((45, 45))
    for x, y in true:
        atom = np.maximum(atom, np.clip(3.5 - np.hypot(xx - x, yy - y), 0, 1))
    atoms = find_atoms(_probs(atom), min_distance_px=8)
    assert len(atoms) == 3
    assert _match_error(atoms.xy, true).max() < 0.1


def test_min_distance_and_threshold():
    # Two strong blobs 4 px apart, one weak blob far away.
    true = np.array([[20.0, 20.0], [24.0, 20.0], [45.0, 40.0]])
    atom = 0.9 * _blobs((60, 60), true, sigma=1.2, amplitudes=np.array([1.0, 0.8, 0.4]))
    atoms = find_atoms(_probs(atom), min_distance_px=3, threshold=0.3)
    assert len(atoms) == 3
    atoms = find_atoms(_probs(atom), min_distance_px=6, threshold=0.3)
    assert len(atoms) == 2  # the 0.8 blob is within 6 px of the stronger one
    xy = atoms.xy
    assert np.hypot(*(xy[0] - xy[1])) >= 6
    assert np.hypot(*(xy[0] - true[0])) < 1.0  # the stronger one survives
    atoms = find_atoms(_probs(atom), min_distance_px=3, threshold=0.5)
    assert len(atoms) == 2 and atoms.probability.min() >= 0.5
    assert len(find_atoms(_probs(np.zeros((20, 20))), min_distance_px=3)) == 0


def test_labels_and_heights():
    true = np.array([[10.0, 10.0], [30.0, 12.0]])
    atom = 0.99 * _blobs((40, 40), true)
    split = np.where(np.arange(40)[None, :] < 20, 0.8, 0.3) * np.ones((40, 1))
    heights = np.where(np.arange(40)[None, :] < 20, 2.4, 6.6) * np.ones((40, 1))
    atoms = find_atoms(_probs(atom, split), min_distance_px=5, heights=heights)
    order = np.argsort(atoms.x)
    assert atoms.label[order].tolist() == [1, 2]
    assert atoms.height[order].tolist() == [2, 7]
    assert np.allclose(atoms.probability, 0.99, atol=1e-6)


def test_to_frame_columns_and_missing_height(tmp_path):
    t = AtomTable(x=[1.0, 2.5], y=[3.0, 4.0], label=[1, 2], probability=[0.9, 0.8],
                  height=[-1, 3])
    df = t.to_frame(["Mo", "S"], sampling_A=0.1)
    assert tuple(df.columns) == TABLE_COLUMNS
    assert df["label"].tolist() == ["Mo", "S"]
    assert np.allclose(df["x_angstrom"], [0.1, 0.25]) and np.allclose(df["y_angstrom"], [0.3, 0.4])
    assert pd.isna(df["height"].iloc[0]) and df["height"].iloc[1] == 3
    df.to_csv(tmp_path / "a.csv", index=False)
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert lines[0] == ",".join(TABLE_COLUMNS)
    assert lines[1].endswith(",0.9,")  # empty height
    assert len(AtomTable.empty().to_frame(["C"], 0.1)) == 0
    with pytest.raises(ValueError):
        t.to_frame(["Mo"], 0.1)


def test_detection_imports_stay_light():
    """Finding and scoring atoms loads neither the simulation stack nor torch."""
    import subprocess
    import sys

    code = (
        "import sys, atomfinder.detection, atomfinder.detection.peaks, "
        "atomfinder.detection.baseline, atomfinder.analysis.metrics; "
        "print(sorted({'abtem', 'ase', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_saturated_neighbours_closer_than_twice_min_distance_are_all_found():
    """A confident network saturates near 1 over each atom's disk; a neighbour's disk
    edge that is a hair brighter than this atom's centre, and lies within
    ``min_distance_px`` of it, must not hide it (graphene: atoms 1.42 Å apart,
    min distance 1.0 Å, disks of radius ~0.4 Å)."""
    rng = np.random.default_rng(3)
    a = 14.2  # px between neighbours, as graphene at 0.1 Å/px
    cell = np.array([[a * np.sqrt(3), 0.0], [a * np.sqrt(3) / 2, 1.5 * a]])
    basis = np.array([[0.0, 0.0], [a * np.sqrt(3) / 2, a / 2]])
    sites = np.array([i * cell[0] + j * cell[1] + b for i in range(-3, 6) for j in range(0, 5) for b in basis])
    sites = sites[(sites[:, 0] > 8) & (sites[:, 0] < 112) & (sites[:, 1] > 8) & (sites[:, 1] < 112)]
    yy, xx = np.mgrid[:120, :120]
    atom = np.zeros((120, 120))
    for x, y in sites:
        level = 1 - rng.uniform(1e-5, 1e-3)  # saturated, with tiny differences
        ramp = 1e-4 * rng.normal() * (xx - x)  # and a tiny tilt across the disk
        disk = np.clip(4.5 - np.hypot(xx - x, yy - y), 0, 1) * (level + ramp)
        atom = np.maximum(atom, disk)
    atoms = find_atoms(_probs(atom), min_distance_px=10)
    assert len(atoms) == len(sites)
    assert _match_error(atoms.xy, sites).max() < 0.2


def _reference_centroid(image, row, col, r, n_iter=50):
    """The iterated anti-aliased-disk centroid for one peak, written plainly."""
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    img = np.maximum(image, 0)
    y, x = float(row), float(col)
    for _ in range(n_iter):
        w = np.clip(r + 0.5 - np.hypot(yy - y, xx - x), 0, 1) * img
        ny, nx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
        d = np.hypot(ny - row, nx - col)
        if d > r:  # moves are limited to r from the start
            ny, nx = row + (ny - row) * r / d, col + (nx - col) * r / d
        y, x = ny, nx
    return y, x


def test_refinement_equals_the_plain_centroid_iteration():
    from atomfinder.detection.peaks import refine_subpixel

    rng = np.random.default_rng(3)
    true = rng.uniform(8, 52, size=(12, 2))
    image = _blobs((60, 60), true, sigma=2.0, amplitudes=rng.uniform(0.5, 1.0, 12)) + 0.05 * rng.random((60, 60))
    rows, cols = np.rint(true[:, 1]).astype(int), np.rint(true[:, 0]).astype(int)
    y, x = refine_subpixel(image, rows, cols, radius_px=3.5, n_iter=50, tol_px=1e-4)
    for i in range(len(rows)):
        ry, rx = _reference_centroid(image, rows[i], cols[i], 3.5)
        assert abs(y[i] - ry) < 1e-3 and abs(x[i] - rx) < 1e-3
    # a peak at the image edge: the window is cut, nothing breaks
    y, x = refine_subpixel(image, np.array([0, 59]), np.array([0, 59]), radius_px=3.5)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(x))
