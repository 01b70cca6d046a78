"""Model cards, safetensors weights, and model resolution."""

import json

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
