"""The frames of a time series and what was detected in each.

The stack check (:func:`check_frames`), each frame's no-data mask, one frame's
detections and atom map (:class:`FrameDetection`, :func:`as_detections`) and their
move into the first frame's pixel grid (:func:`registered_xy`: minus the drift).
Part of :mod:`atomfinder.analysis.timeseries`, which re-exports every public name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


def as_detections(table: Any) -> pd.DataFrame:
    """A frame's detections as a DataFrame with columns ``x, y, label, probability``.

    Accepts a DataFrame (the DESIGN.md atom table, or any with ``x`` and ``y``) or an
    :class:`atomfinder.detection.peaks.AtomTable`-like object with those attributes.
    A missing ``label`` becomes 1 and a missing ``probability`` 1.0.
    """
    if table is None:
        return pd.DataFrame({"x": [], "y": [], "label": [], "probability": []})

    def get(name: str) -> Any:
        if isinstance(table, pd.DataFrame):
            return table[name].to_numpy() if name in table.columns else None
        return getattr(table, name, None)

    x, y = get("x"), get("y")
    if x is None or y is None:
        raise ValueError("detections need x and y (pixels)")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    label, prob = get("label"), get("probability")
    label = np.ones(len(x), dtype=np.int64) if label is None else np.asarray(label).reshape(-1)
    prob = np.ones(len(x)) if prob is None else np.asarray(prob, dtype=np.float64).reshape(-1)
    return pd.DataFrame({"x": x, "y": y, "label": label, "probability": prob})


@dataclass(frozen=True)
class FrameDetection:
    """What the per-frame detector of :func:`track` returns: detections and the map they came from.

    Attributes
    ----------
    table : DataFrame or AtomTable
        Detections with ``x, y`` in the frame's pixels (see :func:`as_detections`).
    atom_map : ndarray of float, shape (h, w), optional
        Atom probability (0-1, e.g. ``1 - p(background)``) over the whole frame. The
        presence of every site is read from it in every frame
        (:func:`site_probabilities`); without it, a site's value is its matched
        detection's probability, 0 where nothing was detected
        (:func:`matched_probability`).
    map_sampling_A : float, optional
        Pixel size of ``atom_map`` in Å/pixel (e.g. the model's); ``None`` when the
        map is on the frame's own pixel grid. Both grids share the origin (centre of
        the top-left pixel).
    """

    table: Any
    atom_map: np.ndarray | None = None
    map_sampling_A: float | None = None


def as_frame_detection(result: Any) -> FrameDetection:
    """A detector's result as a :class:`FrameDetection` (a bare table has no map)."""
    return result if isinstance(result, FrameDetection) else FrameDetection(result)


def _check_drift(drift_px: np.ndarray, n: int) -> np.ndarray:
    d = np.asarray(drift_px, dtype=np.float64).reshape(-1, 2) if np.size(drift_px) else np.zeros((0, 2))
    if d.shape != (n, 2):
        raise ValueError(f"drift must have shape ({n}, 2) for {n} frames, got {np.shape(drift_px)}")
    return d


def registered_xy(table: Any, drift: np.ndarray) -> np.ndarray:
    """Detections of one frame moved into the reference grid: ``(x - dx, y - dy)``, shape (n, 2)."""
    det = as_detections(table)
    return np.column_stack([det["x"].to_numpy() - drift[0], det["y"].to_numpy() - drift[1]])


def check_frames(frames_images: Any) -> np.ndarray:
    """The frames of a time series as an ``(N, H, W)`` array, refused in one line when unusable.

    Raises
    ------
    ValueError
        Not ``(N, H, W)``, fewer than 2 frames, or NaN or inf pixels (fill them and
        pass where they were as ``no_data``, as :func:`load_time_series` does).
    """
    stack = np.asarray(frames_images)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"expected frames of shape (N, H, W), got {np.shape(frames_images)}")
    if stack.shape[0] < 2:
        raise ValueError(f"a time series needs at least 2 frames, got {stack.shape[0]}")
    if np.issubdtype(stack.dtype, np.inexact):
        counts = (~np.isfinite(stack)).reshape(len(stack), -1).sum(axis=1)
        if counts.any():
            first = int(np.flatnonzero(counts)[0])
            raise ValueError(
                f"frame {first} has {counts[first]} NaN or inf pixels ({int((counts > 0).sum())} frames have some); "
                "fill them and pass where they were as no_data: atomfinder.detection.sample.load_sample (or "
                "load_time_series) does both, as sample.data and sample.no_data")
    return stack


def _no_data_frames(no_data: np.ndarray | None, shape: tuple[int, ...]) -> list[np.ndarray | None]:
    """One no-data mask (or None) per frame of a stack of ``shape``."""
    if no_data is None:
        return [None] * shape[0]
    masks = np.asarray(no_data, dtype=bool).reshape(shape)
    return [m if m.any() else None for m in masks]
