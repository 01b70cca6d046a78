"""Training: a tiny model for a few steps on a tiny store; resume; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from atomfinder.cli import app
from atomfinder.datasets.store import DatasetStore
from atomfinder.nn.card import load_model
from atomfinder.nn.train import TrainConfig, augment_batch, load_training_data, lr_factor, split_jobs, train

TINY = dict(name="tiny", depth=2, width=4, crop_px=32, batch_size=4, epochs=2, warmup_steps=2, checkpoint_every=3)


def test_config_round_trip(tmp_path):
    cfg = TrainConfig(**TINY)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "t.toml"
    path.write_text('[train]\nname = "tiny"\ndepth = 2\nwidth = 4\ngain_range = [0.9, 1.1]\n')
    loaded = TrainConfig.from_toml(path)
    assert loaded.gain_range == (0.9, 1.1) and loaded.depth == 2
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({"learning_rate": 1})


@pytest.mark.parametrize("text, message", [("[train]\ndepth = \n", "t.toml: not valid TOML (Invalid value"),
                                           ("[train]\nlearning_rate = 1\n", "t.toml: unknown training setting(s): learning_rate")])
def test_recipe_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        TrainConfig.from_toml(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_recipe_whose_init_from_model_is_missing_is_refused_naming_it_and_the_file(tmp_path, monkeypatch):
    """configs/graphene.toml fine-tunes runs/graphene-0.2/model, an earlier run (docs/guide/training.md)."""
    from pathlib import Path

    recipe = Path(__file__).parent.parent / "configs" / "graphene.toml"
    monkeypatch.chdir(tmp_path)  # no runs/ here
    result = CliRunner().invoke(app, ["train", "--config", str(recipe), "--data", str(tmp_path / "none.zarr"),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert f"{recipe}: init_from = 'runs/graphene-0.2/model'" in result.output
    assert "remove it to train from random weights" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_capped_validation_set_takes_images_from_every_validation_job_in_turn():
    from types import SimpleNamespace

    from atomfinder.nn.train import validation_split

    # 40 jobs of 16 images of one particle each; 4 validation jobs, capped at 8 images
    store = SimpleNamespace(meta={"samples_per_job": 16, "n": 640}, indices=np.arange(640))
    config = TrainConfig(validation_fraction=0.1, max_validation_images=8, seed=3)
    train_idx, val_idx = validation_split(store, config)
    _, val_jobs = split_jobs(40, 0.1, 3)
    assert sorted(set(val_idx // 16)) == sorted(val_jobs)  # all 4 specimens, 2 images each
    assert np.bincount(val_idx // 16, minlength=40)[val_jobs].tolist() == [2, 2, 2, 2]
    assert len(train_idx) == 36 * 16 and not set(train_idx // 16) & set(val_jobs)
    assert np.all(np.diff(val_idx) > 0)


def test_split_and_schedule():
    train_jobs, val_jobs = split_jobs(20, 0.1, 0)
    assert len(val_jobs) == 2 and len(train_jobs) == 18 and not set(train_jobs) & set(val_jobs)
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)
    assert lr_factor(20, 100, 10, time_fraction=1.0) == pytest.approx(0.0)  # the time budget anneals too


def test_augmentation_keeps_image_and_target_aligned(tiny_graphene_store):
    store = DatasetStore(tiny_graphene_store)
    cfg = TrainConfig(**TINY | {"gain_range": (1.0, 1.0), "offset_range": (0.0, 0.0), "extra_noise_std": (0.0, 0.0)})
    data = load_training_data(store, np.arange(len(store)), cfg.normalization)
    # a marker image: the image equals the atom target, so any misalignment shows
    data.images = data.targets[:, 1:2].astype(np.float32).copy()
    x, t, _ = augment_batch(data, np.random.default_rng(0), cfg)
    assert x.shape == (4, 1, 32, 32) and t.shape == (4, 2, 32, 32)
    np.testing.assert_array_equal(x[:, 0], t[:, 1])


def test_training_runs_saves_a_card_and_resumes_identically(tiny_graphene_store, tmp_path):
    store = DatasetStore(tiny_graphene_store)
    cfg = TrainConfig(**TINY)
    data = load_training_data(store, np.arange(len(store)), cfg.normalization)
    assert np.abs(data.images.mean()) < 0.2  # normalised

    calls = []
    stem = train(cfg, data, tmp_path / "a", validate=lambda m, c: calls.append(c.name) or {"f1": 0.5})
    assert calls == ["tiny", "tiny"]  # validated once per epoch (2 epochs of 2 steps)
    model, card = load_model(stem)
    assert card.class_names == ("C",) and card.detection["min_distance_A"] == cfg.min_distance_A
    assert card.training["steps"] == 4 and card.training["time_s"] >= 0
    assert (tmp_path / "a" / "learning_curves.csv").read_text().count("\n") == 3
    assert (tmp_path / "a" / "learning_curves.png").stat().st_size > 1000
    assert set(load_file(f"{stem}.safetensors")) == set(model.state_dict())

    # interrupted after step 3 (a checkpoint step), then resumed: same weights as one run
    def stop(step, total, parts):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, tmp_path / "b", progress=stop)
    train(cfg, data, tmp_path / "b", resume=True)
    train(cfg, data, tmp_path / "c")
    wb = load_file(str(tmp_path / "b" / "model.safetensors"))
    wc = load_file(str(tmp_path / "c" / "model.safetensors"))
    for k in wc:
        torch.testing.assert_close(wb[k], wc[k], msg=k)
    with pytest.raises(ValueError, match="another training config"):
        train(TrainConfig(**TINY | {"width": 8}), data, tmp_path / "b", resume=True)


def test_cli_train_and_evaluate(tiny_graphene_store, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('[train]\nname = "tiny"\ndepth = 2\nwidth = 4\ncrop_px = 32\nbatch_size = 4\nepochs = 1\n'
                   'validation_fraction = 0.25\n')
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--config", str(cfg), "--data", str(tiny_graphene_store), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "run" / "model"), "--data", str(tiny_graphene_store),
                                 "--report", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(report["detectors"]) == {"network", "baseline"}
    assert "baseline" in (tmp_path / "rep" / "report.md").read_text()
    # the threshold, chosen on the run's own validation images and stored in its card
    stem = tmp_path / "run" / "model"
    result = runner.invoke(app, ["tune-threshold", "--model", str(stem), "--data", str(tiny_graphene_store),
                                 "--thresholds", "0.2,0.5,0.8", "--write-card"])
    assert result.exit_code == 0, result.output
    card = json.loads(stem.with_suffix(".json").read_text())
    scan = card["training"]["threshold_scan"]
    assert scan["validation_images"] == 2 and [r["threshold"] for r in scan["rows"]] == [0.2, 0.5, 0.8]
    assert card["detection"]["threshold"] == scan["chosen"] and scan["previous_threshold"] == 0.5
    assert load_model(stem)[1].detection["threshold"] == scan["chosen"]
    result = runner.invoke(app, ["tune-threshold", "--model", str(stem), "--data", str(tiny_graphene_store), "--thresholds", "0.5,1.5"])
    assert result.exit_code == 2 and "--thresholds" in result.output
    card["training"]["data"]["seed"] = 99  # as if trained on another store
    stem.with_suffix(".json").write_text(json.dumps(card))
    result = runner.invoke(app, ["tune-threshold", "--model", str(stem), "--data", str(tiny_graphene_store)])
    assert result.exit_code == 2 and "not the training store" in result.output and "Traceback" not in result.output
    # errors are one line, no traceback
    result = runner.invoke(app, ["evaluate", "--model", "no-such-model", "--data", str(tiny_graphene_store)])
    assert result.exit_code == 2 and "Traceback" not in result.output and "no-such-model" in result.output
    result = runner.invoke(app, ["train", "--config", str(cfg), "--data", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 2 and "missing.zarr" in result.output


def test_resume_may_change_threads_time_limit_and_version(tiny_graphene_store, tmp_path, capsys):
    """A run killed after step 3 of 4 resumes under other operational settings (threads, time limit,
    version): it trains the last step and its card carries the new settings; a finished run resumed
    again returns at once, its weights, steps and version untouched."""
    store = DatasetStore(tiny_graphene_store)
    cfg = TrainConfig(**TINY)  # 8 images, batch 4: 2 steps per epoch, 4 in all; a checkpoint at step 3
    data = load_training_data(store, np.arange(len(store)), cfg.normalization)
    run = tmp_path / "r"

    def stop(step, total, parts):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, run, progress=stop)
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3
    killed = load_file(str(run / "model.safetensors"))
    assert load_model(run / "model")[1].training["steps"] == 2  # the model of epoch 1
    changed = {"num_threads": 1, "max_minutes": 5.0, "version": "0.2"}
    stem = train(TrainConfig(**TINY | changed), data, run, resume=True)
    _, card = load_model(stem)
    assert card.version == "0.2" and card.training["steps"] == 4 and card.training["finished"] is True
    assert {k: card.training["config"][k] for k in changed} == changed
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
    resumed = load_file(str(run / "model.safetensors"))
    assert any(not torch.equal(killed[k], resumed[k]) for k in resumed)  # trained on: new weights
    # finished: resumed again (another version), nothing is trained and nothing renamed
    capsys.readouterr()
    weights = (run / "model.safetensors").read_bytes()
    stem = train(TrainConfig(**TINY | changed | {"version": "0.3"}), data, run, resume=True)
    assert "the run had finished (all 4 steps, at step 4); nothing more to train" in capsys.readouterr().out
    _, card = load_model(stem)
    assert card.version == "0.2" and card.training["steps"] == 4 and card.training["finished"] is True
    assert (run / "model.safetensors").read_bytes() == weights
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
    # a recipe setting is not operational: refused
    with pytest.raises(ValueError, match="another training config"):
        train(TrainConfig(**TINY | {"lr": 1e-2}), data, run, resume=True)


def test_fine_tuning_starts_from_the_given_model(tiny_graphene_store, tmp_path):
    store = DatasetStore(tiny_graphene_store)
    data = load_training_data(store, np.arange(len(store)), TrainConfig(**TINY).normalization)
    first = train(TrainConfig(**TINY), data, tmp_path / "a")
    _, first_card = load_model(first)
    # lr = 0: the weights stay those of the first model (BatchNorm statistics still move)
    tuned = train(TrainConfig(**TINY | {"init_from": str(first), "lr": 0.0, "epochs": 1}), data, tmp_path / "b")
    wa, wb = load_file(f"{first}.safetensors"), load_file(f"{tuned}.safetensors")
    convs = [k for k in wa if k.endswith("weight") and wa[k].ndim == 4]
    assert convs
    for k in convs:
        torch.testing.assert_close(wa[k], wb[k], msg=k)
    _, card = load_model(tuned)
    assert card.training["init_from"] == str(first)
    assert card.training["init_time_s"] == first_card.training["time_s"]
    assert card.training["time_s"] >= first_card.training["time_s"]  # the whole time spent on the weights
    with pytest.raises(ValueError, match="architecture"):
        train(TrainConfig(**TINY | {"init_from": str(first), "width": 8}), data, tmp_path / "c")


def test_shipped_recipes_parse():
    import tomllib
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
    recipes = [p for p in configs if "train" in tomllib.loads(p.read_text())]
    assert {p.stem for p in recipes} >= {"graphene", "gold", "mos2-focal"}
    for path in recipes:
        cfg = TrainConfig.from_toml(path)
        assert path.stem in (cfg.name, f"{cfg.name}-{cfg.version}")
        assert "atomfinder simulate" in path.read_text()  # the recipe says how its data was made
    # the other files are simulation overrides that `simulate --config` accepts
    from atomfinder.datasets.generate import load_config

    for path in set(configs) - set(recipes):
        assert load_config(path).system in ("graphene", "gold", "mos2")


def test_column_heights_above_the_head_are_learned_as_its_last_class():
    from atomfinder.nn.train import TrainingData, cap_heights

    heights = np.full((1, 4, 4), -1, dtype=np.int16)
    heights[0, 1, 1], heights[0, 2, 2], heights[0, 3, 3] = 5, 32, 37
    data = TrainingData(np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 2, 4, 4), np.float16), heights,
                        np.array([0.1]), ("Au",))
    capped, n = cap_heights(data, 32)
    assert n == 1 and capped.heights[0, 3, 3] == 32 and capped.heights[0, 1, 1] == 5
    assert capped.heights[0, 0, 0] == -1 and capped.heights.dtype == np.int16
    assert data.heights[0, 3, 3] == 37  # the input is not changed
    same, n = cap_heights(capped, 32)
    assert n == 0 and same is capped


def test_export_last_writes_the_checkpoint_weights_as_the_model(tiny_graphene_store, tmp_path):
    """The best-by-F1 model is replaced by the last weights, with the checkpoint's steps and time; the CLI
    does it without training (no --config or --data), and a run without a checkpoint is a one-line error."""
    from typer.testing import CliRunner

    from atomfinder.cli import app
    from atomfinder.nn.card import load_card

    store = DatasetStore(tiny_graphene_store)
    cfg = TrainConfig(**TINY)
    data = load_training_data(store, np.arange(len(store)), cfg.normalization)
    scores = iter([{"f1": 0.9}, {"f1": 0.5}])  # the first epoch is the best
    stem = train(cfg, data, tmp_path / "run", validate=lambda m, c: next(scores))
    assert load_card(stem).training["steps"] == 2
    last = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--export-last"])
    assert result.exit_code == 0, result.output
    card = load_card(stem)
    assert card.training["steps"] == 4 and card.training["weights"] == "last" and card.training["finished"] is True
    assert card.training["last_val"]["f1"] == 0.5 and "best_val" not in card.training
    weights = load_file(f"{stem}.safetensors")
    for k, v in last.items():
        torch.testing.assert_close(weights[k], v, msg=k)
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "none"), "--export-last"])
    assert result.exit_code == 2 and "not a training run" in result.output
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "needs --config and --data" in result.output


def test_resume_refuses_another_store_and_the_command_refuses_to_restart_over_a_run(tiny_graphene_store, tmp_path):
    """A checkpoint records its store (seed, size, system): resuming it on other data is a one-line error,
    not a silent change of training set; `train` without --resume does not overwrite a run, and --resume
    without a checkpoint creates nothing."""
    from typer.testing import CliRunner

    from atomfinder.cli import app

    store = DatasetStore(tiny_graphene_store)
    cfg = TrainConfig(**TINY)
    data = load_training_data(store, np.arange(len(store)), cfg.normalization)
    recipe = {"store": "a.zarr", "seed": 1, "n": 8, "simulation": store.meta["config"]}
    train(cfg, data, tmp_path / "run", recipe=recipe)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["finished"] is True
    with pytest.raises(ValueError, match=r"was trained on a\.zarr \(seed 1, 8 samples\), not on b\.zarr \(seed 2"):
        train(cfg, data, tmp_path / "run", resume=True, recipe=recipe | {"store": "b.zarr", "seed": 2})
    train(cfg, data, tmp_path / "run", resume=True, recipe=recipe)  # the same store: fine

    toml = tmp_path / "tiny.toml"
    toml.write_text("[train]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in TINY.items()))
    run = ["train", "--config", str(toml), "--data", str(tiny_graphene_store)]
    result = CliRunner().invoke(app, run + ["--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "holds a run (checkpoint.pt); continue it with --resume" in result.output
    result = CliRunner().invoke(app, run + ["--out", str(tmp_path / "new"), "--resume"])
    assert result.exit_code == 2 and "nothing to resume" in result.output and not (tmp_path / "new").exists()


@pytest.mark.parametrize("line, field", [
    ("epochs = 0", "epochs"), ("epochs = -3", "epochs"), ("batch_size = 0", "batch_size"),
    ("num_threads = 0", "num_threads"), ("crop_px = 0", "crop_px"), ("crop_px = 2", "crop_px"),
    ("validation_fraction = 1.5", "validation_fraction"), ("lr = -1", "lr"), ("match_radius_A = -1", "match_radius_A"),
    ("max_minutes = -1", "max_minutes"), ("depth = 0", "depth"), ("width = 0", "width"), ('norm = "layer"', "norm"),
    ("max_validation_images = 0", "max_validation_images"), ("checkpoint_every = 0", "checkpoint_every"),
    ("seed = -1", "seed"), ("warmup_steps = -1", "warmup_steps"), ("weight_decay = -0.1", "weight_decay"),
    ("threshold = 1.5", "threshold"), ("min_distance_A = 0", "min_distance_A"), ("gain_range = [0, 1]", "gain_range"),
    ("extra_noise_std = [0.3, 0.1]", "extra_noise_std"), ('class_weights = "none"', "class_weights"),
    ("class_weights = [1, -1]", "class_weights"), ('normalization = {kind = "loc"}', "normalization.kind"),
    ("normalization = {window_A = 12.0}", "normalization"), ("height_head = 1", "height_head"),
    ("height_head = true", "max_height"), ("depth = 30", "depth"), ('name = ""', "name"),
    ("honeycomb = {bond_A = [1, 2]}", "honeycomb"), ("init_from = 3", "init_from"),
])
def test_every_training_setting_is_checked_in_one_line_naming_the_file_and_field(tmp_path, line, field):
    """Bad settings were caught late (a traceback, or 'error: high <= 0') or never (epochs 0 wrote no model
    but said it did; max_minutes -1 trained one step)."""
    path = tmp_path / "t.toml"
    path.write_text(f"[train]\nname = \"tiny\"\n{line}\n".replace('name = "tiny"\nname', "name"))
    with pytest.raises(ValueError) as info:
        TrainConfig.from_toml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}") and "\n" not in message, message


def test_a_refused_start_makes_no_run_folder(tiny_graphene_store, tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text('[train]\nname = "tiny"\ndepth = 2\nwidth = 4\ncrop_px = 32\nbatch_size = 4\nepochs = 0\n')
    result = CliRunner().invoke(app, ["train", "--config", str(cfg), "--data", str(tiny_graphene_store),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and f"{cfg}: epochs must be an integer >= 1; got 0" in result.output
    assert "best model" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    # a start that train() itself refuses (another architecture than init_from's) leaves none either
    store = DatasetStore(tiny_graphene_store)
    data = load_training_data(store, np.arange(len(store)), TrainConfig(**TINY).normalization)
    first = train(TrainConfig(**TINY | {"epochs": 1}), data, tmp_path / "a")
    with pytest.raises(ValueError, match="architecture"):
        train(TrainConfig(**TINY | {"init_from": str(first), "width": 8}), data, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def _weights(stem) -> dict:
    return {k: v.clone() for k, v in load_file(f"{stem}.safetensors").items()}


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_a_run_that_reached_its_end_trains_nothing(tiny_graphene_store, tmp_path, capsys):
    """A run that stopped at its time limit trained one more step on every --resume (lr 0, but the BatchNorm
    statistics moved) and replaced its best model; a larger time budget still continues it."""
    store = DatasetStore(tiny_graphene_store)
    data = load_training_data(store, np.arange(len(store)), TrainConfig(**TINY).normalization)
    timed = TrainConfig(**TINY | {"epochs": 3, "max_minutes": 1e-6})  # out of time after the first of 6 steps
    stem = train(timed, data, tmp_path / "t")
    state = torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=True)
    assert state["finished"] is True and state["step"] == 1
    before = _weights(stem)
    for _ in range(2):
        assert train(timed, data, tmp_path / "t", resume=True) == stem
        assert torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=True)["step"] == 1
        assert _same_weights(before, _weights(stem))
    assert "the run had finished (its time limit" in capsys.readouterr().out
    # a run at its last step: the same
    full = TrainConfig(**TINY | {"epochs": 1})
    stem = train(full, data, tmp_path / "s")
    before = _weights(stem)
    train(full, data, tmp_path / "s", resume=True)
    assert torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert _same_weights(before, _weights(stem))
    # killed at the end (checkpoint not yet marked finished): resumed, it is marked, and nothing is trained
    state = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=True)
    torch.save(state | {"finished": False}, tmp_path / "s" / "checkpoint.pt")
    train(full, data, tmp_path / "s", resume=True)
    assert torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=True)["finished"] is True
    assert _same_weights(before, _weights(stem))
    # a larger time budget is a request to go on
    train(TrainConfig(**TINY | {"epochs": 3, "max_minutes": 0.0}), data, tmp_path / "t", resume=True)
    assert torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=True)["step"] == 6


def test_a_killed_run_leaves_a_model_marked_unfinished(tiny_graphene_store, tmp_path):
    """A killed `train` left RUN/model.* that `models` and `detect` took for a finished model."""
    from atomfinder.cli import unfinished_model_warning
    from atomfinder.nn.card import list_models, load_card, resolve_model

    store = DatasetStore(tiny_graphene_store)
    cfg = TrainConfig(**TINY)
    data = load_training_data(store, np.arange(len(store)), cfg.normalization)

    def kill(step, total, parts):
        if step == 3:  # after the first epoch's model (step 2)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, tmp_path / "run", progress=kill)
    stem = tmp_path / "run" / "model"
    card = load_card(stem)
    assert card.training["finished"] is False and card.training["steps"] == 2
    runner = CliRunner()
    result = runner.invoke(app, ["models", str(stem)])
    assert result.exit_code == 0 and "run: NOT finished: stopped at step 2" in result.output, result.output
    assert "weights kept: the best by validation F1" not in result.output  # no validation: none claimed
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(0).random((48, 48)).astype(np.float32))
    result = runner.invoke(app, ["detect", str(img), "--model", str(stem), "--sampling", "0.12",
                                 "--out", str(tmp_path / "det")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "training run had not finished" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: model tiny 1.0: its training run had not finished")

    train(cfg, data, tmp_path / "run", resume=True)
    card = load_card(stem)
    assert card.training["finished"] is True and card.training["steps"] == 4
    result = runner.invoke(app, ["models", str(stem)])
    assert "run: finished" in result.output and "NOT finished" not in result.output
    # exported last weights say so too
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--export-last"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["models", str(stem)])
    assert "weights kept: the run's last (step 4" in result.output and "run: finished" in result.output
    # shipped cards record neither: no warning, no note
    for name in list_models():
        assert unfinished_model_warning(load_card(resolve_model(name))) is None
    result = runner.invoke(app, ["models", "graphene"])
    assert result.exit_code == 0 and "run:" not in result.output and "NOT finished" not in result.output


def test_export_last_refuses_the_options_it_would_ignore(tiny_graphene_store, tmp_path):
    """--export-last silently ignored --resume, --config and --data (even a store that does not exist)."""
    store = DatasetStore(tiny_graphene_store)
    cfg = TrainConfig(**TINY | {"epochs": 1})
    train(cfg, load_training_data(store, np.arange(len(store)), cfg.normalization), tmp_path / "run")
    before = _weights(tmp_path / "run" / "model")
    base = ["train", "--out", str(tmp_path / "run"), "--export-last"]
    for extra, named in ((["--resume"], "--resume"), (["--config", str(tmp_path / "none.toml")], "--config"),
                         (["--data", str(tmp_path / "none.zarr")], "--data")):
        result = CliRunner().invoke(app, base + extra)
        text = result.output.strip()
        assert result.exit_code == 2 and len(text.splitlines()) == 1 and "Traceback" not in text, text
        assert f"leave out {named}" in text
    assert _same_weights(before, _weights(tmp_path / "run" / "model"))


def test_a_new_card_records_the_nominal_pixel_size_of_the_simulation(tiny_graphene_store, tmp_path):
    """The card's pixel size was the median of the jittered training pixel sizes (0.1039 Å/px for a 0.1 Å/px
    recipe); it is the simulation's nominal one. Without a recipe, the median; written cards keep theirs."""
    from atomfinder.nn.card import list_models, load_card, resolve_model
    from atomfinder.nn.train import card_sampling_A

    store = DatasetStore(tiny_graphene_store)
    cfg = TrainConfig(**TINY | {"epochs": 1})
    data = load_training_data(store, np.arange(len(store)), cfg.normalization)
    sim = store.meta["config"]
    nominal = sim["microscope"]["sampling_A"]
    data.sampling_A = nominal * np.array([1.04, 1.03, 1.05, 0.99, 1.02, 1.04, 1.01, 1.03])  # a drawn jitter
    stem = train(cfg, data, tmp_path / "run", recipe={"store": "s.zarr", "n": 8, "seed": 0, "simulation": sim})
    assert load_card(stem).sampling_A == nominal
    assert card_sampling_A(data, None) == pytest.approx(float(np.median(data.sampling_A)))
    for name in list_models():  # shipped cards are read as stored
        stored = json.loads(resolve_model(name).with_suffix(".json").read_text())["sampling_A"]
        assert load_card(resolve_model(name)).sampling_A == stored


def test_init_from_a_model_of_other_class_names_warns(tiny_graphene_store, tmp_path):
    """init_from = "graphene" on a gold store (['Au']) trained without a word."""
    import dataclasses

    from atomfinder.nn.train import TrainingWarning

    store = DatasetStore(tiny_graphene_store)
    cfg = TrainConfig(**TINY | {"epochs": 1})
    data = load_training_data(store, np.arange(len(store)), cfg.normalization)
    first = train(cfg, data, tmp_path / "a")
    with pytest.warns(TrainingWarning) as record:
        train(TrainConfig(**TINY | {"epochs": 1, "init_from": str(first)}),
              dataclasses.replace(data, class_names=("Au",)), tmp_path / "b")
    assert len(record) == 1 and "trained on the classes C, these data have Au" in str(record[0].message)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingWarning)  # the same classes: no warning
        train(TrainConfig(**TINY | {"epochs": 1, "init_from": str(first)}), data, tmp_path / "c")
