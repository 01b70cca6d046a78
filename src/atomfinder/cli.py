"""The ``atomfinder`` command line: parses arguments and calls the API.

Errors in the input are reported as one line (``error: ...``) with a non-zero
exit code; ``--debug`` (before or after the command's name) shows the traceback
instead.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Optional

import typer
import numpy as np
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

console = Console(stderr=True, soft_wrap=True)  # paths are never broken across lines
_state = {"debug": False}


def _without_flag_types(params: list) -> list:
    """Flags take no value: show none in --help (typer writes ``<bool>`` beside them)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Group(TyperGroup):
    """The ``atomfinder`` group; its flags show no value type in --help."""

    def get_params(self, ctx: Any) -> list:
        return _without_flag_types(super().get_params(ctx))


class _Command(TyperCommand):
    """A subcommand that also takes ``--debug`` after its name (as the group does before it),
    and whose flags show no value type in --help."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[:end]:
            _state["debug"] = True
            args = [a for a in args[:end] if a != "--debug"] + args[end:]
        return super().parse_args(ctx, args)

    def get_params(self, ctx: Any) -> list:
        return _without_flag_types(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="Find atoms and atomic columns in HRTEM images with networks trained on multislice simulations.",
)


def _print_version(value: bool) -> None:
    """``--version``: print ``atomfinder <version>`` and stop."""
    if value:
        from atomfinder import __version__

        typer.echo(f"atomfinder {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (also after the command's name)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
) -> None:
    _state["debug"] = debug


def _run(action: Callable[[], Any], resume_hint: str | None = None) -> Any:
    """Run ``action``; turn expected failures into one-line errors."""
    try:
        return action()
    except KeyboardInterrupt:
        hint = f"; {resume_hint}" if resume_hint else ""
        console.print(f"[yellow]interrupted[/yellow]{hint}")
        raise typer.Exit(130) from None
    except (ValueError, OSError, KeyError) as exc:
        if _state["debug"]:
            raise
        from rich.markup import escape

        # one line per problem: several unusable inputs (InputErrors) are each named
        messages = list(getattr(exc, "problems", ())) or [str(exc).splitlines()[0] if str(exc) else type(exc).__name__]
        for message in messages:
            console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


class _LogProgress:
    """Stand-in for a rich progress bar when stderr is not a terminal (nohup, CI logs).

    Prints a plain line at every 5 % (and at the end) instead of redrawing a bar.
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> "_LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        self.tasks[len(self.tasks)] = {"total": total, "last": -1, "t0": time.time()}
        return len(self.tasks) - 1

    def update(self, task: int, completed: float | None = None, total: float | None = None,
               description: str | None = None, **_: Any) -> None:
        t = self.tasks[task]
        if total is not None:
            t["total"] = total
        if description is not None:
            self.description = description
        if completed is None or not t["total"]:
            return
        bucket = int(20 * completed / t["total"])
        if bucket > t["last"] or completed >= t["total"]:
            t["last"] = bucket
            elapsed = time.time() - t["t0"]
            console.print(f"{self.description}: {completed:.0f}/{t['total']:.0f} ({elapsed:.0f} s)", highlight=False)


def _progress(description: str):
    """A progress bar on a terminal, periodic plain lines in a log file."""
    if not console.is_terminal:
        return _LogProgress(description)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@app.command(cls=_Command)
def simulate(
    system: str = typer.Option(..., "--system", help="graphene, gold or mos2."),
    n: int = typer.Option(..., "--n", min=1, help="Number of samples."),
    out: Path = typer.Option(..., "--out", help="Output zarr store (DIR.zarr); an unfinished one is resumed."),
    seed: int = typer.Option(0, "--seed", help="Master seed: same config and seed, identical arrays."),
    config: Optional[Path] = typer.Option(None, "--config", help=f"TOML/JSON simulation config ({escape('[simulation]')} table)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Local worker processes (default: all CPUs; 0: in this process)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="dask.distributed scheduler address (tcp://host:8786)."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Write a PNG grid of images with their labels."),
) -> None:
    """Simulate labelled HRTEM training data into a zarr store."""

    def action() -> None:
        # every setting is checked before the store is created (and before minutes of simulation)
        if seed < 0:
            raise ValueError(f"--seed {seed}: give an integer >= 0 (random seeds are not negative)")
        if workers is not None and scheduler is not None:
            raise ValueError("give --workers or --scheduler, not both")
        if preview is not None:
            from atomfinder._figures import figure_format

            try:
                figure_format(preview)
            except ValueError as exc:
                raise ValueError(f"--preview {exc}") from None
        from atomfinder.datasets.generate import load_config, simulate_to_store

        cfg = load_config(config, system)
        with _progress(f"simulate {cfg.system}") as bar:
            task = bar.add_task(f"simulate {cfg.system}", total=n)
            simulate_to_store(
                cfg, n, out, seed=seed, workers=workers, scheduler=scheduler,
                progress=lambda done, total: bar.update(task, completed=done),
            )
        console.print(f"wrote {n} samples to {out}")
        if preview is not None:
            path = write_preview(out, preview)
            console.print(f"preview: {path}")

    _run(action, resume_hint="run the same command again to resume")


def write_preview(store_path: Path, png: Path, count: int = 8) -> Path:
    """Draw the first ``count`` samples of a store with their ground-truth sites."""
    from atomfinder.analysis.plots import preview_grid
    from atomfinder.datasets.store import DatasetStore

    store = DatasetStore(store_path)
    if store.meta["frames"] > 1:
        count = min(count, 4)  # focal series: one row of frames per sample
    # spread the picks over the store, so that several structures are shown
    picks = np.unique(np.linspace(0, len(store) - 1, min(count, len(store))).round().astype(int))
    images = store.array("images", store.indices[picks])
    imgs, xys, labs, titles, samplings = [], [], [], [], []
    for row, i in enumerate(picks):
        gt = store.ground_truth(int(i))
        frames = store.microscope(int(i))
        m = frames[0]
        for f, frame in enumerate(images[row]):
            imgs.append(frame)
            xys.append(gt["positions_px"])
            labs.append(gt["labels"])
            samplings.append(float(gt["sampling_A"]))
            titles.append(
                f"#{i}{f'.{f}' if len(images[row]) > 1 else ''}: {m['energy_eV'] / 1e3:.0f} kV, "
                f"df {frames[f]['defocus_A']:.0f} Å, Cs {m['Cs_A'] / 1e4:.0f} µm, "
                f"{m['dose_e_per_A2']:.0e} e/Å²"
            )
    columns = images.shape[1] if images.shape[1] > 1 else 4
    return preview_grid(imgs, xys, labs, store.class_names, png, titles=titles, columns=columns, sampling_A=samplings)


@app.command(cls=_Command)
def train(
    config: Optional[Path] = typer.Option(None, "--config", help=f"Training recipe (TOML with a {escape('[train]')} table), e.g. configs/graphene.toml."),
    data: Optional[Path] = typer.Option(None, "--data", help="Training store made by `atomfinder simulate`."),
    out: Path = typer.Option(..., "--out", help="Run directory: checkpoint, learning curves, best model."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/checkpoint.pt."),
    export_last: bool = typer.Option(
        False, "--export-last",
        help="Do not train: write the run's last weights (RUN/checkpoint.pt) as RUN/model instead of the best by "
             "validation F1."),
) -> None:
    """Train a model on a simulated store; keeps the best model by validation F1."""

    def action() -> None:
        if export_last:
            given = [flag for flag, value in (("--resume", resume), ("--config", config), ("--data", data)) if value]
            if given:
                raise ValueError(f"--export-last does not train: it writes {out}/checkpoint.pt's weights as the model "
                                 f"and reads nothing else; leave out {', '.join(given)}")
            from atomfinder.nn.train import export_last as export

            stem = export(out)
            console.print(f"last weights: {stem}.safetensors (+ .json)")
            from atomfinder.nn.card import load_card

            training = load_card(stem).training
            if training.get("finished") is False:
                console.print(f"[yellow]warning:[/yellow] {escape(str(out))}: the run was stopped at step "
                              f"{training.get('steps')}, before its end: these weights never saw the end of the "
                              "learning-rate schedule (continue it with --resume first)", highlight=False, soft_wrap=True)
            return
        if config is None or data is None:
            raise ValueError("training needs --config and --data")
        if resume and not (out / "checkpoint.pt").is_file():
            raise ValueError(f"{out}: nothing to resume (no checkpoint.pt); leave out --resume to start a run")
        if not resume and (out / "checkpoint.pt").is_file():
            raise ValueError(f"{out}: holds a run (checkpoint.pt); continue it with --resume, or give another --out")
        from atomfinder.analysis.evaluate import samples_from_store, validation_scorer
        from atomfinder.datasets.store import DatasetStore
        from atomfinder.nn.train import TrainConfig, TrainingWarning, load_training_data, validation_split
        from atomfinder.nn.train import train as run_training

        cfg = TrainConfig.from_toml(config)
        if cfg.init_from:  # before minutes of loading the data
            from atomfinder.nn.card import resolve_model

            try:
                resolve_model(cfg.init_from)
            except ValueError as exc:
                raise ValueError(f"{config}: init_from = {cfg.init_from!r} (the model this recipe fine-tunes) cannot be "
                                 f"used: {str(exc).splitlines()[0]}; make that run first (the recipe's first lines say "
                                 "how), set init_from to a shipped model's name, or remove it to train from random "
                                 "weights") from None
        store = DatasetStore(data)
        if len(store) < 2:
            raise ValueError(f"{data}: needs at least 2 finished samples, has {len(store)}")
        train_idx, val_idx = validation_split(store, cfg)
        console.print(f"{len(train_idx)} training and {len(val_idx)} validation images from {data}")
        training_data = load_training_data(store, train_idx, cfg.normalization)
        validate = validation_scorer(list(samples_from_store(store, val_idx)), cfg.match_radius_A) if len(val_idx) else None
        sim = store.meta["config"]
        offsets = ()
        if store.meta["frames"] > 1:
            step = float(np.mean(sim["focal_step_A"]))
            offsets = tuple(i * step for i in range(store.meta["frames"]))
        recipe = {"store": str(data), "n": store.meta["n"], "seed": store.meta["seed"], "simulation": sim}
        with _progress(f"train {cfg.name}") as bar, _warning_lines(TrainingWarning):
            task = bar.add_task(f"train {cfg.name}", total=None)

            def progress(step: int, total: int, parts: dict) -> None:
                bar.update(task, completed=step, total=total, description=f"train {cfg.name} loss {parts['total']:.3f}")

            stem = run_training(cfg, training_data, out, validate=validate, resume=resume, recipe=recipe,
                                defocus_offsets_A=offsets, progress=progress)
        if not stem.with_suffix(".safetensors").is_file():
            raise ValueError(f"{out}: the run wrote no model ({stem.name}.safetensors)")
        console.print(f"best model: {stem}.safetensors (+ .json); curves: {out / 'learning_curves.png'}")

    _run(action, resume_hint="continue with the same command and --resume")


def _frame_choice(text: str, n_frames: int) -> int | str:
    """``--versus-frame``: ``"middle"`` or a 0-based frame index below ``n_frames``."""
    if text.strip().lower() == "middle":
        return "middle"
    try:
        index = int(text)
    except ValueError:
        raise ValueError(f"--versus-frame {text!r}: give 'middle' or a frame index") from None
    if not 0 <= index < n_frames:
        raise ValueError(f"--versus-frame {index}: the store has frames 0..{n_frames - 1}")
    return index


@app.command(cls=_Command)
def evaluate(
    model: str = typer.Option(..., "--model", help="Shipped model name or path to <stem>.safetensors/.json."),
    data: Path = typer.Option(..., "--data", help="Test store made by `atomfinder simulate` (a seed never used in training)."),
    report: Path = typer.Option(Path("report"), "--report", help="Directory for report.json, report.md and plots."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Score the conventional pipeline on the same images."),
    write_card: bool = typer.Option(False, "--write-card", help="Store the overall and per-dose figures in the model's card."),
    border: float = typer.Option(1.0, "--border", help="Width (Å) of the band along the image edge where sites and detections are ignored; 0 scores everything."),
    structures: bool = typer.Option(True, "--structures/--no-structures", help="Rebuild each job's structure (no imaging; stores with one structure per job, e.g. gold) for the tables by particle shape and support."),
    versus: str = typer.Option("", "--versus", help="A second model scored on the same images, e.g. the single-image gold model beside gold-focal; a single-image model sees the middle frame of a focal series, its atoms moved into frame 0's grid by the frame's simulated drift."),
    versus_frame: str = typer.Option("middle", "--versus-frame", metavar="middle|INDEX", help="The frame of a focal series a single-image --versus model sees: the middle one, or a 0-based index (0: the least underfocused)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the report of an earlier run in --report (refused otherwise)."),
) -> None:
    """Score a model (and the conventional baseline) against the exact ground truth.

    The report breaks the scores down by dose, defocus and spherical aberration and,
    where the structures can be rebuilt, by particle shape and support. With
    ``--versus``, a second model is scored on the same images, so the gain of a
    focal series over a single image is measured on the same ground truth.
    """

    def action() -> None:
        from atomfinder.analysis.evaluate import (
            baseline_detector,
            compare,
            network_detector,
            recipe_defocus_edges,
            samples_from_store,
            store_structure_info,
        )
        from atomfinder.analysis.report import write_report
        from atomfinder.datasets.store import DatasetStore
        from atomfinder.nn.card import load_model

        if versus_frame.strip().lower() != "middle" and not versus:
            raise ValueError(f"--versus-frame {versus_frame}: the frame a --versus model sees; give --versus too")
        warned: list[str] = []  # printed now, and written at the top of the report

        def warn(text: str) -> None:
            warned.append(text)
            console.print(f"[yellow]warning:[/yellow] {escape(text)}", highlight=False, soft_wrap=True)

        stem, shadow = _resolve_model_loudly("--model", model)
        if write_card:
            _check_card_writable(model, stem)
        net, card = load_model(stem)
        store = DatasetStore(data)
        n_scored, n_simulated = len(store), int(store.meta["n"])
        if n_scored == 0:
            raise ValueError(f"{data}: no finished images (0 of {n_simulated} simulated): nothing to score; "
                             "finish the simulation first")
        if store.meta["frames"] != card.in_channels and card.in_channels > 1:
            raise ValueError(f"{data}: has {store.meta['frames']} frames per sample, model {card.name} needs {card.in_channels}")
        if tuple(store.class_names) != tuple(card.class_names):
            raise ValueError(f"{data}: classes {store.class_names} do not match model {card.name} {card.class_names}")
        if n_scored < n_simulated and write_card:
            raise ValueError(f"{data}: only {n_scored} of its {n_simulated} images are simulated (an unfinished "
                             "store); its scores are not written into the card: finish the simulation first")
        on_training = _training_store_problem(card, store, data, write_card)
        on_calibration = _calibration_store_problem(card, store, data, write_card)
        detectors = {"network": network_detector(net, card)}
        if versus:
            other_stem, other_shadow = _resolve_model_loudly("--versus", versus)
            other_net, other = load_model(other_stem)
            if tuple(other.class_names) != tuple(card.class_names):
                raise ValueError(f"--versus {versus}: classes {other.class_names} differ from model {card.name} {card.class_names}")
            if other.in_channels > 1 and other.in_channels != store.meta["frames"]:
                raise ValueError(f"--versus {versus}: needs {other.in_channels} frames, {data} has {store.meta['frames']}")
            frame = _frame_choice(versus_frame, int(store.meta["frames"]))
            seen = "middle frame" if frame == "middle" else f"frame {frame}"
            label = f"{other.name} {other.version}" + (f" ({seen})" if other.in_channels == 1 and store.meta["frames"] > 1 else "")
            if label in ("network", "baseline"):
                label = f"{label} (versus)"
            detectors[label] = network_detector(other_net, other, frame=frame)
            versus_on_training = _training_store_problem(other, store, data, False, role="--versus")
            versus_on_calibration = _calibration_store_problem(other, store, data, False, role="--versus")
        _check_report_dir(report, overwrite)  # before the work: a file, a store or an earlier report is refused now
        # what the report must say about its own numbers
        if n_scored < n_simulated:
            warn(f"{data}: only {n_scored} of its {n_simulated} images are simulated (an unfinished store); "
                 f"the scores are of those {n_scored}")
        for problem in (on_training, on_calibration, shadow):
            if problem:
                warn(problem)
        if versus:
            for problem in (versus_on_training, versus_on_calibration, other_shadow):
                if problem:
                    warn(problem)
        frame_note = None
        if card.in_channels == 1 and store.meta["frames"] > 1:
            frame_note = (f"{card.name} {card.version} is a single-image model: it sees frame 0 (the least "
                          f"underfocused) of each {store.meta['frames']}-frame focal series")
            console.print(f"[cyan]note:[/cyan] {escape(frame_note)}", highlight=False, soft_wrap=True)
        if baseline:
            radius = float(store.meta["config"].get("label_radius_A", 0.4))
            detectors["baseline"] = baseline_detector(atom_radius_A=radius, min_distance_A=card.detection.get("min_distance_A", 1.0))
        info = store_structure_info(store) if structures else None
        if structures and info is None:
            console.print(f"{data}: structures cannot be rebuilt (not one per job, or an unreadable config); "
                          "no tables by shape or support")
        elif info is not None and any(v is None for v in info.values()):
            missing = sum(v is None for v in info.values())
            console.print(f"{data}: {missing} of {len(info)} images have no rebuilt structure matching their "
                          "ground truth; their shape and support are unknown")
        with _progress(f"evaluate {card.name}") as bar:
            task = bar.add_task(f"evaluate {card.name}", total=len(store))
            result = compare(samples_from_store(store, structures=info), detectors, class_names=card.class_names,
                             border_A=border, defocus_edges_A=recipe_defocus_edges(store.meta.get("config")),
                             on_sample=lambda i: bar.update(task, completed=i + 1))
        result["model"] = _model_entry(card, stem)  # the "network" detector
        if frame_note:
            result["model"] |= {"frame": 0, "frame_note": frame_note}
        if versus:
            result["versus"] = _model_entry(other, other_stem) | {"label": label, "training_store": bool(versus_on_training),
                                                                  "calibration_store": bool(versus_on_calibration)}
        result["data"] = {"store": str(data), "seed": store.meta["seed"], "n": int(result["n_images"]),
                          "n_simulated": n_simulated, "training_store": bool(on_training),
                          "calibration_store": bool(on_calibration)}
        result["warnings"] = warned
        paths = write_report(result, report, title=f"{card.name} on {data.name}")
        _print_summary(result)
        if write_card:
            _write_evaluation_to_card(stem, card, result)
        console.print("report: " + ", ".join(str(p) for p in paths))

    _run(action)


def _resolve_model_loudly(option: str, value: str) -> tuple[Path, str | None]:
    """:func:`~atomfinder.nn.card.resolve_model`, and the line that says a model file here stands in
    for the shipped model of that name (printed as a warning; None when it does not)."""
    from atomfinder.nn.card import resolve_model, shadowed_model

    stem = resolve_model(value)
    shipped = shadowed_model(value, stem)
    if shipped is None:
        return stem, None
    line = (f"{option} {value}: using {Path(stem).resolve()}.safetensors (+ .json) from this folder, not the shipped "
            f"model {value} ({shipped}.safetensors); rename or move the local files to use the shipped one")
    return stem, line


def _resolve_model_warned(value: str, option: str = "--model") -> Path:
    """The stem of ``--model``, with a warning when a model file here stands in for a shipped one."""
    stem, shadow = _resolve_model_loudly(option, value)
    if shadow:
        console.print(f"[yellow]warning:[/yellow] {escape(shadow)}", highlight=False, soft_wrap=True)
    return stem


def _model_entry(card, stem: Path) -> dict:
    """The report's record of a scored model: name, version, the resolved file and whether it is shipped."""
    from atomfinder.nn.card import is_shipped

    resolved = Path(stem).resolve()
    return {"name": card.name, "version": card.version, "path": str(resolved),
            "weights": str(resolved.with_name(resolved.name + ".safetensors")), "shipped": is_shipped(stem)}


def _check_report_dir(report: Path, overwrite: bool) -> None:
    """Refuse, before any work, a --report folder that cannot be written, one inside a dataset store,
    and (without --overwrite) one holding the report of an earlier run."""
    from atomfinder._files import check_output_dir, refuse_earlier_files
    from atomfinder.analysis.report import earlier_report_files

    check_output_dir(report)
    probe = Path(report).absolute()
    for folder in (probe, *probe.parents):
        if folder.is_dir() and any((folder / marker).is_file() for marker in ("zarr.json", ".zgroup", ".zarray")):
            where = "is" if folder == probe else f"lies inside {folder}, which is"
            raise ValueError(f"--report {report}: {where} a zarr (dataset) store; write the report to another folder")
    if not overwrite:
        refuse_earlier_files(report, earlier_report_files(report), "give --overwrite to replace them, or another --report")


def _num(value, digits: int) -> str:
    """A rate or length for a table: ``–`` where there was nothing to count (None, NaN)."""
    if value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def _print_summary(result: dict) -> None:
    from rich.table import Table

    table = Table(title="F1 at 0.5 Å by dose, each detector")
    table.add_column("dose (e/Å²)")
    names = list(result["detectors"])
    for name in names:
        table.add_column(f"{name} F1")
        table.add_column(f"{name} RMSE (pm)")
    rows: dict[str, list[str]] = {}
    for name in names:
        for b in result["detectors"][name]["by_dose"]:
            m = b["metrics"]["0.5"]
            rmse = m.get("rmse_pm")
            rows.setdefault(b["bin"], []).extend([_num(m["f1"], 3), _num(rmse, 1)])
    for k, v in rows.items():
        table.add_row(k, *v)
    Console().print(table)


def _check_card_writable(model: str, stem: Path) -> None:
    """Refuse ``--write-card`` on a model installed with atomfinder named by its name alone: the
    card would be rewritten inside the package. Its path, given as ``--model``, says it is meant."""
    from atomfinder.nn.card import is_shipped

    if is_shipped(stem) and Path(model).name == model and not Path(model).suffix:
        raise ValueError(f"{model} is a model installed with atomfinder: --write-card would rewrite its card "
                         f"{Path(stem).with_suffix('.json')}; copy the model (its .json and .safetensors) and give "
                         "the copy's path, or give that path as --model to rewrite it on purpose")


def _training_store_problem(card, store, data: Path, write_card: bool, role: str = "") -> str | None:
    """The warning line when ``store`` is the one ``card``'s model was trained on (None otherwise);
    with ``write_card``, a refusal: its scores are no evaluation."""
    from atomfinder.analysis.evaluate import is_training_store

    if not is_training_store(card, store):
        return None
    what = (f"{data}: the training store of {f'{role} model ' if role else ''}{card.name} {card.version} "
            f"(seed {store.meta['seed']}, {store.meta['n']} samples)")
    if write_card:
        raise ValueError(f"{what}; its scores are no evaluation and are not written into the card: "
                         "evaluate on a test store of another seed")
    return f"{what}: the scores below flatter the model"


def _calibration_store_problem(card, store, data: Path, write_card: bool, role: str = "") -> str | None:
    """The warning line when ``store`` has the seed of the store ``card``'s confidence calibration (and
    class priors, confidence floor) was fitted on: the same simulated specimens, so its ECE, error-bar
    coverage and scores are in-sample. With ``write_card``, a refusal."""
    fit = (card.calibration or {}).get("fit") or {}
    seed = fit.get("seed")
    if seed is None or store.meta.get("seed") != seed:
        return None
    what = (f"{data}: seed {seed}, that of {fit.get('store', 'the store')} on which the calibration of "
            f"{f'{role} model ' if role else ''}{card.name} {card.version} was fitted")
    if write_card:
        raise ValueError(f"{what}; its scores are in-sample and are not written into the card: "
                         "evaluate on a test store of another seed")
    return f"{what}: its confidence, error bars and scores here are in-sample"


def _write_card(stem: Path, card) -> None:
    """Rewrite a model's card (``<stem>.json``) atomically; the weights stay as they are."""
    from atomfinder._files import atomic_write

    atomic_write(Path(stem).with_suffix(".json"), lambda tmp: Path(tmp).write_text(card.to_json()))


def _write_evaluation_to_card(stem: Path, card, result: dict) -> None:
    import dataclasses

    from atomfinder.analysis.evaluate import card_evaluation

    _write_card(stem, dataclasses.replace(card, evaluation=card_evaluation(result, "network")))


def _print_scan(title: str, name: str, rows: list, best: float, kept: bool = False) -> None:
    """A threshold scan (``threshold``, optional ``kept``, precision, recall, F1) as a table, the best marked."""
    from rich.table import Table

    table = Table(title=title)
    for col in (name, *(["kept"] if kept else []), "precision", "recall", "F1"):
        table.add_column(col)
    for r in rows:
        table.add_row(f"{r['threshold']:g}{' *' if r['threshold'] == best else ''}",
                      *([str(r["kept"])] if kept else []), _num(r["precision"], 4), _num(r["recall"], 4), _num(r["f1"], 4))
    Console().print(table)


@app.command("tune-threshold", cls=_Command)
def tune_threshold_command(
    model: str = typer.Option(..., "--model", help="Model name or path (without suffix)."),
    data: Path = typer.Option(..., "--data", help="The model's own training store: its validation images are scored."),
    thresholds: Optional[str] = typer.Option(
        None, "--thresholds", help="Comma-separated atom-probability thresholds (default 0.3,0.4,...,0.9)."),
    write_card: bool = typer.Option(False, "--write-card", help="Store the best threshold and the scan in the model's card."),
) -> None:
    """Choose the peak threshold on the validation images of the model's training store (never the test set)."""

    def action() -> None:
        from atomfinder.analysis.thresholds import (
            THRESHOLDS,
            best_threshold,
            card_with_threshold,
            validation_threshold_scan,
        )
        from atomfinder.datasets.store import DatasetStore
        from atomfinder.nn.card import load_model

        try:
            levels = list(THRESHOLDS) if thresholds is None else sorted({float(v) for v in thresholds.split(",")
                                                                         if v.strip()})
        except ValueError:
            levels = []
        if not levels or not all(0.0 <= v < 1.0 for v in levels):
            raise ValueError(f"--thresholds {thresholds!r}: give comma-separated values in [0, 1)")
        stem = _resolve_model_warned(model)
        if write_card:
            _check_card_writable(model, stem)
        net, card = load_model(stem)
        store = DatasetStore(data)
        with _progress(f"tune {card.name}") as bar:
            task = bar.add_task(f"tune {card.name}", total=None)
            rows, n_val, radius = validation_threshold_scan(
                net, card, store, levels, on_sample=lambda i, n: bar.update(task, completed=i + 1, total=n))
        best = best_threshold(rows)
        if len(store) < store.meta["n"]:
            partial = (f"{data}: only {len(store)} of its {store.meta['n']} images are simulated (an unfinished "
                       f"store); the scan used the {n_val} validation images among them")
            console.print(f"[yellow]warning:[/yellow] {escape(partial)}", highlight=False, soft_wrap=True)
        _print_scan(f"{card.name} {card.version}: {n_val} validation images, radius {radius:g} Å", "threshold", rows, best)
        console.print(f"best threshold {best:g} (card: {card.detection.get('threshold')})")
        if write_card:
            _write_card(stem, card_with_threshold(card, rows, n_val, radius, data))
            console.print(f"card: {Path(stem).with_suffix('.json')}")
            fitted_at = (card.calibration or {}).get("fit", {}).get("threshold")
            if fitted_at is not None and abs(float(fitted_at) - best) > 1e-9:
                console.print(f"note: the card's confidence calibration was fitted on the peaks above {fitted_at:g}; "
                              f"fit it again at {best:g}: atomfinder calibrate --model {stem} --data <calibration store> "
                              "--write-card", highlight=False)

    _run(action)


@app.command("calibrate", cls=_Command)
def calibrate_command(
    model: str = typer.Option(..., "--model", help="Model name or path (without suffix)."),
    data: Path = typer.Option(..., "--data", help="Held-out simulations (a seed used neither in training nor in the test sets)."),
    write_card: bool = typer.Option(False, "--write-card", help="Store the calibration in the model's card."),
    min_confidence: str = typer.Option(
        "keep", "--min-confidence",
        help="Confidence floor to store with --write-card (detections below it are dropped): 'keep' the card's, "
             "'best' (highest F1 of the scan on these images) or a number in [0, 1]."),
    class_bias: bool = typer.Option(
        True, "--class-bias/--no-class-bias",
        help="For models with several atom classes, first fit one log-prior per class on these images "
             "(undoes the rare-class preference of class-weighted training) and label with it."),
) -> None:
    """Fit the per-atom confidence and positional error bar (and the class priors) on held-out simulations."""

    def action() -> None:
        import dataclasses

        from atomfinder.analysis.calibration import calibrate_model, refuse_training_store
        from atomfinder.analysis.evaluate import samples_from_store, to_jsonable
        from atomfinder.analysis.thresholds import best_threshold
        from atomfinder.datasets.store import DatasetStore
        from atomfinder.nn.card import load_model

        if min_confidence != "keep" and not write_card:
            raise ValueError(f"--min-confidence {min_confidence}: the floor is stored with --write-card; add it")
        if min_confidence not in ("keep", "best"):
            try:
                floor = float(min_confidence)
            except ValueError:
                floor = -1.0
            if not 0.0 <= floor <= 1.0:
                raise ValueError(f"--min-confidence {min_confidence!r}: give 'keep', 'best' or a number in [0, 1]")
        stem = _resolve_model_warned(model)
        if write_card:
            _check_card_writable(model, stem)
        net, card = load_model(stem)
        store = DatasetStore(data)
        if len(store) == 0:
            raise ValueError(f"{data}: no finished images (0 of {store.meta['n']} simulated): nothing to calibrate on; "
                             "finish the simulation first")
        if tuple(store.class_names) != tuple(card.class_names):
            raise ValueError(f"{data}: classes {store.class_names} do not match model {card.name} {card.class_names}")
        refuse_training_store(card, store)  # before the class priors, not after them
        tested = (card.evaluation or {}).get("data") or {}
        if tested.get("seed") is not None and store.meta.get("seed") == tested["seed"]:
            what = (f"{data}: seed {tested['seed']}, that of {tested.get('store', 'the test store')} on which "
                    f"{card.name} {card.version} was evaluated (the same simulated specimens)")
            if write_card:
                raise ValueError(f"{what}; a calibration fitted on it would make the card's evaluation in-sample: "
                                 "calibrate on held-out simulations of another seed")
            console.print(f"[yellow]warning:[/yellow] {escape(what)}: a calibration fitted here is in-sample on "
                          "that test set", highlight=False, soft_wrap=True)
        if class_bias and len(card.class_names) > 1:
            from atomfinder.analysis.calibration import class_bias_data, class_bias_summary, fit_class_bias

            with _progress(f"class priors {card.name}") as bar:
                task = bar.add_task(f"class priors {card.name}", total=len(store))
                labelled = class_bias_data(net, card, samples_from_store(store),
                                           on_sample=lambda i: bar.update(task, completed=i + 1))
            bias = fit_class_bias(labelled["probabilities"], labelled["true_label"], allowed=labelled["allowed"])
            classes = class_bias_summary(labelled, bias)
            console.print(
                f"class log-priors {', '.join(f'{c} {b:+.2f}' for c, b in zip(card.class_names, bias))}: label accuracy "
                f"of {classes['n_matched']} matched detections {classes['label_accuracy_argmax']:.3f} -> "
                f"{classes['label_accuracy_biased']:.3f} (in-sample)", highlight=False)
            card = dataclasses.replace(card, detection=dict(card.detection) | {"class_log_bias": [float(b) for b in bias]})
        with _progress(f"calibrate {card.name}") as bar:
            task = bar.add_task(f"calibrate {card.name}", total=len(store))
            fit, summary = calibrate_model(net, card, store,
                                           on_sample=lambda i, n: bar.update(task, completed=i + 1, total=n))
        console.print(
            f"{summary['n_detections']} detections on {summary['n_images']} images, "
            f"{100 * summary['fraction_true']:.1f} % real; in-sample ECE {summary['ece_in_sample']:.4f}, "
            f"{100 * summary['within_1_sigma_in_sample']:.1f} % of coordinate errors within 1 sigma", highlight=False)
        rows = summary["min_confidence_scan"]
        best = best_threshold(rows)
        _print_scan("confidence floor (detections below it dropped), pooled over these images", "min confidence",
                    rows, best, kept=True)
        if write_card:
            if class_bias and len(card.class_names) > 1:
                summary["class_priors"] = classes
            calibration = to_jsonable(fit.to_dict() | {"fit": summary})
            detection = dict(card.detection)
            if min_confidence == "best":
                detection["min_confidence"] = best
            elif min_confidence != "keep":
                detection["min_confidence"] = float(min_confidence)
            _write_card(stem, dataclasses.replace(card, calibration=calibration, detection=detection))
            console.print(f"card: {Path(stem).with_suffix('.json')}")

    _run(action)


def _span(values, unit: str, signed: bool = False) -> str:
    """``low…high unit`` (or one value), ``none`` for None."""
    if values is None:
        return "none"
    lo, hi = values
    fmt = "+g" if signed else "g"
    return f"{lo:{fmt}} {unit}" if lo == hi else f"{lo:{fmt}}…{hi:{fmt}} {unit}"


def card_validity_lines(validity: dict) -> list[str]:
    """The validity range of a card as indented lines of text."""
    from atomfinder.nn.validity import focal_order

    if not validity or "energies_kV" not in validity:
        return ["  not recorded in the card"]
    v = validity
    lines = [
        f"  materials: {'; '.join(v.get('materials') or ['-'])}",
        f"  supports: {'; '.join(v.get('supports') or ['none'])}",
        f"  energies: {', '.join(f'{e:g}' for e in v['energies_kV'])} kV",
        f"  Cs: corrected {_span(v.get('Cs_corrected_um'), 'µm')}; uncorrected {_span(v.get('Cs_uncorrected_um'), 'µm')}"
        + (f" (at >= {v['uncorrected_min_energy_kV']:g} kV)" if v.get("uncorrected_min_energy_kV") else ""),
        (f"  defocus: {_span(v['corrected_defocus_A'], 'Å', signed=True)} (corrected lenses), Scherzer "
         f"{_span(v['defocus_around_scherzer_A'], 'Å', signed=True)} (uncorrected; positive = underfocus)"
         if v.get("corrected_defocus_A") and v.get("Cs_uncorrected_um") else
         f"  defocus: {_span(v['corrected_defocus_A'], 'Å', signed=True)} (positive = underfocus)"
         if v.get("corrected_defocus_A") else
         f"  defocus: Scherzer {_span(v['defocus_around_scherzer_A'], 'Å', signed=True)} (positive = underfocus)"),
        f"  dose: {v['dose_e_per_A2'][0]:.0e}–{v['dose_e_per_A2'][1]:.0e} e/Å²".replace("e+0", "e"),
        f"  pixel size: {v['sampling_A']:g} Å/px ±{v['sampling_jitter']:.0%} ({_span(v['sampling_range_A'], 'Å/px')}; "
        "inputs are resampled, their calibration must be right to that)",
        f"  residual aberrations: astigmatism {_span(v.get('astigmatism_A'), 'Å')}, coma {_span(v.get('coma_A'), 'Å')}; "
        f"focal spread {_span(v.get('focal_spread_A'), 'Å')}",
    ]
    if v.get("frames"):
        order = v.get("focal_order") or focal_order(v["focal_step_A"])
        lines.append(f"  focal series: {v['frames']} frames in {order} (defocus positive = underfocus), focal step "
                     f"{_span(v.get('focal_step_A'), 'Å')} between frames; a step outside it warns")
    if v.get("neighbour_distances_A"):
        lines.append("  projected nearest-neighbour distances: "
                     + ", ".join(f"{k} {d:.2f} Å" for k, d in v["neighbour_distances_A"].items()))
    cnr = v.get("contrast_to_noise")
    if cnr:
        lines.append(f"  contrast-to-noise at the model's sampling: {cnr['low']:g}–{cnr['high']:g} "
                     f"(percentiles {cnr['percentiles'][0]:g}–{cnr['percentiles'][1]:g}, median {cnr['median']:g}, "
                     f"{cnr['n_images']} images); lower warns")
    return lines


def _focal_note(card) -> str:
    """`` (focal series trained on steps of 40…120 Å between frames; offsets 0, 80, 160 Å at the mean step)``.

    The card's defocus offsets are those of the mean step only; the trained range of
    steps (``focal_step_A`` of its validity) is what a series must lie in.
    """
    offsets = ", ".join(f"{d:g}" for d in card.defocus_offsets_A)
    step = (card.validity or {}).get("focal_step_A")
    if step is None:
        return f" (defocus offsets {offsets} Å)" if offsets else ""
    nominal = f"; nominal defocus offsets {offsets} Å at the mean step" if offsets else ""
    return f" (a focal series, trained on focal steps of {_span(step, 'Å')} between frames{nominal})"


def _training_lines(card) -> list[str]:
    """Training time and data recipe of a card."""
    t = card.training
    data = t.get("data", {})
    sim = data.get("simulation", {})
    cfg = t.get("config", {})
    minutes = f"{t.get('time_s', 0) / 60:.0f} min"
    if t.get("init_time_s"):
        minutes += (f" in all ({t['init_time_s'] / 60:.0f} min of {t.get('init_from')} it started from, then "
                    f"{(t['time_s'] - t['init_time_s']) / 60:.0f} min)")
    steps = t.get("steps", "?")
    lines = [f"  time: {minutes}, {steps} step{'' if steps == 1 else 's'} on {t.get('device', '?')}"]
    lines += _run_state_lines(t)
    finetune = t.get("finetune") if isinstance(t.get("finetune"), dict) else {}
    run = finetune.get("run") if isinstance(finetune.get("run"), dict) else {}
    if run.get("steps") is not None and run.get("time_s") is not None:
        from atomfinder.finetune import training_sentence

        lines.append("  fine-tuning: " + training_sentence({
            "steps": run.get("best_steps"), "minutes": (run.get("best_time_s") or 0.0) / 60,
            "run_steps": run["steps"], "run_minutes": run["time_s"] / 60,
            "budget_minutes": finetune.get("budget_minutes")}))
    if data:
        lines.append(f"  data: {data.get('store', '?')} ({data.get('n', '?')} {sim.get('system', '')} images of "
                     f"{sim.get('image_px', '?')} px, seed {data.get('seed', '?')}), {t.get('train_images', '?')} for training")
    if cfg:
        lines.append(f"  recipe: {cfg.get('name', card.name)} {cfg.get('version', card.version)}, "
                     f"{cfg.get('epochs', '?')} epochs of batch {cfg.get('batch_size', '?')}, lr {cfg.get('lr', '?')}, "
                     f"normalisation {cfg.get('normalization', card.normalization)}")
        trained_as = str(cfg.get("version", card.version))
        if trained_as != str(card.version):
            settings = ", ".join(f"{k} {v}" for k, v in card.detection.items() if not isinstance(v, (dict, list)))
            lines.append(f"  weights: those trained as {cfg.get('name', card.name)} {trained_as}; {card.version} "
                         f"changes how they are used (detection: {settings})")
    return lines


def _run_state_lines(training: dict) -> list[str]:
    """Whether the training run reached its end (``training.finished``) and which of its weights the
    model holds (``training.weights``); nothing for a card that records neither (shipped cards)."""
    lines = []
    finished = training.get("finished")
    if finished is False:
        lines.append(f"  run: NOT finished: stopped at step {training.get('steps', '?')}, before the end of its "
                     "learning-rate schedule (killed, or still running); continue it with `atomfinder train --resume`")
    elif finished is True:
        lines.append("  run: finished (its last step or its time limit)")
    if training.get("weights") == "last":
        lines.append(f"  weights kept: the run's last (step {training.get('steps', '?')}, train --export-last)")
    elif isinstance(training.get("best_val"), dict) and "f1" in training["best_val"]:
        lines.append(f"  weights kept: the best by validation F1 ({training['best_val']['f1']:.3f}, at step "
                     f"{training.get('steps', '?')})")
    return lines


def unfinished_model_warning(card) -> str | None:
    """A one-line warning for a model whose training run had not reached its end (``training.finished``
    False: killed or still running), or None (finished, or not recorded, as in shipped cards)."""
    if (card.training or {}).get("finished") is not False:
        return None
    return (f"model {card.name} {card.version}: its training run had not finished (stopped at step "
            f"{card.training.get('steps', '?')}, before the end of its learning-rate schedule); continue it with "
            "`atomfinder train --resume` before relying on it")


def _warn_if_unfinished(model: str) -> None:
    """Print :func:`unfinished_model_warning` for ``--model`` (a model that cannot be read is left to the
    command, which says why)."""
    from atomfinder.nn.card import load_card, resolve_model

    try:
        line = unfinished_model_warning(load_card(resolve_model(model)))
    except (ValueError, OSError):
        return
    if line:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)


def _calibration_line(card) -> str:
    """Whether the card holds a calibration of the per-atom confidence and error bar, and on what."""
    cal = card.calibration
    if not cal:
        return "  calibration: none (no per-atom confidence or error bar)"
    fit = cal.get("fit", {})
    return (f"  calibration: per-atom confidence and error bar, fitted on {cal.get('n_detections', '?')} detections "
            f"in {fit.get('n_images', '?')} images of {fit.get('store', '?')}")


def _evaluation_table(card):
    """The card's evaluation (network and baseline) as a rich table, or None."""
    from rich.table import Table

    ev = card.evaluation
    if not ev.get("overall"):
        return None
    radius = "0.5" if "0.5" in ev["overall"] else sorted(ev["overall"])[0]
    data = ev.get("data", {})
    title = (f"evaluation on {data.get('store', '?')} (seed {data.get('seed', '?')}, {data.get('n', '?')} images), "
             f"matching radius {radius} Å")
    table = Table(title=title)
    heights = ev["overall"][radius].get("height_exact") is not None
    for col in ["detector", "dose (e/Å²)", "images", "precision", "recall", "F1", "RMSE (pm)"] + (
            ["height exact", "±1"] if heights else []):
        table.add_column(col)

    def row(detector: str, label: str, m: dict) -> None:
        rmse = m.get("rmse_pm")
        cells = [detector, label, str(m.get("n_images", "")), _num(m.get("precision"), 3), _num(m.get("recall"), 3),
                 _num(m.get("f1"), 3), _num(rmse, 1)]
        if heights:
            cells += [f"{m['height_exact']:.2f}" if m.get("height_exact") is not None else "-",
                      f"{m['height_within1']:.2f}" if m.get("height_within1") is not None else "-"]
        table.add_row(*cells)

    for name, overall, by_dose in (("network", ev.get("overall"), ev.get("by_dose")),
                                   ("baseline", ev.get("baseline_overall"), ev.get("baseline_by_dose"))):
        if not overall:
            continue
        row(name, "all", overall[radius])
        for b in by_dose or []:
            row(name, b["bin"], b["metrics"][radius])
    return table


@app.command("models", cls=_Command)
def models_command(
    name: Optional[str] = typer.Argument(None, help="A model's name (or path): print its card."),
) -> None:
    """List the shipped models (one line each), or print one model's card."""
    from rich.markup import escape

    from atomfinder.detection.validity import card_reference
    from atomfinder.nn.card import list_models, load_card, resolve_model, shadowed_model
    from atomfinder.nn.validity import validity_summary

    out = Console(highlight=False, soft_wrap=True)

    def listing() -> None:
        for model in list_models():
            local = resolve_model(model)  # a model file of that name here comes first; the list is of the shipped
            card = load_card(shadowed_model(model, local) or local)
            out.print(escape(f"{card.name} {card.version} ({', '.join(card.class_names)}): "
                             f"{validity_summary(card_reference(card))}"))

    def show() -> None:
        card = load_card(_resolve_model_warned(name, "model"))
        det = card.detection
        lines = [
            f"{card.name} {card.version} (created {card.created})",
            f"  classes: {', '.join(card.class_names)}; input channels: {card.in_channels}{_focal_note(card)}",
            f"  pixel size: {card.sampling_A:.4f} Å/px (inputs are resampled to it)",
            f"  peak threshold: {det.get('threshold', 0.5):g}; minimum distance {det.get('min_distance_A', 1.0):g} Å"
            + (f"; detections below confidence {det['min_confidence']:g} dropped" if det.get("min_confidence") else ""),
            *(["  class log-priors (added before the argmax): "
               + ", ".join(f"{c} {b:+.2f}" for c, b in zip(card.class_names, det["class_log_bias"]))]
              if det.get("class_log_bias") else []),
            *([f"  classes by sublattice (honeycomb, bonds {det['honeycomb']['bond_A'][0]:g}-"
               f"{det['honeycomb']['bond_A'][1]:g} Å, vote over {det['honeycomb']['radius_A']:g} Å): "
               + " | ".join(", ".join(g) for g in det["honeycomb"]["sublattices"])]
              if det.get("honeycomb") else []),
            *(["  test-time augmentation: maps averaged over the image turned by quarter turns and mirrored "
               "(8 views, 8x the network time)"] if det.get("test_time_augmentation") else []),
            _calibration_line(card),
            "validity range:",
            *card_validity_lines(card_reference(card)),
            "training:",
            *_training_lines(card),
        ]
        for line in lines:
            out.print(escape(line))
        table = _evaluation_table(card)
        if table is None:
            out.print("evaluation: none recorded")
        else:
            out.print(table)

    _run(listing if name is None else show)


def _describe_file(path: Path) -> str:
    """One line on how a file is read: format, shape, frames, pixel size and where it came from."""
    from atomfinder.detection.io import MIN_SIZE, read_micrograph

    m = read_micrograph(path, min_size=1)
    meta = m.metadata
    h, w = m.data.shape[-2:]
    frames = f"{m.n_frames} frames" if m.n_frames > 1 else "1 image"
    parts = [f"{path}: {meta.get('format_name', meta['format'])}, {meta['dtype']} {tuple(meta['shape'])} in the file; "
             f"{frames} of {h}x{w} px"]
    if m.sampling_A is not None:
        scale = 1.0 if meta["scale"] is None else meta["scale"]  # rsciio's default scale
        parts.append(f"pixel size {m.sampling_A:.4g} Å/px ({scale:g} {meta['unit']} per pixel in the "
                     f"{meta['calibration_source']})")
    else:
        note = meta.get("calibration_note")
        parts.append(f"no pixel size{f' ({note})' if note else ''}: give --sampling to detect")
    if meta.get("colour") == "rgb":
        parts.append("colour (RGB) image: detect refuses it")
    elif meta.get("colour") == "grey-rgb":
        parts.append("grey image stored as RGB (equal channels), read as grey")
    if min(h, w) < MIN_SIZE:
        parts.append(f"too small to hold atoms (detect needs at least {MIN_SIZE}x{MIN_SIZE} px)")
    parts.extend(f"note: {note}" for note in meta.get("notes", ()))
    return "; ".join(parts)


@app.command("info", cls=_Command)
def info_command(
    files: list[Path] = typer.Argument(..., help="Micrographs (dm3/dm4/emd/ser/mrc/tif/png/npy)."),
) -> None:
    """Show how files are read: format, shape, frames, pixel size and where it came from.

    One line per file, with the pixel size and unit as written in the file; an unreadable
    file gets its one-line error and the others are still shown (exit code 2).
    """
    out = Console(highlight=False, soft_wrap=True)
    failed = 0
    for path in files:
        try:
            _run(lambda: out.print(escape(_describe_file(path))))
        except typer.Exit as exc:
            if exc.exit_code != 2:
                raise
            failed += 1
    if failed:
        raise typer.Exit(2)


@app.command(cls=_Command)
def detect(
    inputs: list[Path] = typer.Argument(..., help="Micrographs (dm3/dm4/emd/ser/mrc/tif/png/npy); with --focal-series several single images in defocus order form one sample."),
    model: str = typer.Option(..., "--model", help="Shipped model name or path to <stem>.safetensors/.json."),
    sampling: Optional[float] = typer.Option(None, "--sampling", help="Pixel size in Å per pixel; overrides the files' calibration."),
    focal_series: bool = typer.Option(False, "--focal-series", help="Frames form a focal series (in the model's defocus order; defocus positive = underfocus); they are registered before inference and the positions are in the first frame's pixels."),
    focal_step: Optional[float] = typer.Option(None, "--focal-step", help="With --focal-series: the defocus step between consecutive frames in Å (positive = each frame more underfocused); a step outside the model's trained range warns."),
    out: Path = typer.Option(Path("atomfinder-results"), "--out", help="Output directory for <stem>.csv, <stem>.json (provenance, validity checks), <stem>.png (and <stem>_probabilities.tif)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the outputs of an earlier run in --out (refused otherwise)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run into the same --out: inputs whose outputs are all there, made with the same model, pixel size, threshold and augmentation, are skipped; the others are done (those made with other settings only with --overwrite)."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write the per-class probability maps (calibrated float32 TIFF, on the model's pixel grid unless --probabilities-grid input)."),
    probabilities_grid: Optional[Literal["model", "input"]] = typer.Option(
        None, "--probabilities-grid",
        help="Grid of the probability maps (implies --probabilities): model (the model's pixel size, as inferred) or input (resampled onto the input image's pixels)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Smallest atom probability (default: the model card's, else 0.5)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="dask.distributed scheduler address (tcp://host:8786)."),
    precision: str = typer.Option("auto", "--precision", help="Network arithmetic: auto (bfloat16 on CPUs with native support, float16 on CUDA, else float32), float32, bfloat16 or float16."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Test-time augmentation: average the maps over the image turned and mirrored (8 views, 8x the network time). Default: the model card's setting (`atomfinder models NAME`)."),
    overlay_format: Literal["png", "svg", "pdf"] = typer.Option("png", "--overlay-format", help="Format of the overlay <stem>.png/.svg/.pdf (SVG and PDF are vector figures for papers)."),
    dpi: int = typer.Option(150, "--dpi", min=10, max=2400, help="Resolution of the overlay (dots per inch)."),
    colour_by: Literal["auto", "class", "confidence", "probability", "height"] = typer.Option(
        "auto", "--colour-by", help="Marker colour of the overlay: class, calibrated confidence, raw probability or column height (with a colour bar); auto: class, or height for a model with heights."),
    marker_size: Optional[float] = typer.Option(None, "--marker-size", min=0.1, help="Marker diameter in points (default: from the atom spacing)."),
    title: Optional[str] = typer.Option(None, "--title", help="Title of the overlay (default: number of atoms, model, pixel size; '' for none)."),
) -> None:
    """Find atoms in micrographs: an atom table (CSV), its provenance and validity checks (JSON) and an
    overlay (PNG) per input; each failed validity check is printed as one warning line."""

    def action() -> None:
        import warnings

        from rich.markup import escape

        from atomfinder.detection.overlay import OverlayStyle
        from atomfinder.detection.batch import check_outputs_spare_inputs, detect_files, existing_outputs
        from atomfinder.detection.validity import ValidityWarning

        grid = probabilities_grid or "model"
        maps = probabilities or probabilities_grid is not None
        style = OverlayStyle(format=overlay_format, dpi=dpi, colour_by=colour_by, marker_size=marker_size, title=title)
        check_outputs_spare_inputs(inputs, out, focal_series=focal_series, probabilities=maps,
                                   overlay_format=overlay_format)
        if not overwrite and not resume:
            _refuse_existing(out, existing_outputs(inputs, out, focal_series=focal_series, probabilities=maps,
                                                   overlay_format=overlay_format))
        _warn_if_unfinished(model)
        n_samples = 1 if focal_series and len(inputs) > 1 else len(inputs)
        detected: list[str] = []
        with _progress("detect") as bar:
            task = bar.add_task("detect", total=n_samples)

            def progress(done: int, total: int, report) -> None:
                # each input's lines as soon as its files are written (above the bar on a terminal),
                # so that an interrupted batch has reported every input it finished
                detected.append(report.source)
                frames = f" in {report.n_frames} frames" if report.n_frames > 1 and not focal_series else ""
                lines = [escape(_pixel_size_line(report.source, report.sampling_A, report.sampling_source))]
                lines.extend(f"[cyan]note:[/cyan] {escape(n)}" for n in report.notes)
                atoms = f"{report.n_atoms} atom{'' if report.n_atoms == 1 else 's'}"
                lines.append(escape(f"{report.source}: {atoms}{frames} -> {out / (report.stem + '.csv')}"))
                lines.extend(f"[yellow]warning:[/yellow] {escape(w)}" for w in report.warnings)
                for line in lines:
                    console.print(line, highlight=False, soft_wrap=True)
                bar.update(task, completed=done, total=total)

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ValidityWarning)  # printed from the reports, one line each
                detect_files(inputs, model, out, sampling_A=sampling, focal_series=focal_series,
                             probabilities=maps, threshold=threshold, progress=progress, scheduler=scheduler,
                             precision=precision, sampling_label="--sampling", probabilities_grid=grid,
                             focal_step_A=focal_step, resume=resume, overlay=style, augment=augment,
                             overwrite=overwrite)
        skipped = n_samples - len(detected)
        if resume and skipped:
            console.print(escape(f"{skipped} input{'' if skipped == 1 else 's'} finished earlier with the same "
                                 f"settings: skipped"), highlight=False, soft_wrap=True)
        console.print(escape(f"results in {out}/"), highlight=False, soft_wrap=True)

    _run(action, resume_hint="continue with the same command and --resume")


#: How each ``Sample.sampling_source`` is said in the pixel-size line of an input.
_SAMPLING_SOURCES = {"file": "from the file's metadata", "signal": "from the signal's axes",
                     "argument": "given as an argument"}


def _pixel_size_line(source: str, sampling_A: float | None, origin: str) -> str:
    """``<source>: pixel size 0.107 Å/px (from the file's metadata)`` (or ``given with --sampling``, ...)."""
    how = _SAMPLING_SOURCES.get(origin, f"given with {origin}")
    size = "unknown" if sampling_A is None else f"{sampling_A:.4g} Å/px"
    return f"{source}: pixel size {size} ({how})"


def _refuse_existing(out: Path, existing: list[Path], shown: int = 4) -> None:
    """Refuse to replace files of an earlier run in ``out`` without --overwrite (one line naming them)."""
    from atomfinder._files import refuse_earlier_files

    refuse_earlier_files(out, existing, "give --overwrite to replace them, or another --out", shown)


def _track_summary_line(n_frames: int, written: dict, out: Path) -> str:
    """``12 frames: 52 sites, 6 events -> out/: drift.csv, ...`` (the last line of ``track``)."""
    import pandas as pd

    n_sites = len(pd.read_csv(written["sites.csv"]))
    n_events = len(pd.read_csv(written["events.csv"]))
    files = ", ".join(sorted(Path(p).name for p in written.values()))
    return (f"{n_frames} frames: {n_sites} site{'' if n_sites == 1 else 's'}, {n_events} "
            f"event{'' if n_events == 1 else 's'} -> {out}: {files}")


@contextlib.contextmanager
def _warning_lines(*categories: type[Warning]) -> Iterator[None]:
    """Print each warning of ``categories`` raised inside as one ``warning:`` line, as it comes."""
    import warnings

    from rich.markup import escape

    shown = warnings.showwarning

    def show(message: Any, cat: type[Warning], *args: Any, **kwargs: Any) -> None:
        if not issubclass(cat, categories):
            return shown(message, cat, *args, **kwargs)
        console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False, soft_wrap=True)

    with warnings.catch_warnings():
        for category in categories:
            warnings.simplefilter("always", category)
        warnings.showwarning = show
        yield


@app.command(cls=_Command)
def track(
    inputs: list[Path] = typer.Argument(..., help="Frames in time order: one multi-frame file or several image files."),
    model: str = typer.Option(..., "--model", help="Shipped model name or path to <stem>.safetensors/.json."),
    out: Path = typer.Option(..., "--out", help="Output directory (sites, presence, events, drift, occupancy, plots, GIF)."),
    sampling: Optional[float] = typer.Option(None, "--sampling", help="Pixel size in Å/px (overrides the files')."),
    tolerance: float = typer.Option(0.7, "--tolerance", min=0.0, help="Linking distance between frames (Å)."),
    frame_interval: Optional[float] = typer.Option(None, "--frame-interval", help="Seconds between frames (rates per second)."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold",
        help="Atom-map value that separates present from absent when presence is decided over the series, above "
             "0.01 and below 0.99 (no frame counts for more than 99 : 1 odds) (default: the model card's peak "
             "threshold, or 0.5 when that is outside; the sites are still found with the card's)."),
    switch_cost: Optional[float] = typer.Option(
        None, "--switch-cost", min=0.0,
        help="Evidence (nats) a change of presence must overcome (default: from the noise of the map values, at least 2)."),
    min_run: int = typer.Option(
        1, "--min-run", min=1,
        help="Frames a decided change must also last to count as an event (K); a change in the last K-1 frames "
             "cannot last that long and is ignored."),
    registration: Literal["first", "previous"] = typer.Option(
        "first", "--registration",
        help="Register every frame to the first (errors do not add up; each frame must keep at least half of the "
             "field in common with it), or to the frame before (a field that changes a lot or drifts farther)."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Test-time augmentation of every frame (8 views, 8x the network time). Default: the model card's setting."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the outputs of an earlier run in --out (refused otherwise)."),
) -> None:
    """Time series: align frames, find columns per frame, link them into sites, decide presence over the series
    (two-state hidden Markov model on the atom map at each site), report presence and events."""

    def action() -> None:
        from atomfinder.analysis.presence import check_switch_cost
        from atomfinder.analysis.timeseries.outputs import earlier_outputs
        from atomfinder.analysis.timeseries.series import load_time_series
        from atomfinder.analysis.timeseries.tracking import TrackWarning
        from atomfinder.analysis.timeseries.tracking import track as run_track
        from atomfinder.detection.registration import RegistrationWarning

        if switch_cost is not None:
            check_switch_cost(switch_cost, "--switch-cost")
        if not overwrite:
            _refuse_existing(out, earlier_outputs(out))
        series = load_time_series([str(p) for p in inputs], model, sampling, threshold=threshold,
                                  sampling_label="--sampling", augment=augment, threshold_name="--threshold")
        sample, frames = series.sample, series.frames
        unfinished = unfinished_model_warning(series.card)
        if unfinished:
            console.print(f"[yellow]warning:[/yellow] {escape(unfinished)}", highlight=False, soft_wrap=True)
        console.print(escape(_pixel_size_line(sample.source, sample.sampling_A, sample.sampling_source)),
                      highlight=False, soft_wrap=True)
        for note in sample.notes:
            console.print(f"[cyan]note:[/cyan] {escape(note)}", highlight=False, soft_wrap=True)

        with _progress(f"track {len(frames)} frames") as bar, _warning_lines(RegistrationWarning, TrackWarning):
            task = bar.add_task(f"track {len(frames)} frames", total=len(frames))
            written = run_track(frames, series.detect_frame, sample.sampling_A, out, tolerance_A=tolerance,
                                frame_interval_s=frame_interval, threshold=series.threshold, switch_cost=switch_cost,
                                min_run=min_run, provenance=series.provenance(), no_data=sample.no_data,
                                mode=registration, overwrite=overwrite,
                                progress=lambda done, total: bar.update(task, completed=done))
        for line in series.validity_warnings():  # as detect prints a stack's failed checks
            console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
        console.print(escape(_track_summary_line(len(frames), written, out)), highlight=False, soft_wrap=True)

    _run(action)


@app.command("finetune", cls=_Command)
def finetune_command(
    model: str = typer.Option(..., "--model", help="Shipped model name (gold, graphene) or a model path whose card records its training simulation."),
    microscope: Path = typer.Option(..., "--microscope", help=f"TOML with a {escape('[microscope]')} table of your microscope's ranges (configs/microscope-example.toml; defocus positive = underfocus)."),
    out: Path = typer.Option(..., "--out", help="Run directory: stores, checkpoint, model.safetensors + model.json, comparison.md/.json, report/."),
    minutes: float = typer.Option(30.0, "--minutes", help="Wall-clock budget of the fine-tuning (simulation and evaluation come on top)."),
    n_train: Optional[int] = typer.Option(None, "--n-train", min=1, help="Training simulations (default: gold 1200, graphene 2400)."),
    n_test: int = typer.Option(128, "--n-test", min=1, help="Test simulations (and calibration simulations for a calibrated model)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the training store; the test store uses seed + 1, the calibration store seed + 2."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Simulation processes and training threads (default: all CPUs; 0: simulate in this process, train on one thread)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out (same model, microscope, sizes and seed)."),
) -> None:
    """Specialise a model to your microscope: simulate its ranges, fine-tune, compare with the general model."""

    def action() -> None:
        from rich.markup import escape

        from atomfinder.finetune import finetune

        with _progress("finetune") as bar:
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int | None) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total, description=stage)

            result = finetune(model, microscope, out, minutes=minutes, n_train=n_train, n_test=n_test, seed=seed,
                              workers=workers, resume=resume, progress=progress,
                              say=lambda line: console.print(escape(line), highlight=False, soft_wrap=True))
        Console(highlight=False, soft_wrap=True).print(escape(result.markdown))
        console.print(escape(f"model: {result.model} (use --model {result.model}); written: "
                             + ", ".join(str(p) for p in result.files)), highlight=False, soft_wrap=True)

    _run(action, resume_hint="continue with the same command and --resume")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
