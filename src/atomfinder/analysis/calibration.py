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
    is_training_store,
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


def refuse_training_store(card: Any, store: Any) -> None:
    """Refuse to calibrate on the store the model was trained on (a ValueError naming it)."""
    if is_training_store(card, store):
        raise ValueError(f"{store.path}: this is the training store of {card.name} {card.version}; "
                         "calibrate on held-out simulations (another seed)")


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
    refuse_training_store(card, store)
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
        the floor, so that :func:`atomfinder.analysis.thresholds.best_threshold` picks one).
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


# --------------------------------------------------------------------------- class priors


#: L2 penalty on the class log-biases (keeps a class absent from the data finite).
CLASS_BIAS_L2 = 1e-3


def peak_pixels(atom_map: np.ndarray, xy_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The whole pixel of each detection's peak: the highest of ``atom_map`` among the 3 x 3
    pixels around its rounded sub-pixel position.

    The peak finder labels a detection from the class maps at its peak pixel (a local
    maximum of the atom map) and then refines the position within about a pixel of
    it; rounding the refined position alone can land on a neighbour.

    Parameters
    ----------
    atom_map : ndarray, shape (H, W)
        Atom probability (1 - background) on the model's grid.
    xy_px : ndarray, shape (n, 2)
        Sub-pixel ``(x, y)`` positions on that grid.

    Returns
    -------
    rows, cols : ndarray of int, shape (n,)
    """
    h, w = atom_map.shape
    xy = np.asarray(xy_px, dtype=np.float64).reshape(-1, 2)
    r0 = np.clip(np.rint(xy[:, 1]).astype(np.int64), 0, h - 1)
    c0 = np.clip(np.rint(xy[:, 0]).astype(np.int64), 0, w - 1)
    offsets = np.array([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)])
    rr = np.clip(r0[:, None] + offsets[None, :, 0], 0, h - 1)
    cc = np.clip(c0[:, None] + offsets[None, :, 1], 0, w - 1)
    best = np.argmax(atom_map[rr, cc], axis=1)
    pick = np.arange(len(xy))
    return rr[pick, best], cc[pick, best]


def class_bias_data(
    model: Any,
    card: Any,
    samples: Iterable[EvalSample],
    *,
    radius_A: float = CALIBRATION_RADIUS_A,
    on_sample: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Class probabilities of every detection that lies on a true site, and that site's class.

    Detections are matched to the true sites by position alone (one-to-one within
    ``radius_A``), whatever class the model gave them; the class probabilities are
    those of the maps at the detection's peak pixel on the model's grid
    (:func:`peak_pixels`), where :func:`atomfinder.detection.peaks.find_atoms` reads
    them to label it.

    Returns
    -------
    dict of ndarray
        ``probabilities`` (n, k - 1) over the non-background classes, ``true_label``
        (n,) 1-based, ``label`` (n,) the model's own label (with the card's bias), and
        ``allowed`` (n, k - 1): the classes each detection may take under the card's
        sublattice rule (:mod:`atomfinder.detection.sublattice`; all without one).
    """
    from atomfinder.analysis.matching import match_positions
    from atomfinder.detection.pipeline import card_honeycomb, detect_array  # imports torch
    from atomfinder.detection.sublattice import allowed_classes, sublattice_of

    m = len(card.class_names)
    honeycomb = card_honeycomb(card)
    probs, true, label, allowed = [], [], [], []
    for i, s in enumerate(samples):
        frames = s.image if card.in_channels > 1 else s.image[:1]
        res = detect_array(model, card, frames, s.sampling_A, min_confidence=0.0)
        xy_A = res.atoms.xy * s.sampling_A
        rows, cols = peak_pixels(1.0 - res.probabilities[0], xy_A / res.model_sampling_A)
        q = res.probabilities[1:, rows, cols].astype(np.float64)
        ok = np.ones((m, len(xy_A)), dtype=bool)
        if honeycomb is not None:
            ok = allowed_classes(sublattice_of(xy_A, q, honeycomb), honeycomb, m)
        pi, ti = match_positions(xy_A, s.positions_A, radius_A)
        probs.append(q[:, pi].T)
        allowed.append(ok[:, pi].T)
        true.append(np.asarray(s.labels)[ti])
        label.append(res.atoms.label[pi])
        if on_sample is not None:
            on_sample(i)
    return {
        "probabilities": np.concatenate(probs).reshape(-1, m) if probs else np.zeros((0, m)),
        "true_label": np.concatenate(true).astype(np.int64) if true else np.zeros(0, np.int64),
        "label": np.concatenate(label).astype(np.int64) if label else np.zeros(0, np.int64),
        "allowed": np.concatenate(allowed).reshape(-1, m) if allowed else np.zeros((0, m), dtype=bool),
    }


def fit_class_bias(
    probabilities: np.ndarray, true_label: np.ndarray, l2: float = CLASS_BIAS_L2, allowed: np.ndarray | None = None
) -> np.ndarray:
    """Log-biases ``b`` that make ``softmax(log p + b)`` the most likely labelling.

    A network trained with inverse-frequency class weights (``class_weights =
    "batch"``) overrates rare classes by about the log of their weight: on the
    held-out images, this fits one additive log-prior per class by maximum
    likelihood (a convex problem; ``b[0] = 0``), the prior shift that undoes it.

    Parameters
    ----------
    probabilities : ndarray, shape (n, m)
        Probabilities of the ``m`` non-background classes at each detection that lies on
        a true site (they need not sum to 1).
    true_label : ndarray of int, shape (n,)
        That site's class, 1-based.
    l2 : float
        Penalty ``l2 * |b|²`` (a class absent from the data keeps a finite bias).
    allowed : ndarray of bool, shape (n, m), optional
        Classes each detection may take (its sublattice's): the softmax runs over
        those only, as the labelling will. A detection whose true class is not
        allowed is left out. None allows all.

    Returns
    -------
    ndarray of float64, shape (m,)
        Add to ``log p`` before the argmax (:func:`atomfinder.detection.peaks.biased_labels`).
    """
    from scipy.optimize import minimize

    q = np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), 1e-12))
    y = np.asarray(true_label, dtype=np.int64).reshape(-1) - 1
    n, m = q.shape
    if n and (y.min() < 0 or y.max() >= m):
        raise ValueError(f"true labels must be 1..{m}, got {y.min() + 1}..{y.max() + 1}")
    ok = np.ones((n, m), dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool).reshape(n, m)
    keep = ok[np.arange(n), y]
    q, y, ok = q[keep], y[keep], ok[keep]
    n = len(y)
    if n == 0 or m < 2:
        return np.zeros(m)
    onehot = np.zeros((n, m))
    onehot[np.arange(n), y] = 1.0

    def loss(free: np.ndarray) -> tuple[float, np.ndarray]:
        b = np.concatenate([[0.0], free])
        z = np.where(ok, q + b, -np.inf)
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        value = -float(np.mean(logp[np.arange(n), y])) + l2 * float(free @ free)
        grad = (np.exp(logp) - onehot).mean(axis=0)[1:] + 2 * l2 * free
        return value, grad

    best = minimize(loss, np.zeros(m - 1), jac=True, method="L-BFGS-B")
    return np.concatenate([[0.0], best.x])


def class_bias_summary(data: dict[str, np.ndarray], log_bias: np.ndarray | None) -> dict[str, Any]:
    """Label accuracy and per-class recall of the matched detections of :func:`class_bias_data`
    under the plain argmax and under ``log_bias`` with the sublattice rule of the data's
    ``allowed`` classes (in-sample: the images the bias was fitted on)."""
    from atomfinder.detection.peaks import biased_labels

    y = data["true_label"]
    allowed = data.get("allowed")
    out: dict[str, Any] = {"n_matched": int(len(y))}
    for name, bias, ok in (("argmax", None, None), ("biased", log_bias, allowed)):
        pred = biased_labels(data["probabilities"].T, bias, None if ok is None else ok.T)
        out[f"label_accuracy_{name}"] = float(np.mean(pred == y)) if len(y) else float("nan")
        out[f"recall_{name}"] = [float(np.mean(pred[y == c] == c)) if np.any(y == c) else float("nan")
                                 for c in range(1, data["probabilities"].shape[1] + 1)]
        out[f"precision_{name}"] = [float(np.mean(y[pred == c] == c)) if np.any(pred == c) else float("nan")
                                    for c in range(1, data["probabilities"].shape[1] + 1)]
    if log_bias is not None:
        out["class_log_bias"] = [float(b) for b in log_bias]
    return out


__all__ = ["CLASS_BIAS_L2", "CONFIDENCE_FLOORS", "calibrate_model", "calibration_data", "class_bias_data",
           "class_bias_summary", "confidence_floor_scan", "fit_class_bias", "peak_pixels", "refuse_training_store"]
