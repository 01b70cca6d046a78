"""Honest evaluation of atom detectors against ground truth.

A *detector* is any callable ``detect(sample) -> AtomTable`` returning positions in
the sample's input pixels, so the same evaluator scores the network
(:func:`network_detector`) and the conventional baseline (:func:`baseline_detector`)
on the same images (:func:`compare`).

Scoring, per image and per matching radius (Å):

* Predictions are converted to Å with the sample's sampling (``x * sampling_A``) and
  matched one-to-one to the ground truth (:func:`atomfinder.analysis.metrics.detection_scores`).
* **Border exclusion.** Atoms cut by the image edge are neither fair targets nor fair
  false alarms, so a band ``border_A`` wide along the edge of the field of view (the
  outer boundary of the edge pixels, ``-s/2`` and ``(W - 1/2) s``) is ignored on both
  sides: ground-truth sites in the band are not scored (missing them is no miss), and
  neither are predictions in the band. To avoid a bias for atoms straddling the band's
  inner edge, predictions are first matched against *all* ground truth: a prediction
  matched to a site in the band is dropped wherever it lies, and a prediction in the
  band matched to a scored site is kept (it is a hit). Unmatched predictions count
  as false positives only outside the band.
* Counts are pooled (not averaged per image) overall, by dose bin and by defocus bin,
  and, where the samples carry them, by spherical aberration (``by_cs_sign``), particle
  shape (``by_shape``) and support (``by_support``), with
  :func:`atomfinder.analysis.metrics.aggregate`: precision, recall, F1, RMSE
  (pm), label confusion matrix ``[n_classes, n_classes]`` (rows true, columns
  predicted) with the unmatched sites by true class (``missed``) and the unmatched
  detections by predicted class (``extra``), each class's precision and recall
  (``per_class``: a detection counts for its class only when matched to a site of
  that class), and column-height accuracy (exact and within ±1, over matched pairs
  whose predicted and true heights are both known), also by true column height
  (``height_by_thickness``, bins of :data:`atomfinder.analysis.metrics.HEIGHT_BINS`).

Bins are half-open ``[low, high)`` between the given edges, plus an open bin below
the first edge and one at or above the last. Infinite dose (a noise-free
simulation) gets its own bin, and unknown (NaN) values an ``unknown`` bin. Defocus
is in Å, positive = underfocus (frame 0 of a focal series).

The categorical breakdowns (see :func:`cs_label`, :func:`shape_label` and
:func:`support_label`) list only the labels present; a sample without the value
goes to the ``unknown`` bin, and a breakdown no sample has a value for is an empty
list. Shape and support come from the structure a store's job imaged, rebuilt
without imaging (:func:`store_structure_info`).

The threshold a model's card carries is chosen on held-out images by
:mod:`atomfinder.analysis.thresholds`; the report files (Markdown, JSON, plots) are
written by :mod:`atomfinder.analysis.report`.

This module never imports the simulation stack nor matplotlib; torch is only imported
by :func:`network_detector`, the structure builders only by :func:`store_structure_info`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from atomfinder.analysis.matching import match_positions
from atomfinder.analysis.metrics import HEIGHT_BINS, aggregate, detection_scores
from atomfinder.detection.peaks import AtomTable

#: Default matching radii (Å).
RADII_A = (0.3, 0.5, 1.0)
#: Default dose bin edges (e/Å²): decades.
DOSE_EDGES = (1e2, 1e3, 1e4, 1e5)
#: Default defocus bin edges (Å, positive = underfocus).
DEFOCUS_EDGES_A = (-200.0, -100.0, 0.0, 100.0, 200.0, 400.0, 800.0)
#: Largest |Cs| (Å) of an aberration-corrected microscope: 0.1 mm.
CS_CORRECTED_MAX_A = 1e6
#: Labels of the Cs bins, in report order.
CS_BINS = ("Cs < 0", "Cs = 0", "Cs > 0", "uncorrected")
#: Shape label of a field without a specimen (a negative).
EMPTY_FIELD = "empty field"
#: Label of the bin of infinite dose (no shot noise).
NO_NOISE_BIN = "no noise"
#: Label of the bin of unknown (NaN) values.
UNKNOWN_BIN = "unknown"
#: Metrics kept from :func:`atomfinder.analysis.metrics.aggregate` (RMSE converted to pm).
METRIC_KEYS = (
    "n_images", "tp", "fp", "fn", "precision", "recall", "f1", "rmse_pm", "label_accuracy",
    "confusion", "missed", "extra", "per_class", "n_height", "height_exact", "height_within1",
    "height_by_thickness",
)


@dataclass(frozen=True)
class EvalSample:
    """One test image with its ground truth.

    Attributes
    ----------
    image : ndarray of float32, shape (C, H, W)
        Raw detector counts (C = frames; ``[H, W]`` is accepted and becomes ``[1, H, W]``).
    sampling_A : float
        Pixel size in Å/pixel.
    positions_A : ndarray, shape (n, 2)
        True ``(x, y)`` in Å from the centre of the top-left pixel.
    labels : ndarray of int, shape (n,)
        1-based classes of the sites.
    heights : ndarray of int, shape (n,), optional
        Atoms per column; None (or negative entries) where unknown.
    dose_e_per_A2 : float
        Electron dose (e/Å²); ``inf`` = no shot noise, NaN = unknown.
    defocus_A : float
        Defocus of frame 0 in Å (positive = underfocus); NaN = unknown.
    extra : dict
        Other microscope parameters (free-form; not used for scoring).
    Cs_A : float, optional
        Spherical aberration of frame 0 in Å (1 mm = 1e7 Å); None (or NaN) = unknown.
    particle_shape : str, optional
        Shape of the imaged particle (:func:`shape_label`); None = unknown.
    support : str, optional
        What the specimen lies on (:func:`support_label`); None = unknown.
    drift_px : ndarray, shape (C, 2), optional
        Known ``(x, y)`` shift in pixels of each frame's specimen relative to frame 0
        (the simulator's record); None = unknown.
    specimen : int, optional
        Which simulated specimen (sheet, particle) the image shows: images of one
        specimen share its structure (and, in a store, its voltage), so they are not
        independent draws (:func:`specimen_interval`). None = its own specimen.
    """

    image: np.ndarray
    sampling_A: float
    positions_A: np.ndarray
    labels: np.ndarray
    heights: np.ndarray | None = None
    dose_e_per_A2: float = math.nan
    defocus_A: float = math.nan
    extra: dict = field(default_factory=dict)
    Cs_A: float | None = None
    particle_shape: str | None = None
    support: str | None = None
    drift_px: np.ndarray | None = None
    specimen: int | None = None

    def __post_init__(self) -> None:
        img = np.asarray(self.image, dtype=np.float32)
        if img.ndim == 2:
            img = img[None]
        if img.ndim != 3:
            raise ValueError(f"image must be [C, H, W] or [H, W], got shape {img.shape}")
        xy = np.asarray(self.positions_A, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.heights is None:
            heights = np.full(len(xy), -1, dtype=np.int64)
        else:
            heights = np.asarray(self.heights, dtype=np.int64).reshape(-1)
        if not len(labels) == len(heights) == len(xy):
            raise ValueError("positions_A, labels and heights must have one entry per site")
        if not (np.isfinite(self.sampling_A) and self.sampling_A > 0):
            raise ValueError(f"sampling_A must be positive, got {self.sampling_A}")
        object.__setattr__(self, "image", img)
        object.__setattr__(self, "positions_A", xy)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "heights", heights)
        object.__setattr__(self, "sampling_A", float(self.sampling_A))
        object.__setattr__(self, "dose_e_per_A2", float(self.dose_e_per_A2))
        object.__setattr__(self, "defocus_A", float(self.defocus_A))
        object.__setattr__(self, "extra", dict(self.extra))
        if self.Cs_A is not None:
            object.__setattr__(self, "Cs_A", float(self.Cs_A))
        if self.drift_px is not None:
            drift = np.asarray(self.drift_px, dtype=np.float64).reshape(-1, 2)
            if len(drift) != img.shape[0]:
                raise ValueError(f"drift_px needs one (x, y) row per frame ({img.shape[0]}), got {len(drift)}")
            object.__setattr__(self, "drift_px", drift)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return tuple(self.image.shape[-2:])  # type: ignore[return-value]


#: A detector: sample -> atoms in the sample's input pixels.
Detector = Callable[[EvalSample], AtomTable]


# --------------------------------------------------------------------------- detectors


def network_detector(
    model: Any,
    card: Any,
    device: Any = None,
    *,
    threshold: float | None = None,
    min_distance_A: float | None = None,
    tile: int = 576,
    precision: str = "auto",
    frame: int | str = 0,
    augment: bool | None = None,
) -> Detector:
    """A detector running a trained model through :func:`atomfinder.detection.pipeline.detect_array`.

    Single-image models (``card.in_channels == 1``) see one frame of the sample
    (``frame``); focal-series models see all frames (their number must match the card).

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    card : ModelCard
        Its card.
    device : str or torch.device, optional
        Inference device.
    threshold, min_distance_A : float, optional
        Peak-finding overrides (default: the card's settings).
    tile : int
        Inference tile side (model pixels).
    precision : str
        Network arithmetic (see :func:`atomfinder.detection.pipeline.detect_array`).
    frame : int or "middle"
        The frame a single-image model sees: an index, or ``"middle"`` (frame
        ``N // 2`` of an N-frame focal series, the one nearest the series' mean
        defocus). The ground truth lies in frame 0's grid: where the sample knows the
        frame's drift (``EvalSample.drift_px``, a simulation's record) the detections
        are moved back by it (a perfect registration, the single model's best case);
        otherwise they are scored as found. Frames are not registered by image
        correlation: across defoci it fails (on gold focal series at 1e4 e/Å²,
        phase correlation missed a true drift of 1.7 px by a median 11.6 px).
        Ignored by focal-series models.
    augment : bool, optional
        Test-time augmentation (see :func:`atomfinder.detection.pipeline.detect_array`);
        default: the card's setting.
    """
    from atomfinder.detection.pipeline import detect_array  # imports torch

    if not (frame == "middle" or (isinstance(frame, int) and frame >= 0)):
        raise ValueError(f"frame must be a frame index >= 0 or 'middle', got {frame!r}")

    def detect(sample: EvalSample) -> AtomTable:
        index = 0
        image = sample.image
        if card.in_channels == 1:
            index = frame_index(len(sample.image), frame)
            image = sample.image[index : index + 1]
        result = detect_array(
            model, card, image, sample.sampling_A, threshold=threshold,
            min_distance_A=min_distance_A, device=device, tile=tile, precision=precision, augment=augment,
        )
        if index and sample.drift_px is not None:
            return undo_drift(result.atoms, sample.drift_px[index])
        return result.atoms

    return detect


def frame_index(n_frames: int, frame: int | str = 0) -> int:
    """Index of ``frame`` (an index, or ``"middle"`` for ``n_frames // 2``) in a series of ``n_frames``."""
    index = n_frames // 2 if frame == "middle" else int(frame)
    if not 0 <= index < n_frames:
        raise ValueError(f"frame {frame!r} is outside a series of {n_frames} frame(s)")
    return index


def undo_drift(atoms: AtomTable, drift_xy_px: np.ndarray) -> AtomTable:
    """Atoms found in a drifted frame, moved into frame 0's grid.

    Parameters
    ----------
    atoms : AtomTable
        Detections in the drifted frame's pixels.
    drift_xy_px : ndarray, shape (2,)
        ``(x, y)`` shift of that frame's specimen relative to frame 0, in pixels.

    Returns
    -------
    AtomTable
        The same detections with ``x - dx`` and ``y - dy``.
    """
    dx, dy = (float(v) for v in np.asarray(drift_xy_px, dtype=np.float64).reshape(2))
    return replace(atoms, x=atoms.x - dx, y=atoms.y - dy)


def baseline_detector(
    atom_radius_A: float = 0.5,
    min_distance_A: float = 1.0,
    *,
    threshold_rel: float = 0.2,
    polarity: str = "auto",
) -> Detector:
    """A detector running :func:`atomfinder.detection.baseline.conventional_atoms` on frame 0.

    Every atom gets label 1 and unknown height. Parameters are passed through.
    """
    from atomfinder.detection.baseline import conventional_atoms

    def detect(sample: EvalSample) -> AtomTable:
        return conventional_atoms(
            sample.image[0], sample.sampling_A, atom_radius_A=atom_radius_A,
            min_distance_A=min_distance_A, threshold_rel=threshold_rel, polarity=polarity,
        )

    return detect


def samples_from_store(
    store: Any,
    indices: Iterable[int] | None = None,
    *,
    block: int = 16,
    structures: Mapping[int, Mapping[str, Any] | None] | None = None,
) -> Iterator[EvalSample]:
    """Yield :class:`EvalSample` objects from a dataset store.

    ``store`` is a :class:`atomfinder.datasets.store.DatasetStore` (used through its
    public methods only, so this module does not import the datasets package).
    Images are read ``block`` samples at a time.

    Parameters
    ----------
    store : DatasetStore
        An open store.
    indices : iterable of int, optional
        Visible sample indices (default: all).
    block : int
        Samples read per zarr access.
    structures : mapping, optional
        Structure ``info`` by store index (:func:`store_structure_info`); gives
        each sample's ``particle_shape`` and ``support`` (None where missing).
    """
    idx = list(range(len(store))) if indices is None else [int(i) for i in indices]
    config = store.meta.get("config") or {}
    per_job = int(store.meta.get("samples_per_job") or 1)
    per_wave = int(config.get("draws_per_wave") or per_job)
    for start in range(0, len(idx), block):
        chunk = idx[start : start + block]
        images = store.array("images", np.asarray(store.indices)[chunk])
        drifts = store.array("drift_px", np.asarray(store.indices)[chunk])
        for k, i in enumerate(chunk):
            gt = store.ground_truth(i)
            frames = store.microscope(i)
            first = dict(frames[0]) if frames else {}
            dose = first.pop("dose_e_per_A2", math.nan)
            defocus = first.pop("defocus_A", math.nan)
            extra = {**first, "store_index": int(store.indices[i])}
            if len(frames) > 1:
                extra["frame_defocus_A"] = [f.get("defocus_A", math.nan) for f in frames]
            info = (structures or {}).get(int(store.indices[i]))
            yield EvalSample(
                image=images[k],
                sampling_A=gt["sampling_A"],
                positions_A=gt["positions_A"],
                labels=gt["labels"],
                heights=gt["heights"] if store.has_heights else None,
                dose_e_per_A2=dose,
                defocus_A=defocus,
                extra=extra,
                Cs_A=first.get("Cs_A"),
                particle_shape=shape_label(info),
                support=support_label(info),
                drift_px=drifts[k],
                specimen=store_specimen(int(store.indices[i]), per_job, per_wave),
            )


def is_training_store(card: Any, store: Any) -> bool:
    """Whether ``store`` is the one the card says its model was trained on (same seed and size).

    Scores on it are not an evaluation, and a threshold or calibration fitted on it
    flatters the model.
    """
    trained_on = (card.training or {}).get("data", {})
    return (trained_on.get("seed"), trained_on.get("n")) == (store.meta.get("seed"), store.meta.get("n"))


def store_specimen(index: int, samples_per_job: int, draws_per_wave: int) -> int:
    """The specimen shown by sample ``index`` of a store: each job images one structure
    after another, ``draws_per_wave`` images each (the last one fewer)."""
    per_job = -(-samples_per_job // max(1, min(draws_per_wave, samples_per_job)))
    job, within = divmod(index, samples_per_job)
    return job * per_job + within // max(1, draws_per_wave)


def cs_label(Cs_A: float | None) -> str | None:
    """Bin of a spherical aberration (Å): one of :data:`CS_BINS`, None when unknown.

    Aberration-corrected microscopes (``|Cs| <`` :data:`CS_CORRECTED_MAX_A`, 0.1 mm)
    are split by the sign of Cs; larger values are ``uncorrected`` (0.5-1.2 mm).
    """
    if Cs_A is None or not math.isfinite(Cs_A):
        return None
    if abs(Cs_A) >= CS_CORRECTED_MAX_A:
        return CS_BINS[3]
    return CS_BINS[0] if Cs_A < 0 else CS_BINS[1] if Cs_A == 0 else CS_BINS[2]


def shape_label(info: Mapping[str, Any] | None) -> str | None:
    """Particle shape from a structure's ``info`` (the builder's ``shape``).

    :data:`EMPTY_FIELD` for a field without a specimen; None when unknown or when
    the structure has no shape (graphene, MoS2).
    """
    if not info:
        return None
    if info.get("empty_field"):
        return EMPTY_FIELD
    shape = info.get("shape")
    return None if shape is None else str(shape)


def support_label(info: Mapping[str, Any] | None) -> str | None:
    """What a structure lies on, from its ``info``; None when unknown.

    ``"free"``, ``"carbon"`` (an amorphous carbon film, ``amorphous_carbon_A``),
    ``"CeO2 110"`` (a crystalline ``support`` with its zone axis) or both, e.g.
    ``"CeO2 110 + carbon"``.
    """
    if not info:
        return None
    parts = []
    crystal = info.get("support")
    if isinstance(crystal, Mapping):
        zone = str(crystal.get("orientation", "")).split("/")[0]
        parts.append(" ".join(p for p in (str(crystal.get("material", "support")), zone) if p))
    if info.get("amorphous_carbon_A"):
        parts.append("carbon")
    return " + ".join(parts) if parts else "free"


def store_structure_info(store: Any, *, tolerance_A: float = 0.01) -> dict[int, dict[str, Any] | None] | None:
    """Structure ``info`` of each visible sample, from its job's structure rebuilt without imaging.

    Possible for stores with one structure per job (``draws_per_wave >=
    samples_per_job``, as the gold recipe): the structure is rebuilt from the
    store's own config and seed (:func:`atomfinder.datasets.generate.job_structure`).
    A rebuilt structure whose sites do not hold the ground truth of the job's image
    with the most sites (after one shift, within ``tolerance_A``) was not the
    imaged one (a store made with other builder code): its samples get None.

    Parameters
    ----------
    store : DatasetStore
        An open store.
    tolerance_A : float
        Largest distance (Å) between a ground-truth site and a shifted rebuilt site.

    Returns
    -------
    dict or None
        ``{store index: info or None}``; None when the store's structures cannot be rebuilt.
    """
    from atomfinder.datasets.generate import SimulationConfig, job_structure  # imports the builders

    try:
        config = SimulationConfig.from_dict(dict(store.meta["config"]))
    except (KeyError, TypeError, ValueError):
        return None
    if config.draws_per_wave < config.samples_per_job:
        return None
    jobs: dict[int, list[int]] = {}
    for i, j in enumerate(np.asarray(store.indices)):
        jobs.setdefault(int(j) // config.samples_per_job, []).append(i)
    out: dict[int, dict[str, Any] | None] = {}
    for job, visible in jobs.items():
        try:
            structure = job_structure(config, int(store.meta["seed"]), job)
        except Exception:  # noqa: BLE001 - a recipe the builders no longer take: unknown, not a failed evaluation
            structure = None
        truths = [store.ground_truth(i)["positions_A"] for i in visible]
        ok = structure is not None and _holds_ground_truth(structure.sites.positions_A, truths, tolerance_A)
        for i in visible:
            out[int(store.indices[i])] = dict(structure.info) if ok else None
    return out


def _holds_ground_truth(sites_A: np.ndarray, truths: Sequence[np.ndarray], tolerance_A: float) -> bool:
    """Whether one shift maps the ground truth of the image with the most sites onto ``sites_A``.

    A structure without sites must come with empty ground truth; images without
    sites say nothing against a structure with sites.
    """
    sites = np.asarray(sites_A, dtype=np.float64).reshape(-1, 2)
    truth = max((np.asarray(x, dtype=np.float64).reshape(-1, 2) for x in truths), key=len, default=np.zeros((0, 2)))
    if len(truth) == 0:
        return True
    if len(sites) == 0:
        return False
    tree = cKDTree(sites)
    probe = truth[: min(len(truth), 8)]
    shifts = sites - truth[0]
    d, _ = tree.query((probe[None] + shifts[:, None]).reshape(-1, 2))
    for shift in shifts[np.all(d.reshape(len(shifts), -1) <= tolerance_A, axis=1)]:
        if np.all(tree.query(truth + shift)[0] <= tolerance_A):
            return True
    return False


def recipe_defocus_edges(config: Mapping[str, Any] | None) -> tuple[float, ...]:
    """Defocus bin edges (Å) for a store's generating config.

    A recipe with an absolute defocus range for aberration-corrected microscopes
    (``microscope.corrected_defocus_A``, e.g. gold: -150..150 Å) gets edges at a
    round step (10-500 Å, at most 8 bins) across that range; defoci above it
    (uncorrected microscopes near Scherzer focus, +300..+600 Å at 0.5-1.2 mm)
    fall in the open last bin. Other recipes get :data:`DEFOCUS_EDGES_A`.
    """
    span = ((config or {}).get("microscope") or {}).get("corrected_defocus_A") or ()
    if len(span) != 2 or not span[1] > span[0]:
        return DEFOCUS_EDGES_A
    lo, hi = float(span[0]), float(span[1])
    step = next((s for s in (10.0, 20.0, 25.0, 50.0, 100.0, 200.0, 250.0) if (hi - lo) / s <= 8), 500.0)
    first, last = math.floor(lo / step), math.ceil(hi / step)
    return tuple(float(k * step) for k in range(first, last + 1))


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class _Prediction:
    xy_A: np.ndarray
    label: np.ndarray
    height: np.ndarray
    seconds: float
    confidence: np.ndarray | None = None
    sigma_A: np.ndarray | None = None


@dataclass(frozen=True)
class _Record:
    """What scoring needs from one sample (the image itself is not kept)."""

    shape: tuple[int, int]
    sampling_A: float
    dose_e_per_A2: float
    defocus_A: float
    true_xy_A: np.ndarray
    true_label: np.ndarray
    true_height: np.ndarray
    predictions: dict[str, _Prediction]
    Cs_A: float | None = None
    particle_shape: str | None = None
    support: str | None = None
    specimen: int | None = None


def interior_mask(xy_A: np.ndarray, shape: tuple[int, int], sampling_A: float, border_A: float) -> np.ndarray:
    """Which positions lie at least ``border_A`` inside the field of view.

    The field of view spans ``[-s/2, (W - 1/2) s]`` in x and ``[-s/2, (H - 1/2) s]``
    in y (Å, outer boundary of the edge pixels; ``s`` = ``sampling_A``).

    Parameters
    ----------
    xy_A : ndarray, shape (n, 2)
        Positions ``(x, y)`` in Å.
    shape : (int, int)
        Image ``(H, W)`` in pixels.
    sampling_A : float
        Pixel size in Å/pixel.
    border_A : float
        Width of the excluded band in Å.

    Returns
    -------
    ndarray of bool, shape (n,)
    """
    xy = np.asarray(xy_A, dtype=np.float64).reshape(-1, 2)
    h, w = shape
    lo = -0.5 * sampling_A + border_A
    x_hi = (w - 0.5) * sampling_A - border_A
    y_hi = (h - 0.5) * sampling_A - border_A
    return (xy[:, 0] >= lo) & (xy[:, 0] <= x_hi) & (xy[:, 1] >= lo) & (xy[:, 1] <= y_hi)


def scored_predictions(
    pred_xy_A: np.ndarray,
    true_xy_A: np.ndarray,
    pred_interior: np.ndarray,
    true_interior: np.ndarray,
    radius_A: float,
) -> np.ndarray:
    """Which predictions take part in scoring under border exclusion (see module docs).

    A prediction matched (within ``radius_A``, against all ground truth) to a site is
    kept iff that site is interior; an unmatched prediction is kept iff it is interior.

    Returns
    -------
    ndarray of bool, shape (n_pred,)
    """
    keep = np.asarray(pred_interior, dtype=bool).copy()
    pi, ti = match_positions(pred_xy_A, true_xy_A, radius_A)
    keep[pi] = np.asarray(true_interior, dtype=bool)[ti]
    return keep


def _score_image(rec: _Record, pred: _Prediction, radius_A: float, border_A: float, n_classes: int) -> dict[str, Any]:
    """:func:`detection_scores` under border exclusion, plus the scored predictions' mask ``keep``
    and the interior sites' mask ``true_interior`` (``pred_idx``/``true_idx`` index those subsets)."""
    t_in = interior_mask(rec.true_xy_A, rec.shape, rec.sampling_A, border_A)
    p_in = interior_mask(pred.xy_A, rec.shape, rec.sampling_A, border_A)
    keep = scored_predictions(pred.xy_A, rec.true_xy_A, p_in, t_in, radius_A)
    scores = detection_scores(
        pred.xy_A[keep], rec.true_xy_A[t_in], radius_A,
        pred_labels=pred.label[keep], true_labels=rec.true_label[t_in], n_classes=n_classes,
        pred_heights=pred.height[keep], true_heights=rec.true_height[t_in],
    )
    return scores | {"keep": keep, "true_interior": t_in}


def detection_outcomes(
    pred_xy_A: np.ndarray,
    pred_label: np.ndarray,
    true_xy_A: np.ndarray,
    true_label: np.ndarray,
    scores: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per scored detection: is it a real atom of its class, and its position error.

    Parameters
    ----------
    pred_xy_A, pred_label, true_xy_A, true_label
        All detections and all sites of one image (Å, 1-based labels).
    scores : mapping
        :func:`_score_image`'s result for them (its ``keep``, ``true_interior``,
        ``pred_idx`` and ``true_idx``).

    Returns
    -------
    (index, is_true, err_A)
        Indices of the scored detections into ``pred_xy_A``; whether each matched a
        site of its own class; its ``(dx, dy)`` error in Å (NaN when unmatched).
    """
    index = np.flatnonzero(scores["keep"])
    true_in = np.flatnonzero(scores["true_interior"])
    pi, ti = np.asarray(scores["pred_idx"], dtype=np.int64), np.asarray(scores["true_idx"], dtype=np.int64)
    is_true = np.zeros(len(index), dtype=bool)
    err = np.full((len(index), 2), np.nan)
    if len(pi):
        same = np.asarray(pred_label)[index[pi]] == np.asarray(true_label)[true_in[ti]]
        is_true[pi] = same
        err[pi] = np.asarray(pred_xy_A)[index[pi]] - np.asarray(true_xy_A)[true_in[ti]]
    return index, is_true, err


def _height_bins(counts: np.ndarray | None) -> list[dict[str, Any]] | None:
    """``height_by_thickness`` counts as report rows (bins without pairs left out; None: no heights)."""
    if counts is None or not np.asarray(counts)[:, 0].any():
        return None
    rows = []
    for (label, _), (n, exact, within1) in zip(HEIGHT_BINS, np.asarray(counts).tolist()):
        if n:
            rows.append({"bin": label, "n_height": int(n), "height_exact": exact / n, "height_within1": within1 / n})
    return rows


def _metrics(agg: Mapping[str, Any]) -> dict[str, Any]:
    """The reported subset of an aggregate, RMSE in pm, confusion, missed and extra as lists,
    per-class rates and heights by true column height."""
    out = {k: agg.get(k) for k in METRIC_KEYS}
    out["rmse_pm"] = 100.0 * float(agg["rmse"])
    for k in ("confusion", "missed", "extra"):
        out[k] = None if agg.get(k) is None else np.asarray(agg[k]).tolist()
    out["height_by_thickness"] = _height_bins(agg.get("height_by_thickness"))
    return out


def radius_key(radius_A: float) -> str:
    """Key of a radius in report dicts, e.g. ``"0.5"``."""
    return f"{float(radius_A):g}"


def _fmt_dose(v: float) -> str:
    e = math.log10(v) if v > 0 else math.nan
    if np.isfinite(e) and abs(e - round(e)) < 1e-9 and abs(e) >= 2:
        return f"1e{int(round(e))}"
    return f"{v:g}"


def _fmt_plain(v: float) -> str:
    return f"{v:g}"


def bin_labels(values: np.ndarray, edges: Sequence[float], fmt: Callable[[float], str] = _fmt_plain) -> list[tuple[str, float, float]]:
    """Bin of each value as ``(label, low, high)``.

    Bins are ``< e0``, ``[e0, e1)``, ..., ``>= e_last``; ``+inf`` goes to
    :data:`NO_NOISE_BIN` (meaningful for doses) and NaN to :data:`UNKNOWN_BIN`.
    """
    e = np.asarray(sorted(float(x) for x in edges), dtype=np.float64)
    out = []
    for v in np.asarray(values, dtype=np.float64).reshape(-1):
        if np.isnan(v):
            out.append((UNKNOWN_BIN, math.nan, math.nan))
        elif np.isposinf(v):
            out.append((NO_NOISE_BIN, math.inf, math.inf))
        else:
            j = int(np.searchsorted(e, v, side="right"))
            if len(e) == 0:
                out.append(("all", -math.inf, math.inf))
            elif j == 0:
                out.append((f"< {fmt(e[0])}", -math.inf, float(e[0])))
            elif j == len(e):
                out.append((f">= {fmt(e[-1])}", float(e[-1]), math.inf))
            else:
                out.append((f"[{fmt(e[j - 1])}, {fmt(e[j])})", float(e[j - 1]), float(e[j])))
    return out


def _binned(
    values: np.ndarray,
    edges: Sequence[float],
    fmt: Callable[[float], str],
    per_image: list[dict[str, dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Aggregate per-image scores (``per_image[i][radius_key]``) by the bin of ``values[i]``."""
    labels = bin_labels(values, edges, fmt)
    groups: dict[tuple[str, float, float], list[int]] = {}
    for i, b in enumerate(labels):
        groups.setdefault(b, []).append(i)

    def order(b: tuple[str, float, float]) -> tuple[int, float]:
        return (2, 0.0) if b[0] == UNKNOWN_BIN else (1, 0.0) if b[0] == NO_NOISE_BIN else (0, b[1])

    out = []
    for b in sorted(groups, key=order):
        members = groups[b]
        vals = np.asarray(values, dtype=np.float64)[members]
        finite = vals[np.isfinite(vals)]
        out.append({
            "bin": b[0],
            "low": b[1],
            "high": b[2],
            "median": float(np.median(finite)) if len(finite) else math.nan,
            "n_images": len(members),
            "metrics": {
                rk: _metrics(aggregate(per_image[i][rk] for i in members)) for rk in per_image[members[0]]
            },
        })
    return out


def _categorical(
    labels: Sequence[str | None],
    per_image: list[dict[str, dict[str, Any]]],
    order: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Aggregate per-image scores by a categorical label (None = :data:`UNKNOWN_BIN`).

    Bins are the labels present: those in ``order`` first (in that order), the
    others alphabetically, :data:`UNKNOWN_BIN` last. An empty list when no image
    has a label (the breakdown does not apply).

    Parameters
    ----------
    labels : sequence of str or None
        Label of each image.
    per_image : list of dict
        Per-image scores, ``per_image[i][radius_key]``.
    order : sequence of str
        Labels to list first, in this order.

    Returns
    -------
    list of dict
        One bin per label with ``bin``, ``n_images`` and per-radius ``metrics``.
    """
    if all(b is None for b in labels):
        return []
    groups: dict[str, list[int]] = {}
    for i, b in enumerate(labels):
        groups.setdefault(UNKNOWN_BIN if b is None else str(b), []).append(i)
    rank = {b: k for k, b in enumerate(order)}

    def key(b: str) -> tuple[int, int, str]:
        return (2 if b == UNKNOWN_BIN else 0 if b in rank else 1, rank.get(b, 0), b)

    return [{
        "bin": b,
        "n_images": len(groups[b]),
        "metrics": {rk: _metrics(aggregate(per_image[i][rk] for i in groups[b])) for rk in per_image[groups[b][0]]},
    } for b in sorted(groups, key=key)]


def _checked_border(samples: Iterable[EvalSample], border_A: float) -> Iterator[EvalSample]:
    """The samples, refusing one whose field of view the edge band covers: it would score nothing."""
    for s in samples:
        side_A = min(s.shape) * s.sampling_A
        if 2 * border_A >= side_A:
            raise ValueError(f"an edge band of {border_A:g} Å on each side covers a whole {side_A:.3g} Å image: "
                             "nothing would be scored; give a narrower --border")
        yield s


def _collect(
    samples: Iterable[EvalSample],
    detectors: Mapping[str, Detector],
    on_sample: Callable[[int], None] | None,
) -> list[_Record]:
    """Run every detector on every sample (one pass over ``samples``)."""
    records = []
    for i, s in enumerate(samples):
        preds = {}
        for name, detect in detectors.items():
            t0 = time.perf_counter()
            table = detect(s)
            dt = time.perf_counter() - t0
            preds[name] = _Prediction(
                xy_A=np.asarray(table.xy, dtype=np.float64).reshape(-1, 2) * s.sampling_A,
                label=np.asarray(table.label, dtype=np.int64),
                height=np.asarray(table.height, dtype=np.int64),
                seconds=dt,
                confidence=table.confidence,
                sigma_A=table.sigma_A,
            )
        records.append(_Record(
            shape=s.shape, sampling_A=s.sampling_A, dose_e_per_A2=s.dose_e_per_A2,
            defocus_A=s.defocus_A, true_xy_A=s.positions_A, true_label=s.labels,
            true_height=s.heights, predictions=preds, Cs_A=s.Cs_A, particle_shape=s.particle_shape,
            support=s.support, specimen=s.specimen,
        ))
        if on_sample is not None:
            on_sample(i)
    return records


def _infer_n_classes(records: list[_Record]) -> int:
    m = 1
    for r in records:
        m = max(m, int(r.true_label.max(initial=0)))
        for p in r.predictions.values():
            m = max(m, int(p.label.max(initial=0)))
    return m


def _detector_report(
    records: list[_Record],
    name: str,
    radii_A: Sequence[float],
    border_A: float,
    n_classes: int,
    dose_edges: Sequence[float],
    defocus_edges_A: Sequence[float],
) -> dict[str, Any]:
    per_image: list[dict[str, dict[str, Any]]] = []
    rows = []
    for i, rec in enumerate(records):
        pred = rec.predictions[name]
        scores = {}
        for r in radii_A:
            s = _score_image(rec, pred, float(r), border_A, n_classes)
            scores[radius_key(r)] = s
            rows.append({
                "image": i,
                "radius_A": float(r),
                "dose_e_per_A2": rec.dose_e_per_A2,
                "defocus_A": rec.defocus_A,
                "Cs_A": rec.Cs_A,
                "particle_shape": rec.particle_shape,
                "support": rec.support,
                "sampling_A": rec.sampling_A,
                "n_true": s["tp"] + s["fn"],
                "n_pred": s["tp"] + s["fp"],
                "tp": s["tp"],
                "fp": s["fp"],
                "fn": s["fn"],
                "precision": s["precision"],
                "recall": s["recall"],
                "f1": s["f1"],
                "rmse_pm": 100.0 * s["rmse"],
                "seconds": pred.seconds,
            })
        per_image.append(scores)
    shapes = [r.particle_shape for r in records]
    if all(s in (None, EMPTY_FIELD) for s in shapes):  # no particles (graphene's empty fields)
        shapes = [None] * len(records)
    doses = np.array([r.dose_e_per_A2 for r in records], dtype=np.float64)
    defoci = np.array([r.defocus_A for r in records], dtype=np.float64)
    seconds = [r.predictions[name].seconds for r in records]
    area_nm2 = sum(_interior_area_nm2(r, border_A) for r in records)
    far = [_far_detections(r, name, FAR_A, border_A) for r in records]
    overall = {radius_key(r): _metrics(aggregate(s[radius_key(r)] for s in per_image)) for r in radii_A}
    specimens = [("own", i) if r.specimen is None else ("specimen", r.specimen) for i, r in enumerate(records)]
    for key, metrics in overall.items():
        metrics["f1_interval"], metrics["n_specimens"] = specimen_interval(
            [(s[key]["tp"], s[key]["fp"], s[key]["fn"]) for s in per_image], specimens)
        metrics["fp_per_10nm2"] = 10.0 * metrics["fp"] / area_nm2 if area_nm2 > 0 else math.nan
        metrics["far_detections"] = int(sum(far))
        metrics["max_far_per_image"] = int(max(far, default=0))
    primary = CALIBRATION_RADIUS_A if CALIBRATION_RADIUS_A in [float(r) for r in radii_A] else float(radii_A[0])
    return {
        "n_images": len(records),
        "seconds_per_image": float(np.mean(seconds)) if seconds else math.nan,
        "area_nm2": area_nm2,
        "overall": overall,
        "trust": _trust(records, name, per_image, primary, doses, dose_edges),
        "by_dose": _binned(doses, dose_edges, _fmt_dose, per_image) if records else [],
        "by_defocus": _binned(defoci, defocus_edges_A, _fmt_plain, per_image) if records else [],
        "by_cs_sign": _categorical([cs_label(r.Cs_A) for r in records], per_image, CS_BINS),
        "by_shape": _categorical(shapes, per_image, (EMPTY_FIELD,)),
        "by_support": _categorical([r.support for r in records], per_image, ("free", "carbon")),
        "images": rows,
    }


def specimen_interval(
    counts: Sequence[tuple[int, int, int]],
    specimens: Sequence[Any],
    *,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[list[float] | None, int]:
    """Interval of the pooled F1 from resampling whole specimens (a cluster bootstrap).

    Images of one simulated sheet or particle share its structure and voltage, so a
    test store of 128 images of 8 particles holds 8 independent draws, not 128. The
    specimens are drawn with replacement, their images' counts pooled and the F1
    recomputed; the interval is the central ``level`` of those F1 values.

    Parameters
    ----------
    counts : sequence of (tp, fp, fn)
        Per-image counts.
    specimens : sequence of hashable
        The specimen of each image.
    level : float
        Coverage of the interval.
    n_resamples : int
        Bootstrap resamples (seeded: the interval is reproducible).
    seed : int
        Seed of the resampling.

    Returns
    -------
    (interval, n_specimens)
        ``[low, high]`` (None with fewer than 2 specimens or no counts) and the
        number of specimens.
    """
    keys = list(dict.fromkeys(specimens))
    if len(counts) != len(specimens):
        raise ValueError("one specimen per image is needed")
    pooled = np.zeros((len(keys), 3))
    where = {k: j for j, k in enumerate(keys)}
    for c, k in zip(counts, specimens):
        pooled[where[k]] += np.asarray(c, dtype=float)
    if len(keys) < 2 or not pooled.any():
        return None, len(keys)
    draws = np.random.default_rng(seed).integers(0, len(keys), size=(n_resamples, len(keys)))
    tp, fp, fn = pooled[draws].sum(axis=1).T
    denom = 2 * tp + fp + fn
    f1 = 2 * tp[denom > 0] / denom[denom > 0]  # a resample with no atoms and no detections has no F1
    if len(f1) == 0:
        return None, len(keys)
    tail = 50.0 * (1.0 - level)
    return [float(np.percentile(f1, tail)), float(np.percentile(f1, 100.0 - tail))], len(keys)


#: Matching radius (Å) at which confidences and error bars are scored.
CALIBRATION_RADIUS_A = 0.5


#: A detection farther than this (Å) from every site is "far" (e.g. inside a hole).
FAR_A = 1.0


def _far_detections(rec: _Record, name: str, far_A: float, border_A: float) -> int:
    """Detections farther than ``far_A`` from every site, outside the ignored border band."""
    pred = rec.predictions[name]
    inside = interior_mask(pred.xy_A, rec.shape, rec.sampling_A, border_A)
    xy = pred.xy_A[inside]
    if len(xy) == 0:
        return 0
    if len(rec.true_xy_A) == 0:
        return int(len(xy))
    d, _ = cKDTree(rec.true_xy_A).query(xy)
    return int(np.sum(d > far_A))


def _interior_area_nm2(rec: _Record, border_A: float) -> float:
    h, w = rec.shape
    side_y = max(h * rec.sampling_A - 2 * border_A, 0.0)
    side_x = max(w * rec.sampling_A - 2 * border_A, 0.0)
    return side_x * side_y / 100.0


def _trust(
    records: list[_Record], name: str, per_image: list[dict[str, dict[str, Any]]], radius_A: float,
    doses: np.ndarray, dose_edges: Sequence[float] = DOSE_EDGES,
) -> dict[str, Any] | None:
    """Calibration of the confidence and coverage of the error bars, pooled over images.

    The error bars are also tabulated by dose, in the bins of ``dose_edges`` (those of
    the report's other dose tables). None when the detector gives no confidence (an
    uncalibrated model, the baseline).
    """
    from atomfinder.detection.confidence import expected_calibration_error, reliability_bins, sigma_coverage

    bins = bin_labels(doses, dose_edges, _fmt_dose) if len(records) else []
    image_bins = [b[0] for b in bins]
    low = {b[0]: (b[1] if math.isfinite(b[1]) or np.isposinf(b[1]) else -math.inf) for b in bins}
    conf, true, err, sigma, dose = [], [], [], [], []
    for rec, scores, d in zip(records, per_image, image_bins):
        pred = rec.predictions[name]
        if pred.confidence is None or (len(pred.confidence) and not np.isfinite(pred.confidence).any()):
            return None
        index, is_true, e = detection_outcomes(pred.xy_A, pred.label, rec.true_xy_A, rec.true_label,
                                               scores[radius_key(radius_A)])
        conf.append(pred.confidence[index])
        sigma.append(pred.sigma_A[index])
        true.append(is_true)
        err.append(e)
        dose.append(np.full(len(index), d, dtype=object))
    c, t, e, sg = (np.concatenate(a) if a else np.zeros(0) for a in (conf, true, err, sigma))
    ds = np.concatenate(dose) if dose else np.zeros(0, dtype=object)
    t = t.astype(bool)
    e = e.reshape(-1, 2)
    m = t & np.isfinite(sg)
    by_dose = []
    for label in sorted(dict.fromkeys(image_bins), key=lambda b: low[b]):
        sel = m & (ds == label)
        if sel.any():
            by_dose.append({"bin": label, "n": int(sel.sum()),
                            "median_sigma_pm": 100.0 * float(np.median(sg[sel])),
                            "rmse_per_axis_pm": 100.0 * float(np.sqrt(np.mean(e[sel] ** 2))),
                            **sigma_coverage(e[sel], sg[sel])})
    return {
        "radius_A": radius_A,
        "n_detections": int(len(c)),
        "n_true": int(t.sum()),
        "ece": expected_calibration_error(c, t) if len(c) else math.nan,
        "reliability": reliability_bins(c, t),
        "mean_confidence": float(np.mean(c)) if len(c) else math.nan,
        "fraction_true": float(np.mean(t)) if len(t) else math.nan,
        "sigma": {"n": int(m.sum()),
                  "median_sigma_pm": 100.0 * float(np.median(sg[m])) if m.any() else math.nan,
                  **sigma_coverage(e[m], sg[m])},
        "sigma_by_dose": by_dose,
    }


def compare(
    samples: Iterable[EvalSample],
    detectors: Mapping[str, Detector],
    *,
    radii_A: Sequence[float] = RADII_A,
    border_A: float = 1.0,
    n_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    dose_edges: Sequence[float] = DOSE_EDGES,
    defocus_edges_A: Sequence[float] = DEFOCUS_EDGES_A,
    on_sample: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score several detectors on the same samples (iterated once).

    Parameters
    ----------
    samples : iterable of EvalSample
        Test images (a list, or a generator such as :func:`samples_from_store`).
    detectors : mapping of str to callable
        e.g. ``{"network": network_detector(...), "baseline": baseline_detector()}``;
        each returns an :class:`~atomfinder.detection.peaks.AtomTable` in input pixels.
    radii_A : sequence of float
        Matching radii in Å.
    border_A : float
        Width of the ignored band along the image edge in Å (see module docs).
    n_classes : int, optional
        Number of non-background classes (size of the confusion matrices). Default:
        ``len(class_names)`` if given, else the largest label seen.
    class_names : sequence of str, optional
        Names of classes ``1..n_classes`` (for the report).
    dose_edges : sequence of float
        Dose bin edges in e/Å².
    defocus_edges_A : sequence of float
        Defocus bin edges in Å (positive = underfocus).
    on_sample : callable, optional
        Called with the sample index after each sample (for a progress bar).

    Returns
    -------
    dict
        ``{"settings": {...}, "n_images": int, "detectors": {name: report}}`` where
        each report (see :func:`evaluate`) holds ``overall`` (per radius key, e.g.
        ``"0.5"``), ``by_dose`` and ``by_defocus`` (lists of bins with ``bin``,
        ``low``, ``high``, ``median``, ``n_images`` and per-radius ``metrics``),
        ``by_cs_sign``, ``by_shape`` and ``by_support`` (lists of bins with
        ``bin``, ``n_images`` and ``metrics``; empty when no sample carries the
        value) and the per-image rows ``images``. Metrics: ``n_images, tp, fp,
        fn, precision, recall, f1, rmse_pm, label_accuracy, confusion, missed,
        extra, per_class, n_height, height_exact, height_within1,
        height_by_thickness`` (``per_class``: one dict per class with ``n_true,
        n_pred, tp, precision, recall, f1``; ``height_by_thickness``: rows with
        ``bin, n_height, height_exact, height_within1`` by true column height, None
        without heights).
    """
    if not detectors:
        raise ValueError("no detectors given")
    if not (math.isfinite(border_A) and border_A >= 0):
        raise ValueError(f"border_A must be a finite width >= 0 in Å, got {border_A}")
    radii = [float(r) for r in radii_A]
    if not radii or min(radii) <= 0:
        raise ValueError(f"radii_A must be positive, got {radii_A}")
    records = _collect(_checked_border(samples, border_A), detectors, on_sample)
    if n_classes is None:
        n_classes = len(class_names) if class_names is not None else _infer_n_classes(records)
    settings = {
        "radii_A": radii,
        "border_A": float(border_A),
        "n_classes": int(n_classes),
        "class_names": list(class_names) if class_names is not None else None,
        "dose_edges": [float(e) for e in dose_edges],
        "defocus_edges_A": [float(e) for e in defocus_edges_A],
    }
    return {
        "settings": settings,
        "n_images": len(records),
        "detectors": {
            name: _detector_report(records, name, radii, border_A, int(n_classes), dose_edges, defocus_edges_A)
            for name in detectors
        },
    }


def evaluate(samples: Iterable[EvalSample], detect: Detector, **kwargs: Any) -> dict[str, Any]:
    """Score one detector against ground truth.

    Parameters
    ----------
    samples : iterable of EvalSample
        Test images with ground truth.
    detect : callable
        ``detect(sample) -> AtomTable`` with positions in the sample's input pixels.
    **kwargs
        ``radii_A=(0.3, 0.5, 1.0)``, ``border_A=1.0``, ``n_classes``, ``class_names``,
        ``dose_edges=(1e2, 1e3, 1e4, 1e5)``, ``defocus_edges_A``, ``on_sample``: see
        :func:`compare`.

    Returns
    -------
    dict
        ``settings``, ``n_images``, ``seconds_per_image``, ``overall``, ``by_dose``,
        ``by_defocus``, ``by_cs_sign``, ``by_shape``, ``by_support`` and ``images``
        (see :func:`compare`).
    """
    out = compare(samples, {"detector": detect}, **kwargs)
    return {"settings": out["settings"], **out["detectors"]["detector"]}


def validation_scorer(samples: Sequence[EvalSample], radius_A: float) -> Callable[[Any, Any], dict[str, float]]:
    """A ``validate(model, card)`` callable for training: detection scores on held-out images.

    Parameters
    ----------
    samples : sequence of EvalSample
        The validation images (kept in memory, scored after every epoch).
    radius_A : float
        Matching radius (Å).

    Returns
    -------
    callable
        ``validate(model, card) -> {"f1", "precision", "recall", "rmse_pm"}`` at
        that radius, as :func:`atomfinder.nn.train.train` expects.
    """

    def validate(model: Any, card: Any) -> dict[str, float]:
        report = evaluate(samples, network_detector(model, card), radii_A=(radius_A,), class_names=card.class_names)
        overall = report["overall"][radius_key(radius_A)]
        return {k: float(overall[k]) for k in ("f1", "precision", "recall", "rmse_pm") if k in overall}

    return validate


def card_evaluation(result: Mapping[str, Any], detector: str = "network") -> dict[str, Any]:
    """The ``evaluation`` entry of a model card from a :func:`compare` result.

    Parameters
    ----------
    result : dict
        :func:`compare` output with a ``data`` entry describing the test store.
    detector : str
        The detector that is the card's model; a ``baseline`` detector, when
        present, is recorded beside it.

    Returns
    -------
    dict
        JSON-safe ``data``, ``overall``, ``by_dose``, ``baseline_overall`` and
        ``baseline_by_dose``.
    """
    net = result["detectors"][detector]
    baseline = result["detectors"].get("baseline", {})
    return to_jsonable({
        "data": result.get("data", {}),
        "overall": net["overall"],
        "by_dose": net["by_dose"],
        "baseline_overall": baseline.get("overall"),
        "baseline_by_dose": baseline.get("by_dose"),
    })


def to_jsonable(obj: Any) -> Any:
    """A JSON-safe copy: NaN -> None, +-inf -> ``"inf"``/``"-inf"``, arrays -> lists."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return obj


__all__ = [
    "is_training_store",
    "CS_BINS",
    "CS_CORRECTED_MAX_A",
    "DEFOCUS_EDGES_A",
    "DOSE_EDGES",
    "Detector",
    "EMPTY_FIELD",
    "EvalSample",
    "RADII_A",
    "baseline_detector",
    "bin_labels",
    "card_evaluation",
    "compare",
    "cs_label",
    "evaluate",
    "frame_index",
    "interior_mask",
    "network_detector",
    "radius_key",
    "recipe_defocus_edges",
    "samples_from_store",
    "scored_predictions",
    "shape_label",
    "store_structure_info",
    "support_label",
    "to_jsonable",
    "undo_drift",
    "validation_scorer",
]
