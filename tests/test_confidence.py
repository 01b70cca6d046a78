"""Calibrated confidence and positional error bars (detection.confidence, analysis.calibration)."""

import numpy as np
import pytest

from atomfinder.detection.confidence import (
    Calibration,
    design_matrix,
    disk_means,
    expected_calibration_error,
    fit_calibration,
    local_noise_map,
    neighbour_spread,
    peak_features,
    reliability_bins,
    sigma_coverage,
)


def _hand_made(n: int, seed: int):
    """Detections whose truth probability and position error are known functions of the features."""
    rng = np.random.default_rng(seed)
    peak = rng.uniform(0.5, 1.0, n)
    disk = np.clip(peak - rng.uniform(0.0, 0.4, n), 0.05, 0.999)
    noise = rng.uniform(0.1, 1.0, n)
    f = np.column_stack([peak, disk, noise])
    # truth: logistic in logit(disk) and log(noise)
    X = design_matrix(f)
    p_true = 1.0 / (1.0 + np.exp(-(0.5 + 1.2 * X[:, 2] - 1.5 * X[:, 3])))
    is_true = rng.random(n) < p_true
    # error: Gaussian per axis with sigma = 0.05 Å * noise
    sigma = 0.05 * noise
    err = rng.normal(0.0, 1.0, (n, 2)) * sigma[:, None]
    return f, is_true, err, p_true, sigma


def test_calibration_recovers_known_probabilities_and_sigmas():
    f, y, err, p_true, sigma = _hand_made(20000, 0)
    fit = fit_calibration(f, y, err, radius_px=4.0)
    ft, yt, errt, pt, st = _hand_made(20000, 1)  # independent draw
    conf = fit.confidence(ft)
    assert np.all((conf >= 0) & (conf <= 1))
    # calibrated on independent data, and close to the true probabilities themselves
    assert expected_calibration_error(conf, yt) < 0.02
    assert np.mean(np.abs(conf - pt)) < 0.04
    # error bars: 68 % within 1 sigma, 95 % within 2, and sigma itself recovered
    cov = sigma_coverage(errt[yt], fit.sigma_A(ft[yt]))
    assert abs(cov["within_1_sigma"] - 0.683) < 0.02
    assert abs(cov["within_2_sigma"] - 0.954) < 0.02
    assert np.median(np.abs(fit.sigma_A(ft) / st - 1)) < 0.1
    # round trip through the card's dict
    again = Calibration.from_dict(fit.to_dict())
    np.testing.assert_allclose(again.confidence(ft), conf)
    np.testing.assert_allclose(again.sigma_A(ft), fit.sigma_A(ft))


def test_confidence_is_monotone_in_the_evidence():
    f, y, err, _, _ = _hand_made(5000, 2)
    fit = fit_calibration(f, y, err, radius_px=4.0)
    base = np.array([[0.95, 0.5, 0.5]])
    stronger = np.array([[0.95, 0.9, 0.5]])
    noisier = np.array([[0.95, 0.5, 0.95]])
    assert fit.confidence(stronger)[0] >= fit.confidence(base)[0] >= fit.confidence(noisier)[0]
    assert fit.sigma_A(noisier)[0] > fit.sigma_A(base)[0]


def test_fit_errors():
    f, y, err, _, _ = _hand_made(100, 3)
    with pytest.raises(ValueError, match="both true and false"):
        fit_calibration(f, np.ones(len(y), bool), err, 4.0)
    with pytest.raises(ValueError, match="one row per detection"):
        fit_calibration(f[:10], y, err, 4.0)
    with pytest.raises(ValueError, match="features"):
        Calibration.from_dict(fit_calibration(f, y, err, 4.0).to_dict() | {"features": ["peak"]})


def test_reliability_bins_and_ece_on_a_hand_made_case():
    conf = np.array([0.05, 0.05, 0.95, 0.95, 0.95, 0.95])
    true = np.array([False, False, True, True, True, False])
    rows = reliability_bins(conf, true, n_bins=10)
    assert [(r["n"], r["fraction_true"]) for r in rows] == [(2, 0.0), (4, 0.75)]
    # |0 - 0.05| * 2/6 + |0.75 - 0.95| * 4/6
    assert expected_calibration_error(conf, true) == pytest.approx(0.05 * 2 / 6 + 0.2 * 4 / 6)


def test_disk_means_and_features_on_a_hand_made_map():
    img = np.zeros((20, 20), np.float32)
    yy, xx = np.mgrid[:20, :20]
    img[(yy - 10) ** 2 + (xx - 10) ** 2 <= 9] = 1.0  # a disk of radius 3 at (10, 10)
    m = disk_means(img, np.array([10.0, 10.0, 0.0]), np.array([10.0, 0.0, 0.0]), 3.0)
    assert m[0] == pytest.approx(1.0)
    assert m[1] == pytest.approx(0.0)
    assert m[2] == pytest.approx(0.0)  # corner: only pixels inside the image count
    half = disk_means(img, np.array([13.0]), np.array([10.0]), 3.0)[0]
    assert 0.3 < half < 0.7
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (64, 64)).astype(np.float32)
    smooth = np.cos(2 * np.pi * np.arange(64) / 20.0)[None, :] * np.ones((64, 1), np.float32)
    f = peak_features(img, np.array([10.0]), np.array([10.0]), np.array([1.0]), smooth[:20, :20], 3.0)
    assert f.shape == (1, 5) and f[0, 0] == 1.0 and f[0, 1] == pytest.approx(1.0)
    # the Laplacian measure: ~sqrt(2/pi) for unit white noise, small for a smooth fringe
    assert local_noise_map(noise)[10:-10, 10:-10].mean() == pytest.approx(np.sqrt(2 / np.pi), rel=0.05)
    assert local_noise_map(smooth).max() < 0.05
    assert peak_features(img, np.zeros(0), np.zeros(0), np.zeros(0), smooth, 3.0).shape == (0, 5)
    assert f[0, 3] == 1.0  # a lone detection has no neighbours: spread 1


def _honeycomb(n: int, bond: float = 1.42) -> np.ndarray:
    """Atom positions of a graphene-like honeycomb, ``n x n`` cells (Å)."""
    a1, a2 = np.array([1.5 * bond, np.sqrt(3) / 2 * bond]), np.array([1.5 * bond, -np.sqrt(3) / 2 * bond])
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    cells = i.reshape(-1, 1) * a1 + j.reshape(-1, 1) * a2
    return np.concatenate([cells, cells + np.array([bond, 0.0])])


def test_neighbour_spread_is_zero_in_a_lattice_and_large_for_scattered_points():
    xy = _honeycomb(12) / 0.1  # pixels at 0.1 Å/px: the measure is scale-free
    spread = neighbour_spread(xy[:, 0], xy[:, 1])
    centre = np.linalg.norm(xy - xy.mean(axis=0), axis=1) < 0.5 * np.ptp(xy[:, 0]) / 2
    assert np.all(spread[centre] < 1e-9)  # three equal bonds inside the sheet
    assert spread.max() > 0.2  # the sheet's edge: a bond missing
    rng = np.random.default_rng(0)
    scattered = rng.uniform(0, 500, (400, 2))
    assert np.median(neighbour_spread(scattered[:, 0], scattered[:, 1])) > 0.15
    assert np.all(neighbour_spread(np.zeros(3), np.arange(3.0)) == 1.0)  # fewer than 4 detections
    assert neighbour_spread(np.zeros(0), np.zeros(0)).shape == (0,)


def test_a_fourth_feature_enters_the_fit_and_old_three_feature_calibrations_still_load():
    f, y, err, _, _ = _hand_made(8000, 4)
    rng = np.random.default_rng(5)
    # false detections scatter (large spread), real ones sit in a lattice (small spread)
    spread = np.where(y, rng.uniform(0.0, 0.05, len(y)), rng.uniform(0.1, 0.6, len(y)))
    f4 = np.column_stack([f, spread])
    fit3 = fit_calibration(f4[:, :3], y, err, radius_px=4.0)
    fit4 = fit_calibration(f4, y, err, radius_px=4.0)
    assert fit3.features == ("peak", "disk_mean", "local_noise")
    assert fit4.features == ("peak", "disk_mean", "local_noise", "neighbour_spread")
    # the spread separates real from false: a lower Brier score than without it
    brier3 = np.mean((fit3.confidence(f4) - y) ** 2)
    brier4 = np.mean((fit4.confidence(f4) - y) ** 2)
    assert brier4 < 0.5 * brier3
    # a three-feature calibration (cards fitted before the fourth feature) reads the first three columns
    old = Calibration.from_dict(fit3.to_dict())
    np.testing.assert_allclose(old.confidence(f4), fit3.confidence(f4[:, :3]))
    again = Calibration.from_dict(fit4.to_dict())
    np.testing.assert_allclose(again.confidence(f4), fit4.confidence(f4))
    with pytest.raises(ValueError, match="needs"):
        fit4.confidence(f4[:, :3])
    with pytest.raises(ValueError, match="weights"):
        Calibration.from_dict(fit3.to_dict() | {"features": list(fit4.features)})


def test_confidence_floor_scan_on_a_hand_made_case():
    from atomfinder.analysis.calibration import confidence_floor_scan

    conf = np.array([0.9, 0.8, 0.1, 0.05])
    true = np.array([True, True, False, True])
    rows = {r["threshold"]: r for r in confidence_floor_scan(conf, true, n_sites=4, floors=(0.0, 0.1, 0.15, 0.95))}
    assert (rows[0.0]["kept"], rows[0.0]["precision"], rows[0.0]["recall"]) == (4, 0.75, 0.75)
    assert (rows[0.1]["kept"], rows[0.1]["precision"], rows[0.1]["recall"]) == (3, pytest.approx(2 / 3), 0.5)
    assert (rows[0.15]["kept"], rows[0.15]["precision"], rows[0.15]["recall"]) == (2, 1.0, 0.5)
    assert rows[0.15]["f1"] == pytest.approx(2 / 3)
    assert (rows[0.95]["kept"], rows[0.95]["recall"], rows[0.95]["f1"]) == (0, 0.0, 0.0)


def test_detect_array_drops_detections_below_the_confidence_floor():
    import dataclasses
    from pathlib import Path

    import tifffile

    from atomfinder.detection.pipeline import confidence_floor, detect_array
    from atomfinder.nn.card import load_model, resolve_model

    net, card = load_model(resolve_model("gold"))  # a calibrated card
    image = tifffile.imread(Path(__file__).resolve().parents[1] / "examples" / "graphene_defect_hrtem.tif")[:256, :256]
    everything = detect_array(net, card, image.astype(np.float32), 0.108, min_confidence=0.0)
    c = everything.atoms.confidence
    floor = float(np.median(c))
    assert 0 < np.count_nonzero(c < floor) < len(c)
    kept = detect_array(net, card, image.astype(np.float32), 0.108, min_confidence=floor)
    assert len(kept.atoms) == np.count_nonzero(c >= floor)
    np.testing.assert_allclose(kept.atoms.xy, everything.atoms.xy[c >= floor])
    assert kept.features.shape == (len(kept.atoms), 5)
    # the card's floor is the default; a card without calibration has none
    with_floor = dataclasses.replace(card, detection=dict(card.detection) | {"min_confidence": floor})
    assert confidence_floor(with_floor) == floor
    assert len(detect_array(net, with_floor, image.astype(np.float32), 0.108).atoms) == len(kept.atoms)
    assert confidence_floor(dataclasses.replace(with_floor, calibration={})) == 0.0
    with pytest.raises(ValueError, match="min_confidence"):
        confidence_floor(card, 1.5)


def test_calibrate_refuses_a_bad_confidence_floor_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from atomfinder.cli import app

    result = CliRunner().invoke(app, ["calibrate", "--model", "gold", "--data", str(tmp_path / "none.zarr"),
                                      "--min-confidence", "often"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--min-confidence" in lines[0], result.output


def test_map_background_is_low_on_a_crisp_map_and_high_in_a_haze():
    from atomfinder.detection.confidence import map_background

    xy = _honeycomb(10) / 0.1  # pixels at 0.1 Å/px
    xy = xy - xy.min(axis=0) + 20
    h = w = int(xy.max()) + 21
    yy, xx = np.mgrid[:h, :w]
    crisp = np.zeros((h, w), np.float32)
    for x, y in xy:
        crisp[(yy - y) ** 2 + (xx - x) ** 2 <= 16] = 1.0  # disks of 0.4 Å
    rng = np.random.default_rng(1)
    haze = np.clip(crisp * 0.8 + rng.uniform(0.0, 0.6, crisp.shape), 0, 1).astype(np.float32)
    inner = np.all((xy > 50) & (xy < h - 50), axis=1)
    clean = map_background(crisp, xy[:, 0], xy[:, 1], 4.0)
    hazy = map_background(haze, xy[:, 0], xy[:, 1], 4.0)
    assert np.all(clean[inner] < 0.02)
    assert np.all(hazy[inner] > 0.2)
    assert map_background(crisp, np.zeros(0), np.zeros(0), 4.0).shape == (0,)
    # the feature order is fixed: a calibration may skip one but not reorder them
    f, y, err, _, _ = _hand_made(400, 6)
    f5 = np.column_stack([f, rng.uniform(0, 0.5, (len(f), 2))])
    fit = fit_calibration(f5, y, err, 4.0, names=("peak", "disk_mean", "local_noise", "map_background"))
    assert fit.features[-1] == "map_background" and len(fit.logistic) == 5
    with pytest.raises(ValueError, match="features"):
        fit_calibration(f5, y, err, 4.0, names=("peak", "disk_mean", "local_noise", "map_background", "neighbour_spread"))


def test_peak_pixels_finds_the_peak_a_refined_position_rounds_away_from():
    from atomfinder.analysis.calibration import peak_pixels

    atom = np.zeros((32, 32))
    atom[10, 20], atom[10, 21] = 0.9, 0.8  # peak at row 10, column 20; its right neighbour nearly as high
    atom[25, 5] = 0.7
    rows, cols = peak_pixels(atom, np.array([[20.6, 10.4], [5.2, 24.7], [-0.4, 31.6]]))
    assert rows.tolist()[:2] == [10, 25] and cols.tolist()[:2] == [20, 5]  # not (10, 21), not (25, 5) by luck
    assert 0 <= rows[2] < 32 and 0 <= cols[2] < 32  # positions past the edge stay on the grid
