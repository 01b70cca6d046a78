"""Detection scores of predicted atoms against ground truth, and their aggregation.

Per image, :func:`detection_scores` returns counts (true/false positives, misses,
summed squared position errors, label confusion, height hits) and the rates derived
from them. :func:`aggregate` sums the counts of many images and re-derives the rates,
so a report binned by dose or defocus pools atoms, not per-image averages.

With labels, the counts also hold the confusion matrix of the matched pairs, the
unmatched sites by true class (``missed``) and the unmatched detections by predicted
class (``extra``), from which :func:`per_class_rates` derives each class's precision
and recall. With heights, the height hits are also counted by the true column
height (:data:`HEIGHT_BINS`).

Conventions for empty cases: a rate with nothing to count is NaN (written ``null`` in
JSON, ``–`` in the tables), never a score: precision when nothing was predicted,
recall when there was nothing to find, F1 (``2 TP / (2 TP + FP + FN)``) when there
was neither; RMSE and accuracies when there are no matched pairs to average. An image
with sites and no detections has F1 0, and so has an empty field with detections.
"""

from __future__ import annotations

import math
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
#: Count arrays, summed by :func:`aggregate` when present (None otherwise).
ARRAY_KEYS = ("confusion", "missed", "extra", "height_by_thickness")
#: Bins of the true column height (atoms per column) of the height scores: label and
#: upper end (inclusive; a true height of 0, a vacancy, counts in the first bin).
HEIGHT_BINS = (("1–5", 5), ("6–10", 10), ("11–20", 20), ("21+", np.inf))


def detection_rates(tp: int, fp: int, fn: int) -> dict[str, float]:
    """``precision``, ``recall`` and ``f1`` from counts; NaN for a rate whose denominator is 0.

    With nothing predicted there is no precision, with nothing to find no recall, and
    with neither (TP + FP + FN = 0) no F1: nothing was scored, which is no perfect score.
    F1 is ``2 TP / (2 TP + FP + FN)`` (the harmonic mean of precision and recall where
    both exist; 0 where one of them is 0 or missing while something was counted).
    """
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def height_bin_index(true_heights: np.ndarray) -> np.ndarray:
    """Index into :data:`HEIGHT_BINS` of each true column height."""
    uppers = np.array([hi for _, hi in HEIGHT_BINS[:-1]], dtype=np.float64)
    return np.searchsorted(uppers, np.asarray(true_heights, dtype=np.float64), side="left")


def height_counts_by_thickness(pred_heights: np.ndarray, true_heights: np.ndarray) -> np.ndarray:
    """Height hits by true column height.

    Parameters
    ----------
    pred_heights, true_heights : ndarray of int, shape (n,)
        Heights of matched pairs, both known (>= 0).

    Returns
    -------
    ndarray of int64, shape (len(HEIGHT_BINS), 3)
        Per bin: pairs, exact heights, heights within ±1.
    """
    ph = np.asarray(pred_heights, dtype=np.int64).reshape(-1)
    th = np.asarray(true_heights, dtype=np.int64).reshape(-1)
    diff = np.abs(ph - th)
    out = np.zeros((len(HEIGHT_BINS), 3), dtype=np.int64)
    b = height_bin_index(th)
    np.add.at(out, (b, 0), 1)
    np.add.at(out, (b, 1), (diff == 0).astype(np.int64))
    np.add.at(out, (b, 2), (diff <= 1).astype(np.int64))
    return out


def per_class_rates(confusion: np.ndarray, missed: np.ndarray, extra: np.ndarray) -> list[dict[str, Any]]:
    """Precision and recall of each class, counting a detection right only with the right class.

    For class ``c``: ``tp = confusion[c, c]``; its sites are row ``c`` of the confusion
    matrix plus ``missed[c]``; its detections are column ``c`` plus ``extra[c]``.

    Parameters
    ----------
    confusion : ndarray of int, shape (k, k)
        Matched pairs, rows true class, columns predicted (0-based = label - 1).
    missed : ndarray of int, shape (k,)
        Unmatched sites by true class.
    extra : ndarray of int, shape (k,)
        Unmatched detections by predicted class.

    Returns
    -------
    list of dict
        One per class: ``n_true``, ``n_pred``, ``tp``, ``precision``, ``recall``,
        ``f1`` (NaN where :func:`detection_rates` has nothing to count: a class with
        no sites and no detections has no scores).
    """
    conf = np.asarray(confusion, dtype=np.int64)
    rows = []
    for c in range(conf.shape[0]):
        tp = int(conf[c, c])
        n_true = int(conf[c].sum() + missed[c])
        n_pred = int(conf[:, c].sum() + extra[c])
        rows.append({"n_true": n_true, "n_pred": n_pred, "tp": tp}
                    | detection_rates(tp, n_pred - tp, n_true - tp))
    return rows


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
    missed, extra = counts.get("missed"), counts.get("extra")
    have = conf is not None and missed is not None and extra is not None
    out["per_class"] = per_class_rates(conf, missed, extra) if have else None
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
        rows = true label, columns = predicted, or None), ``missed`` and ``extra``
        (``[n_classes]``: unmatched sites by true label, unmatched predictions by
        predicted label; None without labels), ``n_height``,
        ``height_exact_count``, ``height_within1_count``, ``height_by_thickness``
        (:func:`height_counts_by_thickness`, None without heights). Rates:
        ``precision``, ``recall``, ``f1``, ``rmse`` (same unit as the input),
        ``label_accuracy``, ``per_class`` (:func:`per_class_rates`, None without
        labels), ``height_exact``, ``height_within1`` (fractions of matched pairs with
        known heights). Also ``pred_idx`` and ``true_idx`` of the matched pairs.
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
        "missed": None,
        "extra": None,
        "n_height": 0,
        "height_exact_count": 0,
        "height_within1_count": 0,
        "height_by_thickness": None,
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
        counts["missed"] = np.bincount(np.delete(tl, ti) - 1, minlength=n_classes).astype(np.int64)
        counts["extra"] = np.bincount(np.delete(pl, pi) - 1, minlength=n_classes).astype(np.int64)
    if pred_heights is not None and true_heights is not None:
        ph = np.asarray(pred_heights, dtype=np.int64).reshape(-1)[pi]
        th = np.asarray(true_heights, dtype=np.int64).reshape(-1)[ti]
        known = (ph >= 0) & (th >= 0)
        diff = np.abs(ph[known] - th[known])
        counts["n_height"] = int(known.sum())
        counts["height_exact_count"] = int((diff == 0).sum())
        counts["height_within1_count"] = int((diff <= 1).sum())
        counts["height_by_thickness"] = height_counts_by_thickness(ph[known], th[known])
    out = _derive(counts)
    out["pred_idx"], out["true_idx"] = pi, ti
    return out


def aggregate(scores_list: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Pool per-image scores: sum the counts, then derive the rates again.

    RMSE is pooled over all matched pairs (``sqrt(sum sq_err / sum tp)``), not averaged
    over images. Confusion matrices, ``missed``, ``extra`` and ``height_by_thickness``
    are summed when present (each of one shape).

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
    counts |= {k: None for k in ARRAY_KEYS}
    n = 0
    for s in scores_list:
        n += 1
        for k in COUNT_KEYS:
            counts[k] += s[k]
        for k in ARRAY_KEYS:
            a = s.get(k)
            if a is not None:
                if counts[k] is not None and np.shape(a) != counts[k].shape:
                    raise ValueError(f"cannot pool {k!r} of shapes {counts[k].shape} and {np.shape(a)}: "
                                     "score every image with the same n_classes")
                counts[k] = np.array(a, copy=True) if counts[k] is None else counts[k] + a
    out = _derive(counts)
    out["n_images"] = n
    return out
