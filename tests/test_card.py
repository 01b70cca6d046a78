"""Model cards, safetensors weights, and model resolution."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import atomfinder.nn.card as card_mod
from atomfinder.nn.card import ModelCard, list_models, load_model, resolve_model, save_model
from atomfinder.nn.unet import UNet

torch.set_num_threads(2)


def _model_and_card(name="tiny"):
    torch.manual_seed(0)
    model = UNet(in_channels=2, n_classes=3, depth=2, width=4, norm="batch",
                 height_head=True, max_height=4)
    # Make BatchNorm running statistics non-trivial so they must round-trip too.
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 2, 32, 32))
    model.eval()
    card = ModelCard(
        name=name,
        version="0.1",
        architecture=model.config.to_dict(),
        in_channels=2,
        defocus_offsets_A=[0.0, 50.0],
        class_names=["Mo", "S"],
        sampling_A=0.1,
        normalization={"kind": "local", "window_A": 12.0},
        training={"config": {"steps": 3}, "seed": 7, "time_s": 1.5},
        evaluation={"f1": {"1e3": 0.9}},
    )
    return model, card


def test_card_json_round_trip():
    _, card = _model_and_card()
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert again.class_names == ("Mo", "S") and again.defocus_offsets_A == (0.0, 50.0)
    assert json.loads(card.to_json())["class_names"] == ["Mo", "S"]
    assert len(card.created) == 10 and card.created[4] == "-"  # ISO date


def test_card_rejects_inconsistent_fields():
    _, card = _model_and_card()
    d = card.to_dict()
    with pytest.raises(ValueError, match="classes"):
        ModelCard.from_dict({**d, "class_names": ["Mo"]})
    with pytest.raises(ValueError, match="in_channels"):
        ModelCard.from_dict({**d, "in_channels": 1})
    with pytest.raises(ValueError, match="defocus"):
        ModelCard.from_dict({**d, "defocus_offsets_A": [0.0]})


def test_save_load_identical_outputs(tmp_path):
    model, card = _model_and_card()
    weights, card_path = save_model(model, card, tmp_path / "sub" / "tiny")
    assert weights.name == "tiny.safetensors" and card_path.name == "tiny.json"
    assert sorted(p.name for p in weights.parent.iterdir()) == ["tiny.json", "tiny.safetensors"]

    # The weights file is plain safetensors: it loads without atomfinder or pickle.
    state = load_file(str(weights))
    assert set(state) == set(model.state_dict())
    with safe_open(str(weights), framework="pt") as f:
        assert f.metadata()["name"] == "tiny"

    assert resolve_model(weights) == resolve_model(card_path) == tmp_path / "sub" / "tiny"
    x = torch.randn(1, 2, 45, 37)
    with torch.no_grad():
        ref = model(x)
    for path in (tmp_path / "sub" / "tiny", weights, card_path):
        loaded, card2 = load_model(path)
        assert card2 == card and not loaded.training
        with torch.no_grad():
            out = loaded(x)
        assert torch.equal(out["logits"], ref["logits"])
        assert torch.equal(out["height_logits"], ref["height_logits"])


def test_save_refuses_mismatched_card(tmp_path):
    model, card = _model_and_card()
    other = UNet(in_channels=2, n_classes=3, depth=3, width=4, height_head=True, max_height=4)
    with pytest.raises(ValueError, match="does not match"):
        save_model(other, card, tmp_path / "x")


def test_unknown_model_name_lists_available(tmp_path, monkeypatch):
    monkeypatch.setattr(card_mod, "_models_dir", lambda: tmp_path)
    model, card = _model_and_card("tiny")
    save_model(model, card, tmp_path / "tiny")
    assert list_models() == ["tiny"]
    assert resolve_model("tiny") == tmp_path / "tiny"
    loaded, card2 = load_model(resolve_model("tiny"))
    assert card2.name == "tiny"
    with pytest.raises(ValueError, match=r"unknown model 'graphene-v9'.*available models: tiny"):
        resolve_model("graphene-v9")


def test_resolve_paths_and_shipped_dir():
    assert set(list_models()) == {"gold", "gold-focal", "graphene", "mos2-focal"}  # the shipped models
    for name in list_models():
        stem = resolve_model(name)
        assert stem.name == name and stem.with_suffix(".json").is_file() and stem.with_suffix(".safetensors").is_file()
    with pytest.raises(ValueError, match="available models"):
        resolve_model("/no/such/model.safetensors")


# --------------------------------------------------------------------------- integrity and schema
import builtins  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import pickle  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from atomfinder.cli import app  # noqa: E402
from atomfinder.nn.card import (  # noqa: E402
    CARD_FORMAT_VERSION,
    ModelCardError,
    UnverifiedWeightsWarning,
    check_card_dict,
    load_card,
    record_weights_sha256,
    weights_sha256,
)


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text, text
    return text


def _saved(tmp_path, name="tiny"):
    model, card = _model_and_card(name)
    weights, card_path = save_model(model, card, tmp_path / name)
    return weights, card_path


def _edit_card(card_path, **changes):
    d = json.loads(card_path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del d[key]
        else:
            d[key] = value
    card_path.write_text(json.dumps(d, indent=2))


_DELETE = object()


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


def test_tampered_weights_are_refused(tmp_path):
    weights, _ = _saved(tmp_path)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in a tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelCardError, match="do not match the SHA-256 recorded in its card") as exc:
        load_model(tmp_path / "tiny")
    assert str(weights) in _one_line(exc)


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


def test_truncated_card_is_a_one_line_error(tmp_path):
    _, card_path = _saved(tmp_path)
    text = card_path.read_text()
    card_path.write_text(text[: len(text) // 2])
    with pytest.raises(ModelCardError, match="not valid JSON") as exc:
        load_card(card_path)
    assert f"model card {card_path}" in _one_line(exc)
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_model(card_path)


def test_binary_garbage_card_is_a_one_line_error(tmp_path):
    _, card_path = _saved(tmp_path)
    card_path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelCardError, match="not UTF-8") as exc:
        load_card(card_path)
    assert str(card_path) in _one_line(exc)


def test_newer_card_format_is_refused(tmp_path):
    _, card_path = _saved(tmp_path)
    _edit_card(card_path, format_version=2)
    with pytest.raises(ModelCardError, match=r"format_version 2 is newer .*up to 1.*upgrade") as exc:
        load_model(tmp_path / "tiny")
    assert str(card_path) in _one_line(exc)


def test_card_without_format_version_is_version_1(tmp_path):
    _, card_path = _saved(tmp_path)
    _edit_card(card_path, format_version=_DELETE)
    assert load_card(card_path).format_version == 1


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"sampling_A": _DELETE}, "required field 'sampling_A' is missing"),
        ({"class_names": _DELETE}, "required field 'class_names' is missing"),
        ({"sampling_A": -0.1}, "field 'sampling_A' must be a positive number"),
        ({"sampling_A": "0.1"}, "field 'sampling_A' must be a positive number"),
        ({"in_channels": "2"}, "field 'in_channels' must be a positive integer"),
        ({"in_channels": True}, "field 'in_channels' must be a positive integer"),
        ({"class_names": []}, "field 'class_names' must be a non-empty list"),
        ({"name": 3}, "field 'name' must be a non-empty string"),
        ({"normalization": "local"}, "field 'normalization' must be an object"),
        ({"normalization": {"window_A": 12.0}}, "required field 'normalization.kind' is missing"),
        ({"normalization": {"kind": "local", "window_A": 0}}, "field 'normalization.window_A' must be a positive"),
        ({"detection": {"threshold": 1.5}}, "field 'detection.threshold' must be a number between 0 and 1"),
        ({"detection": {"test_time_augmentation": "yes"}}, "field 'detection.test_time_augmentation' must be true or false"),
        # found by fuzzing: a 1e300 Å window overflowed the normalisation's padding (OverflowError)
        ({"normalization": {"kind": "local", "window_A": 1e300}},
         "field 'normalization.window_A' must be at most 500 model pixels (50 Å at sampling_A 0.1)"),
        ({"detection": {"min_distance_A": 50.0}}, "field 'detection.min_distance_A' must be at most 100 model pixels"),
        ({"calibration": {"radius_px": 2.0}}, "required field 'calibration.logistic' is missing"),
        ({"weights_sha256": "abc"}, "field 'weights_sha256' must be a SHA-256"),
        ({"format_version": "1"}, "field 'format_version' must be a positive integer"),
        ({"defocus_offsets_A": ["a", 0]}, "field 'defocus_offsets_A' must be a list of numbers"),
    ],
)
def test_card_schema_names_the_field(tmp_path, changes, words):
    _, card_path = _saved(tmp_path)
    _edit_card(card_path, **changes)
    with pytest.raises(ModelCardError) as exc:
        load_model(tmp_path / "tiny")
    text = _one_line(exc)
    assert text.startswith(f"model card {card_path}: ") and words in text, text


def test_card_schema_architecture_fields(tmp_path):
    _, card_path = _saved(tmp_path)
    arch = json.loads(card_path.read_text())["architecture"]
    _edit_card(card_path, architecture=arch | {"width": 0})
    with pytest.raises(ModelCardError, match="field 'architecture.width' must be a positive integer"):
        load_card(card_path)
    _edit_card(card_path, architecture=arch | {"shape": 3})
    with pytest.raises(ModelCardError, match=r"model card .*unknown UNetConfig keys"):
        load_card(card_path)


def test_card_that_is_not_an_object(tmp_path):
    with pytest.raises(ModelCardError, match="must hold a JSON object"):
        check_card_dict([1, 2], "model card x.json")


def test_old_card_without_hash_loads_with_a_warning(tmp_path):
    weights, card_path = _saved(tmp_path)
    _edit_card(card_path, weights_sha256=_DELETE, format_version=_DELETE)
    with pytest.warns(UnverifiedWeightsWarning, match="records no weights_sha256"):
        model, card = load_model(tmp_path / "tiny")
    assert card.weights_sha256 == "" and "weights_sha256" not in card.to_dict()


def test_damaged_weights_of_an_old_card_are_a_one_line_error(tmp_path):
    weights, card_path = _saved(tmp_path)
    _edit_card(card_path, weights_sha256=_DELETE)
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.warns(UnverifiedWeightsWarning), pytest.raises(ModelCardError, match="not a valid safetensors") as exc:
        load_model(tmp_path / "tiny")
    assert str(weights) in _one_line(exc)


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


class _Evil:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_pickles(directory, marker):
    for name in ("tiny.pt", "tiny.pkl", "tiny.pth", "model.pt", "tiny.json.pkl"):
        (directory / name).write_bytes(pickle.dumps(_Evil(marker)))


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


@pytest.mark.parametrize("name", ["tiny.pt", "tiny.pkl", "tiny.PTH", "model.ckpt"])
def test_pointing_at_a_pickle_is_refused(tmp_path, name, monkeypatch):
    _saved(tmp_path)
    marker = tmp_path / "pwned"
    _plant_pickles(tmp_path, marker)
    (tmp_path / "model.ckpt").write_bytes(pickle.dumps(_Evil(marker)))
    (tmp_path / "tiny.PTH").write_bytes(pickle.dumps(_Evil(marker)))
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("torch.load")))
    path = tmp_path / name
    for call in (resolve_model, load_model, load_card):
        with pytest.raises(ModelCardError, match="pickle-based model file .* never loaded") as exc:
            call(path)
        assert str(path) in _one_line(exc)
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(0).random((32, 32)).astype(np.float32))
    result = CliRunner().invoke(app, ["detect", str(img), "--model", str(path), "--sampling", "0.2",
                                      "--out", str(tmp_path / "out")])
    text = result.output.strip()
    assert result.exit_code == 2 and len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert name in text and "pickle" in text
    assert not marker.exists() and not (tmp_path / "out").exists()
