"""Training: typed config, augmentation, checkpoints, learning curves, best model.

The loop trains a :class:`~atomfinder.nn.unet.UNet` on samples read through
:mod:`atomfinder.datasets.store` (no physics here). Every image is normalised
once, exactly as at inference (:func:`atomfinder.nn.normalization.apply_normalization`
with the model card's settings), then random crops get the 8 flips/rotations,
a random gain and offset and extra noise. Contrast is never inverted on purpose:
contrast must come from the physics of the simulation.

Validation runs after every epoch through a ``validate(model) -> dict`` callable
(built by the caller from the detection and evaluation code, which ``nn`` does not
import); its ``"f1"`` decides which model is kept as the best.

Resumable: ``RUN/checkpoint.pt`` (model, optimiser, step, random states, history)
is written atomically every ``checkpoint_every`` steps and at every epoch end;
``resume=True`` continues from it after any interruption, ``kill -9`` included, and
returns at once (training nothing) from a run that had reached its end: its last step,
or its time limit when ``max_minutes`` is not raised. The cards saved during a run
say ``training.finished = False``; the run's end sets it to True, so the model a
killed run leaves behind says that it is not the end of its schedule.
Uses CUDA with mixed precision when present and DistributedDataParallel under
``torchrun`` (one process per GPU, or per CPU share with the gloo backend). Every
process draws the same global batch of ``batch_size * world_size`` crops from the
same random stream and trains on its own slice of it, so ``n`` processes of
``batch_size`` crops follow the single-process run with ``n * batch_size`` (up to
float rounding, for losses that are means over the crops: fixed class weights, no
Dice, no batch norm), and the checkpoint (written by rank 0) resumes every rank.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from atomfinder._config import ConfigMixin, check_number, check_pair, read_toml
from atomfinder._files import atomic_write, remove_stale_temporaries
from atomfinder.nn.card import (
    MAX_PARAMETERS,
    NESTED_FIELDS,
    ModelCard,
    estimated_parameters,
    load_card,
    load_model,
    resolve_model,
    save_model,
)
from atomfinder.nn.losses import segmentation_loss
from atomfinder.nn.normalization import apply_normalization
from atomfinder.nn.unet import NORMS, UNetConfig, build_model, count_parameters


@dataclass(frozen=True)
class TrainConfig(ConfigMixin):
    """A training recipe (``[train]`` table of a TOML file).

    Every field is checked when the config is made: a bad value is a one-line
    ``ValueError`` naming the field and what it must be (:meth:`from_toml` adds the
    file), before any data are read or a run folder is made.

    Attributes
    ----------
    name, version : str
        Model name and version written to the card.
    depth, width, norm : int, int, str
        U-Net levels (at least 1), channels of the first level, normalisation layer.
    height_head : bool
        Predict column heights (gold) as classes ``0..max_height``.
    max_height : int
        Largest column height the head can predict.
    crop_px : int
        Side of the random training crops (pixels; at least ``2**depth``).
    batch_size : int
        Crops per optimiser step (per process under DDP).
    epochs : int
        Passes over the training images (one random crop per image per pass; at least 1).
    validation_fraction : float
        Share of the store's jobs held out for validation (whole jobs, so that no
        structure is both trained on and validated), in [0, 1).
    max_validation_images : int
        Validation images scored per epoch.
    lr, weight_decay : float
        AdamW learning rate (peak of a cosine schedule with linear warm-up) and
        weight decay.
    warmup_steps : int
        Linear warm-up length.
    class_weights : str or list of float
        ``"batch"`` (inverse class frequencies per batch), fixed weights (>= 0,
        background first) or None (unweighted).
    dice_weight, height_weight : float
        Weights of the soft Dice and column-height losses.
    gain_range, offset_range : (float, float)
        Random gain and offset applied to the normalised crop.
    extra_noise_std : (float, float)
        Range of the standard deviation of extra Gaussian noise (normalised units).
    normalization : dict
        How images are normalised, e.g. ``{"kind": "local", "window_A": 12.0}``.
    min_distance_A, threshold, match_radius_A : float
        Peak finding used in validation (and recorded in the card) and the
        matching radius of the validation F1 (Å).
    honeycomb : dict
        Sublattice rule recorded in the card's ``detection["honeycomb"]`` (class
        names per sublattice, ``bond_A``, ``radius_A``; see
        :mod:`atomfinder.detection.sublattice`); empty for none.
    checkpoint_every : int
        Steps between checkpoints.
    seed : int
        Seed of initialisation, crops and augmentation.
    num_threads : int
        CPU threads for torch.
    amp : bool
        Mixed precision (bfloat16) on CUDA.
    max_minutes : float
        Stop (and save) after this many minutes of training (0 = no limit).
    init_from : str
        Shipped model name or model path whose weights start the training
        (fine-tuning; the architecture must be the same). ``""``: random
        initialisation. The card records it and adds that model's training time.
    """

    _config_label = "training setting"
    _list_fields = ("class_weights",)

    name: str = "model"
    version: str = "1.0"
    depth: int = 4
    width: int = 16
    norm: str = "batch"
    height_head: bool = False
    max_height: int = 0
    crop_px: int = 128
    batch_size: int = 8
    epochs: int = 30
    validation_fraction: float = 0.05
    max_validation_images: int = 48
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    class_weights: Any = "batch"
    dice_weight: float = 0.5
    height_weight: float = 0.5
    gain_range: tuple[float, float] = (0.8, 1.25)
    offset_range: tuple[float, float] = (-0.2, 0.2)
    extra_noise_std: tuple[float, float] = (0.0, 0.3)
    normalization: dict = field(default_factory=lambda: {"kind": "local", "window_A": 12.0})
    min_distance_A: float = 1.0
    threshold: float = 0.5
    match_radius_A: float = 0.5
    honeycomb: dict = field(default_factory=dict)
    checkpoint_every: int = 100
    seed: int = 0
    num_threads: int = 2
    amp: bool = True
    max_minutes: float = 0.0
    init_from: str = ""

    def __post_init__(self) -> None:
        """Check every field (one-line ``ValueError`` naming the first bad one and what it must be)."""
        for name in ("name", "version"):
            value = getattr(self, name)
            if not (isinstance(value, str) and value.strip()):
                raise ValueError(f"{name} must be a non-empty string; got {value!r}")
        check_number("depth", self.depth, "levels", lo=1, integer=True)
        check_number("width", self.width, "channels", lo=1, integer=True)
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}; got {self.norm!r}")
        for name in ("height_head", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false; got {getattr(self, name)!r}")
        check_number("max_height", self.max_height, "atoms", lo=1 if self.height_head else 0, integer=True)
        size = estimated_parameters({"depth": self.depth, "width": self.width, "max_height": self.max_height})
        if size > MAX_PARAMETERS:
            raise ValueError(f"depth {self.depth} and width {self.width} make a network of about {size:.3g} "
                             f"parameters; at most {MAX_PARAMETERS:.0e} can be loaded as a model")
        check_number("crop_px", self.crop_px, "pixels", lo=1, integer=True)
        if self.crop_px < 2**self.depth:
            raise ValueError(f"crop_px (pixels) must be at least 2**depth = {2**self.depth} (one pixel at the "
                             f"network's lowest level); got {self.crop_px}")
        for name in ("batch_size", "epochs", "max_validation_images", "checkpoint_every", "num_threads"):
            check_number(name, getattr(self, name), lo=1, integer=True)
        for name in ("warmup_steps", "seed"):
            check_number(name, getattr(self, name), lo=0, integer=True)
        check_number("validation_fraction", self.validation_fraction, "share of the jobs", lo=0, hi=1, hi_open=True)
        for name in ("lr", "weight_decay", "dice_weight", "height_weight"):
            check_number(name, getattr(self, name), lo=0)
        check_number("max_minutes", self.max_minutes, "minutes, 0 = no limit", lo=0)
        if not (self.class_weights is None or self.class_weights == "batch" or (
                isinstance(self.class_weights, (list, tuple)) and self.class_weights
                and all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                        for w in self.class_weights))):
            raise ValueError(f"class_weights must be \"batch\" or a list of numbers >= 0, one per class "
                             f"(background first); got {self.class_weights!r}")
        check_pair("gain_range", self.gain_range, lo=0, lo_open=True)
        check_pair("offset_range", self.offset_range)
        check_pair("extra_noise_std", self.extra_noise_std, "normalised units", lo=0)
        _check_table("normalization", self.normalization, NESTED_FIELDS["normalization"], required=("kind",))
        check_number("min_distance_A", self.min_distance_A, "Å", lo=0, lo_open=True)
        check_number("threshold", self.threshold, lo=0, hi=1)
        check_number("match_radius_A", self.match_radius_A, "Å", lo=0, lo_open=True)
        if not isinstance(self.honeycomb, dict):
            raise ValueError(f"honeycomb must be a table; got {self.honeycomb!r}")
        if self.honeycomb:
            test, what = NESTED_FIELDS["detection"]["honeycomb"]
            if not test(self.honeycomb):
                raise ValueError(f"honeycomb must be {what}; got {self.honeycomb!r}")
        if not isinstance(self.init_from, str):
            raise ValueError(f"init_from must be a model name or path (a string); got {self.init_from!r}")

    @classmethod
    def from_toml(cls, path: Path | str) -> "TrainConfig":
        """The ``[train]`` table (or the top level) of the TOML file ``path``.

        Raises
        ------
        ValueError
            One line naming the file: not valid TOML, or a bad setting.
        """
        path = Path(path)
        data = read_toml(path)
        try:
            return cls.from_dict(data.get("train", data))
        except (TypeError, ValueError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{path}: {message}") from None


def _check_table(name: str, value: Any, checks: dict, required: tuple[str, ...] = ()) -> None:
    """Refuse a config table that is not a dict, lacks a ``required`` key, has a key ``checks`` does not
    know or a value its check refuses (``checks``: ``{key: (test, what it must be)}``, as the card's)."""
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a table; got {value!r}")
    for key in required:
        if key not in value:
            raise ValueError(f"{name} needs {key!r}; got {value!r}")
    unknown = sorted(set(value) - set(checks))
    if unknown:
        raise ValueError(f"{name} has unknown key(s) {', '.join(unknown)} (known: {', '.join(checks)})")
    for key, (test, what) in checks.items():
        if key in value and not test(value[key]):
            raise ValueError(f"{name}.{key} must be {what}; got {value[key]!r}")


# -- data ---------------------------------------------------------------------------


@dataclass
class TrainingData:
    """Normalised images and targets in memory.

    Attributes
    ----------
    images : ndarray, float32, shape (n, c, h, w)
        Normalised images.
    targets : ndarray, float16, shape (n, k, h, w)
        Per-class target maps.
    heights : ndarray, int16, shape (n, h, w) or None
        Column heights, -1 on background pixels.
    sampling_A : ndarray, shape (n,)
        Pixel sizes (Å).
    class_names : tuple of str
    """

    images: np.ndarray
    targets: np.ndarray
    heights: np.ndarray | None
    sampling_A: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)


def split_jobs(n_jobs: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Job indices for training and validation (a seeded random split)."""
    order = np.random.default_rng(seed).permutation(n_jobs)
    n_val = max(1, int(round(fraction * n_jobs))) if fraction > 0 and n_jobs > 1 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def validation_split(store, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation sample positions in a store, split by job as :func:`split_jobs`.

    Parameters
    ----------
    store : DatasetStore
        The training store.
    config : TrainConfig
        Its ``validation_fraction``, ``max_validation_images`` and ``seed`` decide.

    Returns
    -------
    (train_idx, val_idx) : ndarrays of int
        Positions among the store's visible samples; at most
        ``max_validation_images`` validation samples, taken in turn from the
        validation jobs (the first image of every job, then the second, ...), so
        that a capped validation set still shows every validation specimen
        (a job images one sheet or particle 8-16 times).
    """
    spj = int(store.meta["samples_per_job"])
    n_jobs = -(-int(store.meta["n"]) // spj)
    train_jobs, val_jobs = split_jobs(n_jobs, config.validation_fraction, config.seed)
    job_of = store.indices // spj
    train_idx = np.flatnonzero(np.isin(job_of, train_jobs))
    val_all = np.flatnonzero(np.isin(job_of, val_jobs))
    rank = store.indices[val_all] % spj  # the image's place within its job
    val_idx = np.sort(val_all[np.lexsort((job_of[val_all], rank))][: config.max_validation_images])
    return train_idx, val_idx


def load_training_data(store, indices: np.ndarray, normalization: dict) -> TrainingData:
    """Read and normalise samples of a :class:`~atomfinder.datasets.store.DatasetStore`.

    Parameters
    ----------
    store : DatasetStore
        The store.
    indices : ndarray of int
        Positions among the store's visible samples.
    normalization : dict
        Normalisation settings (as in the model card).
    """
    idx = store.indices[np.asarray(indices, dtype=int)]
    sampling = store.array("sampling_A", idx).astype(np.float64)
    images = _read_in_chunks(store, "images", idx, np.float32)
    for i in range(len(images)):
        images[i] = apply_normalization(images[i], normalization, float(sampling[i]))
    targets = _read_in_chunks(store, "targets", idx, np.float16)
    heights = None
    if store.has_heights:
        heights = _read_in_chunks(store, "heights", idx, np.int16)[:, 0]
        heights[targets[:, 0] > 0.5] = -1
    return TrainingData(images, targets, heights, sampling, store.class_names)


def _read_in_chunks(store, name: str, idx: np.ndarray, dtype, chunk: int = 256) -> np.ndarray:
    """``store.array(name, idx)`` as ``dtype``, read ``chunk`` samples at a time.

    The whole array is allocated once in its final type: reading all samples at once
    and converting afterwards needed two to three times the memory (a 6000-series
    MoS2 store, 4.7 GB of float16 targets, was killed for memory that way).
    """
    first = store.array(name, idx[:1])
    out = np.empty((len(idx),) + first.shape[1:], dtype=dtype)
    for lo in range(0, len(idx), chunk):
        out[lo : lo + chunk] = store.array(name, idx[lo : lo + chunk])
    return out


def augment_batch(
    data: TrainingData, rng: np.random.Generator, config: TrainConfig, size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A random batch: crops, the 8 flips/rotations, gain, offset and extra noise.

    ``size`` crops (default ``config.batch_size``), drawn one after the other from ``rng``.
    """
    n, c, h, w = data.images.shape
    s = min(config.crop_px, h, w)
    xs, ts, hs = [], [], []
    for i in rng.integers(0, n, config.batch_size if size is None else size):
        y0, x0 = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        x = data.images[i, :, y0 : y0 + s, x0 : x0 + s]
        t = data.targets[i, :, y0 : y0 + s, x0 : x0 + s].astype(np.float32)
        hh = None if data.heights is None else data.heights[i, y0 : y0 + s, x0 : x0 + s]
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        x, t = np.rot90(x, k, axes=(-2, -1)), np.rot90(t, k, axes=(-2, -1))
        if hh is not None:
            hh = np.rot90(hh, k, axes=(-2, -1))
        if flip:
            x, t = x[..., ::-1], t[..., ::-1]
            hh = None if hh is None else hh[..., ::-1]
        gain = math.exp(rng.uniform(math.log(config.gain_range[0]), math.log(config.gain_range[1])))
        offset = rng.uniform(*config.offset_range)
        noise = rng.uniform(*config.extra_noise_std)
        x = gain * x + offset + noise * rng.standard_normal(x.shape).astype(np.float32)
        xs.append(np.ascontiguousarray(x, dtype=np.float32))
        ts.append(np.ascontiguousarray(t))
        if hh is not None:
            hs.append(np.ascontiguousarray(hh))
    return np.stack(xs), np.stack(ts), (np.stack(hs) if hs else None)


def rank_slice(batch: tuple[np.ndarray, np.ndarray, np.ndarray | None], rank: int,
               world: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rank ``rank``'s share of a global batch: the ``rank``-th of ``world`` equal consecutive parts."""
    if world == 1:
        return batch
    per = len(batch[0]) // world
    part = slice(rank * per, (rank + 1) * per)
    return tuple(None if a is None else a[part] for a in batch)  # type: ignore[return-value]


def _agree(flag: bool, world: int) -> bool:
    """True on every rank when ``flag`` is true on any (so that all ranks stop together)."""
    if world == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


#: Files of a run directory that :func:`train` writes atomically (their stale temporaries
#: are removed when a run starts or resumes).
RUN_FILES = ("checkpoint.pt", "model.safetensors", "model.json", "learning_curves.csv", "learning_curves.png")


# -- the loop -----------------------------------------------------------------------


#: Settings that say how a run is executed, not what is learned: a resumed run may change them
#: (``version``: a model trained further is a new version of it; ``honeycomb``: a labelling rule).
OPERATIONAL_SETTINGS = ("num_threads", "max_minutes", "checkpoint_every", "version", "honeycomb")


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in OPERATIONAL_SETTINGS}


def lr_factor(step: int, total: int, warmup: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 0.

    The decay follows whichever budget runs out first: steps (``step / total``) or
    wall time (``time_fraction`` of ``max_minutes``), so a time-limited run still
    ends with a fully annealed learning rate.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = max((step - warmup) / max(1, total - warmup), time_fraction)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class TrainingWarning(UserWarning):
    """Something about a training run the user should know (one line; the CLI prints it as a warning)."""


def initialise_from(model: torch.nn.Module, model_config: UNetConfig, name_or_path: str,
                    class_names: tuple[str, ...] | None = None) -> float:
    """Copy the weights of a saved model into ``model`` (fine-tuning).

    Parameters
    ----------
    model : torch.nn.Module
        The freshly built network.
    model_config : UNetConfig
        Its architecture; the saved model's must be identical.
    name_or_path : str
        Shipped model name or model path.
    class_names : tuple of str, optional
        The classes of the training data; other class names than the saved model's
        (as many, but named otherwise: gold's ``Au`` for graphene's ``C``) warn.

    Returns
    -------
    float
        The saved model's total training time (s), so that the new card states the
        whole time spent on it.

    Warns
    -----
    TrainingWarning
        The saved model was trained on classes of other names than ``class_names``.
    """
    source, card = load_model(resolve_model(name_or_path))
    if UNetConfig.from_dict(card.architecture) != model_config:
        raise ValueError(f"init_from {name_or_path!r}: its architecture {card.architecture} differs from the "
                         f"recipe's {model_config.to_dict()}")
    if class_names is not None and tuple(card.class_names) != tuple(class_names):
        import warnings

        warnings.warn(f"init_from {name_or_path!r} was trained on the classes {', '.join(card.class_names)}, "
                      f"these data have {', '.join(class_names)}: its outputs for "
                      f"{', '.join(card.class_names)} start as those for {', '.join(class_names)}",
                      TrainingWarning, stacklevel=2)
    model.load_state_dict(source.state_dict())
    return float(card.training.get("time_s", 0.0))


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size), initialising torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world


def write_curves(history: list[dict[str, float]], out_dir: Path) -> None:
    """``learning_curves.csv`` and ``learning_curves.png`` from the history rows."""
    if not history:
        return
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "step", k))

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(history)

    atomic_write(out_dir / "learning_curves.csv", write_csv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in history])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss = np.array([r.get("train_loss", np.nan) for r in history])
    ax1.plot(steps, loss, label="training loss (epoch mean)")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    ax1.legend()
    for key, style in (("val_f1", "-o"), ("val_precision", "--"), ("val_recall", ":")):
        vals = np.array([r.get(key, np.nan) for r in history])
        if np.isfinite(vals).any():
            ax2.plot(steps, vals, style, label=key.replace("val_", "validation "))
    ax2.set_xlabel("step")
    ax2.set_ylabel("score")
    ax2.set_ylim(0, 1.02)
    ax2.grid(alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend()
    fig.tight_layout()
    atomic_write(out_dir / "learning_curves.png", lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


def cap_heights(data: TrainingData, max_height: int) -> tuple[TrainingData, int]:
    """Column heights above the head's last class learned as that class.

    The height head predicts ``0..max_height`` atoms; a taller column (a thick
    particle, or twinned segments that merge into one column) is taught as
    ``max_height``, read as "``max_height`` or more".

    Returns
    -------
    (TrainingData, int)
        The data with capped heights (the same object when nothing is capped) and
        the number of labelled pixels capped.
    """
    if data.heights is None:
        return data, 0
    over = data.heights > max_height
    n = int(over.sum())
    if n:
        data = dataclasses.replace(data, heights=np.minimum(data.heights, max_height).astype(data.heights.dtype))
    return data, n


def training_validity(data: TrainingData, recipe: dict | None) -> dict:
    """The card's validity range: the recipe's simulation ranges and the contrast-to-noise
    range of the training images that hold atoms (:func:`atomfinder.nn.validity.card_validity`)."""
    from atomfinder.nn.validity import card_validity

    simulation = (recipe or {}).get("simulation")
    has_atoms = np.array([bool((t[1:] > 0.5).any()) for t in data.targets])
    store = (recipe or {}).get("store", "the training store")
    return card_validity(simulation, data.images, data.sampling_A, has_atoms,
                         source=f"training images of {store} that hold atoms")


def card_sampling_A(data: TrainingData, recipe: dict | None) -> float:
    """The pixel size a new card records: the simulation's nominal ``microscope.sampling_A``.

    The training images' pixel sizes are jittered around it (``sampling_jitter``, a
    calibration error); their median, which older cards recorded, drifts with the draw
    (0.1039 Å/px for a 0.1 Å/px recipe in a small store). Without a recipe that names
    it (training from the Python API on other data), the median of ``data.sampling_A``.
    Cards already written keep the value they hold.
    """
    simulation = (recipe or {}).get("simulation") or {}
    nominal = (simulation.get("microscope") or {}).get("sampling_A") if isinstance(simulation, dict) else None
    if isinstance(nominal, (int, float)) and not isinstance(nominal, bool) and math.isfinite(nominal) and nominal > 0:
        return float(nominal)
    return float(np.median(data.sampling_A))


def make_card(config: TrainConfig, model_config: UNetConfig, data: TrainingData, training: dict, evaluation: dict,
              defocus_offsets_A: tuple[float, ...] = (), validity: dict | None = None) -> ModelCard:
    """The model card for a trained model (``validity``: see :func:`training_validity`; pixel size: see
    :func:`card_sampling_A`, from ``training["data"]``, the recipe)."""
    return ModelCard(
        name=config.name,
        version=config.version,
        architecture=model_config.to_dict(),
        in_channels=model_config.in_channels,
        class_names=data.class_names,
        sampling_A=card_sampling_A(data, training.get("data")),
        normalization=dict(config.normalization),
        defocus_offsets_A=defocus_offsets_A,
        training=training,
        evaluation=evaluation,
        detection={"min_distance_A": config.min_distance_A, "threshold": config.threshold}
        | ({"honeycomb": dict(config.honeycomb)} if config.honeycomb else {}),
        validity=dict(validity or {}),
    )


def train(
    config: TrainConfig,
    data: TrainingData,
    out_dir: Path | str,
    validate: Callable[[torch.nn.Module, ModelCard], dict[str, float]] | None = None,
    resume: bool = False,
    recipe: dict | None = None,
    defocus_offsets_A: tuple[float, ...] = (),
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> Path:
    """Train a model and keep the best one as ``out_dir/model.{safetensors,json}``.

    Parameters
    ----------
    config : TrainConfig
        The recipe.
    data : TrainingData
        Training images (normalised) and targets.
    out_dir : path
        Run directory: checkpoint, learning curves, best model.
    validate : callable, optional
        ``validate(model, card) -> {"f1": ..., ...}``, run at each epoch end; without it
        the last model is kept.
    resume : bool
        Continue from ``out_dir/checkpoint.pt``; a run that had reached its last step, or
        its time limit (``config.max_minutes`` not raised), is not trained further: its
        model is returned as it is (and marked finished, for a run killed at its end).
    recipe : dict, optional
        How the training data was made (store path, simulation config, seed), for the card;
        its ``simulation.microscope.sampling_A`` is the card's pixel size (:func:`card_sampling_A`).
    defocus_offsets_A : tuple of float
        Focal-series models: defocus of each input channel relative to the first (Å).
    progress : callable, optional
        ``progress(step, total_steps, last_losses)`` after each step.

    Returns
    -------
    Path
        The best model's stem (``out_dir/model``).

    Warns
    -----
    TrainingWarning
        ``config.init_from`` names a model of other class names than ``data``'s.
    """
    out_dir = Path(out_dir)
    rank, local_rank, world = _distributed()
    if rank == 0:  # the folder itself is made once the run is sure to start (a refused start leaves none)
        remove_stale_temporaries(*(out_dir / name for name in RUN_FILES))
    torch.set_num_threads(config.num_threads)
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    model_config = UNetConfig(
        in_channels=data.images.shape[1],
        n_classes=data.targets.shape[1],
        depth=config.depth,
        width=config.width,
        norm=config.norm,
        height_head=config.height_head,
        max_height=config.max_height,
    )
    n_capped = 0
    if config.height_head and data.heights is not None:
        data, n_capped = cap_heights(data, config.max_height)
        if n_capped and rank == 0:
            print(f"{n_capped} labelled pixels of columns taller than {config.max_height} atoms "
                  f"are learned as {config.max_height} ('{config.max_height} or more')", flush=True)
    torch.manual_seed(config.seed)
    model = build_model(model_config).to(device)
    previous_time_s = 0.0
    if config.init_from:
        previous_time_s = initialise_from(model, model_config, config.init_from,
                                          class_names=data.class_names if rank == 0 else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(data) / (config.batch_size * world)))
    total_steps = steps_per_epoch * config.epochs
    rng = np.random.default_rng([config.seed, 0])  # the same stream on every rank: one global batch
    step, best, history, elapsed = 0, -1.0, [], 0.0
    checkpoint = out_dir / "checkpoint.pt"
    deadline = config.max_minutes * 60 if config.max_minutes else math.inf
    if resume:
        if not checkpoint.exists():
            raise FileNotFoundError(f"{checkpoint}: nothing to resume")
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if _recipe(state["config"]) != _recipe(json.loads(json.dumps(config.to_dict()))):
            raise ValueError(f"{checkpoint}: was made with another training config")
        if "data" in state and json.loads(state["data"]) != _store_identity(recipe):
            was, now = json.loads(state["data"]), _store_identity(recipe)
            raise ValueError(f"{checkpoint}: was trained on {was.get('store')} (seed {was.get('seed')}, "
                             f"{was.get('n')} samples), not on {now.get('store')} (seed {now.get('seed')}, "
                             f"{now.get('n')} samples); resume with the same store")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError:
            raise ValueError(f"{checkpoint}: its network has other input frames or classes than these data "
                             f"({model_config.in_channels} frames, {model_config.n_classes} classes)") from None
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        step, best, elapsed = int(state["step"]), float(state["best"]), float(state["elapsed_s"])
        history = json.loads(state["history"])
        if step >= total_steps or elapsed > deadline:
            # the run had reached its end (or a larger time budget was not given): one more step
            # would move the BatchNorm statistics and replace the best model
            if rank == 0:
                end = (f"all {total_steps} steps" if step >= total_steps
                       else f"its time limit of {config.max_minutes:g} min")
                print(f"{out_dir}: the run had finished ({end}, at step {step}); nothing more to train", flush=True)
                if not state.get("finished"):
                    state["finished"] = True
                    atomic_write(checkpoint, lambda tmp: torch.save(state, tmp))
                mark_finished(out_dir / "model", step)
            if world > 1:
                dist.barrier()
            return out_dir / "model"
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    use_amp = config.amp and device.type == "cuda"
    card_training = {
        "config": config.to_dict(),
        "data": recipe or {},
        "train_images": len(data),
        "parameters": count_parameters(model),
        "device": str(device) + (f" x{world}" if world > 1 else ""),
    }
    if config.init_from:
        card_training["init_from"] = config.init_from
        card_training["init_time_s"] = previous_time_s
    validity = training_validity(data, recipe) if rank == 0 else {}
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    def save_checkpoint(finished: bool = False) -> None:
        if rank != 0:
            return
        atomic_write(checkpoint, lambda tmp: torch.save(
            {
                "config": config.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": json.dumps(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "best": best,
                "elapsed_s": elapsed,
                "history": json.dumps(history),
                "data": json.dumps(_store_identity(recipe)),
                "finished": finished,
            },
            tmp,
        ))

    epoch_losses: list[float] = []
    t_start = time.perf_counter() - elapsed
    while step < total_steps:
        net.train()
        lr = config.lr * lr_factor(step, total_steps, config.warmup_steps, (time.perf_counter() - t_start) / deadline)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, t, h = rank_slice(augment_batch(data, rng, config, config.batch_size * world), rank, world)
        xt = torch.from_numpy(x).to(device)
        tt = torch.from_numpy(t).to(device)
        ht = torch.from_numpy(h.astype(np.int64)).to(device) if h is not None else None
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            outputs = net(xt)
        outputs = {k: v.float() for k, v in outputs.items()}
        loss, parts = segmentation_loss(
            outputs, tt, ht, class_weights=config.class_weights, dice_weight=config.dice_weight,
            height_weight=config.height_weight,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        epoch_losses.append(parts["total"])
        elapsed = time.perf_counter() - t_start
        end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
        out_of_time = _agree(elapsed > deadline, world) if math.isfinite(deadline) else False
        if (end_of_epoch or out_of_time) and rank == 0:
            row = {"step": step, "epoch": step / steps_per_epoch, "train_loss": float(np.mean(epoch_losses)),
                   "lr": lr, "elapsed_s": round(elapsed, 1)}
            epoch_losses = []
            so_far = card_training | {"steps": step, "time_s": card_time_s(previous_time_s, elapsed),
                                      "finished": False}  # True once the run has reached its end
            card = make_card(config, model_config, data, so_far, {}, defocus_offsets_A, validity)
            scores = validate(model, card) if validate is not None else {}
            row |= {f"val_{k}": float(v) for k, v in scores.items() if isinstance(v, (int, float))}
            history.append(row)
            score = scores.get("f1", 0.0) if validate is not None else float(step)
            if not math.isfinite(score):  # validation images with no sites and no detections: no F1
                score = 0.0
            if score >= best:
                best = score
                save_model(model, make_card(config, model_config, data, so_far | {"best_val": scores}, {},
                                            defocus_offsets_A, validity), out_dir / "model")
            write_curves(history, out_dir)
            save_checkpoint()
        elif step % config.checkpoint_every == 0:
            save_checkpoint()
        if progress is not None and rank == 0:
            progress(step, total_steps, parts)
        if out_of_time:
            break
    if rank == 0:
        save_checkpoint(finished=True)  # at the last step or out of time: the run's end, not a kill
        mark_finished(out_dir / "model", step)
    if world > 1:
        dist.barrier()
    return out_dir / "model"


def card_time_s(init_time_s: float, elapsed_s: float) -> float:
    """The training time a card records: the seconds of the model it started from plus this run's, to 0.1 s.

    Every time of a run (each best model's, the run's end, exported last weights) is rounded
    here, the same way: rounding is monotone, so a model saved earlier in a run never records
    more time than the run's end (:func:`atomfinder.finetune.fine_tuning_seconds`).
    """
    return round(float(init_time_s) + float(elapsed_s), 1)


def mark_finished(stem: Path, step: int) -> None:
    """Write ``training.finished = True`` into the card of a run's model once the run has reached its end.

    The cards saved during a run say ``False`` (a killed run leaves a model that is not the end
    of its schedule); the weights are not touched. A card of exported last weights
    (``training.weights == "last"``) of another step than ``step`` is left as it is: those weights
    are not the run's end. Nothing happens without a card.
    """
    card_path = Path(stem).with_suffix(".json")
    if not card_path.exists():
        return
    card = load_card(stem)
    training = card.training
    if training.get("finished") is True or (training.get("weights") == "last" and training.get("steps") != step):
        return
    card = dataclasses.replace(card, training=dict(training) | {"finished": True})
    atomic_write(card_path, lambda tmp: Path(tmp).write_text(card.to_json(), encoding="utf-8"))


def _store_identity(recipe: dict | None) -> dict:
    """What tells one training store from another: its seed, size and the system simulated."""
    recipe = recipe or {}
    return {"store": recipe.get("store"), "seed": recipe.get("seed"), "n": recipe.get("n"),
            "system": (recipe.get("simulation") or {}).get("system")}


def export_last(out_dir: str | os.PathLike[str]) -> Path:
    """Write the last weights of a run (its checkpoint) as ``RUN/model``, replacing the best.

    The trainer keeps the model with the best validation F1; for a multi-class model
    whose F1 has saturated that choice is noise, and the last, fully annealed weights
    are the better default. The card is the run's own, with the steps and training
    time of the checkpoint and the last validation scores (``last_val``) in place of
    ``best_val``; ``training.weights`` says ``"last"``, and ``training.finished`` whether
    the run had reached its end (its last step or its time limit) or was stopped before
    (killed: the learning rate had not decayed; None for a checkpoint that does not say).

    Parameters
    ----------
    out_dir : path
        A run directory holding ``checkpoint.pt`` and ``model.json`` (from :func:`train`).

    Returns
    -------
    Path
        The model stem, ``RUN/model``.
    """
    out_dir = Path(out_dir)
    checkpoint, stem = out_dir / "checkpoint.pt", out_dir / "model"
    for needed in (checkpoint, stem.with_suffix(".json")):
        if not needed.exists():
            raise FileNotFoundError(f"{needed}: not a training run (no {needed.name})")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model, card = load_model(stem)
    if _recipe(state["config"]) != _recipe(card.training.get("config", {})):
        raise ValueError(f"{checkpoint}: was made with another training config than {stem}.json")
    model.load_state_dict(state["model"])
    history = json.loads(state["history"])
    last_val = {k.removeprefix("val_"): v for k, v in (history[-1] if history else {}).items() if k.startswith("val_")}
    training = {k: v for k, v in card.training.items() if k != "best_val"} | {
        "steps": int(state["step"]),
        "finished": state.get("finished"),  # False: the run was stopped before its end (None: not recorded)
        "time_s": card_time_s(card.training.get("init_time_s", 0.0), state["elapsed_s"]),
        "last_val": last_val,
        "weights": "last",
    }
    save_model(model, dataclasses.replace(card, training=training), stem)
    return stem
