"""Which sites are occupied in each frame, and when that changes: map values, presence, events, occupancy.

:func:`site_probabilities` reads the atom map at every site in every frame;
:func:`presence` decides each site's state over the series with the two-state
hidden Markov model of :mod:`atomfinder.analysis.presence` (the decoder, pure NumPy),
and gives the ``presence.csv`` table; :func:`events` the appearances and
disappearances with their confidence; :func:`summary` the occupancy and event rate
per frame. Part of :mod:`atomfinder.analysis.timeseries`, which re-exports every
public name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.ndimage import map_coordinates

from atomfinder.analysis.matching import match_positions
from atomfinder.analysis.presence import (
    change_posteriors,
    presence_evidence,
    smooth_states,
    switch_cost_from_noise,
    viterbi_states,
)
from atomfinder.analysis.timeseries.frames import FrameDetection, _check_drift, as_detections, registered_xy
from atomfinder.analysis.timeseries.sites import Sites

#: Column order of ``presence.csv``, ``events.csv`` and ``occupancy.csv`` (DESIGN.md).
PRESENCE_COLUMNS = ("frame", "site", "present", "probability")
EVENTS_COLUMNS = ("frame", "site", "event", "x", "y", "confidence")
OCCUPANCY_COLUMNS = ("frame", "occupancy", "events", "event_rate")


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
