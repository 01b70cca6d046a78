"""``atomfinder finetune``: the microscope file, and the whole workflow at tiny scale (simulate, fine-tune,
choose the threshold, re-fit the calibration, compare with the general model, resume)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from atomfinder.cli import app
from atomfinder.finetune import (
    FINE_TUNED,
    GENERAL,
    PARENT,
    absolute_defocus_A,
    fine_tuning_seconds,
    finetune,
    general_label,
    read_microscope,
    shipped_recipe,
)
from atomfinder.nn.card import load_card, load_model, resolve_model

pytest.importorskip("abtem")

EXAMPLE = Path(__file__).parents[1] / "configs" / "microscope-example.toml"
MICROSCOPE = """\
[microscope]
energies_eV = [80000]
Cs_corrected_A = [-150000.0, -100000.0]   # -15 ... -10 µm
defocus_around_scherzer_A = [-20.0, 20.0]
dose_e_per_A2 = [10000.0, 100000.0]
focal_spread_A = [20.0, 30.0]
"""


@pytest.fixture(scope="module")
def source_model(tiny_graphene_store, tmp_path_factory):
    """A tiny general model trained on the tiny graphene recipe, with a (borrowed) confidence calibration."""
    from atomfinder.datasets.store import DatasetStore
    from atomfinder.nn.card import save_model
    from atomfinder.nn.train import TrainConfig, load_training_data, train

    from conftest import tiny_config

    cfg = TrainConfig(name="tiny", depth=2, width=4, crop_px=32, batch_size=4, epochs=5, warmup_steps=2,
                      checkpoint_every=3, validation_fraction=0.25, num_threads=1)
    store = DatasetStore(tiny_graphene_store)
    data = load_training_data(store, np.arange(len(store)), cfg.normalization)
    recipe = {"store": str(tiny_graphene_store), "n": 8, "seed": 0, "simulation": tiny_config().to_dict()}
    stem = train(cfg, data, tmp_path_factory.mktemp("source") / "run", recipe=recipe)
    model, card = load_model(stem)
    # the shipped gold model's calibration: finetune must re-fit it or drop it, never keep it
    card = dataclasses.replace(card, calibration=load_card(resolve_model("gold")).calibration,
                               detection=card.detection | {"test_time_augmentation": True})  # as gold's card
    save_model(model, card, stem)
    return stem


def _microscope(tmp_path: Path, text: str = MICROSCOPE) -> Path:
    path = tmp_path / "my.toml"
    path.write_text(text)
    return path


def test_example_file_is_read_for_both_shipped_models():
    for name in ("gold", "graphene"):
        recipe = shipped_recipe(load_card(resolve_model(name)))
        ranges, given = read_microscope(EXAMPLE, recipe.microscope)
        assert ranges.energies_eV == (300e3,) and ranges.Cs_corrected_A == (-25e4, -15e4)
        assert ranges.dose_e_per_A2 == (300.0, 20000.0) and "dose_e_per_A2" in given
        assert ranges.mtf_c1 == recipe.microscope.mtf_c1  # fields left out keep the model's ranges
    # the absolute defocus a microscopist checks: Scherzer (overfocus for Cs < 0) + the relative range
    (row,) = absolute_defocus_A(ranges)
    assert row["lens"] == "corrected" and row["defocus_A"] == pytest.approx([-115.9, -36.6], abs=0.1)


def test_defocus_relative_or_absolute_for_a_recipe_with_absolute_corrected_defocus(tmp_path):
    from atomfinder.datasets.generate import default_config

    recipe = default_config("gold").microscope  # corrected lenses at any defocus in -150..+150 Å
    assert recipe.corrected_defocus_A == (-150.0, 150.0)
    # the file's range relative to Scherzer replaces the recipe's absolute one
    ranges, _ = read_microscope(EXAMPLE, recipe)
    assert ranges.corrected_defocus_A == ()
    (row,) = absolute_defocus_A(ranges)
    assert row["defocus_A"] == pytest.approx([-115.9, -36.6], abs=0.1)
    # or the file gives the absolute range for its corrected lens (no relative range needed)
    text = MICROSCOPE.replace("defocus_around_scherzer_A = [-20.0, 20.0]",
                              "corrected_defocus_A = [-90.0, -40.0]\np_corrected = 1.0")
    ranges, given = read_microscope(_microscope(tmp_path, text), recipe)
    assert ranges.corrected_defocus_A == (-90.0, -40.0) and "defocus_around_scherzer_A" not in given
    (row,) = absolute_defocus_A(ranges)
    assert row["defocus_A"] == [-90.0, -40.0]
    draws = [ranges.sample(np.random.default_rng(i)) for i in range(50)]
    assert all(-90.0 <= d.defocus_A <= -40.0 for d in draws)
    # neither range: a one-line error naming the relative one
    text = MICROSCOPE.replace("defocus_around_scherzer_A = [-20.0, 20.0]\n", "p_corrected = 1.0\n")
    with pytest.raises(ValueError, match="defocus_around_scherzer_A .* is missing"):
        read_microscope(_microscope(tmp_path, text), recipe)


def test_graphene_recipe_is_the_one_it_was_trained_on():
    # the card's recorded recipe, not today's default: settings it does not record are off
    card = load_card(resolve_model("graphene"))
    recorded = card.training["data"]["simulation"]
    recipe = shipped_recipe(card)
    assert recipe.p_empty_field == recorded.get("p_empty_field", 0)
    assert recipe.p_contamination == recorded.get("p_contamination", 0)
    assert recipe.structure == recorded.get("structure", {})
    assert list(recipe.microscope.astigmatism_A) == list(recorded["microscope"]["astigmatism_A"])


@pytest.mark.parametrize("text, message", [
    ("[microscope\nenergies_eV = [3e5]\n", "not valid TOML"),
    ("energies_eV = [3e5]\n", "needs a [microscope] table"),
    (MICROSCOPE.replace("dose_e_per_A2 = [10000.0, 100000.0]\n", ""), "dose_e_per_A2 (e/Å²) is missing"),
    (MICROSCOPE + "voltage_kV = 300\n", "unknown microscope range(s): voltage_kV"),
    (MICROSCOPE.replace("[20.0, 30.0]", "25.0"), "focal_spread_A (Å) must be [low, high]"),
    (MICROSCOPE.replace("[-20.0, 20.0]", "[20.0, -20.0]"), "low <= high"),
    (MICROSCOPE.replace("[80000]", '["80 kV"]'), "energies_eV (eV) must be a list of numbers"),
    (MICROSCOPE + "p_corrected = 1.5\n", "must be a probability"),
    (MICROSCOPE + "sampling_A = 0.05\n", "too far from the model's"),
    (MICROSCOPE + "[simulation]\nimage_px = 64\n", "reads only the [microscope] table"),
    # values in another unit than the file's are refused, not simulated
    (MICROSCOPE.replace("[80000]", "[300.0]"), "energies_eV (eV) must be electron energies in eV"),
    (MICROSCOPE.replace("[-150000.0, -100000.0]", "[-25.0, -15.0]"), "Cs_corrected_A (Å) is in Å (1 µm is 1e4 Å)"),
    (MICROSCOPE.replace("[80000]", "[300000.0]") + "p_corrected = 0.0\nCs_uncorrected_A = [1.0, 1.2]\n",
     "Cs_uncorrected_A (Å) must be the Cs of an uncorrected lens in Å"),
])
def test_bad_microscope_file_is_a_one_line_error(tmp_path, text, message):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["finetune", "--model", "graphene", "--microscope",
                                      str(_microscope(tmp_path, text)), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()  # nothing is made for bad input


def test_unknown_model_and_missing_file_are_one_line_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["finetune", "--model", "platinum", "--microscope", str(_microscope(tmp_path)),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "unknown model 'platinum'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["finetune", "--model", "graphene", "--microscope", str(tmp_path / "none.toml"),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "none.toml" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("init_s", [0.0, 12.3, 1234.5])
def test_kept_model_time_never_exceeds_the_run_time(init_s):
    """The kept model's time and the run's come from the card's rounding (to 0.1 s), so the kept one,
    saved at or before the run's end, never shows more: in the end-to-end test an unrounded run time of
    0.898 s was below the card's 0.9 s (0.0150 > 0.01497 min, 3 runs in 5)."""
    from atomfinder.nn.train import card_time_s

    elapsed = np.round(np.random.default_rng(0).uniform(0.0, 5.0, 400), 4).tolist() + [0.85, 0.897, 0.898, 0.95]
    for best_elapsed in elapsed:
        for run_elapsed in (best_elapsed, best_elapsed + 0.001, best_elapsed + 0.05, best_elapsed + 1.0):
            training = {"time_s": card_time_s(init_s, best_elapsed), "init_time_s": init_s}
            best, run = fine_tuning_seconds(training, (10, run_elapsed))
            assert best <= run, (init_s, best_elapsed, run_elapsed, best, run)
            assert run == pytest.approx(run_elapsed, abs=0.05 + 1e-9)  # the run's seconds, to 0.1 s
    # the recorded case: best saved at 0.897 s (card 0.9 s), run ended at 0.898 s
    best, run = fine_tuning_seconds({"time_s": card_time_s(init_s, 0.897), "init_time_s": init_s}, (10, 0.898))
    assert best == run == pytest.approx(0.9)
    assert fine_tuning_seconds({"time_s": card_time_s(init_s, 0.897), "init_time_s": init_s}, None)[1] is None


def test_finetune_end_to_end_with_resume(source_model, tmp_path):
    microscope, out = _microscope(tmp_path), tmp_path / "my-tiny"
    args = dict(minutes=1.0, n_train=8, n_test=4, seed=5, workers=0)
    stages = []

    def interrupt(stage, done, total):
        stages.append(stage)
        if stage == "train" and done == 5:  # one step after the checkpoint at the end of epoch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(str(source_model), microscope, out, progress=interrupt, **args)
    assert stages[0] == "simulate training images" and "simulate calibration images" in stages
    checkpoint = torch.load(out / "train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 4
    store_files = {p: p.stat().st_mtime_ns for p in (out / "data").rglob("*") if p.is_file()}

    cli = ["finetune", "--model", str(source_model), "--microscope", str(microscope), "--out", str(out),
           "--minutes", "1", "--n-train", "8", "--n-test", "4", "--seed", "5", "--workers", "0"]
    runner = CliRunner()
    result = runner.invoke(app, cli)  # without --resume: refused, the run is kept
    assert result.exit_code == 2 and "--resume" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, cli[:-8] + ["--n-train", "16", "--n-test", "4", "--seed", "5", "--resume"])
    assert result.exit_code == 2 and "another n_train" in result.output

    result = runner.invoke(app, cli + ["--resume"])
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in store_files} == store_files  # the stores were not made again
    assert "specialised vs general" in result.output and "F1 fine-tuned" in result.output

    # a normal model, usable with --model <out>/model, whose card records the user's ranges
    model, card = load_model(out / "model")
    general = load_card(source_model)
    assert card.name == "tiny" and card.version == f"{general.version}+my-tiny"
    assert card.validity["energies_kV"] == [80.0] and card.validity["Cs_corrected_um"] == [-15.0, -10.0]
    assert card.validity["dose_e_per_A2"] == [1e4, 1e5] and card.validity["defocus_around_scherzer_A"] == [-20.0, 20.0]
    assert card.training["data"]["simulation"]["microscope"]["focal_spread_A"] == [20.0, 30.0]
    assert card.training["finetune"]["microscope"]["energies_eV"] == [80000.0]
    assert card.training["init_from"] == str(source_model)
    assert card.training["steps"] == 10  # continued from the checkpoint to the recipe's 5 epochs
    assert card.training["time_s"] >= general.training["time_s"]  # the general model's time included
    assert card.detection["threshold"] == card.training["threshold_scan"]["chosen"]
    assert card.detection["test_time_augmentation"] is True  # used as the general model is
    # the general model's calibration is never carried over: re-fitted on held-out images, or dropped and said so
    note = card.training["finetune"]["calibration"]
    assert card.calibration != general.calibration
    if card.calibration:
        assert note.startswith("refitted") and card.calibration["fit"]["seed"] == 7
    else:
        assert note.startswith("not refitted")
    assert card.evaluation["data"]["seed"] == 6 and card.evaluation["general_model"]["version"] == general.version

    # both models' figures, computed on the same test images
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["test_store"]["seed"] == 6 and summary["test_store"]["n"] == 4
    assert set(summary["overall"]) == {FINE_TUNED, PARENT}  # the user's own model is no shipped one
    for name in (FINE_TUNED, PARENT):
        m = summary["overall"][name]
        assert m["n_images"] == 4 and all(k in m for k in ("f1", "precision", "recall", "rmse_pm"))
        assert sum(r["n_images"] for r in summary["by_dose"]) == 4 and all(name in r for r in summary["by_dose"])
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["n_images"] == 4 and set(report["detectors"]) == {FINE_TUNED, PARENT, "baseline"}
    for name in (FINE_TUNED, PARENT):  # the summary's figures are the report's
        assert report["detectors"][name]["overall"]["0.5"]["f1"] == summary["overall"][name]["f1"]
    markdown = (out / "comparison.md").read_text()
    assert "| fine-tuned (tiny" in markdown and "| parent (tiny" in markdown and "By dose" in markdown
    assert "shipped" not in markdown and "F1 parent" in markdown
    # the time and steps of the run, not only those of the kept (best) model
    training = summary["training"]
    assert training["run_steps"] == 10 and training["budget_minutes"] == 1.0 and training["steps"] <= 10
    # the kept model was saved at or before the run's end; both times rounded alike (fine_tuning_seconds)
    assert training["minutes"] <= training["run_minutes"]
    assert f"best after {training['steps']} of 10 steps (" in markdown and "budget 1 min)" in markdown
    run = card.training["finetune"]["run"]
    assert run["steps"] == 10 and run["best_steps"] == card.training["steps"] and run["time_s"] >= run["best_time_s"]
    assert card.training["finetune"]["budget_minutes"] == 1.0 and card.training["finished"] is True

    # the card reads like any other, and the model detects
    result = runner.invoke(app, ["models", str(out / "model")])
    assert result.exit_code == 0 and "80 kV" in result.output and "-15…-10 µm" in result.output
    assert sum(p.numel() for p in model.parameters()) == card.training["parameters"]
    assert "fine-tuning: best after" in result.output and "run: finished" in result.output

    # killed after training, before finetune.json said so: resumed, nothing more is trained
    weights = (out / "train" / "model.safetensors").read_bytes()
    state = json.loads((out / "finetune.json").read_text())
    del state["trained_minutes"]
    (out / "finetune.json").write_text(json.dumps(state))
    result = runner.invoke(app, cli + ["--resume"])
    assert result.exit_code == 0, result.output
    assert (out / "train" / "model.safetensors").read_bytes() == weights
    assert torch.load(out / "train" / "checkpoint.pt", weights_only=True)["step"] == 10
    # resumed with another --minutes: the card keeps the budget it was trained with
    result = runner.invoke(app, cli[:-10] + ["--minutes", "0.5", "--n-train", "8", "--n-test", "4", "--seed", "5",
                                            "--workers", "0", "--resume"])
    assert result.exit_code == 0 and "not resumed" in result.output, result.output
    assert load_card(out / "model").training["finetune"]["budget_minutes"] == 1.0
    assert (out / "train" / "model.safetensors").read_bytes() == weights


def test_the_comparison_says_shipped_only_for_a_shipped_model(source_model):
    """A user's own parent model was called "shipped" in comparison.md."""
    assert general_label(resolve_model("graphene")) == GENERAL == "shipped"
    assert general_label(source_model) == PARENT == "parent"


@pytest.mark.slow
def test_finetune_shipped_graphene_from_the_command_line(tmp_path):
    """The user's command with the shipped model and recipe (256-px images), at the smallest sizes (~1 min)."""
    out = tmp_path / "my-graphene"
    result = CliRunner().invoke(app, ["finetune", "--model", "graphene", "--microscope", str(_microscope(tmp_path)),
                                      "--out", str(out), "--n-train", "16", "--n-test", "8", "--minutes", "0.05",
                                      "--workers", "0"])
    assert result.exit_code == 0, result.output
    _, card = load_model(out / "model")
    general = load_card(resolve_model("graphene"))
    assert card.version == f"{general.version}+my-graphene" and card.training["init_from"] == "graphene"
    assert card.validity["energies_kV"] == [80.0] and card.architecture == general.architecture
    assert card.training["time_s"] > general.training["time_s"]
    if not general.calibration:
        assert "not refitted" in card.training["finetune"]["calibration"] and not card.calibration
    else:  # re-fitted on the held-out images, or dropped
        assert card.calibration != general.calibration
    summary = json.loads((out / "comparison.json").read_text())
    assert {summary["overall"][n]["n_images"] for n in (FINE_TUNED, GENERAL)} == {8}


def test_a_negative_seed_is_refused_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["finetune", "--model", "gold", "--microscope", str(tmp_path / "m.toml"),
                                      "--out", str(tmp_path / "run"), "--seed", "-1"])
    assert result.exit_code == 2 and "--seed -1" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
