"""Trust in the shipped graphene model (issue 12), on small fresh simulations and the real example.

- nothing where there is nothing: fields of vacuum and of amorphous carbon alone;
- error bars: the share of true coordinate errors within the 1-sigma bar;
- confidence: higher for real atoms than for false ones, and lower in the
  contaminated corner of the real example than on its clean lattice.

The simulations use the recipes of the report's test sets (``configs/test-*.toml``)
with seeds of their own, 8 to 32 images each. The default set runs the ranking of the
error bars on 8 images (16 in the slow set) and the real example; the empty fields, the 1-sigma coverage
and the confidence of real and false atoms (their 32-image set takes ~30 s) are
``@pytest.mark.slow``: with fewer images the share of true atoms among the few
low-confidence ones swung between 0.38 and 0.8 (8-16 images), too noisy to test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "graphene_defect_hrtem.tif"


@pytest.fixture(scope="module")
def graphene():
    from atomfinder.nn.card import load_model, resolve_model

    return load_model(resolve_model("graphene"))


def _store(tmp_path_factory, name: str, config: str | None, n: int, seed: int):
    pytest.importorskip("abtem")
    from atomfinder.datasets.generate import load_config, simulate_to_store
    from atomfinder.datasets.store import DatasetStore

    cfg = load_config(None if config is None else ROOT / "configs" / config, "graphene")
    path = tmp_path_factory.mktemp("trust") / f"{name}.zarr"
    return DatasetStore(simulate_to_store(cfg, n, path, seed=seed, workers=0))


def _compare(graphene, store):
    from atomfinder.analysis.evaluate import compare, network_detector, samples_from_store

    net, card = graphene
    return compare(samples_from_store(store), {"network": network_detector(net, card)},
                   class_names=card.class_names, border_A=0.5)


@pytest.mark.slow  # ~12 s each, for an expected failure
@pytest.mark.xfail(strict=True, reason="target not met by graphene 0.3: 32 false atoms per 10 nm² on vacuum, "
                   "127 on amorphous carbon (64-image test sets, reports/graphene/trust)")
@pytest.mark.parametrize("kind, config, seed", [("vacuum", "test-vacuum.toml", 4101),
                                                ("carbon", "test-carbon.toml", 4102)])
def test_no_atoms_on_empty_fields(graphene, tmp_path_factory, kind, config, seed):
    store = _store(tmp_path_factory, kind, config, 8, seed)
    overall = _compare(graphene, store)["detectors"]["network"]["overall"]["0.5"]
    assert overall["tp"] == 0 and overall["fn"] == 0  # no sites: every detection is false
    assert overall["fp_per_10nm2"] <= 1.0, overall  # the target


@pytest.fixture(scope="module")
def lattice_result(graphene, tmp_path_factory):
    return _compare(graphene, _store(tmp_path_factory, "lattice", "test-dose-1e4.toml", 32, 4103))


@pytest.mark.slow  # the 32-image lattice_result (~30 s)
@pytest.mark.xfail(strict=True, reason="graphene 0.3: 57 % within 1 sigma on these 32 images (64-65 % on the "
                   "128-image test sets): whole images with a shifted lattice bring errors the bar does not foresee")
def test_error_bars_cover_the_true_errors(lattice_result):
    trust = lattice_result["detectors"]["network"]["trust"]
    within = trust["sigma"]["within_1_sigma"]
    assert 0.60 <= within <= 0.76, trust["sigma"]  # the target band around 68.3 %
    assert trust["sigma"]["within_2_sigma"] > within


@pytest.mark.slow  # the 32-image lattice_result (~30 s)
def test_confidence_separates_real_from_false_detections(lattice_result):
    trust = lattice_result["detectors"]["network"]["trust"]
    bins = trust["reliability"]
    assert sum(b["n"] for b in bins) > 100
    low = [b for b in bins if b["hi"] <= 0.5]
    high = [b for b in bins if b["lo"] >= 0.9]
    assert high and sum(b["n"] * b["fraction_true"] for b in high) / sum(b["n"] for b in high) > 0.95
    if low:  # false detections, when there are any, gather at low confidence
        assert sum(b["n"] * b["fraction_true"] for b in low) / sum(b["n"] for b in low) < 0.6


@pytest.mark.parametrize("n_images", [8, pytest.param(16, marks=pytest.mark.slow)])
def test_error_bars_rank_the_true_errors(graphene, tmp_path_factory, n_images):
    """On 8 images (~1700 true atoms; the default set) and 16 (slow): same seed, same bounds."""
    from atomfinder.analysis.calibration import calibration_data
    from atomfinder.analysis.evaluate import samples_from_store
    from atomfinder.detection.confidence import Calibration

    net, card = graphene
    store = _store(tmp_path_factory, "ranking", "test-dose-1e4.toml", n_images, 4104)
    data = calibration_data(net, card, samples_from_store(store))
    t = data["is_true"]
    sigma = Calibration.from_dict(card.calibration).sigma_A(data["features"][t])
    err = np.abs(data["err_A"][t])
    large = sigma > np.median(sigma)
    assert t.sum() > 500
    # atoms with the larger half of the bars have the larger errors, by a clear factor
    assert np.sqrt(np.mean(err[large] ** 2)) > 1.5 * np.sqrt(np.mean(err[~large] ** 2))
    # and the bar is of the size of the error: the median |error| / sigma near a Gaussian's 0.674
    assert 0.4 < np.median(err / sigma[:, None]) < 1.2


@pytest.mark.xfail(strict=True, reason="graphene 0.3: corner median confidence 0.993, clean lattice 1.000 "
                   "(reports/graphene/real-example.md): not clearly lower")
def test_real_example_corner_is_less_confident_than_the_clean_lattice():
    import tifffile

    import atomfinder

    image = tifffile.imread(EXAMPLE).astype(np.float32)
    table, _ = atomfinder.detect(image, model="graphene", sampling=0.108)
    x, y, c = table["x"].to_numpy(), table["y"].to_numpy(), table["confidence"].to_numpy()
    corner = (x < 100) & (y < 130)  # amorphous carbon over the lattice
    clean = (x >= 250) & (x < 410) & (y >= 300) & (y < 460)
    assert corner.sum() >= 10 and clean.sum() >= 60
    assert np.all(np.isfinite(c)) and np.all((c >= 0) & (c <= 1))
    assert np.median(c[corner]) < np.median(c[clean]) - 0.1
    assert np.percentile(c[clean], 10) > 0.9
