"""The range a model was trained for, read from its card's training recipe.

A card records the simulation config its training images were made with
(``card.training["data"]["simulation"]``: :class:`atomfinder.datasets.generate.SimulationConfig`
as a dict, whose ``microscope`` entry is ``MicroscopeRanges.to_dict()``).
:func:`validity_range` turns that into the range a user can check a micrograph
against (energies in kV, Cs in µm, defocus around Scherzer, dose, pixel size,
materials and supports, focal-series frames) and the reference values of the
per-image validity checks (:mod:`atomfinder.detection.validity`): the projected
nearest-neighbour distances of the trained materials and the contrast-to-noise ratio
of the training images (:func:`contrast_reference`).

Only the dict keys are read: this module never imports ``imaging``, ``structures`` or
``datasets`` (DESIGN.md), so the material constants the structure builders default to
are repeated here (:data:`GRAPHENE_BOND_A`, :data:`GOLD_LATTICE_A`,
:data:`MOS2_LATTICE_A`; a test checks they agree).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from atomfinder.nn.normalization import estimate_noise_std, gaussian_blur_reflect

__all__ = [
    "CONTRAST_WINDOW_A",
    "card_validity",
    "contrast_reference",
    "contrast_to_noise",
    "expected_neighbour_distances_A",
    "focal_order",
    "validity_range",
    "validity_summary",
]

#: C-C bond length of graphene (Å), ``GrapheneConfig.bond_length_A``.
GRAPHENE_BOND_A = 1.42
#: fcc Au lattice constant (Å), ``GoldConfig.lattice_constant_A``.
GOLD_LATTICE_A = 4.08
#: Zone axes of single-crystal Au particles, ``GoldConfig.zone_axes``.
GOLD_ZONE_AXES = ("100", "110", "111")
#: In-plane lattice constant of 2H-MoS2 (Å), ``MoS2Config.lattice_constant_A``.
MOS2_LATTICE_A = 3.19
#: Projected nearest-column distance of an fcc lattice along a zone axis, in units of
#: the lattice constant: [100] a/2 (square), [110] a sqrt(3/8) (centred rectangle
#: a/sqrt(2) x a), [111] a/sqrt(6) (triangular), [112] a sqrt(2)/4.
FCC_NEAREST_COLUMN = {"100": 0.5, "110": math.sqrt(3.0 / 8.0), "111": 1.0 / math.sqrt(6.0),
                      "112": math.sqrt(2.0) / 4.0}
#: Window (Å) of the high-pass in :func:`contrast_to_noise`: the local normalisation's.
CONTRAST_WINDOW_A = 12.0
#: Percentiles of the training images' contrast-to-noise ratios kept as the range.
CONTRAST_PERCENTILES = (1.0, 99.0)


def _pair(values: Sequence[float], scale: float = 1.0, digits: int = 6) -> list[float]:
    return [round(float(v) * scale, digits) for v in values]


def expected_neighbour_distances_A(system: str, structure: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Projected nearest-neighbour (column) distances of a trained material, in Å.

    Parameters
    ----------
    system : {"graphene", "gold", "mos2"}
        The simulated system.
    structure : mapping, optional
        The recipe's structure settings; ``bond_length_A``, ``lattice_constant_A``
        and ``zone_axes`` override the builders' defaults.

    Returns
    -------
    dict
        ``{view: distance_A}``, e.g. ``{"graphene": 1.42}`` or ``{"Au [100]": 2.04,
        "Au [110]": 2.498, "Au [111]": 1.666}``; empty for an unknown system.
    """
    structure = dict(structure or {})
    if system == "graphene":
        return {"graphene": round(float(structure.get("bond_length_A", GRAPHENE_BOND_A)), 4)}
    if system == "gold":
        a = float(structure.get("lattice_constant_A", GOLD_LATTICE_A))
        zones = tuple(structure.get("zone_axes", GOLD_ZONE_AXES))
        return {f"Au [{z}]": round(a * FCC_NEAREST_COLUMN[z], 4) for z in zones if z in FCC_NEAREST_COLUMN}
    if system == "mos2":
        a = float(structure.get("lattice_constant_A", MOS2_LATTICE_A))
        return {"MoS2 Mo-S": round(a / math.sqrt(3.0), 4)}
    return {}


def _materials(sim: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Specimen and support descriptions of a simulation recipe."""
    system = str(sim.get("system", ""))
    structure = dict(sim.get("structure") or {})
    if system == "graphene":
        materials = ["graphene (with defects, grain boundaries, holes, adatoms)"]
    elif system == "gold":
        zones = ", ".join(f"[{z}]" for z in structure.get("zone_axes", GOLD_ZONE_AXES))
        a = float(structure.get("lattice_constant_A", GOLD_LATTICE_A))
        materials = [f"Au nanoparticles (fcc, a = {a:g} Å; {zones}, decahedra, icosahedra, twins)"]
    elif system == "mos2":
        materials = ["2H-MoS2 monolayer (with Mo and S vacancies)"]
    else:
        materials = [system] if system else []
    supports = []
    p_carbon = float(sim.get("p_amorphous_carbon", 0.0))
    if p_carbon > 0:
        lo, hi = sim.get("carbon_thickness_A", (0.0, 0.0))
        supports.append(f"amorphous carbon {lo:g}-{hi:g} Å ({p_carbon:.0%} of images)")
    p_support = 0.0
    if system == "gold":
        from atomfinder.structures.gold import GoldConfig  # its defaults fill what the recipe leaves out

        gold = GoldConfig.from_dict(structure)
        p_support = gold.p_support
        zones = sorted({o.split("/")[0] for o in gold.support_orientations})
    if p_support > 0:
        supports.append(f"CeO2 in profile ({', '.join(f'[{z}]' for z in zones)}; {p_support:.0%} of particles)")
    if float(sim.get("p_empty_field", 0.0)) > 0:
        supports.append(f"empty fields of vacuum or carbon ({float(sim['p_empty_field']):.0%} of images)")
    return materials, supports


def validity_range(simulation: Mapping[str, Any]) -> dict[str, Any]:
    """The imaging range a model was trained for, from its training simulation config.

    Parameters
    ----------
    simulation : mapping
        ``card.training["data"]["simulation"]`` (a SimulationConfig as a dict, with
        ``microscope`` = MicroscopeRanges as a dict).

    Returns
    -------
    dict
        JSON-serialisable: ``materials``, ``supports`` (lists of text),
        ``neighbour_distances_A`` (see :func:`expected_neighbour_distances_A`),
        ``energies_kV``, ``p_corrected``, ``Cs_corrected_um`` (``[low, high]`` or
        None when no corrected microscope is drawn), ``Cs_uncorrected_um`` and
        ``uncorrected_min_energy_kV`` (None when every microscope is corrected),
        ``defocus_around_scherzer_A`` (positive = underfocus),
        ``corrected_defocus_A`` (absolute defocus of corrected lenses, or None when
        it is relative to Scherzer like every lens's), ``dose_e_per_A2``,
        ``sampling_A`` (nominal Å/px), ``sampling_jitter`` (relative),
        ``sampling_range_A`` (``nominal * (1 ± jitter)``), ``astigmatism_A``,
        ``coma_A``, ``focal_spread_A``, ``frames``, ``focal_step_A`` (the range of
        the defocus step between consecutive frames, Å) and ``focal_order``
        (:func:`focal_order`, e.g. ``"increasing underfocus"``) (all three None for
        single images), and ``source``.

    Raises
    ------
    ValueError
        When the config holds no ``microscope`` ranges.
    """
    sim = dict(simulation)
    mic = sim.get("microscope")
    if not isinstance(mic, Mapping) or "energies_eV" not in mic:
        raise ValueError("the training simulation config holds no microscope ranges")
    energies_kV = sorted({round(float(e) / 1e3, 3) for e in mic["energies_eV"]})
    p_corrected = float(mic.get("p_corrected", 1.0))
    uncorrected_min_kV = float(mic.get("uncorrected_min_energy_eV", 0.0)) / 1e3
    any_uncorrected = p_corrected < 1.0 and max(energies_kV) >= uncorrected_min_kV
    any_corrected = p_corrected > 0.0 or min(energies_kV) < uncorrected_min_kV
    nominal = float(mic.get("sampling_A", 0.1))
    jitter = float(mic.get("sampling_jitter", 0.0))
    frames = int(sim.get("frames", 1))
    materials, supports = _materials(sim)
    return {
        "source": "training.data.simulation",
        "materials": materials,
        "supports": supports,
        "neighbour_distances_A": expected_neighbour_distances_A(str(sim.get("system", "")), sim.get("structure")),
        "energies_kV": energies_kV,
        "p_corrected": p_corrected,
        "Cs_corrected_um": _pair(mic["Cs_corrected_A"], 1e-4) if any_corrected else None,
        "Cs_uncorrected_um": _pair(mic["Cs_uncorrected_A"], 1e-4) if any_uncorrected else None,
        "uncorrected_min_energy_kV": uncorrected_min_kV if any_uncorrected else None,
        "defocus_around_scherzer_A": _pair(mic["defocus_around_scherzer_A"]),
        "corrected_defocus_A": (_pair(mic["corrected_defocus_A"])
                                if any_corrected and mic.get("corrected_defocus_A") else None),
        "dose_e_per_A2": _pair(mic["dose_e_per_A2"]),
        "sampling_A": nominal,
        "sampling_jitter": jitter,
        "sampling_range_A": _pair((nominal * (1 - jitter), nominal * (1 + jitter))),
        "astigmatism_A": _pair(mic.get("astigmatism_A", (0.0, 0.0))),
        "coma_A": _pair(mic.get("coma_A", (0.0, 0.0))),
        "focal_spread_A": _pair(mic.get("focal_spread_A", (0.0, 0.0))),
        "frames": frames if frames > 1 else None,
        "focal_step_A": _pair(sim.get("focal_step_A", (0.0, 0.0))) if frames > 1 else None,
        "focal_order": focal_order(sim.get("focal_step_A", (0.0, 0.0))) if frames > 1 else None,
    }


#: How the frames of a focal series are ordered, by the sign of the focal step.
FOCAL_ORDERS = {1: "increasing underfocus", -1: "increasing overfocus"}


def focal_order(step_range_A: Sequence[float]) -> str:
    """The frame order a focal-step range means (defocus positive = underfocus).

    Parameters
    ----------
    step_range_A : (float, float)
        Range of the defocus step from one frame to the next (Å).

    Returns
    -------
    str
        ``"increasing underfocus"`` for positive steps, ``"increasing overfocus"`` for
        negative ones, ``"mixed"`` for a range that spans 0.
    """
    lo, hi = (float(v) for v in step_range_A)
    if lo > 0 and hi > 0:
        return FOCAL_ORDERS[1]
    if lo < 0 and hi < 0:
        return FOCAL_ORDERS[-1]
    return "mixed"


def contrast_to_noise(image: np.ndarray, sampling_A: float, window_A: float = CONTRAST_WINDOW_A,
                      noise_std: float | None = None) -> float:
    """Contrast-to-noise ratio of an image: structure contrast over pixel noise.

    ``sqrt(max(var(h) - s², 0)) / s`` with ``h`` the image less its Gaussian-blurred
    self (standard deviation ``window_A / 2``, removing illumination and thickness
    gradients) and ``s`` the pixel noise
    (:func:`atomfinder.nn.normalization.estimate_noise_std`). Independent of gain
    and offset; 0 for pure white noise; it grows as the square root of the dose.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Pixel values (any linear unit), at least 3 x 3.
    sampling_A : float
        Pixel size in Å/px (compare images at one sampling: the model's).
    window_A : float
        High-pass window in Å.
    noise_std : float, optional
        The pixel noise of ``image`` when it is known better than the Laplacian
        estimate can read it (an image interpolated onto finer pixels); default:
        estimated from ``image``.

    Returns
    -------
    float
        The ratio (``inf`` for a noise-free image with structure, 0 for a noise-free
        flat one).
    """
    x = np.asarray(image, dtype=np.float64)
    noise = estimate_noise_std(x) if noise_std is None else float(noise_std)
    high = x - gaussian_blur_reflect(x, 0.5 * window_A / float(sampling_A))
    signal_var = max(float(high.var()) - noise * noise, 0.0)
    if noise <= 0:
        return math.inf if signal_var > 0 else 0.0
    return math.sqrt(signal_var) / noise


def contrast_reference(
    images: np.ndarray, sampling_A: np.ndarray | Sequence[float], has_atoms: np.ndarray | None = None,
    *, source: str = "training images",
) -> dict[str, Any]:
    """The contrast-to-noise range of a set of (training) images.

    Parameters
    ----------
    images : ndarray, shape (n, c, h, w) or (n, h, w)
        Images as the model sees them (normalised, at the model's sampling); the
        first channel of a focal series is used.
    sampling_A : array of float, shape (n,)
        Pixel size of each image in Å/px.
    has_atoms : array of bool, shape (n,), optional
        Images that hold labelled atoms; empty fields (negatives) are left out.
    source : str
        What the images are, recorded with the range.

    Returns
    -------
    dict
        ``{"low", "median", "high", "percentiles", "n_images", "source"}``:
        ``low``/``high`` are the 1st and 99th percentiles.

    Raises
    ------
    ValueError
        When no image is left.
    """
    imgs = np.asarray(images)
    if imgs.ndim == 4:
        imgs = imgs[:, 0]
    samplings = np.broadcast_to(np.asarray(sampling_A, dtype=np.float64), (len(imgs),))
    keep = np.ones(len(imgs), bool) if has_atoms is None else np.asarray(has_atoms, bool)
    values = np.array([contrast_to_noise(imgs[i], float(samplings[i])) for i in np.flatnonzero(keep)])
    values = values[np.isfinite(values)]
    if not len(values):
        raise ValueError("no image with atoms to measure the contrast-to-noise range on")
    lo, hi = np.percentile(values, CONTRAST_PERCENTILES)
    return {"low": round(float(lo), 3), "median": round(float(np.median(values)), 3), "high": round(float(hi), 3),
            "percentiles": list(CONTRAST_PERCENTILES), "n_images": int(len(values)), "source": source}


def _span(values: Sequence[float] | None, unit: str, fmt: str = "g") -> str:
    if values is None:
        return "-"
    lo, hi = values
    return f"{lo:{fmt}}…{hi:{fmt}} {unit}" if lo != hi else f"{lo:{fmt}} {unit}"


def validity_summary(validity: Mapping[str, Any]) -> str:
    """One line: energies, Cs, defocus, dose and pixel size of a validity range."""
    if not validity or "energies_kV" not in validity:
        return "range not recorded"
    kv = validity["energies_kV"]
    parts = [f"{kv[0]:g}–{kv[-1]:g} kV" if len(kv) > 1 else f"{kv[0]:g} kV"]
    if validity.get("Cs_corrected_um") is not None:
        parts.append("Cs " + _span(validity["Cs_corrected_um"], "µm"))
    if validity.get("Cs_uncorrected_um") is not None:
        parts.append("uncorrected Cs " + _span(validity["Cs_uncorrected_um"], "µm"))
    lo, hi = validity["defocus_around_scherzer_A"]
    if validity.get("corrected_defocus_A") is not None:
        clo, chi = validity["corrected_defocus_A"]
        parts.append(f"defocus {clo:+g}…{chi:+g} Å (corrected)")
        if validity.get("Cs_uncorrected_um") is not None:
            parts.append(f"uncorrected at Scherzer {lo:+g}…{hi:+g} Å")
    else:
        parts.append(f"defocus Scherzer {lo:+g}…{hi:+g} Å")
    dlo, dhi = validity["dose_e_per_A2"]
    parts.append(f"dose {dlo:.0e}–{dhi:.0e} e/Å²".replace("e+0", "e"))
    parts.append(f"{validity['sampling_A']:g} Å/px ±{validity['sampling_jitter']:.0%}")
    if validity.get("frames"):
        order = validity.get("focal_order") or focal_order(validity["focal_step_A"])
        parts.append(f"{validity['frames']} frames in {order}, step " + _span(validity["focal_step_A"], "Å"))
    return ", ".join(parts)


#: Most training images measured for the contrast-to-noise range (evenly spaced).
CONTRAST_MAX_IMAGES = 1024


def card_validity(
    simulation: Mapping[str, Any] | None, images: np.ndarray, sampling_A: np.ndarray | Sequence[float],
    has_atoms: np.ndarray | None = None, *, source: str = "training images",
) -> dict[str, Any]:
    """A card's ``validity``: :func:`validity_range` of the recipe plus the images' contrast range.

    Parameters
    ----------
    simulation : mapping or None
        The training simulation config (None: no range, only the contrast).
    images : ndarray, shape (n, c, h, w)
        Normalised training images at their own sampling (as the network saw them).
    sampling_A : array of float, shape (n,)
        Their pixel sizes in Å/px.
    has_atoms : array of bool, shape (n,), optional
        Which images hold labelled atoms (empty fields are left out of the range).
    source : str
        What the images are.

    Returns
    -------
    dict
        The range (when a simulation config is given) and ``contrast_to_noise``
        (:func:`contrast_reference` of at most :data:`CONTRAST_MAX_IMAGES` images).
    """
    n = len(images)
    pick = np.unique(np.linspace(0, n - 1, min(n, CONTRAST_MAX_IMAGES)).round().astype(int)) if n else np.zeros(0, int)
    samplings = np.broadcast_to(np.asarray(sampling_A, dtype=np.float64), (n,))
    mask = None if has_atoms is None else np.asarray(has_atoms, bool)[pick]
    out = validity_range(simulation) if simulation else {}
    try:
        out["contrast_to_noise"] = contrast_reference(np.asarray(images)[pick], samplings[pick], mask, source=source)
    except ValueError:
        pass
    return out
