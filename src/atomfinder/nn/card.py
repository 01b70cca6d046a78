"""Model cards and weights on disk: ``<stem>.json`` beside ``<stem>.safetensors``.

The card says everything needed to use a model correctly (architecture, input
channels and defocus offsets, class names, training sampling, normalisation) and how
it was made and scored (training recipe with seed, evaluation table). Weights are
stored with :mod:`safetensors` only; loading never unpickles anything.

Shipped models live in the package directory ``atomfinder/models/`` and are found by
name with :func:`resolve_model`; :func:`list_models` lists them.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from atomfinder._files import atomic_write
from atomfinder.nn.unet import UNet, UNetConfig, build_model

WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"


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
    created : str
        ISO date of creation (defaults to today).
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
    created: str = field(default_factory=lambda: date.today().isoformat())

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "defocus_offsets_A", tuple(float(d) for d in self.defocus_offsets_A))
        object.__setattr__(self, "architecture", dict(self.architecture))
        cfg = self.config  # validates the architecture
        if cfg.in_channels != self.in_channels:
            raise ValueError(
                f"card in_channels={self.in_channels} but architecture has {cfg.in_channels}"
            )
        if cfg.n_classes != len(self.class_names) + 1:
            raise ValueError(
                f"architecture has {cfg.n_classes} classes but class_names lists "
                f"{len(self.class_names)} (+ background)"
            )
        if self.defocus_offsets_A and len(self.defocus_offsets_A) != self.in_channels:
            raise ValueError("defocus_offsets_A must be empty or have one entry per input channel")
        if not self.sampling_A > 0:
            raise ValueError(f"sampling_A must be positive, got {self.sampling_A}")

    @property
    def config(self) -> UNetConfig:
        """The architecture as a :class:`UNetConfig`."""
        return UNetConfig.from_dict(self.architecture)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary."""
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["defocus_offsets_A"] = list(self.defocus_offsets_A)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelCard":
        """Inverse of :meth:`to_dict`; unknown keys are ignored with a warning."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            warnings.warn(f"ignoring unknown model-card keys {sorted(unknown)}", stacklevel=2)
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self) -> str:
        """The card as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        """Parse a card from JSON text."""
        return cls.from_dict(json.loads(text))


def _stem(path: str | Path) -> Path:
    """``foo``, ``foo.json`` and ``foo.safetensors`` all map to the stem ``foo``."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX) else p


def save_model(model: torch.nn.Module, card: ModelCard, stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` (weights) and ``<stem>.json`` (card), each atomically.

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
    stem = _stem(stem)
    cfg = getattr(model, "config", None)
    if cfg is not None and cfg != card.config:
        raise ValueError(f"model config {cfg} does not match card architecture {card.config}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "name": card.name, "version": card.version}
    weights = stem.with_name(stem.name + WEIGHTS_SUFFIX)
    card_path = stem.with_name(stem.name + CARD_SUFFIX)
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata=meta))
    atomic_write(card_path, lambda tmp: Path(tmp).write_text(card.to_json(), encoding="utf-8"))
    return weights, card_path


def load_card(stem_or_path: str | Path) -> ModelCard:
    """Read the card of a model given its stem, ``.json`` or ``.safetensors`` path."""
    stem = _stem(stem_or_path)
    return ModelCard.from_json(stem.with_name(stem.name + CARD_SUFFIX).read_text(encoding="utf-8"))


def load_model(stem_or_path: str | Path, device: str | torch.device = "cpu") -> tuple[UNet, ModelCard]:
    """Load a model and its card (safetensors only: nothing is unpickled).

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
    """
    stem = _stem(stem_or_path)
    card = load_card(stem)
    model = build_model(card.config)
    state = load_file(str(stem.with_name(stem.name + WEIGHTS_SUFFIX)), device="cpu")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), card


def _models_dir() -> Path:
    return Path(str(resources.files("atomfinder").joinpath("models")))


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
        If it is neither an existing model path nor a shipped model's name; the
        message lists the shipped models.
    """
    stem = _stem(name_or_path)
    if stem.with_name(stem.name + CARD_SUFFIX).is_file() and stem.with_name(
        stem.name + WEIGHTS_SUFFIX
    ).is_file():
        return stem
    available = list_models()
    if str(name_or_path) in available:
        return _models_dir() / str(name_or_path)
    listed = ", ".join(available) if available else "(none shipped)"
    raise ValueError(
        f"unknown model {str(name_or_path)!r}: not a model file and not a shipped model; "
        f"available models: {listed}"
    )
