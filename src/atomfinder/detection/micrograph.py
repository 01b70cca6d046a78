"""Find atoms in one micrograph or focal series: the Python API, :func:`detect`.

The steps, in order:

1. **Read** the input with its pixel size in Å/px and **clean** it
   (:func:`atomfinder.detection.sample.load_sample`).
2. **Register** focal-series frames to the first one
   (:func:`atomfinder.detection.registration.register_focal_series`, sub-pixel phase
   correlation; the module time series use too) and check the frame count, and the
   focal step when it is given, against the model card.
3. **Detect** with :func:`atomfinder.detection.pipeline.detect_array` (resample to the
   model sampling, normalise, tiled inference, peaks).
4. **Check** each image (each frame of a stack) against the model card's validity
   range (:mod:`atomfinder.detection.validity`) and record the provenance
   (:func:`atomfinder.detection.provenance.provenance`): both travel in the table's
   ``.attrs``, and every failed check is a one-line
   :class:`~atomfinder.detection.validity.ValidityWarning`.

Files on disk, many at a time, are :func:`atomfinder.detection.batch.detect_files`.
Coordinates follow DESIGN.md: ``x`` = column, ``y`` = row, in pixels of the input
image (of the first frame for a registered focal series). This module never imports
the simulation stack (abTEM, ase) nor HyperSpy.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from atomfinder.detection.provenance import provenance
from atomfinder.detection.registration import register_focal_series
from atomfinder.detection.sample import (
    Sample,
    check_focal_step_argument,
    check_frames,
    check_size,
    is_signal,
    load_sample,
)

__all__ = ["InputNote", "SampleResult", "check_threshold", "detect", "run_sample", "trained_on_drift", "with_attrs"]


class InputNote(UserWarning):
    """How :func:`detect` read its input, one line: a given pixel size that replaces the file's, grey
    stored as RGB, atoms dropped in regions without data (also in ``provenance["notes"]``)."""


@dataclass(frozen=True)
class SampleResult:
    """Everything written for one input (internal; picklable for dask)."""

    table: pd.DataFrame
    probabilities: np.ndarray | None
    height: np.ndarray | None
    overlay_image: np.ndarray
    sampling_A: float
    model_sampling_A: float
    class_names: tuple[str, ...]
    shifts_px: np.ndarray | None
    source: str
    stem: str
    n_frames: int
    provenance: dict = dataclasses.field(default_factory=dict)
    validity: dict = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()


def _image_validity(
    table: pd.DataFrame, cnr: float, sample: Sample, card: Any, reference: dict, frame: int | None,
    focal_series: bool = False, focal_step_A: float | None = None,
) -> Any:
    """The validity checks of one image (or frame, or focal series), its detections and its
    contrast-to-noise ratio (and a focal series' step)."""
    from atomfinder.detection import validity

    return validity.check_image(table, reference, contrast_to_noise_ratio=cnr, sampling_A=sample.sampling_A,
                                model_sampling_A=float(card.sampling_A), source=sample.source, frame=frame,
                                focal_series=focal_series, focal_step_A=focal_step_A)


def trained_on_drift(card: Any) -> bool:
    """Whether a focal-series model learned drifting frames (its recipe's ``drift_px`` > 0).

    Such a model takes the frames as they are: registering them first was measured to
    do harm. On the MoS2 test series at 1e4 e/Å² (drift up to 4 px) phase correlation
    between frames of different defocus missed the true drift by a median 2-9 px
    (global or windowed peak, with or without smoothing): on a periodic lattice whose
    contrast changes with defocus, lattice vectors and the Mo-to-S shift correlate as
    well as the drift. A model trained on aligned frames gets them registered.
    """
    sim = (card.training or {}).get("data", {}).get("simulation", {})
    return float(sim.get("drift_px", 0.0) or 0.0) > 0.0


def run_sample(
    net: Any, card: Any, sample: Sample, focal_series: bool, threshold: float | None, device: Any,
    precision: str = "auto", model_path: str | None = None, focal_step_A: float | None = None,
    keep_maps: bool = True, augment: bool | None = None, focal_flag: str = "focal_series=True",
) -> SampleResult:
    """Detect atoms in one validated sample, with its provenance and validity checks (a focal
    series' step, when given, is checked against the card's trained range). Frames of a stack
    are taken one at a time; without ``keep_maps`` a stack's probability and height maps are
    not kept (``None``), so that its memory is that of one frame. ``focal_flag`` is how the user
    says "focal series" in messages (``--focal-series`` on the command line)."""
    from atomfinder.detection.pipeline import detect_array
    from atomfinder.detection.validity import card_reference, validity_record

    check_frames(sample, card, focal_series, focal_flag)
    check_size(sample, card, focal_series)
    shifts = None
    stack = sample.data.ndim == 3 and not focal_series
    if focal_series and sample.n_frames > 1:
        if trained_on_drift(card):
            data, shifts = np.asarray(sample.data, dtype=np.float32), np.zeros((sample.n_frames, 2))
        else:
            data, shifts = register_focal_series(np.asarray(sample.data))
        images: Any = [data]
    elif stack:
        images = sample.data  # an array or a FrameStack: frames are taken one at a time
    else:
        images = [sample.data]
    keep = keep_maps or not stack
    tables, probs, heights, cnrs = [], [], [], []
    first = None
    dropped = 0
    for i, image in enumerate(images):
        if first is None:
            first = np.asarray(image[0] if image.ndim == 3 else image, dtype=np.float32)
        result = detect_array(net, card, image, sample.sampling_A, threshold=threshold, device=device,
                              precision=precision, augment=augment)
        table, n_out = _without_no_data_atoms(result.to_frame(), _no_data_of(sample, i, stack), sample.sampling_A)
        tables.append(table)
        dropped += n_out
        if keep:
            probs.append(result.probabilities.astype(np.float32, copy=False))
            heights.append(result.height)
        cnrs.append(result.contrast_to_noise)
        del result
    reference = card_reference(card)
    checks = [_image_validity(t, cnr, sample, card, reference, i if stack else None, focal_series, focal_step_A)
              for i, (t, cnr) in enumerate(zip(tables, cnrs))]
    if stack:
        for i, t in enumerate(tables):
            t.insert(0, "frame", i)
        table = pd.concat(tables, ignore_index=True)
        probabilities = np.stack(probs) if keep else None
        height = None if not keep or heights[0] is None else np.stack(heights).astype(np.float32)
    else:
        table, probabilities, height = tables[0], probs[0], heights[0]
    notes = sample.notes + ((f"{sample.source}: {dropped} atom{'' if dropped == 1 else 's'} in regions without data "
                             f"(NaN or inf pixels, filled before detection) dropped",) if dropped else ())
    record = provenance(sample, card, focal_series=focal_series, threshold=threshold, device=device,
                        precision=precision, model_path=model_path, focal_step_A=focal_step_A, augment=augment)
    record["notes"] = list(notes)
    return SampleResult(
        table=table,
        probabilities=probabilities,
        height=height,
        overlay_image=first,
        sampling_A=sample.sampling_A,
        model_sampling_A=float(card.sampling_A),
        class_names=tuple(card.class_names),
        shifts_px=shifts,
        source=sample.source,
        stem=sample.stem,
        n_frames=sample.n_frames,
        provenance=record,
        validity=validity_record(checks),
        notes=notes,
    )


def _no_data_of(sample: Sample, i: int, stack: bool) -> np.ndarray | None:
    """The no-data mask of frame ``i`` of a stack (taken out of a lazily read stack's dict), else of
    the image; a focal series' masks are those of its first frame, whose grid the atoms are in."""
    mask = sample.no_data
    if mask is None:
        return None
    if isinstance(mask, dict):
        return mask.pop(i, None) if stack else mask.get(0)
    return mask[i] if stack else (mask[0] if mask.ndim == 3 else mask)


def _without_no_data_atoms(table: pd.DataFrame, mask: np.ndarray | None,
                           sampling_A: float) -> tuple[pd.DataFrame, int]:
    """The table without atoms in a region without data (``mask``: NaN or inf pixels before
    filling; :func:`~atomfinder.detection.preprocess.in_no_data`), and how many were dropped."""
    from atomfinder.detection.preprocess import in_no_data

    if mask is None or not len(table):
        return table, 0
    out = in_no_data(table["x"].to_numpy(), table["y"].to_numpy(), mask, sampling_A)
    return (table[~out].reset_index(drop=True), int(out.sum())) if out.any() else (table, 0)


def with_attrs(table: pd.DataFrame, res: SampleResult) -> pd.DataFrame:
    """The table carrying its provenance and validity in ``.attrs``."""
    table.attrs["provenance"] = res.provenance
    table.attrs["validity"] = res.validity
    return table


def check_threshold(threshold: float | None) -> None:
    """Refuse a threshold that is not a probability (a one-line ValueError)."""
    if threshold is not None and not (0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold must be a probability between 0 and 1, got {threshold}")


def _load(model: Any, device: Any = None) -> tuple[Any, Any, str | None]:
    """``(net, card, stem)`` from a name, a path, or an already loaded ``(net, card)`` pair
    (whose stem is unknown: None)."""
    from atomfinder.nn.card import load_model, resolve_model

    if isinstance(model, tuple) and len(model) == 2:
        return model[0], model[1], None
    stem = resolve_model(model)
    net, card = load_model(stem, device=device or "cpu")
    return net, card, str(stem)


def detect(
    image: Any,
    model: Any = "graphene",
    sampling: float | None = None,
    *,
    focal_series: bool = False,
    threshold: float | None = None,
    device: Any = None,
    precision: str = "auto",
    focal_step_A: float | None = None,
    augment: bool | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Find atoms in a micrograph.

    Parameters
    ----------
    image : str, path, sequence of paths, ndarray or HyperSpy-like signal
        A micrograph file; an array ``[H, W]`` or ``[N, H, W]`` (needs
        ``sampling``); a HyperSpy ``Signal2D`` (pixel size from its signal axes'
        ``scale`` and ``units``); or, with ``focal_series=True``, several
        single-image files in defocus order.
    model : str, path or (net, card)
        A shipped model's name, a path to ``<stem>.safetensors``/``.json``, or a
        model already loaded with :func:`atomfinder.nn.card.load_model`.
    sampling : float, optional
        Pixel size in Å/px; overrides the file's calibration.
    focal_series : bool
        The frames are one sample at several defoci (in the model card's order,
        ``validity["focal_order"]``: increasing underfocus for the simulations of
        ``atomfinder simulate``): they are registered to the first frame
        (:func:`atomfinder.detection.registration.register_focal_series`) and fed to
        the model together. Their number must equal the card's ``in_channels``; a
        single frame, or a single-image model, is refused. **All coordinates are in
        the first frame's pixel grid.**
    threshold : float, optional
        Smallest atom probability (default: the card's value, else 0.5).
    device : str or torch.device, optional
        Inference device (default CUDA when available, else CPU).
    precision : {"auto", "float32", "bfloat16", "float16"}
        Network arithmetic: ``"auto"`` is bfloat16 on CPUs with native support,
        float16 on CUDA, else float32.
    focal_step_A : float, optional
        Focal series only: the defocus step between consecutive frames (Å, positive
        = each frame more underfocused than the one before). A step outside the
        range the model was trained on (``validity["focal_step_A"]`` of its card), or
        of the wrong sign, gives a one-line validity warning (check ``focal_step``).
    augment : bool, optional
        Test-time augmentation: average the network's maps over the image turned by
        quarter turns and mirrored (eight views, eight times the network time). Default:
        the model card's ``detection.test_time_augmentation``; ``False`` trades it for
        speed (the card's confidence was fitted with its own setting).

    Returns
    -------
    Detection (a ``(DataFrame, dict)`` tuple)
        Unpacks as ``table, info``; it also draws itself (``.plot()`` returns a
        matplotlib Figure, Jupyter shows a thumbnail and a summary; see
        :class:`atomfinder.detection.overlay.Detection`).
        The atom table (columns ``x, y, x_angstrom, y_angstrom, label,
        probability, height``, and ``confidence, sigma_angstrom`` when the model
        is calibrated; a stack of independent frames gets a leading
        ``frame`` column) with positions in pixels of the input (of the first frame
        for a focal series: its first frame's pixel grid), and a dict with ``"probabilities"`` (float32
        ``[k, h, w]`` at the model sampling, class 0 = background; ``[N, k, h, w]``
        for a stack), ``"height"`` (float32 ``[h, w]`` / ``[N, h, w]`` or None),
        ``"sampling_A"`` (input Å/px), ``"model_sampling_A"`` (Å/px of the maps),
        ``"class_names"``, ``"shifts_px"`` (focal series: ``(dy, dx)`` applied
        to each frame, else None), ``"provenance"`` and ``"validity"``. The table's
        ``.attrs`` carry the same ``"provenance"`` (input, pixel size and its
        source, model name/version/path, threshold, precision, atomfinder version;
        :func:`atomfinder.detection.provenance.provenance`) and ``"validity"`` (the per-image checks of
        :mod:`atomfinder.detection.validity`, per frame for a stack).

    Warns
    -----
    ValidityWarning
        One per failed validity check (one line naming the input; for a stack, one
        per check listing the frames).
    InputNote
        One per note on how the input was read (a given pixel size that replaces the
        file's; grey stored as RGB; atoms dropped where the input had NaN or inf pixels:
        the filled pixels are flat and the network would continue the lattice into them).

    Raises
    ------
    MicrographError (a ValueError)
        Unreadable or unusable input, no pixel size, wrong frame count, a focal series
        of one frame or given to a single-image model.
    ValueError
        Unknown model (the message lists the shipped ones), bad threshold or precision,
        a focal step without ``focal_series``.
    """
    return detect_with_flag(image, model, sampling, "focal_series=True", focal_series=focal_series,
                            threshold=threshold, device=device, precision=precision, focal_step_A=focal_step_A,
                            augment=augment)


def detect_with_flag(image: Any, model: Any, sampling: float | None, focal_flag: str, *, focal_series: bool = False,
                     **options: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """:func:`detect`, with ``focal_flag`` as the words that say "focal series" in its messages.

    Parameters
    ----------
    image, model, sampling, focal_series
        As :func:`detect`.
    focal_flag : str
        How the caller's user says "focal series": ``focal_series=True`` in Python,
        the frames setting (``frames: focal series``) in the napari widget.
    **options
        ``threshold``, ``device``, ``precision``, ``focal_step_A``, ``augment``: as
        :func:`detect`.

    Returns
    -------
    Detection
        As :func:`detect`; its warnings point at the caller of :func:`detect`.
    """
    unknown = set(options) - {"threshold", "device", "precision", "focal_step_A", "augment"}
    if unknown:
        raise TypeError(f"detect_with_flag() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    threshold, device = options.get("threshold"), options.get("device")
    precision, augment = options.get("precision", "auto"), options.get("augment")
    focal_step_A = options.get("focal_step_A")
    from atomfinder.detection.validity import warn
    from atomfinder.nn.infer import check_device, check_precision  # imports torch, which detection needs anyway

    check_threshold(threshold)
    check_precision(precision)
    check_device(device)
    focal_step_A = check_focal_step_argument(focal_step_A, focal_series)
    # A lazy HyperSpy stack stays lazy: its frames are computed one at a time (run_sample).
    sample = load_sample(image, sampling, sampling_name="sampling", series="focal series" if focal_series else "stack",
                         lazy=is_signal(image))
    net, card, stem = _load(model, device)
    res = run_sample(net, card, sample, focal_series, threshold, device, precision, model_path=stem,
                      focal_step_A=focal_step_A, augment=augment, focal_flag=focal_flag)
    warn(res.validity["warnings"], stacklevel=4)  # detect_with_flag, detect, then the caller
    for note in res.notes:  # how the input was read: the command line prints these as notes
        warnings.warn(note, InputNote, stacklevel=3)
    info = {
        "probabilities": res.probabilities,
        "height": res.height,
        "sampling_A": res.sampling_A,
        "model_sampling_A": res.model_sampling_A,
        "class_names": res.class_names,
        "shifts_px": res.shifts_px,
        "provenance": res.provenance,
        "validity": res.validity,
    }
    from atomfinder.detection.overlay import Detection

    shown = sample.data if sample.data.ndim == 3 and not focal_series else res.overlay_image
    calibration = None
    if is_signal(image):
        from atomfinder.detection.signals import signal_calibration

        calibration = signal_calibration(image)
    return Detection(with_attrs(res.table, res), info, image=shown, signal_calibration=calibration)
