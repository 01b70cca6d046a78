"""Time series: registration, site linking, presence, events, outputs (synthetic, seeded)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from atomfinder.analysis.matching import match_positions
from atomfinder.analysis.timeseries import (
    Sites,
    events,
    link_sites,
    presence,
    presence_matrix,
    refine_drift,
    register_frames,
    sites_in_view,
    smooth_states,
    summary,
    track,
)
from atomfinder.detection.baseline import conventional_atoms

SAMPLING_A = 0.2  # Å/px: column spacing 10.37 px = 2.07 Å, tolerance 0.7 Å = 3.5 px
N_FRAMES = 12
SHAPE = (96, 96)
N_SIDE = 6  # 6 x 6 columns; corners are the "surface" columns that come and go
# (column index, first absent frame, first present-again frame or None)
ABSENT = {
    0: [(4, 8)],  # top-left corner: gone in frames 4-7
    5: [(0, 6)],  # top-right corner: arrives at frame 6
    30: [(9, None)],  # bottom-left corner: leaves at frame 9 for good
    35: [(6, 7)],  # bottom-right corner: single-frame flicker at frame 6
}
EXPECTED_EVENTS = {
    (4, 0, "disappear"), (8, 0, "appear"), (6, 5, "appear"),
    (9, 30, "disappear"), (6, 35, "disappear"), (7, 35, "appear"),
}


def lattice() -> np.ndarray:
    """True column positions (x, y) in frame-0 pixels; spacing not commensurate with pixels."""
    gx, gy = np.meshgrid(np.arange(N_SIDE), np.arange(N_SIDE))
    return np.column_stack([22.3 + 10.37 * gx.ravel(), 22.6 + 10.37 * gy.ravel()])


def schedule() -> np.ndarray:
    """Presence [frame, column] (0/1) of the true columns."""
    s = np.ones((N_FRAMES, N_SIDE * N_SIDE), dtype=np.int64)
    for col, spans in ABSENT.items():
        for start, stop in spans:
            s[start : stop if stop is not None else N_FRAMES, col] = 0
    return s


def render(xy: np.ndarray, shape=SHAPE, sigma_px: float = 1.5) -> np.ndarray:
    """Gaussian columns (peak 1) at exact sub-pixel positions on a 0.2 background."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    img = np.full(shape, 0.2)
    for x, y in xy:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma_px**2))
    return img


def detector(image: np.ndarray) -> pd.DataFrame:
    """Bright-peak detector (conventional baseline), DESIGN.md atom table with label Au."""
    atoms = conventional_atoms(
        image, SAMPLING_A, atom_radius_A=0.3, min_distance_A=1.0, threshold_rel=0.5, polarity="bright"
    )
    return atoms.to_frame(["Au"], SAMPLING_A)


@pytest.fixture(scope="module")
def series():
    rng = np.random.default_rng(7)
    drift = rng.uniform(-5, 5, size=(N_FRAMES, 2))
    drift[0] = 0.0
    cols, sched = lattice(), schedule()
    frames = np.stack([
        render(cols[sched[i] == 1] + drift[i]) + rng.normal(0, 0.15, SHAPE) for i in range(N_FRAMES)
    ])
    return frames, drift, cols, sched


@pytest.fixture(scope="module")
def tracked(series, tmp_path_factory):
    frames, *_ = series
    out = tmp_path_factory.mktemp("track")
    calls = []
    paths = track(frames, detector, SAMPLING_A, out, tolerance_A=0.7, frame_interval_s=0.5,
                  progress=lambda done, total: calls.append((done, total)))
    return paths, calls


def site_to_column(sites_xy: np.ndarray, cols: np.ndarray) -> dict[int, int]:
    s, c = match_positions(sites_xy, cols, 1.0)
    return dict(zip(s.tolist(), c.tolist()))


# --------------------------------------------------------------------------- registration


def test_register_sign_convention():
    """A feature at (x, y) in frame 0 is at (x + dx, y + dy) in frame 1."""
    pts = np.array([[30.2, 40.7], [55.0, 20.1], [47.3, 61.9], [20.0, 25.5]])
    shift = np.array([3.3, -2.1])
    frames = np.stack([render(pts, (80, 80)), render(pts + shift, (80, 80))])
    drift = register_frames(frames)
    assert drift.shape == (2, 2)
    np.testing.assert_allclose(drift[0], 0.0)
    np.testing.assert_allclose(drift[1], shift, atol=0.1)


@pytest.mark.parametrize("mode, atol", [("first", 0.2), ("previous", 0.3)])
def test_register_recovers_drift(series, mode, atol):
    frames, drift, *_ = series
    found = register_frames(frames, mode=mode)
    assert np.abs(found - drift).max() < atol


def test_coarse_stage_resolves_lattice_alias(series):
    """Frames 1 -> 2 move 6.5 px, more than half the 10.37 px period: the windowed
    correlation alone picks the alias one lattice vector away; the coarse stage does not."""
    frames, drift, *_ = series
    step = drift[2] - drift[1]
    assert np.abs(step).max() > 10.37 / 2
    alone = register_frames(frames[1:3], coarse=False)[1]
    assert np.abs(alone - step).max() > 5
    np.testing.assert_allclose(register_frames(frames[1:3])[1], step, atol=0.2)


def test_register_reference_and_errors(series):
    frames, drift, *_ = series
    found = register_frames(frames[:4], reference=2)
    np.testing.assert_allclose(found[2], 0.0)
    assert np.abs(found - (drift[:4] - drift[2])).max() < 0.2
    with pytest.raises(ValueError):
        register_frames(frames, mode="sideways")
    with pytest.raises(ValueError):
        register_frames(frames[0])


# --------------------------------------------------------------------------- full chain


def test_track_outputs(series, tracked):
    frames, drift, cols, sched = series
    paths, calls = tracked
    assert calls == [(i + 1, N_FRAMES) for i in range(N_FRAMES)]
    expected = {"sites.csv", "presence.csv", "events.csv", "drift.csv", "occupancy.csv",
                "presence.png", "occupancy.png", "overlay.gif"}
    assert set(paths) == expected
    assert all(p.exists() and p.stat().st_size > 0 for p in paths.values())
    assert not [p for p in paths["sites.csv"].parent.iterdir() if p.name.startswith(".")]  # no temp left
    read = {k: pd.read_csv(v) for k, v in paths.items() if k.endswith(".csv")}
    assert list(read["sites.csv"].columns) == ["site", "x", "y", "x_angstrom", "y_angstrom", "label"]
    assert list(read["presence.csv"].columns) == ["frame", "site", "present", "probability"]
    assert list(read["events.csv"].columns) == ["frame", "site", "event", "x", "y"]
    assert list(read["drift.csv"].columns) == ["frame", "dx", "dy"]
    assert list(read["occupancy.csv"].columns) == ["frame", "occupancy", "events", "event_rate"]
    assert np.abs(read["drift.csv"][["dx", "dy"]].to_numpy() - drift).max() < 0.2
    with Image.open(paths["overlay.gif"]) as gif:
        assert gif.n_frames == N_FRAMES
        assert max(gif.size) <= 400


def test_track_sites_presence_events(series, tracked):
    frames, drift, cols, sched = series
    paths, _ = tracked
    sites = pd.read_csv(paths["sites.csv"])
    assert len(sites) == len(cols)  # one site per lattice column, no spurious ones
    assert (sites["label"] == "Au").all()
    np.testing.assert_allclose(sites["x_angstrom"], sites["x"] * SAMPLING_A)
    mapping = site_to_column(sites[["x", "y"]].to_numpy(), cols)
    assert len(mapping) == len(cols)
    for s, c in mapping.items():  # positions in the first frame's grid
        assert np.hypot(*(sites.loc[s, ["x", "y"]].to_numpy(float) - cols[c])) < 0.3
    pres = pd.read_csv(paths["presence.csv"])
    m = presence_matrix(pres, len(sites))
    order = [mapping[s] for s in range(len(sites))]
    np.testing.assert_array_equal(m, sched[:, order])
    assert ((pres["probability"] > 0) == (pres["present"] == 1)).all()
    ev = pd.read_csv(paths["events.csv"])
    got = {(int(f), mapping[int(s)], e) for f, s, e in ev[["frame", "site", "event"]].itertuples(index=False)}
    assert got == EXPECTED_EVENTS
    occ = pd.read_csv(paths["occupancy.csv"])
    np.testing.assert_allclose(occ["occupancy"], sched.mean(axis=1))
    n_events = np.bincount([f for f, _, _ in EXPECTED_EVENTS], minlength=N_FRAMES)
    np.testing.assert_array_equal(occ["events"], n_events)
    np.testing.assert_allclose(occ["event_rate"], n_events / len(cols) / 0.5)  # per site per second


def test_min_run_suppresses_flicker(series):
    frames, drift, cols, sched = series
    tables = [detector(f) for f in frames]
    sites = link_sites(tables, drift, 3.5)
    pres = presence(tables, drift, sites, 3.5)
    mapping = site_to_column(sites.xy, cols)
    ev = events(pres, sites, min_run=2)
    got = {(int(f), mapping[int(s)], e) for f, s, e in ev[["frame", "site", "event"]].itertuples(index=False)}
    assert got == EXPECTED_EVENTS - {(6, 35, "disappear"), (7, 35, "appear")}


def test_refine_drift_keeps_accuracy(series):
    frames, drift, *_ = series
    tables = [detector(f) for f in frames]
    d0 = register_frames(frames)
    refined = refine_drift(tables, d0, link_sites(tables, d0, 3.5), 3.5)
    np.testing.assert_allclose(refined[0], 0.0)
    assert np.abs(refined - drift).max() < 0.2


# --------------------------------------------------------------------------- edge cases


def test_single_frame(series, tmp_path):
    frames, *_ = series
    paths = track(frames[:1], detector, SAMPLING_A, tmp_path)
    assert pd.read_csv(paths["drift.csv"])[["dx", "dy"]].to_numpy().tolist() == [[0.0, 0.0]]
    assert len(pd.read_csv(paths["events.csv"])) == 0
    assert len(pd.read_csv(paths["sites.csv"])) == int(schedule()[0].sum())
    occ = pd.read_csv(paths["occupancy.csv"])
    assert occ["occupancy"].tolist() == [1.0] and occ["events"].tolist() == [0]
    with Image.open(paths["overlay.gif"]) as gif:
        assert gif.n_frames == 1


def test_empty_detection_frame(series):
    """No detections in frame 5: every site present in 4 disappears, and reappears in 6."""
    frames, drift, cols, sched = series
    tables = [detector(f) for f in frames]
    tables[5] = tables[5].iloc[0:0]
    sites = link_sites(tables, drift, 3.5)
    assert len(sites) == len(cols)
    pres = presence(tables, drift, sites, 3.5)
    m = presence_matrix(pres, len(sites))
    assert m[5].sum() == 0
    ev = events(pres, sites)
    at5, at6 = ev[ev["frame"] == 5], ev[ev["frame"] == 6]
    assert set(at5["event"]) == {"disappear"} and set(at5["site"]) == set(np.flatnonzero(m[4]))
    assert set(at6["event"]) == {"appear"} and set(at6["site"]) == set(np.flatnonzero(m[6]))
    occ = summary(pres, ev)
    assert occ.loc[5, "occupancy"] == 0.0
    assert occ.loc[5, "event_rate"] == pytest.approx(m[4].sum() / len(sites))  # per site per frame


def test_no_detections_at_all(series, tmp_path):
    frames, *_ = series
    paths = track(frames[:3], lambda img: pd.DataFrame({"x": [], "y": []}), SAMPLING_A, tmp_path)
    assert len(pd.read_csv(paths["sites.csv"])) == 0
    assert len(pd.read_csv(paths["presence.csv"])) == 0
    assert len(pd.read_csv(paths["events.csv"])) == 0
    occ = pd.read_csv(paths["occupancy.csv"])
    assert occ["frame"].tolist() == [0, 1, 2] and (occ["occupancy"] == 0).all()
    with Image.open(paths["overlay.gif"]) as gif:
        assert gif.n_frames == 3


def test_link_sites_one_detection_per_frame_and_merge():
    d = np.zeros((3, 2))
    t0 = pd.DataFrame({"x": [10.0, 11.0], "y": [10.0, 10.0], "label": ["A", "B"], "probability": [0.9, 0.8]})
    t1 = pd.DataFrame({"x": [10.2], "y": [10.0], "label": ["A"], "probability": [0.7]})
    t2 = pd.DataFrame({"x": [30.0], "y": [5.0], "label": ["A"], "probability": [0.6]})
    sites = link_sites([t0, t1, t2], d, 2.0)
    # two detections 1 px apart in frame 0 stay two sites; reading order: y, then x
    assert len(sites) == 3
    np.testing.assert_allclose(sites.xy[0], [30.0, 5.0])
    np.testing.assert_allclose(sites.xy[1], [10.1, 10.0])
    assert sites.n_detections.tolist() == [1, 2, 1]
    # detections in different frames that opened separate sites but never co-occur merge
    a = pd.DataFrame({"x": [10.0], "y": [10.0], "label": [1], "probability": [1.0]})
    b = pd.DataFrame({"x": [12.5], "y": [10.0], "label": [1], "probability": [1.0]})  # > 2 px: new site
    c = pd.DataFrame({"x": [11.4], "y": [10.0], "label": [2], "probability": [1.0]})  # joins b's site
    merged = link_sites([a, b, c], d, 2.0)
    assert len(merged) == 1 and merged.label.tolist() == [1]
    np.testing.assert_allclose(merged.xy[0], [11.3, 10.0], atol=1e-9)
    assert len(link_sites([a, b, c], d, 2.0, merge=False)) == 2
    with pytest.raises(ValueError):
        link_sites([a], np.zeros((2, 2)), 2.0)


def test_smooth_states():
    s = np.array([1, 1, 0, 1, 1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(smooth_states(s, 1), s)
    np.testing.assert_array_equal(smooth_states(s, 2), [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(smooth_states(s, 4), np.ones(10))


def test_sites_in_view():
    sites = Sites([5.0, 50.0], [50.0, 50.0], ["Au", "Au"], [2, 2])
    drift = np.array([[0.0, 0.0], [-4.0, 1.0]])
    np.testing.assert_array_equal(sites_in_view(sites, drift, (100, 100), margin_px=2.0), [False, True])
    np.testing.assert_array_equal(sites_in_view(sites, drift, (100, 100)), [True, True])


def test_timeseries_does_not_import_simulation_stack():
    code = (
        "import sys, atomfinder.analysis.timeseries\n"
        "bad = [m for m in ('abtem', 'ase', 'atomfinder.imaging', 'atomfinder.structures', "
        "'atomfinder.datasets') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
