"""Specialise a model to one microscope: simulate its ranges, fine-tune, compare with the general model.

``atomfinder finetune --model gold --microscope my.toml --out runs/my-gold`` runs
:func:`finetune`, which

1. reads the user's microscope ranges (:func:`read_microscope`: a ``[microscope]``
   table of :class:`~atomfinder.imaging.microscope.MicroscopeRanges` fields; the
   fields left out keep the model's recipe);
2. puts them into the model's own training recipe (:func:`shipped_recipe`, the
   ``SimulationConfig`` its card records) and simulates a training store, a fresh
   test store (another seed) and, when the model has a confidence calibration, a
   held-out calibration store, all through the resumable
   :func:`~atomfinder.datasets.generate.simulate_to_store`;
3. fine-tunes the model from its weights with its own training config
   (``init_from``) for a wall-clock budget (:func:`train_model`), chooses the
   peak threshold on the validation split and re-fits the calibration;
4. scores the fine-tuned model, the general model and the conventional baseline
   on the same test images (:func:`compare_models`) and writes a side-by-side
   summary (:func:`comparison_summary`, :func:`summary_markdown`);
5. writes ``<out>/model.safetensors`` + ``<out>/model.json``, a normal model whose
   card records the user's ranges as its validity range.

Layout of ``<out>``: ``finetune.json`` (what the run makes; ``--resume`` must
match it), ``data/{train,test,calibration}.zarr``, ``train/`` (checkpoint,
learning curves, best model by validation F1), ``model.*``, ``report/`` (the
evaluator's full report on the test store), ``comparison.md`` and
``comparison.json``. Every stage resumes: finished stores are not simulated
again, training continues from its checkpoint.

A workflow above ``datasets``, ``nn`` and ``analysis``; it needs the simulation
extra (abTEM, ase). ``import atomfinder`` does not import it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atomfinder._config import read_toml
from atomfinder._files import atomic_write

#: The documented example of a microscope file.
EXAMPLE = "configs/microscope-example.toml"
#: Default training images per system: simulated in about 7 min (gold, ~3 images/s)
#: or 1.5 min (graphene, ~30 images/s) on a 2-core CPU, and seen 20-40 times in 30 min.
DEFAULT_N_TRAIN = {"gold": 1200, "graphene": 2400}
#: Default for systems not listed above.
DEFAULT_N_TRAIN_OTHER = 1200
#: Default test (and calibration) images.
DEFAULT_N_TEST = 128
#: Microscope fields a file must give (besides the Cs range of its kind of lens and a
#: defocus range: ``defocus_around_scherzer_A``, or ``corrected_defocus_A`` for corrected lenses).
REQUIRED_FIELDS = ("energies_eV", "dose_e_per_A2")
#: How far ``sampling_A`` may move from the model's pixel size (relative): the weights are scale-specific.
MAX_SAMPLING_CHANGE = 0.25
#: Detection settings that say how a model is used, not values tuned to its weights: a
#: fine-tuned model keeps the general model's (its threshold and confidence are fitted anew).
INHERITED_DETECTION = ("test_time_augmentation", "honeycomb")
#: Names of the two models in the comparison: the fine-tuned one, and the model it started from,
#: called ``GENERAL`` when it is shipped with atomfinder and ``PARENT`` when it is the user's own.
FINE_TUNED, GENERAL, PARENT = "fine-tuned", "shipped", "parent"

#: ``progress(stage, done, total)``: a stage's progress (total None when unknown).
Progress = Callable[[str, int, "int | None"], None]

_PROBABILITIES = ("p_corrected", "p_objective_aperture", "p_defocus_variation")
_POSITIVE = ("energies_eV", "sampling_A", "dose_e_per_A2", "gain", "aperture_resolution_A", "mtf_c1",
             "uncorrected_min_energy_eV")
_NON_NEGATIVE = ("sampling_jitter", "focal_spread_A", "angular_spread_mrad", "astigmatism_A", "coma_A",
                 "defocus_gradient_max", "blur_px", "mtf_c0", "mtf_c2")
_UNITS = (("_e_per_A2", "e/Å²"), ("_eV", "eV"), ("_mrad", "mrad"), ("_px", "pixels"), ("_A", "Å"))


# --------------------------------------------------------------------------- the microscope file


def _unit(name: str) -> str:
    return next((f" ({unit})" for suffix, unit in _UNITS if name.endswith(suffix)), "")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _as_float(v: Any) -> Any:
    """TOML integers (``energies_eV = [300000]``) as floats; anything else as it is."""
    if isinstance(v, list):
        return [_as_float(x) for x in v]
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def read_microscope(path: Path | str, recipe: Any) -> tuple[Any, dict[str, Any]]:
    """Read a user's microscope ranges from a TOML file.

    The file holds a ``[microscope]`` table (``[simulation.microscope]`` is read
    too, so a ``simulate --config`` override works) whose keys are fields of
    :class:`~atomfinder.imaging.microscope.MicroscopeRanges`, with its units (eV,
    Å, e/Å²; defocus positive = underfocus). Fields left out keep the recipe's.

    Parameters
    ----------
    path : path
        The TOML file (see ``configs/microscope-example.toml``).
    recipe : MicroscopeRanges
        The model's training ranges, which fill the fields the file leaves out.

    Returns
    -------
    (MicroscopeRanges, dict)
        The ranges to simulate, and the fields the file gave.

    Raises
    ------
    ValueError
        One line naming the file and the field: not TOML, no ``[microscope]``
        table, another table, an unknown, missing or invalid field.
    """
    from atomfinder.imaging.microscope import MicroscopeRanges

    path = Path(path)
    data = read_toml(path)
    simulation = data.get("simulation") if isinstance(data.get("simulation"), dict) else {}
    if isinstance(data.get("microscope"), dict):
        table, others = data["microscope"], set(data) - {"microscope"}
    elif isinstance(simulation.get("microscope"), dict):
        table, others = simulation["microscope"], (set(data) - {"simulation"}) | (set(simulation) - {"microscope"})
    else:
        raise ValueError(f"{path}: needs a [microscope] table of your microscope's ranges (see {EXAMPLE})")
    if others:
        raise ValueError(f"{path}: finetune reads only the [microscope] table; remove {', '.join(sorted(others))}")
    given = {k: _as_float(v) for k, v in table.items()}
    merged = recipe.to_dict() | given
    if "defocus_around_scherzer_A" in given and "corrected_defocus_A" not in given:
        merged["corrected_defocus_A"] = ()  # the file's relative range holds for every lens
    try:
        ranges = MicroscopeRanges.from_dict(merged)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    check_microscope(ranges, given, path)
    return ranges, given


#: Electron energies (eV) a microscope file may give: 20 kV to 1.5 MV.
ENERGY_RANGE_EV = (2e4, 1.5e6)
#: Smallest Cs (Å) of an uncorrected objective lens a microscope file may give: 0.1 mm.
MIN_UNCORRECTED_CS_A = 1e6
#: A corrected Cs range whose largest |Cs| (Å) is below this (0.01 µm, but not 0) was given in µm.
MIN_CORRECTED_CS_A = 100.0


def check_microscope(ranges: Any, given: Mapping[str, Any], source: Path | str = "microscope") -> None:
    """Check the types and bounds of microscope ranges and that the essential fields were given.

    Parameters
    ----------
    ranges : MicroscopeRanges
        The merged ranges.
    given : mapping
        The fields the user's file gave: :data:`REQUIRED_FIELDS` and the Cs range
        of the kind of lens (``Cs_corrected_A`` when ``p_corrected > 0``,
        ``Cs_uncorrected_A`` when ``p_corrected < 1``) must be among them.
    source : path or str
        Named in the message.

    Raises
    ------
    ValueError
        One line naming ``source`` and the first bad field.
    """
    from atomfinder.imaging.microscope import MicroscopeRanges

    def bad(name: str, problem: str) -> ValueError:
        return ValueError(f"{source}: [microscope] {name}{_unit(name)} {problem} (see {EXAMPLE})")

    defaults = MicroscopeRanges()
    for f in dataclasses.fields(MicroscopeRanges):
        value, default = getattr(ranges, f.name), getattr(defaults, f.name)
        if isinstance(default, tuple) and f.name == "energies_eV":
            if not (isinstance(value, tuple) and value and all(_is_number(v) for v in value)):
                raise bad(f.name, f"must be a list of numbers, e.g. [300000.0]; got {value!r}")
        elif f.name == "corrected_defocus_A" and value == ():
            continue  # not given: defocus relative to Scherzer for every lens
        elif isinstance(default, tuple):
            if not (isinstance(value, tuple) and len(value) == 2 and all(_is_number(v) for v in value)):
                raise bad(f.name, f"must be [low, high] (equal bounds fix it); got {value!r}")
            if value[0] > value[1]:
                raise bad(f.name, f"must be [low, high] with low <= high; got {list(value)}")
        elif not _is_number(value):
            raise bad(f.name, f"must be a number; got {value!r}")
    for name in _POSITIVE:
        value = getattr(ranges, name)
        if min(value if isinstance(value, tuple) else (value,)) <= 0:
            raise bad(name, f"must be positive; got {value!r}")
    for name in _NON_NEGATIVE:
        value = getattr(ranges, name)
        if min(value if isinstance(value, tuple) else (value,)) < 0:
            raise bad(name, f"must not be negative; got {value!r}")
    for name in _PROBABILITIES:
        if not 0.0 <= getattr(ranges, name) <= 1.0:
            raise bad(name, f"must be a probability in [0, 1]; got {getattr(ranges, name)!r}")
    if ranges.sampling_jitter >= 1:
        raise bad("sampling_jitter", f"must be below 1 (a relative error); got {ranges.sampling_jitter!r}")
    # values in the wrong unit (kV for eV, µm or mm for Å) are refused, not run for 30 minutes
    if not all(ENERGY_RANGE_EV[0] <= e <= ENERGY_RANGE_EV[1] for e in ranges.energies_eV):
        raise bad("energies_eV", f"must be electron energies in eV ({ENERGY_RANGE_EV[0]:g}-{ENERGY_RANGE_EV[1]:g}, "
                                 f"e.g. 300000.0 for 300 kV); got {list(ranges.energies_eV)}")
    if ranges.p_corrected < 1 and "Cs_uncorrected_A" in given and min(ranges.Cs_uncorrected_A) < MIN_UNCORRECTED_CS_A:
        raise bad("Cs_uncorrected_A", f"must be the Cs of an uncorrected lens in Å (at least {MIN_UNCORRECTED_CS_A:g} Å "
                                      f"= 0.1 mm; 1.2 mm is 1.2e7 Å); got {list(ranges.Cs_uncorrected_A)}")
    if ranges.p_corrected > 0 and "Cs_corrected_A" in given:
        largest = max(abs(v) for v in ranges.Cs_corrected_A)
        if 0 < largest < MIN_CORRECTED_CS_A:
            raise bad("Cs_corrected_A", f"is in Å (1 µm is 1e4 Å); |Cs| of at most {largest:g} Å = "
                                        f"{largest / 1e4:g} µm is below what a corrector sets: is it in µm? got "
                                        f"{list(ranges.Cs_corrected_A)}")
    required = list(REQUIRED_FIELDS)
    if ranges.p_corrected > 0 or min(ranges.energies_eV) < ranges.uncorrected_min_energy_eV:
        required.append("Cs_corrected_A")
    if ranges.p_corrected < 1:
        required.append("Cs_uncorrected_A")
        if max(ranges.energies_eV) < ranges.uncorrected_min_energy_eV:
            raise bad("p_corrected", f"< 1 asks for uncorrected lenses, which are drawn only at >= "
                                     f"uncorrected_min_energy_eV = {ranges.uncorrected_min_energy_eV:g} eV; "
                                     f"all energies_eV are below")
    uncorrected = ranges.p_corrected < 1 and max(ranges.energies_eV) >= ranges.uncorrected_min_energy_eV
    if "corrected_defocus_A" not in given or uncorrected:
        required.append("defocus_around_scherzer_A")
    for name in required:
        if name not in given:
            raise bad(name, "is missing: give your microscope's range")


def absolute_defocus_A(ranges: Any) -> list[dict[str, Any]]:
    """The absolute defocus range the microscope ranges draw, per energy and kind of lens.

    The ranges give defocus relative to the Scherzer defocus of the drawn Cs and
    energy (or, for corrected lenses, absolute when ``corrected_defocus_A`` is
    set); a microscopist reads absolute values (C1) off the corrector screen.

    Returns
    -------
    list of dict
        ``{"energy_kV", "lens", "Cs_um": [lo, hi], "defocus_A": [lo, hi]}``,
        defocus in Å, positive = underfocus.
    """
    from atomfinder.imaging.microscope import scherzer_defocus_A

    rows = []
    for energy in sorted(set(ranges.energies_eV)):
        uncorrected_here = energy >= ranges.uncorrected_min_energy_eV
        lenses = []
        if ranges.p_corrected > 0 or not uncorrected_here:
            lenses.append(("corrected", ranges.Cs_corrected_A))
        if ranges.p_corrected < 1 and uncorrected_here:
            lenses.append(("uncorrected", ranges.Cs_uncorrected_A))
        for lens, (cs_lo, cs_hi) in lenses:
            if lens == "corrected" and ranges.corrected_defocus_A:
                lo, hi = ranges.corrected_defocus_A
            else:
                lo = scherzer_defocus_A(cs_lo, energy) + ranges.defocus_around_scherzer_A[0]
                hi = scherzer_defocus_A(cs_hi, energy) + ranges.defocus_around_scherzer_A[1]
            rows.append({"energy_kV": energy / 1e3, "lens": lens, "Cs_um": [cs_lo / 1e4, cs_hi / 1e4],
                         "defocus_A": [round(lo, 1), round(hi, 1)]})
    return rows


# --------------------------------------------------------------------------- recipes


def shipped_recipe(card: Any) -> Any:
    """The simulation recipe a model was trained on, from its card.

    Settings the card does not name did not exist when the model was trained;
    they take the :class:`~atomfinder.datasets.generate.SimulationConfig` field
    defaults, which leave the later additions switched off (graphene 0.2 was
    trained without empty fields or contamination), not today's recipe for the
    system.

    Raises
    ------
    ValueError
        The card records no training simulation.
    """
    from atomfinder.datasets.generate import SimulationConfig
    from atomfinder.imaging.microscope import MicroscopeRanges

    sim = (card.training or {}).get("data", {}).get("simulation")
    if not isinstance(sim, Mapping) or "system" not in sim:
        raise ValueError(f"model {card.name} {card.version}: its card records no training simulation "
                         "(training.data.simulation), so there is no recipe to specialise")
    as_trained = SimulationConfig(system=sim["system"]).to_dict() | dict(sim)
    as_trained["microscope"] = MicroscopeRanges().to_dict() | dict(sim.get("microscope") or {})
    return SimulationConfig.from_dict(as_trained)


def specialised_recipe(recipe: Any, ranges: Any) -> Any:
    """``recipe`` with the microscope ranges replaced by the user's.

    Raises
    ------
    ValueError
        The user's pixel size is more than :data:`MAX_SAMPLING_CHANGE` from the
        recipe's (the weights are tied to the pixel size they were trained at).
    """
    model_sampling = recipe.microscope.sampling_A
    if abs(ranges.sampling_A / model_sampling - 1.0) > MAX_SAMPLING_CHANGE:
        raise ValueError(
            f"[microscope] sampling_A {ranges.sampling_A:g} Å/px is too far from the model's {model_sampling:g} Å/px: "
            "its weights are tied to that pixel size, and your micrographs are resampled to it whatever their "
            "own pixel size, so leave sampling_A out")
    return recipe.replace(microscope=ranges)


def default_n_train(system: str) -> int:
    """Training images made by default (:data:`DEFAULT_N_TRAIN`)."""
    return DEFAULT_N_TRAIN.get(system, DEFAULT_N_TRAIN_OTHER)


def finetune_train_config(card: Any, init_from: str, minutes: float, version: str, threads: int) -> Any:
    """The model's own training config, started from its weights for a wall-clock budget.

    Parameters
    ----------
    card : ModelCard
        The general model's card (``training.config`` is its recipe).
    init_from : str
        Shipped model name or model path of the weights to start from.
    minutes : float
        Training budget (``max_minutes``).
    version : str
        Version written to the new card.
    threads : int
        CPU threads for torch.
    """
    from atomfinder.nn.train import TrainConfig

    base = TrainConfig.from_dict(dict(card.training.get("config") or {}))
    return dataclasses.replace(base, name=card.name, version=version, init_from=init_from,
                               max_minutes=float(minutes), num_threads=int(threads))


# --------------------------------------------------------------------------- the run directory


@dataclass(frozen=True)
class FinetunePlan:
    """What a fine-tuning run makes; a resumed run must ask for the same.

    Attributes
    ----------
    model : str
        The general model as given (shipped name or path).
    model_version : str
        Its card's version.
    microscope : dict
        The microscope ranges simulated (``MicroscopeRanges.to_dict()``).
    n_train, n_test : int
        Training and test (and calibration) images.
    seed : int
        Seed of the training store; the test store uses ``seed + 1``, the
        calibration store ``seed + 2``.
    """

    model: str
    model_version: str
    microscope: dict
    n_train: int
    n_test: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class RunPaths:
    """The files of a fine-tuning run in ``out``."""

    out: Path

    @property
    def state(self) -> Path:
        return self.out / "finetune.json"

    @property
    def train_store(self) -> Path:
        return self.out / "data" / "train.zarr"

    @property
    def test_store(self) -> Path:
        return self.out / "data" / "test.zarr"

    @property
    def calibration_store(self) -> Path:
        return self.out / "data" / "calibration.zarr"

    @property
    def train_dir(self) -> Path:
        return self.out / "train"

    @property
    def model(self) -> Path:
        return self.out / "model"

    @property
    def report(self) -> Path:
        return self.out / "report"


def _write_json(path: Path, data: Any) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8"))


def start_run(paths: RunPaths, plan: FinetunePlan, resume: bool) -> dict[str, Any]:
    """Create the run's state file, or check that a resumed run asks for what it was started with.

    Returns
    -------
    dict
        The state (``plan``, and ``trained_minutes`` once training has finished).

    Raises
    ------
    ValueError
        A new run in a folder that holds one, ``resume`` without a run, or a
        resumed run with another model, microscope, size or seed.
    """
    if not resume:
        if paths.state.exists():
            raise ValueError(f"{paths.out}: holds a fine-tuning run already; add --resume to continue it, "
                             "or choose another --out")
        state = {"plan": plan.to_dict()}
        _write_json(paths.state, state)
        return state
    if not paths.state.exists():
        raise ValueError(f"{paths.out}: nothing to resume (no {paths.state.name}); start without --resume")
    state = json.loads(paths.state.read_text(encoding="utf-8"))
    old = state.get("plan", {})
    changed = [k for k, v in plan.to_dict().items() if old.get(k) != v]
    if changed:
        raise ValueError(f"{paths.out}: was started with another {', '.join(changed)}; resume it with the same "
                         "--model, --microscope, --n-train, --n-test and --seed, or choose another --out")
    return state


# --------------------------------------------------------------------------- stages


def _version_tag(out: Path) -> str:
    tag = re.sub(r"[^A-Za-z0-9.-]+", "-", out.resolve().name).strip(".-")
    return tag or "finetuned"


def _init_name(model: str, stem: Path) -> str:
    """How the card names the model it started from: the shipped name, else the path."""
    from atomfinder.nn.card import list_models, resolve_model

    if model in list_models() and resolve_model(model) == stem:
        return model
    return str(stem)


def simulate_stores(config: Any, plan: FinetunePlan, paths: RunPaths, calibrate: bool,
                    workers: int | None, progress: Progress) -> None:
    """Simulate (or finish) the training, test and, with ``calibrate``, calibration stores."""
    from atomfinder.datasets.generate import simulate_to_store

    stores = [("simulate training images", paths.train_store, plan.n_train, plan.seed),
              ("simulate test images", paths.test_store, plan.n_test, plan.seed + 1)]
    if calibrate:
        stores.append(("simulate calibration images", paths.calibration_store, plan.n_test, plan.seed + 2))
    for stage, path, n, seed in stores:
        simulate_to_store(config, n, path, seed=seed, workers=workers,
                          progress=lambda done, total, stage=stage: progress(stage, done, total))


def train_model(card: Any, config: Any, store_path: Path, run_dir: Path, resume: bool,
                progress: Progress) -> Path:
    """Fine-tune on a store with its validation split; the best model by validation F1.

    Parameters
    ----------
    card : ModelCard
        The general model's card (defocus offsets of focal-series models).
    config : TrainConfig
        :func:`finetune_train_config`.
    store_path : path
        The training store.
    run_dir : path
        Checkpoint, learning curves and best model.
    resume : bool
        Continue from ``run_dir/checkpoint.pt`` when it exists.
    progress : callable
        ``progress("train", step, total_steps)``.

    Returns
    -------
    Path
        The best model's stem (``run_dir/model``).
    """
    from atomfinder.analysis.evaluate import samples_from_store, validation_scorer
    from atomfinder.datasets.store import DatasetStore
    from atomfinder.nn.train import load_training_data, train, validation_split

    store = DatasetStore(store_path)
    train_idx, val_idx = validation_split(store, config)
    data = load_training_data(store, train_idx, config.normalization)
    validate = validation_scorer(list(samples_from_store(store, val_idx)), config.match_radius_A) if len(val_idx) else None
    recipe = {"store": str(store_path), "n": store.meta["n"], "seed": store.meta["seed"],
              "simulation": store.meta["config"]}
    return train(config, data, run_dir, validate=validate, resume=resume and (run_dir / "checkpoint.pt").exists(),
                 recipe=recipe, defocus_offsets_A=tuple(card.defocus_offsets_A),
                 progress=lambda step, total, parts: progress("train", step, total))


def with_general_usage(card: Any, general: Any) -> Any:
    """``card`` with the general model's :data:`INHERITED_DETECTION` settings.

    Training writes only the peak threshold and the minimum distance into a new card;
    without this a fine-tuned gold model, for example, would silently stop averaging
    its maps over the eight views that the general card asks for, and its threshold and
    confidence would be fitted on maps other than those the user gets.
    """
    inherited = {k: general.detection[k] for k in INHERITED_DETECTION if k in general.detection}
    return dataclasses.replace(card, detection=dict(card.detection) | inherited)


def choose_threshold(model: Any, card: Any, store_path: Path, progress: Progress) -> Any:
    """``card`` with the peak threshold chosen on the validation images of its training store."""
    from atomfinder.analysis.thresholds import THRESHOLDS, card_with_threshold, validation_threshold_scan
    from atomfinder.datasets.store import DatasetStore

    rows, n_val, radius = validation_threshold_scan(
        model, card, DatasetStore(store_path), THRESHOLDS,
        on_sample=lambda i, n: progress("choose the peak threshold", i + 1, n))
    return card_with_threshold(card, rows, n_val, radius, store_path)


def refit_calibration(model: Any, card: Any, general: Any, store_path: Path,
                      progress: Progress) -> tuple[Any, str]:
    """Re-fit the confidence calibration on held-out simulations, if the general model had one.

    Returns
    -------
    (ModelCard, str)
        The card (with the new calibration and the general model's confidence
        floor, ``detection["min_confidence"]``, if it has one; or with no
        calibration), and a sentence for the card and the summary saying what
        was done. A fit that fails (too few detections) leaves the card without
        calibration and says why: the general model's calibration never
        describes the fine-tuned one.
    """
    from atomfinder.analysis.calibration import calibrate_model
    from atomfinder.analysis.evaluate import to_jsonable
    from atomfinder.datasets.store import DatasetStore

    if not general.calibration:
        return dataclasses.replace(card, calibration={}), (
            f"not refitted: {general.name} {general.version} has no confidence calibration, "
            "so neither model gives a calibrated confidence")
    store = DatasetStore(store_path)
    try:
        fit, summary = calibrate_model(model, card, store,
                                       on_sample=lambda i, n: progress("refit the calibration", i + 1, n))
    except ValueError as exc:
        return dataclasses.replace(card, calibration={}), (
            f"not refitted ({exc}): this model has no confidence calibration; "
            f"{general.name} {general.version}'s does not apply to it")
    note = (f"refitted on {summary['n_images']} held-out simulations of this range ({store_path}, seed "
            f"{summary['seed']}; {summary['n_detections']} detections)")
    detection = dict(card.detection)
    if "min_confidence" in general.detection:  # a floor on the calibrated confidence means the same after a re-fit
        detection["min_confidence"] = general.detection["min_confidence"]
    return dataclasses.replace(card, calibration=to_jsonable(fit.to_dict() | {"fit": summary}),
                               detection=detection), note


def compare_models(model: Any, card: Any, general_model: Any, general_card: Any, store_path: Path,
                   report_dir: Path, progress: Progress, general_label: str = GENERAL) -> dict[str, Any]:
    """Score the fine-tuned model, the general model and the baseline on the same test images.

    Writes the evaluator's report (``report.md``, ``report.json``, plots) to
    ``report_dir``.

    Parameters
    ----------
    general_label : str
        The general model's name in the result: :data:`GENERAL` for a shipped model,
        :data:`PARENT` for the user's own (see :func:`general_label`).

    Returns
    -------
    dict
        :func:`~atomfinder.analysis.evaluate.compare` output (detectors
        :data:`FINE_TUNED`, ``general_label`` and ``baseline``) with ``models`` and ``data``.
    """
    from atomfinder.analysis.evaluate import baseline_detector, compare, network_detector, samples_from_store
    from atomfinder.analysis.report import write_report
    from atomfinder.datasets.store import DatasetStore

    store = DatasetStore(store_path)
    radius = float(store.meta["config"].get("label_radius_A", 0.4))
    detectors = {
        FINE_TUNED: network_detector(model, card),
        general_label: network_detector(general_model, general_card),
        "baseline": baseline_detector(atom_radius_A=radius, min_distance_A=card.detection.get("min_distance_A", 1.0)),
    }
    result = compare(samples_from_store(store), detectors, class_names=card.class_names,
                     on_sample=lambda i: progress("evaluate both models", i + 1, len(store)))
    result["models"] = {FINE_TUNED: {"name": card.name, "version": card.version},
                        general_label: {"name": general_card.name, "version": general_card.version}}
    result["data"] = {"store": str(store_path), "seed": store.meta["seed"], "n": len(store),
                      "n_simulated": int(store.meta["n"])}
    write_report(result, report_dir, title=f"{card.name} {card.version} and {general_card.name} "
                                           f"{general_card.version} on {store_path}")
    return result


def general_label(stem: Path | str) -> str:
    """How the comparison names the model a fine-tune started from: :data:`GENERAL` ("shipped") for a
    model installed with atomfinder, :data:`PARENT` ("parent") for any other."""
    from atomfinder.nn.card import is_shipped

    return GENERAL if is_shipped(stem) else PARENT


def _compared(models: Mapping[str, Any]) -> tuple[str, str]:
    """(fine-tuned, general) names of a result's or summary's ``models`` (``GENERAL`` in older results)."""
    return FINE_TUNED, next((name for name in models if name != FINE_TUNED), GENERAL)


# --------------------------------------------------------------------------- the summary

_SUMMARY_METRICS = ("n_images", "tp", "fp", "fn", "precision", "recall", "f1", "rmse_pm", "height_exact",
                    "height_within1")


def comparison_summary(result: Mapping[str, Any], radius_A: float = 0.5) -> dict[str, Any]:
    """Both models' figures on the same test images, overall and by dose.

    Parameters
    ----------
    result : dict
        :func:`compare_models` output.
    radius_A : float
        Matching radius of the figures (Å).

    Returns
    -------
    dict
        ``radius_A``, ``test_store``, ``models``, ``overall`` ``{model: metrics}``,
        ``by_dose`` (rows with ``bin``, ``n_images`` and ``{model: metrics}``) and
        ``baseline`` (overall); metrics: precision, recall, F1, RMSE (pm), counts
        and, for column heights, the share exact and within ±1.
    """
    from atomfinder.analysis.evaluate import radius_key, to_jsonable

    rk = radius_key(radius_A)
    dets = result["detectors"]
    names = _compared(result.get("models") or {GENERAL: {}})

    def pick(metrics: Mapping[str, Any]) -> dict[str, Any]:
        return {k: metrics.get(k) for k in _SUMMARY_METRICS}

    by_dose = []
    for b in dets[FINE_TUNED]["by_dose"]:
        row: dict[str, Any] = {"bin": b["bin"], "n_images": b["n_images"]}
        for name in names:
            match = [x for x in dets[name]["by_dose"] if x["bin"] == b["bin"]]
            row[name] = pick(match[0]["metrics"][rk]) if match else None
        by_dose.append(row)
    return to_jsonable({
        "radius_A": float(radius_A),
        "border_A": result["settings"]["border_A"],
        "test_store": result.get("data", {}),
        "models": result.get("models", {}),
        "overall": {name: pick(dets[name]["overall"][rk]) for name in names},
        "by_dose": by_dose,
        "baseline": pick(dets["baseline"]["overall"][rk]) if "baseline" in dets else None,
    })


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.{digits}f}"


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The comparison as Markdown: overall and by dose, both models side by side."""
    models = summary["models"]
    names = _compared(models)
    label = {name: f"{name} ({models[name]['name']} {models[name]['version']})" for name in names}
    test = summary["test_store"]
    heights = any(summary["overall"][n].get("height_exact") is not None for n in names)
    lines = [f"# {models[FINE_TUNED]['name']} {models[FINE_TUNED]['version']}: specialised vs general", ""]
    mic = summary.get("microscope")
    if mic:
        lines += [f"Microscope: {mic['source']}. Simulated: " + "; ".join(
            f"{r['energy_kV']:g} kV, {r['lens']} Cs {r['Cs_um'][0]:g}…{r['Cs_um'][1]:g} µm, defocus "
            f"{r['defocus_A'][0]:+g}…{r['defocus_A'][1]:+g} Å" for r in mic["absolute_defocus"])
            + f" (positive = underfocus); dose {mic['dose_e_per_A2'][0]:g}–{mic['dose_e_per_A2'][1]:g} e/Å².", ""]
    lines += [f"Test: {test.get('n')} fresh simulations of this range ({test.get('store')}, seed {test.get('seed')}), "
              f"the same images for both models; matching radius {summary['radius_A']:g} Å, sites and detections "
              f"within {summary['border_A']:g} Å of the image edge ignored.", ""]
    header = ["model", "images", "F1", "precision", "recall", "RMSE (pm)"] + (["height exact", "±1"] if heights else [])
    rows = []
    for name in names:
        m = summary["overall"][name]
        rows.append([label[name], str(m["n_images"]), _f(m["f1"]), _f(m["precision"]), _f(m["recall"]),
                     _f(m["rmse_pm"], 1)] + ([_f(m["height_exact"], 2), _f(m["height_within1"], 2)] if heights else []))
    b = summary.get("baseline")
    if b:
        rows.append(["conventional peak finder", str(b["n_images"]), _f(b["f1"]), _f(b["precision"]),
                     _f(b["recall"]), _f(b["rmse_pm"], 1)] + (["–", "–"] if heights else []))
    lines += _md_table(header, rows)
    lines += ["## By dose (e/Å²)", ""]
    header = ["dose", "images"] + [f"{metric} {short}" for metric in ("F1", "precision", "recall", "RMSE (pm)")
                                   for short in names]
    rows = []
    for r in summary["by_dose"]:
        cells = [r["bin"], str(r["n_images"])]
        for metric, digits in (("f1", 3), ("precision", 3), ("recall", 3), ("rmse_pm", 1)):
            cells += [_f((r[name] or {}).get(metric), digits) for name in names]
        rows.append(cells)
    lines += _md_table(header, rows)
    t = summary.get("training")
    if t:
        used = t.get("train_images")
        images = (f"{t['n_train']} simulations" if used is None else
                  f"{used} of {t['n_train']} simulations ({t['validation_images']} held out for validation)")
        lines += [f"Fine-tuned on {images}: {training_sentence(t)}; {t['total_minutes']:.0f} min of training in "
                  f"all, the general model's included. Peak threshold {t['threshold']:g}, chosen on the "
                  f"{t['validation_images']} validation images. Calibration: {t['calibration']}.", ""]
    lines += ["Full reports (by defocus, class confusion, plots, the baseline): report/report.md.", ""]
    return "\n".join(lines)


def _steps(n: Any) -> str:
    return f"{n} step{'' if n == 1 else 's'}"


def training_sentence(t: Mapping[str, Any]) -> str:
    """``best after 12 of 15 steps (0.4 of 0.6 min; budget 0.5 min)``: where the kept model stands in the run.

    Parameters
    ----------
    t : mapping
        ``steps`` and ``minutes`` (of the kept, best model), ``run_steps`` and ``run_minutes``
        (the whole fine-tuning run) and ``budget_minutes``; a summary written before the run's
        figures were recorded has only the first two.
    """
    if t.get("run_steps") is None:
        return f"best after {_steps(t['steps'])} ({t['minutes']:.1f} min)"
    budget = f"; budget {t['budget_minutes']:g} min" if t.get("budget_minutes") is not None else ""
    return (f"best after {t['steps']} of {_steps(t['run_steps'])} ({t['minutes']:.1f} of {t['run_minutes']:.1f} min"
            f"{budget})")


def run_progress(run_dir: Path) -> tuple[int, float] | None:
    """(steps, seconds) the training run in ``run_dir`` made, from its checkpoint; None without one."""
    import torch

    checkpoint = Path(run_dir) / "checkpoint.pt"
    if not checkpoint.is_file():
        return None
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return int(state["step"]), float(state["elapsed_s"])


def fine_tuning_seconds(training: Mapping[str, Any], run: tuple[int, float] | None) -> tuple[float, float | None]:
    """(kept model, whole run) seconds of fine-tuning, the general model's time left out.

    Both come from :func:`atomfinder.nn.train.card_time_s`, the rounding the card's
    ``training.time_s`` had: the kept (best) model was saved at or before the run's end, so its
    time can never exceed the run's (an unrounded run time could: 0.898 s against a card's 0.9).

    Parameters
    ----------
    training : mapping
        The fine-tuned card's ``training`` (``time_s``, and ``init_time_s``: the general model's).
    run : (steps, seconds) or None
        :func:`run_progress` of the run; None gives None for the run's time.
    """
    from atomfinder.nn.train import card_time_s

    init = float(training.get("init_time_s", 0.0))
    best = float(training["time_s"]) - init
    return best, (card_time_s(init, run[1]) - init if run else None)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows] + [""])


# --------------------------------------------------------------------------- the workflow


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` made.

    Attributes
    ----------
    model : Path
        Stem of the fine-tuned model (``<out>/model``).
    summary : dict
        :func:`comparison_summary` with ``microscope`` and ``training``.
    markdown : str
        The summary as Markdown (``<out>/comparison.md``).
    files : list of Path
        Everything written at the end (model, card, summary, reports).
    """

    model: Path
    summary: dict
    markdown: str
    files: list


def _nothing(*_: Any) -> None:
    return None


def finetune(
    model: str,
    microscope: Path | str,
    out: Path | str,
    *,
    minutes: float = 30.0,
    n_train: int | None = None,
    n_test: int = DEFAULT_N_TEST,
    seed: int = 0,
    workers: int | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Specialise a model to the user's microscope and compare it with the general model.

    Parameters
    ----------
    model : str
        Shipped model name (``gold``, ``graphene``) or a model path whose card
        records its training simulation.
    microscope : path
        TOML file with a ``[microscope]`` table (:func:`read_microscope`).
    out : path
        Run directory (see the module docs for its layout).
    minutes : float
        Wall-clock budget of the fine-tuning (the simulation and evaluation come on top).
    n_train : int, optional
        Training images (default :func:`default_n_train`), at least two jobs of
        the recipe (so that some are held out for validation).
    n_test : int
        Test images (and calibration images, for a calibrated model).
    seed : int
        Seed of the training store (test ``seed + 1``, calibration ``seed + 2``).
    workers : int, optional
        Simulation processes and torch threads (default all CPUs; 0 = simulate
        in this process and train on one thread).
    resume : bool
        Continue a run in ``out`` after an interruption (same model, microscope,
        sizes and seed; ``minutes`` and ``workers`` may change).
    progress : callable, optional
        ``progress(stage, done, total)``.
    say : callable, optional
        Receives one line per noteworthy step.

    Returns
    -------
    FinetuneResult

    Raises
    ------
    ValueError
        Bad input (unknown model, bad microscope file, sizes), or a run folder
        that does not match; one line each.
    """
    from atomfinder.nn.card import load_model, resolve_model, save_model

    progress, say = progress or _nothing, say or _nothing
    if not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"--minutes must be positive, got {minutes:g}")
    if n_test < 1:
        raise ValueError(f"--n-test must be at least 1, got {n_test}")
    if seed < 0:
        raise ValueError(f"--seed {seed}: give an integer >= 0 (random seeds are not negative)")
    stem = resolve_model(model)
    general_model, general = load_model(stem)
    recipe = shipped_recipe(general)
    ranges, _ = read_microscope(microscope, recipe.microscope)
    config = specialised_recipe(recipe, ranges)
    n_train = default_n_train(config.system) if n_train is None else int(n_train)
    if n_train < 2 * config.samples_per_job:
        raise ValueError(f"--n-train {n_train}: needs at least {2 * config.samples_per_job} images (two jobs of "
                         f"{config.samples_per_job}), so that some are held out for validation")
    out = Path(out)
    paths = RunPaths(out)
    plan = FinetunePlan(model=str(model), model_version=general.version, microscope=ranges.to_dict(),
                        n_train=n_train, n_test=int(n_test), seed=int(seed))
    state = start_run(paths, plan, resume)
    threads = (os.cpu_count() or 1) if workers is None else max(1, workers)
    train_config = finetune_train_config(general, _init_name(str(model), stem), minutes,
                                         f"{general.version}+{_version_tag(out)}", threads)
    defocus = absolute_defocus_A(ranges)
    say(f"{general.name} {general.version} -> {out}: {n_train} training and {n_test} test simulations of "
        + "; ".join(f"{r['energy_kV']:g} kV, Cs {r['Cs_um'][0]:g}…{r['Cs_um'][1]:g} µm, defocus "
                    f"{r['defocus_A'][0]:+g}…{r['defocus_A'][1]:+g} Å" for r in defocus)
        + f"; then {minutes:g} min of fine-tuning")

    simulate_stores(config, plan, paths, bool(general.calibration), workers, progress)
    if state.get("trained_minutes", -1.0) >= minutes and (paths.train_dir / "model.json").exists():
        say(f"training finished before ({state['trained_minutes']:g} min budget): not resumed")
        best = paths.train_dir / "model"
    else:
        best = train_model(general, train_config, paths.train_store, paths.train_dir, resume, progress)
        state["trained_minutes"] = float(minutes)
        _write_json(paths.state, state)
    budget = float(state["trained_minutes"])  # the budget the model was trained with, not this call's
    run = run_progress(paths.train_dir)
    net, card = load_model(best)
    card = with_general_usage(card, general)
    card = choose_threshold(net, card, paths.train_store, progress)
    card, calibration_note = refit_calibration(net, card, general, paths.calibration_store, progress)
    label = general_label(stem)
    result = compare_models(net, card, general_model, general, paths.test_store, paths.report, progress,
                            general_label=label)

    summary = comparison_summary(result)
    training = card.training
    best_s, run_s = fine_tuning_seconds(training, run)
    summary["microscope"] = {"source": str(microscope), "ranges": ranges.to_dict(), "absolute_defocus": defocus,
                             "dose_e_per_A2": list(ranges.dose_e_per_A2)}
    summary["training"] = {
        "minutes": best_s / 60,
        "total_minutes": training["time_s"] / 60, "steps": training.get("steps"),
        "run_steps": run[0] if run else None, "run_minutes": run_s / 60 if run else None,
        "budget_minutes": budget, "n_train": n_train,
        "train_images": training.get("train_images"),
        "threshold": card.detection["threshold"],
        "validation_images": training["threshold_scan"]["validation_images"], "calibration": calibration_note,
    }
    markdown = summary_markdown(summary)

    from atomfinder.analysis.evaluate import card_evaluation

    general_evaluation = card_evaluation(result, label)
    evaluation = card_evaluation(result, FINE_TUNED) | {
        "general_model": result["models"][label],
        "general_overall": general_evaluation["overall"],
        "general_by_dose": general_evaluation["by_dose"],
    }
    finetune_record = {
        "from": {"model": str(model), "name": general.name, "version": general.version},
        "microscope_file": str(microscope), "microscope": ranges.to_dict(), "absolute_defocus": defocus,
        "budget_minutes": budget, "test_store": result["data"],
        "run": {"steps": run[0] if run else None, "time_s": round(run_s, 1) if run else None,
                "best_steps": training.get("steps"), "best_time_s": round(best_s, 1)},
        "calibration_store": str(paths.calibration_store) if general.calibration else None,
        "calibration": calibration_note,
    }
    card = dataclasses.replace(card, evaluation=evaluation, training=dict(card.training) | {"finetune": finetune_record})
    files = list(save_model(net, card, paths.model))
    files.append(_write_json(out / "comparison.json", summary))
    files.append(atomic_write(out / "comparison.md", lambda tmp: Path(tmp).write_text(markdown, encoding="utf-8")))
    files.append(paths.report / "report.md")
    return FinetuneResult(model=paths.model, summary=summary, markdown=markdown, files=files)


__all__ = [
    "DEFAULT_N_TEST",
    "DEFAULT_N_TRAIN",
    "FinetunePlan",
    "FinetuneResult",
    "absolute_defocus_A",
    "check_microscope",
    "comparison_summary",
    "finetune",
    "read_microscope",
    "shipped_recipe",
    "specialised_recipe",
    "summary_markdown",
]
