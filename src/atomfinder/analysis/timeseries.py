"""Time series: which atomic-column sites are occupied in each frame, and when that changes.

The chain (:func:`track` runs all of it)::

    frames ──► register_frames ──► drift (dx, dy) per frame
       │                               │
       └──► detect (per raw frame) ──► link_sites ──► Sites (first-frame grid)
            (detections + atom map)    │
                 site_probabilities (map value at every site, every frame)
                       │
                       presence (two-state HMM per site) ──► events ──► summary ──► CSV + plots + GIF

Conventions (DESIGN.md, "Time series output")
---------------------------------------------
* Positions are ``(x, y)`` = (column, row) in pixels, pixel centres at integers,
  origin at the centre of the top-left pixel.
* **Drift sign**: ``drift[i] = (dx, dy)`` means a feature at ``(x, y)`` in the
  reference frame (frame 0) is at ``(x + dx, y + dy)`` in frame ``i``. A detection at
  ``(x_i, y_i)`` in frame ``i`` is therefore at ``(x_i - dx, y_i - dy)`` in the first
  frame's grid, and every coordinate written by this module is in that grid.
* Registration (:func:`register_frames`, in :mod:`atomfinder.detection.registration`,
  the module focal series use too): band-pass; whole-pixel masked normalised
  cross-correlation (picks the right lattice peak from non-periodic content such as
  the particle outline); then sub-pixel Hann-windowed cross-correlation of the
  band-passed frames (upsampled DFT).
* Detection runs on the raw (unshifted) frames, so positions are never degraded by
  interpolation; only the overlay animation shows resampled, registered frames.

Linking (:func:`link_sites`) is frame-by-frame one-to-one assignment
(:func:`atomfinder.analysis.matching.match_positions`, i.e. connected components +
:func:`scipy.optimize.linear_sum_assignment`) of each frame's registered detections to
the running mean positions of the sites found so far, within ``tolerance_px``;
unmatched detections open new sites. A final pass merges sites closer than the
tolerance that are never detected in the same frame (a column whose first detections
were split by noise). The detections only make the sites (sites may also come from
elsewhere, e.g. a lattice model).

Presence is decided per site from its atom-map values over the whole series, not by
a threshold in each frame: the map is read at the site in *every* frame
(:func:`site_probabilities`, detected there or not), each value becomes a
log-likelihood ratio ``logit(p) - logit(threshold)`` (:func:`presence_evidence`),
and a two-state hidden Markov model (present/absent) with a cost in nats per change
of state is decoded by Viterbi (:func:`viterbi_states`). The default cost comes from
the frame-to-frame noise of the map values of mostly present sites
(:func:`switch_cost_from_noise`), so a noisier (lower-dose) series needs more
evidence for a change. Each event's confidence is the posterior probability of
that change from forward-backward (:func:`change_posteriors`). The decoder is
:mod:`atomfinder.analysis.presence` (pure NumPy); this module re-exports it.

This module never imports the simulation stack (imaging, structures, datasets,
abTEM, ase); it needs NumPy, SciPy, scikit-image, pandas, matplotlib and Pillow.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.ndimage import map_coordinates
from scipy.spatial import cKDTree

from atomfinder._files import atomic_write, check_output_dir
from atomfinder.analysis.matching import match_positions
from atomfinder.analysis.plots import CLASS_COLOURS, plt, save_figure
from atomfinder.analysis.presence import (  # noqa: F401 (re-exported: the time-series API)
    MIN_SWITCH_COST,
    change_posteriors,
    check_switch_cost,
    check_threshold,
    evidence_cap,
    presence_evidence,
    smooth_states,
    switch_cost_from_noise,
    viterbi_states,
)
from atomfinder.detection.preprocess import in_no_data
from atomfinder.detection.registration import (  # noqa: F401 (re-exported: the time-series API)
    REGISTRATION_MODES,
    Registration,
    RegistrationWarning,
    bandpass,
    bin_image,
    coarse_bin,
    coarse_shift,
    frame_shift,
    hann_window,
    pair_shift,
    register_frames,
    register_images,
    register_series,
    smooth,
)

#: Column order of the output tables (DESIGN.md).
SITES_COLUMNS = ("site", "x", "y", "x_angstrom", "y_angstrom", "label")
PRESENCE_COLUMNS = ("frame", "site", "present", "probability")
EVENTS_COLUMNS = ("frame", "site", "event", "x", "y", "confidence")
DRIFT_COLUMNS = ("frame", "dx", "dy", "correlation", "correlation_sigmas", "disagreement_px", "reliable")
OCCUPANCY_COLUMNS = ("frame", "occupancy", "events", "event_rate")
#: Largest number of frames and largest side (display pixels) of ``overlay.gif``.
GIF_MAX_FRAMES = 50
GIF_MAX_SIDE = 400
#: The files :func:`track` writes into its folder (``atomfinder track`` refuses to replace them without --overwrite).
TRACK_OUTPUTS = ("sites.csv", "presence.csv", "events.csv", "drift.csv", "occupancy.csv", "presence.png",
                 "occupancy.png", "overlay.gif", "provenance.json")


# --------------------------------------------------------------------------- detections


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


# --------------------------------------------------------------------------- sites


@dataclass(frozen=True)
class Sites:
    """Column sites of a time series, in the reference frame's pixel grid.

    Attributes
    ----------
    x, y : ndarray of float, shape (S,)
        Mean position of the site's detections in pixels (x = column, y = row).
    label : ndarray, shape (S,)
        Majority label of the site's detections (as given: class names or indices).
    n_detections : ndarray of int, shape (S,)
        Number of frames the site was detected in while linking.

    Site ``i`` is row ``i``; :func:`link_sites` numbers sites in reading order (by
    ``y``, then ``x``).
    """

    x: np.ndarray
    y: np.ndarray
    label: np.ndarray
    n_detections: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", np.asarray(self.x, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "y", np.asarray(self.y, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "label", np.asarray(self.label).reshape(-1))
        object.__setattr__(self, "n_detections", np.asarray(self.n_detections, dtype=np.int64).reshape(-1))
        n = len(self.x)
        if not all(len(a) == n for a in (self.y, self.label, self.n_detections)):
            raise ValueError("Sites arrays must all have the same length")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def xy(self) -> np.ndarray:
        """Positions as an ``(S, 2)`` array of ``(x, y)`` in pixels."""
        return np.column_stack([self.x, self.y]) if len(self) else np.zeros((0, 2))

    def subset(self, keep: np.ndarray) -> "Sites":
        """The sites selected by a boolean mask or index array (renumbered from 0)."""
        return Sites(self.x[keep], self.y[keep], self.label[keep], self.n_detections[keep])

    def to_frame(self, sampling_A: float) -> pd.DataFrame:
        """``sites.csv`` table: ``site, x, y, x_angstrom, y_angstrom, label`` (pixels, Å)."""
        return pd.DataFrame(
            {
                "site": np.arange(len(self), dtype=np.int64),
                "x": self.x,
                "y": self.y,
                "x_angstrom": self.x * sampling_A,
                "y_angstrom": self.y * sampling_A,
                "label": self.label,
            },
            columns=list(SITES_COLUMNS),
        )


def _majority(labels: Sequence[Any]) -> Any:
    """Most common label; ties go to the one seen first."""
    return Counter(labels).most_common(1)[0][0] if len(labels) else 1


_Member = tuple[int, float, float, Any]  # (frame, x, y, label) of a linked detection


def _mean_xy(members: list[_Member]) -> np.ndarray:
    return np.array([[m[1], m[2]] for m in members]).mean(axis=0)


def _merge_disjoint(members: list[list[_Member]], tolerance_px: float) -> list[list[_Member]]:
    """Merge sites closer than the tolerance that never share a frame, closest pair first.

    In rounds: pairs within the tolerance are visited by increasing distance and
    merged unless one of the two already merged this round (its mean has moved) or
    they share a frame; means are then recomputed, until a round merges nothing.
    """
    members = [m for m in members if m]
    while len(members) > 1:
        means = np.array([_mean_xy(m) for m in members])
        pairs = cKDTree(means).query_pairs(r=tolerance_px, output_type="ndarray")
        if len(pairs) == 0:
            break
        frames = [{d[0] for d in m} for m in members]
        dist = np.hypot(*(means[pairs[:, 0]] - means[pairs[:, 1]]).T)
        touched: set[int] = set()
        for k in np.argsort(dist, kind="stable"):
            a, b = (int(v) for v in pairs[k])
            if a in touched or b in touched or frames[a] & frames[b]:
                continue
            members[a], members[b] = members[a] + members[b], []
            touched.update((a, b))
        if not touched:
            break
        members = [m for m in members if m]
    return members


def link_sites(
    tables: Sequence[Any],
    drift_px: np.ndarray,
    tolerance_px: float,
    *,
    min_frames: int = 1,
    merge: bool = True,
) -> Sites:
    """Cluster detections of all frames into column sites.

    Every frame's detections are moved into the reference grid (minus the drift).
    Frame by frame, they are matched one-to-one to the running mean positions of the
    sites found so far (:func:`atomfinder.analysis.matching.match_positions`: the
    largest number of pairs within ``tolerance_px``, then the smallest summed
    distance); a matched detection joins its site (whose mean is updated), an
    unmatched one opens a new site. So a site holds at most one detection per frame.
    With ``merge``, sites closer than ``tolerance_px`` that never occur in the same
    frame are then merged, closest first.

    Parameters
    ----------
    tables : sequence of DataFrame or AtomTable
        Detections per frame (``x, y`` in that frame's pixels; ``label``,
        ``probability``), see :func:`as_detections`.
    drift_px : ndarray, shape (N, 2)
        ``(dx, dy)`` per frame from :func:`register_frames`.
    tolerance_px : float
        Largest distance in pixels between a detection and its site (about a third
        of the smallest column spacing).
    min_frames : int
        Sites detected in fewer frames are dropped (1 keeps every site).
    merge : bool
        Run the merge pass described above.

    Returns
    -------
    Sites
        Position = mean of the site's registered detections, label = majority label;
        numbered in reading order (by ``y``, then ``x``).
    """
    if not tolerance_px > 0:
        raise ValueError(f"tolerance_px must be positive, got {tolerance_px}")
    drift = _check_drift(drift_px, len(tables))
    members: list[list[_Member]] = []
    sums = np.zeros((0, 2))
    counts = np.zeros(0)
    for f, table in enumerate(tables):
        det = as_detections(table)
        xy = registered_xy(det, drift[f])
        if len(xy) == 0:
            continue
        labels = det["label"].to_numpy()
        means = sums / counts[:, None] if len(counts) else np.zeros((0, 2))
        det_idx, site_idx = match_positions(xy, means, tolerance_px)
        for d, s in zip(det_idx, site_idx):
            members[s].append((f, xy[d, 0], xy[d, 1], labels[d]))
        sums[site_idx] += xy[det_idx]
        counts[site_idx] += 1
        new = np.setdiff1d(np.arange(len(xy)), det_idx)
        members.extend([(f, xy[d, 0], xy[d, 1], labels[d])] for d in new)
        sums = np.vstack([sums, xy[new]])
        counts = np.concatenate([counts, np.ones(len(new))])
    if merge:
        members = _merge_disjoint(members, tolerance_px)
    members = [m for m in members if len({d[0] for d in m}) >= max(1, int(min_frames))]
    if not members:
        return Sites(np.zeros(0), np.zeros(0), np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64))
    xy = np.array([_mean_xy(m) for m in members])
    labels = [_majority([d[3] for d in m]) for m in members]
    if all(isinstance(v, (int, np.integer)) for v in labels):
        lab = np.asarray(labels, dtype=np.int64)
    else:
        lab = np.empty(len(labels), dtype=object)
        lab[:] = labels
    n_det = np.array([len({d[0] for d in m}) for m in members], dtype=np.int64)
    order = np.lexsort((xy[:, 0], xy[:, 1]))
    return Sites(xy[order, 0], xy[order, 1], lab[order], n_det[order])


def refine_drift(
    tables: Sequence[Any], drift_px: np.ndarray, sites: Sites, tolerance_px: float, min_fraction: float = 0.5
) -> np.ndarray:
    """Refine image-registration drift with the detected columns themselves.

    Only persistent sites are used: those detected in at least ``min_fraction`` of
    the frames (and at least 2), so noise detections and transient surface columns
    do not pull the estimate. Each frame's registered detections are matched to
    these sites (as in :func:`presence`); the mean offset ``c_i`` (pixels) of the
    matched detections from their sites is a residual drift, so the refined drift is
    ``drift_i + c_i - c_0`` (the reference frame 0 keeps drift 0; ``c_0 = 0`` when it
    has no matches, and frames without matches keep their drift). Its error is about
    the per-column position error over ``sqrt(n_columns)`` (times sqrt 2 for the
    anchor), so it beats image correlation only with many well-located columns;
    relink afterwards with :func:`link_sites`.

    Returns
    -------
    ndarray of float64, shape (N, 2)
    """
    drift = _check_drift(drift_px, len(tables)).copy()
    corr = np.zeros_like(drift)
    sites = sites.subset(sites.n_detections >= max(2, int(np.ceil(min_fraction * len(tables)))))
    for f, table in enumerate(tables):
        xy = registered_xy(table, drift[f])
        if len(xy) == 0 or len(sites) == 0:
            continue
        d, s = match_positions(xy, sites.xy, tolerance_px)
        if len(d):
            corr[f] = (xy[d] - sites.xy[s]).mean(axis=0)
    return drift + corr - corr[0] if len(drift) else drift


def sites_in_view(
    sites: Sites, drift_px: np.ndarray, shape: tuple[int, int], margin_px: float = 0.0
) -> np.ndarray:
    """Which sites stay inside every frame's field of view, ``margin_px`` from the edges.

    Site ``(x, y)`` is at ``(x + dx_i, y + dy_i)`` in frame ``i``; it is in view when
    that lies within ``[margin, W - 1 - margin] x [margin, H - 1 - margin]`` for every
    frame. Sites outside (drifted out, or near the edge where detection is unreliable)
    cannot be told absent from unseen, so :func:`track` drops them.

    Returns
    -------
    ndarray of bool, shape (S,)
    """
    drift = np.asarray(drift_px, dtype=np.float64).reshape(-1, 2)
    if len(sites) == 0 or len(drift) == 0:
        return np.ones(len(sites), dtype=bool)
    h, w = shape
    x = sites.x[:, None] + drift[None, :, 0]
    y = sites.y[:, None] + drift[None, :, 1]
    ok = (x >= margin_px) & (x <= w - 1 - margin_px) & (y >= margin_px) & (y <= h - 1 - margin_px)
    return ok.all(axis=1)


# --------------------------------------------------------------------------- presence and events


def sample_map(atom_map: np.ndarray, xy_px: np.ndarray) -> np.ndarray:
    """Bilinear value of a map at positions ``(x, y)`` in its own pixels.

    Positions outside the map are moved onto its nearest edge (a site kept by
    :func:`sites_in_view` lies inside the frame; the map, resampled to the model's
    pixel size, can be a fraction of a pixel smaller).

    Parameters
    ----------
    atom_map : ndarray, shape (H, W)
        E.g. the atom probability ``1 - p(background)``.
    xy_px : ndarray, shape (n, 2)
        ``(x, y)`` = (column, row) in the map's pixels, pixel centres at integers.

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    m = np.asarray(atom_map)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"expected a non-empty [H, W] map, got shape {m.shape}")
    xy = np.asarray(xy_px, dtype=np.float64).reshape(-1, 2)
    h, w = m.shape
    rows, cols = np.clip(xy[:, 1], 0, h - 1), np.clip(xy[:, 0], 0, w - 1)
    return map_coordinates(m.astype(np.float64, copy=False), [rows, cols], order=1, mode="nearest")


def matched_probability(table: Any, drift: np.ndarray, sites: Sites, tolerance_px: float) -> np.ndarray:
    """Stand-in for the map's value at each site, for a detector that gives no map.

    The frame's registered detections are matched one-to-one to the sites
    (:func:`atomfinder.analysis.matching.match_positions`, within ``tolerance_px``); a
    matched site gets its detection's ``probability``, every other site 0.

    Returns
    -------
    ndarray of float64, shape (S,)
    """
    out = np.zeros(len(sites))
    det = as_detections(table)
    if len(det) and len(sites):
        d, s = match_positions(registered_xy(det, drift), sites.xy, tolerance_px)
        out[s] = det["probability"].to_numpy()[d]
    return out


def site_probabilities(
    detections: Sequence[FrameDetection], drift_px: np.ndarray, sites: Sites, sampling_A: float, tolerance_px: float
) -> np.ndarray:
    """The atom map's value at every site in every frame, detected there or not.

    Site ``(x, y)`` (first-frame pixels) is at ``(x + dx_i, y + dy_i)`` in frame ``i``,
    i.e. at that times ``sampling_A / map_sampling_A`` in the pixels of the frame's
    map, where the map is read by bilinear interpolation (:func:`sample_map`). A frame
    whose detector gave no map falls back to :func:`matched_probability`.

    Parameters
    ----------
    detections : sequence of FrameDetection
        One per frame (:func:`as_frame_detection`).
    drift_px : ndarray, shape (N, 2)
        ``(dx, dy)`` per frame from :func:`register_frames`.
    sites : Sites
    sampling_A : float
        Pixel size of the frames (Å/pixel).
    tolerance_px : float
        Matching distance of the fallback, in frame pixels.

    Returns
    -------
    ndarray of float64, shape (N, S)
    """
    drift = _check_drift(drift_px, len(detections))
    prob = np.zeros((len(detections), len(sites)))
    for f, det in enumerate(detections):
        if len(sites) == 0:
            break
        if det.atom_map is None:
            prob[f] = matched_probability(det.table, drift[f], sites, tolerance_px)
        else:
            scale = 1.0 if det.map_sampling_A is None else sampling_A / det.map_sampling_A
            prob[f] = sample_map(det.atom_map, (sites.xy + drift[f]) * scale)
    return prob


def presence(
    probability: np.ndarray,
    threshold: float = 0.5,
    switch_cost: float | None = None,
    min_run: int = 1,
) -> pd.DataFrame:
    """Decide which sites are occupied in each frame from their map values over the series.

    Each site is a two-state hidden Markov model (present/absent) whose evidence in
    frame ``t`` is :func:`presence_evidence` of its map value, decoded by
    :func:`viterbi_states` with ``switch_cost`` nats per change (default
    :func:`switch_cost_from_noise`). So a frame in which the map dips below the
    threshold within its noise does not flip a site, a lasting change does, and a
    one-frame change counts only when the map leaves no doubt. With ``min_run > 1``
    the decoded states are then smoothed by :func:`smooth_states` (a change must also
    last ``min_run`` frames).

    Parameters
    ----------
    probability : ndarray, shape (N, S)
        Atom-map value of each site in each frame (:func:`site_probabilities`).
    threshold : float
        Map value that separates present from absent (e.g. the model card's peak
        threshold).
    switch_cost : float, optional
        Nats per change of state; default :func:`switch_cost_from_noise`.
    min_run : int
        Frames a change must last (1: no extra smoothing); a change in the last
        ``min_run - 1`` frames is ignored.

    Returns
    -------
    DataFrame
        ``frame, site, present, probability``, one row per (frame, site), sorted by
        frame then site: ``present`` the decided 0/1 state, ``probability`` the map
        value as given (never overwritten).
    """
    prob = np.asarray(probability, dtype=np.float64)
    if prob.ndim != 2:
        raise ValueError(f"expected map values of shape (N, S), got {prob.shape}")
    n_frames, n_sites = prob.shape
    cost = switch_cost_from_noise(prob, threshold) if switch_cost is None else switch_cost
    states = smooth_states(viterbi_states(presence_evidence(prob, threshold), cost), min_run)
    return pd.DataFrame(
        {
            "frame": np.repeat(np.arange(n_frames, dtype=np.int64), n_sites),
            "site": np.tile(np.arange(n_sites, dtype=np.int64), n_frames),
            "present": states.reshape(-1),
            "probability": prob.reshape(-1),
        },
        columns=list(PRESENCE_COLUMNS),
    )


def _table_matrix(
    presence_df: pd.DataFrame, column: str, n_sites: int | None, n_frames: int | None, fill: float, dtype: type
) -> np.ndarray:
    """One column of a presence table as a (n_frames, n_sites) array; missing rows hold ``fill``."""
    empty = len(presence_df) == 0
    if n_frames is None:
        n_frames = 0 if empty else int(presence_df["frame"].max()) + 1
    if n_sites is None:
        n_sites = 0 if empty else int(presence_df["site"].max()) + 1
    m = np.full((n_frames, n_sites), fill, dtype=dtype)
    if not empty:
        rows, cols = presence_df["frame"].to_numpy(int), presence_df["site"].to_numpy(int)
        m[rows, cols] = presence_df[column].to_numpy(dtype)
    return m


def presence_matrix(
    presence_df: pd.DataFrame, n_sites: int | None = None, n_frames: int | None = None
) -> np.ndarray:
    """``present`` as an int array of shape (n_frames, n_sites) (missing rows count as 0).

    Sizes default to the largest frame and site numbers in the table plus one.
    """
    return _table_matrix(presence_df, "present", n_sites, n_frames, 0, np.int64)


def probability_matrix(
    presence_df: pd.DataFrame, n_sites: int | None = None, n_frames: int | None = None
) -> np.ndarray:
    """``probability`` (the map values) as a float array of shape (n_frames, n_sites); missing rows are NaN."""
    return _table_matrix(presence_df, "probability", n_sites, n_frames, np.nan, np.float64)


def events(
    presence_df: pd.DataFrame,
    sites: Sites,
    n_frames: int | None = None,
    *,
    threshold: float = 0.5,
    switch_cost: float | None = None,
) -> pd.DataFrame:
    """Appearances and disappearances of sites, each with its confidence.

    An event is written for frame ``t`` and site ``s`` when the site's decided state
    (``present``) in ``t`` differs from its state in ``t - 1`` (DESIGN.md); frame 0
    has no events. Its ``confidence`` is the posterior probability of that change at
    that frame given all of the site's map values (``probability``),
    :func:`change_posteriors` with the same ``threshold`` and ``switch_cost`` as
    :func:`presence` (default :func:`switch_cost_from_noise` of the ``probability``
    column, as there). ``n_frames`` is needed only when ``presence_df`` is empty (no
    sites).

    Returns
    -------
    DataFrame
        ``frame, site, event, x, y, confidence`` (event ``"appear"`` or
        ``"disappear"``; ``x, y`` the site position in reference-frame pixels;
        ``confidence`` in [0, 1]), sorted by frame then site.
    """
    m = presence_matrix(presence_df, len(sites), n_frames)
    if len(m) < 2 or m.shape[1] == 0:
        dtypes = (np.int64, np.int64, object, np.float64, np.float64, np.float64)
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(EVENTS_COLUMNS, dtypes)})
    prob = probability_matrix(presence_df, len(sites), len(m))
    cost = switch_cost_from_noise(prob, threshold) if switch_cost is None else switch_cost
    appear, disappear = change_posteriors(presence_evidence(prob, threshold), cost)
    change = np.diff(m, axis=0)
    f, s = np.nonzero(change)
    up = change[f, s] > 0
    return pd.DataFrame(
        {
            "frame": (f + 1).astype(np.int64),
            "site": s.astype(np.int64),
            "event": np.where(up, "appear", "disappear").astype(object),
            "x": sites.x[s],
            "y": sites.y[s],
            "confidence": np.where(up, appear[f, s], disappear[f, s]),
        },
        columns=list(EVENTS_COLUMNS),
    )


def summary(
    presence_df: pd.DataFrame,
    events_df: pd.DataFrame,
    frame_interval_s: float | None = None,
    *,
    n_frames: int | None = None,
    n_sites: int | None = None,
) -> pd.DataFrame:
    """Occupancy and event rate per frame.

    Parameters
    ----------
    presence_df : DataFrame
        From :func:`presence`.
    events_df : DataFrame
        From :func:`events`.
    frame_interval_s : float, optional
        Time between frames in seconds. Without it the rate is per frame.
    n_frames, n_sites : int, optional
        Sizes of the series, needed only when they cannot be read from
        ``presence_df`` (no sites: the table is empty).

    Returns
    -------
    DataFrame
        ``frame, occupancy, events, event_rate``: ``occupancy`` = fraction of sites
        present (0 when there are no sites), ``events`` = number of appear +
        disappear events in the frame, ``event_rate`` = events per site per frame, or
        per site per second when ``frame_interval_s`` is given (0 for frame 0).
    """
    m = presence_matrix(presence_df, n_sites, n_frames)
    n_frames, n_sites = m.shape
    occ = m.mean(axis=1) if n_sites else np.zeros(n_frames)
    n_ev = np.zeros(n_frames, dtype=np.int64)
    if len(events_df):
        n_ev += np.bincount(events_df["frame"].to_numpy(int), minlength=n_frames)[:n_frames]
    rate = n_ev / max(n_sites, 1)
    if frame_interval_s is not None:
        if not frame_interval_s > 0:
            raise ValueError(f"frame_interval_s must be positive, got {frame_interval_s}")
        rate = rate / frame_interval_s
    return pd.DataFrame(
        {"frame": np.arange(n_frames, dtype=np.int64), "occupancy": occ, "events": n_ev, "event_rate": rate},
        columns=list(OCCUPANCY_COLUMNS),
    )


# --------------------------------------------------------------------------- outputs


def drift_table(drift_px: np.ndarray, registration: Registration | None = None) -> pd.DataFrame:
    """``drift.csv`` table: the drift of every frame and the checks of its registration.

    Parameters
    ----------
    drift_px : ndarray, shape (N, 2)
        ``(dx, dy)`` in pixels, sign as in :func:`register_frames` (the drift used,
        e.g. refined by :func:`refine_drift`).
    registration : Registration, optional
        The image registration's checks (:func:`register_series`); without it the
        check columns are empty and every frame counts as reliable.

    Returns
    -------
    DataFrame
        ``frame, dx, dy, correlation, correlation_sigmas, disagreement_px, reliable``
        (:class:`atomfinder.detection.registration.Registration`; ``reliable`` 1 or 0).
    """
    d = np.asarray(drift_px, dtype=np.float64).reshape(-1, 2)
    n = len(d)
    nan = np.full(n, np.nan)
    reg = registration
    return pd.DataFrame(
        {
            "frame": np.arange(n, dtype=np.int64),
            "dx": d[:, 0],
            "dy": d[:, 1],
            "correlation": nan if reg is None else reg.correlation,
            "correlation_sigmas": nan if reg is None else reg.sigmas,
            "disagreement_px": nan if reg is None else reg.disagreement_px,
            "reliable": np.ones(n, dtype=np.int64) if reg is None else reg.reliable.astype(np.int64),
        },
        columns=list(DRIFT_COLUMNS),
    )


#: Units of the time-series tables, as written into ``provenance.json``.
TRACK_UNITS = {
    "x, y": "pixels of the first frame (x = column, y = row; pixel centres at integers)",
    "x_angstrom, y_angstrom": "Å in the first frame's grid",
    "drift dx, dy": "pixels: a feature at (x, y) in frame 0 is at (x + dx, y + dy) in the frame",
    "drift correlation_sigmas": "the registration's correlation in noise sigmas (unrelated frames: 4-5)",
    "drift disagreement_px": "pixels between two measurements of the frame's drift",
    "probability": "the atom map's value (1 - p(background)) at the site in that frame",
    "switch_cost_nats": "nats of evidence a change of presence must overcome",
}


def write_json(record: Mapping[str, Any], path: Path | str) -> Path:
    """Write ``record`` as indented UTF-8 JSON, atomically."""
    import json

    text = json.dumps(record, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_csv(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a table atomically (temporary file in the same folder + ``os.replace``)."""
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def plot_presence(
    presence_df: pd.DataFrame,
    sites: Sites,
    path: Path | str,
    frame_interval_s: float | None = None,
    n_frames: int | None = None,
) -> Path:
    """Raster of sites (rows, most occupied first) x frames (columns); present = dark."""
    m = presence_matrix(presence_df, len(sites), n_frames)
    n_frames, n_sites = m.shape
    order = np.argsort(-m.sum(axis=0), kind="stable") if n_sites else np.zeros(0, int)
    fig, ax = plt.subplots(figsize=(min(12, 3 + 0.15 * n_frames), min(12, 2 + 0.12 * max(n_sites, 1))))
    if n_sites and n_frames:
        ax.imshow(m[:, order].T, cmap="gray_r", vmin=0, vmax=1, aspect="auto", interpolation="nearest",
                  extent=(-0.5, n_frames - 0.5, n_sites - 0.5, -0.5))
        if n_sites <= 40:
            ax.set_yticks(range(n_sites), [str(s) for s in order], fontsize=6)
    else:
        ax.text(0.5, 0.5, "no sites", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("frame" if frame_interval_s is None else f"frame ({frame_interval_s:g} s per frame)")
    ax.set_ylabel("site (by occupancy)")
    ax.set_title(f"site presence (dark = present): {n_sites} sites, {n_frames} frames")
    return save_figure(fig, path)


def plot_occupancy(summary_df: pd.DataFrame, path: Path | str, frame_interval_s: float | None = None) -> Path:
    """Occupancy (fraction of sites present) and event rate against frame or time."""
    t = summary_df["frame"].to_numpy(dtype=np.float64)
    xlabel, rate_unit = "frame", "events / site / frame"
    if frame_interval_s is not None:
        t = t * frame_interval_s
        xlabel, rate_unit = "time (s)", "events / site / s"
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 4.5), sharex=True)
    a1.plot(t, summary_df["occupancy"], "o-", ms=3, color="#007aff")
    a1.set_ylabel("occupancy")
    a1.set_ylim(-0.02, 1.02)
    a1.grid(alpha=0.3)
    width = (t[1] - t[0]) * 0.8 if len(t) > 1 else 0.8
    a2.bar(t, summary_df["event_rate"], width=width, color="#ff3b30")
    a2.set_ylabel(rate_unit)
    a2.set_xlabel(xlabel)
    return save_figure(fig, path)


def _colour_rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def gif_frame_indices(n_frames: int, max_frames: int = GIF_MAX_FRAMES) -> np.ndarray:
    """At most ``max_frames`` evenly spaced frame indices (all of them when there are few)."""
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n_frames - 1, min(n_frames, max_frames)).round().astype(np.int64))


def overlay_frames(
    frames: np.ndarray,
    drift_px: np.ndarray,
    presence_df: pd.DataFrame,
    sites: Sites,
    ring_px: float,
    max_side: int = GIF_MAX_SIDE,
    max_frames: int = GIF_MAX_FRAMES,
    sampling_A: float | None = None,
) -> tuple[list[Any], np.ndarray]:
    """Render registered frames with present sites as rings and absent ones as faint crosses.

    Each frame gets its own 1-99 % grey stretch (a drifting dose or focus does not
    wash out later frames), a legend (rings: present, per class; crosses: absent) and,
    with ``sampling_A``, a scale bar.

    Parameters
    ----------
    frames : ndarray, shape (N, H, W)
        Raw frames; the shown ones are registered (:func:`register_images`).
    drift_px : ndarray, shape (N, 2)
        Drift per frame, pixels.
    presence_df : DataFrame
        From :func:`presence`.
    sites : Sites
    ring_px : float
        Ring radius in frame pixels.
    max_side : int
        Largest side of an output image in display pixels (larger frames are scaled
        down, small ones up by a whole factor of at most 4).
    max_frames : int
        Largest number of frames (evenly spaced, :func:`gif_frame_indices`).
    sampling_A : float, optional
        Pixel size of the frames in Å/px, for the scale bar (none without it).

    Returns
    -------
    (images, frame_indices)
        Pillow RGB images (each labelled with its frame number) and the frames shown.
    """
    from PIL import Image, ImageDraw, ImageFont

    from atomfinder._figures import percentile_limits, pil_legend, pil_scale_bar

    raw = np.asarray(frames)
    n, h, w = raw.shape
    idx = gif_frame_indices(n, max_frames)
    stack = register_images(raw[idx], np.asarray(drift_px, dtype=np.float64)[idx])
    side = max(h, w)
    scale = max_side / side if side > max_side else float(max(1, min(4, max_side // side)))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # whole-factor enlargement repeats pixels (exact, and compresses well); reduction averages
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
    m = presence_matrix(presence_df, len(sites), n)
    uniq = sorted({str(v) for v in sites.label})
    colour = {lab: _colour_rgb(CLASS_COLOURS[1 + i % (len(CLASS_COLOURS) - 1)]) for i, lab in enumerate(uniq)}
    r = max(2.0, ring_px * scale)
    font = ImageFont.load_default()
    legend = [(f"{lab} present", colour[lab], "ring") for lab in uniq]
    if legend:
        legend.append(("absent", (220, 220, 220), "cross"))
    images = []
    for j, f in enumerate(idx):
        lo, hi = percentile_limits(stack[j])  # per frame
        grey = np.clip((stack[j] - lo) / (hi - lo), 0, 1) * 255
        img = Image.fromarray(grey.astype(np.uint8), "L").resize(size, resample).convert("RGBA")
        layer = Image.new("RGBA", size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for s in range(len(sites)):
            cx, cy = (sites.x[s] + 0.5) * scale - 0.5, (sites.y[s] + 0.5) * scale - 0.5
            c = colour[str(sites.label[s])]
            if m[f, s]:
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=c + (255,), width=max(1, round(r / 5)))
            else:
                k, lw = 0.8 * r, max(1, round(r / 6))
                draw.line((cx - k, cy - k, cx + k, cy + k), fill=c + (160,), width=lw)
                draw.line((cx - k, cy + k, cx + k, cy - k), fill=c + (160,), width=lw)
        text = f"frame {f}"
        box = draw.textbbox((3, 2), text, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0, 255))
        draw.text((3, 2), text, fill=(255, 255, 255, 255), font=font)
        rgb = Image.alpha_composite(img, layer).convert("RGB")
        marks = ImageDraw.Draw(rgb)
        if legend:
            pil_legend(marks, legend, size)
        if sampling_A is not None:
            pil_scale_bar(marks, size, sampling_A / scale)
        images.append(rgb)
    return images, idx


def write_gif(images: Sequence[Any], path: Path | str, duration_ms: int = 300) -> Path:
    """Write Pillow images as a looping GIF atomically, ``duration_ms`` per frame.

    (Pillow merges identical consecutive frames; :func:`overlay_frames` labels each
    image with its frame number, so none are.)
    """
    from PIL import Image

    pal = [im.convert("P", palette=Image.Palette.ADAPTIVE, colors=128) for im in images]
    return atomic_write(path, lambda tmp: pal[0].save(
        tmp, format="GIF", save_all=True, append_images=pal[1:], duration=duration_ms, loop=0, optimize=False, disposal=1
    ))


@dataclass(frozen=True)
class TimeSeries:
    """A time series ready for :func:`track`: the model, the frames and how to detect one.

    Made by :func:`load_time_series`; the command line (``atomfinder track``) and the
    napari plugin both start from it.

    Attributes
    ----------
    net, card
        The single-image model and its card.
    sample : Sample
        The input as read (:func:`atomfinder.detection.sample.load_sample`): source,
        pixel size in Å/px and where it came from, notes.
    frames : ndarray, shape (n, h, w)
        The frames in time order (``n >= 2``).
    threshold : float
        Atom-map value that separates present from absent.
    augment : bool, optional
        Test-time augmentation of each frame's maps (None: the card's setting; see
        :func:`atomfinder.detection.pipeline.detect_array`).
    model_path : str, optional
        The model's stem on disk, when known.
    checks : list
        The validity checks of each frame :meth:`detect_frame` has detected, in order
        (:func:`atomfinder.detection.validity.check_image`); :meth:`validity_warnings`
        turns them into lines.
    """

    net: Any
    card: Any
    sample: Any
    frames: np.ndarray
    threshold: float
    augment: bool | None = None
    model_path: str | None = None
    checks: list = field(default_factory=list, compare=False, repr=False)

    def provenance(self) -> dict[str, Any]:
        """What the tracked series was made from: input, pixel size and its source, model,
        presence threshold, augmentation and atomfinder's version (``provenance.json`` of
        :func:`track`, which adds the tracking settings it used)."""
        from atomfinder import __version__
        from atomfinder.detection.pipeline import uses_augmentation

        s = self.sample
        return {
            "input": s.source,
            "input_files": list(s.files),
            "frames": int(len(self.frames)),
            "sampling_A": float(s.sampling_A),
            "sampling_source": s.sampling_source,
            "file_sampling_A": None if s.file_sampling_A is None else float(s.file_sampling_A),
            "model": {"name": self.card.name, "version": self.card.version, "path": self.model_path,
                      "sampling_A": float(self.card.sampling_A)},
            "threshold": float(self.threshold),
            "test_time_augmentation": uses_augmentation(self.card, self.augment),
            "atomfinder_version": __version__,
        }

    def detect_frame(self, frame: np.ndarray) -> FrameDetection:
        """Detections of one frame and its atom map (``1 - p(background)``, on the model's grid)."""
        from atomfinder.detection.pipeline import detect_array

        from atomfinder.detection.validity import card_reference, check_image

        result = detect_array(self.net, self.card, frame, self.sample.sampling_A, augment=self.augment)
        table = result.to_frame()
        # frames come in order (track detects frame 0, 1, ...): the check's frame is the count so far
        self.checks.append(check_image(table, card_reference(self.card), contrast_to_noise_ratio=result.contrast_to_noise,
                                       sampling_A=self.sample.sampling_A, model_sampling_A=float(self.card.sampling_A),
                                       source=self.sample.source, frame=len(self.checks)))
        return FrameDetection(table, 1.0 - result.probabilities[0], result.model_sampling_A)

    def validity_warnings(self) -> list[str]:
        """The failed validity checks of the frames detected so far (:mod:`atomfinder.detection.validity`), one
        line per check naming the frames where it failed, as ``atomfinder detect`` gives them for a stack."""
        from atomfinder.detection.validity import warning_lines

        return warning_lines(self.checks)


def default_presence_threshold(card: Any) -> float:
    """The presence threshold of a time series when none is given: the card's peak threshold, or
    0.5 when that lies outside the range :func:`check_threshold` accepts (e.g. 0: every peak)."""
    from atomfinder.detection.pipeline import detection_settings

    peak = detection_settings(card)[0]
    try:
        return check_threshold(peak)
    except ValueError:
        return 0.5


def load_time_series(image: Any, model: Any, sampling_A: float | None = None, *,
                     threshold: float | None = None, sampling_label: str = "argument",
                     sampling_name: str | None = None, augment: bool | None = None,
                     threshold_name: str = "threshold") -> TimeSeries:
    """Read a time series and its model, checking that they fit together.

    Parameters
    ----------
    image : path, sequence of paths, ndarray or signal
        One multi-frame file, several single-image files in time order, or a stack
        ``[N, H, W]`` (anything :func:`atomfinder.detection.sample.load_sample` reads).
    model : str or path
        A single-image model's name or path.
    sampling_A : float, optional
        Pixel size in Å/px; overrides the files' (required for arrays).
    threshold : float, optional
        Present/absent threshold of the atom map, above 0.01 and below 0.99
        (:func:`check_threshold`; default :func:`default_presence_threshold`: the
        card's peak threshold, or 0.5 when that is outside).
    sampling_label, sampling_name : str
        How a given pixel size is recorded as its source, and how the user gives one, in
        messages (:func:`atomfinder.detection.sample.load_sample`; the command line passes
        ``"--sampling"``).
    augment : bool, optional
        Test-time augmentation of every frame (default: the card's setting).
    threshold_name : str
        How the user gives ``threshold``, in messages (``--threshold`` on the command line).

    Raises
    ------
    ValueError
        A threshold out of range, a focal-series model, fewer than 2 frames, a
        pixel size too far from the model's, or an unusable input (one line naming it).
    """
    from atomfinder.detection.io import MicrographError
    from atomfinder.detection.pipeline import pixel_size_problem
    from atomfinder.detection.sample import load_sample
    from atomfinder.nn.card import load_model, resolve_model

    given = None if threshold is None else check_threshold(threshold, threshold_name)  # before reading anything
    stem = resolve_model(model)
    net, card = load_model(stem)
    if card.in_channels != 1:
        raise ValueError(f"model {card.name} needs {card.in_channels}-frame focal series; "
                         "a time series needs a single-image model")
    if isinstance(image, (list, tuple)) and len(image) == 1:
        image = image[0]
    sample = load_sample([str(p) for p in image] if isinstance(image, (list, tuple)) else image, sampling_A,
                         sampling_label=sampling_label, sampling_name=sampling_name, series="time series")
    frames = sample.data if sample.data.ndim == 3 else sample.data[None]
    if len(frames) < 2:
        raise ValueError(f"{sample.source}: a time series needs at least 2 frames, got {len(frames)}")
    problem = pixel_size_problem(sample.sampling_A, card.sampling_A)
    if problem:  # before any frame is registered or detected
        raise MicrographError(sample.source, problem)
    decide_at = default_presence_threshold(card) if given is None else given
    return TimeSeries(net, card, sample, frames, decide_at, augment, str(stem))


def track(
    frames_images: np.ndarray,
    detect: Callable[[np.ndarray], Any],
    sampling_A: float,
    out_dir: Path | str,
    tolerance_A: float = 0.7,
    frame_interval_s: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    threshold: float = 0.5,
    switch_cost: float | None = None,
    min_run: int = 1,
    border_A: float = 1.0,
    mode: str = "first",
    upsample: int = 10,
    min_frames: int = 1,
    refine: bool = False,
    gif: bool = True,
    provenance: Mapping[str, Any] | None = None,
    no_data: np.ndarray | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Track column sites through a time series and write every output.

    Steps: :func:`register_series` (the drift, and a :class:`RegistrationWarning` of
    one line for each frame whose registration fails a check) → ``detect`` on each raw frame →
    :func:`link_sites` → (:func:`refine_drift` → :func:`link_sites` again) → drop
    sites not in every frame's view (:func:`sites_in_view`; a :class:`TrackWarning`
    when none is left, :func:`no_sites_reason`) → the map's value at
    every site in every frame (:func:`site_probabilities`) → decided presence
    (:func:`presence`: a two-state hidden Markov model per site) → :func:`events`
    → :func:`summary`.

    Parameters
    ----------
    frames_images : ndarray, shape (N, H, W)
        The series, in time order: at least 2 frames, all pixels finite (fill NaN
        or inf and pass where they were as ``no_data``; :func:`load_time_series`
        does both).
    detect : callable
        ``detect(frame) -> FrameDetection``: the frame's detections (``x, y`` in
        pixels of that frame, ``label``, ``probability``; DataFrame or AtomTable) and
        its atom-probability map, e.g. a closure over
        :func:`atomfinder.detection.pipeline.detect_array` returning
        ``FrameDetection(result.to_frame(), 1 - result.probabilities[0],
        result.model_sampling_A)``. A bare table is accepted too (no map: see
        :class:`FrameDetection`). The detections make the sites; the maps decide
        their presence. All maps are held until the sites are known (about as much
        memory as the frames at the map's pixel size).
    sampling_A : float
        Pixel size in Å/pixel.
    out_dir : path
        Folder for the outputs (created). One that holds files of an earlier run
        (:data:`TRACK_OUTPUTS`) is refused unless ``overwrite``.
    tolerance_A : float
        Largest distance in Å between a detection and its site.
    frame_interval_s : float, optional
        Time between frames in seconds (rates per second and a time axis).
    progress : callable, optional
        ``progress(done, total)`` after each frame is detected.
    threshold : float
        Map value that separates present from absent in the presence decoder
        (:func:`presence_evidence`), e.g. the model card's peak threshold; above 0.01
        and below 0.99 (:func:`check_threshold`: no frame counts for more than 99 : 1
        odds, so a threshold beyond asks for more certainty than any frame gives).
    switch_cost : float, optional
        Nats of evidence a change of state must overcome (:func:`viterbi_states`);
        default :func:`switch_cost_from_noise` of this series' map values.
    min_run : int
        Frames a decided change must also last (:func:`smooth_states`; 1 = off); a
        change in the last ``min_run - 1`` frames is ignored (it cannot last that long).
    border_A : float
        Sites closer than this (Å) to the edge of any frame's field are dropped.
    mode : {"first", "previous"}
        Registration mode (:func:`register_frames`; ``--registration`` of
        ``atomfinder track``): every frame against the first, or against the frame
        before (for a field that changes a lot, or drifts by more than half of it).
    upsample : int
        Registration resolution ``1 / upsample`` pixels.
    min_frames : int
        Sites detected in fewer frames are dropped (:func:`link_sites`).
    refine : bool
        Refine the image-correlation drift with the detected columns
        (:func:`refine_drift`); ``drift.csv`` holds the drift actually used. Off by
        default: with a few dozen noisy columns it is no more precise than the
        correlation; it pays off with hundreds of well-located columns.
    gif : bool
        Write ``overlay.gif``.
    provenance : mapping, optional
        What the series was made from (:meth:`TimeSeries.provenance`): written as
        ``provenance.json`` with the tracking settings used (tolerance, switch cost and
        whether it came from the noise, minimum run, frame interval, presence threshold)
        and the units of the tables.

    no_data : ndarray of bool, shape (N, H, W), optional
        Where each frame held no data (NaN or inf pixels before they were filled:
        ``TimeSeries.sample.no_data``). Detections more than 0.5 Å inside such regions
        are dropped, and a site that lies in one in a frame has no map value there
        (``probability`` NaN: no evidence, the decided state carries through). The
        registration still sees the filled (flat) pixels.
    overwrite : bool
        Replace the files of an earlier run in ``out_dir`` (``--overwrite`` of
        ``atomfinder track``); those this run does not write (``overlay.gif`` with
        ``gif=False``, ``provenance.json`` without ``provenance``) are removed, so
        that every file in the folder is from this run. Other files are left alone.

    Returns
    -------
    dict of str to Path
        Keyed by file name: ``sites.csv``, ``presence.csv``, ``events.csv``,
        ``drift.csv``, ``occupancy.csv``, ``presence.png``, ``occupancy.png``,
        ``overlay.gif`` and, with ``provenance``, ``provenance.json``. All coordinates are in the first frame's pixel grid. The
        files are written into a hidden staging folder in ``out_dir`` and renamed
        into place together at the end (:func:`publish_staged`), so a run killed at
        any point leaves no output of its own beside those of an earlier run; the
        staging folders of killed runs are removed when the next run starts.
    """
    stack = check_frames(frames_images)
    if not (np.isfinite(sampling_A) and sampling_A > 0):
        raise ValueError(f"sampling must be a positive finite number of Å/pixel, got {sampling_A}")
    check_threshold(threshold)
    if switch_cost is not None:
        check_switch_cost(switch_cost)
    if not (np.isfinite(tolerance_A) and tolerance_A > 0):
        raise ValueError(f"tolerance must be a positive distance in Å, got {tolerance_A:g}")
    if frame_interval_s is not None and not (np.isfinite(frame_interval_s) and frame_interval_s > 0):
        raise ValueError(f"frame interval must be a positive number of seconds, got {frame_interval_s:g}")
    out = Path(out_dir)
    check_output_dir(out)  # before any work: a file, or a folder that cannot be written, is refused now
    if not overwrite:
        refuse_earlier_outputs(out)
    if out.is_dir():
        remove_stale_staging(out)
    n = stack.shape[0]
    tol_px = tolerance_A / sampling_A
    masks = _no_data_frames(no_data, stack.shape)
    registration = register_series(stack, reference=0, upsample=upsample, mode=mode)
    for line in registration.problems():
        warnings.warn(line, RegistrationWarning, stacklevel=2)
    drift = registration.drift
    found = []
    for i in range(n):
        det = as_frame_detection(detect(stack[i]))
        table = as_detections(det.table)
        if masks[i] is not None:  # atoms the network continued into a region without data
            table = table[~in_no_data(table["x"].to_numpy(), table["y"].to_numpy(), masks[i], sampling_A)]
        found.append(FrameDetection(table.reset_index(drop=True), det.atom_map, det.map_sampling_A))
        if progress is not None:
            progress(i + 1, n)
    tables = [det.table for det in found]
    sites = link_sites(tables, drift, tol_px, min_frames=min_frames)
    if refine:
        drift = refine_drift(tables, drift, sites, tol_px)
        sites = link_sites(tables, drift, tol_px, min_frames=min_frames)
    linked = len(sites)
    sites = sites.subset(sites_in_view(sites, drift, stack.shape[1:], border_A / sampling_A))
    if len(sites) == 0:
        warnings.warn(no_sites_reason(n, linked, border_A), TrackWarning, stacklevel=2)
    prob = site_probabilities(found, drift, sites, sampling_A, tol_px)
    del found
    for i, mask in enumerate(masks):  # no data at a site in a frame: no evidence (NaN), not an absence
        if mask is not None and len(sites):
            xy = sites.xy + drift[i]
            prob[i, in_no_data(xy[:, 0], xy[:, 1], mask, sampling_A)] = np.nan
    cost = switch_cost_from_noise(prob, threshold) if switch_cost is None else switch_cost
    pres = presence(prob, threshold, cost, min_run)
    ev = events(pres, sites, n, threshold=threshold, switch_cost=cost)
    summ = summary(pres, ev, frame_interval_s, n_frames=n, n_sites=len(sites))
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=STAGING_PREFIX, suffix=STAGING_SUFFIX))
    try:
        paths = {
            "sites.csv": write_csv(sites.to_frame(sampling_A), stage / "sites.csv"),
            "presence.csv": write_csv(pres, stage / "presence.csv"),
            "events.csv": write_csv(ev, stage / "events.csv"),
            "drift.csv": write_csv(drift_table(drift, registration), stage / "drift.csv"),
            "occupancy.csv": write_csv(summ, stage / "occupancy.csv"),
            "presence.png": plot_presence(pres, sites, stage / "presence.png", frame_interval_s, n_frames=n),
            "occupancy.png": plot_occupancy(summ, stage / "occupancy.png", frame_interval_s),
        }
        if gif:
            images, _ = overlay_frames(stack, drift, pres, sites, ring_px=max(2.0, 0.6 * tol_px),
                                       sampling_A=sampling_A)
            paths["overlay.gif"] = write_gif(images, stage / "overlay.gif")
        if provenance is not None:
            record = dict(provenance) | {
                "tracking": {"tolerance_A": float(tolerance_A), "threshold": float(threshold),
                             "switch_cost_nats": float(cost),
                             "switch_cost_source": "noise" if switch_cost is None else "argument",
                             "min_run": int(min_run), "frame_interval_s": frame_interval_s,
                             "registration": mode,
                             "registration_doubtful_frames": np.flatnonzero(~registration.reliable).tolist(),
                             "sites": int(len(sites))},
                "units": TRACK_UNITS,
            }
            paths["provenance.json"] = write_json(record, stage / "provenance.json")
        published = publish_staged(paths, out)
        for name in set(TRACK_OUTPUTS) - set(published):  # an earlier run's file this run does not write
            (out / name).unlink(missing_ok=True)
        return published
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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


def earlier_outputs(out_dir: Path | str) -> list[Path]:
    """The files of an earlier :func:`track` run in ``out_dir`` (:data:`TRACK_OUTPUTS` that exist)."""
    out = Path(out_dir)
    return [out / name for name in TRACK_OUTPUTS if (out / name).exists()]


def refuse_earlier_outputs(out_dir: Path | str, flag: str = "overwrite=True", shown: int = 4) -> None:
    """Refuse, in one line naming them, to replace the files of an earlier :func:`track` run.

    Parameters
    ----------
    out_dir : path
    flag : str
        How the user asks to replace them (``--overwrite`` on the command line).
    shown : int
        Files named at most.

    Raises
    ------
    ValueError
        When ``out_dir`` holds any of :data:`TRACK_OUTPUTS`.
    """
    from atomfinder._files import refuse_earlier_files

    refuse_earlier_files(out_dir, earlier_outputs(out_dir), f"give {flag} to replace them, or another output folder",
                         shown)


class TrackWarning(UserWarning):
    """Something :func:`track` found that makes its outputs doubtful (one line), e.g. no site at all."""


def no_sites_reason(n_frames: int, n_linked: int, border_A: float) -> str:
    """Why :func:`track` kept no site, in one line: nothing was detected, or every site was near an edge."""
    if n_linked == 0:
        return (f"no column found in any of the {n_frames} frames: no lattice (noise, vacuum) or a material the "
                "model was not trained on; every output is empty")
    return (f"none of the {n_linked} sites found stays {border_A:g} Å inside the field of every frame (a large "
            "drift or a small field); every output is empty")


#: Name of the hidden folder :func:`track` stages its outputs in (``<prefix><random><suffix>``).
STAGING_PREFIX, STAGING_SUFFIX = ".track-", ".partial"


def _no_data_frames(no_data: np.ndarray | None, shape: tuple[int, ...]) -> list[np.ndarray | None]:
    """One no-data mask (or None) per frame of a stack of ``shape``."""
    if no_data is None:
        return [None] * shape[0]
    masks = np.asarray(no_data, dtype=bool).reshape(shape)
    return [m if m.any() else None for m in masks]


def remove_stale_staging(out_dir: Path | str) -> int:
    """Remove staging folders that killed :func:`track` runs left in ``out_dir``; returns how many.

    Only one run should write into a folder at a time: a concurrent run's staging folder
    would go too.
    """
    out = Path(out_dir)
    stale = [p for p in out.iterdir()
             if p.is_dir() and p.name.startswith(STAGING_PREFIX) and p.name.endswith(STAGING_SUFFIX)]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


def publish_staged(staged: dict[str, Path], out_dir: Path | str) -> dict[str, Path]:
    """Rename staged files into ``out_dir`` (same file system: each rename is atomic).

    Parameters
    ----------
    staged : dict of str to Path
        File name -> the finished file in the staging folder.
    out_dir : path
        Where they go.

    Returns
    -------
    dict of str to Path
        File name -> its published path.
    """
    out = Path(out_dir)
    published = {}
    for name, path in staged.items():
        os.replace(path, out / name)
        published[name] = out / name
    return published


__all__ = [
    "FrameDetection",
    "Registration",
    "TRACK_OUTPUTS",
    "RegistrationWarning",
    "Sites",
    "TrackWarning",
    "as_detections",
    "as_frame_detection",
    "bandpass",
    "bin_image",
    "change_posteriors",
    "check_frames",
    "check_threshold",
    "coarse_bin",
    "coarse_shift",
    "default_presence_threshold",
    "drift_table",
    "earlier_outputs",
    "events",
    "evidence_cap",
    "frame_shift",
    "gif_frame_indices",
    "hann_window",
    "link_sites",
    "matched_probability",
    "no_sites_reason",
    "overlay_frames",
    "pair_shift",
    "plot_occupancy",
    "plot_presence",
    "presence",
    "presence_evidence",
    "presence_matrix",
    "publish_staged",
    "remove_stale_staging",
    "probability_matrix",
    "refine_drift",
    "refuse_earlier_outputs",
    "register_frames",
    "register_images",
    "register_series",
    "registered_xy",
    "sample_map",
    "site_probabilities",
    "sites_in_view",
    "smooth",
    "smooth_states",
    "summary",
    "switch_cost_from_noise",
    "track",
    "viterbi_states",
    "write_csv",
    "write_gif",
]
