"""Choose a model's peak threshold on held-out images, never on a test set.

:func:`threshold_scan` scores one detection pass at several atom-probability
thresholds (the peak finder thins candidates greedily by descending probability, so
keeping the atoms above a threshold equals a run at it, up to the card's confidence
floor: see there);
:func:`validation_threshold_scan` does so on the validation images of a model's own
training store; :func:`best_threshold` picks the highest F1 and
:func:`card_with_threshold` writes it into a copy of the model card with the scan.
Used by ``atomfinder tune-threshold`` and ``atomfinder finetune``. Scoring (matching,
border band) is that of :func:`atomfinder.analysis.evaluate.compare`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from atomfinder.analysis.evaluate import (
    Detector,
    EvalSample,
    interior_mask,
    network_detector,
    samples_from_store,
    scored_predictions,
    to_jsonable,
)
from atomfinder.analysis.metrics import aggregate, detection_scores

__all__ = ["THRESHOLDS", "best_threshold", "card_with_threshold", "threshold_scan", "validation_threshold_scan"]

#: Atom-probability thresholds a validation scan tries (``tune-threshold``, ``finetune``).
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def threshold_scan(
    samples: Iterable[EvalSample],
    detect: Detector,
    thresholds: Sequence[float],
    *,
    radius_A: float = 0.5,
    border_A: float = 1.0,
) -> list[dict[str, float]]:
    """Pooled precision, recall and F1 at several atom-probability thresholds, from one detection pass.

    ``detect`` must run at (or below) the lowest threshold. Each threshold keeps
    the atoms whose probability exceeds it; the peak finder thins candidates
    greedily by descending probability, so the peaks are those of a detection run
    at that threshold. One difference remains with a card that drops atoms below a
    confidence floor (``detection["min_confidence"]``): each atom's confidence is
    computed among all the peaks of the lowest threshold (two of its features, the
    spread of its neighbours and the map's background, depend on the others), so a
    run at a higher threshold can keep or drop a few peaks near the floor that the
    scan did not (6 of 47 in one noisy test image at 0.7). Scoring (matching radius, border exclusion) is that of
    :func:`~atomfinder.analysis.evaluate.compare`. Use it on validation images, never on the test set.

    Returns
    -------
    list of dict
        One row per threshold (ascending): ``threshold, tp, fp, fn, precision,
        recall, f1``.
    """
    levels = sorted(float(t) for t in thresholds)
    if not levels:
        raise ValueError("thresholds must not be empty")
    per_level: list[list[dict[str, Any]]] = [[] for _ in levels]
    for sample in samples:
        atoms = detect(sample)
        xy = np.column_stack([atoms.x, atoms.y]).astype(np.float64) * sample.sampling_A
        t_in = interior_mask(sample.positions_A, sample.shape, sample.sampling_A, border_A)
        p_in = interior_mask(xy, sample.shape, sample.sampling_A, border_A)
        for scores, level in zip(per_level, levels):
            sel = np.asarray(atoms.probability) > level
            keep = scored_predictions(xy[sel], sample.positions_A, p_in[sel], t_in, radius_A)
            scores.append(detection_scores(xy[sel][keep], sample.positions_A[t_in], radius_A))
    rows = []
    for level, scores in zip(levels, per_level):
        pooled = aggregate(scores)
        rows.append({"threshold": level} | {k: pooled[k] for k in ("tp", "fp", "fn", "precision", "recall", "f1")})
    return rows


def validation_threshold_scan(
    model: Any,
    card: Any,
    store: Any,
    thresholds: Sequence[float],
    *,
    on_sample: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, float]], int, float]:
    """:func:`threshold_scan` on the validation images of a model's own training store.

    The validation images are those training held out (the card's training config
    through :func:`atomfinder.nn.train.validation_split`); scoring uses the card's
    matching radius.

    Parameters
    ----------
    model, card
        The network and its :class:`~atomfinder.nn.card.ModelCard`.
    store : DatasetStore
        The store the card says the model was trained on (same seed and size).
    thresholds : sequence of float
        Atom-probability thresholds.
    on_sample : callable, optional
        Called as ``on_sample(i, n)`` after each of the ``n`` images.

    Returns
    -------
    (rows, n_images, radius_A)

    Raises
    ------
    ValueError
        ``store`` is not the card's training store, training had no validation images, or
        the store (unfinished) holds none of them.
    """
    from atomfinder.nn.train import TrainConfig, split_jobs, validation_split  # imports torch

    trained_on = card.training.get("data", {})
    if (trained_on.get("seed"), trained_on.get("n")) != (store.meta["seed"], store.meta["n"]):
        raise ValueError(f"{store.path}: not the training store of {card.name} {card.version} "
                         f"(seed {trained_on.get('seed')}, {trained_on.get('n')} samples: {trained_on.get('store')})")
    config = TrainConfig.from_dict(card.training["config"])
    _, val_idx = validation_split(store, config)
    if len(val_idx) == 0:
        spj = int(store.meta["samples_per_job"])
        n_jobs = -(-int(store.meta["n"]) // spj)
        _, val_jobs = split_jobs(n_jobs, config.validation_fraction, config.seed)
        if len(val_jobs) == 0:
            raise ValueError(f"{card.name} {card.version} was trained without validation images")
        raise ValueError(f"{store.path}: holds none of the {len(val_jobs)} validation jobs of {card.name} "
                         f"{card.version} ({len(store)} of {store.meta['n']} images simulated): finish the "
                         "simulation first")

    def tracked() -> Iterator[EvalSample]:
        for i, sample in enumerate(samples_from_store(store, val_idx)):
            yield sample
            if on_sample is not None:
                on_sample(i, len(val_idx))

    detect = network_detector(model, card, threshold=min(thresholds))
    rows = threshold_scan(tracked(), detect, thresholds, radius_A=config.match_radius_A)
    return rows, int(len(val_idx)), float(config.match_radius_A)


def best_threshold(rows: Sequence[Mapping[str, float]]) -> float:
    """The threshold of the row with the highest F1 (the lowest such threshold on ties)."""
    scored = [r for r in rows if np.isfinite(r["f1"])]
    if not scored:
        raise ValueError("no threshold has a finite F1 (no sites and no detections)")
    return float(max(scored, key=lambda r: (r["f1"], -r["threshold"]))["threshold"])


def card_with_threshold(
    card: Any, rows: Sequence[Mapping[str, float]], n_images: int, radius_A: float, store: Path | str
) -> Any:
    """A copy of ``card`` whose peak threshold is the best of a validation scan.

    Parameters
    ----------
    card : ModelCard
        The model's card.
    rows, n_images, radius_A
        The output of :func:`validation_threshold_scan`.
    store : path
        The store whose validation images were scanned.

    Returns
    -------
    ModelCard
        ``detection["threshold"]`` set to :func:`best_threshold` of ``rows``; the
        scan, its images and the previous threshold in ``training["threshold_scan"]``.
    """
    import dataclasses

    best = best_threshold(rows)
    scan = {"store": str(store), "validation_images": int(n_images), "radius_A": float(radius_A),
            "previous_threshold": card.detection.get("threshold"), "rows": to_jsonable(list(rows)),
            "chosen": best}  # a rate with nothing to count (NaN) is null in the card
    return dataclasses.replace(card, detection=dict(card.detection) | {"threshold": best},
                               training=dict(card.training) | {"threshold_scan": scan})
