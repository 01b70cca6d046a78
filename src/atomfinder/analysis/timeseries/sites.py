"""Column sites of a time series: linking each frame's detections into sites in the first frame's grid.

:class:`Sites` (positions, majority labels, detection counts), :func:`link_sites`
(frame-by-frame one-to-one assignment, then a merge of sites never seen together),
:func:`refine_drift` (the drift corrected with the detected columns) and
:func:`sites_in_view` (the sites inside every frame's field). Part of
:mod:`atomfinder.analysis.timeseries`, which re-exports every public name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from atomfinder.analysis.matching import match_positions
from atomfinder.analysis.timeseries.frames import _check_drift, as_detections, registered_xy

#: Column order of ``sites.csv`` (DESIGN.md).
SITES_COLUMNS = ("site", "x", "y", "x_angstrom", "y_angstrom", "label")


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
