"""Model files (issue 17, item 5): only a safetensors file and a JSON card are read; the
card is checked against a schema and the weights against the card's SHA-256; pickles
and directories are refused and never executed. Every refusal is one line naming the
file (and the field).

Each test works on a copy of the shipped graphene model in ``tmp_path``; the shipped
files are never written.
"""

import builtins
import hashlib
import io
import json
import os
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
    ModelCard,
    ModelCardError,
    UnverifiedWeightsWarning,
    check_card_dict,
    list_models,
    load_card,
    load_model,
    record_weights_sha256,
    resolve_model,
    save_model,
    weights_sha256,
)
from atomfinder.nn.unet import UNet

from test_card import _model_and_card  # noqa: E402  (tests/ is on sys.path, as for conftest)


def _edit_card(card_path, **changes):
    """Rewrite the card's JSON with top-level keys changed (``_DELETE``: removed)."""
    d = json.loads(card_path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del d[key]
        else:
            d[key] = value
    card_path.write_text(json.dumps(d, indent=2))


_DELETE = object()


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
        ({"class_names": _DELETE}, "required field 'class_names' is missing"),
        ({"sampling_A": "0.1"}, "field 'sampling_A' must be a positive number"),
        ({"in_channels": "2"}, "field 'in_channels' must be a positive integer"),
        ({"in_channels": True}, "field 'in_channels' must be a positive integer"),
        ({"class_names": []}, "field 'class_names' must be a non-empty list"),
        ({"name": 3}, "field 'name' must be a non-empty string"),
        ({"normalization": "local"}, "field 'normalization' must be an object"),
        ({"normalization": {"kind": "local", "window_A": 0}}, "field 'normalization.window_A' must be a positive"),
        ({"detection": {"threshold": 1.5}}, "field 'detection.threshold' must be a number between 0 and 1"),
        ({"detection": {"test_time_augmentation": "yes"}},
         "field 'detection.test_time_augmentation' must be true or false"),
        # found by fuzzing: a 1e300 Å window overflowed the normalisation's padding (OverflowError)
        ({"sampling_A": 0.1, "normalization": {"kind": "local", "window_A": 1e300}},
         "field 'normalization.window_A' must be at most 500 model pixels (50 Å at sampling_A 0.1)"),
        ({"detection": {"min_distance_A": 50.0}}, "field 'detection.min_distance_A' must be at most 100 model pixels"),
        ({"calibration": {"radius_px": 2.0}}, "required field 'calibration.logistic' is missing"),
        ({"format_version": "1"}, "field 'format_version' must be a positive integer"),
        ({"defocus_offsets_A": ["a"]}, "field 'defocus_offsets_A' must be a list of numbers"),
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
        ({"width": 0}, "field 'architecture.width' must be a positive integer"),
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


def test_detect_refuses_a_pickle_in_one_line(graphene, tmp_path, no_unpickling):
    stem, _, _ = graphene
    path = stem.with_name("graphene.pt")
    marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps(_Evil(marker)))
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(0).random((32, 32)).astype(np.float32))
    result = CliRunner().invoke(app, ["detect", str(img), "--model", str(path), "--sampling", "0.1",
                                      "--out", str(tmp_path / "out")])
    text = result.output.strip()
    assert result.exit_code == 2 and len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert "graphene.pt" in text and "pickle" in text
    assert not marker.exists() and not (tmp_path / "out").exists()


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


# --------------------------------------------------------------------------- models saved by save_model
# (a tiny two-frame, two-class model with a height head, from test_card)


def _saved(tmp_path, name="tiny"):
    model, card = _model_and_card(name)
    weights, card_path = save_model(model, card, tmp_path / name)
    return weights, card_path


def _plant_pickles(directory, marker):
    for name in ("tiny.pt", "tiny.pkl", "tiny.pth", "model.pt", "tiny.json.pkl"):
        (directory / name).write_bytes(pickle.dumps(_Evil(marker)))


def test_save_records_sha256_and_format_version(tmp_path):
    weights, card_path = _saved(tmp_path)
    d = json.loads(card_path.read_text())
    assert d["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() == weights_sha256(weights)
    assert weights_sha256(card_path) == weights_sha256(tmp_path / "tiny") == d["weights_sha256"]
    assert d["format_version"] == CARD_FORMAT_VERSION == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a verified model loads without a warning
        _, card = load_model(weights)
    assert card.weights_sha256 == d["weights_sha256"]


def test_tampered_weights_refused_by_the_cli_in_one_line(tmp_path):
    # a single-image model for detect
    cfg = UNet(in_channels=1, n_classes=2, depth=2, width=4).config
    card = ModelCard(name="one", version="0", architecture=cfg.to_dict(), in_channels=1, class_names=["C"],
                     sampling_A=0.2, normalization={"kind": "local", "window_A": 6.0})
    torch.manual_seed(0)
    weights, _ = save_model(UNet(**cfg.to_dict()), card, tmp_path / "one")
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(0).random((32, 32)).astype(np.float32))
    result = CliRunner().invoke(app, ["detect", str(img), "--model", str(weights), "--sampling", "0.2",
                                      "--out", str(tmp_path / "out")])
    text = result.output.strip()
    assert result.exit_code == 2 and len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert "one.safetensors" in text and "SHA-256" in text
    assert not (tmp_path / "out").exists()


def test_binary_garbage_card_is_a_one_line_error(tmp_path):
    _, card_path = _saved(tmp_path)
    card_path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelCardError, match="not UTF-8") as exc:
        load_card(card_path)
    assert str(card_path) in _one_line(exc)


def test_card_that_is_not_an_object(tmp_path):
    with pytest.raises(ModelCardError, match="must hold a JSON object"):
        check_card_dict([1, 2], "model card x.json")


def test_old_card_without_hash_loads_with_a_warning(tmp_path):
    weights, card_path = _saved(tmp_path)
    _edit_card(card_path, weights_sha256=_DELETE, format_version=_DELETE)
    with pytest.warns(UnverifiedWeightsWarning, match="records no weights_sha256"):
        model, card = load_model(tmp_path / "tiny")
    assert card.weights_sha256 == "" and "weights_sha256" not in card.to_dict()


def test_weights_of_another_architecture_are_a_one_line_error(tmp_path):
    _saved(tmp_path)
    other = UNet(in_channels=2, n_classes=3, depth=3, width=4, height_head=True, max_height=4)
    _, other_card = _model_and_card("other")
    other_card = ModelCard.from_dict(other_card.to_dict() | {"architecture": other.config.to_dict()})
    w_other, _ = save_model(other, other_card, tmp_path / "other")
    (tmp_path / "tiny.safetensors").write_bytes(w_other.read_bytes())
    record_weights_sha256(tmp_path / "tiny")  # the hash matches; the tensors do not
    with pytest.raises(ModelCardError, match="do not fit the architecture") as exc:
        load_model(tmp_path / "tiny")
    _one_line(exc)


def test_record_weights_sha256_changes_only_that_key(tmp_path):
    weights, card_path = _saved(tmp_path)
    model, _ = _model_and_card()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    new_state = {k: v.contiguous() for k, v in model.state_dict().items()}
    from safetensors.torch import save_file

    save_file(new_state, str(weights))  # weights replaced on purpose, card left as it was
    with pytest.raises(ModelCardError, match="SHA-256"):
        load_model(weights)
    before = json.loads(card_path.read_text())
    digest = record_weights_sha256(card_path)
    after = json.loads(card_path.read_text())
    assert digest == weights_sha256(weights) and after["weights_sha256"] == digest
    assert list(after) == list(before)
    assert {k: v for k, v in after.items() if k != "weights_sha256"} == {
        k: v for k, v in before.items() if k != "weights_sha256"}
    load_model(weights)


def test_shipped_cards_record_the_sha256_of_their_weights():
    for name in list_models():
        stem = resolve_model(name)
        card = load_card(stem)
        assert card.weights_sha256 == weights_sha256(stem), f"{name}: run record_weights_sha256"


def test_pickles_beside_a_model_are_never_opened(tmp_path, monkeypatch):
    _saved(tmp_path)
    marker = tmp_path / "pwned"
    _plant_pickles(tmp_path, marker)
    (tmp_path / "notes.txt").write_text("unexpected file")

    def forbidden(*args, **kwargs):
        raise AssertionError("a model must never be unpickled")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    opened = []
    real_open = io.open

    def spy(file, *args, **kwargs):
        opened.append(os.fspath(file) if not isinstance(file, int) else file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", spy)
    monkeypatch.setattr(builtins, "open", spy)
    for path in (tmp_path / "tiny", tmp_path / "tiny.json", tmp_path / "tiny.safetensors"):
        load_model(resolve_model(path))
    monkeypatch.undo()
    assert {os.path.basename(p) for p in opened} == {"tiny.json", "tiny.safetensors"}, opened
    assert not marker.exists()


def test_list_models_ignores_pickles(tmp_path, monkeypatch):
    monkeypatch.setattr(card_mod, "_models_dir", lambda: tmp_path)
    _saved(tmp_path)
    _plant_pickles(tmp_path, tmp_path / "pwned")
    (tmp_path / "lonely.json").write_text("{}")  # a card without weights is no model
    assert list_models() == ["tiny"]
    assert not (tmp_path / "pwned").exists()
