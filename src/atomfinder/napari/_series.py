"""Time series in napari: :func:`atomfinder.analysis.timeseries.track` on a stack, as Points layers.

It runs what ``atomfinder track`` runs (frames registered to the first, columns
found per frame, linked into sites, presence decided over the series) and writes
the same files into a folder. The sites are shown where they are in each frame:
a site at ``(x, y)`` in the first frame's grid is at ``(x + dx, y + dy)`` in frame
``i`` (``drift.csv``), so the points lie on the raw frames of the image layer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from atomfinder.napari._points import class_colour, layer_name, placement_kwargs
from atomfinder.napari._reader import METADATA_KEY, LayerData

#: Marker diameter of a site, in Å.
SITE_DIAMETER_A = 0.8
#: Layer names: ``"sites: C [image]"``.
SITE_PREFIX = "sites: "


@dataclass(frozen=True)
class SeriesResult:
    """What :func:`track_series` found.

    Attributes
    ----------
    sites : DataFrame
        ``sites.csv``: ``site, x, y, x_angstrom, y_angstrom, label`` (first frame's grid).
    presence : DataFrame
        ``presence.csv``: ``frame, site, present, probability``.
    drift_px : ndarray, shape (N, 2)
        ``(dx, dy)`` of every frame relative to the first, pixels.
    sampling_A : float
        Pixel size, Å/px.
    class_names : tuple of str
        The model's classes.
    written : dict of str to Path
        The files written, by name.
    validity_warnings : list of str
        The frames' failed validity checks, one line per check (as ``atomfinder track`` prints them).
    """

    sites: pd.DataFrame
    presence: pd.DataFrame
    drift_px: np.ndarray
    sampling_A: float
    class_names: tuple[str, ...]
    written: dict[str, Path]
    validity_warnings: list[str] = field(default_factory=list)


def track_series(image: Any, model: str, sampling_A: float | None, out_dir: str | os.PathLike[str],
                 threshold: float | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 augment: bool | None = None) -> SeriesResult:
    """Track the columns of a time series, as ``atomfinder track`` does.

    Parameters
    ----------
    image : path or ndarray
        A multi-frame file or a stack ``[N, H, W]`` (N >= 2) in time order.
    model : str
        A single-image model's name or path.
    sampling_A : float, optional
        Pixel size in Å/px (overrides a file's; required for an array).
    out_dir : path
        Folder for ``sites.csv``, ``presence.csv``, ``events.csv``, ``drift.csv`` and the plots
        (the files of an earlier run there are replaced, as each press of the button runs again).
    threshold : float, optional
        Map value that separates present from absent (default: the card's peak threshold).
    progress : callable, optional
        ``progress(done, total)`` after each frame.
    augment : bool, optional
        Test-time augmentation of every frame (default: the card's setting).

    Returns
    -------
    SeriesResult

    Raises
    ------
    ValueError
        A focal-series model, fewer than 2 frames, or an unusable input (one line).
    """
    from atomfinder.analysis.timeseries.series import load_time_series
    from atomfinder.analysis.timeseries.tracking import track

    series = load_time_series(image, model, sampling_A, threshold=threshold, sampling_name="pixel size",
                              augment=augment)
    sample = series.sample
    written = track(series.frames, series.detect_frame, sample.sampling_A, out_dir, threshold=series.threshold,
                    progress=progress, provenance=series.provenance(), no_data=sample.no_data, overwrite=True)
    drift = pd.read_csv(written["drift.csv"])[["dx", "dy"]].to_numpy(dtype=np.float64)
    return SeriesResult(sites=pd.read_csv(written["sites.csv"]), presence=pd.read_csv(written["presence.csv"]),
                        drift_px=drift, sampling_A=float(sample.sampling_A),
                        class_names=tuple(series.card.class_names), written=dict(written),
                        validity_warnings=series.validity_warnings())


def refuse_earlier_run(folder: str | os.PathLike[str], shown: int = 4) -> None:
    """Refuse a track output folder that holds an earlier run's files (as ``atomfinder track`` without --overwrite).

    Raises
    ------
    ValueError
        Naming the folder and the files found (one line).
    """
    from atomfinder._files import refuse_earlier_files
    from atomfinder.analysis.timeseries.outputs import earlier_outputs

    refuse_earlier_files(os.fspath(folder), earlier_outputs(folder),
                         "choose another track output folder, or clear it for a new temporary folder", shown)


def site_layers(result: SeriesResult, image_name: str,
                placement: dict[str, np.ndarray] | None = None) -> list[LayerData]:
    """The present sites of every frame as one Points layer ``(frame, y, x)`` per class.

    Parameters
    ----------
    result : SeriesResult
    image_name : str
        Name of the image layer (the stack).
    placement : dict, optional
        :func:`atomfinder.napari._points.image_placement` of the stack: the points get
        its translate, rotation, shear and affine, so that they lie on it.

    Returns
    -------
    list of (data, kwargs, "points")
        Features ``site`` and ``probability`` (the map's value at the site in that frame).
    """
    present = result.presence[result.presence["present"].astype(bool)]
    rows = present.merge(result.sites[["site", "x", "y", "label"]], on="site", how="inner")
    frame = rows["frame"].to_numpy(dtype=np.int64)
    d = result.drift_px[frame] if len(frame) else np.zeros((0, 2))
    rows = rows.assign(fx=rows["x"].to_numpy() + d[:, 0], fy=rows["y"].to_numpy() + d[:, 1])
    s = result.sampling_A
    labels = list(result.class_names) + [c for c in pd.unique(rows["label"]) if c not in result.class_names]
    layers: list[LayerData] = []
    for i, label in enumerate(labels):
        part = rows[rows["label"] == label]
        data = part[["frame", "fy", "fx"]].to_numpy(dtype=np.float64).reshape(-1, 3)
        kwargs = {
            "name": layer_name(str(label), image_name, SITE_PREFIX), "ndim": 3, "scale": (1.0, s, s),
            "units": ("pixel", "angstrom", "angstrom"),
            "features": pd.DataFrame({"site": part["site"].to_numpy(dtype=np.int64),
                                      "probability": part["probability"].to_numpy(dtype=np.float64)}),
            "face_color": class_colour(i), "border_color": "white", "border_width": 0.05,
            "size": SITE_DIAMETER_A / s,
            "metadata": {METADATA_KEY: {"kind": "sites", "label": str(label), "sampling_A": s,
                                        "image": image_name, "out_dir": os.fspath(Path(result.written["sites.csv"]).parent)}},
            **placement_kwargs(placement, 3),
        }
        layers.append((data, kwargs, "points"))
    return layers
