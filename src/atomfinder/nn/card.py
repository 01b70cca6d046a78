"""Model cards and weights on disk: ``<stem>.json`` beside ``<stem>.safetensors``.

The card says everything needed to use a model correctly (architecture, input
channels and defocus offsets, class names, training sampling, normalisation) and how
it was made and scored (training recipe with seed, evaluation table). Weights are
stored with :mod:`safetensors` only; loading never unpickles anything.

Loading is defensive: it opens ``<stem>.json`` and ``<stem>.safetensors`` and nothing
else (a pickle, ``.pt`` or ``.pkl`` beside them is never read, and a path to one, or
to a directory, is refused); the card is checked against a schema
(:func:`check_card_dict`: required fields, types, a format version this atomfinder
can read, at most :data:`MAX_CARD_BYTES`) with a one-line
:class:`ModelCardError` naming the field; and the weights must have the SHA-256
recorded in the card (``weights_sha256``, written by :func:`save_model`). A card
without a hash (written before it was recorded) loads with an
:class:`UnverifiedWeightsWarning`.

After replacing a model's weights on purpose, record their hash in its card::

    python -c "from atomfinder.nn.card import record_weights_sha256 as r; print(r('src/atomfinder/models/graphene'))"

Shipped models live in the package directory ``atomfinder/models/`` and are found by
name with :func:`resolve_model`; :func:`list_models` lists them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from atomfinder._files import atomic_write
from atomfinder.nn.unet import NORMS, UNet, UNetConfig, build_model

WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
#: Format of the card files this atomfinder writes and the newest it reads.
CARD_FORMAT_VERSION = 1
#: Suffixes of pickle-based model files (PyTorch, pickle, joblib), which are never loaded.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib")
#: Largest card file read (shipped cards are about 30 kB): a bigger ``.json`` is refused
#: before it is read, so a wrong or hostile path cannot exhaust the memory.
MAX_CARD_BYTES = 16 * 2**20


class ModelCardError(ValueError):
    """A model's card or weights cannot be used; the message is one line naming the file."""

    def __init__(self, source: str | os.PathLike[str], problem: str) -> None:
        message = f"{os.fspath(source)}: {problem}" if os.fspath(source) else problem
        super().__init__(" ".join(message.split()))  # one line, always


class UnverifiedWeightsWarning(UserWarning):
    """A model was loaded whose card records no SHA-256 of its weights (an older card)."""


# --------------------------------------------------------------------------- schema


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_positive_int(v: Any) -> bool:
    return _is_int(v) and v >= 1


def _is_positive(v: Any) -> bool:
    return _is_number(v) and v > 0


def _is_numbers(v: Any) -> bool:
    return isinstance(v, list) and all(_is_number(x) for x in v)


def _is_honeycomb(v: Any) -> bool:
    """A sublattice rule (:mod:`atomfinder.detection.sublattice`): two disjoint, non-empty lists of
    class names, a bond range ``0 <= lower < upper`` and a radius of at least ``upper`` (Å)."""
    if not isinstance(v, dict) or set(v) - {"sublattices", "bond_A", "radius_A", "min_order"}:
        return False
    subs, bond, radius = v.get("sublattices"), v.get("bond_A"), v.get("radius_A")
    if not (isinstance(subs, list) and len(subs) == 2
            and all(isinstance(g, list) and g and all(isinstance(n, str) for n in g) for g in subs)
            and not set(subs[0]) & set(subs[1])):
        return False
    if not (_is_numbers(bond) and len(bond) == 2 and 0 <= bond[0] < bond[1] and _is_positive(radius)
            and radius >= bond[1] and math.isfinite(radius)):
        return False
    order = v.get("min_order", 0.3)
    return _is_number(order) and 0 <= order <= 1


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


_Check = tuple[Callable[[Any], bool], str]

#: Top-level card fields: (test, what the value must be). The first seven are required.
CARD_FIELDS: dict[str, _Check] = {
    "name": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "version": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "architecture": (lambda v: isinstance(v, dict), "an object (the UNet configuration)"),
    "in_channels": (_is_positive_int, "a positive integer"),
    "class_names": (lambda v: isinstance(v, list) and bool(v) and all(isinstance(c, str) and c for c in v),
                    "a non-empty list of class names (strings)"),
    "sampling_A": (_is_positive, "a positive number"),
    "normalization": (lambda v: isinstance(v, dict), "an object"),
    "defocus_offsets_A": (_is_numbers, "a list of numbers"),
    "training": (lambda v: isinstance(v, dict), "an object"),
    "evaluation": (lambda v: isinstance(v, dict), "an object"),
    "detection": (lambda v: isinstance(v, dict), "an object"),
    "calibration": (lambda v: isinstance(v, dict), "an object"),
    "validity": (lambda v: isinstance(v, dict), "an object"),
    "created": (lambda v: isinstance(v, str), "a string"),
    "format_version": (_is_positive_int, "a positive integer"),
    "weights_sha256": (_is_sha256, "a SHA-256 hex digest (64 lower-case hex digits)"),
}
REQUIRED_FIELDS = ("name", "version", "architecture", "in_channels", "class_names", "sampling_A", "normalization")

#: Fields inside the card's objects that detection reads: (test, what it must be).
NESTED_FIELDS: dict[str, dict[str, _Check]] = {
    "architecture": {
        "in_channels": (_is_positive_int, "a positive integer"),
        "n_classes": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
        "depth": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
        "width": (_is_positive_int, "a positive integer"),
        "norm": (lambda v: isinstance(v, str) and v in NORMS, "one of " + ", ".join(map(repr, NORMS))),
        "height_head": (lambda v: isinstance(v, bool), "true or false"),
        "max_height": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    },
    "normalization": {
        "kind": (lambda v: v in ("local", "global"), "'local' or 'global'"),
        "window_A": (_is_positive, "a positive number"),
        "noise_floor": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    },
    "detection": {
        "threshold": (lambda v: _is_number(v) and 0 <= v <= 1, "a number between 0 and 1"),
        "min_distance_A": (_is_positive, "a positive number"),
        "class_log_bias": (_is_numbers, "a list of numbers"),
        "honeycomb": (_is_honeycomb, "an object with two disjoint lists of class names 'sublattices', "
                                     "'bond_A' [lower, upper] and 'radius_A' >= upper"),
        "test_time_augmentation": (lambda v: isinstance(v, bool), "true or false"),
    },
    "calibration": {
        "logistic": (_is_numbers, "a list of numbers"),
        "isotonic_score": (_is_numbers, "a list of numbers"),
        "isotonic_value": (_is_numbers, "a list of numbers"),
        "sigma_log": (_is_numbers, "a list of numbers"),
        "sigma_scale": (_is_number, "a number"),
        "radius_px": (_is_positive, "a positive number"),
    },
}
#: Nested fields that must be present when their object is (calibration: when not empty).
NESTED_REQUIRED = {
    "architecture": ("in_channels", "n_classes", "depth", "width", "norm"),
    "normalization": ("kind",),
    "calibration": ("logistic", "isotonic_score", "isotonic_value", "sigma_log", "sigma_scale", "radius_px"),
}


#: Largest normalisation window and atom spacing, in model pixels (``window_A`` and
#: ``min_distance_A`` over ``sampling_A``; shipped models use 120 and 10): the filter
#: kernels, their padding, memory and time grow with them, so a damaged card with a
#: window of 1e300 Å would overflow or exhaust the memory.
MAX_WINDOW_PX = 500
MAX_MIN_DISTANCE_PX = 100
#: Largest ``calibration.radius_px`` (the shipped calibration uses about 4).
MAX_RADIUS_PX = 100


def _pixel_bounds_problem(d: dict) -> str | None:
    """Lengths of the card that are too many model pixels (see :data:`MAX_WINDOW_PX`), or None."""
    sampling = d["sampling_A"]
    bounds = (("normalization", "window_A", MAX_WINDOW_PX), ("detection", "min_distance_A", MAX_MIN_DISTANCE_PX))
    for parent, name, limit in bounds:
        value = (d.get(parent) or {}).get(name)
        if value is not None and value / sampling > limit:
            return (f"field '{parent}.{name}' must be at most {limit} model pixels ({limit * sampling:.4g} Å at "
                    f"sampling_A {sampling:g}), got {_short(value)}")
    honeycomb = (d.get("detection") or {}).get("honeycomb")  # already checked by _is_honeycomb
    if honeycomb:
        for name, value, limit in (("radius_A", honeycomb["radius_A"], MAX_WINDOW_PX),
                                   ("bond_A", honeycomb["bond_A"][1], MAX_MIN_DISTANCE_PX)):
            if value / sampling > limit:
                return (f"field 'detection.honeycomb.{name}' must be at most {limit} model pixels "
                        f"({limit * sampling:.4g} Å at sampling_A {sampling:g}), got {_short(honeycomb[name])}")
    radius = (d.get("calibration") or {}).get("radius_px")
    if radius is not None and radius > MAX_RADIUS_PX:
        return f"field 'calibration.radius_px' must be at most {MAX_RADIUS_PX}, got {_short(radius)}"
    return None


#: Largest network a card may describe, in (estimated) parameters: 100 times the largest
#: shipped model (4.4 M). A damaged card with a depth of 755 685 214 made the loader try to
#: build it and fail with a bare MemoryError (found by ``make fuzz``).
MAX_PARAMETERS = 500_000_000


def estimated_parameters(architecture: dict) -> float:
    """About how many weights a U-Net of this ``architecture`` has (two 3x3 convolutions per level,
    encoder and decoder, channels ``width * 2**level``); an upper bound within a factor of two."""
    depth, width = int(architecture.get("depth", 0)), int(architecture.get("width", 1))
    cin, ncls = int(architecture.get("in_channels", 1)), int(architecture.get("n_classes", 2))
    if depth > 60:  # 2**depth alone overflows any bound
        return float("inf")
    total = 9.0 * cin * width
    for level in range(depth + 1):
        c = float(width) * 2.0**level
        total += 2 * 2 * 9.0 * c * c
    return total + width * (ncls + int(architecture.get("max_height", 0)))


def _size_problem(d: dict) -> str | None:
    """Why the card's network is too large to build, or None."""
    n = estimated_parameters(d["architecture"])
    if n > MAX_PARAMETERS:
        arch = d["architecture"]
        return (f"field 'architecture' describes a network of about {n:.3g} parameters (depth "
                f"{_short(arch.get('depth'))}, width {_short(arch.get('width'))}); at most {MAX_PARAMETERS:.0e} "
                "are accepted")
    return None


def check_card_dict(d: Any, source: str = "model card") -> None:
    """Check a parsed card against the schema (:data:`CARD_FIELDS`, :data:`NESTED_FIELDS`).

    Parameters
    ----------
    d : object
        The parsed JSON.
    source : str
        How the card is named in messages, e.g. ``"model card path/x.json"``.

    Raises
    ------
    ModelCardError
        One line naming the first field that is missing, of the wrong type or
        out of bounds (:data:`MAX_WINDOW_PX`), or a ``format_version`` newer than
        :data:`CARD_FORMAT_VERSION`.
    """
    if not isinstance(d, dict):
        raise ModelCardError(source, f"must hold a JSON object, not {type(d).__name__}")
    version = d.get("format_version", 1)
    if not _is_positive_int(version):
        raise ModelCardError(source, f"field 'format_version' must be a positive integer, got {version!r}")
    if version > CARD_FORMAT_VERSION:
        raise ModelCardError(
            source, f"card format_version {version} is newer than this atomfinder supports "
            f"(up to {CARD_FORMAT_VERSION}); upgrade atomfinder"
        )
    for name in REQUIRED_FIELDS:
        if name not in d:
            raise ModelCardError(source, f"required field {name!r} is missing")
    for name, (test, what) in CARD_FIELDS.items():
        if name in d and not test(d[name]):
            raise ModelCardError(source, f"field {name!r} must be {what}, got {_short(d[name])}")
    for parent, checks in NESTED_FIELDS.items():
        obj = d.get(parent) or {}
        # required inside a required object, or inside an optional one that is not empty
        required = NESTED_REQUIRED.get(parent, ()) if (obj or parent in REQUIRED_FIELDS) else ()
        for name in required:
            if name not in obj:
                raise ModelCardError(source, f"required field '{parent}.{name}' is missing")
        for name, (test, what) in checks.items():
            if name in obj and not test(obj[name]):
                raise ModelCardError(source, f"field '{parent}.{name}' must be {what}, got {_short(obj[name])}")
    unknown = sorted(set(d["architecture"]) - set(NESTED_FIELDS["architecture"]))
    if unknown:
        raise ModelCardError(source, f"field 'architecture' has unknown UNetConfig keys {_short(unknown)}")
    problem = _pixel_bounds_problem(d) or _size_problem(d)
    if problem:
        raise ModelCardError(source, problem)


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- card


@dataclass(frozen=True)
class ModelCard:
    """Description of a trained model (serialised as ``<stem>.json``).

    Attributes
    ----------
    name : str
        Model name (the file stem of shipped models), e.g. ``"graphene"``.
    version : str
        Model version, e.g. ``"1.0"``.
    architecture : dict
        :class:`~atomfinder.nn.unet.UNetConfig` as a dict.
    in_channels : int
        Input channels (1, or the number of defoci of a focal-series model).
    defocus_offsets_A : tuple of float
        Focal-series models: defocus of each input channel relative to the first, in Å
        (positive = underfocus). Empty for single-image models.
    class_names : tuple of str
        Names of classes ``1..k-1`` (the background, class 0, is not listed).
    sampling_A : float
        Pixel size the model was trained at (Å/pixel); inputs are resampled to it.
    normalization : dict
        e.g. ``{"kind": "local", "window_A": 12.0}`` (see
        :func:`atomfinder.nn.normalization.apply_normalization`).
    training : dict
        Training recipe: config, seed, data, time, ...
    evaluation : dict
        Evaluation table (free-form, JSON-serialisable).
    detection : dict
        Peak-finding settings the model was validated with, e.g.
        ``{"min_distance_A": 1.0, "threshold": 0.5}``.
    calibration : dict
        How a detection's peak features become a calibrated ``confidence`` and a
        positional error bar ``sigma_angstrom`` (see
        :mod:`atomfinder.detection.confidence`); empty for uncalibrated models.
    validity : dict
        The range the model was trained for (energies, Cs, defocus, dose, pixel
        size, materials) and the reference values the per-image validity checks
        compare against; empty for older cards.
    created : str
        ISO date of creation (defaults to today).
    format_version : int
        Format of the card file (:data:`CARD_FORMAT_VERSION`; absent in older cards = 1).
    weights_sha256 : str
        SHA-256 hex digest of ``<stem>.safetensors`` (written by :func:`save_model`,
        checked by :func:`load_model`); empty when not recorded. Not part of card
        equality: it describes the file, not the model.
    """

    name: str
    version: str
    architecture: dict
    in_channels: int
    class_names: tuple[str, ...]
    sampling_A: float
    normalization: dict
    defocus_offsets_A: tuple[float, ...] = ()
    training: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    detection: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    validity: dict = field(default_factory=dict)
    created: str = field(default_factory=lambda: date.today().isoformat())
    format_version: int = CARD_FORMAT_VERSION
    weights_sha256: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "defocus_offsets_A", tuple(float(d) for d in self.defocus_offsets_A))
        object.__setattr__(self, "architecture", dict(self.architecture))
        cfg = self.config  # validates the architecture
        if cfg.in_channels != self.in_channels:
            raise ValueError(
                f"field 'in_channels' is {self.in_channels} but 'architecture.in_channels' is {cfg.in_channels}"
            )
        if cfg.n_classes != len(self.class_names) + 1:
            raise ValueError(
                f"field 'class_names' lists {len(self.class_names)} classes (+ background) but "
                f"'architecture.n_classes' is {cfg.n_classes}"
            )
        bias = self.detection.get("class_log_bias")
        if bias is not None and len(bias) != len(self.class_names):
            raise ValueError(f"field 'detection.class_log_bias' has {len(bias)} values for "
                             f"{len(self.class_names)} classes")
        honeycomb = self.detection.get("honeycomb")
        if honeycomb is not None:
            missing = [n for group in honeycomb["sublattices"] for n in group if n not in self.class_names]
            if missing:
                raise ValueError(f"field 'detection.honeycomb' names classes {missing} the model lacks "
                                 f"(classes: {', '.join(self.class_names)})")
        if self.defocus_offsets_A and len(self.defocus_offsets_A) != self.in_channels:
            raise ValueError(
                f"field 'defocus_offsets_A' must be empty or have one entry per input channel "
                f"({self.in_channels}), got {len(self.defocus_offsets_A)}"
            )
        if not self.sampling_A > 0:
            raise ValueError(f"field 'sampling_A' must be a positive number, got {self.sampling_A}")

    @property
    def config(self) -> UNetConfig:
        """The architecture as a :class:`UNetConfig`."""
        return UNetConfig.from_dict(self.architecture)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary (without ``weights_sha256`` when none is recorded)."""
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["defocus_offsets_A"] = list(self.defocus_offsets_A)
        if not self.weights_sha256:
            del d["weights_sha256"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "model card") -> "ModelCard":
        """Inverse of :meth:`to_dict`, after :func:`check_card_dict`; unknown keys are
        ignored with a warning.

        Raises
        ------
        ModelCardError
            A card that fails the schema or whose fields disagree (one line, naming
            ``source`` and the field).
        """
        d = dict(d) if isinstance(d, Mapping) else d
        check_card_dict(d, source)
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            warnings.warn(f"{source}: ignoring unknown model-card keys {sorted(unknown)}", stacklevel=2)
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except (ValueError, TypeError) as exc:
            raise ModelCardError(source, str(exc)) from None

    def to_json(self) -> str:
        """The card as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "model card") -> "ModelCard":
        """Parse a card from JSON text (see :meth:`from_dict`).

        Raises
        ------
        ModelCardError
            Text that is not JSON (a truncated file) or a card that fails the schema.
        """
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelCardError(
                source, f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                "the file may be truncated or damaged"
            ) from None
        return cls.from_dict(d, source=source)


# --------------------------------------------------------------------------- files


def _stem(path: str | os.PathLike[str]) -> Path:
    """``foo``, ``foo.json`` and ``foo.safetensors`` all map to the stem ``foo``.

    Raises
    ------
    ModelCardError
        For a pickle-based file (``.pt``, ``.pkl``, ... :data:`PICKLE_SUFFIXES`).
    """
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelCardError(
            p, f"a pickle-based model file ({p.suffix}) is never loaded (unpickling can run code); "
            f"give a model's <stem>{WEIGHTS_SUFFIX} with its <stem>{CARD_SUFFIX} card"
        )
    return p.with_suffix("") if p.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX) else p


def _paths(stem: Path) -> tuple[Path, Path]:
    """``(<stem>.safetensors, <stem>.json)``."""
    return stem.with_name(stem.name + WEIGHTS_SUFFIX), stem.with_name(stem.name + CARD_SUFFIX)


def _directory_problem(path: Path) -> str:
    """Why a directory is no model path, naming the models (and pickles) in it."""
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError:
        names = []
    models = [n for n in names if n.endswith(CARD_SUFFIX)
              and n[: -len(CARD_SUFFIX)] + WEIGHTS_SUFFIX in names]
    pickles = [n for n in names if Path(n).suffix.lower() in PICKLE_SUFFIXES]
    hint = (f"models in it: {', '.join(m[: -len(CARD_SUFFIX)] + WEIGHTS_SUFFIX for m in models[:5])}"
            if models else f"it holds no <stem>{CARD_SUFFIX} with its <stem>{WEIGHTS_SUFFIX}")
    problem = (f"is a directory, not a model; give a model's <stem>{WEIGHTS_SUFFIX} or <stem>{CARD_SUFFIX} "
               f"path ({hint})")
    if pickles:
        problem += (f"; its pickle-based files ({', '.join(pickles[:5])}{', ...' if len(pickles) > 5 else ''}) "
                    "are never loaded")
    return problem


def sha256_hex(data: bytes) -> str:
    """SHA-256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def weights_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a weights file (the value of a card's ``weights_sha256``).

    Parameters
    ----------
    path : path
        A ``.safetensors`` file, or a model's stem or ``.json`` path.

    Returns
    -------
    str
        64 lower-case hex digits.
    """
    p = Path(path)
    if p.suffix != WEIGHTS_SUFFIX:
        p = _paths(_stem(p))[0]
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_weights_sha256(stem_or_path: str | os.PathLike[str]) -> str:
    """Write the SHA-256 of a model's weights into its card, changing nothing else.

    For weights replaced on purpose (a new shipped model). The card's JSON keeps
    every other key, its order and its formatting (``json.dumps(indent=2)``, as
    :meth:`ModelCard.to_json` writes); the file is replaced atomically.

    Parameters
    ----------
    stem_or_path : path
        The model's stem, ``.json`` or ``.safetensors`` path.

    Returns
    -------
    str
        The digest written.
    """
    weights, card_path = _paths(_stem(stem_or_path))
    digest = weights_sha256(weights)
    d = json.loads(card_path.read_text(encoding="utf-8"))
    check_card_dict(d, f"model card {card_path}")
    d["weights_sha256"] = digest
    text = json.dumps(d, indent=2, sort_keys=False) + "\n"
    atomic_write(card_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return digest


def save_model(model: torch.nn.Module, card: ModelCard, stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` (weights) and ``<stem>.json`` (card), each atomically.

    The card written records the SHA-256 of the weights written (``weights_sha256``)
    and the current ``format_version``.

    Parameters
    ----------
    model : UNet
        The model; its config must equal ``card.architecture``.
    card : ModelCard
        The model card.
    stem : path
        Output path without suffix.

    Returns
    -------
    (Path, Path)
        Paths of the weights and card files.
    """
    import dataclasses

    stem = _stem(stem)
    cfg = getattr(model, "config", None)
    if cfg is not None and cfg != card.config:
        raise ValueError(f"model config {cfg} does not match card architecture {card.config}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "name": card.name, "version": card.version}
    data = save_safetensors_bytes(state, metadata=meta)
    card = dataclasses.replace(card, weights_sha256=sha256_hex(data), format_version=CARD_FORMAT_VERSION)
    weights, card_path = _paths(stem)
    atomic_write(weights, lambda tmp: Path(tmp).write_bytes(data))
    atomic_write(card_path, lambda tmp: Path(tmp).write_text(card.to_json(), encoding="utf-8"))
    return weights, card_path


def load_card(stem_or_path: str | os.PathLike[str]) -> ModelCard:
    """Read and check the card of a model given its stem, ``.json`` or ``.safetensors`` path.

    Raises
    ------
    ModelCardError
        A card that is not UTF-8 JSON, is larger than :data:`MAX_CARD_BYTES` or fails
        the schema (:func:`check_card_dict`); a pickle-based path or a directory.
    OSError
        A missing or unreadable card.
    """
    stem = _stem(stem_or_path)
    card_path = _paths(stem)[1]
    if stem.is_dir() and not card_path.is_file():
        raise ModelCardError(stem, _directory_problem(stem))
    source = f"model card {card_path}"
    with open(card_path, "rb") as f:
        raw = f.read(MAX_CARD_BYTES + 1)
    if len(raw) > MAX_CARD_BYTES:
        raise ModelCardError(source, f"is larger than {MAX_CARD_BYTES} bytes; not a model card")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelCardError(source, "is not UTF-8 text; the file may be damaged") from None
    return ModelCard.from_json(text, source=source)


def verify_weights(data: bytes, card: ModelCard, weights_path: str | os.PathLike[str]) -> None:
    """Check weights against the SHA-256 recorded in their card.

    Raises
    ------
    ModelCardError
        When the digests differ.

    Warns
    -----
    UnverifiedWeightsWarning
        When the card records no digest (a card written by an older atomfinder).
    """
    if not card.weights_sha256:
        warnings.warn(
            f"model card of {os.fspath(weights_path)} records no weights_sha256 (an older card), so its "
            "weights are not verified; record it with atomfinder.nn.card.record_weights_sha256",
            UnverifiedWeightsWarning, stacklevel=3,
        )
        return
    if sha256_hex(data) != card.weights_sha256:
        raise ModelCardError(
            "", f"weights of {os.fspath(weights_path)} do not match the SHA-256 recorded in its card: "
            "the file is damaged, truncated or was replaced (after replacing it on purpose, record the new "
            "hash with atomfinder.nn.card.record_weights_sha256)"
        )


def _state_from_bytes(data: bytes, weights_path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file's bytes (no pickle); a damaged file is a ModelCardError."""
    try:
        return load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise ModelCardError(weights_path, f"not a valid safetensors file ({reason})") from None


def load_model(stem_or_path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[UNet, ModelCard]:
    """Load a model and its card (safetensors only: nothing is unpickled).

    Only ``<stem>.json`` and ``<stem>.safetensors`` are opened. The card is checked
    (:func:`load_card`) and the weights' SHA-256 against it (:func:`verify_weights`)
    before they are parsed.

    Parameters
    ----------
    stem_or_path : path
        Model stem, or the path of its ``.json`` or ``.safetensors`` file.
    device : str or torch.device
        Where to put the weights.

    Returns
    -------
    (UNet, ModelCard)
        The model in eval mode, and its card.

    Raises
    ------
    ModelCardError
        A bad card, weights that differ from the recorded SHA-256, a damaged weights
        file or weights that do not fit the card's architecture; a pickle-based path.
    OSError
        A missing or unreadable file.

    Warns
    -----
    UnverifiedWeightsWarning
        The card records no SHA-256 (an older card).
    """
    stem = _stem(stem_or_path)
    weights_path, _ = _paths(stem)
    card = load_card(stem)
    data = weights_path.read_bytes()
    verify_weights(data, card, weights_path)
    state = _state_from_bytes(data, weights_path)
    model = build_model(card.config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ModelCardError(weights_path, f"weights do not fit the architecture in the card ({reason})") from None
    return model.to(device).eval(), card


def _models_dir() -> Path:
    return Path(str(resources.files("atomfinder").joinpath("models")))


def is_shipped(stem: str | os.PathLike[str]) -> bool:
    """Whether the model ``stem`` is one installed with atomfinder (in the package's models folder)."""
    try:
        return Path(stem).resolve().parent == _models_dir().resolve()
    except OSError:
        return False


def shadowed_model(name_or_path: str | os.PathLike[str], stem: str | os.PathLike[str]) -> Path | None:
    """The shipped model that ``name_or_path`` names but that :func:`resolve_model` did not pick, or None.

    :func:`resolve_model` takes a model file before a shipped name, so a
    ``graphene.json`` and ``graphene.safetensors`` in the current folder stand in for
    the shipped ``graphene``; callers say so, naming both.
    """
    name = str(name_or_path)
    if name in list_models() and not is_shipped(stem):
        return _models_dir() / name
    return None


def list_models() -> list[str]:
    """Names of the shipped models (those with both a card and weights)."""
    d = _models_dir()
    if not d.is_dir():
        return []
    return sorted(
        p.stem for p in d.glob("*" + CARD_SUFFIX) if p.with_suffix(WEIGHTS_SUFFIX).is_file()
    )


def resolve_model(name_or_path: str | Path) -> Path:
    """Stem path of a shipped model given its name, or of a model given its path.

    Parameters
    ----------
    name_or_path : str or path
        A shipped model's name (see :func:`list_models`), or a path to a model's stem,
        ``.json`` or ``.safetensors`` file.

    Returns
    -------
    Path
        The model's stem (``<stem>.json`` and ``<stem>.safetensors`` exist).

    Raises
    ------
    ValueError
        If it is neither an existing model path nor a shipped model's name (the
        message lists the shipped models); a :class:`ModelCardError` (a ValueError) for
        a pickle-based file (``.pt``, ``.pkl``) or a directory (the message names the
        models and pickles in it; nothing in it is opened but its listing).
    """
    available = list_models()
    listed = ", ".join(available) if available else "(none shipped)"
    if not str(name_or_path).strip():
        raise ValueError(f"no model given (an empty name); available models: {listed}")
    stem = _stem(name_or_path)
    weights, card_path = _paths(stem)
    if card_path.is_file() and weights.is_file():
        return stem
    if str(name_or_path) in available:
        return _models_dir() / str(name_or_path)
    if stem.is_dir():
        raise ModelCardError(stem, _directory_problem(stem))
    if weights.is_file() != card_path.is_file():
        have, missing = (weights, card_path) if weights.is_file() else (card_path, weights)
        raise ValueError(f"{have}: a model needs both {weights.name} (weights) and {card_path.name} (its card); "
                         f"{missing} is missing")
    raise ValueError(
        f"unknown model {str(name_or_path)!r}: not a model file and not a shipped model; "
        f"available models: {listed}"
    )
