"""Microscope parameters and the seeded sampler that draws them.

A :class:`Microscope` holds everything that turns an exit wave into a recorded
image: the objective lens (defocus, aberrations, aperture), the partial
coherence of the illumination, the detector (MTF, blur, pixel size, gain,
offset) and the electron dose. :class:`MicroscopeRanges` is the documented,
seeded sampler that draws them for training data.

Conventions
-----------
- Lengths in Å (so Cs = 30 µm is ``Cs_A = 3e5``), angles in mrad or radians
  (named), energy in eV, dose in electrons per Å².
- **Defocus is positive for underfocus** (abTEM's ``defocus = -C10``).
- Aberrations use the polar (Krivanek) notation of abTEM:
  ``chi(alpha, phi) = 2 pi / lambda * [ 1/2 alpha^2 (C10 + C12 cos 2(phi - phi12))
  + 1/3 alpha^3 C21 cos(phi - phi21) + 1/4 alpha^4 C30 + 1/6 alpha^6 C50 ]``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from atomfinder._config import ConfigMixin, check_number, check_pair

#: Physical constants (CODATA) for the relativistic electron wavelength.
_H = 6.62607015e-34  # J s
_M0 = 9.1093837015e-31  # kg
_E = 1.602176634e-19  # C
_C = 299792458.0  # m / s


def wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration energy in eV."""
    e = energy_eV * _E
    return _H * _C / math.sqrt(e * (2 * _M0 * _C**2 + e)) * 1e10


def scherzer_defocus_A(Cs_A: float, energy_eV: float) -> float:
    """Scherzer defocus in Å (positive = underfocus), ``sign(Cs) sqrt(3/2 |Cs| lambda)``.

    Same expression as abTEM's ``scherzer_defocus``; for negative Cs (negative
    Cs imaging) the optimum lies in overfocus, so the value is negative.
    """
    return math.copysign(math.sqrt(1.5 * abs(Cs_A) * wavelength_A(energy_eV)), Cs_A)


@dataclass(frozen=True)
class Microscope:
    """One microscope state: the objective lens, coherence, detector and dose.

    Attributes
    ----------
    energy_eV : float
        Acceleration energy (eV).
    sampling_A : float
        Detector pixel size referred to the specimen (Å / pixel).
    defocus_A : float
        Defocus at the field centre (Å, positive = underfocus).
    Cs_A : float
        Spherical aberration C30 (Å; 1 µm = 1e4 Å).
    C5_A : float
        Fifth-order spherical aberration C50 (Å).
    astigmatism_A, astigmatism_angle_rad : float
        Two-fold astigmatism C12 (Å) and its azimuth phi12 (rad).
    coma_A, coma_angle_rad : float
        Axial coma C21 (Å) and its azimuth phi21 (rad).
    focal_spread_A : float
        Standard deviation of the defocus spread from chromatic aberration and
        instabilities (Å); imaged as an incoherent sum over defoci.
    angular_spread_mrad : float
        Illumination semi-angle (mrad); partial spatial coherence enters as the
        quasi-coherent envelope ``exp(-(theta/2)^2 |grad chi|^2)`` (abTEM's form).
    semiangle_cutoff_mrad : float
        Objective aperture semi-angle (mrad); ``inf`` = no objective aperture
        (the image is then limited by the coherence envelopes and the pixel size).
    defocus_gradient : tuple of float
        Linear change of defocus across the field, ``(d/dx, d/dy)`` in Å of
        defocus per Å (a tilted or wedge-shaped specimen; 0 = uniform).
    defocus_curvature_A : float
        Extra defocus (Å) at a distance of 50 Å from the field centre along a
        random parabolic bend (a rippled or bent sheet); 0 = none.
    mtf_c0, mtf_c1, mtf_c2 : float
        Parametric detector MTF ``(1 - c0) / (1 + (q / c1)^c2) + c0`` with ``q``
        the spatial frequency in units of the Nyquist frequency.
    blur_px : float
        Extra Gaussian blur at the detector (standard deviation in pixels).
    dose_e_per_A2 : float
        Electron dose (e/Å²); ``inf`` means no shot noise.
    gain : float
        Detector counts per electron.
    offset : float
        Detector offset relative to the image's mean signal, not in counts: the
        recorded image is ``gain * counts + offset * gain * mean(counts)``
        (:func:`atomfinder.imaging.noise.detect`), so ``offset = 0.1`` raises every
        pixel by a tenth of the mean level whatever the dose and gain.
    """

    energy_eV: float = 80e3
    sampling_A: float = 0.1
    defocus_A: float = 0.0
    Cs_A: float = 0.0
    C5_A: float = 0.0
    astigmatism_A: float = 0.0
    astigmatism_angle_rad: float = 0.0
    coma_A: float = 0.0
    coma_angle_rad: float = 0.0
    focal_spread_A: float = 0.0
    angular_spread_mrad: float = 0.0
    semiangle_cutoff_mrad: float = 40.0
    defocus_gradient: tuple[float, float] = (0.0, 0.0)
    defocus_curvature_A: float = 0.0
    defocus_curvature_angle_rad: float = 0.0
    mtf_c0: float = 1.0
    mtf_c1: float = 1.0
    mtf_c2: float = 2.0
    blur_px: float = 0.0
    dose_e_per_A2: float = math.inf
    gain: float = 1.0
    offset: float = 0.0

    @property
    def wavelength_A(self) -> float:
        """Electron wavelength (Å)."""
        return wavelength_A(self.energy_eV)

    def replace(self, **changes: Any) -> "Microscope":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/TOML-friendly dict (infinite values, e.g. no noise, written as ``"inf"``)."""
        d = dataclasses.asdict(self)
        d["defocus_gradient"] = list(self.defocus_gradient)
        return {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Microscope":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        d = dict(d)
        if "defocus_gradient" in d:
            d["defocus_gradient"] = tuple(float(v) for v in d["defocus_gradient"])
        for key in ("dose_e_per_A2", "semiangle_cutoff_mrad"):
            if key in d:
                d[key] = float(d[key])
        return cls(**d)


#: Smallest electron energy (eV) accepted in :attr:`MicroscopeRanges.energies_eV`: a smaller
#: value is most likely kV typed as eV.
MIN_ENERGY_EV = 1e3
#: Smallest uncorrected Cs (Å) accepted in :attr:`MicroscopeRanges.Cs_uncorrected_A` (0.1 µm;
#: an uncorrected lens has 0.5-2 mm = 5e6-2e7 Å): a smaller value is most likely mm typed as Å.
MIN_UNCORRECTED_CS_A = 1e3


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _inf_or_value(value: Any) -> Any:
    """``"inf"``, ``"+inf"`` or ``"Infinity"`` (any case) as ``float("inf")``; anything else unchanged."""
    if isinstance(value, str) and value.strip().lower().lstrip("+") in ("inf", "infinity"):
        return math.inf
    return value


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)


@dataclass(frozen=True)
class MicroscopeRanges(ConfigMixin):
    """Ranges from which :meth:`sample` draws a :class:`Microscope`.

    Every draw is uniform in the given ``(low, high)`` range unless noted; pass
    equal bounds to fix a parameter. Every field is checked on construction
    (``low <= high``, the bounds given below); a bad value is a one-line
    ``ValueError`` naming the field and its unit.

    Attributes
    ----------
    energies_eV : tuple of float
        Acceleration energies to choose from (eV), uniformly; at least one, each
        >= :data:`MIN_ENERGY_EV` (300 kV is ``300000.0``).
    sampling_A : float
        Nominal pixel size (Å / pixel, > 0), the model's sampling.
    sampling_jitter : float
        Relative jitter of the pixel size, in [0, 0.5): drawn uniformly in
        ``sampling_A * (1 ± sampling_jitter)`` (a calibration error).
    p_corrected : float
        Probability of an aberration-corrected microscope (Cs drawn from
        ``Cs_corrected_A``), else uncorrected (Cs from ``Cs_uncorrected_A``).
    uncorrected_min_energy_eV : float
        Uncorrected microscopes are drawn only at or above this energy: below it
        their point resolution (> 2.3 Å at 120 kV and Cs = 0.5 mm) cannot separate
        the atoms or columns the labels mark, so such images would teach guessing.
    Cs_corrected_A, Cs_uncorrected_A : (float, float)
        Cs ranges (Å): corrected -35..+35 µm by default, uncorrected 0.5-1.2 mm
        (at least :data:`MIN_UNCORRECTED_CS_A`: 1.2 mm is ``1.2e7``).
    C5_A : (float, float)
        C50 range (Å).
    defocus_around_scherzer_A : (float, float)
        Defocus (Å, positive = underfocus) relative to the Scherzer defocus of
        the drawn Cs and energy; the default ±250 Å passes through the contrast
        reversals of the lattice fringes.
    corrected_defocus_A : (float, float) or ()
        If given, the defocus of aberration-corrected microscopes (Å, positive =
        underfocus) is drawn from this absolute range instead of around Scherzer
        (a corrected Cs of a few µm leaves the user free to choose any focus);
        uncorrected microscopes still use ``defocus_around_scherzer_A``.
    focal_spread_A, angular_spread_mrad : (float, float)
        Coherence ranges.
    p_objective_aperture : float
        Probability of an objective aperture; without one (the usual case for
        aberration-corrected HRTEM) ``semiangle_cutoff_mrad`` is ``inf``.
    aperture_resolution_A : (float, float)
        Range of the aperture's cut-off as a spacing ``d`` (Å): the semi-angle is
        ``lambda / d``, so the same range keeps the same information at every
        voltage (a fixed range in mrad would cut the 1.23 Å graphene fringes at
        60 kV and not at 300 kV).
    astigmatism_A, coma_A : (float, float)
        Residual two-fold astigmatism and axial coma magnitudes (Å); azimuths uniform.
    p_defocus_variation : float
        Probability that defocus varies across the field.
    defocus_gradient_max : float
        Maximum magnitude of the defocus gradient (Å per Å), direction uniform.
    defocus_curvature_A : (float, float)
        Range of the parabolic defocus bend at 50 Å from the centre (Å, signed).
    mtf_c0, mtf_c1, mtf_c2 : (float, float)
        Parametric MTF ranges (see :class:`Microscope`).
    blur_px : (float, float)
        Gaussian detector blur range (pixels).
    dose_e_per_A2 : (float, float)
        Dose range (e/Å², > 0), drawn log-uniformly; ``(inf, inf)``: no shot noise.
    gain : (float, float)
        Counts per electron (> 0), drawn log-uniformly.
    offset : (float, float)
        Detector offset range, relative to the mean counts of the image: the
        offset added to every pixel is ``offset * gain * mean electrons per
        pixel`` (see :class:`Microscope`).
    """

    _config_label = "microscope range"

    energies_eV: tuple[float, ...] = (60e3, 80e3, 120e3, 200e3, 300e3)
    sampling_A: float = 0.1
    sampling_jitter: float = 0.05
    p_corrected: float = 0.8
    uncorrected_min_energy_eV: float = 200e3
    Cs_corrected_A: tuple[float, float] = (-35e4, 35e4)
    Cs_uncorrected_A: tuple[float, float] = (0.5e7, 1.2e7)
    C5_A: tuple[float, float] = (0.0, 5e6)
    defocus_around_scherzer_A: tuple[float, float] = (-250.0, 250.0)
    corrected_defocus_A: tuple[float, ...] = ()
    focal_spread_A: tuple[float, float] = (10.0, 60.0)
    angular_spread_mrad: tuple[float, float] = (0.05, 0.5)
    p_objective_aperture: float = 0.3
    aperture_resolution_A: tuple[float, float] = (0.6, 1.1)
    astigmatism_A: tuple[float, float] = (0.0, 30.0)
    coma_A: tuple[float, float] = (0.0, 300.0)
    p_defocus_variation: float = 0.3
    defocus_gradient_max: float = 1.5
    defocus_curvature_A: tuple[float, float] = (-60.0, 60.0)
    mtf_c0: tuple[float, float] = (0.0, 0.3)
    mtf_c1: tuple[float, float] = (0.3, 1.0)
    mtf_c2: tuple[float, float] = (1.5, 3.0)
    blur_px: tuple[float, float] = (0.0, 0.6)
    dose_e_per_A2: tuple[float, float] = (1e2, 1e5)
    gain: tuple[float, float] = (0.5, 20.0)
    offset: tuple[float, float] = (-0.2, 0.5)

    def __post_init__(self) -> None:
        """Check every field: one-line ``ValueError`` naming the field, its unit and range.

        Values that look typed in another unit are refused with a hint: energies
        below :data:`MIN_ENERGY_EV` (kV typed as eV) and an uncorrected Cs below
        :data:`MIN_UNCORRECTED_CS_A` (mm typed as Å).
        """
        energies = self.energies_eV
        if (not isinstance(energies, (tuple, list)) or not energies
                or not all(_is_real(e) and math.isfinite(e) for e in energies)):
            shown = list(energies) if isinstance(energies, tuple) else energies
            raise ValueError(f"energies_eV (eV) must be a list of numbers, e.g. [300000.0] for 300 kV; got {shown!r}")
        if min(energies) < MIN_ENERGY_EV:
            hint = f": {min(energies):g} looks like kV typed as eV" if min(energies) > 0 else ""
            raise ValueError(f"energies_eV (eV) must be electron energies in eV (>= {MIN_ENERGY_EV:g}; 300 kV is "
                             f"300000.0){hint}; got {list(energies)!r}")
        check_number("sampling_A", self.sampling_A, "Å / pixel", lo=0, lo_open=True)
        check_number("sampling_jitter", self.sampling_jitter, "relative", lo=0, hi=0.5, hi_open=True)
        for name in ("p_corrected", "p_objective_aperture", "p_defocus_variation"):
            value = getattr(self, name)
            if not (_is_real(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1]; got {value!r}")
        check_number("uncorrected_min_energy_eV", self.uncorrected_min_energy_eV, "eV", lo=0)
        check_pair("Cs_corrected_A", self.Cs_corrected_A, "Å")
        check_pair("Cs_uncorrected_A", self.Cs_uncorrected_A, "Å")
        if self.Cs_uncorrected_A[0] < MIN_UNCORRECTED_CS_A:
            raise ValueError(f"Cs_uncorrected_A (Å) must be the Cs of an uncorrected lens in Å (>= "
                             f"{MIN_UNCORRECTED_CS_A:g} Å; 1.2 mm is 1.2e7 Å): {self.Cs_uncorrected_A[0]:g} looks "
                             f"like mm typed as Å; got {list(self.Cs_uncorrected_A)!r}")
        check_pair("C5_A", self.C5_A, "Å")
        check_pair("defocus_around_scherzer_A", self.defocus_around_scherzer_A, "Å")
        if not (isinstance(self.corrected_defocus_A, (tuple, list)) and len(self.corrected_defocus_A) in (0, 2)):
            raise ValueError(f"corrected_defocus_A (Å) must be [] or [low, high]; got {self.corrected_defocus_A!r}")
        if self.corrected_defocus_A:
            check_pair("corrected_defocus_A", self.corrected_defocus_A, "Å")
        check_pair("focal_spread_A", self.focal_spread_A, "Å", lo=0)
        check_pair("angular_spread_mrad", self.angular_spread_mrad, "mrad", lo=0)
        check_pair("aperture_resolution_A", self.aperture_resolution_A, "Å", lo=0, lo_open=True)
        check_pair("astigmatism_A", self.astigmatism_A, "Å", lo=0)
        check_pair("coma_A", self.coma_A, "Å", lo=0)
        check_number("defocus_gradient_max", self.defocus_gradient_max, "Å per Å", lo=0)
        check_pair("defocus_curvature_A", self.defocus_curvature_A, "Å")
        check_pair("mtf_c0", self.mtf_c0, "MTF at high frequency", lo=0, hi=1)
        check_pair("mtf_c1", self.mtf_c1, "Nyquist", lo=0, lo_open=True)
        check_pair("mtf_c2", self.mtf_c2, "exponent", lo=0, lo_open=True)
        check_pair("blur_px", self.blur_px, "pixels", lo=0)
        dose = self.dose_e_per_A2
        no_noise = isinstance(dose, (tuple, list)) and len(dose) == 2 and all(_is_real(d) and d == math.inf for d in dose)
        if not no_noise:
            try:
                check_pair("dose_e_per_A2", dose, "e/Å²", lo=0, lo_open=True)
            except ValueError as exc:
                inf = isinstance(dose, (tuple, list)) and any(_is_real(d) and math.isinf(d) for d in dose)
                raise ValueError(f"{exc}{'; [inf, inf] for no shot noise' if inf else ''}") from None
        check_pair("gain", self.gain, "counts per electron", lo=0, lo_open=True)
        check_pair("offset", self.offset, "times the mean counts")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MicroscopeRanges":
        """Build the ranges from :meth:`to_dict` output or a TOML/JSON table.

        The strings ``"inf"`` in ``dose_e_per_A2`` (JSON has no infinity) are read
        as numbers.
        """
        data = dict(data)
        dose = data.get("dose_e_per_A2")
        if isinstance(dose, (list, tuple)):
            data["dose_e_per_A2"] = [_inf_or_value(d) for d in dose]
        return super().from_dict(data)

    def sample(
        self,
        rng: np.random.Generator,
        energy_eV: float | None = None,
        sampling_A: float | None = None,
    ) -> Microscope:
        """Draw one microscope state.

        Parameters
        ----------
        rng : numpy.random.Generator
            The only source of randomness (same state, same microscope).
        energy_eV : float, optional
            Use this energy instead of drawing one (an exit wave is computed for
            one energy and reused for many draws).
        sampling_A : float, optional
            Use this pixel size instead of drawing one (the output grid of one
            exit wave is fixed).
        """
        if energy_eV is None:
            energy_eV = float(rng.choice(np.asarray(self.energies_eV, dtype=float)))
        sampling = self.sample_sampling(rng) if sampling_A is None else sampling_A
        corrected = rng.random() < self.p_corrected or energy_eV < self.uncorrected_min_energy_eV
        Cs = _uniform(rng, self.Cs_corrected_A if corrected else self.Cs_uncorrected_A)
        C5 = _uniform(rng, self.C5_A) if corrected else 0.0
        if corrected and self.corrected_defocus_A:
            defocus = _uniform(rng, self.corrected_defocus_A)
        else:
            defocus = scherzer_defocus_A(Cs, energy_eV) + _uniform(rng, self.defocus_around_scherzer_A)
        gradient = (0.0, 0.0)
        curvature = 0.0
        if rng.random() < self.p_defocus_variation:
            g = rng.uniform(0, self.defocus_gradient_max)
            a = rng.uniform(0, 2 * np.pi)
            gradient = (float(g * np.cos(a)), float(g * np.sin(a)))
            curvature = _uniform(rng, self.defocus_curvature_A)
        return Microscope(
            energy_eV=energy_eV,
            sampling_A=float(sampling),
            defocus_A=float(defocus),
            Cs_A=Cs,
            C5_A=C5,
            astigmatism_A=_uniform(rng, self.astigmatism_A),
            astigmatism_angle_rad=float(rng.uniform(0, np.pi)),
            coma_A=_uniform(rng, self.coma_A),
            coma_angle_rad=float(rng.uniform(0, 2 * np.pi)),
            focal_spread_A=_uniform(rng, self.focal_spread_A),
            angular_spread_mrad=_uniform(rng, self.angular_spread_mrad),
            semiangle_cutoff_mrad=self._sample_aperture_mrad(rng, energy_eV),
            defocus_gradient=gradient,
            defocus_curvature_A=curvature,
            defocus_curvature_angle_rad=float(rng.uniform(0, np.pi)),
            mtf_c0=_uniform(rng, self.mtf_c0),
            mtf_c1=_uniform(rng, self.mtf_c1),
            mtf_c2=_uniform(rng, self.mtf_c2),
            blur_px=_uniform(rng, self.blur_px),
            dose_e_per_A2=_log_uniform(rng, self.dose_e_per_A2),
            gain=_log_uniform(rng, self.gain),
            offset=_uniform(rng, self.offset),
        )

    def _sample_aperture_mrad(self, rng: np.random.Generator, energy_eV: float) -> float:
        if rng.random() >= self.p_objective_aperture:
            return math.inf
        return 1e3 * wavelength_A(energy_eV) / _uniform(rng, self.aperture_resolution_A)

    def sample_sampling(self, rng: np.random.Generator) -> float:
        """Draw a pixel size (Å / pixel) around the nominal one."""
        return float(self.sampling_A * (1.0 + rng.uniform(-self.sampling_jitter, self.sampling_jitter)))


