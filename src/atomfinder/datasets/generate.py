"""Generate labelled training data: structures → exit waves → many images → zarr.

One *job* makes ``samples_per_job`` samples from the random stream
``numpy.random.default_rng([seed, job])``: the same config and seed give the
same arrays whichever worker, process pool or dask cluster runs the job, and a
resumed run regenerates only the jobs that were not finished.

Within a job, each structure's exit wave (the expensive multislice) is reused
for ``draws_per_wave`` images that differ in microscope, dose and field of view.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
from scipy.fft import next_fast_len

from atomfinder._config import check_number, check_pair
from atomfinder.datasets.labels import class_maps, height_map
from atomfinder.datasets.store import create_or_resume, job_ranges, pending_jobs, write_job
from atomfinder.imaging.hrtem import SimulatedImage, resample_spectrum, simulate_draw
from atomfinder.imaging.microscope import Microscope, MicroscopeRanges
from atomfinder.imaging.multislice import exit_waves
from atomfinder.structures import Structure

SYSTEMS = ("graphene", "gold", "mos2")


@dataclass(frozen=True)
class SimulationConfig:
    """How to simulate one system's training data.

    Every field is checked on construction (the structure table by building the
    system's structure config); a bad value is a one-line ``ValueError`` naming
    the field, its unit and the accepted range.

    Attributes
    ----------
    system : {"graphene", "gold", "mos2"}
        Which structure builder to use.
    image_px : int
        Side of the square training images (pixels).
    frames : int
        Images per sample: 1, or a focal series of ``frames`` defoci.
    focal_step_A : (float, float)
        Range of the defocus step between consecutive frames of a focal series
        (Å, positive = towards underfocus).
    drift_px : float
        Standard deviation of the random frame-to-frame drift (pixels).
    box_px : tuple of int
        Sides of the simulated box in output pixels, one drawn per structure;
        the box must exceed ``image_px + 2 * margin`` (the margin hides the
        seam where a cropped sheet meets its periodic image).
    margin_A : float
        Distance the crops keep from the box edge (Å).
    crop : {"uniform", "sites"}
        Crop anywhere inside the margin, or around a random site (nanoparticles).
    p_uniform_crop : float
        With ``crop="sites"``, the probability that an image is cropped anywhere
        instead: views that hold mostly support or vacuum and a part of the
        particle or none, as negatives (drawn only when > 0, so that recipes
        without it regenerate exactly).
    wave_oversampling : int
        Exit-wave grid = output grid x this factor (0.1 Å sampling suffices for
        light elements; use 2 for Au).
    slice_thickness_A : float
        Multislice slice thickness (Å).
    draws_per_wave : int
        Images made from one exit wave (>= 1).
    frozen_phonons : int
        Frozen-phonon configurations per structure (0 = none).
    p_amorphous_carbon : float
        Probability of an amorphous carbon layer under the specimen.
    carbon_thickness_A : (float, float)
        Thickness range of that layer (Å).
    p_empty_field : float
        Probability that a structure is left out altogether, as a negative: the
        field holds amorphous carbon alone (with probability ``p_empty_carbon``) or
        vacuum, and no label (drawn only when > 0, so that recipes without it
        regenerate exactly).
    p_empty_carbon : float
        Share of the empty fields that hold an amorphous carbon film.
    p_contamination : float
        Probability of amorphous-carbon contamination on top of the specimen: 1-3
        blobs (discs of radius ``contamination_radius_A``) of a film
        ``contamination_thickness_A`` thick. The specimen's sites under it stay
        labelled (drawn only when > 0).
    contamination_thickness_A, contamination_radius_A : (float, float)
        Thickness and blob-radius ranges of the contamination (Å).
    label_kind : {"disk", "gaussian"}
        Shape of the class targets.
    label_radius_A : float
        Disk radius or Gaussian standard deviation of the targets (Å).
    max_sites : int
        Room for ground-truth sites per sample.
    samples_per_job : int
        Samples per job (and per zarr chunk).
    microscope : MicroscopeRanges
        Microscope sampler.
    structure : dict
        Keyword arguments of the system's structure config.
    """

    system: str = "graphene"
    image_px: int = 256
    frames: int = 1
    focal_step_A: tuple[float, float] = (90.0, 110.0)
    drift_px: float = 1.0
    box_px: tuple[int, ...] = (360,)
    margin_A: float = 4.0
    crop: str = "uniform"
    p_uniform_crop: float = 0.0
    wave_oversampling: int = 1
    slice_thickness_A: float = 2.0
    draws_per_wave: int = 8
    frozen_phonons: int = 0
    p_amorphous_carbon: float = 0.0
    carbon_thickness_A: tuple[float, float] = (5.0, 20.0)
    p_empty_field: float = 0.0
    p_empty_carbon: float = 0.5
    p_contamination: float = 0.0
    contamination_thickness_A: tuple[float, float] = (5.0, 20.0)
    contamination_radius_A: tuple[float, float] = (5.0, 20.0)
    label_kind: str = "disk"
    label_radius_A: float = 0.4
    max_sites: int = 2048
    samples_per_job: int = 8
    microscope: MicroscopeRanges = field(default_factory=MicroscopeRanges)
    structure: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check every field (one-line ``ValueError`` naming the field, its unit and range).

        The structure table is checked by building the system's structure config,
        so that a misspelt key is refused before a store is created.
        """
        if self.system not in SYSTEMS:
            raise ValueError(f"unknown system {self.system!r}: choose one of {', '.join(SYSTEMS)}")
        check_number("image_px", self.image_px, "pixels", lo=16, integer=True)
        check_number("frames", self.frames, "images per sample", lo=1, integer=True)
        check_pair("focal_step_A", self.focal_step_A, "Å")
        check_number("drift_px", self.drift_px, "pixels", lo=0)
        if not isinstance(self.box_px, (tuple, list)) or not self.box_px:
            raise ValueError(f"box_px (pixels) must be a list of integers, e.g. [360]; got {self.box_px!r}")
        for side in self.box_px:
            check_number("box_px", side, "pixels", lo=1, integer=True)
        check_number("margin_A", self.margin_A, "Å", lo=0)
        if self.crop not in ("uniform", "sites"):
            raise ValueError(f"unknown crop mode {self.crop!r}: use 'uniform' or 'sites'")
        for name in ("p_uniform_crop", "p_amorphous_carbon", "p_empty_field", "p_empty_carbon", "p_contamination"):
            check_number(name, getattr(self, name), "probability", lo=0, hi=1)
        check_number("wave_oversampling", self.wave_oversampling, "exit-wave pixels per output pixel", lo=1,
                     integer=True)
        check_number("slice_thickness_A", self.slice_thickness_A, "Å", lo=0, lo_open=True)
        check_number("draws_per_wave", self.draws_per_wave, "images per exit wave", lo=1, integer=True)
        check_number("frozen_phonons", self.frozen_phonons, "configurations", lo=0, integer=True)
        for name in ("carbon_thickness_A", "contamination_thickness_A", "contamination_radius_A"):
            check_pair(name, getattr(self, name), "Å", lo=0)
        if self.label_kind not in ("disk", "gaussian"):
            raise ValueError(f"unknown label_kind {self.label_kind!r}: use 'disk' or 'gaussian'")
        check_number("label_radius_A", self.label_radius_A, "Å", lo=0, lo_open=True)
        check_number("max_sites", self.max_sites, "sites per sample", lo=1, integer=True)
        check_number("samples_per_job", self.samples_per_job, "samples", lo=1, integer=True)
        if not isinstance(self.microscope, MicroscopeRanges):
            raise ValueError(f"microscope must be a MicroscopeRanges ([simulation.microscope] table); "
                             f"got {type(self.microscope).__name__}")
        if not isinstance(self.structure, dict):
            raise ValueError(f"structure must be a table of {self.system} structure settings; got {self.structure!r}")
        try:
            structure = _builder(self.system)[1].from_dict(self.structure)
        except (TypeError, ValueError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"structure ({self.system}): {message}") from None
        s_max = self.microscope.sampling_A * (1 + self.microscope.sampling_jitter)
        need = self.image_px + 2 * math.ceil(self.margin_A / s_max * (1 + self.microscope.sampling_jitter))
        if min(self.box_px) < need:
            raise ValueError(f"box_px {min(self.box_px)} is too small for {self.image_px}-px images: use >= {need}")
        # the structure builders' own limit, at the smallest pixel size drawn (as a job draws it)
        smallest_A = _fast_even(min(self.box_px)) * self.microscope.sampling_A * (1 - self.microscope.sampling_jitter)
        need_A = _smallest_box_A(self.system, structure)
        if smallest_A < need_A:
            raise ValueError(f"box_px {min(self.box_px)} is too small for a {self.system} structure: the box is "
                             f"{smallest_A:.3g} Å at the smallest pixel size, the builder needs >= {need_A:.3g} Å")

    @property
    def class_names(self) -> tuple[str, ...]:
        return _builder(self.system)[2]

    @property
    def has_heights(self) -> bool:
        return self.system == "gold"

    def replace(self, **changes: Any) -> "SimulationConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-friendly dict."""
        d = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, MicroscopeRanges):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SimulationConfig":
        """Inverse of :meth:`to_dict`; missing keys take the system's defaults.

        Missing microscope fields take the recipe's; a ``structure`` table replaces
        the recipe's as it is (a store's recorded config is rebuilt exactly).
        :func:`load_config` merges a file's structure table key by key instead.
        """
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown simulation setting(s): {', '.join(sorted(unknown))}")
        base = default_config(d.get("system", "graphene"))
        if "microscope" in d:
            m = base.microscope.to_dict() | dict(d["microscope"])
            d["microscope"] = MicroscopeRanges.from_dict(m)
        for k, v in list(d.items()):
            if isinstance(v, list):
                d[k] = tuple(v)
        return base.replace(**d)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> "SimulationConfig":
        data = tomllib.loads(text)
        return cls.from_dict(data.get("simulation", data))


def default_config(system: str) -> SimulationConfig:
    """The shipped simulation recipe for ``system``.

    - graphene: 0.1 Å/px, aberration-corrected microscopes only (an uncorrected
      lens cannot resolve 1.42 Å C–C distances, so such images would teach
      guessing), tuned (astigmatism <= 1 nm, coma <= 15 nm), 60–300 kV, thin
      amorphous carbon under 20 % of the sheets; as negatives, 12 % of the fields
      hold no sheet (amorphous carbon or vacuum), a quarter of the sheets carry
      contamination blobs, and holes are larger (3-15 Å) and more frequent.
    - gold: 0.1 Å/px, 200 or 300 kV (half each); aberration-corrected with Cs
      -40..+40 µm and any defocus in -150..+150 Å (both contrast signs, through
      the reversals), except 20 % of the 300 kV images (10 % of all: uncorrected
      lenses are drawn only at 300 kV, ``uncorrected_min_energy_eV``), which are
      uncorrected (Cs 0.5-1.2 mm) within 60 Å of Scherzer focus; doses 1e2-1e5 e/Å²; Au waves at 0.05 Å; crops around the particle,
      a quarter anywhere in the box (support and vacuum views as negatives), 5 % of
      the fields without a particle; amorphous carbon (5-30 Å) under half of the
      particles, CeO2 in profile ([110], [100]) under half; the columns labelled
      are the peaks of the blurred projected density (``column_rule =
      "density_peaks"``; the default of
      :class:`atomfinder.structures.gold.GoldConfig` keeps the rule of configs
      written before it, gold 0.1-0.3). Gold 0.1-0.3 were trained on negative-Cs
      imaging only (their configs pin that microscope range).
    - mos2 (issue 14): 0.1 Å/px, focal series of 3 frames in increasing underfocus,
      each frame 40-120 Å more underfocused than the one before (the step drawn per
      series); 60–300 kV, aberration-corrected only (Cs -35..+35 µm, a tuned
      corrector: astigmatism <= 1 nm, coma <= 15 nm as for graphene) with the first
      frame's defocus anywhere in -150..+100 Å; doses 1e3-1e5 e/Å² per frame; a
      random-walk drift between frames of 1.5 px (0.15 Å) per axis and step, so
      the last frame lies within 0.5 Å of the first in 95 % of the series (the
      shifts are stored in ``drift_px``; labels are in the first frame's grid);
      amorphous carbon (3-15 Å) under 30 % of the sheets. Classes Mo, S, S1,
      Mo_vacancy, S_vacancy, vacancies labelled at their lattice site.
    """
    if system == "graphene":
        return SimulationConfig(
            system="graphene",
            box_px=(360,),
            # A tuned corrector: residual two-fold astigmatism <= 1 nm and axial coma
            # <= 15 nm keep their phase errors at the 1.23 A fringes near or below
            # pi/4 at 60-300 kV. The wider general ranges (3 nm, 30 nm: up to 3 rad
            # at 60 kV) shift the apparent lattice onto the bond centres, which no
            # single image can undo (graphene 0.1 lost whole images that way).
            microscope=MicroscopeRanges(sampling_A=0.1, p_corrected=1.0, astigmatism_A=(0.0, 10.0),
                                        coma_A=(0.0, 150.0)),
            p_amorphous_carbon=0.2,
            carbon_thickness_A=(3.0, 10.0),
            # Negatives (graphene 0.3): whole fields of vacuum or amorphous carbon,
            # contamination blobs on the sheet and larger, more frequent holes.
            p_empty_field=0.12,
            p_empty_carbon=0.6,
            p_contamination=0.25,
            contamination_thickness_A=(5.0, 25.0),
            contamination_radius_A=(5.0, 20.0),
            structure={"hole_density_nm2": [0.005, 0.04], "hole_radius_A": [3.0, 15.0]},
            slice_thickness_A=2.0,
            draws_per_wave=8,
        )
    if system == "gold":
        return SimulationConfig(
            system="gold",
            box_px=(384, 512, 640),
            crop="sites",
            wave_oversampling=2,
            slice_thickness_A=2.0,
            draws_per_wave=16,
            samples_per_job=16,  # one exit wave (seconds for a 6 nm particle) serves a whole job
            p_amorphous_carbon=0.5,
            carbon_thickness_A=(5.0, 30.0),
            label_radius_A=0.45,
            # label the columns the image resolves: peaks of the projected density blurred
            # at the resolution scale (structures.gold; gold 0.1-0.3 used "separation")
            structure={"column_rule": "density_peaks"},
            p_uniform_crop=0.25,
            p_empty_field=0.05,
            p_empty_carbon=0.5,
            # Any focus a user may choose (gold 0.4). Inside a particle the columns and
            # the gaps between them form the same lattice, so only the particle edge,
            # the thickness trend and the support tell the contrast sign; a narrow
            # negative-Cs range (gold 0.1-0.3) failed silently on the other sign.
            microscope=MicroscopeRanges(
                sampling_A=0.1,
                energies_eV=(200e3, 300e3),
                p_corrected=0.8,
                uncorrected_min_energy_eV=300e3,
                Cs_corrected_A=(-40e4, 40e4),
                Cs_uncorrected_A=(0.5e7, 1.2e7),
                corrected_defocus_A=(-150.0, 150.0),
                defocus_around_scherzer_A=(-60.0, 60.0),
                dose_e_per_A2=(1e2, 1e5),
            ),
        )
    if system == "mos2":
        return SimulationConfig(
            system="mos2",
            frames=3,
            # a range, drawn per series: focal_series_microscopes puts frame i at
            # defocus(frame 0) + i * step, so the frames come in increasing underfocus
            focal_step_A=(40.0, 120.0),
            # residual drift after registration: a Gaussian random walk of 0.15 A per
            # axis and frame (|drift| of the last frame < 0.5 A in 95 % of the series)
            drift_px=1.5,
            box_px=(360,),
            slice_thickness_A=1.0,
            draws_per_wave=8,
            p_amorphous_carbon=0.3,
            carbon_thickness_A=(3.0, 15.0),
            # Aberration-corrected imaging at any focus the user may choose. The tuned
            # corrector of graphene keeps the phase error of the 1.60 A {110} fringes
            # below ~0.6 rad at 60 kV (3 nm of astigmatism would give 1.8 rad).
            microscope=MicroscopeRanges(
                sampling_A=0.1,
                energies_eV=(60e3, 80e3, 120e3, 200e3, 300e3),
                p_corrected=1.0,
                Cs_corrected_A=(-35e4, 35e4),
                corrected_defocus_A=(-150.0, 100.0),
                astigmatism_A=(0.0, 10.0),
                coma_A=(0.0, 150.0),
                dose_e_per_A2=(1e3, 1e5),
            ),
        )
    raise ValueError(f"unknown system {system!r}: choose one of {', '.join(SYSTEMS)}")


#: Top-level tables a config file may hold beside ``[simulation]`` (read by other commands).
OTHER_TABLES = ("train",)


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The table of a TOML (or, for a ``.json`` suffix, JSON) file.

    Raises
    ------
    ValueError
        One line naming the file: unreadable, not valid TOML/JSON or not a table.
    """
    path = Path(path)
    kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text ({kind}) file") from None
    try:
        data = json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: not valid {kind} ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a {kind} config must be a table of settings, not {type(data).__name__}")
    return data


def load_config(path: Path | str | None, system: str | None = None) -> SimulationConfig:
    """A config from a TOML or JSON file, or the default recipe of ``system``.

    The file holds a ``[simulation]`` table (fields of :class:`SimulationConfig`,
    microscope ranges in ``[simulation.microscope]``, structure settings in
    ``[simulation.structure]``), or the same fields at the top level. Its fields
    override those of the system's recipe (:func:`default_config`), and the
    microscope and structure tables override single fields of the recipe's: a
    structure field the file leaves out keeps the recipe's value (to use a
    structure builder's default where the recipe sets another, give it).

    Parameters
    ----------
    path : path, optional
        The file; ``None``: the recipe itself.
    system : str, optional
        The system asked for (``--system``); a file for another system is refused.

    Raises
    ------
    ValueError
        One line naming the file: not valid TOML/JSON, a top-level table other
        than ``[simulation]`` (and ``[train]``) beside it, a config for another
        system, or a bad setting.
    """
    if path is None:
        return default_config(system or "graphene")
    path = Path(path)
    data = read_config_file(path)
    if "simulation" in data:
        others = [k for k in data if k not in ("simulation", *OTHER_TABLES)]
        if others:
            names = ", ".join(f"[{k}]" if isinstance(data[k], dict) else k for k in others)
            raise ValueError(f"{path}: unknown top-level table(s) or key(s) {names} beside [simulation]: simulation "
                             f"settings go in [simulation], microscope settings in [simulation.microscope], "
                             f"structure settings in [simulation.structure]")
        data = data["simulation"]
        if not isinstance(data, dict):
            raise ValueError(f"{path}: simulation must be a table ([simulation]), not {data!r}")
    else:
        tables = [k for k in data if isinstance(data[k], dict) and k not in ("microscope", "structure")]
        if tables:
            raise ValueError(f"{path}: unknown table(s) {', '.join(f'[{k}]' for k in tables)} and no [simulation] "
                             f"table: simulation settings go in [simulation], microscope settings in "
                             f"[simulation.microscope]")
    if system is not None:
        if data.get("system", system) != system:
            raise ValueError(f"{path}: config is for system {data['system']!r}, not {system!r}")
        data = {**data, "system": system}
    try:
        if isinstance(data.get("structure"), dict):
            # key by key, as the microscope table (SimulationConfig.from_dict)
            recipe = default_config(data.get("system", "graphene")).structure
            data = {**data, "structure": recipe | data["structure"]}
        return SimulationConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: {message}") from None


# -- structures --------------------------------------------------------------------


def _builder(system: str) -> tuple[Callable, type, tuple[str, ...]]:
    if system == "graphene":
        from atomfinder.structures.graphene import GrapheneConfig, build_graphene

        return build_graphene, GrapheneConfig, ("C",)
    if system == "gold":
        from atomfinder.structures.gold import GoldConfig, build_gold

        return build_gold, GoldConfig, ("Au",)
    if system == "mos2":
        from atomfinder.structures.mos2 import MoS2Config, build_mos2

        return build_mos2, MoS2Config, ("Mo", "S", "S1", "Mo_vacancy", "S_vacancy")
    raise ValueError(f"unknown system {system!r}")


def _smallest_box_A(system: str, structure: Any) -> float:
    """The smallest box side (Å) the structure builder of ``system`` accepts with ``structure``'s settings."""
    if system != "gold":
        return math.nextafter(5.0, math.inf)  # the sheet builders want more than 5 Å
    from atomfinder.structures.gold import _MIN_DIAMETER_A

    room = 2 * structure.edge_margin_A
    if structure.p_support > 0:  # the particle sits above the support
        room = max(room, structure.edge_margin_A + structure.support_gap_A + structure.support_min_height_A)
    return room + _MIN_DIAMETER_A + 2


def build_structure(config: SimulationConfig, rng: np.random.Generator, box_A: float) -> Structure:
    """Draw a structure for a square box of side ``box_A`` (Å), with optional carbon support."""
    from atomfinder.structures.support import amorphous_carbon

    build, config_cls, _ = _builder(config.system)
    structure = build(rng, (box_A, box_A), config_cls.from_dict(config.structure) if config.structure else None)
    if config.p_empty_field > 0 and rng.random() < config.p_empty_field:
        return empty_field(config, rng, structure)
    if config.p_contamination > 0 and rng.random() < config.p_contamination:
        structure = add_contamination(config, rng, structure)
    if rng.random() < config.p_amorphous_carbon:
        # a carbon layer at z = 1 .. 1 + t Å, the specimen moved up above it
        lo, hi = config.carbon_thickness_A
        thickness = float(rng.uniform(lo, hi))
        atoms = structure.atoms.copy()
        atoms.positions[:, 2] += thickness + 1.0
        lx, ly, lz = structure.box_A
        atoms.set_cell([lx, ly, lz + thickness + 1.0])
        atoms.extend(amorphous_carbon(rng, (lx, ly), thickness, z0_A=1.0))
        info = dict(structure.info) | {"amorphous_carbon_A": thickness}
        structure = Structure(atoms, structure.sites, structure.class_names, info)
    return structure


def empty_field(config: SimulationConfig, rng: np.random.Generator, structure: Structure) -> Structure:
    """A negative in the box of ``structure``: amorphous carbon alone or vacuum, no sites."""
    from ase import Atoms

    from atomfinder.structures import Sites
    from atomfinder.structures.support import amorphous_carbon

    lx, ly, _ = structure.box_A
    info = {"system": config.system, "empty_field": True}
    if rng.random() < config.p_empty_carbon:
        thickness = float(rng.uniform(*config.carbon_thickness_A))
        atoms = amorphous_carbon(rng, (lx, ly), thickness, z0_A=1.0)
        atoms.set_cell([lx, ly, thickness + 2.0])
        info["amorphous_carbon_A"] = thickness
    else:
        atoms = Atoms([], cell=[lx, ly, 2.0], pbc=True)
    return Structure(atoms, Sites.empty(), structure.class_names, info)


def add_contamination(config: SimulationConfig, rng: np.random.Generator, structure: Structure) -> Structure:
    """Blobs of amorphous carbon on top of the specimen (its sites stay labelled)."""
    from atomfinder.structures.support import amorphous_carbon

    lx, ly, lz = structure.box_A
    thickness = float(rng.uniform(*config.contamination_thickness_A))
    film = amorphous_carbon(rng, (lx, ly), thickness, z0_A=lz)
    centres = rng.uniform(0, 1, (int(rng.integers(1, 4)), 2)) * (lx, ly)
    radii = rng.uniform(*config.contamination_radius_A, len(centres))
    xy = film.positions[:, :2]
    # periodic distance to each blob centre
    d = xy[:, None, :] - centres[None]
    d -= np.round(d / (lx, ly)) * (lx, ly)
    inside = np.any(np.hypot(d[..., 0], d[..., 1]) < radii[None], axis=1)
    atoms = structure.atoms.copy()
    atoms.extend(film[np.flatnonzero(inside)])
    atoms.set_cell([lx, ly, lz + thickness + 1.0])
    info = dict(structure.info) | {
        "contamination": {"thickness_A": thickness, "centres_A": centres.tolist(), "radii_A": radii.tolist()}
    }
    return Structure(atoms, structure.sites, structure.class_names, info)


# -- one job ------------------------------------------------------------------------

#: Microscope parameters stored per frame, in this order.
MICROSCOPE_FIELDS = tuple(
    f.name for f in dataclasses.fields(Microscope) if f.name != "defocus_gradient"
) + ("defocus_gradient_x", "defocus_gradient_y")


def microscope_vector(m: Microscope) -> np.ndarray:
    """The :data:`MICROSCOPE_FIELDS` of ``m`` as a float64 vector."""
    d = dataclasses.asdict(m)
    gx, gy = d.pop("defocus_gradient")
    d["defocus_gradient_x"], d["defocus_gradient_y"] = gx, gy
    return np.array([float(d[k]) for k in MICROSCOPE_FIELDS])


def _fast_even(n: int) -> int:
    n = next_fast_len(int(n))
    while n % 2:
        n = next_fast_len(n + 1)
    return n


def focal_series_microscopes(
    base: Microscope, frames: int, step_A: float
) -> list[Microscope]:
    """The frames of a focal series: defocus ``base + i * step_A`` (Å)."""
    return [base.replace(defocus_A=base.defocus_A + i * step_A) for i in range(frames)]


def draw_structure(config: SimulationConfig, rng: np.random.Generator) -> tuple[float, int, Structure]:
    """The pixel size (Å), box side (pixels) and structure of the next exit wave."""
    sampling = config.microscope.sample_sampling(rng)
    box_px = _fast_even(int(rng.choice(np.asarray(config.box_px))))
    return sampling, box_px, build_structure(config, rng, box_px * sampling)


def job_structure(config: SimulationConfig, seed: int, job: int) -> Structure:
    """The first structure of job ``job`` of a store made with ``seed``, rebuilt without imaging.

    It is the job's only structure when ``draws_per_wave >= samples_per_job``
    (the gold recipe: one particle per job), so per-sample scores can be read by
    particle.
    """
    return draw_structure(config, np.random.default_rng([seed, job]))[2]


def iter_structure_images(
    config: SimulationConfig, rng: np.random.Generator, n_images: int
) -> Iterator[tuple[SimulatedImage, Structure]]:
    """Simulate ``n_images`` images of one structure (one exit wave per energy)."""
    m_ranges = config.microscope
    sampling, box_px, structure = draw_structure(config, rng)
    energy = float(rng.choice(np.asarray(m_ranges.energies_eV, dtype=float)))
    f = config.wave_oversampling
    waves = exit_waves(
        structure.atoms,
        energy,
        gpts=(box_px * f, box_px * f),
        slice_thickness_A=config.slice_thickness_A,
        frozen_phonons=config.frozen_phonons,
        seed=int(rng.integers(2**31)),
    )
    spectra = resample_spectrum(waves, (box_px, box_px))
    margin = int(math.ceil(config.margin_A / sampling))
    lo, hi = margin, box_px - margin - config.image_px
    for _ in range(n_images):
        base = m_ranges.sample(rng, energy_eV=energy, sampling_A=sampling)
        step = float(rng.uniform(*config.focal_step_A)) if config.frames > 1 else 0.0
        microscopes = focal_series_microscopes(base, config.frames, step)
        drift = np.zeros((config.frames, 2))
        if config.frames > 1:
            drift[1:] = np.cumsum(rng.normal(0, config.drift_px, (config.frames - 1, 2)), axis=0)
        around_site = config.crop == "sites" and len(structure.sites)
        if around_site and config.p_uniform_crop > 0 and rng.random() < config.p_uniform_crop:
            around_site = False
        if around_site:
            centre = structure.sites.positions_A[rng.integers(len(structure.sites))] / sampling
            jitter = rng.uniform(-config.image_px / 4, config.image_px / 4, 2)
            origin = np.clip(np.round(centre + jitter - config.image_px / 2), lo, hi).astype(int)
        else:
            origin = rng.integers(lo, hi + 1, 2)
        image = simulate_draw(
            spectra,
            structure.sites,
            microscopes,
            drift,
            (int(origin[0]), int(origin[1])),
            config.image_px,
            rng,
            label_margin_px=config.label_radius_A / sampling * 3 + 1,
        )
        yield image, structure


def sample_arrays(config: SimulationConfig, image: SimulatedImage) -> dict[str, np.ndarray]:
    """Store arrays (without the leading sample axis) for one simulated image."""
    s = image.sampling_A
    shape = image.image.shape[-2:]
    radius_px = config.label_radius_A / s
    out = {
        "images": image.image,
        "targets": class_maps(image.positions_px, image.labels, shape, len(config.class_names), radius_px, config.label_kind),
        "sampling_A": np.float32(s),
        "microscope": np.stack([microscope_vector(m) for m in image.microscopes]),
        "drift_px": image.drift_px,
    }
    if config.has_heights:
        out["heights"] = height_map(image.positions_px, image.heights, shape, radius_px)
    # ground truth: sites whose centre lies inside the image
    xy = image.positions_px
    inside = (xy[:, 0] >= -0.5) & (xy[:, 0] < shape[1] - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] < shape[0] - 0.5)
    n = int(inside.sum())
    if n > config.max_sites:
        raise ValueError(f"{n} sites in one image exceed max_sites = {config.max_sites}")
    sites_A = np.full((config.max_sites, 2), np.nan, np.float32)
    sites_A[:n] = xy[inside] * s
    label = np.zeros(config.max_sites, np.int16)
    label[:n] = image.labels[inside]
    height = np.zeros(config.max_sites, np.int16)
    height[:n] = image.heights[inside]
    out |= {"sites_A": sites_A, "sites_label": label, "sites_height": height, "n_sites": np.int32(n)}
    return out


def generate_job(config: SimulationConfig | dict, seed: int, job: int, n_samples: int) -> dict[str, np.ndarray]:
    """Simulate the samples of one job: deterministic in ``(config, seed, job)``.

    Returns
    -------
    dict of ndarray
        The store arrays, each with a leading axis of ``n_samples``.
    """
    if isinstance(config, dict):
        config = SimulationConfig.from_dict(config)
    rng = np.random.default_rng([seed, job])
    samples: list[dict[str, np.ndarray]] = []
    while len(samples) < n_samples:
        n = min(config.draws_per_wave, n_samples - len(samples))
        for image, _ in iter_structure_images(config, rng, n):
            samples.append(sample_arrays(config, image))
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


# -- the whole store -------------------------------------------------------------------


def store_meta(config: SimulationConfig, n: int, seed: int) -> dict[str, Any]:
    """The description a store is created with (and must match to be resumed)."""
    return {
        "n": int(n),
        "seed": int(seed),
        "system": config.system,
        "frames": config.frames,
        "image_px": config.image_px,
        "class_names": list(config.class_names),
        "has_heights": config.has_heights,
        "max_sites": config.max_sites,
        "samples_per_job": config.samples_per_job,
        "microscope_fields": list(MICROSCOPE_FIELDS),
        "config": config.to_dict(),
    }


def simulate_to_store(
    config: SimulationConfig,
    n: int,
    out: Path | str,
    seed: int = 0,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Generate (or finish) an ``n``-sample store at ``out``.

    Parameters
    ----------
    config : SimulationConfig
        What to simulate.
    n : int
        Number of samples.
    out : path
        The ``.zarr`` directory; an unfinished store with the same config, seed
        and ``n`` is resumed.
    seed : int
        Master seed (>= 0).
    workers : int, optional
        Local worker processes (default: the number of CPUs; 0 = in this process).
    scheduler : str, optional
        Address of a dask.distributed scheduler (``tcp://host:8786``) to run
        the jobs on instead of local processes.
    progress : callable, optional
        Called as ``progress(done_samples, n)`` after each job.
    """
    check_number("n", n, "samples", lo=1, integer=True)
    check_number("seed", seed, "", lo=0, integer=True)
    out = Path(out)
    group = create_or_resume(out, store_meta(config, n, seed))
    ranges = job_ranges(n, config.samples_per_job)
    todo = pending_jobs(group)
    done = sum(e - s for j, (s, e) in enumerate(ranges) if j not in set(todo))
    if progress:
        progress(done, n)
    cfg = config.to_dict()

    def finished(job: int, arrays: dict[str, np.ndarray]) -> None:
        nonlocal done
        write_job(group, job, arrays)
        s, e = ranges[job]
        done += e - s
        if progress:
            progress(done, n)

    if scheduler is not None:
        _run_dask(scheduler, cfg, seed, todo, ranges, finished)
    elif workers == 0 or len(todo) <= 1:
        for j in todo:
            s, e = ranges[j]
            finished(j, generate_job(cfg, seed, j, e - s))
    else:
        _run_pool(workers or os.cpu_count() or 1, cfg, seed, todo, ranges, finished)
    return out


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: on Linux, have the kernel kill this worker when its parent dies.

    A parent killed with ``kill -9`` cannot stop its pool; without this the workers stay,
    idle and holding their memory, until killed by hand.
    """
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the request: go now
        os._exit(1)


def _run_pool(workers, cfg, seed, todo, ranges, finished) -> None:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=_die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(generate_job, cfg, seed, j, ranges[j][1] - ranges[j][0]): j for j in todo}
        try:
            for fut in as_completed(futures):
                finished(futures[fut], fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _run_dask(address, cfg, seed, todo, ranges, finished) -> None:
    from distributed import Client, as_completed

    with Client(address) as client:
        futures = [
            client.submit(generate_job, cfg, seed, j, ranges[j][1] - ranges[j][0], key=f"atomfinder-job-{seed}-{j}", pure=False)
            for j in todo
        ]
        index = {f.key: j for f, j in zip(futures, todo)}
        for fut in as_completed(futures):
            finished(index[fut.key], fut.result())
            fut.release()
