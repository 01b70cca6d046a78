"""Size and pixel-size guards of the detection path (issue 17): an input whose pixel
size is far from the model's, or that would need more memory than is available, is
refused in one line naming the file, before anything is resampled.

The three real inputs that used to be killed for memory, print a MemoryError
traceback or run for two minutes are refused in well under a second of work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import atomfinder
import atomfinder.detection.pipeline as pipeline
import atomfinder.detection.sample as sample_module
from atomfinder.cli import app
from atomfinder.detection.io import MicrographError
from atomfinder.detection.pipeline import (
    MAX_COARSER,
    MAX_FINER,
    detect_array,
    detection_memory_bytes,
    input_memory_bytes,
    input_memory_problem,
    pixel_size_problem,
    size_problem,
)
from atomfinder.nn.card import ModelCard, load_model, save_model
from atomfinder.nn.unet import UNetConfig, build_model

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::atomfinder.detection.validity.ValidityWarning")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "data" / "io-samples"
SER = SAMPLES / "tia_old_64x64_TEM_images_acquire_1.ser"  # 62.8 Å/px
DM_TIF = SAMPLES / "tiff_test_loading_image_saved_with_DM.tif"  # 1686.7 Å/px
DEMO = ROOT / "examples" / "graphene_defect_hrtem.tif"  # 512², no calibration
SAMPLING = 0.2  # Å/px of the tiny model

# (input, extra CLI args, words of the error)
OVERSIZE = {
    "ser_62.8": (SER, [], ["pixel size 62.8 Å/px is far too coarse", "the model works at", "at most 4x coarser"]),
    "dm_tif_1687": (DM_TIF, [], ["pixel size 1687 Å/px is far too coarse"]),
    "demo_sampling_2": (DEMO, ["--sampling", "2.0"], ["pixel size 2 Å/px is far too coarse"]),
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    cfg = UNetConfig(in_channels=1, n_classes=2, depth=2, width=4)
    torch.manual_seed(0)
    card = ModelCard(name="tiny", version="0", architecture=cfg.to_dict(), in_channels=1, class_names=("C",),
                     sampling_A=SAMPLING, normalization={"kind": "local", "window_A": 6.0},
                     detection={"threshold": 0.0, "min_distance_A": 1.0})
    path = tmp_path_factory.mktemp("models") / "tiny"
    save_model(build_model(cfg).eval(), card, path)
    return path


@pytest.fixture
def no_resampling(monkeypatch):
    """Fail loudly if anything gets as far as resampling or the network (the costly steps)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("resample or predict was called: the guard came too late")

    monkeypatch.setattr(pipeline, "resample", forbidden)
    monkeypatch.setattr(pipeline, "predict", forbidden)


def _image(n=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 5.0, (n, n)).astype(np.float32)


def _cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["detect", *args])
    return result.exit_code, result.output.strip()


# --------------------------------------------------------------------------- the three real inputs


@pytest.mark.parametrize("case", sorted(OVERSIZE))
def test_cli_refuses_oversize_inputs_in_one_line(case, tmp_path, no_resampling):
    path, extra, words = OVERSIZE[case]
    out = tmp_path / "out"
    code, text = _cli([str(path), "--model", "graphene", *extra, "--out", str(out)])
    assert code == 2, text
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert text.startswith(f"error: {path}: "), text
    for word in words:
        assert word in text, text
    assert not out.exists()  # refused before resampling or the network (no_resampling): was killed,
    # a MemoryError, or 116 s of resampling


@pytest.mark.parametrize("case", sorted(OVERSIZE))
def test_api_refuses_oversize_inputs(case, no_resampling):
    path, extra, words = OVERSIZE[case]
    sampling = float(extra[1]) if extra else None
    with pytest.raises(MicrographError) as exc:
        atomfinder.detect(str(path), model="graphene", sampling=sampling)
    text = str(exc.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    for word in words:
        assert word in text, text


# --------------------------------------------------------------------------- pixel size


def test_pixel_size_limits():
    assert pixel_size_problem(0.1, 0.1) is None
    assert pixel_size_problem(MAX_COARSER * 0.1, 0.1) is None
    assert pixel_size_problem(0.1 / MAX_FINER, 0.1) is None
    coarse = pixel_size_problem(MAX_COARSER * 0.1 * 1.01, 0.1)
    fine = pixel_size_problem(0.1 / MAX_FINER * 0.99, 0.1)
    assert "far too coarse for atomic resolution" in coarse and "0.4 Å/px" in coarse
    assert "far too fine" in fine and "0.0125 Å/px" in fine
    with pytest.raises(ValueError, match="positive"):
        pixel_size_problem(float("nan"), 0.1)


def test_api_refuses_a_far_too_fine_array(tiny_model, no_resampling):
    with pytest.raises(MicrographError, match=r"^<array>: pixel size 0.02 Å/px is far too fine"):
        atomfinder.detect(_image(), model=tiny_model, sampling=0.02)


def test_cli_refuses_a_far_too_fine_file_in_one_line(tiny_model, tmp_path, no_resampling):
    path = tmp_path / "fine.npy"
    np.save(path, _image())
    code, text = _cli([str(path), "--model", str(tiny_model), "--sampling", "0.01", "--out", str(tmp_path / "o")])
    assert code == 2 and len(text.splitlines()) == 1, text
    assert "fine.npy" in text and "far too fine" in text
    assert not (tmp_path / "o").exists()


def test_detect_array_refuses_before_resampling(tiny_model, no_resampling):
    net, card = load_model(tiny_model)
    with pytest.raises(ValueError, match="far too coarse"):
        detect_array(net, card, _image(), 1.0)


def test_accepted_at_the_limit(tiny_model):
    table, info = atomfinder.detect(_image(32), model=tiny_model, sampling=MAX_COARSER * SAMPLING)
    assert info["probabilities"].shape[-2:] == (128, 128)


# --------------------------------------------------------------------------- memory


def test_memory_estimates_scale_with_the_pixels():
    one = detection_memory_bytes(1000, 1000, 0.1, 0.1, n_classes=2)
    assert one == input_memory_bytes(1000, 1000) + 1000 * 1000 * (pipeline.MODEL_WORK_BYTES + 8)
    assert detection_memory_bytes(1000, 1000, 0.2, 0.1, n_classes=2) > 2.5 * one  # 2x upsampling: 4x the model grid
    stack = detection_memory_bytes(1000, 1000, 0.1, 0.1, n_classes=2, n_frames=5)
    focal = detection_memory_bytes(1000, 1000, 0.1, 0.1, n_classes=2, channels=5)
    assert stack > one and focal > one
    # the 62.8 Å/px SER would have been resampled to 40 192² pixels: about 80 GB
    assert detection_memory_bytes(64, 64, 62.818, 0.10019, n_classes=2) > 50e9


def test_size_problem_names_the_memory(tiny_model):
    _, card = load_model(tiny_model)
    assert size_problem((64, 64), SAMPLING, card, available_bytes=10**12) is None
    text = size_problem((40000, 40000), SAMPLING, card, available_bytes=8 * 10**9)
    assert "detection needs about" in text and "8.0 GB is available" in text and "40000x40000" in text
    stack = size_problem((3, 40000, 40000), SAMPLING, card, available_bytes=8 * 10**9)
    assert "3 frames of 40000x40000" in stack
    assert input_memory_problem((100, 100), available_bytes=10**9) is None
    assert "cleaning needs about" in input_memory_problem((5, 30000, 30000), available_bytes=10**9)


def test_api_refuses_what_does_not_fit_in_memory(tiny_model, monkeypatch, no_resampling):
    need = detection_memory_bytes(64, 64, SAMPLING, SAMPLING, n_classes=2)
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda: need - 1)
    with pytest.raises(MicrographError, match=r"^<array>: detection needs about .* of memory .* is available; crop"):
        atomfinder.detect(_image(), model=tiny_model, sampling=SAMPLING)


def test_cli_refuses_what_does_not_fit_in_memory(tiny_model, monkeypatch, tmp_path, no_resampling):
    path = tmp_path / "big.npy"
    np.save(path, _image())
    need = detection_memory_bytes(64, 64, SAMPLING, SAMPLING, n_classes=2)
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda: need - 1)
    code, text = _cli([str(path), "--model", str(tiny_model), "--sampling", str(SAMPLING), "--out", str(tmp_path / "o")])
    assert code == 2 and len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert "big.npy" in text and "detection needs about" in text and "is available" in text
    assert not (tmp_path / "o").exists()


def test_input_too_big_to_clean_is_refused_before_cleaning(monkeypatch, tmp_path):
    path = tmp_path / "huge.npy"
    np.save(path, _image())
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda: 1000)
    monkeypatch.setattr(sample_module, "clean_image", lambda *a, **k: (_ for _ in ()).throw(AssertionError("cleaned")))
    with pytest.raises(MicrographError, match=r"huge.npy: 64x64 pixels: cleaning needs about .* is available"):
        sample_module.load_sample(str(path), SAMPLING)


def test_unknown_available_memory_skips_the_memory_check(tiny_model, monkeypatch):
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda: None)
    table, _ = atomfinder.detect(_image(), model=tiny_model, sampling=SAMPLING)
    assert len(table) > 0
