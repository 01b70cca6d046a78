"""`atomfinder.detect` on inputs a Jupyter user hands it (found by an audit of the Python API):

- NaN or inf regions (a masked area, a detector gap) hold no data: atoms there are dropped, with a note;
- a float64 image on a large constant offset keeps its grey levels (float32 alone would not);
- pictures as image libraries load them ([H, W, 1], grey stored as RGB) are read as grey; colour is refused;
- what cannot become a NumPy array, or a device torch cannot use, is a one-line ValueError;
- Python messages name Python keywords, not command-line options;
- subpackages are reachable as attributes after ``import atomfinder``;
- an empty table has the same column types as a full one.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import lattice_image, save_untrained_model

import atomfinder
from atomfinder.detection.io import MicrographError
from atomfinder.detection.micrograph import InputNote, detect

pytestmark = pytest.mark.filterwarnings("ignore::atomfinder.detection.validity.ValidityWarning")  # untrained model

SAMPLING = 0.2  # Å/px of the tiny model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.set_num_threads(1)
    return save_untrained_model(tmp_path_factory.mktemp("models") / "tiny", SAMPLING)


@pytest.fixture(scope="module")
def image():
    return lattice_image((96, 96), seed=3)


def _xy(table) -> np.ndarray:
    return table[["x", "y"]].to_numpy()


def test_atoms_in_a_region_without_data_are_dropped_with_a_note(tiny_model, image):
    full, _ = detect(image, tiny_model, SAMPLING)
    masked = image.copy()
    masked[:, :40] = np.nan
    with pytest.warns(InputNote, match=r"<array>: \d+ atoms? in regions without data .* dropped"):
        table, info = detect(masked, tiny_model, SAMPLING)
    far = 40 - 0.5 / SAMPLING  # more than 0.5 Å inside the NaN band
    assert (full["x"] < far).sum() > 0 and (table["x"] < far).sum() == 0
    assert any("regions without data" in n for n in info["provenance"]["notes"])
    assert table.attrs["provenance"]["notes"] == info["provenance"]["notes"]


def test_isolated_bad_pixels_drop_nothing(tiny_model, image):
    full, _ = detect(image, tiny_model, SAMPLING)
    spotted = image.copy()
    spotted[20, 20], spotted[50, 61] = np.nan, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputNote)
        table, info = detect(spotted, tiny_model, SAMPLING)
    assert len(table) == len(full) and info["provenance"]["notes"] == []


def test_a_large_constant_offset_keeps_the_grey_levels(tiny_model, image):
    full, _ = detect(image, tiny_model, SAMPLING)
    shifted, _ = detect(image.astype(np.float64) + 1e6, tiny_model, SAMPLING)
    assert len(shifted) == len(full)
    np.testing.assert_allclose(_xy(shifted), _xy(full), atol=0.05)


def test_an_infinite_pixel_does_not_undo_the_offset_removal(tiny_model, image):
    from atomfinder.detection.preprocess import clean_image

    shifted = image.astype(np.float64) + 1e8
    shifted[5, 5] = np.inf
    cleaned = clean_image(shifted)
    keep = np.ones(image.shape, bool)
    keep[5, 5] = False
    assert np.corrcoef(cleaned[keep], image[keep])[0, 1] > 0.999


def test_pictures_as_image_libraries_load_them(tiny_model, image):
    full, _ = detect(image, tiny_model, SAMPLING)
    one, _ = detect(image[..., None], tiny_model, SAMPLING)
    np.testing.assert_array_equal(_xy(one), _xy(full))
    with pytest.warns(InputNote, match="grey image stored as RGBA"):
        grey, _ = detect(np.dstack([image] * 3 + [np.full_like(image, 255)]), tiny_model, SAMPLING)
    np.testing.assert_array_equal(_xy(grey), _xy(full))
    with pytest.raises(MicrographError, match=r"a colour \(RGB\) image of shape \(96, 96, 3\)"):
        detect(np.dstack([image, 0.5 * image, image]), tiny_model, SAMPLING)


def test_what_is_not_an_array_or_not_a_device_is_a_value_error(tiny_model, image):
    with pytest.raises(MicrographError, match="cannot be read as a NumPy array .* t.detach"):
        detect(torch.tensor(image, requires_grad=True), tiny_model, SAMPLING)
    with pytest.raises(ValueError, match="is not a torch device"):
        detect(image, tiny_model, SAMPLING, device="tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            detect(image, tiny_model, SAMPLING, device="cuda")


def test_python_messages_name_python_keywords(tiny_model, image):
    with pytest.raises(MicrographError) as err:
        detect(np.stack([image] * 3), tiny_model, SAMPLING, focal_series=True)
    assert "focal_series=True" in str(err.value) and "--" not in str(err.value)


def test_subpackages_are_attributes_after_import():
    assert "graphene" in atomfinder.nn.card.list_models()
    assert atomfinder.detection.io.MIN_SIZE > 0
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        atomfinder.nn.nothing  # noqa: B018


def test_an_empty_table_has_the_columns_types_of_a_full_one(tiny_model, image):
    full, _ = detect(image, tiny_model, SAMPLING)
    empty, _ = detect(image, tiny_model, SAMPLING, threshold=1.0)
    assert len(full) > 0 and len(empty) == 0
    assert dict(empty.dtypes) == dict(full.dtypes)


def test_plot_options_that_do_not_apply_are_refused(tiny_model, image):
    import matplotlib

    matplotlib.use("Agg")
    result = detect(image, tiny_model, SAMPLING)
    with pytest.raises(ValueError, match="needs column heights"):
        result.plot(colour_by="height")
    with pytest.raises(ValueError, match="frame 3: the detection is of one image"):
        result.plot(frame=3)
    with pytest.raises(ValueError, match="smaller than the one the atoms were found in"):
        result.plot(image=image[:40, :40])
    import matplotlib.pyplot as plt

    plt.close(result.plot(colour_by="class"))


def test_plural_unit_names_are_read():
    from atomfinder.detection.io import unit_to_angstrom

    assert unit_to_angstrom("nanometers") == unit_to_angstrom("nm") == 10.0
    assert unit_to_angstrom("Angstroms") == 1.0 and unit_to_angstrom("picometres") == 0.01
    assert unit_to_angstrom("pixels") is None


def _particle_series(n: int = 4) -> np.ndarray:
    """Frames of a lattice inside a disk (non-periodic content, so registration is unambiguous)."""
    yy, xx = np.mgrid[:96, :96]
    disk = ((xx - 56) ** 2 + (yy - 46) ** 2) < 28**2
    return np.stack([100 + (lattice_image((96, 96), seed=i) - 100) * disk
                     + np.random.default_rng(9 + i).normal(0, 1, (96, 96)) for i in range(n)]).astype(np.float32)


@pytest.mark.parametrize("band_px", [40, 50])
def test_registration_is_not_pulled_to_a_lattice_alias_by_a_frame_missing_part_of_its_field(band_px):
    """The windowed sub-pixel stage preferred the peak one or two lattice periods away once a frame
    lost a band of its field (7 and 14 px here); the coarse stage had it right, so only peaks
    within a pixel or two of it count now."""
    from atomfinder.detection.registration import register_frames
    from atomfinder.detection.sample import load_sample

    frames = _particle_series()
    frames[2, :, :band_px] = np.nan
    cleaned = np.asarray(load_sample(frames, SAMPLING).data)
    np.testing.assert_allclose(register_frames(cleaned), 0.0, atol=0.2)


def test_the_nearby_peak_keeps_the_sign_and_a_fraction_of_a_pixel():
    from scipy.ndimage import shift

    from atomfinder.detection.registration import _nearby_peak_shift, bandpass, frame_shift, hann_window

    a = bandpass(_particle_series(1)[0])
    b = shift(a, (0.3, -0.6), order=3, mode="nearest")  # content moves by dy = +0.3, dx = -0.6 px
    w = hann_window(a.shape)
    np.testing.assert_allclose(frame_shift(a, b, 10), [-0.6, 0.3], atol=0.05)
    np.testing.assert_allclose(_nearby_peak_shift(a * w, b * w, 2.0), [-0.6, 0.3], atol=0.05)


def test_track_takes_no_evidence_where_a_frame_has_no_data(tiny_model, tmp_path):
    import pandas as pd

    from atomfinder.analysis.timeseries import load_time_series, track

    frames = _particle_series()
    frames[2, :, :40] = np.nan  # frame 2 lost its left part (a padded, aligned stack)
    series = load_time_series(frames, tiny_model, SAMPLING, threshold=0.5)
    assert series.sample.no_data is not None and series.sample.no_data[2].any()
    written = track(series.frames, series.detect_frame, SAMPLING, tmp_path / "out", threshold=series.threshold,
                    no_data=series.sample.no_data)
    np.testing.assert_allclose(pd.read_csv(written["drift.csv"])[["dx", "dy"]], 0.0, atol=0.3)
    sites = pd.read_csv(written["sites.csv"])
    presence = pd.read_csv(written["presence.csv"]).set_index(["frame", "site"])
    deep = sites["site"][sites["x"] < 40 - 0.5 / SAMPLING - 1].to_numpy()  # inside the band in frame 2
    assert len(deep) > 0
    assert presence.loc[[(2, s) for s in deep], "probability"].isna().all()
    for s in deep:  # no evidence in frame 2: the state around it carries through
        before, after = presence.loc[(1, s), "present"], presence.loc[(3, s), "present"]
        if before == after:
            assert presence.loc[(2, s), "present"] == before
