"""Does `atomfinder track` recover known appearance/disappearance events on a Au particle?

Builds one Au nanoparticle in a zone axis on a CeO2 support with the package's own
builder (:func:`atomfinder.structures.gold.build_gold`: no mistilt, no random surface
vacancies or adatoms, so the only changes between frames are the scheduled ones),
picks a few *surface* columns (on the convex hull of the projected columns and at
least :data:`SUPPORT_CLEARANCE_A` above the lowest Au column, so they do not touch the
support) and gives them a known presence schedule over the series: one disappears,
one appears, one goes away and comes back, one appears and goes away again. A column
is absent by removing all of its atoms from the structure.

Each frame is simulated with the package's imaging path (abTEM multislice exit wave
at twice the output sampling, :func:`atomfinder.imaging.hrtem.resample_spectrum`,
then :func:`atomfinder.imaging.hrtem.simulate_draw` with our lens, coherence, detector
and shot noise) for one fixed negative-Cs microscope inside the gold training ranges
(300 kV, Cs = -25 µm, Scherzer defocus, 30 Å focal spread), with a known drift (about
3 Å over the series plus sub-pixel jitter) applied as a specimen shift. The frames
are written as one calibrated TIFF stack
(:func:`atomfinder.detection.io.write_tiff_calibrated`), read back and cleaned as
``atomfinder track`` does (:func:`atomfinder.detection.sample.load_sample`), and tracked
with :func:`atomfinder.analysis.timeseries.track` using the same per-frame detector as
the CLI (the atom table of ``detect_array`` and its atom map ``1 - p(background)``)
and the same decision: presence per site from the map's value over the series (a
two-state hidden Markov model, threshold = the card's peak threshold unless
``--threshold``, switching cost from the noise unless ``--switch-cost``). With
``--model conventional`` the conventional detector is used instead, its map being
the sign-corrected band-pass relative to its 99.9th percentile (its own peak score),
decided at its peak threshold 0.2.

The tracker's CSV outputs are then compared with the truth: each scheduled column is
matched one-to-one to a tracked site (in the first frame's pixel grid, within the
tracking tolerance), and its presence timeline is recovered *exactly* when it equals
the schedule in every frame. Events at any other site are *spurious*. It also reports
the registration error against the applied drift, how many of the unchanged Au
columns were tracked as present in every frame, and the confidence (``events.csv``)
of the recovered and of the spurious events.

Static-particle check (``--static-doses``, default 1e4 and 1e3 e/Å²; ``none`` skips
it): the same particle with every column present, fresh shot noise and the same
kind of drift in every frame (one exit wave, reused), tracked the same way; every
event is false. Reported per dose: events per 100 site-frames over all tracked
sites and over the Au-column sites only.

It is a measurement, not a test: the exit code is 0 whether or not recovery is exact
(non-zero only on errors). The last line printed is one JSON object, e.g.

    {"model": "gold", "dose_e_per_A2": 30000.0, "frames": 12, "scheduled_columns": 4, "exact": 4, ...,
     "static": [{"dose_e_per_A2": 10000.0, "events": 0, "events_per_100_site_frames": 0.0, ...}, ...]}

Example::

    python benchmarks/check_track_gold.py --model runs/gold/model --frames 12 --out /tmp/track-gold
    python benchmarks/check_track_gold.py --dose 2e3 --static-doses 1e4 1e3 --threshold 0.7
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import ConvexHull, cKDTree

from atomfinder.analysis.matching import match_positions
from atomfinder.analysis.timeseries import (
    FrameDetection,
    presence_matrix,
    probability_matrix,
    switch_cost_from_noise,
    track,
)
from atomfinder.detection.io import write_tiff_calibrated
from atomfinder.detection.sample import load_sample
from atomfinder.imaging.hrtem import resample_spectrum, simulate_draw
from atomfinder.imaging.microscope import Microscope, scherzer_defocus_A
from atomfinder.imaging.multislice import exit_waves
from atomfinder.structures import Structure
from atomfinder.structures.gold import GoldConfig, build_gold, group_columns

#: Output pixel size (Å/px), as in ``default_config("gold")``.
SAMPLING_A = 0.1
#: Side of the simulated box (output pixels); the recorded frames are the box less
#: :data:`CROP_MARGIN_PX` on every side.
BOX_PX = 480
#: Distance of the recorded crop from the box edges (pixels); must exceed the largest drift,
#: so that the periodic specimen shift never wraps content into the crop.
CROP_MARGIN_PX = 40
#: Exit-wave grid = output grid x this (0.05 Å for Au, as ``default_config("gold")``).
WAVE_OVERSAMPLING = 2
#: Multislice slice thickness (Å), as ``default_config("gold")``.
SLICE_THICKNESS_A = 2.0
#: Equivalent-sphere diameter of the particle (Å).
DIAMETER_A = 20.0
#: Vacuum between the particle and the box's side and top edges (Å): keeps it near the middle of the crop.
EDGE_MARGIN_A = 12.0
#: Height of the CeO2 support as a fraction of the box (enough to show it below the particle).
SUPPORT_HEIGHT_FRACTION = 0.25
#: Linking/presence tolerance of the tracker (Å): the CLI default.
TOLERANCE_A = 0.7
#: Drift of the last frame relative to the first (Å), spread linearly over the series.
DRIFT_TOTAL_A = (2.4, -1.7)
#: Standard deviation of the random part of each frame's drift (Å).
DRIFT_JITTER_A = 0.15
#: Scheduled columns must lie at least this far (Å) above the lowest Au column.
SUPPORT_CLEARANCE_A = 3.0
#: A column within this distance (Å) of the convex hull of all columns is a surface column.
HULL_DISTANCE_A = 0.3
#: Smallest distance (Å) between two scheduled columns.
MIN_SEPARATION_A = 4.0
#: Sites within this distance (Å) of an Au column count as on the particle (for spurious events).
NEAR_PARTICLE_A = 3.0
#: Name that selects the conventional detector instead of a network.
CONVENTIONAL = "conventional"
#: Peak threshold of the conventional detector (``conventional_atoms``' ``threshold_rel``), also its decision threshold.
CONVENTIONAL_THRESHOLD = 0.2
#: Doses (e/Å²) of the static-particle check by default.
STATIC_DOSES = (1e4, 1e3)
#: Schedules as (initially present, frames at which the state toggles as fractions of N).
SCHEDULE_KINDS: dict[str, tuple[bool, tuple[float, ...]]] = {
    "disappears": (True, (0.4,)),
    "appears": (False, (0.6,)),
    "away_and_back": (True, (0.25, 0.7)),
    "appears_then_goes": (False, (0.35, 0.85)),
}


@dataclass(frozen=True)
class Particle:
    """The full particle and which Au column each atom belongs to.

    Attributes
    ----------
    structure : Structure
        From :func:`build_gold` (Au first, then Ce and O of the support).
    column_of_atom : ndarray of int, shape (n_atoms,)
        Index into ``structure.sites`` of each atom's column; -1 for support atoms.
    """

    structure: Structure
    column_of_atom: np.ndarray


@dataclass(frozen=True)
class Schedule:
    """Which scheduled column is present in which frame.

    Attributes
    ----------
    columns : ndarray of int, shape (k,)
        Indices into ``structure.sites``.
    kinds : tuple of str
        Keys of :data:`SCHEDULE_KINDS`, one per column.
    present : ndarray of bool, shape (n_frames, k)
        The presence timeline of each scheduled column.
    """

    columns: np.ndarray
    kinds: tuple[str, ...]
    present: np.ndarray


# --------------------------------------------------------------------------- structure


def gold_config(zone: str) -> GoldConfig:
    """A supported truncated octahedron in ``zone`` with no random surface changes and no mistilt."""
    return GoldConfig(
        diameter_A=(DIAMETER_A, DIAMETER_A),
        shapes=("truncated_octahedron",),
        shape_weights=(1.0,),
        zone_axes=(zone,),
        max_mistilt_deg=0.0,
        surface_vacancy_fraction=(0.0, 0.0),
        n_adatoms=(0, 0),
        p_support=1.0,
        support_orientations=("110/111",),
        p_facet_down=1.0,
        support_height_fraction=(SUPPORT_HEIGHT_FRACTION, SUPPORT_HEIGHT_FRACTION),
        support_extra_thickness_A=(0.0, 5.0),
        edge_margin_A=EDGE_MARGIN_A,
    )


def build_particle(seed: int, zone: str) -> Particle:
    """Build the particle and assign every Au atom to its column (site).

    The builder groups atoms into columns before placing the particle; without
    mistilt, grouping the placed atoms again with the same tolerance gives the same
    columns, whose mean positions are the sites.

    Raises
    ------
    RuntimeError
        If the regrouped columns do not coincide with the builder's sites.
    """
    cfg = gold_config(zone)
    box_A = BOX_PX * SAMPLING_A
    structure = build_gold(np.random.default_rng([seed, 1]), (box_A, box_A), cfg)
    is_au = np.array(structure.atoms.get_chemical_symbols()) == "Au"
    au_xy = structure.atoms.positions[is_au, :2]
    n_col, group = group_columns(au_xy, cfg.column_tolerance_A)
    counts = np.bincount(group, minlength=n_col)
    centroids = np.stack([np.bincount(group, au_xy[:, c], n_col) for c in range(2)], axis=1) / counts[:, None]
    dist, site = cKDTree(structure.sites.positions_A).query(centroids)
    if n_col != len(structure.sites) or dist.max() > 1e-6 or len(np.unique(site)) != n_col:
        raise RuntimeError("could not reproduce the builder's Au columns (is there a mistilt?)")
    column_of_atom = np.full(len(structure.atoms), -1, dtype=np.int64)
    column_of_atom[np.flatnonzero(is_au)] = site[group]
    return Particle(structure=structure, column_of_atom=column_of_atom)


def hull_distance_A(xy_A: np.ndarray) -> np.ndarray:
    """Distance (Å) of each point inside the convex hull of ``xy_A`` to the hull's boundary."""
    hull = ConvexHull(xy_A)
    # equations: n . x + b <= 0 inside, |n| = 1; distance to an edge line = -(n . x + b)
    return np.min(-(xy_A @ hull.equations[:, :2].T + hull.equations[:, 2]), axis=1)


def choose_surface_columns(particle: Particle, n_columns: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``n_columns`` surface columns well apart from each other and from the support.

    Candidates lie within :data:`HULL_DISTANCE_A` of the convex hull of all projected
    columns and at least :data:`SUPPORT_CLEARANCE_A` above the lowest one (the support
    is below the particle, at smaller ``y``: the top rows of the frames). The fullest columns are preferred (ties
    broken at random); each pick is at least :data:`MIN_SEPARATION_A` from the others.

    Returns
    -------
    ndarray of int
        Indices into ``structure.sites``.

    Raises
    ------
    RuntimeError
        If fewer than ``n_columns`` such columns exist.
    """
    sites = particle.structure.sites
    xy = sites.positions_A
    surface = hull_distance_A(xy) < HULL_DISTANCE_A
    clear = xy[:, 1] >= xy[:, 1].min() + SUPPORT_CLEARANCE_A
    cand = np.flatnonzero(surface & clear)
    cand = cand[np.lexsort((rng.random(len(cand)), -sites.heights[cand]))]
    chosen: list[int] = []
    for c in cand:
        if all(np.linalg.norm(xy[c] - xy[o]) >= MIN_SEPARATION_A for o in chosen):
            chosen.append(int(c))
            if len(chosen) == n_columns:
                return np.array(chosen, dtype=np.int64)
    raise RuntimeError(f"only {len(chosen)} of {n_columns} surface columns found {MIN_SEPARATION_A} Å apart")


def make_schedule(columns: np.ndarray, n_frames: int) -> Schedule:
    """Presence of each scheduled column per frame, from :data:`SCHEDULE_KINDS`.

    Raises
    ------
    ValueError
        If the series is too short for every toggle to fall on its own frame in ``1 .. N-1``.
    """
    kinds = tuple(SCHEDULE_KINDS)[: len(columns)]
    present = np.zeros((n_frames, len(columns)), dtype=bool)
    for j, kind in enumerate(kinds):
        start, fractions = SCHEDULE_KINDS[kind]
        toggles = [round(f * n_frames) for f in fractions]
        if any(not 1 <= t <= n_frames - 1 for t in toggles) or len(set(toggles)) != len(toggles):
            raise ValueError(f"{n_frames} frames are too few for the {kind!r} schedule")
        state = np.full(n_frames, start)
        for t in toggles:
            state[t:] = ~state[t:]
        present[:, j] = state
    return Schedule(columns=np.asarray(columns, dtype=np.int64), kinds=kinds, present=present)


def drift_px(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Known specimen drift per frame in pixels, ``(dx, dy)``; frame 0 is 0.

    A linear drift reaching :data:`DRIFT_TOTAL_A` at the last frame plus Gaussian
    jitter of :data:`DRIFT_JITTER_A` (so sub-pixel parts are included).
    """
    t = np.linspace(0.0, 1.0, n_frames)[:, None]
    d_A = t * np.asarray(DRIFT_TOTAL_A)[None, :] + rng.normal(0.0, DRIFT_JITTER_A, (n_frames, 2))
    d_A[0] = 0.0
    return d_A / SAMPLING_A


# --------------------------------------------------------------------------- imaging


def microscope(dose_e_per_A2: float, cs_um: float = -25.0, defocus_A: float | None = None) -> Microscope:
    """One fixed state at 300 kV: by default Cs = -25 µm at Scherzer defocus (inside every gold
    model's range); ``cs_um`` and ``defocus_A`` (Å, positive = underfocus) choose another."""
    energy_eV, cs_A = 300e3, cs_um * 1e4
    return Microscope(
        energy_eV=energy_eV,
        sampling_A=SAMPLING_A,
        defocus_A=scherzer_defocus_A(cs_A, energy_eV) if defocus_A is None else float(defocus_A),
        Cs_A=cs_A,
        focal_spread_A=30.0,
        angular_spread_mrad=0.2,
        semiangle_cutoff_mrad=math.inf,
        mtf_c0=0.2,
        mtf_c1=0.6,
        mtf_c2=2.0,
        blur_px=0.3,
        dose_e_per_A2=float(dose_e_per_A2),
        gain=1.0,
        offset=0.0,
    )


def simulate_series(
    particle: Particle,
    schedule: Schedule,
    drift: np.ndarray,
    scope: Microscope,
    seed: int,
    log: Callable[[str], None] = print,
    *,
    noise_stream: int = 2,
    waves: dict[tuple[int, ...], np.ndarray] | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Record every frame: scheduled columns removed where absent, drift as a specimen shift.

    One exit wave per distinct set of removed columns (frames with the same
    structure share it; only the noise and the drift differ). ``waves`` (keyed by
    the sorted removed columns) carries them over between calls; the shot noise is
    drawn from ``default_rng([seed, noise_stream])``.

    Returns
    -------
    frames : ndarray of float32, shape (N, H, W)
    origin_px : (int, int)
        The crop's top-left ``(x0, y0)`` in the box's output grid.
    """
    if np.abs(drift).max() >= CROP_MARGIN_PX:
        raise ValueError(f"drift up to {np.abs(drift).max():.1f} px would wrap the periodic box into the crop")
    atoms = particle.structure.atoms
    image_px = BOX_PX - 2 * CROP_MARGIN_PX
    origin = (CROP_MARGIN_PX, CROP_MARGIN_PX)
    gpts = (BOX_PX * WAVE_OVERSAMPLING,) * 2
    rng = np.random.default_rng([seed, noise_stream])
    cache = {} if waves is None else waves
    frames = []
    for i, state in enumerate(schedule.present):
        gone = np.sort(schedule.columns[~state])
        key = tuple(gone.tolist())
        if key not in cache:
            keep = ~np.isin(particle.column_of_atom, gone)
            t0 = time.perf_counter()
            waves = exit_waves(atoms[np.flatnonzero(keep)], scope.energy_eV, gpts=gpts,
                               slice_thickness_A=SLICE_THICKNESS_A)
            cache[key] = resample_spectrum(waves, (BOX_PX, BOX_PX))
            log(f"  exit wave {len(cache)} ({int(keep.sum())} atoms, {gpts[0]}^2 grid): "
                f"{time.perf_counter() - t0:.1f} s")
        image = simulate_draw(cache[key], particle.structure.sites, [scope], drift[i : i + 1], origin, image_px, rng)
        frames.append(image.image[0])
    return np.stack(frames).astype(np.float32), origin


# --------------------------------------------------------------------------- tracking


def conventional_map(frame: np.ndarray, sampling_A: float) -> np.ndarray:
    """The conventional detector's score over the whole frame (its "atom map", frame grid).

    The band-pass of :func:`atomfinder.detection.baseline.conventional_atoms`
    (default atom radius), sign-corrected, over its 99.9th percentile and clipped to
    [0, 1]: at a peak it is the table's ``probability``.
    """
    from atomfinder.detection.baseline import bandpass, choose_polarity

    f = bandpass(frame, sampling_A)
    f = choose_polarity(f) * f
    ref = float(np.percentile(f, 99.9))
    return np.clip(f / ref, 0.0, 1.0) if ref > 0 else np.zeros_like(f)


def make_detector(model: str, sampling_A: float) -> tuple[Callable[[np.ndarray], FrameDetection], str, float]:
    """Per-frame detector as in ``atomfinder track``, or the conventional one.

    Returns
    -------
    (detect, name, threshold)
        ``detect(frame) -> FrameDetection`` (table with ``x, y, label, probability``
        in pixels, and the atom map), the detector's name (the model card's name, or
        ``"conventional"``) and its peak threshold (the default decision threshold).
    """
    if model == CONVENTIONAL:
        from atomfinder.detection.baseline import conventional_atoms

        def detect_conventional(frame: np.ndarray) -> FrameDetection:
            table = conventional_atoms(frame, sampling_A, threshold_rel=CONVENTIONAL_THRESHOLD)
            return FrameDetection(table, conventional_map(frame, sampling_A))

        return detect_conventional, CONVENTIONAL, CONVENTIONAL_THRESHOLD
    from atomfinder.detection.pipeline import detect_array, detection_settings
    from atomfinder.nn.card import load_model, resolve_model

    net, card = load_model(resolve_model(model))
    if card.in_channels != 1:
        raise ValueError(f"model {card.name} needs {card.in_channels}-frame focal series; track needs a single-image model")

    def detect_network(frame: np.ndarray) -> FrameDetection:
        result = detect_array(net, card, frame, sampling_A)
        return FrameDetection(result.to_frame(), 1.0 - result.probabilities[0], result.model_sampling_A)

    return detect_network, card.name, detection_settings(card)[0]


def run_tracker(
    stack_path: Path, model: str, out_dir: Path, threshold: float | None = None, switch_cost: float | None = None
) -> dict[str, Any]:
    """Read the stack like the CLI and run :func:`track` on it with the CLI's decision.

    Returns
    -------
    dict
        ``detector`` (name), ``sampling_A`` (Å/px), ``threshold`` (the decision
        threshold used: the given one, else the detector's peak threshold) and
        ``switch_cost`` (nats: the given one, else the noise-derived value
        :func:`switch_cost_from_noise` of this series, as ``track`` used it).
    """
    sample = load_sample(str(stack_path))
    frames = sample.data if sample.data.ndim == 3 else sample.data[None]
    detect, name, peak_threshold = make_detector(model, sample.sampling_A)
    decide_at = peak_threshold if threshold is None else threshold
    track(frames, detect, sample.sampling_A, out_dir, tolerance_A=TOLERANCE_A, threshold=decide_at,
          switch_cost=switch_cost)
    if switch_cost is None:
        pres = pd.read_csv(out_dir / "presence.csv")
        n_sites = len(pd.read_csv(out_dir / "sites.csv"))
        switch_cost = switch_cost_from_noise(probability_matrix(pres, n_sites, len(frames)), decide_at)
    return {"detector": name, "sampling_A": float(sample.sampling_A), "threshold": float(decide_at),
            "switch_cost": round(float(switch_cost), 3)}


# --------------------------------------------------------------------------- comparison


def compare(
    out_dir: Path,
    truth_xy_px: np.ndarray,
    schedule: Schedule,
    true_drift_px: np.ndarray,
    sampling_A: float,
) -> dict[str, Any]:
    """Compare the tracker's CSV outputs with the truth.

    Parameters
    ----------
    out_dir : Path
        The tracker's output folder (``sites.csv``, ``presence.csv``, ``events.csv``, ``drift.csv``).
    truth_xy_px : ndarray, shape (n_columns, 2)
        Every Au column's position in the first frame's pixel grid.
    schedule : Schedule
    true_drift_px : ndarray, shape (N, 2)
    sampling_A : float
        Pixel size (Å/px).

    Returns
    -------
    dict
        Per scheduled column: matched site, distance, recovered and true timelines,
        exactness; counts of events, spurious events and tracked unchanged columns;
        the registration error.
    """
    sites = pd.read_csv(out_dir / "sites.csv")
    events = pd.read_csv(out_dir / "events.csv")
    drift = pd.read_csv(out_dir / "drift.csv")[["dx", "dy"]].to_numpy()
    n_frames = len(schedule.present)
    site_xy = sites[["x", "y"]].to_numpy(dtype=np.float64).reshape(-1, 2)
    m = presence_matrix(pd.read_csv(out_dir / "presence.csv"), len(sites), n_frames).astype(bool)
    tol_px = TOLERANCE_A / sampling_A
    t_idx, s_idx = match_positions(truth_xy_px, site_xy, tol_px)
    site_of = dict(zip(t_idx.tolist(), s_idx.tolist()))

    columns = []
    for j, (col, kind) in enumerate(zip(schedule.columns.tolist(), schedule.kinds)):
        truth = schedule.present[:, j]
        s = site_of.get(col)
        got = m[:, s] if s is not None else np.zeros(n_frames, dtype=bool)
        columns.append({
            "column": col,
            "kind": kind,
            "site": s,
            "offset_A": None if s is None else round(float(np.hypot(*(site_xy[s] - truth_xy_px[col])) * sampling_A), 3),
            "truth": "".join("1" if v else "0" for v in truth),
            "tracked": "".join("1" if v else "0" for v in got),
            "exact": bool(s is not None and np.array_equal(got, truth)),
        })

    scheduled_sites = {c["site"] for c in columns if c["site"] is not None}
    expected = {(int(t), c["site"], "appear" if c["truth"][t] == "1" else "disappear")
                for c in columns if c["site"] is not None
                for t in range(1, n_frames) if c["truth"][t] != c["truth"][t - 1]}
    n_expected = sum(c["truth"][t] != c["truth"][t - 1] for c in columns for t in range(1, n_frames))
    found = {(int(r.frame), int(r.site), str(r.event)) for r in events.itertuples()}
    confidence = {(int(r.frame), int(r.site), str(r.event)): float(r.confidence) for r in events.itertuples()}
    at_scheduled = {e for e in found if e[1] in scheduled_sites}
    elsewhere = events[~events["site"].isin(scheduled_sites)]
    false = (at_scheduled - expected) | {e for e in found if e[1] not in scheduled_sites}
    recovered_conf = [confidence[e] for e in expected & at_scheduled]
    false_conf = [confidence[e] for e in false]
    au_sites = set(s_idx.tolist()) - scheduled_sites
    dist_A = cKDTree(truth_xy_px).query(site_xy)[0] * sampling_A if len(site_xy) else np.zeros(0)
    near_sites = set(np.flatnonzero(dist_A <= NEAR_PARTICLE_A).tolist()) - scheduled_sites
    unchanged = np.setdiff1d(np.arange(len(truth_xy_px)), schedule.columns)
    unchanged_sites = [site_of[c] for c in unchanged.tolist() if c in site_of]
    return {
        "columns": columns,
        "exact": sum(c["exact"] for c in columns),
        "events_expected": int(n_expected),
        "events_recovered": len(expected & at_scheduled),
        "extra_events_at_scheduled": len(at_scheduled - expected),
        "spurious_events": len(elsewhere),
        "spurious_events_au_columns": int(elsewhere["site"].isin(au_sites).sum()),
        "spurious_events_near_particle": int(elsewhere["site"].isin(near_sites).sum()),
        "spurious_sites": int(elsewhere["site"].nunique()),
        "confidence_recovered_min": round(min(recovered_conf), 3) if recovered_conf else None,
        "confidence_false_max": round(max(false_conf), 3) if false_conf else None,
        "sites": len(sites),
        "unchanged_columns": len(unchanged),
        "unchanged_tracked": len(unchanged_sites),
        "unchanged_always_present": int(sum(m[:, s].all() for s in unchanged_sites)),
        "drift_error_px_max": round(float(np.abs(drift - true_drift_px).max()), 3),
    }


def print_summary(result: dict[str, Any], n_frames: int) -> None:
    """Human-readable report of :func:`compare`'s result."""
    print(f"scheduled surface columns ({n_frames} frames; 1 = present):")
    for c in result["columns"]:
        where = f"site {c['site']} ({c['offset_A']} Å off)" if c["site"] is not None else "no site within tolerance"
        flag = "exact" if c["exact"] else "DIFFERS"
        print(f"  column {c['column']:3d} {c['kind']:<18s} truth {c['truth']}  tracked {c['tracked']}  {flag}  [{where}]")
    print(f"exact timelines: {result['exact']}/{len(result['columns'])}; scheduled events recovered: "
          f"{result['events_recovered']}/{result['events_expected']}; extra events at scheduled sites: "
          f"{result['extra_events_at_scheduled']}")
    print(f"spurious events elsewhere: {result['spurious_events']} at {result['spurious_sites']} sites "
          f"({result['spurious_events_au_columns']} at unchanged Au columns, "
          f"{result['spurious_events_near_particle']} within {NEAR_PARTICLE_A:g} Å of one, those included; the rest "
          f"on the support or in vacuum); tracked sites: {result['sites']}")
    print(f"unchanged Au columns: {result['unchanged_columns']}, tracked {result['unchanged_tracked']}, "
          f"present in every frame {result['unchanged_always_present']}; "
          f"max registration error {result['drift_error_px_max']} px")
    print(f"event confidence: recovered events from {result['confidence_recovered_min']}, "
          f"false events up to {result['confidence_false_max']}")


# --------------------------------------------------------------------------- static particle


def static_events(out_dir: Path, truth_xy_px: np.ndarray, n_frames: int, sampling_A: float) -> dict[str, Any]:
    """False events of a tracked static series (every event is false).

    Parameters
    ----------
    out_dir : Path
        The tracker's output folder (``sites.csv``, ``events.csv``).
    truth_xy_px : ndarray, shape (n_columns, 2)
        Every Au column's position in the first frame's pixel grid.
    n_frames : int
    sampling_A : float
        Pixel size (Å/px).

    Returns
    -------
    dict
        ``sites``, ``site_frames`` (sites x frames), ``events`` and
        ``events_per_100_site_frames`` over all tracked sites; the same over the sites
        matched to an Au column (``au_*``); the largest event confidence.
    """
    sites = pd.read_csv(out_dir / "sites.csv")
    events = pd.read_csv(out_dir / "events.csv")
    site_xy = sites[["x", "y"]].to_numpy(dtype=np.float64).reshape(-1, 2)
    _, au = match_positions(truth_xy_px, site_xy, TOLERANCE_A / sampling_A)
    au_events = int(events["site"].isin(au).sum())
    per_100 = lambda n_events, n_sites: round(100.0 * n_events / (n_sites * n_frames), 3) if n_sites else None  # noqa: E731
    return {
        "sites": len(sites),
        "site_frames": len(sites) * n_frames,
        "events": len(events),
        "events_per_100_site_frames": per_100(len(events), len(sites)),
        "au_sites": len(au),
        "au_events": au_events,
        "au_events_per_100_site_frames": per_100(au_events, len(au)),
        "events_sites": int(events["site"].nunique()),
        "confidence_max": round(float(events["confidence"].max()), 3) if len(events) else None,
    }


def run_static(
    particle: Particle,
    truth_xy_px: np.ndarray,
    args: argparse.Namespace,
    dose_e_per_A2: float,
    index: int,
    out: Path,
    waves: dict[tuple[int, ...], np.ndarray],
) -> dict[str, Any]:
    """Simulate, track and score one static series at ``dose_e_per_A2`` (see the module docstring)."""
    n = args.frames
    still = Schedule(columns=np.zeros(0, dtype=np.int64), kinds=(), present=np.ones((n, 0), dtype=bool))
    drift = drift_px(n, np.random.default_rng([args.seed, 5, index]))
    t0 = time.perf_counter()
    scope = microscope(dose_e_per_A2, args.cs_um, args.defocus)
    frames, _ = simulate_series(particle, still, drift, scope, args.seed,
                                noise_stream=10 + index, waves=waves)
    stack = write_tiff_calibrated(out / f"static-{dose_e_per_A2:g}.tif", frames, SAMPLING_A)
    used = run_tracker(stack, args.model, out / f"static-{dose_e_per_A2:g}", args.threshold, args.switch_cost)
    result = static_events(out / f"static-{dose_e_per_A2:g}", truth_xy_px, n, used["sampling_A"])
    result = {"dose_e_per_A2": dose_e_per_A2, "frames": n, **result, "threshold": used["threshold"],
              "switch_cost": used["switch_cost"], "seconds": round(time.perf_counter() - t0, 1)}
    print(f"static particle at {dose_e_per_A2:g} e/Å²: {result['events']} events in {result['site_frames']} "
          f"site-frames ({result['events_per_100_site_frames']} per 100; Au columns "
          f"{result['au_events']} in {result['au_sites'] * n}, {result['au_events_per_100_site_frames']} per 100); "
          f"switching cost {result['switch_cost']} nats")
    return result


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gold",
                        help=f"shipped model name or model stem/path; {CONVENTIONAL!r} for the conventional detector")
    parser.add_argument("--dose", type=float, default=3e4, help="electron dose per frame (e/Å²)")
    parser.add_argument("--frames", type=int, default=12, help="number of frames (>= 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the particle, column choice, drift and noise")
    parser.add_argument("--zone", default="110", choices=("100", "110", "111"), help="zone axis of the particle")
    parser.add_argument("--cs-um", type=float, default=-25.0, help="spherical aberration (µm) at 300 kV")
    parser.add_argument("--defocus", type=float, default=None,
                        help="defocus (Å, positive = underfocus; default: Scherzer for --cs-um)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="map value separating present from absent in the presence decision "
                             "(default: the model card's peak threshold, as `atomfinder track`)")
    parser.add_argument("--switch-cost", type=float, default=None,
                        help="nats a change of presence must overcome (default: from the noise of the map values)")
    parser.add_argument("--static-doses", nargs="+", default=[f"{d:g}" for d in STATIC_DOSES],
                        help="doses (e/Å²) of the static-particle check; 'none' skips it")
    parser.add_argument("--out", type=Path, default=None, help="folder for frames and tracker outputs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (with --out it is always kept)")
    args = parser.parse_args(argv)
    if args.frames < 5:
        parser.error("--frames must be at least 5")
    if not args.dose > 0:
        parser.error("--dose must be positive")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error("--threshold must be in [0, 1]")
    if args.switch_cost is not None and not args.switch_cost >= 0:
        parser.error("--switch-cost must be >= 0")
    try:
        args.static_doses = [] if [d.lower() for d in args.static_doses] == ["none"] else [
            float(d) for d in args.static_doses]
    except ValueError:
        parser.error(f"--static-doses: give doses in e/Å² or 'none', got {args.static_doses}")
    if any(not d > 0 for d in args.static_doses):
        parser.error("--static-doses must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t_start = time.perf_counter()
    if args.model != CONVENTIONAL:
        from atomfinder.nn.card import resolve_model

        resolve_model(args.model)  # fail before simulating when the model does not exist
    out = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="check_track_gold-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        particle = build_particle(args.seed, args.zone)
        info = particle.structure.info
        n_cols = len(particle.structure.sites)
        columns = choose_surface_columns(particle, len(SCHEDULE_KINDS), np.random.default_rng([args.seed, 3]))
        schedule = make_schedule(columns, args.frames)
        true_drift = drift_px(args.frames, np.random.default_rng([args.seed, 4]))
        scope = microscope(args.dose, args.cs_um, args.defocus)
        print(f"particle: {info['shape']} [{info['zone_axis']}], {info['n_au']} Au atoms in {n_cols} columns, "
              f"{info['diameter_A']:.1f} Å, on CeO2 {info['support']['orientation']}; "
              f"{scope.energy_eV / 1e3:.0f} kV, Cs {scope.Cs_A / 1e4:.0f} µm, defocus {scope.defocus_A:.1f} Å, "
              f"dose {args.dose:g} e/Å²")

        t0 = time.perf_counter()
        waves: dict[tuple[int, ...], np.ndarray] = {}
        frames, origin = simulate_series(particle, schedule, true_drift, scope, args.seed, waves=waves)
        simulate_s = time.perf_counter() - t0
        stack_path = write_tiff_calibrated(out / "frames.tif", frames, SAMPLING_A)
        truth_xy = particle.structure.sites.positions_A / SAMPLING_A - np.asarray(origin, dtype=float)
        (out / "truth.json").write_text(json.dumps({
            "origin_px": list(origin),
            "columns_xy_px": np.round(truth_xy, 3).tolist(),
            "scheduled": schedule.columns.tolist(),
            "kinds": list(schedule.kinds),
            "present": schedule.present.astype(int).T.tolist(),
            "drift_px": np.round(true_drift, 3).tolist(),
            "microscope": scope.to_dict(),
            "structure": info,
        }, indent=1))
        print(f"simulated {args.frames} frames of {frames.shape[2]}x{frames.shape[1]} px in {simulate_s:.1f} s "
              f"-> {stack_path}")

        t0 = time.perf_counter()
        track_dir = out / "track"
        used = run_tracker(stack_path, args.model, track_dir, args.threshold, args.switch_cost)
        name, sampling = used["detector"], used["sampling_A"]
        track_s = time.perf_counter() - t0
        print(f"tracked with {name} in {track_s:.1f} s -> {track_dir} (presence decided at map value "
              f"{used['threshold']:g}, switching cost {used['switch_cost']} nats)")

        result = compare(track_dir, truth_xy, schedule, true_drift, sampling)
        print_summary(result, args.frames)
        static = [run_static(particle, truth_xy, args, dose, k, out, waves) for k, dose in enumerate(args.static_doses)]
        seconds = time.perf_counter() - t_start
        kept = args.out is not None or args.keep
        print(f"frames and tracker outputs in {out}" + ("" if kept else " (deleted at exit; use --keep)"))
        print(json.dumps({
            "model": args.model,
            "detector": name,
            "dose_e_per_A2": args.dose,
            "frames": args.frames,
            "seed": args.seed,
            "zone": info["zone_axis"],
            "au_columns": n_cols,
            "scheduled_columns": len(schedule.columns),
            "exact": result["exact"],
            "events_expected": result["events_expected"],
            "events_recovered": result["events_recovered"],
            "extra_events_at_scheduled": result["extra_events_at_scheduled"],
            "spurious_events": result["spurious_events"],
            "spurious_events_au_columns": result["spurious_events_au_columns"],
            "spurious_events_near_particle": result["spurious_events_near_particle"],
            "spurious_sites": result["spurious_sites"],
            "threshold": used["threshold"],
            "switch_cost": used["switch_cost"],
            "confidence_recovered_min": result["confidence_recovered_min"],
            "confidence_false_max": result["confidence_false_max"],
            "sites": result["sites"],
            "unchanged_always_present": result["unchanged_always_present"],
            "unchanged_columns": result["unchanged_columns"],
            "drift_error_px_max": result["drift_error_px_max"],
            "simulate_seconds": round(simulate_s, 1),
            "track_seconds": round(track_s, 1),
            "seconds": round(seconds, 1),
            "columns": [{k: c[k] for k in ("column", "kind", "truth", "tracked", "exact")} for c in result["columns"]],
            "static": static,
        }))
    finally:
        if args.out is None and not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
