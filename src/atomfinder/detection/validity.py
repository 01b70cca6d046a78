"""Per-image validity checks: does this micrograph lie where the model was trained?

None needs ground truth. Each compares what the detections or the image show with
what the model card records (:attr:`ModelCard.validity`, see
:mod:`atomfinder.nn.validity`):

``atom_count``
    At least :data:`MIN_ATOMS` detections; fewer: no lattice (noise, vacuum), or a
    material the model does not know.
``lattice_order``
    The detections' nearest-neighbour (NN) distances are concentrated, as on a
    lattice: their relative spread (median absolute deviation / median) is at most
    :data:`MAX_NN_SPREAD`. Detections in noise or amorphous material are spread
    more widely.
``lattice_spacing``
    At least :data:`MIN_SPACING_SHARE` of the atoms have their NN within
    ``±SPACING_RTOL`` of a projected NN distance of the trained material (graphene
    1.42 Å; Au columns [100] 2.04, [110] 2.50, [111] 1.67 Å; MoS2 Mo-S 1.84 Å).
    Fails for a pixel size off by more than ~10 % or another material.
``contrast_to_noise``
    The image's contrast-to-noise ratio at the model's sampling
    (:func:`atomfinder.nn.validity.contrast_to_noise` of the normalised model
    input) is not below the low end of the training images' range: a lower
    ratio means a dose below the training range, or no structure at all.
``ambiguous_detections``
    At most :data:`MAX_AMBIGUOUS_SHARE` of the detections have a ``confidence``
    (else the raw ``probability``) within :data:`AMBIGUOUS_BAND`.
``focal_step`` (focal series only)
    The defocus step between consecutive frames, when the user gives it, lies in the
    focal-step range the model was trained on (``focal_step_A`` of the card's
    validity, Å, positive = each frame more underfocused than the one before); a
    step of the wrong sign means frames in the wrong order. Without a step, or
    without a range in the card, it is not evaluated.

A check that cannot be evaluated (too few atoms for NN statistics, no reference in
the card) has ``passed = None`` and never warns. An image cleaner than the training
images (contrast-to-noise above their range) is not flagged: the real example lies
above the graphene range (14.7 against 0.66-11.0) and the model finds every atom of
its clean region.

The thresholds were chosen by measurement with the shipped graphene 0.2 (values in
brackets): the real example as shipped passes every check (spread 0.007, spacing
share 0.94, ambiguous share 0.001, contrast-to-noise 14.7). It fails at twice its
pixel size (spread 0.51, share 0.31, ambiguous 0.88) and at half (0.09, 0.39, 0.96),
with the pixel size 10 % too small (share 0.19) or 15 % too large (0.30), while 5 %
either way and 10 % too large pass (0.92-0.96). White noise fails (contrast 0.0,
spread 0.045-0.064, ambiguous 0.53-0.69; a model that finds no atom in it fails
``atom_count``), and so do simulated Au particles given to the
graphene model (seed 5: spread 0.040-0.058, ambiguous 0.24-0.39). On 232 images
simulated with graphene 0.2's own recipe the checks warn on 39 %: those images score
F1 0.48 on average against 0.94 for the rest; 97 % of the images below F1 0.7 and 2 %
of those above 0.9 warn. On 255 Au images the gold model warns on 25 % (F1 0.29
against 0.96); given to the graphene model, 62 % warn: on the rest it draws a regular
1.42 Å lattice over particle and support alike, which no check without ground truth
tells from graphene.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from atomfinder.nn.normalization import estimate_noise_std
from atomfinder.nn.validity import contrast_to_noise, validity_range

__all__ = [
    "AMBIGUOUS_BAND",
    "Check",
    "ImageValidity",
    "MAX_AMBIGUOUS_SHARE",
    "MAX_NN_SPREAD",
    "MIN_ATOMS",
    "MIN_SPACING_SHARE",
    "SPACING_RTOL",
    "ValidityWarning",
    "ambiguous_share",
    "card_reference",
    "check_focal_step",
    "check_image",
    "model_contrast_to_noise",
    "nearest_neighbour_distances_A",
    "relative_spread",
    "spacing_share",
    "validity_record",
    "warn",
    "warning_lines",
]

#: Fewest detections that can form a lattice.
MIN_ATOMS = 10
#: Largest relative spread (MAD / median) of the NN distances of a lattice: 0.007 on
#: the real example, 0.024 (median) on simulated graphene, >= 0.045 on white noise.
MAX_NN_SPREAD = 0.03
#: Relative tolerance of an NN distance around an expected one (a pixel size ~10 % off).
SPACING_RTOL = 0.10
#: Smallest share of atoms whose NN distance is within SPACING_RTOL of an expected one:
#: 0.94 on the real example, >= 0.55 on 99 % of simulated graphene, <= 0.39 at 2x,
#: 0.5x, -10 % and +15 % pixel size.
MIN_SPACING_SHARE = 0.5
#: A detection is ambiguous when its confidence (or probability) lies in this band.
AMBIGUOUS_BAND = (0.2, 0.8)
#: Largest share of ambiguous detections: 0.001 on the real example, >= 0.24 on noise,
#: wrong pixel sizes and Au particles given to graphene 0.2.
MAX_AMBIGUOUS_SHARE = 0.2
#: Side (model pixels) of the central square the contrast-to-noise ratio is measured in.
CONTRAST_MAX_SIDE_PX = 1024


class ValidityWarning(UserWarning):
    """An image fails a validity check (one line naming the file)."""


@dataclass(frozen=True)
class Check:
    """One validity check of one image.

    Attributes
    ----------
    name : str
        ``atom_count``, ``lattice_order``, ``lattice_spacing``,
        ``contrast_to_noise``, ``ambiguous_detections`` or (focal series)
        ``focal_step``.
    value : float or None
        What was measured (None when it could not be).
    low, high : float or None
        Allowed range of ``value`` (None: open at that end).
    passed : bool or None
        None when the check could not be evaluated.
    reason : str
        Why it failed, in one line without the file name ("" unless it failed);
        :attr:`ImageValidity.warnings` prefixes the file.
    """

    name: str
    value: float | None
    low: float | None
    high: float | None
    passed: bool | None
    reason: str = ""

    def __post_init__(self) -> None:
        for name in ("value", "low", "high"):
            v = getattr(self, name)
            object.__setattr__(self, name, None if v is None else float(v))
        object.__setattr__(self, "passed", None if self.passed is None else bool(self.passed))

    def to_dict(self, where: str = "") -> dict[str, Any]:
        """JSON-serialisable (non-finite numbers become None); ``warning`` is the reason
        prefixed with ``where`` (the file), "" when the check did not fail."""
        warning = f"{where}: {self.reason}" if self.passed is False and where else self.reason
        return {"value": _finite(self.value), "low": _finite(self.low), "high": _finite(self.high),
                "passed": self.passed, "warning": warning if self.passed is False else ""}


@dataclass(frozen=True)
class ImageValidity:
    """The checks of one image (or one frame of a stack).

    Attributes
    ----------
    source : str
        The input, for messages.
    frame : int or None
        Frame index in a stack of independent frames, else None.
    checks : tuple of Check
    """

    source: str
    frame: int | None
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        """No check failed (unevaluated checks do not count)."""
        return not any(c.passed is False for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        """The checks that failed."""
        return tuple(c for c in self.checks if c.passed is False)

    @property
    def where(self) -> str:
        """The file (and frame) the warnings name."""
        return self.source if self.frame is None else f"{self.source} frame {self.frame}"

    @property
    def warnings(self) -> list[str]:
        """One line per failed check, naming the file (and frame)."""
        return [f"{self.where}: {c.reason}" for c in self.failed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``frame``, ``passed`` and ``checks`` by name (each with its
        measured ``value``, allowed ``low``/``high``, ``passed`` and ``warning`` line)."""
        return {"frame": self.frame, "passed": self.passed,
                "checks": {c.name: c.to_dict(self.where) for c in self.checks}}


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), 6)


# --------------------------------------------------------------------------- measures


def nearest_neighbour_distances_A(xy_A: np.ndarray) -> np.ndarray:
    """Distance from each atom to its nearest neighbour.

    Parameters
    ----------
    xy_A : ndarray, shape (n, 2)
        Positions in Å.

    Returns
    -------
    ndarray of float64, shape (n,)
        NN distances in Å (empty for fewer than 2 atoms).
    """
    xy = np.asarray(xy_A, dtype=np.float64).reshape(-1, 2)
    if len(xy) < 2:
        return np.zeros(0)
    d, _ = cKDTree(xy).query(xy, k=2)
    return d[:, 1]


def relative_spread(nn_A: np.ndarray) -> float:
    """Median absolute deviation of NN distances over their median (0 on a perfect lattice).

    Returns NaN for no distances.
    """
    d = np.asarray(nn_A, dtype=np.float64)
    if not len(d):
        return math.nan
    med = float(np.median(d))
    return float(np.median(np.abs(d - med))) / med if med > 0 else math.inf


def spacing_share(nn_A: np.ndarray, expected_A: Sequence[float], rtol: float = SPACING_RTOL) -> float:
    """Share of NN distances within ``±rtol`` (relative) of any expected distance.

    Returns NaN for no distances or no expected distance.
    """
    d = np.asarray(nn_A, dtype=np.float64)
    e = np.asarray(list(expected_A), dtype=np.float64)
    if not len(d) or not len(e):
        return math.nan
    close = np.abs(d[:, None] / e[None, :] - 1.0) <= rtol
    return float(np.mean(close.any(axis=1)))


def ambiguous_share(scores: np.ndarray, band: tuple[float, float] = AMBIGUOUS_BAND) -> float:
    """Share of scores strictly inside ``band`` (NaN for no scores)."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        return math.nan
    return float(np.mean((s > band[0]) & (s < band[1])))


# --------------------------------------------------------------------------- reference


def card_reference(card: Any) -> dict[str, Any]:
    """The validity range a card records, else the one derived from its training recipe.

    Parameters
    ----------
    card : ModelCard
        The model's card.

    Returns
    -------
    dict
        ``card.validity`` when present; else :func:`atomfinder.nn.validity.validity_range`
        of ``card.training["data"]["simulation"]`` (without a contrast-to-noise
        range, which needs the training images); else ``{}``.
    """
    validity = dict(getattr(card, "validity", None) or {})
    if validity:
        return validity
    sim = (getattr(card, "training", None) or {}).get("data", {}).get("simulation")
    if isinstance(sim, Mapping):
        try:
            return validity_range(sim)
        except (KeyError, TypeError, ValueError):
            return {}
    return {}


# --------------------------------------------------------------------------- checks


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _check_count(n: int) -> Check:
    ok = n >= MIN_ATOMS
    why = "" if ok else (f"only {n} atom{'s' if n != 1 else ''} found (at least {MIN_ATOMS} expected): no lattice "
                         "(noise, vacuum) or a material the model was not trained on")
    return Check("atom_count", float(n), float(MIN_ATOMS), None, ok, why)


def _check_order(nn_A: np.ndarray) -> Check:
    if len(nn_A) < MIN_ATOMS:
        return Check("lattice_order", None, None, MAX_NN_SPREAD, None)
    spread = relative_spread(nn_A)
    ok = spread <= MAX_NN_SPREAD
    why = "" if ok else (f"nearest-neighbour distances spread by {spread:.1%} (at most {MAX_NN_SPREAD:.0%} on a "
                         f"lattice, median {np.median(nn_A):.2f} Å): no regular lattice found; noise, "
                         "amorphous material or another material?")
    return Check("lattice_order", spread, None, MAX_NN_SPREAD, ok, why)


def _check_spacing(nn_A: np.ndarray, expected: Mapping[str, float], sampling_A: float) -> Check:
    if len(nn_A) < MIN_ATOMS or not expected:
        return Check("lattice_spacing", None, MIN_SPACING_SHARE, None, None)
    share = spacing_share(nn_A, list(expected.values()))
    ok = share >= MIN_SPACING_SHARE
    names = ", ".join(f"{k} {v:.2f} Å" for k, v in expected.items())
    why = "" if ok else (f"{share:.0%} of the atoms have a neighbour within ±{SPACING_RTOL:.0%} of {names} "
                         f"(at least {MIN_SPACING_SHARE:.0%} expected; median {np.median(nn_A):.2f} Å): "
                         f"is the pixel size {sampling_A:.4g} Å/px right, and is this the model's material?")
    return Check("lattice_spacing", share, MIN_SPACING_SHARE, None, ok, why)


def _check_contrast(cnr: float | None, reference: Mapping[str, Any] | None, model_sampling_A: float) -> Check:
    low = None if not reference else float(reference["low"])
    if cnr is None or low is None:
        return Check("contrast_to_noise", cnr, low, None, None)
    ok = cnr >= low
    hi = f"–{_fmt(float(reference['high']))}" if reference.get("high") is not None else ""
    why = "" if ok else (f"contrast-to-noise ratio {cnr:.2f} at the model's {model_sampling_A:.3g} Å/px, below "
                         f"the training images' {_fmt(low)}{hi}: dose too low for the model, or no structure")
    return Check("contrast_to_noise", cnr, low, None, ok, why)


def _check_ambiguous(scores: np.ndarray, column: str) -> Check:
    share = ambiguous_share(scores)
    if not math.isfinite(share):
        return Check("ambiguous_detections", None, None, MAX_AMBIGUOUS_SHARE, None)
    ok = share <= MAX_AMBIGUOUS_SHARE
    lo, hi = AMBIGUOUS_BAND
    why = "" if ok else (f"{share:.0%} of the detections are ambiguous ({column} {lo:g}–{hi:g}; at most "
                         f"{MAX_AMBIGUOUS_SHARE:.0%}): the model is unsure of this image")
    return Check("ambiguous_detections", share, None, MAX_AMBIGUOUS_SHARE, ok, why)


def check_focal_step(step_A: float | None, reference: Mapping[str, Any]) -> Check:
    """Whether a focal series' defocus step lies in the model's trained focal-step range.

    Parameters
    ----------
    step_A : float or None
        The defocus step between consecutive frames (Å, positive = each frame more
        underfocused than the one before); None when it is not known.
    reference : mapping
        The model's validity range (:func:`card_reference`): its ``focal_step_A``
        (``[low, high]``, Å) and ``focal_order`` are used.

    Returns
    -------
    Check
        ``focal_step`` with the step as ``value`` and the trained range as ``low`` and
        ``high``; ``passed`` is None when the step or the range is unknown.
    """
    trained = reference.get("focal_step_A")
    if not trained:
        return Check("focal_step", step_A, None, None, None)
    lo, hi = (float(v) for v in trained)
    if step_A is None or not math.isfinite(float(step_A)):
        return Check("focal_step", None, lo, hi, None)
    step = float(step_A)
    ok = lo <= step <= hi
    order = reference.get("focal_order") or "increasing underfocus"
    if ok:
        why = ""
    elif step * (lo + hi) < 0:
        why = (f"focal step {step:+g} Å between frames has the wrong sign: the model takes its frames in {order} "
               f"(step {lo:+g}…{hi:+g} Å, positive = underfocus); reverse the order of the frames")
    else:
        why = (f"focal step {step:g} Å between frames is outside the {lo:g}–{hi:g} Å the model was trained on: "
               "its classes may be wrong")
    return Check("focal_step", step, lo, hi, ok, why)


def check_image(
    table: pd.DataFrame,
    reference: Mapping[str, Any],
    *,
    contrast_to_noise_ratio: float | None = None,
    sampling_A: float,
    model_sampling_A: float,
    source: str = "<array>",
    frame: int | None = None,
    focal_series: bool = False,
    focal_step_A: float | None = None,
) -> ImageValidity:
    """Run every validity check on the detections of one image.

    Parameters
    ----------
    table : DataFrame
        The image's atom table (``x_angstrom``, ``y_angstrom``, and ``confidence``
        or ``probability``).
    reference : mapping
        The model's validity range (:func:`card_reference`): its
        ``neighbour_distances_A`` and ``contrast_to_noise`` are used.
    contrast_to_noise_ratio : float, optional
        The image's ratio at the model's sampling
        (:func:`atomfinder.nn.validity.contrast_to_noise` of the normalised model
        input); None skips that check.
    sampling_A : float
        The input's pixel size in Å/px (named in the spacing warning).
    model_sampling_A : float
        The model's pixel size in Å/px (named in the contrast warning).
    source : str
        The input, for messages.
    frame : int, optional
        Frame index within a stack.
    focal_series : bool
        The image is a registered focal series: add the ``focal_step`` check.
    focal_step_A : float, optional
        The series' defocus step between frames (Å, positive = underfocus), when known.

    Returns
    -------
    ImageValidity
    """
    xy = table[["x_angstrom", "y_angstrom"]].to_numpy(dtype=np.float64) if len(table) else np.zeros((0, 2))
    nn = nearest_neighbour_distances_A(xy)
    column = "confidence" if "confidence" in table.columns and table["confidence"].notna().any() else "probability"
    scores = table[column].to_numpy(dtype=np.float64) if column in table.columns else np.zeros(0)
    expected = dict(reference.get("neighbour_distances_A") or {})
    checks = (
        _check_count(len(xy)),
        _check_order(nn),
        _check_spacing(nn, expected, sampling_A),
        _check_contrast(contrast_to_noise_ratio, reference.get("contrast_to_noise"), model_sampling_A),
        _check_ambiguous(scores, column),
    )
    if focal_series:
        checks += (check_focal_step(focal_step_A, reference),)
    return ImageValidity(source=source, frame=frame, checks=checks)


# --------------------------------------------------------------------------- reporting


def warning_lines(results: Sequence[ImageValidity]) -> list[str]:
    """One line per failed check, naming the file (and the frames of a stack).

    For a stack, each check that fails in some frames gives one line listing them,
    with the message of the first.
    """
    if not results:
        return []
    if len(results) == 1 and results[0].frame is None:
        return results[0].warnings
    lines = []
    names = [c.name for c in results[0].checks]
    for name in names:
        failing = [(r, c) for r in results for c in r.failed if c.name == name]
        if not failing:
            continue
        frames = [str(r.frame) for r, _ in failing]
        shown = ", ".join(frames[:8]) + (", …" if len(frames) > 8 else "")
        lines.append(f"{results[0].source} frame{'s' if len(frames) > 1 else ''} {shown} "
                     f"({len(frames)} of {len(results)}): {failing[0][1].reason}")
    return lines


def validity_record(results: Sequence[ImageValidity]) -> dict[str, Any]:
    """What the JSON sidecar and ``DataFrame.attrs["validity"]`` hold.

    Returns
    -------
    dict
        ``{"passed": bool, "warnings": [lines], "images": [ImageValidity.to_dict(), ...]}``
        plus the thresholds used.
    """
    return {
        "passed": all(r.passed for r in results),
        "warnings": warning_lines(results),
        "images": [r.to_dict() for r in results],
        "thresholds": {"min_atoms": MIN_ATOMS, "max_nn_spread": MAX_NN_SPREAD, "spacing_rtol": SPACING_RTOL,
                       "min_spacing_share": MIN_SPACING_SHARE, "ambiguous_band": list(AMBIGUOUS_BAND),
                       "max_ambiguous_share": MAX_AMBIGUOUS_SHARE},
    }


def warn(lines: Sequence[str], stacklevel: int = 3) -> None:
    """Issue each line as a :class:`ValidityWarning`."""
    for line in lines:
        warnings.warn(line, ValidityWarning, stacklevel=stacklevel)


def model_contrast_to_noise(normalised: np.ndarray, model_sampling_A: float, noise_scale: float = 1.0) -> float:
    """Contrast-to-noise ratio of an image as the model sees it.

    :func:`atomfinder.nn.validity.contrast_to_noise` of the normalised network input
    (first frame of a focal series; its central :data:`CONTRAST_MAX_SIDE_PX` pixels
    square, as the ratio is a statistic of the whole field), as the card's training
    range was measured. :func:`atomfinder.detection.pipeline.detect_array` computes
    it from the input it has already normalised.

    Parameters
    ----------
    normalised : ndarray, shape (H, W) or (C, H, W)
        The normalised image at the model's sampling.
    model_sampling_A : float
        The model's pixel size in Å/px.
    noise_scale : float
        How many times the pixel noise of the network input exceeds what the
        Laplacian estimate reads from it (1 for an image that was not resampled;
        above 1 for one interpolated onto finer pixels, whose noise is correlated
        between neighbours: :func:`atomfinder.detection.pipeline.detect_array`
        passes it).

    Returns
    -------
    float
        The ratio, NaN for an image under 3 pixels on a side.
    """
    img = np.asarray(normalised, dtype=np.float32)
    first = img[0] if img.ndim == 3 else img
    if min(first.shape) < 3:
        return float("nan")
    side = CONTRAST_MAX_SIDE_PX
    r0, c0 = max(0, (first.shape[0] - side) // 2), max(0, (first.shape[1] - side) // 2)
    crop = first[r0 : r0 + side, c0 : c0 + side]
    noise = None if noise_scale == 1.0 else float(noise_scale) * estimate_noise_std(crop)
    return contrast_to_noise(crop, float(model_sampling_A), noise_std=noise)
