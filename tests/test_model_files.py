"""Model files (issue 17, item 5): only a safetensors file and a JSON card are read; the
card is checked against a schema and the weights against the card's SHA-256; pickles
and directories are refused and never executed. Every refusal is one line naming the
file (and the field).

Each test works on a copy of the shipped graphene model in ``tmp_path``; the shipped
files are never written.
"""

import json
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import atomfinder.nn.card as card_mod
from atomfinder.cli import app
from atomfinder.nn.card import (
    CARD_FORMAT_VERSION,
    ModelCardError,
    UnverifiedWeightsWarning,
    load_card,
    load_model,
    resolve_model,
    weights_sha256,
)

from test_card import _DELETE, _edit_card  # noqa: E402  (tests/ is on sys.path, as for conftest)


@pytest.fixture
def graphene(tmp_path):
    """``(stem, weights, card)`` of a copy of the shipped graphene model."""
    shipped = resolve_model("graphene")
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(shipped.with_name(shipped.name + suffix), tmp_path / f"graphene{suffix}")
    stem = tmp_path / "graphene"
    return stem, tmp_path / "graphene.safetensors", tmp_path / "graphene.json"


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and text.strip() == text, text
    exc = exc_info.value
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__), "chained traceback"
    return text


def _flip(path, position, mask=0xFF):
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))


class _Evil:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def no_unpickling(monkeypatch):
    """torch.load and pickle.load(s) fail the test if anything calls them."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a model file must never be unpickled")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)


# --------------------------------------------------------------------------- untouched


def test_the_untouched_copy_loads(graphene):
    stem, weights, card_path = graphene
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a verified card: no UnverifiedWeightsWarning
        for path in (stem, weights, card_path):
            model, card = load_model(resolve_model(path))
    assert card.name == "graphene" and card.weights_sha256 == weights_sha256(weights)
    assert card.format_version == CARD_FORMAT_VERSION and not model.training


def test_a_shipped_card_without_format_version_is_format_1(graphene):
    _, _, card_path = graphene
    _edit_card(card_path, format_version=_DELETE)  # as in cards written before it was recorded
    assert load_card(card_path).format_version == 1


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("where", ["data", "header", "last"])
def test_tampered_weights_are_refused_by_sha256(graphene, where):
    stem, weights, _ = graphene
    size = weights.stat().st_size
    _flip(weights, {"data": size // 2, "header": 20, "last": size - 1}[where], mask=0x01)
    with pytest.raises(ModelCardError) as exc:
        load_model(stem)
    text = _one_line(exc)
    assert text == (
        f"weights of {weights} do not match the SHA-256 recorded in its card: the file is damaged, truncated "
        "or was replaced (after replacing it on purpose, record the new hash with "
        "atomfinder.nn.card.record_weights_sha256)"
    )


def test_truncated_weights_are_refused_by_sha256(graphene):
    stem, weights, _ = graphene
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelCardError, match="do not match the SHA-256") as exc:
        load_model(stem)
    assert str(weights) in _one_line(exc)


@pytest.mark.parametrize("damage", ["truncate", "header_length", "header_json", "empty"])
def test_damaged_weights_without_a_hash_are_a_one_line_error(graphene, damage):
    stem, weights, card_path = graphene
    _edit_card(card_path, weights_sha256=_DELETE)  # an old card: the safetensors parser is the guard
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "header_length":
        data[:8] = (2**62).to_bytes(8, "little")
    elif damage == "header_json":
        data[8] = ord("[")
    else:
        data = bytearray()
    weights.write_bytes(bytes(data))
    with pytest.warns(UnverifiedWeightsWarning), pytest.raises(ModelCardError) as exc:
        load_model(stem)
    text = _one_line(exc)
    assert text.startswith(f"{weights}: not a valid safetensors file ("), text


# --------------------------------------------------------------------------- card


@pytest.mark.parametrize("cut", [0, 1, 100, "half", -2])
def test_truncated_card_is_a_one_line_error_naming_the_file(graphene, cut):
    stem, _, card_path = graphene
    text = card_path.read_text()
    card_path.write_text(text[: len(text) // 2 if cut == "half" else cut])
    for call in (load_model, load_card):
        with pytest.raises(ModelCardError) as exc:
            call(stem)
        message = _one_line(exc)
        assert not isinstance(exc.value, json.JSONDecodeError)
        assert message.startswith(f"model card {card_path}: not valid JSON ("), message
        assert message.endswith("the file may be truncated or damaged"), message


def test_card_from_a_newer_format_is_refused(graphene):
    stem, _, card_path = graphene
    newer = CARD_FORMAT_VERSION + 1
    # a newer schema may rename or drop fields: the version is checked before them
    _edit_card(card_path, format_version=newer, sampling_A=_DELETE, pixel_size={"value": 0.1, "unit": "A"})
    for call in (load_model, load_card, lambda s: resolve_model(s) and load_model(s)):
        with pytest.raises(ModelCardError) as exc:
            call(stem)
        assert _one_line(exc) == (
            f"model card {card_path}: card format_version {newer} is newer than this atomfinder supports "
            f"(up to {CARD_FORMAT_VERSION}); upgrade atomfinder"
        )


def test_card_from_a_newer_format_is_one_line_in_the_cli(graphene):
    stem, _, card_path = graphene
    _edit_card(card_path, format_version=CARD_FORMAT_VERSION + 1)
    result = CliRunner().invoke(app, ["models", str(card_path)])
    text = result.output.strip()
    assert result.exit_code == 2 and len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert "graphene.json" in text and "newer than this atomfinder supports" in text and "upgrade" in text


def _arch(card_path, **changes):
    arch = json.loads(card_path.read_text())["architecture"]
    return {k: v for k, v in (arch | changes).items() if v is not _DELETE}


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"sampling_A": -1}, "field 'sampling_A' must be a positive number, got -1"),
        ({"sampling_A": _DELETE}, "required field 'sampling_A' is missing"),
        ({"name": _DELETE}, "required field 'name' is missing"),
        ({"version": 1.0}, "field 'version' must be a non-empty string, got 1.0"),
        ({"architecture": _DELETE}, "required field 'architecture' is missing"),
        ({"architecture": [1, 2]}, "field 'architecture' must be an object"),
        ({"in_channels": 1.0}, "field 'in_channels' must be a positive integer, got 1.0"),
        ({"class_names": "C"}, "field 'class_names' must be a non-empty list of class names"),
        ({"class_names": ["C", 6]}, "field 'class_names' must be a non-empty list of class names"),
        ({"normalization": {"window_A": 12.0}}, "required field 'normalization.kind' is missing"),
        ({"normalization": {"kind": "median"}}, "field 'normalization.kind' must be 'local' or 'global'"),
        ({"training": []}, "field 'training' must be an object, got []"),
        ({"detection": "default"}, "field 'detection' must be an object"),
        ({"calibration": None}, "field 'calibration' must be an object, got None"),
        ({"validity": 3}, "field 'validity' must be an object, got 3"),
        ({"weights_sha256": "ABC"}, "field 'weights_sha256' must be a SHA-256 hex digest"),
        ({"format_version": 0}, "field 'format_version' must be a positive integer, got 0"),
        # the fields must agree with each other
        ({"in_channels": 2}, "field 'in_channels' is 2 but 'architecture.in_channels' is 1"),
        ({"class_names": ["C", "N"]},
         "field 'class_names' lists 2 classes (+ background) but 'architecture.n_classes' is 2"),
        ({"defocus_offsets_A": [0.0, 40.0]},
         "field 'defocus_offsets_A' must be empty or have one entry per input channel (1), got 2"),
    ],
)
def test_bad_card_field_is_named(graphene, changes, words):
    stem, _, card_path = graphene
    _edit_card(card_path, **changes)
    with pytest.raises(ModelCardError) as exc:
        load_model(stem)
    text = _one_line(exc)
    assert text.startswith(f"model card {card_path}: ") and words in text, text


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"width": _DELETE}, "required field 'architecture.width' is missing"),
        ({"n_classes": _DELETE}, "required field 'architecture.n_classes' is missing"),
        ({"depth": "4"}, "field 'architecture.depth' must be a non-negative integer, got '4'"),
        ({"height_head": 1}, "field 'architecture.height_head' must be true or false, got 1"),
        ({"dropout": 0.1}, "field 'architecture' has unknown UNetConfig keys ['dropout']"),
        ({"norm": "layer"},
         "field 'architecture.norm' must be one of 'batch', 'group', 'instance', 'none', got 'layer'"),
    ],
)
def test_bad_architecture_field_is_named(graphene, changes, words):
    stem, _, card_path = graphene
    _edit_card(card_path, architecture=_arch(card_path, **changes))
    with pytest.raises(ModelCardError) as exc:
        load_card(stem)
    text = _one_line(exc)
    assert text.startswith(f"model card {card_path}: ") and words in text, text


def test_oversized_card_is_refused_before_it_is_parsed(graphene, monkeypatch):
    stem, _, card_path = graphene
    monkeypatch.setattr(card_mod, "MAX_CARD_BYTES", 1000)
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("an oversized card was parsed"))
    with pytest.raises(ModelCardError) as exc:
        load_model(stem)
    assert _one_line(exc) == f"model card {card_path}: is larger than 1000 bytes; not a model card"


# --------------------------------------------------------------------------- pickles, directories


@pytest.mark.parametrize("suffix", [".pt", ".pkl", ".pth", ".ckpt", ".PT"])
def test_a_pickle_file_is_refused_and_never_unpickled(graphene, suffix, no_unpickling):
    stem, _, _ = graphene
    path = stem.with_name("graphene" + suffix)
    marker = path.with_name("pwned")
    path.write_bytes(pickle.dumps(_Evil(marker)))
    for call in (resolve_model, load_model, load_card):
        with pytest.raises(ModelCardError) as exc:
            call(path)
        assert _one_line(exc) == (
            f"{path}: a pickle-based model file ({suffix}) is never loaded (unpickling can run code); "
            "give a model's <stem>.safetensors with its <stem>.json card"
        )
    assert not marker.exists()


def test_a_directory_of_pickles_is_refused_and_never_unpickled(tmp_path, no_unpickling):
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "pwned"
    for name in ("checkpoint.pt", "model.pkl"):
        (run / name).write_bytes(pickle.dumps(_Evil(marker)))
    for call in (resolve_model, load_model, load_card):
        with pytest.raises(ModelCardError) as exc:
            call(run)
        assert _one_line(exc) == (
            f"{run}: is a directory, not a model; give a model's <stem>.safetensors or <stem>.json path "
            "(it holds no <stem>.json with its <stem>.safetensors); its pickle-based files "
            "(checkpoint.pt, model.pkl) are never loaded"
        )
    assert not marker.exists()


def test_a_model_directory_with_a_pickle_and_an_unexpected_file(graphene, no_unpickling):
    stem, _, _ = graphene
    directory = stem.parent
    marker = directory / "pwned"
    (directory / "graphene.pt").write_bytes(pickle.dumps(_Evil(marker)))
    (directory / "notes.txt").write_text("unexpected")
    (directory / "__init__.py").write_text(f"open({str(marker)!r}, 'w')\n")
    with pytest.raises(ModelCardError) as exc:
        resolve_model(directory)
    text = _one_line(exc)
    assert "is a directory, not a model" in text and "models in it: graphene.safetensors" in text, text
    assert "(graphene.pt) are never loaded" in text
    model, card = load_model(resolve_model(stem))  # the model itself loads; nothing else is run
    assert card.name == "graphene"
    assert not marker.exists()


def test_detect_refuses_a_directory_in_one_line(tmp_path, no_unpickling):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(pickle.dumps(_Evil(tmp_path / "pwned")))
    img = tmp_path / "img.npy"
    np.save(img, np.zeros((32, 32), np.float32))
    result = CliRunner().invoke(app, ["detect", str(img), "--model", str(run), "--sampling", "0.1",
                                      "--out", str(tmp_path / "out")])
    text = result.output.strip()
    assert result.exit_code == 2 and len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert "is a directory, not a model" in text and "checkpoint.pt" in text
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()
