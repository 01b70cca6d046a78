"""The :func:`track` entry point: register, detect, link, decide presence and write every output.

It chains the other modules of :mod:`atomfinder.analysis.timeseries` (which
re-exports every public name): frames, sites, occupancy, outputs.
:class:`TrackWarning` and :func:`no_sites_reason` are what it says when it keeps no site.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from atomfinder._files import check_output_dir
from atomfinder.analysis.presence import check_switch_cost, check_threshold, switch_cost_from_noise
from atomfinder.analysis.timeseries.frames import (
    FrameDetection,
    _no_data_frames,
    as_detections,
    as_frame_detection,
    check_frames,
)
from atomfinder.analysis.timeseries.occupancy import events, presence, site_probabilities, summary
from atomfinder.analysis.timeseries.outputs import (
    STAGING_PREFIX,
    STAGING_SUFFIX,
    TRACK_OUTPUTS,
    TRACK_UNITS,
    drift_table,
    overlay_frames,
    plot_occupancy,
    plot_presence,
    publish_staged,
    refuse_earlier_outputs,
    remove_stale_staging,
    write_csv,
    write_gif,
    write_json,
)
from atomfinder.analysis.timeseries.sites import link_sites, refine_drift, sites_in_view
from atomfinder.detection.preprocess import in_no_data
from atomfinder.detection.registration import RegistrationWarning, register_series


class TrackWarning(UserWarning):
    """Something :func:`track` found that makes its outputs doubtful (one line), e.g. no site at all."""


def no_sites_reason(n_frames: int, n_linked: int, border_A: float) -> str:
    """Why :func:`track` kept no site, in one line: nothing was detected, or every site was near an edge."""
    if n_linked == 0:
        return (f"no column found in any of the {n_frames} frames: no lattice (noise, vacuum) or a material the "
                "model was not trained on; every output is empty")
    return (f"none of the {n_linked} sites found stays {border_A:g} Å inside the field of every frame (a large "
            "drift or a small field); every output is empty")


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
