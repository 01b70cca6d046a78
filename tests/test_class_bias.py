"""Class priors of multi-class models: fitted on held-out images, applied when labelling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atomfinder.analysis.calibration import class_bias_summary, fit_class_bias
from atomfinder.detection.peaks import biased_labels, find_atoms


def _weighted_posteriors(rng, n: int, weights: np.ndarray):
    """True posteriors over 3 classes, the labels drawn from them, and what a network trained with
    per-class loss weights ``weights`` outputs: the posteriors reweighted and renormalised."""
    logits = rng.normal(size=(n, 3)) * 2.0 + np.log([0.7, 0.25, 0.05])
    post = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in post]) + 1
    skewed = post * weights
    return post, labels, skewed / skewed.sum(axis=1, keepdims=True)


def test_fit_class_bias_undoes_class_weighting():
    rng = np.random.default_rng(0)
    weights = np.array([1.0, 3.0, 14.0])
    post, labels, skewed = _weighted_posteriors(rng, 20000, weights)
    bias = fit_class_bias(skewed, labels)
    assert bias[0] == 0.0
    np.testing.assert_allclose(bias, -np.log(weights / weights[0]), atol=0.15)
    # the shifted labelling is as good as the true posteriors' argmax, and better than the skewed one
    acc = lambda pred: float(np.mean(pred == labels))  # noqa: E731
    assert acc(biased_labels(skewed.T, bias)) > acc(biased_labels(skewed.T)) + 0.01
    assert acc(biased_labels(skewed.T, bias)) == pytest.approx(acc(biased_labels(post.T)), abs=0.005)


def test_fit_class_bias_edge_cases():
    assert fit_class_bias(np.zeros((0, 3)), np.zeros(0, int)).tolist() == [0.0, 0.0, 0.0]
    assert fit_class_bias(np.ones((5, 1)), np.ones(5, int)).tolist() == [0.0]
    # a class that never occurs keeps a finite bias
    p = np.tile([0.5, 0.3, 0.2], (100, 1))
    assert np.all(np.isfinite(fit_class_bias(p, np.ones(100, int))))
    with pytest.raises(ValueError, match="true labels"):
        fit_class_bias(p, np.full(100, 4))


def test_biased_labels_and_find_atoms():
    q = np.array([[0.6, 0.2], [0.4, 0.8]])  # 2 classes x 2 detections
    assert biased_labels(q).tolist() == [1, 2]
    assert biased_labels(q, [0.0, 1.0]).tolist() == [2, 2]
    assert biased_labels(q, [0.0, -2.0]).tolist() == [1, 1]
    with pytest.raises(ValueError, match="3 values for 2 classes"):
        biased_labels(q, [0.0, 0.0, 0.0])
    # one peak, class 2 slightly less likely than class 1: the bias flips it
    p = np.zeros((3, 21, 21), np.float32)
    p[0] = 1.0
    yy, xx = np.mgrid[:21, :21]
    blob = np.exp(-((yy - 10) ** 2 + (xx - 10) ** 2) / 4.0).astype(np.float32)
    p[1], p[2] = 0.55 * blob, 0.45 * blob
    p[0] -= blob
    assert find_atoms(p, min_distance_px=3, threshold=0.5).label.tolist() == [1]
    assert find_atoms(p, min_distance_px=3, threshold=0.5, class_log_bias=[0.0, 0.5]).label.tolist() == [2]


def test_class_bias_summary_counts_before_and_after():
    data = {"probabilities": np.array([[0.6, 0.4], [0.4, 0.6], [0.55, 0.45]]), "true_label": np.array([1, 2, 2])}
    s = class_bias_summary(data, np.array([0.0, 0.3]))
    assert s["n_matched"] == 3
    assert s["label_accuracy_argmax"] == pytest.approx(2 / 3) and s["label_accuracy_biased"] == 1.0
    assert s["recall_biased"] == [1.0, 1.0] and s["class_log_bias"] == [0.0, 0.3]


def test_card_validates_the_class_bias(tmp_path):
    from atomfinder.nn.card import ModelCard, load_card, save_model
    from atomfinder.nn.unet import UNetConfig, build_model

    cfg = UNetConfig(in_channels=1, n_classes=3, depth=1, width=4)
    base = dict(name="t", version="0", architecture=cfg.to_dict(), in_channels=1, class_names=("A", "B"),
                sampling_A=0.1, normalization={"kind": "global"})
    with pytest.raises(ValueError, match="class_log_bias' has 3 values for 2 classes"):
        ModelCard(**base, detection={"class_log_bias": [0.0, 1.0, 2.0]})
    card = ModelCard(**base, detection={"class_log_bias": [0.0, -1.5]})
    save_model(build_model(cfg), card, tmp_path / "m")
    assert load_card(tmp_path / "m").detection["class_log_bias"] == [0.0, -1.5]
    text = json.loads((tmp_path / "m.json").read_text())
    text["detection"]["class_log_bias"] = "strong"
    (tmp_path / "m.json").write_text(json.dumps(text))
    with pytest.raises(Exception, match="class_log_bias"):
        load_card(tmp_path / "m")


def test_calibrate_fits_and_stores_class_priors(tmp_path):
    """`atomfinder calibrate` on a tiny MoS2 store with an untrained 6-class focal-series model: the card
    gets one log-prior per class, and detection then labels with it."""
    import torch
    from typer.testing import CliRunner

    from atomfinder.cli import app
    from conftest import tiny_config

    from atomfinder.datasets.generate import simulate_to_store
    from atomfinder.datasets.store import DatasetStore
    from atomfinder.nn.card import ModelCard, load_card, save_model
    from atomfinder.nn.unet import UNetConfig, build_model

    pytest.importorskip("abtem")
    store = simulate_to_store(tiny_config("mos2", image_px=64, box_px=(96,)), 4, tmp_path / "calib.zarr", seed=5,
                              workers=0)
    names = tuple(DatasetStore(store).class_names)
    cfg = UNetConfig(in_channels=3, n_classes=len(names) + 1, depth=2, width=4)
    torch.manual_seed(0)
    card = ModelCard(name="tinymos2", version="0", architecture=cfg.to_dict(), in_channels=3, class_names=names,
                     sampling_A=0.12, normalization={"kind": "local", "window_A": 6.0},
                     defocus_offsets_A=(0.0, 80.0, 160.0), detection={"threshold": 0.0, "min_distance_A": 1.0})
    save_model(build_model(cfg).eval(), card, tmp_path / "m")
    result = CliRunner().invoke(app, ["calibrate", "--model", str(tmp_path / "m"), "--data", str(store),
                                      "--write-card"])
    assert result.exit_code == 0, result.output
    assert "class log-priors" in result.output
    written = load_card(tmp_path / "m")
    bias = written.detection["class_log_bias"]
    assert len(bias) == len(names) and bias[0] == 0.0 and all(np.isfinite(bias))
    assert written.calibration["fit"]["class_priors"]["n_matched"] > 0


def test_provenance_records_the_class_priors_used(tmp_path):
    from atomfinder.detection.micrograph import detect
    from atomfinder.nn.card import ModelCard, save_model
    from atomfinder.nn.unet import UNetConfig, build_model

    import torch

    cfg = UNetConfig(in_channels=1, n_classes=3, depth=1, width=4)
    torch.manual_seed(0)
    card = ModelCard(name="two", version="0", architecture=cfg.to_dict(), in_channels=1, class_names=("A", "B"),
                     sampling_A=0.1, normalization={"kind": "global"},
                     detection={"threshold": 0.0, "min_distance_A": 1.0, "class_log_bias": [0.0, -40.0]})
    save_model(build_model(cfg).eval(), card, tmp_path / "m")
    image = np.random.default_rng(0).normal(100, 5, (64, 64)).astype(np.float32)
    table, info = detect(image, str(tmp_path / "m"), sampling=0.1)
    assert info["provenance"]["class_log_bias"] == [0.0, -40.0]
    assert len(table) and set(table["label"]) == {"A"}  # class B is 40 nats down: never chosen


def test_s1_prior_check_shifts_one_class_and_turns_close_calls():
    """benchmarks/check_s1_prior.py: the shifted card differs from the shipped one only in S1's
    log-prior, and that shift turns exactly the S detections within it of S1 into S1."""
    import importlib.util
    from pathlib import Path

    from atomfinder.nn.card import load_card, resolve_model

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "check_s1_prior.py"
    spec = importlib.util.spec_from_file_location("check_s1_prior", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    card = load_card(resolve_model("mos2-focal"))
    names = list(card.class_names)
    shifted = bench.shifted_card(card, "S1", 0.8)
    before, after = np.array(card.detection["class_log_bias"]), np.array(shifted.detection["class_log_bias"])
    assert after[names.index("S1")] == pytest.approx(before[names.index("S1")] + 0.8)
    assert np.delete(after, names.index("S1")).tolist() == np.delete(before, names.index("S1")).tolist()
    assert {k: v for k, v in shifted.detection.items() if k != "class_log_bias"} == \
        {k: v for k, v in card.detection.items() if k != "class_log_bias"}
    # Three S-sublattice detections: S1 behind S (after the priors) by 0.3, by 1.3, and ahead.
    i_s, i_s1 = names.index("S"), names.index("S1")
    q = np.full((len(names), 3), 1e-6)
    for j, margin in enumerate((-0.3, -1.3, 0.5)):
        q[i_s, j] = 0.5
        q[i_s1, j] = 0.5 * np.exp(margin + before[i_s] - before[i_s1])
    assert biased_labels(q, before).tolist() == [i_s + 1, i_s + 1, i_s1 + 1]
    assert biased_labels(q, after).tolist() == [i_s1 + 1, i_s + 1, i_s1 + 1]
    overall = {"label_accuracy": 0.98, "f1": 0.99, "per_class": [
        {"n_true": 10 * (k + 1), "precision": 0.1 * k, "recall": 0.05 * k} for k in range(len(names))]}
    got = bench.class_figures(overall, names)
    assert got["s1_recall"] == pytest.approx(0.05 * i_s1) and got["s1_precision"] == pytest.approx(0.1 * i_s1)
    assert got["s_recall"] == pytest.approx(0.05 * i_s) and got["n_s1"] == 10 * (i_s1 + 1)
