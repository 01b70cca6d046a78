"""Provenance of an atom table: what it was made from and how (DESIGN.md).

:func:`provenance` records the input, the pixel size and its source, the model's
name, version and path, the threshold, the arithmetic and atomfinder's version;
:func:`sidecar` is the JSON file written beside a table with it and the validity
checks. Both travel with every table (``DataFrame.attrs``, ``<stem>.json``).
"""

from __future__ import annotations

from typing import Any

from atomfinder.detection.sample import Sample

__all__ = ["calibration_record", "effective_precision", "provenance", "sidecar"]


def calibration_record(sample: Sample) -> dict[str, Any]:
    """The (first) file's calibration as written there, for a provenance record.

    Returns
    -------
    dict
        ``calibration_source`` (where in the file the pixel size was found: ``"ImageJ
        metadata"``, ``"OME-XML"``, ``"MRC metadata"``, ...; None when the file gives
        none), ``file_unit`` and ``file_scale`` (its unit and scale per pixel, as
        written), ``calibration_note`` (why the file gives no pixel size, or None);
        all None for an array or a signal.
    """
    cal = sample.calibration or {}
    scale = cal.get("scale")
    return {
        "calibration_source": cal.get("source"),
        "file_unit": cal.get("unit"),
        "file_scale": float(scale) if isinstance(scale, (int, float)) else scale,  # as written: JSON-able already
        "calibration_note": cal.get("note"),
    }


def effective_precision(device: Any, precision: str) -> str:
    """The arithmetic the network runs in: ``"float32"``, ``"bfloat16"`` or ``"float16"``."""
    import torch

    from atomfinder.nn.infer import autocast_dtype

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = autocast_dtype(dev, precision)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def provenance(
    sample: Sample, card: Any, *, focal_series: bool, threshold: float | None, device: Any = None,
    precision: str = "auto", model_path: str | None = None, focal_step_A: float | None = None,
    augment: bool | None = None,
) -> dict[str, Any]:
    """What an atom table was made from and how (the ``provenance`` of DESIGN.md).

    Parameters
    ----------
    sample : Sample
        The input as read.
    card : ModelCard
        The model's card.
    focal_series : bool
        Whether the frames were used as one focal series.
    threshold : float, optional
        The threshold asked for (None: the card's).
    device, precision
        As given to the detection.
    model_path : str, optional
        The model's stem on disk, when known.
    focal_step_A : float, optional
        The focal series' defocus step between frames as given (Å), when known.
    augment : bool, optional
        Test-time augmentation as asked for (None: the card's setting).

    Returns
    -------
    dict
        ``input``, ``input_files``, ``frames``, ``focal_series``, ``focal_step_A``
        (focal series: the step given, else None), ``sampling_A``,
        ``sampling_source``, ``file_sampling_A`` (the pixel size written in the (first) file, also
        when a given value replaced it; None without one), ``calibration_source``, ``file_unit``,
        ``file_scale`` and ``calibration_note`` (:func:`calibration_record`), ``model`` (``name``,
        ``version``, ``path``, ``sampling_A``), ``threshold``, ``threshold_source`` (``"card"`` or
        ``"argument"``), ``min_distance_A``, ``class_log_bias`` (the card's class priors,
        or None), ``honeycomb`` (the card's sublattice rule, or None), ``test_time_augmentation``
        (whether the maps were averaged over the square's symmetries: the card's setting
        unless ``augment`` overrides it),
        ``min_confidence`` (the card's confidence floor, 0 for none), ``precision`` (the arithmetic used),
        ``precision_requested`` and ``atomfinder_version``.
    """
    from atomfinder import __version__
    from atomfinder.detection.pipeline import confidence_floor, detection_settings, uses_augmentation

    used_threshold, min_distance_A = detection_settings(card, threshold)
    return {
        "input": sample.source,
        "input_files": list(sample.files),
        "frames": sample.n_frames,
        "focal_series": bool(focal_series),
        "focal_step_A": None if focal_step_A is None else float(focal_step_A),
        "sampling_A": float(sample.sampling_A),
        "sampling_source": sample.sampling_source,
        "file_sampling_A": None if sample.file_sampling_A is None else float(sample.file_sampling_A),
        **calibration_record(sample),
        "model": {"name": card.name, "version": card.version, "path": model_path,
                  "sampling_A": float(card.sampling_A)},
        "threshold": used_threshold,
        "threshold_source": "card" if threshold is None else "argument",
        "min_distance_A": min_distance_A,
        "min_confidence": confidence_floor(card),
        "class_log_bias": card.detection.get("class_log_bias"),
        "honeycomb": card.detection.get("honeycomb"),
        "test_time_augmentation": uses_augmentation(card, augment),
        "precision": effective_precision(device, precision),
        "precision_requested": precision,
        "atomfinder_version": __version__,
    }


def sidecar(res: Any, table_name: str) -> dict[str, Any]:
    """The JSON sidecar of an atom table: its provenance and validity checks.

    Parameters
    ----------
    res : SampleResult
        The detection result (:class:`atomfinder.detection.micrograph.SampleResult`).
    table_name : str
        File name of the atom table it describes.

    Returns
    -------
    dict
        ``{"atom_table": name, "columns": [...], "rows": n, "provenance": {...},
        "validity": {...}}``.
    """
    return {"atom_table": table_name, "columns": [str(c) for c in res.table.columns], "rows": int(len(res.table)),
            "provenance": res.provenance, "validity": res.validity}
