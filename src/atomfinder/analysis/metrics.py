"""Detection scores of predicted atoms against ground truth, and their aggregation.

Per image, :func:`detection_scores` returns counts (true/false positives, misses,
summed squared position errors, label confusion, height hits) and the rates derived
from them. :func:`aggregate` sums the counts of many images and re-derives the rates,
so a report binned by dose or defocus pools atoms, not per-image averages.

Conventions for empty cases: precision is 1 when nothing was predicted (no false
claims), recall is 1 when there was nothing to find, F1 is 0 when precision + recall
is 0, and RMSE and accuracies are NaN when there are no matched pairs to average.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from atomfinder.analysis.matching import match_positions

COUNT_KEYS = (
    "tp",
    "fp",
    "fn",
    "sq_err_sum",
    "n_height",
    "height_exact_count",
    "height_within1_count",
)


def detection_rates(tp: int, fp: int, fn: int) -> dict[str, float]:
    """``precision``, ``recall`` and ``f1`` from counts (1 for a rate with nothing to count)."""
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def _derive(counts: dict[str, Any]) -> dict[str, Any]:
    """Add precision, recall, f1, rmse and accuracies to a dict of counts."""
    tp = counts["tp"]
    out = dict(counts)
    out.update(detection_rates(tp, counts["fp"], counts["fn"]))
    out["rmse"] = float(np.sqrt(counts["sq_err_sum"] / tp)) if tp else float("nan")
    conf = counts.get("confusion")
    if conf is not None and conf.sum():
        out["label_accuracy"] = float(np.trace(conf) / conf.sum())
    else:
        out["label_accuracy"] = float("nan")
    nh = counts["n_height"]
    out["height_exact"] = counts["height_exact_count"] / nh if nh else float("nan")
    out["height_within1"] = counts["height_within1_count"] / nh if nh else float("nan")
    return out


def detection_scores(
    pred_xy: np.ndarray,
    true_xy: np.ndarray,
    radius: float,
    pred_labels: np.ndarray | None = None,
    true_labels: np.ndarray | None = None,
    n_classes: int | None = None,
    pred_heights: np.ndarray | None = None,
    true_heights: np.ndarray | None = None,
) -> dict[str, Any]:
    """Score predicted positions (and labels, heights) against the truth.

    Parameters
    ----------
    pred_xy, true_xy : ndarray, shape (n, 2), (m, 2)
        Positions in a common unit (pixels or Å).
    radius : float
        Matching radius in that unit (see :func:`~atomfinder.analysis.matching.match_positions`).
    pred_labels, true_labels : ndarray of int, optional
        1-based class labels; with both, a confusion matrix over matched pairs is
        computed.
    n_classes : int, optional
        Number of non-background classes (default: the largest label seen).
    pred_heights, true_heights : ndarray of int, optional
        Column heights; pairs where either is negative (unknown) are skipped.

    Returns
    -------
    dict
        Counts: ``tp``, ``fp``, ``fn``, ``sq_err_sum`` (summed squared distance of
        matched pairs, unit²), ``confusion`` (``[n_classes, n_classes]`` int array,
        rows = true label, columns = predicted, or None), ``n_height``,
        ``height_exact_count``, ``height_within1_count``. Rates: ``precision``,
        ``recall``, ``f1``, ``rmse`` (same unit as the input), ``label_accuracy``,
        ``height_exact``, ``height_within1`` (fractions of matched pairs with known
        heights). Also ``pred_idx`` and ``true_idx`` of the matched pairs.
    """
    pred_xy = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    true_xy = np.asarray(true_xy, dtype=np.float64).reshape(-1, 2)
    pi, ti = match_positions(pred_xy, true_xy, radius)
    tp = len(pi)
    counts: dict[str, Any] = {
        "tp": tp,
        "fp": len(pred_xy) - tp,
        "fn": len(true_xy) - tp,
        "sq_err_sum": float(((pred_xy[pi] - true_xy[ti]) ** 2).sum()),
        "confusion": None,
        "n_height": 0,
        "height_exact_count": 0,
        "height_within1_count": 0,
    }
    if pred_labels is not None and true_labels is not None:
        pl = np.asarray(pred_labels, dtype=np.int64).reshape(-1)
        tl = np.asarray(true_labels, dtype=np.int64).reshape(-1)
        if len(pl) != len(pred_xy) or len(tl) != len(true_xy):
            raise ValueError("labels must have one entry per position")
        if n_classes is None:
            n_classes = int(max(pl.max(initial=0), tl.max(initial=0), 1))
        for arr in (pl, tl):
            if len(arr) and (arr.min() < 1 or arr.max() > n_classes):
                raise ValueError(f"labels must be in 1..{n_classes}")
        conf = np.zeros((n_classes, n_classes), dtype=np.int64)
        np.add.at(conf, (tl[ti] - 1, pl[pi] - 1), 1)
        counts["confusion"] = conf
    if pred_heights is not None and true_heights is not None:
        ph = np.asarray(pred_heights, dtype=np.int64).reshape(-1)[pi]
        th = np.asarray(true_heights, dtype=np.int64).reshape(-1)[ti]
        known = (ph >= 0) & (th >= 0)
        diff = np.abs(ph[known] - th[known])
        counts["n_height"] = int(known.sum())
        counts["height_exact_count"] = int((diff == 0).sum())
        counts["height_within1_count"] = int((diff <= 1).sum())
    out = _derive(counts)
    out["pred_idx"], out["true_idx"] = pi, ti
    return out


def aggregate(scores_list: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Pool per-image scores: sum the counts, then derive the rates again.

    RMSE is pooled over all matched pairs (``sqrt(sum sq_err / sum tp)``), not averaged
    over images. Confusion matrices are summed when present (all of the same shape).

    Parameters
    ----------
    scores_list : iterable of dict
        Outputs of :func:`detection_scores`.

    Returns
    -------
    dict
        The same keys as :func:`detection_scores` (without the pair indices), plus
        ``n_images``.
    """
    counts: dict[str, Any] = {k: 0 for k in COUNT_KEYS}
    counts["sq_err_sum"] = 0.0
    counts["confusion"] = None
    n = 0
    for s in scores_list:
        n += 1
        for k in COUNT_KEYS:
            counts[k] += s[k]
        conf = s.get("confusion")
        if conf is not None:
            counts["confusion"] = conf.copy() if counts["confusion"] is None else counts["confusion"] + conf
    out = _derive(counts)
    out["n_images"] = n
    return out
