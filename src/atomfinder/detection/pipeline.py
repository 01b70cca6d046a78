"""From a calibrated image to a table of atoms with a trained model.

``detect_array`` chains the steps every caller (CLI, evaluation, time series) must do
the same way:

1. check the channel count against the model card, and the size: a pixel size far
   from the model's or more memory than is available is refused before anything is
   allocated (:func:`size_problem`),
2. resample the image to the model's sampling (:func:`resample`),
3. normalise it as the card says (:func:`atomfinder.nn.normalization.apply_normalization`),
4. predict per-class probabilities, tiled (:func:`atomfinder.nn.infer.predict`),
5. find atoms as peaks (:func:`atomfinder.detection.peaks.find_atoms`),
6. describe each by its peak features and, with the card's calibration, give it a
   calibrated confidence and a positional error bar (:mod:`atomfinder.detection.confidence`),
7. scale the positions back to the input pixel grid (:func:`rescale_positions`).

Coordinates follow DESIGN.md: ``(x, y)`` = (column, row), pixel centres at integers,
origin at the centre of the top-left pixel, so a position in pixels ``x`` sits at
``x * sampling_A`` Å. Resampling keeps that physical position: output pixel ``j`` of a
grid with sampling ``s_out`` samples the input at ``j * s_out / s_in`` input pixels (not
scipy.ndimage.zoom's corner-aligned grid, which would stretch the image about its
centre by a fraction of a pixel).

This module needs NumPy, SciPy and torch only; it never imports the simulation stack.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import affine_transform, gaussian_filter, gaussian_filter1d, spline_filter

from atomfinder.detection.confidence import Calibration, peak_features
from atomfinder.detection.peaks import AtomTable, find_atoms
from atomfinder.detection.resampling import antialias_sigma_px
from atomfinder.detection.sublattice import Honeycomb
from atomfinder.detection.validity import model_contrast_to_noise
from atomfinder.nn.card import ModelCard
from atomfinder.nn.infer import predict
from atomfinder.nn.normalization import apply_normalization, estimate_noise_std

#: Relative sampling difference below which no resampling is done.
SAMPLING_RTOL = 1e-9


def resampled_size(n_px: int, from_sampling_A: float, to_sampling_A: float) -> int:
    """Pixels along one axis after resampling: ``round(n_px * from / to)``, at least 1.

    Halves round up (``floor(v + 0.5)``), not to even, with a tolerance of 1e-6 px for
    floating-point error (``53 * 0.15 / 0.1`` gives 80, not 79).
    """
    return max(1, int(np.floor(n_px * from_sampling_A / to_sampling_A + 0.5 + 1e-6)))


def _check_sampling(*values: float) -> None:
    for v in values:
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"sampling must be a positive finite number of Å/pixel, got {v}")


# --------------------------------------------------------------------------- size guards
#: Coarsest input pixel accepted, as a multiple of the model's pixel size (0.4 Å/px for
#: a 0.1 Å/px model: neighbouring carbon atoms 1.42 Å apart are then 3.5 pixels apart).
MAX_COARSER = 4.0
#: Finest input pixel accepted, as a fraction ``1 / MAX_FINER`` of the model's: a finer
#: image would be downsampled more than 8x (usually a wrong calibration).
MAX_FINER = 8.0
#: Peak bytes per input pixel of one frame for reading, cleaning and anti-aliasing
#: (measured ~36 B/px on an 8192² image downsampled 8x, :func:`input_memory_bytes`,
#: before cleaning and resampling ran in float32: an upper bound since).
INPUT_WORK_BYTES = 32
#: Bytes per input pixel and frame held through the whole detection (raw and cleaned float32).
INPUT_STORE_BYTES = 8
#: Peak bytes per model-grid pixel and input channel for resampling, normalisation and
#: tiled inference (measured 36-42 B/px between 2048² and 4096² before normalisation ran
#: in float32; an 8192² image now peaks at about 2.4 GiB in all, see bench_detect.py).
MODEL_WORK_BYTES = 40


def _format_A(value: float) -> str:
    """A pixel size for a message: three significant digits, no exponent below 1000 Å."""
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def _format_bytes(n: float) -> str:
    """``n`` bytes as ``"1.5 GB"``, ``"12 MB"`` or ``"300 kB"``."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def pixel_size_problem(sampling_A: float, model_sampling_A: float) -> str | None:
    """Why a pixel size is too far from the model's to detect atoms, or None.

    Parameters
    ----------
    sampling_A : float
        Pixel size of the input in Å/px.
    model_sampling_A : float
        The model's pixel size (``card.sampling_A``).

    Returns
    -------
    str or None
        A one-line reason when the input is coarser than ``MAX_COARSER`` times or
        finer than ``1 / MAX_FINER`` times the model's pixel size.
    """
    _check_sampling(sampling_A, model_sampling_A)
    model = f"the model works at {_format_A(model_sampling_A)} Å/px"
    if sampling_A > MAX_COARSER * model_sampling_A:
        return (f"pixel size {_format_A(sampling_A)} Å/px is far too coarse for atomic resolution; {model} "
                f"(at most {MAX_COARSER:g}x coarser, {_format_A(MAX_COARSER * model_sampling_A)} Å/px); "
                "check the calibration or the given sampling")
    if sampling_A * MAX_FINER < model_sampling_A:
        return (f"pixel size {_format_A(sampling_A)} Å/px is far too fine; {model} (at most {MAX_FINER:g}x finer, "
                f"{_format_A(model_sampling_A / MAX_FINER)} Å/px); check the calibration or the given sampling")
    return None


def input_memory_bytes(height: int, width: int, n_images: int = 1) -> int:
    """Bytes needed to read and clean ``n_images`` frames of ``height x width`` pixels.

    ``INPUT_STORE_BYTES`` per pixel of every frame (kept throughout) plus
    ``INPUT_WORK_BYTES`` per pixel of the one frame being worked on.
    """
    n_px = int(height) * int(width)
    return n_px * (INPUT_STORE_BYTES * int(n_images) + INPUT_WORK_BYTES)


def input_memory_problem(shape: tuple[int, ...], available_bytes: int | None = None) -> str | None:
    """Why an image of this shape cannot even be cleaned in the available memory, or None.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` or ``(N, H, W)``.
    available_bytes : int, optional
        Memory available (default :func:`available_memory_bytes`; no check when unknown).

    Returns
    -------
    str or None
        One line with :func:`input_memory_bytes` against the available memory.
    """
    n = int(shape[0]) if len(shape) == 3 else 1
    need = input_memory_bytes(shape[-2], shape[-1], n)
    available = available_memory_bytes() if available_bytes is None else int(available_bytes)
    if available is None or need <= available:
        return None
    size = "x".join(str(int(k)) for k in shape)
    return (f"{size} pixels: cleaning needs about {_format_bytes(need)} of memory but "
            f"{_format_bytes(available)} is available; crop or bin the image")


def detection_memory_bytes(
    height: int, width: int, sampling_A: float, model_sampling_A: float, *, n_classes: int,
    channels: int = 1, n_frames: int = 1,
) -> int:
    """Estimated peak memory (bytes) of detecting atoms in an image or stack.

    The input grid costs :func:`input_memory_bytes`; the model grid
    (``resampled_size`` of each side) costs ``MODEL_WORK_BYTES`` per pixel and channel
    (resampling, normalisation, tiled inference) plus the float32 probability maps
    (``4 * n_classes`` bytes per pixel) of every frame. The fixed cost of the network
    (a few hundred MB, independent of the image size) is not counted.

    Parameters
    ----------
    height, width : int
        Input image size in pixels.
    sampling_A, model_sampling_A : float
        Pixel sizes of the input and of the model (Å/px).
    n_classes : int
        Classes of the model, background included.
    channels : int
        Input channels fed to the network together (the frames of a focal series).
    n_frames : int
        Independent frames, each detected on its own (a stack that is not a focal series).

    Returns
    -------
    int
    """
    h = resampled_size(height, sampling_A, model_sampling_A)
    w = resampled_size(width, sampling_A, model_sampling_A)
    model_px = h * w
    model = model_px * (MODEL_WORK_BYTES * int(channels) + 4 * int(n_classes) * int(n_frames))
    return input_memory_bytes(height, width, int(channels) * int(n_frames)) + model


def available_memory_bytes() -> int | None:
    """Memory available to a new allocation (``psutil.virtual_memory().available``), or None
    when it cannot be known."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except (ImportError, OSError, AttributeError):
        return None


def size_problem(
    shape: tuple[int, ...], sampling_A: float, card: ModelCard, *, focal_series: bool = False,
    available_bytes: int | None = None,
) -> str | None:
    """Why an image cannot be detected with a model (pixel size or memory), or None.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)``, or ``(N, H, W)``: N independent frames, or with ``focal_series``
        N channels fed together (as :func:`detect_array` takes ``(C, H, W)``).
    sampling_A : float
        Input pixel size (Å/px).
    card : ModelCard
        The model's card (``sampling_A``, ``architecture``).
    focal_series : bool
        Whether the frames of a 3-D shape are channels of one input.
    available_bytes : int, optional
        Memory available (default :func:`available_memory_bytes`; no memory check
        when that is unknown).

    Returns
    -------
    str or None
        One line: the pixel-size problem (:func:`pixel_size_problem`), or the
        estimated memory (:func:`detection_memory_bytes`) against what is available.
    """
    problem = pixel_size_problem(sampling_A, card.sampling_A)
    if problem:
        return problem
    height, width = (int(n) for n in shape[-2:])
    n = int(shape[0]) if len(shape) == 3 else 1
    channels, frames = (n, 1) if focal_series else (1, n)
    need = detection_memory_bytes(height, width, sampling_A, card.sampling_A, n_classes=card.config.n_classes,
                                  channels=channels, n_frames=frames)
    available = available_memory_bytes() if available_bytes is None else int(available_bytes)
    if available is None or need <= available:
        return None
    h = resampled_size(height, sampling_A, card.sampling_A)
    w = resampled_size(width, sampling_A, card.sampling_A)
    what = f"{n} frames of " if n > 1 else ""
    return (f"detection needs about {_format_bytes(need)} of memory ({what}{height}x{width} pixels, "
            f"{h}x{w} at the model's {_format_A(card.sampling_A)} Å/px) but {_format_bytes(available)} "
            "is available; crop or bin the image")


def check_size(
    shape: tuple[int, ...], sampling_A: float, card: ModelCard, *, focal_series: bool = False
) -> None:
    """Raise ``ValueError`` with :func:`size_problem`'s reason, if any (nothing is allocated)."""
    problem = size_problem(shape, sampling_A, card, focal_series=focal_series)
    if problem:
        raise ValueError(problem)


def _resample_2d(image: np.ndarray, scale: float, out_shape: tuple[int, int], sigma_px: float, order: int) -> np.ndarray:
    # float32 throughout (an 8192² image needs 256 MB per copy, not 512): the
    # anti-aliasing blur, the spline coefficients and the interpolated output.
    x = np.asarray(image, dtype=np.float32)
    if sigma_px > 0:
        x = gaussian_filter(x, sigma_px, mode="reflect", output=np.float32)
    if order > 1:
        # The prefilter affine_transform would run itself, but into float64.
        x = spline_filter(x, order, output=np.float32, mode="reflect")
    # Output pixel (r, c) samples the input at (r * scale, c * scale): a diagonal
    # affine map, which scipy evaluates without coordinate arrays (same spline,
    # same values as map_coordinates on the meshgrid, ~2x faster).
    return affine_transform(x, np.array([scale, scale]), offset=0.0, output_shape=out_shape, order=order,
                            mode="reflect", prefilter=False, output=np.float32)


def resample(
    image: np.ndarray, from_sampling_A: float, to_sampling_A: float, *, order: int = 3
) -> np.ndarray:
    """Resample an image to another pixel size, keeping physical positions.

    Output pixel ``(r, c)`` is the input interpolated at ``(r, c) * to / from`` input
    pixels, so a feature at ``x`` Å stays at ``x`` Å (see the module docstring). When
    downsampling, the input is first blurred by a Gaussian of
    :func:`antialias_sigma_px` (anti-aliasing); it is then interpolated with a spline
    of the given order (3 = cubic, the default; 1 = linear). Outside the input, the
    image is mirrored (half-sample symmetric), which only matters for the last output
    row/column when the size was rounded up.

    Parameters
    ----------
    image : ndarray, shape (C, H, W) or (H, W)
        Image; channels are resampled independently.
    from_sampling_A : float
        Pixel size of ``image`` in Å/pixel.
    to_sampling_A : float
        Pixel size of the result in Å/pixel.
    order : int
        Spline order for the interpolation (0-5).

    Returns
    -------
    ndarray of float32, shape (C, h, w) or (h, w)
        ``h = round(H * from / to)``, ``w = round(W * from / to)`` (see
        :func:`resampled_size`). Equal samplings return a float32 copy.
    """
    _check_sampling(from_sampling_A, to_sampling_A)
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an [H, W] or [C, H, W] image, got shape {img.shape}")
    if abs(to_sampling_A / from_sampling_A - 1.0) <= SAMPLING_RTOL:
        return img.astype(np.float32, copy=True)
    H, W = img.shape[-2:]
    out_shape = (
        resampled_size(H, from_sampling_A, to_sampling_A),
        resampled_size(W, from_sampling_A, to_sampling_A),
    )
    scale = to_sampling_A / from_sampling_A
    sigma = antialias_sigma_px(from_sampling_A, to_sampling_A)
    if img.ndim == 2:
        return _resample_2d(img, scale, out_shape, sigma, order)
    out = np.empty((img.shape[0], *out_shape), dtype=np.float32)
    for i, ch in enumerate(img):
        out[i] = _resample_2d(ch, scale, out_shape, sigma, order)
    return out


#: White-noise values per axis from which :func:`resampled_noise_gain` measures
#: the gain (about 1 % statistical error on the noise power).
NOISE_GAIN_SAMPLES = 1 << 15
#: Seed of that white noise (the gain of a geometry is always the same number).
NOISE_GAIN_SEED = 20261207


@functools.lru_cache(maxsize=256)
def _axis_noise_power(n_px: int, from_sampling_A: float, to_sampling_A: float, order: int) -> float:
    # Mean over the output pixels along one axis of the summed squared weights of the
    # resampler (anti-aliasing blur, spline, interpolation) along that axis: the
    # resampled variance of unit white noise. The resampler is separable, so the
    # variance of a 2-D pixel is the product of its row's and its column's.
    n_out = resampled_size(n_px, from_sampling_A, to_sampling_A)
    k = max(64, -(-NOISE_GAIN_SAMPLES // n_out))
    x = np.random.default_rng(NOISE_GAIN_SEED).standard_normal((n_px, k)).astype(np.float32)
    sigma = antialias_sigma_px(from_sampling_A, to_sampling_A)
    if sigma > 0:
        x = gaussian_filter1d(x, sigma, axis=0, mode="reflect", output=np.float32)
    if order > 1:  # along both axes, so that sampling axis 1 at whole pixels returns it
        x = spline_filter(x, order, output=np.float32, mode="reflect")
    out = affine_transform(x, np.array([to_sampling_A / from_sampling_A, 1.0]), offset=0.0,
                           output_shape=(n_out, k), order=order, mode="reflect", prefilter=False,
                           output=np.float32)
    return float(np.mean(np.square(out, dtype=np.float64)))


def resampled_noise_gain(
    shape: tuple[int, int], from_sampling_A: float, to_sampling_A: float, *, order: int = 3
) -> float:
    """Pixel standard deviation of unit white noise after :func:`resample`.

    Interpolation averages neighbouring input pixels, so the noise of a resampled
    pixel is lower than an input pixel's and correlated with its neighbours'; the
    Laplacian estimate :func:`atomfinder.nn.normalization.estimate_noise_std` reads
    such noise lower still (on white noise at 0.2 Å/px resampled to 0.1 Å/px: 0.30
    of its true standard deviation, at 0.3 Å/px 0.15). The noise of a resampled
    image is better had as the input's noise, estimated on its own pixels, times
    this gain. It depends on where the output pixels fall between input pixels (a
    pixel size 0.05 % off the model's moves them by one pixel across 2000), so it
    is the root-mean-square over the image's own output grid, measured on seeded
    white noise (:data:`NOISE_GAIN_SEED`) one axis at a time.

    Parameters
    ----------
    shape : (int, int)
        Height and width of the input image in pixels.
    from_sampling_A, to_sampling_A : float
        Pixel sizes of the input and of the result, in Å/px.
    order : int
        Spline order of the interpolation, as in :func:`resample`.

    Returns
    -------
    float
        1.0 when no resampling is done (equal pixel sizes); otherwise between 0 and
        about 1 (about 0.87 for cubic interpolation onto finer pixels; about
        ``from / to`` when downsampling).
    """
    _check_sampling(from_sampling_A, to_sampling_A)
    if abs(to_sampling_A / from_sampling_A - 1.0) <= SAMPLING_RTOL:
        return 1.0
    f, t, o = float(from_sampling_A), float(to_sampling_A), int(order)
    h, w = (int(v) for v in shape)
    return float(np.sqrt(_axis_noise_power(h, f, t, o) * _axis_noise_power(w, f, t, o)))


def input_noise_std(image: np.ndarray) -> list[float] | None:
    """Pixel noise of each channel, estimated on the input's own pixels, or None.

    :func:`atomfinder.nn.normalization.estimate_noise_std` of each channel of a
    ``(C, H, W)`` image; None when a side is under 3 pixels (nothing to estimate).
    """
    if min(image.shape[-2:]) < 3:
        return None
    return [estimate_noise_std(ch) for ch in image]


def rescale_positions(xy_px: np.ndarray, from_sampling_A: float, to_sampling_A: float) -> np.ndarray:
    """Convert pixel positions between two samplings of the same field.

    ``xy_to = xy_from * from / to``: the physical position ``xy * sampling`` is kept
    (both grids have their origin at the top-left pixel's centre). For model-grid
    positions back on the input grid: ``rescale_positions(xy, model_sampling,
    input_sampling)``.

    Parameters
    ----------
    xy_px : ndarray, shape (..., 2) (or any shape)
        Positions in pixels at ``from_sampling_A``.
    from_sampling_A, to_sampling_A : float
        Pixel sizes in Å/pixel.

    Returns
    -------
    ndarray of float64, same shape
    """
    _check_sampling(from_sampling_A, to_sampling_A)
    return np.asarray(xy_px, dtype=np.float64) * (from_sampling_A / to_sampling_A)


@dataclass(frozen=True)
class DetectionResult:
    """Atoms found in one image, with the maps they came from.

    Attributes
    ----------
    atoms : AtomTable
        Atoms with positions in pixels of the *input* image.
    probabilities : ndarray of float32, shape (k, h, w)
        Per-class probabilities (class 0 = background) on the model's grid.
    height : ndarray of float32, shape (h, w), or None
        Column-height map on the model's grid (models with a height head).
    model_sampling_A : float
        Pixel size of the probability maps (Å/pixel).
    input_sampling_A : float
        Pixel size of the input image (Å/pixel).
    class_names : tuple of str
        Names of classes ``1..k-1`` (from the model card).
    features : ndarray of float64, shape (n, 5)
        :func:`atomfinder.detection.confidence.peak_features` of each atom, the
        input of its confidence and error bar.
    contrast_to_noise : float
        Contrast-to-noise ratio of the network's input
        (:func:`atomfinder.detection.validity.model_contrast_to_noise`), for the
        validity checks.
    """

    atoms: AtomTable
    probabilities: np.ndarray
    height: np.ndarray | None
    model_sampling_A: float
    input_sampling_A: float
    class_names: tuple[str, ...] = ()
    features: np.ndarray | None = None
    contrast_to_noise: float = float("nan")

    def to_frame(self) -> pd.DataFrame:
        """The atom table of DESIGN.md (``x, y`` in input pixels, Å with the input sampling)."""
        return self.atoms.to_frame(self.class_names, self.input_sampling_A)


#: Radius of the ``disk_mean`` feature when the card has no calibration yet (Å).
FEATURE_RADIUS_A = 0.4


def feature_radius_px(card: ModelCard) -> float:
    """Radius (model pixels) of the ``disk_mean`` feature: the calibration's, else 0.4 Å."""
    if card.calibration:
        return float(card.calibration["radius_px"])
    return FEATURE_RADIUS_A / card.sampling_A


def _as_chw(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise ValueError(f"expected an [H, W] or [C, H, W] image, got shape {img.shape}")
    return img


def uses_augmentation(card: ModelCard, augment: bool | None = None) -> bool:
    """Whether the maps are averaged over the eight symmetries of the square: ``augment``
    when given, else the card's ``detection["test_time_augmentation"]`` (False without one)."""
    return bool(card.detection.get("test_time_augmentation", False)) if augment is None else bool(augment)


def detection_settings(
    card: ModelCard, threshold: float | None = None, min_distance_A: float | None = None
) -> tuple[float, float]:
    """``(threshold, min_distance_A)``: the given values, else the card's, else 0.5 and 1.0 Å."""
    if threshold is None:
        threshold = float(card.detection.get("threshold", 0.5))
    if min_distance_A is None:
        min_distance_A = float(card.detection.get("min_distance_A", 1.0))
    if not min_distance_A > 0:
        raise ValueError(f"min_distance_A must be positive, got {min_distance_A}")
    return float(threshold), float(min_distance_A)


def confidence_floor(card: ModelCard, min_confidence: float | None = None) -> float:
    """Smallest calibrated confidence a detection needs to be kept.

    The given value, else the card's ``detection["min_confidence"]``, else 0; always
    0 for a card without a confidence calibration (there is no confidence to test).
    """
    if not card.calibration:
        return 0.0
    value = float(card.detection.get("min_confidence", 0.0)) if min_confidence is None else float(min_confidence)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {value}")
    return value


def card_honeycomb(card: ModelCard, scale: float = 1.0) -> Honeycomb | None:
    """The card's sublattice rule (``detection["honeycomb"]``, lengths in Å) with lengths
    multiplied by ``scale`` (``1 / card.sampling_A`` for model pixels); None when absent."""
    spec = card.detection.get("honeycomb")
    return None if spec is None else Honeycomb.from_card(spec, card.class_names).scaled(scale)


def detect_array(
    model: torch.nn.Module,
    card: ModelCard,
    image: np.ndarray,
    sampling_A: float,
    *,
    threshold: float | None = None,
    min_distance_A: float | None = None,
    min_confidence: float | None = None,
    device: str | torch.device | None = None,
    tile: int = 576,
    precision: str = "auto",
    augment: bool | None = None,
) -> DetectionResult:
    """Find atoms in a calibrated image with a model.

    Parameters
    ----------
    model : torch.nn.Module
        The network (e.g. from :func:`atomfinder.nn.card.load_model`).
    card : ModelCard
        Its card: input channels, class names, sampling, normalisation, and default
        peak-finding settings (``card.detection``).
    image : ndarray, shape (C, H, W) or (H, W)
        Raw counts (any linear scale). ``C`` must equal ``card.in_channels``; focal
        series frames must already be registered and in the card's defocus order.
    sampling_A : float
        Pixel size of ``image`` in Å/pixel.
    threshold : float, optional
        Smallest atom probability of a peak (default ``card.detection["threshold"]``
        or 0.5).
    min_distance_A : float, optional
        Smallest distance between two atoms in Å (default
        ``card.detection["min_distance_A"]`` or 1.0).
    min_confidence : float, optional
        Peaks whose calibrated confidence is lower are dropped (default
        :func:`confidence_floor`: the card's ``detection["min_confidence"]``, 0 when
        the card has none or no calibration).
    device : str or torch.device, optional
        Inference device (default CUDA when available, else CPU).
    tile : int
        Largest inference tile side, in model pixels; neighbouring tiles overlap by
        at least ``min(64, tile // 4)`` pixels.
    precision : {"auto", "float32", "bfloat16", "float16"}
        Network arithmetic (:func:`atomfinder.nn.infer.autocast_dtype`): ``"auto"``
        is float16 on CUDA, bfloat16 on CPUs with native bfloat16, else float32.
    augment : bool, optional
        Average the network's maps over the eight symmetries of the square
        (:func:`atomfinder.nn.infer.predict`; eight times the network time). Default:
        the card's ``detection["test_time_augmentation"]``, else False. The card's
        confidence calibration and class priors hold for the maps they were fitted on,
        so a card that was calibrated without it should be used without it.

    Returns
    -------
    DetectionResult
        Atoms in input pixels, and the maps on the model's grid.

    Raises
    ------
    ValueError
        Wrong number of channels, a non-positive sampling, a pixel size too far from
        the model's, or more memory needed than is available (:func:`size_problem`).
    """
    img = _as_chw(image)
    if img.shape[0] != card.in_channels:
        raise ValueError(
            f"model {card.name!r} expects {card.in_channels} input channel(s)"
            f"{' (a focal series)' if card.in_channels > 1 else ''}, got an image with "
            f"{img.shape[0]} channel(s) of shape {tuple(img.shape[1:])}"
        )
    _check_sampling(sampling_A)
    check_size(img.shape, sampling_A, card, focal_series=True)  # before resampling allocates anything
    threshold, min_distance_A = detection_settings(card, threshold, min_distance_A)
    img = img.astype(np.float32, copy=False)
    model_img = resample(img, sampling_A, card.sampling_A)
    # The noise floor of the normalisation and the contrast-to-noise check need the
    # pixel noise on the model's grid: from the input's own pixels, times the
    # resampler's gain (interpolated noise is correlated and reads too low there).
    noise = input_noise_std(img)
    noise_scale = 1.0
    if noise is not None and min(model_img.shape[-2:]) >= 3:
        gain = resampled_noise_gain(img.shape[-2:], sampling_A, card.sampling_A)
        noise = [v * gain for v in noise]
        read = estimate_noise_std(model_img[0]) if gain != 1.0 else 0.0  # not resampled: the read is right
        if read > 0 and noise[0] > 0:
            noise_scale = noise[0] / read
    else:
        noise = None
    model_img = apply_normalization(model_img, card.normalization, card.sampling_A, noise_std=noise)
    out = predict(model, model_img, device=device, tile=tile, overlap=min(64, tile // 4), precision=precision,
                  augment=uses_augmentation(card, augment))
    probs = out["probabilities"]
    height = out.get("height")
    found = find_atoms(
        probs,
        min_distance_px=min_distance_A / card.sampling_A,
        threshold=threshold,
        heights=height,
        class_log_bias=card.detection.get("class_log_bias"),
        honeycomb=card_honeycomb(card, scale=1.0 / card.sampling_A),
    )
    features = peak_features(1.0 - probs[0], found.x, found.y, found.probability, model_img,
                             feature_radius_px(card))
    confidence = sigma_A = None
    if card.calibration:
        calibration = Calibration.from_dict(card.calibration)
        confidence, sigma_A = calibration.confidence(features), calibration.sigma_A(features)
        floor = confidence_floor(card, min_confidence)
        if floor > 0:
            keep = confidence >= floor
            found, features, confidence, sigma_A = found.subset(keep), features[keep], confidence[keep], sigma_A[keep]
    xy = rescale_positions(found.xy, card.sampling_A, sampling_A)
    atoms = AtomTable(
        x=xy[:, 0], y=xy[:, 1], label=found.label, probability=found.probability, height=found.height,
        confidence=confidence, sigma_A=sigma_A,
    )
    return DetectionResult(
        atoms=atoms,
        probabilities=probs,
        height=height,
        model_sampling_A=float(card.sampling_A),
        input_sampling_A=float(sampling_A),
        class_names=tuple(card.class_names),
        features=features,
        contrast_to_noise=model_contrast_to_noise(model_img, card.sampling_A, noise_scale),
    )


__all__ = [
    "DetectionResult",
    "antialias_sigma_px",
    "available_memory_bytes",
    "card_honeycomb",
    "check_size",
    "confidence_floor",
    "detect_array",
    "detection_memory_bytes",
    "detection_settings",
    "input_memory_bytes",
    "input_memory_problem",
    "pixel_size_problem",
    "input_noise_std",
    "resample",
    "resampled_noise_gain",
    "resampled_size",
    "rescale_positions",
    "size_problem",
]
