"""What `evaluate`, `tune-threshold` and `calibrate` must refuse (found by a CLI audit):

- ``--write-card`` on a model installed with atomfinder, named by its name alone, would rewrite
  the package's card: refused before any work, the card unchanged (its path says it is meant);
- an evaluation on the model's own training store is no evaluation: refused with
  ``--write-card`` (warned without: test_evaluate_honesty.py);
- an edge band (``--border``) that is not a finite width, or that covers the whole image,
  would score nothing and report F1 1.0: refused.
"""

from __future__ import annotations

import dataclasses

import pytest
from conftest import save_untrained_model
from typer.testing import CliRunner

from atomfinder.cli import app
from atomfinder.nn.card import is_shipped, load_model, resolve_model, save_model

pytestmark = pytest.mark.filterwarnings("ignore::atomfinder.detection.validity.ValidityWarning")  # untrained model


@pytest.mark.parametrize("command", [
    ["evaluate", "--model", "graphene", "--write-card"],
    ["tune-threshold", "--model", "graphene", "--write-card"],
    ["calibrate", "--model", "graphene", "--write-card"],
])
def test_write_card_on_a_shipped_model_named_by_its_name_is_refused(command, tmp_path):
    stem = resolve_model("graphene")
    assert is_shipped(stem)
    card = stem.with_suffix(".json").read_bytes()
    result = CliRunner().invoke(app, command + ["--data", str(tmp_path / "none.zarr")])
    assert result.exit_code == 2, result.output
    assert "graphene is a model installed with atomfinder: --write-card would rewrite its card" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert stem.with_suffix(".json").read_bytes() == card


def test_a_copy_of_a_model_is_not_shipped(tmp_path):
    assert not is_shipped(save_untrained_model(tmp_path / "m", 0.12))


@pytest.fixture
def model_trained_on(tiny_graphene_store, tmp_path):
    """An untrained model whose card says it was trained on the tiny graphene store."""
    from atomfinder.datasets.store import DatasetStore

    store = DatasetStore(tiny_graphene_store)
    stem = save_untrained_model(tmp_path / "m", store.meta["config"]["microscope"]["sampling_A"])
    net, card = load_model(stem)
    card = dataclasses.replace(card, training={"data": {"seed": store.meta["seed"], "n": store.meta["n"]}})
    save_model(net, card, stem)
    return stem


def test_evaluation_on_the_training_store_is_refused_for_the_card(model_trained_on, tiny_graphene_store, tmp_path):
    """(Without --write-card it is scored with a warning: test_evaluate_honesty.py,
    test_the_training_store_is_marked_in_the_report.)"""
    card = model_trained_on.with_suffix(".json").read_text()
    base = ["evaluate", "--model", str(model_trained_on), "--data", str(tiny_graphene_store), "--no-baseline",
            "--no-structures"]
    result = CliRunner().invoke(app, base + ["--report", str(tmp_path / "r1"), "--write-card"])
    assert result.exit_code == 2, result.output
    assert "the training store of tiny 0" in result.output and "not written into the card" in result.output
    assert model_trained_on.with_suffix(".json").read_text() == card and not (tmp_path / "r1").exists()


@pytest.mark.parametrize("border, message", [
    ("nan", "border_A must be a finite width >= 0 in Å, got nan"),
    ("10", "an edge band of 10 Å on each side covers a whole"),
])
def test_an_edge_band_that_leaves_nothing_to_score_is_refused(border, message, tiny_graphene_store, tmp_path):
    stem = save_untrained_model(tmp_path / "m", 0.12)
    result = CliRunner().invoke(app, ["evaluate", "--model", str(stem), "--data", str(tiny_graphene_store),
                                      "--report", str(tmp_path / "r"), "--border", border, "--no-structures"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command, message", [
    (["calibrate", "--model", "graphene", "--min-confidence", "best"],
     "--min-confidence best: the floor is stored with --write-card; add it"),
    (["evaluate", "--model", "graphene", "--versus-frame", "0"],
     "--versus-frame 0: the frame a --versus model sees; give --versus too"),
])
def test_an_option_that_would_be_ignored_is_refused(command, message, tmp_path):
    result = CliRunner().invoke(app, command + ["--data", str(tmp_path / "none.zarr")])
    assert result.exit_code == 2 and message in result.output, result.output
