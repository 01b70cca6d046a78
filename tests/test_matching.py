"""One-to-one matching within a radius and the detection scores built on it."""

import numpy as np
import pytest

from atomfinder.analysis.matching import match_positions
from atomfinder.analysis.metrics import aggregate, detection_scores


def test_hand_case_precision_recall():
    true = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    pred = np.array([[0.3, 0.4], [10.0, -0.6], [50.0, 50.0]])  # 2 within radius 1, 1 FP
    pi, ti = match_positions(pred, true, radius=1.0)
    assert pi.tolist() == [0, 1] and ti.tolist() == [0, 1]
    s = detection_scores(pred, true, radius=1.0)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 1)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    # errors 0.5 and 0.6 -> rmse sqrt((0.25 + 0.36) / 2)
    assert s["rmse"] == pytest.approx(np.sqrt(0.305))


def test_one_to_one_two_predictions_near_one_atom():
    true = np.array([[5.0, 5.0]])
    pred = np.array([[5.2, 5.0], [4.9, 5.1]])
    s = detection_scores(pred, true, radius=0.5)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 0)
    assert s["pred_idx"].tolist() == [1]  # the closer one (0.141 < 0.2)


def test_maximises_number_of_pairs_before_distance():
    # Greedy nearest-first would pair A with T1 (0.1) and leave T2 unmatched.
    true = np.array([[0.0, 0.0], [0.9, 0.0]])  # T1, T2
    pred = np.array([[0.1, 0.0], [-0.8, 0.0]])  # A near both, B near T1 only
    pi, ti = match_positions(pred, true, radius=1.0)
    assert dict(zip(pi.tolist(), ti.tolist())) == {0: 1, 1: 0}


def test_boundary_and_identical_points():
    pi, ti = match_positions(np.array([[1.0, 0.0], [3.0, 3.0]]), np.array([[0.0, 0.0], [3.0, 3.0]]), 1.0)
    assert pi.tolist() == [0, 1] and ti.tolist() == [0, 1]  # radius inclusive, zero distance kept


def test_empty_inputs():
    some = np.array([[1.0, 2.0], [3.0, 4.0]])
    for pred, true, expect in [
        (np.zeros((0, 2)), some, (0, 0, 2)),
        (some, np.zeros((0, 2)), (0, 2, 0)),
        (np.zeros((0, 2)), np.zeros((0, 2)), (0, 0, 0)),
        ([], [], (0, 0, 0)),
    ]:
        pi, ti = match_positions(pred, true, 1.0)
        assert len(pi) == len(ti) == 0
        s = detection_scores(pred, true, 1.0)
        assert (s["tp"], s["fp"], s["fn"]) == expect
        assert np.isnan(s["rmse"])
    s = detection_scores(np.zeros((0, 2)), some, 1.0)  # nothing predicted: no precision, F1 0
    assert np.isnan(s["precision"]) and (s["recall"], s["f1"]) == (0.0, 0.0)
    s = detection_scores([], [], 1.0)  # nothing to count: no score at all (not 1)
    assert all(np.isnan(s[k]) for k in ("precision", "recall", "f1"))


def test_labels_confusion_and_heights():
    true = np.array([[0.0, 0.0], [5.0, 0.0], [10.0, 0.0], [15.0, 0.0]])
    pred = true + 0.1
    s = detection_scores(
        pred, true, 0.5,
        pred_labels=[1, 2, 2, 3], true_labels=[1, 2, 3, 3], n_classes=3,
        pred_heights=[2, 3, 5, -1], true_heights=[2, 4, 7, 1],
    )
    expected = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    assert np.array_equal(s["confusion"], expected)
    assert s["label_accuracy"] == pytest.approx(3 / 4)
    assert s["n_height"] == 3  # the -1 is unknown
    assert s["height_exact"] == pytest.approx(1 / 3) and s["height_within1"] == pytest.approx(2 / 3)


def test_aggregate_pools_counts_and_squared_errors():
    a = detection_scores(np.array([[0.0, 3.0]]), np.array([[0.0, 0.0]]), 5.0)  # err 3
    b = detection_scores(np.array([[0.0, 1.0], [9.0, 9.0]]), np.array([[0.0, 0.0]]), 5.0)  # err 1, 1 FP
    c = detection_scores(np.zeros((0, 2)), np.array([[1.0, 1.0]]), 5.0)  # 1 FN
    agg = aggregate([a, b, c])
    assert (agg["tp"], agg["fp"], agg["fn"], agg["n_images"]) == (2, 1, 1, 3)
    assert agg["rmse"] == pytest.approx(np.sqrt((9 + 1) / 2))  # pooled, not mean of per-image
    assert agg["precision"] == pytest.approx(2 / 3) and agg["recall"] == pytest.approx(2 / 3)
    empty = aggregate([])
    assert empty["tp"] == 0 and empty["n_images"] == 0


def test_aggregate_refuses_confusion_matrices_of_different_sizes():
    one = detection_scores(np.zeros((1, 2)), np.zeros((1, 2)), 0.5, pred_labels=[1], true_labels=[1])
    two = detection_scores(np.zeros((1, 2)), np.zeros((1, 2)), 0.5, pred_labels=[2], true_labels=[2])
    with pytest.raises(ValueError, match="same n_classes"):
        aggregate([one, two])


def test_scales_to_thousands(monkeypatch):
    """10 000 atoms are matched as many small assignment problems (one per connected component of
    the candidate pairs), never as one 10 500 x 10 000 cost matrix: the work grows with the atoms, not
    with their square."""
    import atomfinder.analysis.matching as matching

    solved = []

    def recording(cost):
        solved.append(cost.shape)
        return real(cost)

    real = matching.linear_sum_assignment
    monkeypatch.setattr(matching, "linear_sum_assignment", recording)
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.arange(100) * 2.5, np.arange(100) * 2.5)
    true = np.column_stack([gx.ravel(), gy.ravel()])  # 10 000 atoms
    pred = true + rng.normal(0, 0.1, true.shape)
    pred = np.vstack([pred, rng.uniform(0, 250, (500, 2))])  # plus clutter
    s = detection_scores(pred, true, radius=0.5)
    # only clutter next to an atom makes a component of more than one pair (1-pair ones need no solver)
    assert solved and max(r * c for r, c in solved) <= 4 and len(solved) < 500
    assert s["tp"] >= 9990 and s["fn"] <= 10 and s["fp"] >= 490
    assert s["rmse"] == pytest.approx(0.1 * np.sqrt(2), rel=0.1)
