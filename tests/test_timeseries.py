"""Time series: registration, site linking, presence decoding, events, outputs (synthetic, seeded)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates

from atomfinder.analysis.matching import match_positions
from atomfinder.analysis.timeseries import (
    DRIFT_COLUMNS,
    MIN_SWITCH_COST,
    FrameDetection,
    RegistrationWarning,
    Sites,
    TrackWarning,
    change_posteriors,
    evidence_cap,
    events,
    link_sites,
    presence,
    presence_evidence,
    presence_matrix,
    refine_drift,
    register_frames,
    register_series,
    site_probabilities,
    sites_in_view,
    smooth_states,
    summary,
    switch_cost_from_noise,
    track,
    viterbi_states,
)
from atomfinder.detection.baseline import conventional_atoms
from atomfinder.detection.registration import MIN_CORRELATION_SIGMAS
from conftest import save_untrained_model

SAMPLING_A = 0.2  # Å/px: column spacing 10.37 px = 2.07 Å, tolerance 0.7 Å = 3.5 px
N_FRAMES = 12
SHAPE = (96, 96)
N_SIDE = 6  # 6 x 6 columns; corners are the "surface" columns that come and go
# (column index, first absent frame, first present-again frame or None)
ABSENT = {
    0: [(4, 8)],  # top-left corner: gone in frames 4-7
    5: [(0, 6)],  # top-right corner: arrives at frame 6
    30: [(9, None)],  # bottom-left corner: leaves at frame 9 for good
    35: [(6, 7)],  # bottom-right corner: gone in frame 6 only (the map leaves no doubt)
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


def atom_map(image: np.ndarray) -> np.ndarray:
    """A network-like atom map on the frame's grid: smooth, in (0, 1), about 0.99 on a column, 0.01 off."""
    level = gaussian_filter(image - 0.2, 1.0) / 0.69  # a column's smoothed peak is 1.5^2 / (1.5^2 + 1) = 0.69
    return 1.0 / (1.0 + np.exp(-10.0 * (level - 0.5)))


def detector(image: np.ndarray) -> FrameDetection:
    """Bright-peak detector (conventional baseline), DESIGN.md atom table with label Au, and its map."""
    atoms = conventional_atoms(
        image, SAMPLING_A, atom_radius_A=0.3, min_distance_A=1.0, threshold_rel=0.5, polarity="bright"
    )
    return FrameDetection(atoms.to_frame(["Au"], SAMPLING_A), atom_map(image))


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


def blob_field(shape=(200, 200), n=160, seed=3) -> np.ndarray:
    """Randomly placed round spots: content that is not periodic, so every shift is unambiguous."""
    rng = np.random.default_rng(seed)
    return render(rng.uniform(0, shape[1], (n, 2)), shape, sigma_px=2.0)


def test_registration_checks_pass_on_a_well_registered_series(series):
    """The checked registration gives the very drift of register_frames, and no doubt."""
    frames, drift, *_ = series
    for mode in ("first", "previous"):
        reg = register_series(frames, mode=mode)
        np.testing.assert_array_equal(reg.drift, register_frames(frames, mode=mode))
        assert reg.reliable.all() and reg.problems() == []
        assert np.nanmin(reg.sigmas) > 2 * MIN_CORRELATION_SIGMAS and np.nanmax(reg.disagreement_px) < 0.5


def test_registration_flags_a_drift_beyond_half_the_field_and_previous_follows_it():
    """Frame 3 keeps only 33 % of frame 0's field: against frame 0 the whole-pixel stage does not
    search that far and finds a wrong drift; the check through frame 2 says so in one line, and
    mode "previous" (steps of at most 24 x 16 px) finds the true drift without a doubt."""
    field = blob_field()
    offsets = np.array([[0, 0], [12, 8], [24, 16], [48, 32]])  # (dx, dy) of each frame's window
    frames = np.stack([field[y : y + 96, x : x + 96] for x, y in offsets])
    truth = -offsets.astype(float)  # the window moves right: the content moves left
    first = register_series(frames)
    assert np.abs(first.drift[3] - truth[3]).max() > 5  # silently wrong before the check
    np.testing.assert_array_equal(first.reliable, [True, True, True, False])
    (line,) = first.problems()
    assert line.startswith("frame 3: registration doubtful: drift") and "through frame 2" in line
    assert "--registration previous" in line and "\n" not in line
    np.testing.assert_allclose(first.second[3], truth[3], atol=0.3)
    previous = register_series(frames, mode="previous")
    np.testing.assert_allclose(previous.drift, truth, atol=0.3)
    assert previous.problems() == []


def test_registration_flags_frames_of_noise():
    """Unrelated frames correlate at a few noise sigmas at their best shift: every frame is doubtful."""
    frames = np.random.default_rng(0).normal(size=(3, 128, 128))
    reg = register_series(frames)
    assert (reg.sigmas[1:] < 6).all() and not reg.reliable[1:].any()
    assert all("noise sigmas" in line for line in reg.problems()) and len(reg.problems()) == 2


def test_track_warns_of_a_doubtful_registration_and_records_it(tmp_path):
    frames = np.random.default_rng(0).normal(size=(3, 64, 64))
    with pytest.warns(RegistrationWarning, match=r"^frame 1: registration doubtful"):
        paths = track(frames, lambda img: pd.DataFrame({"x": [], "y": []}), SAMPLING_A, tmp_path / "out", gif=False,
                      provenance={})
    table = pd.read_csv(paths["drift.csv"])
    assert table.columns.tolist() == list(DRIFT_COLUMNS) and table["reliable"].tolist() == [1, 0, 0]
    record = json.loads(paths["provenance.json"].read_text(encoding="utf-8"))
    assert record["tracking"]["registration_doubtful_frames"] == [1, 2]


def test_cli_track_registration_mode(tmp_path):
    """`--registration previous` reaches the tracker (recorded in provenance.json); doubtful frames are
    printed as one warning line each."""
    from typer.testing import CliRunner

    from atomfinder.cli import app
    from atomfinder.detection.io import write_tiff_calibrated

    save_untrained_model(tmp_path / "tiny", SAMPLING_A, class_names=("Au",))
    src = write_tiff_calibrated(tmp_path / "noise.tif", np.random.default_rng(1).normal(100, 5, (3, 64, 64)),
                                SAMPLING_A)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["track", str(src), "--model", str(tmp_path / "tiny"), "--out", str(out),
                                      "--registration", "previous"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "provenance.json").read_text())["tracking"]["registration"] == "previous"
    warned = [line for line in result.output.splitlines() if line.startswith("warning: frame")]
    assert len(warned) == 2 and all("registration doubtful" in line for line in warned)
    # the frames' validity checks, one line per failed check naming the frames, as detect gives them
    checks = [line for line in result.output.splitlines() if line.startswith(f"warning: {src} frame")]
    assert checks and all("of 3)" in line for line in checks), result.output


def test_cli_track_counts_sites_and_events_and_warns_when_there_is_no_site(tmp_path, monkeypatch):
    """The last line gives the sites and events; no site at all (nothing detected) is one warning line."""
    from typer.testing import CliRunner

    from atomfinder.analysis import timeseries
    from atomfinder.cli import app
    from atomfinder.detection.io import write_tiff_calibrated

    save_untrained_model(tmp_path / "tiny", SAMPLING_A, class_names=("Au",))
    frames = np.stack([100 + 50 * render(lattice() * 0.6, (64, 64)) for _ in range(3)]).astype(np.float32)
    src = write_tiff_calibrated(tmp_path / "series.tif", frames, SAMPLING_A)
    args = ["track", str(src), "--model", str(tmp_path / "tiny")]
    result = CliRunner().invoke(app, args + ["--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    n_sites = len(pd.read_csv(tmp_path / "a" / "sites.csv"))
    n_events = len(pd.read_csv(tmp_path / "a" / "events.csv"))
    assert n_sites > 0
    assert f"3 frames: {n_sites} sites, {n_events} event" in result.output.splitlines()[-1]
    monkeypatch.setattr(timeseries.TimeSeries, "detect_frame", lambda self, frame: pd.DataFrame({"x": [], "y": []}))
    result = CliRunner().invoke(app, args + ["--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    (warned,) = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert "no column found in any of the 3 frames" in warned
    assert "3 frames: 0 sites, 0 events" in result.output.splitlines()[-1]


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
    assert list(read["events.csv"].columns) == ["frame", "site", "event", "x", "y", "confidence"]
    assert list(read["drift.csv"].columns) == ["frame", "dx", "dy", "correlation", "correlation_sigmas",
                                               "disagreement_px", "reliable"]
    assert (read["drift.csv"]["reliable"] == 1).all()
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
    ev = pd.read_csv(paths["events.csv"])
    got = {(int(f), mapping[int(s)], e) for f, s, e in ev[["frame", "site", "event"]].itertuples(index=False)}
    assert got == EXPECTED_EVENTS
    assert ev["confidence"].between(0.5, 1.0).all()  # every change in this clean series is sharp
    occ = pd.read_csv(paths["occupancy.csv"])
    np.testing.assert_allclose(occ["occupancy"], sched.mean(axis=1))
    n_events = np.bincount([f for f, _, _ in EXPECTED_EVENTS], minlength=N_FRAMES)
    np.testing.assert_array_equal(occ["events"], n_events)
    np.testing.assert_allclose(occ["event_rate"], n_events / len(cols) / 0.5)  # per site per second


def test_probability_is_the_map_value_in_every_frame(series, tracked):
    """presence.csv holds the detector's map read at the site (drift applied) in every frame,
    absent frames included, whatever was decided."""
    frames, *_ = series
    paths, _ = tracked
    sites = pd.read_csv(paths["sites.csv"])
    used_drift = pd.read_csv(paths["drift.csv"])[["dx", "dy"]].to_numpy()
    pres = pd.read_csv(paths["presence.csv"]).sort_values(["frame", "site"])
    got = pres["probability"].to_numpy().reshape(N_FRAMES, len(sites))
    x, y = sites["x"].to_numpy(), sites["y"].to_numpy()
    for f in range(N_FRAMES):
        expected = map_coordinates(atom_map(frames[f]), [y + used_drift[f, 1], x + used_drift[f, 0]], order=1)
        np.testing.assert_allclose(got[f], expected, rtol=1e-9, atol=1e-12)
    absent = pres["present"].to_numpy() == 0
    assert absent.sum() == (schedule() == 0).sum()
    assert (pres.loc[absent, "probability"] > 0).all() and (pres.loc[absent, "probability"] < 0.5).all()


def test_site_probabilities_read_maps_through_drift_and_sampling():
    """Linear maps (exact under bilinear reading) on a grid 2x finer than the frames, drifting."""
    sites = Sites([10.0, 20.5, 33.2], [12.0, 7.25, 30.0], ["Au"] * 3, [2, 2, 2])
    drift = np.array([[0.0, 0.0], [1.5, -2.25], [-3.1, 4.4]])
    yy, xx = np.mgrid[0:100, 0:100].astype(float)  # map pixels, 0.1 Å; frames are 0.2 Å/px
    slopes = [(0.003, 0.001), (0.002, -0.001), (-0.001, 0.004)]
    found = [FrameDetection(pd.DataFrame({"x": [], "y": []}), 0.3 + a * xx + b * yy, 0.1) for a, b in slopes]
    prob = site_probabilities(found, drift, sites, 0.2, 3.0)
    for f, (a, b) in enumerate(slopes):
        mx, my = 2 * (sites.x + drift[f, 0]), 2 * (sites.y + drift[f, 1])
        np.testing.assert_allclose(prob[f], 0.3 + a * mx + b * my)
    # a frame without a map: the matched detection's probability, 0 elsewhere
    table = pd.DataFrame({"x": [20.5 + 1.5 + 0.4], "y": [7.25 - 2.25], "probability": [0.87]})
    fallback = site_probabilities([found[0], FrameDetection(table)], drift[:2], sites, 0.2, 1.0)
    np.testing.assert_allclose(fallback[1], [0.0, 0.87, 0.0])


def test_min_run_suppresses_flicker(series):
    frames, drift, cols, sched = series
    found = [detector(f) for f in frames]
    sites = link_sites([d.table for d in found], drift, 3.5)
    prob = site_probabilities(found, drift, sites, SAMPLING_A, 3.5)
    mapping = site_to_column(sites.xy, cols)
    pres = presence(prob, 0.5, min_run=2)
    ev = events(pres, sites, threshold=0.5)
    got = {(int(f), mapping[int(s)], e) for f, s, e in ev[["frame", "site", "event"]].itertuples(index=False)}
    assert got == EXPECTED_EVENTS - {(6, 35, "disappear"), (7, 35, "appear")}
    np.testing.assert_array_equal(np.abs(np.diff(presence_matrix(pres, len(sites)), axis=0)).sum(), len(got))


def test_refine_drift_keeps_accuracy(series):
    frames, drift, *_ = series
    tables = [detector(f).table for f in frames]
    d0 = register_frames(frames)
    refined = refine_drift(tables, d0, link_sites(tables, d0, 3.5), 3.5)
    np.testing.assert_allclose(refined[0], 0.0)
    assert np.abs(refined - drift).max() < 0.2


# --------------------------------------------------------------------------- edge cases


def _never_detect(frame):
    raise AssertionError("a frame was detected before the input was checked")


def test_track_refuses_a_single_frame_and_nan_pixels_in_one_line(series, tmp_path):
    """One frame is refused as the command line refuses it; NaN pixels, which reached skimage's
    registration and its own error text, are refused with a pointer to no_data; before any work."""
    frames, *_ = series
    with pytest.raises(ValueError, match=r"^a time series needs at least 2 frames, got 1$"):
        track(frames[:1], _never_detect, SAMPLING_A, tmp_path / "one")
    with pytest.raises(ValueError, match=r"^a time series needs at least 2 frames, got 1$"):
        track(frames[0], _never_detect, SAMPLING_A, tmp_path / "one")
    holed = frames[:3].copy()
    holed[1, :, :10] = np.nan
    holed[2, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"^frame 1 has 960 NaN or inf pixels \(2 frames have some\); fill them "
                                         r"and pass where they were as no_data") as info:
        track(holed, _never_detect, SAMPLING_A, tmp_path / "nan")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "one").exists() and not (tmp_path / "nan").exists()


def test_track_refuses_an_earlier_run_unless_overwrite_and_then_removes_its_stale_files(series, tmp_path):
    frames, *_ = series
    out = tmp_path / "out"
    first = track(frames[:3], detector, SAMPLING_A, out, provenance={})
    assert {"overlay.gif", "provenance.json"} <= set(first)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"out: already holds sites.csv, presence.csv, events.csv, drift.csv and 5 "
                                         r"more from an earlier run; give overwrite=True to replace them"):
        track(frames[:3], _never_detect, SAMPLING_A, out)
    second = track(frames[:3], detector, SAMPLING_A, out, gif=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([*second, "notes.txt"])  # no stale GIF or provenance
    assert "overlay.gif" not in second and "provenance.json" not in second


def test_empty_detection_frame(series):
    """No detections in frame 5. With the maps nothing changes. A detector without maps
    (bare tables: matched probability, 0 elsewhere) gives every site value 0 in frame 5:
    its noisy peak scores set a switching cost above what one such frame can pay, so
    the dropout is bridged (it only joins an absent run next to it); at the minimum
    cost, every site present in 4 disappears in 5 and reappears in 6."""
    frames, drift, cols, sched = series
    found = [detector(f) for f in frames]
    found[5] = FrameDetection(found[5].table.iloc[0:0], found[5].atom_map)
    tables = [d.table for d in found]
    sites = link_sites(tables, drift, 3.5)
    assert len(sites) == len(cols)
    mapping = site_to_column(sites.xy, cols)
    with_maps = presence_matrix(presence(site_probabilities(found, drift, sites, SAMPLING_A, 3.5), 0.5), len(sites))
    np.testing.assert_array_equal(with_maps, sched[:, [mapping[s] for s in range(len(sites))]])
    bare = site_probabilities([FrameDetection(t) for t in tables], drift, sites, SAMPLING_A, 3.5)
    assert (bare[5] == 0).all()
    assert switch_cost_from_noise(bare, 0.5) > -0.5 * presence_evidence(0.0, 0.5)
    np.testing.assert_array_equal(presence_matrix(presence(bare, 0.5), len(sites))[5], with_maps[4] & with_maps[6])
    pres = presence(bare, 0.5, MIN_SWITCH_COST)
    m = presence_matrix(pres, len(sites))
    assert m[5].sum() == 0
    ev = events(pres, sites, threshold=0.5, switch_cost=MIN_SWITCH_COST)
    at5, at6 = ev[ev["frame"] == 5], ev[ev["frame"] == 6]
    assert set(at5["event"]) == {"disappear"} and set(at5["site"]) == set(np.flatnonzero(m[4]))
    assert set(at6["event"]) == {"appear"} and set(at6["site"]) == set(np.flatnonzero(m[6]))
    occ = summary(pres, ev)
    assert occ.loc[5, "occupancy"] == 0.0
    assert occ.loc[5, "event_rate"] == pytest.approx(m[4].sum() / len(sites))  # per site per frame


def test_no_detections_at_all(series, tmp_path):
    frames, *_ = series
    with pytest.warns(TrackWarning, match="^no column found in any of the 3 frames"):
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


def test_min_run_ignores_a_change_in_the_last_frames_and_says_so():
    """With K = 3 a column that leaves in the second-to-last frame stays present to the end (the
    change cannot last 3 frames); the CLI help, the guide and the README say so."""
    from pathlib import Path

    import typer

    from atomfinder.cli import app

    leaves = np.array([1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(smooth_states(leaves, 3), np.ones(7))
    np.testing.assert_array_equal(smooth_states(leaves, 2), leaves)
    track_command = typer.main.get_command(app).commands["track"]
    (option,) = [p for p in track_command.params if "--min-run" in p.opts]
    assert "a change in the last K-1 frames" in option.help
    root = Path(__file__).resolve().parents[1]
    for doc in (root / "docs" / "guide" / "time-series.md", root / "README.md"):
        text = " ".join(doc.read_text(encoding="utf-8").split())
        assert "`--min-run K`" in text and "in the last K − 1 frames" in text, doc


# --------------------------------------------------------------------------- presence decoding


def noisy_probabilities(truth: np.ndarray, sd: float, seed: int, on: float = 0.9, off: float = 0.1) -> np.ndarray:
    """Map values around ``on`` where ``truth`` is 1 and ``off`` where 0, Gaussian noise, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    return np.clip(np.where(truth == 1, on, off) + rng.normal(0.0, sd, truth.shape), 0.0, 1.0)


def n_changes(states: np.ndarray) -> int:
    return int(np.abs(np.diff(states, axis=0)).sum())


def test_static_noisy_sites_give_no_events():
    """50 static sites x 40 frames whose map values scatter around 0.8 (sd 0.2, clipped): a
    threshold in each frame flickers hundreds of times, the decoder not once."""
    truth = np.ones((40, 50), dtype=np.int64)
    prob = noisy_probabilities(truth, 0.2, seed=3, on=0.8)
    assert n_changes((prob >= 0.5).astype(int)) > 100
    cost = switch_cost_from_noise(prob, 0.5)
    assert cost > MIN_SWITCH_COST
    pres = presence(prob, 0.5)
    assert (pres["present"] == 1).all()
    sites = Sites(np.arange(50.0), np.zeros(50), ["Au"] * 50, np.full(50, 40))
    assert len(events(pres, sites, threshold=0.5)) == 0


def test_evidence_is_capped_symmetrically_about_the_threshold():
    """At T = 0.85 a clean map (0.999 / 0.001) gives +-4.6 nats either way. With p clipped to
    [0.01, 0.99] instead, present was capped at 2.86 nats, under the 2 x 2 nats a one-frame run
    needs: a column present in one frame only was never marked present, while the mirror image
    (absent in one frame) was; and clean events topped out at a confidence of about 0.94."""
    cap = evidence_cap()
    assert cap == pytest.approx(np.log(99.0))
    np.testing.assert_allclose(presence_evidence([0.999, 0.001, 1.0, 0.0], 0.85), [cap, -cap, cap, -cap])
    assert presence_evidence(0.85, 0.85) == pytest.approx(0.0) and presence_evidence(np.nan, 0.85) == 0.0
    blip = np.full((8, 2), 0.001)
    blip[:, 1] = 0.999
    blip[4, 0], blip[4, 1] = 0.999, 0.001  # site 0 present in frame 4 only, site 1 absent in frame 4 only
    states = presence_matrix(presence(blip, 0.85, MIN_SWITCH_COST), 2)
    np.testing.assert_array_equal(states[:, 0], [0, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(states[:, 1], [1, 1, 1, 1, 0, 1, 1, 1])
    step = np.where(np.arange(8)[:, None] < 4, 0.999, 0.001) * np.ones((1, 2))
    step[:, 1] = step[::-1, 0]
    appear, disappear = change_posteriors(presence_evidence(step, 0.85), MIN_SWITCH_COST)
    assert disappear[3, 0] > 0.97 and appear[3, 1] > 0.97  # the same confidence both ways
    assert disappear[3, 0] == pytest.approx(appear[3, 1])


def test_known_pattern_recovered_exactly():
    truth = np.ones((30, 6), dtype=np.int64)
    truth[10:, 0] = 0  # disappears
    truth[:12, 1] = 0  # appears
    truth[8:14, 2] = 0  # away and back
    truth[:5, 3] = truth[20:, 3] = 0  # appears, then goes
    truth[27:, 4] = 0  # goes 3 frames before the end
    prob = noisy_probabilities(truth, 0.12, seed=5)  # site 5 is static
    pres = presence(prob, 0.5)
    np.testing.assert_array_equal(presence_matrix(pres, 6), truth)
    np.testing.assert_array_equal(pres["probability"].to_numpy().reshape(truth.shape), prob)  # never overwritten
    sites = Sites(np.arange(6.0), np.zeros(6), ["Au"] * 6, np.full(6, 30))
    ev = events(pres, sites, threshold=0.5)
    f, k = np.nonzero(np.diff(truth, axis=0))
    expected = {(int(t) + 1, int(s), "appear" if truth[t + 1, s] else "disappear") for t, s in zip(f, k)}
    assert set(zip(ev["frame"], ev["site"], ev["event"])) == expected and len(ev) == len(expected)


def test_single_noisy_frame_does_not_flicker():
    """A site at 0.9 +- 0.03 that dips to 0.3 in one frame mid-series and to 0.35 in the last
    frame stays present; a site at 0.1 that jumps to 0.7 in one frame stays absent."""
    n = 20
    prob = noisy_probabilities(np.column_stack([np.ones(n), np.zeros(n)]).astype(int), 0.03, seed=2)
    prob[7, 0], prob[-1, 0], prob[12, 1] = 0.3, 0.35, 0.7
    assert n_changes((prob >= 0.5).astype(int)) == 5  # 2 + 2 mid-series, 1 at the end
    np.testing.assert_array_equal(presence_matrix(presence(prob, 0.5), 2), np.column_stack([np.ones(n), np.zeros(n)]))


def test_event_confidence_in_unit_interval_and_lower_when_ambiguous():
    """Same disappearance (0.95 -> 0.05, threshold 0.5) with and without a frame at the threshold
    in between, and a faint one (0.6 -> 0.4): the sharp change is the surest."""
    sharp = np.r_[np.full(10, 0.95), np.full(10, 0.05)]
    blurred = np.r_[np.full(10, 0.95), 0.5, np.full(9, 0.05)]
    faint = np.r_[np.full(10, 0.6), np.full(10, 0.4)]
    prob = np.column_stack([sharp, blurred, faint])
    sites = Sites(np.arange(3.0), np.zeros(3), ["Au"] * 3, np.full(3, 20))
    ev = events(presence(prob, 0.5, 2.0), sites, threshold=0.5, switch_cost=2.0).set_index("site")
    assert list(ev["event"]) == ["disappear"] * 3
    assert ev["confidence"].between(0.0, 1.0).all()
    assert ev.loc[0, "confidence"] > 0.8
    assert ev.loc[1, "confidence"] < ev.loc[0, "confidence"] and ev.loc[2, "confidence"] < ev.loc[0, "confidence"]
    _, disappear = change_posteriors(presence_evidence(prob, 0.5), 2.0)
    np.testing.assert_allclose(disappear.sum(axis=0)[:2], 1.0, atol=0.02)  # one change, somewhere


def test_decoder_matches_enumeration():
    """Viterbi path and forward-backward change posteriors equal brute force over all 2^7 paths of
    the model: log weight = sum_t (s_t - 1/2) e_t - cost * changes, s_t in {0, 1}."""
    rng = np.random.default_rng(11)
    ev = rng.normal(0.0, 2.0, (7, 4))
    cost = 1.3
    paths = np.array(list(itertools.product([0, 1], repeat=7)))  # (128, 7)
    changes = np.abs(np.diff(paths, axis=1))
    best = viterbi_states(ev, cost)
    appear, disappear = change_posteriors(ev, cost)
    for k in range(ev.shape[1]):
        logw = ((paths - 0.5) * ev[:, k]).sum(axis=1) - cost * changes.sum(axis=1)
        np.testing.assert_array_equal(best[:, k], paths[np.argmax(logw)])
        w = np.exp(logw - logw.max())
        w /= w.sum()
        up = (paths[:, :-1] == 0) & (paths[:, 1:] == 1)
        down = (paths[:, :-1] == 1) & (paths[:, 1:] == 0)
        np.testing.assert_allclose(appear[:, k], w @ up, atol=1e-12)
        np.testing.assert_allclose(disappear[:, k], w @ down, atol=1e-12)


def test_switch_cost_grows_with_noise():
    truth = np.ones((40, 30), dtype=np.int64)
    costs = [switch_cost_from_noise(noisy_probabilities(truth, sd, seed=1, on=0.8), 0.5) for sd in (0.02, 0.2, 0.3)]
    assert costs[0] == MIN_SWITCH_COST  # clean maps: the floor
    assert MIN_SWITCH_COST < costs[1] < costs[2]


def test_cli_track_threshold_reaches_decoder(tmp_path):
    """`atomfinder track --threshold`: below every map value all sites are present, above every
    value all absent; the map values themselves do not change; the default is the card's
    peak threshold, or 0.5 when that is out of range (0 for this tiny untrained model)."""
    import torch
    from typer.testing import CliRunner

    from atomfinder.cli import app
    from atomfinder.detection.io import write_tiff_calibrated

    torch.set_num_threads(1)
    save_untrained_model(tmp_path / "tiny", SAMPLING_A, class_names=("Au",))
    cols = lattice() * 0.6  # 36 columns inside 64 x 64 px
    frames = np.stack([100 + 50 * render(cols, (64, 64)) + np.random.default_rng(i).normal(0, 2, (64, 64))
                       for i in range(3)]).astype(np.float32)
    src = write_tiff_calibrated(tmp_path / "series.tif", frames, SAMPLING_A)

    def run(*args: str) -> pd.DataFrame:
        out = tmp_path / ("out" + "_".join(args))
        result = CliRunner().invoke(app, ["track", str(src), "--model", str(tmp_path / "tiny"), "--out", str(out), *args])
        assert result.exit_code == 0, result.output
        return pd.read_csv(out / "presence.csv")

    default = run()
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["tracking"]["threshold"] == 0.5
    low, high = default["probability"].min(), default["probability"].max()
    assert 0.02 < low <= high < 0.98
    below = run("--threshold", f"{0.01 + 0.5 * (low - 0.01):.6f}")
    above = run("--threshold", f"{high + 0.5 * (0.99 - high):.6f}")
    assert (below["present"] == 1).all() and (above["present"] == 0).all()
    np.testing.assert_allclose(above["probability"], default["probability"])


@pytest.mark.parametrize("threshold", [0.0, 0.01, 0.99, 0.995, 1.0])
def test_thresholds_outside_the_trusted_odds_are_refused_in_one_line(series, threshold, tmp_path):
    """At 0.99 or above every site was marked absent, at 0.01 or below every site present (the evidence
    was clipped at 99 : 1): refused before any work, in Python and on the command line."""
    from typer.testing import CliRunner

    from atomfinder.cli import app

    frames, *_ = series
    message = rf"threshold must be above 0.01 and below 0.99, got {threshold:g}: no frame's map value counts"
    with pytest.raises(ValueError, match="^" + message):
        track(frames[:3], _never_detect, SAMPLING_A, tmp_path / "out", threshold=threshold)
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["track", str(tmp_path / "a.tif"), "--model", "no-such-model", "--out",
                                      str(tmp_path / "cli"), "--threshold", str(threshold)])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: --threshold must be above 0.01 and below 0.99, got {threshold:g}")


def test_track_messages_name_the_option_the_input_and_the_unit(tmp_path, monkeypatch):
    """--switch-cost (not switch_cost) on the command line; a pixel size far from the model's is
    refused naming the input before any frame is registered; different pixel sizes say Å/px."""
    from typer.testing import CliRunner

    from atomfinder.analysis.timeseries import tracking
    from atomfinder.cli import app
    from atomfinder.detection.io import write_tiff_calibrated
    from atomfinder.detection.sample import load_sample

    save_untrained_model(tmp_path / "tiny", SAMPLING_A, class_names=("Au",))
    frames = np.stack([100 + 50 * render(lattice() * 0.6, (64, 64)) for _ in range(2)]).astype(np.float32)
    src = write_tiff_calibrated(tmp_path / "series.tif", frames, SAMPLING_A)
    base = ["track", str(src), "--model", str(tmp_path / "tiny")]

    def never(*args, **kwargs):
        raise AssertionError("registered before the pixel size was checked")

    monkeypatch.setattr(tracking, "register_series", never)  # where track() looks it up
    for extra, start in [(["--switch-cost", "inf"], "error: --switch-cost must be a finite number of nats >= 0"),
                         (["--sampling", "5"], f"error: {src}: pixel size 5 Å/px is far too coarse")]:
        result = CliRunner().invoke(app, base + ["--out", str(tmp_path / "out"), *extra])
        assert result.exit_code == 2
        (line,) = result.output.strip().splitlines()[-1:]
        assert line.startswith(start), line
    a = write_tiff_calibrated(tmp_path / "a.tif", frames[0], SAMPLING_A)
    b = write_tiff_calibrated(tmp_path / "b.tif", frames[1], 0.24)
    with pytest.raises(ValueError, match=rf"b.tif: pixel size 0.24 Å/px differs from 0.2 Å/px of {a}; "):
        load_sample([str(a), str(b)], series="time series")


def test_default_presence_threshold_is_the_cards_when_in_range():
    from types import SimpleNamespace

    from atomfinder.analysis.timeseries import default_presence_threshold

    assert default_presence_threshold(SimpleNamespace(detection={"threshold": 0.85})) == 0.85
    assert default_presence_threshold(SimpleNamespace(detection={"threshold": 0.0})) == 0.5
    assert default_presence_threshold(SimpleNamespace(detection={})) == 0.5


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


def test_load_time_series_checks_model_and_frames(tmp_path):
    """The one loader of the command line and of napari: a focal-series model or a single frame is a
    one-line error; a stack gives its frames, the card's threshold and a per-frame detector."""
    from atomfinder.analysis.timeseries import FrameDetection, load_time_series

    rng = np.random.default_rng(0)
    stack = rng.normal(size=(3, 48, 48)).astype(np.float32)
    single = save_untrained_model(tmp_path / "single", 0.2)
    focal = save_untrained_model(tmp_path / "focal", 0.2, in_channels=3)

    with pytest.raises(ValueError, match="3-frame focal series; a time series needs a single-image model"):
        load_time_series(stack, str(focal), 0.2)
    with pytest.raises(ValueError, match="a time series needs at least 2 frames, got 1"):
        load_time_series(stack[0], str(single), 0.2)
    with pytest.raises(ValueError, match="pixel size"):
        load_time_series(stack, str(single), None, sampling_name="pixel size")

    series = load_time_series(stack, str(single), 0.2)
    assert series.frames.shape == (3, 48, 48)
    assert series.threshold == 0.5  # the tiny model's card says 0, outside (0.01, 0.99): 0.5
    assert load_time_series(stack, str(single), 0.2, threshold=0.3).threshold == 0.3
    frame = series.detect_frame(series.frames[0])
    assert isinstance(frame, FrameDetection) and frame.atom_map.ndim == 2
    assert set(frame.table.columns) >= {"x", "y", "label"}


def test_time_series_augment_overrides_the_card_for_every_frame(tmp_path):
    """``augment=True`` (``track --augment``) averages each frame's maps over the eight views
    although the tiny model's card does not ask for it; ``None`` keeps the card's plain maps."""
    from atomfinder.analysis.timeseries import load_time_series
    from atomfinder.detection.pipeline import detect_array

    stack = np.random.default_rng(1).normal(size=(2, 48, 48)).astype(np.float32)
    single = save_untrained_model(tmp_path / "single", 0.2)
    plain = load_time_series(stack, str(single), 0.2)
    augmented = load_time_series(stack, str(single), 0.2, augment=True)
    assert plain.augment is None and augmented.augment is True
    expected = detect_array(augmented.net, augmented.card, stack[0], 0.2, augment=True)
    np.testing.assert_allclose(augmented.detect_frame(stack[0]).atom_map, 1.0 - expected.probabilities[0])
    assert not np.allclose(augmented.detect_frame(stack[0]).atom_map, plain.detect_frame(stack[0]).atom_map)
