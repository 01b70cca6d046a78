"""Fit a model's confidence and error-bar calibration on held-out simulations.

:func:`calibration_data` runs a model over simulated images with ground truth and
collects, for every scored detection, its peak features
(:func:`atomfinder.detection.confidence.peak_features`), whether it is a real atom
of its class (matched one-to-one within the matching radius, as the evaluator
scores) and its position error; :func:`calibrate_model` fits
:class:`~atomfinder.detection.confidence.Calibration` on them. Use a store that
neither training nor the test sets used (the command refuses the training store).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from atomfinder.analysis.evaluate import (
    CALIBRATION_RADIUS_A,
    EvalSample,
    _Prediction,
    _Record,
    _score_image,
    detection_outcomes,
    samples_from_store,
)
from atomfinder.analysis.metrics import detection_rates
from atomfinder.detection.confidence import (
    FEATURES,
    Calibration,
    expected_calibration_error,
    fit_calibration,
    sigma_coverage,
)


def calibration_data(
    model: Any,
    card: Any,
    samples: Iterable[EvalSample],
    *,
    radius_A: float = CALIBRATION_RADIUS_A,
    border_A: float = 1.0,
    on_sample: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Peak features, outcome and error of every scored detection of ``model`` on ``samples``.

    Returns
    -------
    dict of ndarray
        ``features`` (n, 5; :data:`~atomfinder.detection.confidence.FEATURES`), ``is_true`` (n,), ``err_A`` (n, 2; NaN when unmatched),
        ``image`` (n,) index of the sample, ``dose_e_per_A2`` (n,); and ``n_sites``
        (int), the number of scored sites of all images. Every peak above the
        threshold counts, whatever its confidence (no ``min_confidence``).
    """
    from atomfinder.detection.pipeline import detect_array  # imports torch

    n_classes = len(card.class_names)
    feats, true, err, image, dose = [], [], [], [], []
    n_sites = 0
    for i, s in enumerate(samples):
        frames = s.image if card.in_channels > 1 else s.image[:1]
        res = detect_array(model, card, frames, s.sampling_A, min_confidence=0.0)
        atoms = res.atoms
        pred = _Prediction(xy_A=atoms.xy * s.sampling_A, label=atoms.label, height=atoms.height, seconds=0.0)
        rec = _Record(shape=s.shape, sampling_A=s.sampling_A, dose_e_per_A2=s.dose_e_per_A2,
                      defocus_A=s.defocus_A, true_xy_A=s.positions_A, true_label=s.labels,
                      true_height=s.heights, predictions={})
        scores = _score_image(rec, pred, radius_A, border_A, n_classes)
        index, is_true, e = detection_outcomes(pred.xy_A, pred.label, s.positions_A, s.labels, scores)
        n_sites += int(np.count_nonzero(scores["true_interior"]))
        feats.append(res.features[index])
        true.append(is_true)
        err.append(e)
        image.append(np.full(len(index), i))
        dose.append(np.full(len(index), s.dose_e_per_A2))
        if on_sample is not None:
            on_sample(i)
    cat = lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape)  # noqa: E731
    return {
        "features": cat(feats, (0, len(FEATURES))).reshape(-1, len(FEATURES)),
        "is_true": cat(true, 0).astype(bool),
        "err_A": cat(err, (0, 2)).reshape(-1, 2),
        "image": cat(image, 0).astype(np.int64),
        "dose_e_per_A2": cat(dose, 0),
        "n_sites": n_sites,
    }


def calibrate_model(
    model: Any,
    card: Any,
    store: Any,
    *,
    radius_A: float = CALIBRATION_RADIUS_A,
    on_sample: Callable[[int, int], None] | None = None,
) -> tuple[Calibration, dict[str, Any]]:
    """Fit the calibration of ``model`` on the images of ``store``.

    Parameters
    ----------
    model, card
        The network and its card (its peak threshold is used as it stands).
    store : DatasetStore
        Simulations with ground truth, not the model's training store.
    radius_A : float
        Matching radius that defines a real atom (Å).
    on_sample : callable, optional
        Called as ``on_sample(i, n)`` after each image.

    Returns
    -------
    (Calibration, dict)
        The fit, and a summary (images, detections, share real, in-sample ECE and
        1-σ coverage, the store) for the card.

    Raises
    ------
    ValueError
        ``store`` is the model's training store, or holds too few detections.
    """
    trained_on = card.training.get("data", {})
    if (trained_on.get("seed"), trained_on.get("n")) == (store.meta["seed"], store.meta["n"]):
        raise ValueError(f"{store.path}: this is the training store of {card.name} {card.version}; "
                         "calibrate on held-out simulations (another seed)")
    n = len(store)
    data = calibration_data(model, card, samples_from_store(store), radius_A=radius_A,
                            on_sample=None if on_sample is None else (lambda i: on_sample(i, n)))
    from atomfinder.detection.pipeline import feature_radius_px

    fit = fit_calibration(data["features"], data["is_true"], data["err_A"], feature_radius_px(card), radius_A)
    conf = fit.confidence(data["features"])
    t = data["is_true"]
    summary = {
        "store": str(store.path),
        "seed": int(store.meta["seed"]),
        "n_images": n,
        "threshold": float(card.detection.get("threshold", 0.5)),
        "n_detections": int(len(t)),
        "fraction_true": float(t.mean()) if len(t) else float("nan"),
        "ece_in_sample": expected_calibration_error(conf, t),
        **{f"{k}_in_sample": v for k, v in sigma_coverage(data["err_A"][t], fit.sigma_A(data["features"][t])).items()},
    }
    summary["min_confidence_scan"] = confidence_floor_scan(conf, t, data["n_sites"])
    return fit, summary


#: Confidence floors scanned by :func:`confidence_floor_scan`.
CONFIDENCE_FLOORS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def confidence_floor_scan(
    confidence: np.ndarray, is_true: np.ndarray, n_sites: int, floors: Sequence[float] = CONFIDENCE_FLOORS
) -> list[dict[str, float]]:
    """Pooled precision, recall and F1 when detections below each confidence floor are dropped.

    Dropping a detection removes it from the matching; the sites it matched become
    misses (no other detection is re-matched to them, as a fresh evaluation might).

    Parameters
    ----------
    confidence : ndarray, shape (n,)
        Calibrated confidence of every scored detection.
    is_true : ndarray of bool, shape (n,)
        The detection matched a site of its class.
    n_sites : int
        Scored sites of all images.
    floors : sequence of float
        Confidence floors to score.

    Returns
    -------
    list of dict
        ``{"threshold", "kept", "precision", "recall", "f1"}`` per floor (``threshold``
        the floor, so that :func:`atomfinder.analysis.evaluate.best_threshold` picks one).
    """
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    t = np.asarray(is_true, dtype=bool).reshape(-1)
    rows = []
    for floor in floors:
        keep = c >= floor
        tp = int(np.count_nonzero(keep & t))
        fp = int(np.count_nonzero(keep & ~t))
        rows.append({"threshold": float(floor), "kept": int(keep.sum()),
                     **detection_rates(tp, fp, int(n_sites) - tp)})
    return rows


__all__ = ["CONFIDENCE_FLOORS", "calibrate_model", "calibration_data", "confidence_floor_scan"]
