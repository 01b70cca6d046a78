"""analysis.evaluate: known-answer scores, border exclusion, binning, detectors, report files."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from torch import nn

from atomfinder.analysis.evaluate import (
    NO_NOISE_BIN,
    UNKNOWN_BIN,
    EvalSample,
    baseline_detector,
    bin_labels,
    compare,
    evaluate,
    interior_mask,
    network_detector,
    samples_from_store,
)
from atomfinder.analysis.report import write_report
from atomfinder.analysis.thresholds import best_threshold, threshold_scan
from atomfinder.detection.peaks import AtomTable
from atomfinder.nn.card import ModelCard

torch.set_num_threads(1)

S = 0.1  # Å/pixel
SHAPE = (100, 100)  # 10 x 10 Å field
GRID_A = np.array([(x, y) for x in (2.0, 4.0, 6.0, 8.0) for y in (2.0, 4.0, 6.0, 8.0)])  # 16 interior sites


def _sample(positions_A=GRID_A, labels=None, heights=None, dose=1e3, defocus=50.0, image=None):
    n = len(positions_A)
    return EvalSample(
        image=np.zeros(SHAPE, np.float32) if image is None else image,
        sampling_A=S,
        positions_A=positions_A,
        labels=np.ones(n, int) if labels is None else labels,
        heights=heights,
        dose_e_per_A2=dose,
        defocus_A=defocus,
    )


def _table(xy_A, label=None, height=None, sampling_A=S):
    xy = np.asarray(xy_A, float).reshape(-1, 2) / sampling_A
    n = len(xy)
    return AtomTable(
        x=xy[:, 0], y=xy[:, 1],
        label=np.ones(n, int) if label is None else label,
        probability=np.ones(n),
        height=np.full(n, -1) if height is None else height,
    )


def _truth(sample):
    return _table(sample.positions_A, sample.labels, sample.heights, sample.sampling_A)


def test_shifted_detector_f1_one_and_rmse_10_pm():
    rep = evaluate([_sample(), _sample()], lambda s: _table(s.positions_A + [0.1, 0.0]))
    for rk in ("0.3", "0.5", "1"):
        m = rep["overall"][rk]
        assert m["f1"] == 1.0 and m["tp"] == 32 and m["fp"] == m["fn"] == 0
        assert m["rmse_pm"] == pytest.approx(10.0, abs=1e-6)
    assert rep["n_images"] == 2 and rep["settings"]["radii_A"] == [0.3, 0.5, 1.0]


def test_dropping_half_gives_recall_half():
    m = evaluate([_sample()], lambda s: _table(s.positions_A[::2]))["overall"]["0.5"]
    assert (m["recall"], m["precision"], m["tp"], m["fn"]) == (0.5, 1.0, 8, 8)
    assert m["f1"] == pytest.approx(2 / 3)


def test_far_false_positives_lower_precision():
    extra = np.array([(3.0, 3.0), (5.0, 5.0), (7.0, 7.0), (3.0, 7.0)])  # cell centres, sqrt(2) Å away
    m = evaluate([_sample()], lambda s: _table(np.vstack([s.positions_A, extra])))["overall"]["1"]
    assert (m["precision"], m["recall"], m["fp"]) == (0.8, 1.0, 4)


def test_threshold_scan_hand_made_and_equal_to_compare():
    # the 16 sites found with probabilities 0.2 ... 0.95 (4 each), plus 4 far false
    # alarms (cell centres) with probabilities 0.3, 0.6, 0.7, 0.99
    probs = np.repeat([0.2, 0.55, 0.75, 0.95], 4)
    extra = np.array([(3.0, 3.0), (5.0, 5.0), (7.0, 7.0), (3.0, 7.0)])
    extra_p = np.array([0.3, 0.6, 0.7, 0.99])

    def detect(sample, level=0.0):
        t = _table(np.vstack([sample.positions_A, extra]))
        p = np.concatenate([probs, extra_p])
        keep = p > level
        return AtomTable(x=t.x[keep], y=t.y[keep], label=t.label[keep], probability=p[keep], height=t.height[keep])

    rows = threshold_scan([_sample()], detect, [0.8, 0.1, 0.5])
    assert [r["threshold"] for r in rows] == [0.1, 0.5, 0.8]
    assert [(r["tp"], r["fp"], r["fn"]) for r in rows] == [(16, 4, 0), (12, 3, 4), (4, 1, 12)]
    assert rows[1]["f1"] == pytest.approx(24 / 31)
    assert best_threshold(rows) == 0.1  # 32 / 36 beats 24 / 31 and 8 / 21
    for r in rows:  # the evaluator's own scoring of a detection run at that threshold
        m = evaluate([_sample()], lambda s, lv=r["threshold"]: detect(s, lv), radii_A=(0.5,))["overall"]["0.5"]
        assert (m["tp"], m["fp"], m["fn"]) == (r["tp"], r["fp"], r["fn"])


def test_best_threshold_ties_and_errors():
    rows = [{"threshold": 0.3, "f1": 0.9}, {"threshold": 0.5, "f1": 0.9}, {"threshold": 0.7, "f1": 0.8}]
    assert best_threshold(rows) == 0.3
    with pytest.raises(ValueError, match="finite F1"):
        best_threshold([{"threshold": 0.5, "f1": float("nan")}])
    with pytest.raises(ValueError, match="empty"):
        threshold_scan([_sample()], _truth, [])


def test_border_exclusion_both_sides_and_straddling():
    border_sites = np.array([(0.3, 5.0), (-0.04, 3.0), (9.9, 9.9), (5.0, 9.5)])  # within 1 Å of the edge
    straddle_in = np.array([(1.05, 5.0)])  # scored site; found at x = 0.9 (in the band)
    straddle_out = np.array([(0.9, 7.0)])  # ignored site; found at x = 1.1 (outside the band)
    truth = np.vstack([GRID_A, border_sites, straddle_in, straddle_out])
    sample = _sample(truth)
    preds = np.vstack([GRID_A, [(0.2, 2.0), (9.5, 3.0)], [(0.9, 5.0)], [(1.1, 7.0)]])  # 2 FPs in the band
    rep = evaluate([sample], lambda s: _table(preds), radii_A=(0.3,))
    m = rep["overall"]["0.3"]
    assert (m["tp"], m["fp"], m["fn"], m["f1"]) == (17, 0, 0, 1.0)
    # without the border every band site is a miss and every band prediction a false alarm
    m0 = evaluate([sample], lambda s: _table(preds), radii_A=(0.3,), border_A=0.0)["overall"]["0.3"]
    assert (m0["tp"], m0["fp"], m0["fn"]) == (18, 2, 4)


def test_interior_mask_uses_field_of_view_edges():
    xy = np.array([(0.95, 5.0), (0.94, 5.0), (8.95, 5.0), (8.96, 5.0), (5.0, 8.95)])
    np.testing.assert_array_equal(interior_mask(xy, SHAPE, S, 1.0), [True, False, True, False, True])


def test_dose_and_defocus_binning():
    doses = [50.0, 500.0, 5e3, 5e4, 5e5, math.inf, math.nan, 700.0]
    defoci = [-300.0, -150.0, 0.0, 50.0, 150.0, 300.0, 900.0, math.nan]
    samples = [_sample(dose=d, defocus=f) for d, f in zip(doses, defoci)]
    # a detector that misses half the atoms below 1e3 e/Å²
    rep = evaluate(samples, lambda s: _table(s.positions_A[::2] if s.dose_e_per_A2 < 1e3 else s.positions_A))
    bins = {b["bin"]: b for b in rep["by_dose"]}
    assert list(bins) == ["< 1e2", "[1e2, 1e3)", "[1e3, 1e4)", "[1e4, 1e5)", ">= 1e5", NO_NOISE_BIN, UNKNOWN_BIN]
    assert [b["n_images"] for b in rep["by_dose"]] == [1, 2, 1, 1, 1, 1, 1]
    assert bins["[1e2, 1e3)"]["median"] == pytest.approx(600.0)
    assert bins["[1e2, 1e3)"]["metrics"]["0.5"]["recall"] == 0.5
    assert bins["< 1e2"]["metrics"]["0.5"]["recall"] == 0.5
    assert bins["[1e3, 1e4)"]["metrics"]["0.5"]["recall"] == 1.0
    assert bins[NO_NOISE_BIN]["metrics"]["0.5"]["recall"] == 1.0
    dbins = [b["bin"] for b in rep["by_defocus"]]
    assert dbins == ["< -200", "[-200, -100)", "[0, 100)", "[100, 200)", "[200, 400)", ">= 800", UNKNOWN_BIN]
    assert [b["n_images"] for b in rep["by_defocus"]] == [1, 1, 2, 1, 1, 1, 1]
    assert bin_labels([100.0], [1e2, 1e3])[0] == ("[100, 1000)", 100.0, 1000.0)  # edge goes up
    rows = rep["images"]
    assert len(rows) == 8 * 3
    r0 = [r for r in rows if r["image"] == 0 and r["radius_A"] == 0.5][0]
    assert (r0["dose_e_per_A2"], r0["defocus_A"], r0["tp"], r0["fp"], r0["fn"]) == (50.0, -300.0, 8, 0, 8)
    assert r0["f1"] == pytest.approx(2 / 3)


def test_confusion_and_height_accuracy():
    labels = np.tile([1, 2], 8)
    heights = np.full(16, 3)
    pred_h = np.array([3] * 8 + [4] * 4 + [6] * 4)
    rep = evaluate(
        [_sample(labels=labels, heights=heights)],
        lambda s: _table(s.positions_A, label=np.ones(16, int), height=pred_h),
        class_names=("Mo", "S"),
    )
    m = rep["overall"]["0.5"]
    assert m["confusion"] == [[8, 0], [8, 0]]
    assert m["label_accuracy"] == 0.5
    assert (m["n_height"], m["height_exact"], m["height_within1"]) == (16, 0.5, 0.75)
    # a detector without heights: height accuracy is undefined, not zero
    m2 = evaluate([_sample(labels=labels, heights=heights)], lambda s: _table(s.positions_A))["overall"]["0.5"]
    assert m2["n_height"] == 0 and math.isnan(m2["height_exact"])


class _Bright(nn.Module):
    size_multiple = 1

    def forward(self, x):
        return {"logits": torch.cat([torch.zeros_like(x[:, :1]), x[:, :1] - 1.0], dim=1)}


def _blob_sample(dose, frames=1):
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]] * S
    img = np.full(SHAPE, 1000.0)
    for x, y in GRID_A:
        img += 800 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 0.3**2))
    img = np.random.default_rng(int(dose)).poisson(img).astype(np.float32)
    return _sample(image=np.stack([img] * frames), dose=dose)


def test_network_and_baseline_detectors_compare_and_report(tmp_path):
    model = _Bright()
    card = ModelCard(
        name="bright", version="0",
        architecture={"in_channels": 1, "n_classes": 2, "depth": 0, "width": 1, "norm": "none"},
        in_channels=1, class_names=("C",), sampling_A=0.08, normalization={"kind": "global"},
        detection={"min_distance_A": 1.0, "threshold": 0.5},
    )
    seen = []

    def samples():  # a generator: compare must iterate it only once
        yield _blob_sample(300.0, frames=2)  # a single-image model uses frame 0
        yield _blob_sample(3000.0)

    rep = compare(
        samples(),
        {"network": network_detector(model, card, device="cpu"), "baseline": baseline_detector(0.5, 1.0)},
        on_sample=seen.append,
    )
    assert seen == [0, 1] and rep["n_images"] == 2
    for name in ("network", "baseline"):
        m = rep["detectors"][name]["overall"]["0.3"]
        assert m["f1"] == 1.0 and m["tp"] == 32, (name, m)
        assert m["rmse_pm"] < 5.0
    paths = write_report(rep, tmp_path / "rep", "Test report")
    names = sorted(p.name for p in paths)
    assert names == ["f1_vs_defocus.png", "f1_vs_dose.png", "report.json", "report.md", "rmse_vs_dose.png"]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
    assert not [p for p in (tmp_path / "rep").iterdir() if p.name.startswith(".")]  # no temp files left
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "# Test report" in md
    assert "| network | 0.5 |" in md and "| baseline | 0.5 |" in md
    assert "F1 network | F1 baseline" in md and "[1e2, 1e3)" in md and "[1e3, 1e4)" in md
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["detectors"]["baseline"]["overall"]["0.5"]["height_exact"] is None  # NaN -> null
    assert data["detectors"]["network"]["overall"]["0.5"]["tp"] == 32
    with pytest.raises(ValueError, match="input channel"):
        network_detector(
            model, ModelCard(
                name="fs", version="0",
                architecture={"in_channels": 3, "n_classes": 2, "depth": 0, "width": 1, "norm": "none"},
                in_channels=3, class_names=("C",), sampling_A=0.1, normalization={"kind": "global"},
            ), device="cpu",
        )(_blob_sample(1000.0, frames=2))


def test_write_report_accepts_single_evaluation_with_infinite_dose(tmp_path):
    rep = evaluate([_sample(dose=math.inf), _sample(dose=2e3)], lambda s: _table(s.positions_A))
    paths = write_report(rep, tmp_path, "single")
    data = json.loads((tmp_path / "report.json").read_text())
    assert "inf" in [r["dose_e_per_A2"] for r in data["detectors"]["detector"]["images"]]
    assert len(paths) == 5 and NO_NOISE_BIN in (tmp_path / "report.md").read_text()


def test_samples_from_store(tmp_path):
    from atomfinder.datasets.store import DatasetStore, create_or_resume, write_job

    fields = ["defocus_A", "dose_e_per_A2", "Cs_A"]
    meta = {
        "n": 3, "frames": 2, "image_px": 8, "class_names": ["Au"], "max_sites": 4,
        "microscope_fields": fields, "has_heights": True, "samples_per_job": 2, "seed": 0, "config": {},
    }
    group = create_or_resume(tmp_path / "t.zarr", meta)
    rng = np.random.default_rng(0)
    for job, n in ((0, 2), (1, 1)):
        sites = np.full((n, 4, 2), np.nan, np.float32)
        sites[:, :2] = [[0.1, 0.2], [0.3, 0.4]]
        mic = np.zeros((n, 2, 3))
        mic[:, :, 0] = [[10.0, 60.0]] * n
        mic[:, :, 1] = 500.0 * (job + 1)
        write_job(group, job, {
            "images": rng.normal(size=(n, 2, 8, 8)).astype(np.float32),
            "targets": np.zeros((n, 2, 8, 8), np.float32),
            "heights": np.zeros((n, 1, 8, 8), np.uint8),
            "sites_A": sites,
            "sites_label": np.tile(np.array([1, 1, 0, 0], np.int16), (n, 1)),
            "sites_height": np.tile(np.array([2, 3, 0, 0], np.int16), (n, 1)),
            "n_sites": np.full(n, 2, np.int32),
            "sampling_A": np.full(n, 0.05, np.float32),
            "microscope": mic,
            "drift_px": np.zeros((n, 2, 2), np.float32),
        })
    store = DatasetStore(tmp_path / "t.zarr")
    out = list(samples_from_store(store, block=2))
    assert len(out) == 3
    s = out[2]
    assert s.image.shape == (2, 8, 8) and s.sampling_A == pytest.approx(0.05)
    np.testing.assert_array_equal(s.image, store.array("images")[2])
    np.testing.assert_allclose(s.positions_A, [[0.1, 0.2], [0.3, 0.4]], rtol=1e-6)
    assert list(s.labels) == [1, 1] and list(s.heights) == [2, 3]
    assert (s.dose_e_per_A2, s.defocus_A) == (1000.0, 10.0)
    assert s.extra["frame_defocus_A"] == [10.0, 60.0] and s.extra["Cs_A"] == 0.0


def test_per_image_distribution_in_report(tmp_path):
    from atomfinder.analysis.report import per_image_f1, per_image_row

    # 9 perfect images and one whose detections all sit 0.7 Å off (F1 = 0 at 0.5 Å)
    samples = [_sample(defocus=float(i)) for i in range(10)]
    rep = evaluate(samples, lambda s: _table(s.positions_A + ([0.7, 0.0] if s.defocus_A == 9.0 else [0.0, 0.0])))
    f1 = per_image_f1(rep, 0.5)
    np.testing.assert_allclose(np.sort(f1), [0.0] + [1.0] * 9)
    assert rep["overall"]["0.5"]["f1"] == pytest.approx(0.9)  # the pooled score alone hides the failed image
    assert per_image_row("network", rep, 0.5) == ["network", "10", "1.000", "0.900", "90 %", "10 %"]
    write_report(rep, tmp_path, "t")
    assert "| detector | 10 | 1.000 | 0.900 | 90 % | 10 % |" in (tmp_path / "report.md").read_text()


def test_report_scores_confidence_and_error_bars_on_a_hand_made_case(tmp_path):
    """A detector whose confidence and sigma are known: the report's ECE and coverage follow."""
    from atomfinder.analysis.evaluate import compare
    from atomfinder.analysis.report import report_markdown, write_report
    from atomfinder.detection.peaks import AtomTable

    rng = np.random.default_rng(5)
    true_xy = np.stack(np.meshgrid(np.arange(5, 60, 5.0), np.arange(5, 60, 5.0)), -1).reshape(-1, 2)  # px
    samples = [EvalSample(image=np.zeros((64, 64), np.float32), sampling_A=0.1, positions_A=true_xy * 0.1,
                          labels=np.ones(len(true_xy), int), dose_e_per_A2=1e4) for _ in range(20)]
    sigma_px = 0.2  # per axis: 0.02 Å

    def detect(sample):
        real = true_xy + rng.normal(0, sigma_px, true_xy.shape)
        fake = rng.uniform(3, 60, (30, 2))  # far from most sites: mostly false
        xy = np.concatenate([real, fake])
        conf = np.r_[np.full(len(real), 0.95), np.full(len(fake), 0.1)]
        n = len(xy)
        return AtomTable(xy[:, 0], xy[:, 1], np.ones(n, int), np.ones(n), np.full(n, -1),
                         confidence=conf, sigma_A=np.full(n, sigma_px * 0.1))

    rep = compare(samples, {"network": detect}, radii_A=(0.5,), border_A=0.5)
    trust = rep["detectors"]["network"]["trust"]
    assert trust["n_true"] > 0 and trust["n_detections"] > trust["n_true"]
    high = [b for b in trust["reliability"] if b["lo"] >= 0.9][0]
    assert high["fraction_true"] > 0.98  # a fake next to a site may take its match
    low = [b for b in trust["reliability"] if b["hi"] <= 0.2][0]
    assert low["fraction_true"] < 0.2  # a few fakes land on sites
    assert trust["ece"] < 0.1
    assert trust["sigma"]["within_1_sigma"] == pytest.approx(0.683, abs=0.03)
    assert trust["sigma_by_dose"][0]["bin"] == "[1e4, 1e5)"
    area = 20 * (6.4 - 1.0) ** 2 / 100  # nm², 0.5 Å band excluded
    fp = rep["detectors"]["network"]["overall"]["0.5"]["fp"]
    assert rep["detectors"]["network"]["overall"]["0.5"]["fp_per_10nm2"] == pytest.approx(10 * fp / area)
    assert "expected calibration error" in report_markdown(rep, "t")
    paths = write_report(rep, tmp_path, "t")
    assert (tmp_path / "reliability.png").is_file() and tmp_path / "reliability.png" in paths


def test_the_error_bars_by_dose_use_the_given_dose_edges():
    """compare(dose_edges=...) tabulated the error bars in the fixed DOSE_EDGES bins (audit 10b)."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(5, 60, 5.0), np.arange(5, 60, 5.0)), -1).reshape(-1, 2)  # px
    samples = [EvalSample(image=np.zeros((64, 64), np.float32), sampling_A=0.1, positions_A=grid * 0.1,
                          labels=np.ones(len(grid), int), dose_e_per_A2=dose) for dose in (5e2, 2e4)]

    def detect(sample):
        xy = grid + rng.normal(0, 0.2, grid.shape)
        n = len(xy)
        return AtomTable(xy[:, 0], xy[:, 1], np.ones(n, int), np.ones(n), np.full(n, -1),
                         confidence=np.full(n, 0.9), sigma_A=np.full(n, 0.02))

    rep = compare(samples, {"network": detect}, radii_A=(0.5,), dose_edges=(1e3,))["detectors"]["network"]
    dose_bins = [b["bin"] for b in rep["by_dose"]]
    error_bins = [b["bin"] for b in rep["trust"]["sigma_by_dose"]]
    assert len(dose_bins) == 2 and error_bins == dose_bins


# -- a single-image model beside a focal-series model (issue 14.4) ----------------------


def test_single_image_model_detections_move_back_by_the_known_drift_of_its_frame():
    """The single-image model of `evaluate --versus` sees the middle frame; its atoms are
    moved into frame 0's grid by the frame's recorded drift, so a drifted copy of frame 0
    scores as frame 0 itself."""
    import dataclasses

    from atomfinder.analysis.evaluate import frame_index, undo_drift
    from atomfinder.detection.peaks import AtomTable

    assert frame_index(3, "middle") == 1 and frame_index(3, 0) == 0 and frame_index(4, "middle") == 2
    with pytest.raises(ValueError, match="outside a series of 3"):
        frame_index(3, 3)
    with pytest.raises(ValueError, match="frame must be"):
        network_detector(None, None, frame="last")
    atoms = AtomTable(x=[10.0, 20.0], y=[5.0, 7.5], label=[1, 1], probability=[0.9, 0.8], height=[-1, -1])
    moved = undo_drift(atoms, np.array([1.5, -0.5]))
    np.testing.assert_allclose(moved.x, [8.5, 18.5])
    np.testing.assert_allclose(moved.y, [5.5, 8.0])
    np.testing.assert_array_equal(moved.probability, atoms.probability)

    # end to end through network_detector with a stand-in network (_Bright: atom logit = normalised
    # image - 1) on a 3-frame series whose frames hold the same Gaussian atoms moved by a known drift
    rng = np.random.default_rng(0)
    truth = np.array([(x, y) for x in range(12, 90, 12) for y in range(12, 90, 12)], float)
    truth += rng.uniform(-2, 2, truth.shape)  # (x, y) px of frame 0's 49 atoms, >= 8 px apart
    drift = np.array([[0.0, 0.0], [1.25, -0.75], [2.0, 1.0]])  # (x, y) px per frame
    yy, xx = np.mgrid[:96, :96].astype(float)
    series = np.stack([sum(np.exp(-((xx - x - dx) ** 2 + (yy - y - dy) ** 2) / (2 * 2.0**2)) for x, y in truth)
                       for dx, dy in drift]).astype(np.float32)
    sample = EvalSample(image=series, sampling_A=0.1, positions_A=truth * 0.1, labels=np.ones(len(truth), int),
                        drift_px=drift)
    with pytest.raises(ValueError, match="one \\(x, y\\) row per frame"):
        EvalSample(image=series, sampling_A=0.1, positions_A=np.zeros((0, 2)), labels=[], drift_px=drift[:2])
    card = ModelCard(
        name="bright", version="0",
        architecture={"in_channels": 1, "n_classes": 2, "depth": 0, "width": 1, "norm": "none"},
        in_channels=1, class_names=("C",), sampling_A=0.1, normalization={"kind": "global"},
        detection={"min_distance_A": 0.4, "threshold": 0.5},
    )

    def nearest_px(atoms, points):
        assert len(atoms.x) == len(points)  # every atom found once
        return cKDTree(points).query(np.c_[atoms.x, atoms.y])[0]

    middle = network_detector(_Bright(), card, "cpu", frame="middle", precision="float32")
    assert np.max(nearest_px(middle(sample), truth)) < 0.1  # moved back onto frame 0's atoms (1.46 px away)
    # without a recorded drift the middle frame's atoms are scored where they were found
    unknown = dataclasses.replace(sample, drift_px=None)
    assert np.max(nearest_px(middle(unknown), truth + drift[1])) < 0.1
    # frame 0 needs no move; the last frame is moved back by its own drift
    assert np.max(nearest_px(network_detector(_Bright(), card, "cpu", precision="float32")(sample), truth)) < 0.1
    last = network_detector(_Bright(), card, "cpu", frame=2, precision="float32")
    assert np.max(nearest_px(last(sample), truth)) < 0.1


def test_cli_evaluate_versus_scores_a_single_image_model_on_the_middle_frame(tmp_path):
    """`atomfinder evaluate --model <3-frame model> --versus <1-frame model>` scores both on the same series."""
    pytest.importorskip("abtem")
    from typer.testing import CliRunner

    from atomfinder.cli import app
    from atomfinder.datasets.generate import simulate_to_store
    from conftest import save_untrained_model, tiny_config

    store = simulate_to_store(tiny_config(frames=3, focal_step_A=(40.0, 120.0)), 2, tmp_path / "focal.zarr",
                              seed=3, workers=0)
    focal = save_untrained_model(tmp_path / "focal", 0.12, in_channels=3, name="tinyfocal")
    single = save_untrained_model(tmp_path / "single", 0.12, name="tinysingle")
    other = save_untrained_model(tmp_path / "other", 0.12, name="other", class_names=("Au",))
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--model", str(focal), "--versus", str(single), "--data", str(store),
                                 "--report", str(tmp_path / "rep"), "--no-structures"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert list(report["detectors"]) == ["network", "tinysingle 0 (middle frame)", "baseline"]
    assert report["n_images"] == 2
    assert "tinysingle 0 (middle frame)" in (tmp_path / "rep" / "report.md").read_text()
    result = runner.invoke(app, ["evaluate", "--model", str(focal), "--versus", str(other), "--data", str(store)])
    assert result.exit_code == 2 and "classes" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["evaluate", "--model", str(focal), "--versus", str(single), "--versus-frame", "0",
                                 "--data", str(store), "--report", str(tmp_path / "rep0"), "--no-structures",
                                 "--no-baseline"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "rep0" / "report.json").read_text())
    assert list(report["detectors"]) == ["network", "tinysingle 0 (frame 0)"]
    for bad in ("3", "last"):
        result = runner.invoke(app, ["evaluate", "--model", str(focal), "--versus", str(single), "--versus-frame", bad,
                                     "--data", str(store)])
        assert result.exit_code == 2 and "--versus-frame" in result.output and "Traceback" not in result.output


def test_specimen_of_a_store_sample_follows_jobs_and_waves():
    from atomfinder.analysis.evaluate import store_specimen

    # graphene and gold recipes: one structure per job
    assert [store_specimen(i, 8, 8) for i in (0, 7, 8, 15, 16)] == [0, 0, 1, 1, 2]
    assert [store_specimen(i, 16, 16) for i in (0, 15, 16)] == [0, 0, 1]
    # two waves per job of 16, and a wave longer than its job
    assert [store_specimen(i, 16, 8) for i in (0, 7, 8, 15, 16, 24)] == [0, 0, 1, 1, 2, 3]
    assert [store_specimen(i, 8, 16) for i in (0, 7, 8)] == [0, 0, 1]


def test_specimen_interval_resamples_specimens_not_images():
    from atomfinder.analysis.evaluate import specimen_interval

    # two specimens, one perfect and one failing, each seen in 4 images
    counts = [(10, 0, 0)] * 4 + [(0, 10, 10)] * 4
    interval, n = specimen_interval(counts, [0] * 4 + [1] * 4)
    assert n == 2
    lo, hi = interval
    assert lo == 0.0 and hi == 1.0  # a resample may hold only the failing or only the perfect one
    # the same counts as 8 independent images give a far narrower interval
    narrow, n8 = specimen_interval(counts, list(range(8)))
    assert n8 == 8 and narrow[0] < 0.5 < narrow[1] and narrow[1] - narrow[0] < 0.8  # pooled F1 0.5
    # reproducible, and None where it cannot be computed
    assert specimen_interval(counts, list(range(8))) == (narrow, 8)
    assert specimen_interval([(5, 1, 1)], [0]) == (None, 1)
    with pytest.raises(ValueError):
        specimen_interval(counts, [0])
