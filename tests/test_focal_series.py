"""Focal series (issue 14, code parts): the MoS2 recipe, the shared registration module,
the focal-series contract of the card and of ``detect``, and the MoS2/gold evaluation
tables (confusion with missed/extra, per-class precision and recall, heights by column
thickness). Tiny and seeded: no multislice, a depth-2 width-4 network on 64-px images."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from atomfinder.analysis.evaluate import EvalSample, compare
from atomfinder.analysis.report import report_markdown
from atomfinder.analysis.metrics import HEIGHT_BINS, aggregate, detection_scores
from atomfinder.cli import app
from atomfinder.detection import registration
from atomfinder.detection.io import MicrographError
from atomfinder.detection.peaks import AtomTable
from atomfinder.detection.micrograph import detect
from atomfinder.detection.sample import Sample, check_focal_step_argument, check_frames
from atomfinder.detection.validity import ValidityWarning, check_focal_step
from atomfinder.nn.validity import focal_order, validity_range, validity_summary
from conftest import save_untrained_model

torch.set_num_threads(1)

SAMPLING = 0.2  # Å/px of the tiny models
MOS2_CLASSES = ("Mo", "S", "S1", "Mo_vacancy", "S_vacancy")
TRAINED = {"frames": 3, "focal_step_A": [40.0, 120.0], "focal_order": "increasing underfocus"}


# --------------------------------------------------------------------------- helpers


def _lattice(shape=(64, 64), spacing_px=7.3, seed=0, offset=(0.0, 0.0), blob=30.0) -> np.ndarray:
    """Gaussian 'atoms' on a slightly oblique lattice plus a blob (non-periodic content),
    everything moved by ``offset`` = (dx, dy) pixels, and a little noise."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    img = blob * np.exp(-((yy - 30.0 - offset[1]) ** 2 + (xx - 22.0 - offset[0]) ** 2) / 60.0)
    for j in range(-1, int(shape[0] / spacing_px) + 2):
        for i in range(-1, int(shape[1] / spacing_px) + 2):
            y, x = 3 + j * spacing_px + offset[1], 3 + i * spacing_px + 0.3 * j + offset[0]
            img += 10 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))
    return (100 + img + np.random.default_rng(seed).normal(0, 0.05, shape)).astype(np.float32)


def _save_model(path: Path, in_channels: int, validity: dict | None = None) -> Path:
    return save_untrained_model(path, SAMPLING, in_channels=in_channels, focal_step_A=80.0, name=path.name,
                                validity=validity)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"single": _save_model(root / "single", 1), "focal": _save_model(root / "focal", 3, TRAINED)}


# --------------------------------------------------------------------------- 1. the MoS2 recipe


def test_mos2_recipe_covers_the_issue_14_range():
    pytest.importorskip("ase")
    from atomfinder.datasets.generate import default_config, focal_series_microscopes

    cfg = default_config("mos2")
    m = cfg.microscope
    assert cfg.frames == 3 and cfg.focal_step_A == (40.0, 120.0)
    assert cfg.class_names == MOS2_CLASSES and cfg.p_amorphous_carbon > 0
    assert m.p_corrected == 1.0 and m.Cs_corrected_A == (-35e4, 35e4)
    assert m.corrected_defocus_A == (-150.0, 100.0) and m.dose_e_per_A2 == (1e3, 1e5)
    assert min(m.energies_eV) == 60e3 and max(m.energies_eV) == 300e3
    # drift: a random walk whose last frame lies within ~0.5 Å of the first in 95 % of the series
    sigma_last_A = cfg.drift_px * m.sampling_A * math.sqrt(cfg.frames - 1)
    assert 0.4 <= sigma_last_A * math.sqrt(-2 * math.log(0.05)) <= 0.55
    rng = np.random.default_rng(0)
    for _ in range(200):
        base = m.sample(rng)
        assert -150.0 <= base.defocus_A <= 100.0 and abs(base.Cs_A) <= 35e4
        assert 1e3 <= base.dose_e_per_A2 <= 1e5
        frames = focal_series_microscopes(base, 3, 80.0)
        assert [f.defocus_A - base.defocus_A for f in frames] == [0.0, 80.0, 160.0]  # increasing underfocus


def test_mos2_vacancies_are_labelled_at_their_lattice_site():
    pytest.importorskip("ase")
    from atomfinder.structures.mos2 import MoS2Config, build_mos2

    cfg = MoS2Config(p_clean=0.0, mo_vacancy_fraction=(0.1, 0.1), s_single_vacancy_fraction=(0.1, 0.1),
                     s_double_vacancy_fraction=(0.1, 0.1))
    s = build_mos2(np.random.default_rng(3), (30.0, 30.0), cfg)
    xy = s.atoms.positions[:, :2]
    symbols = np.array(s.atoms.get_chemical_symbols())
    expected = {1: ("Mo", 1), 2: ("S", 2), 3: ("S", 1), 4: ("Mo", 0), 5: ("S", 0)}
    mo_columns = s.sites.positions_A[s.sites.labels == 1]
    for label, (element, count) in expected.items():
        sites = s.sites.positions_A[s.sites.labels == label]
        assert len(sites), f"no sites of class {MOS2_CLASSES[label - 1]}"
        for p in sites:
            near = np.hypot(*(xy - p).T) < 0.1
            assert np.sum(near & (symbols == element)) == count
        if label == 4:  # a missing Mo sits on the Mo lattice: a lattice constant from other Mo
            d = np.hypot(*(mo_columns[:, None] - sites[None]).transpose(2, 0, 1)).min(axis=0)
            np.testing.assert_allclose(d, cfg.lattice_constant_A, rtol=0.05)


# --------------------------------------------------------------------------- 2. one registration module


def test_both_series_use_the_one_registration_module():
    from atomfinder.analysis import timeseries
    from atomfinder.detection import micrograph

    assert timeseries.register_frames is registration.register_frames
    assert timeseries.pair_shift is registration.pair_shift
    assert micrograph.register_focal_series is registration.register_focal_series
    tree = ast.parse(Path(registration.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.split(".")[:2] in (["atomfinder", "analysis"], ["atomfinder", "imaging"],
                                                              ["atomfinder", "structures"], ["atomfinder", "datasets"])}


def test_registration_of_a_drifted_focal_series():
    """Three frames of one field, drifted, the third in inverted contrast (another defocus):
    the focal-series registration undoes the drift; the time-series one measures the same
    drift with the opposite sign and (x, y) order. (The focal-series phase correlation is
    0.1-0.3 px off on this field, the time-series registration exact to 0.1 px.)"""
    drift = np.array([[0.0, 0.0], [1.4, -2.2], [-2.6, 0.9]])  # (dx, dy) per frame
    frames = np.stack([_lattice((96, 96), seed=i, offset=tuple(d)) for i, d in enumerate(drift)])
    frames[2] = 2 * frames[2].mean() - frames[2]
    aligned, shifts = registration.register_focal_series(frames)
    np.testing.assert_allclose(shifts[:, ::-1], -drift, atol=0.35)  # (dy, dx) applied = minus the drift
    inner = (slice(8, -8), slice(8, -8))
    assert np.corrcoef(aligned[1][inner].ravel(), frames[0][inner].ravel())[0, 1] > 0.95
    found = registration.register_frames(frames[:2])
    np.testing.assert_allclose(found, drift[:2], atol=0.1)


# --------------------------------------------------------------------------- 3. the focal-series contract


def test_card_states_frames_order_and_step_range():
    sim = {"system": "mos2", "frames": 3, "focal_step_A": [40.0, 120.0],
           "microscope": {"energies_eV": [60e3, 300e3], "p_corrected": 1.0, "Cs_corrected_A": [-35e4, 35e4],
                          "Cs_uncorrected_A": [5e6, 1.2e7], "defocus_around_scherzer_A": [-250.0, 250.0],
                          "corrected_defocus_A": [-150.0, 100.0], "dose_e_per_A2": [1e3, 1e5]}}
    v = validity_range(sim)
    assert v["frames"] == 3 and v["focal_step_A"] == [40.0, 120.0] and v["focal_order"] == "increasing underfocus"
    assert "3 frames in increasing underfocus, step 40…120 Å" in validity_summary(v)
    assert validity_range(sim | {"frames": 1})["focal_order"] is None
    assert focal_order((-100.0, -50.0)) == "increasing overfocus" and focal_order((-10.0, 10.0)) == "mixed"


@pytest.mark.parametrize("step, passed, words", [
    (80.0, True, []), (40.0, True, []), (150.0, False, ["150 Å", "40–120 Å"]),
    (-80.0, False, ["wrong sign", "increasing underfocus", "reverse"]), (None, None, []),
])
def test_focal_step_check(step, passed, words):
    c = check_focal_step(step, TRAINED)
    assert c.name == "focal_step" and c.passed is passed and (c.low, c.high) == (40.0, 120.0)
    assert "\n" not in c.reason and all(w in c.reason for w in words)
    assert check_focal_step(80.0, {}).passed is None  # a single-image card has no range


def test_focal_step_argument_needs_a_focal_series():
    assert check_focal_step_argument(None, False) is None and check_focal_step_argument("80", True) == 80.0
    with pytest.raises(ValueError, match="needs focal_series"):
        check_focal_step_argument(80.0, False)
    with pytest.raises(ValueError, match="--focal-step must be a number"):
        check_focal_step_argument(math.nan, True, ("--focal-step", "--focal-series"))


@pytest.mark.parametrize("in_channels, frames, words", [
    (1, 1, ["takes single images", "leave out --focal-series"]),
    (1, 3, ["takes single images"]),
    (3, 1, ["single frame", "3 frames"]),
    (3, 2, ["2 frame", "3 frames"]),
])
def test_focal_series_refusals_are_one_line(in_channels, frames, words):
    card = SimpleNamespace(in_channels=in_channels, name="m")
    data = np.ones((frames, 32, 32), np.float32) if frames > 1 else np.ones((32, 32), np.float32)
    with pytest.raises(MicrographError) as err:
        check_frames(Sample(data=data, sampling_A=0.2, source="s.tif", stem="s"), card, True)
    assert "\n" not in str(err.value) and str(err.value).startswith("s.tif: ")
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.filterwarnings("ignore::atomfinder.detection.validity.ValidityWarning")  # the untrained model's others
def test_detect_warns_for_a_step_outside_the_trained_range(models):
    series = np.stack([_lattice(seed=i) for i in range(3)])
    with pytest.warns(ValidityWarning, match="focal step 200 Å"):
        table, info = detect(series, models["focal"], sampling=SAMPLING, focal_series=True, focal_step_A=200.0,
                             precision="float32")
    assert info["provenance"]["focal_step_A"] == 200.0
    checks = info["validity"]["images"][0]["checks"]
    assert checks["focal_step"]["passed"] is False and checks["focal_step"]["high"] == 120.0
    assert sum("focal step" in w for w in info["validity"]["warnings"]) == 1
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, ok = detect(series, models["focal"], sampling=SAMPLING, focal_series=True, focal_step_A=80.0,
                       precision="float32")
    assert ok["validity"]["images"][0]["checks"]["focal_step"]["passed"] is True
    assert not any("focal step" in str(w.message) for w in caught)


def test_cli_focal_series_errors_are_one_line(models, tmp_path):
    one = tmp_path / "one.npy"
    np.save(one, _lattice())
    runner = CliRunner()
    cases = [
        (["detect", str(one), "--model", str(models["single"]), "--sampling", "0.2", "--focal-series"],
         "takes single images"),
        (["detect", str(one), "--model", str(models["focal"]), "--sampling", "0.2", "--focal-series"],
         "single frame"),
        (["detect", str(one), "--model", str(models["single"]), "--sampling", "0.2", "--focal-step", "80"],
         "--focal-step is the defocus step of a focal series: it needs --focal-series"),
    ]
    for args, words in cases:
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
        text = result.output.strip()
        assert result.exit_code == 2 and len(text.splitlines()) == 1 and words in text, text
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 4. evaluation


def test_confusion_with_missed_extra_and_per_class_rates():
    true_xy = np.array([[0.0, 0.0], [5.0, 0.0], [10.0, 0.0], [15.0, 0.0], [20.0, 0.0]])
    true_lab = np.array([1, 2, 3, 4, 5])
    pred_xy = np.array([[0.1, 0.0], [5.1, 0.0], [10.1, 0.0], [30.0, 0.0]])  # sites 4, 5 missed; one extra
    pred_lab = np.array([1, 3, 3, 2])  # site 2 (S) called S1
    s = detection_scores(pred_xy, true_xy, 0.5, pred_lab, true_lab, n_classes=5)
    assert s["missed"].tolist() == [0, 0, 0, 1, 1] and s["extra"].tolist() == [0, 1, 0, 0, 0]
    pc = s["per_class"]
    assert pc[0] == {"n_true": 1, "n_pred": 1, "tp": 1, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert (pc[1]["n_true"], pc[1]["n_pred"], pc[1]["tp"], pc[1]["precision"], pc[1]["recall"]) == (1, 1, 0, 0.0, 0.0)
    assert (pc[2]["n_pred"], pc[2]["tp"], pc[2]["precision"], pc[2]["recall"]) == (2, 1, 0.5, 1.0)
    # nothing predicted: no precision (not a perfect one); something missed: F1 0
    assert pc[3]["recall"] == 0.0 and math.isnan(pc[3]["precision"]) and pc[3]["f1"] == 0.0
    agg = aggregate([s, s])
    assert agg["missed"].tolist() == [0, 0, 0, 2, 2] and agg["per_class"][2]["n_pred"] == 4


def test_heights_by_column_thickness():
    true_h = np.array([2, 5, 7, 12, 30, 25])
    pred_h = np.array([2, 6, 9, 12, 29, -1])  # the last height unknown: not scored
    xy = np.column_stack([np.arange(6) * 5.0, np.zeros(6)])
    s = detection_scores(xy, xy, 0.5, pred_heights=pred_h, true_heights=true_h)
    # rows: pairs, exact, within ±1 for 1-5, 6-10, 11-20, 21+
    assert s["height_by_thickness"].tolist() == [[2, 1, 2], [1, 0, 0], [1, 1, 1], [1, 0, 1]]
    assert [b[0] for b in HEIGHT_BINS] == ["1–5", "6–10", "11–20", "21+"]


def _eval_sample(labels, heights=None) -> EvalSample:
    xy = np.array([(x, y) for x in (2.0, 4.0, 6.0) for y in (2.0, 4.0)])[: len(labels)]
    return EvalSample(image=np.zeros((80, 80), np.float32), sampling_A=0.1, positions_A=xy, labels=labels,
                      heights=heights, dose_e_per_A2=1e4, defocus_A=0.0)


def test_report_has_confusion_with_missed_extra_per_class_and_thickness():
    samples = [_eval_sample(np.array([1, 2, 3, 4, 5, 2]), np.array([1, 2, 1, 3, 12, 2]))]

    def detector(s: EvalSample) -> AtomTable:  # finds all but the last site, one S called S1, one extra
        xy = np.vstack([s.positions_A[:5], [[5.0, 6.0]]]) / s.sampling_A
        return AtomTable(x=xy[:, 0], y=xy[:, 1], label=np.array([1, 3, 3, 4, 5, 2]), probability=np.ones(6),
                         height=np.array([1, 2, 1, 4, 12, 2]))

    report = compare(samples, {"network": detector}, class_names=MOS2_CLASSES, radii_A=(0.5,))
    m = report["detectors"]["network"]["overall"]["0.5"]
    assert m["missed"] == [0, 1, 0, 0, 0] and m["extra"] == [0, 1, 0, 0, 0]
    assert [c["recall"] for c in m["per_class"]] == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert m["height_by_thickness"][0] == {"bin": "1–5", "n_height": 4, "height_exact": 0.75, "height_within1": 1.0}
    assert m["height_by_thickness"][1]["bin"] == "11–20"
    text = report_markdown(report, "t")
    assert "| true \\ predicted | Mo | S | S1 | Mo_vacancy | S_vacancy | missed |" in text
    assert "| extra | 0 | 1 | 0 | 0 | 0 | – |" in text
    assert "## Per class (radius 0.5 Å)" in text and "| network | S1 | 1 | 2 | 1 | 0.500 | 1.000 |" in text
    assert "By column thickness" in text and "| network | 11–20 | 1 | 1.000 | 1.000 |" in text


def test_models_trained_on_drift_take_the_frames_as_they_are():
    """A focal-series model whose recipe drifted its frames is given them unregistered (registration
    across defoci of a lattice was measured to miss the drift by more than the drift itself); a
    model trained on aligned frames gets them registered."""
    from types import SimpleNamespace

    from atomfinder.detection.micrograph import trained_on_drift
    from atomfinder.nn.card import load_card, resolve_model

    assert trained_on_drift(load_card(resolve_model("mos2-focal")))
    aligned = SimpleNamespace(training={"data": {"simulation": {"drift_px": 0.0}}})
    assert not trained_on_drift(aligned)
    assert not trained_on_drift(SimpleNamespace(training={}))
