"""HRTEM images of a structure: one exit wave, many microscopes, crops and focal series.

The expensive step is the multislice exit wave; each one is reused here for
many draws of the lens, coherence, detector, dose and field of view, and for
every frame of a focal series.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from atomfinder.imaging.microscope import Microscope
from atomfinder.imaging.multislice import ExitWaves
from atomfinder.imaging.noise import detect
from atomfinder.imaging.transfer import defocus_map_A, image_intensity
from atomfinder.structures.base import Sites

#: Pixels recorded around a crop so that the detector's blur does not wrap.
DETECTOR_PAD_PX = 16


@dataclass(frozen=True)
class SimulatedImage:
    """One simulated micrograph (or focal series) with its exact ground truth.

    Attributes
    ----------
    image : ndarray, float32, shape (frames, rows, cols)
        Detector counts; frame ``i`` is recorded at ``microscopes[i]``.
    positions_px : ndarray, shape (n, 2)
        Site positions ``(x, y)`` in pixels of frame 0 (x = column index, y = row
        index, origin at the top-left pixel's centre). Sites up to
        ``label_margin_px`` outside the image are kept, so labels near the
        border are complete.
    labels, heights : ndarray of int, shape (n,)
        Site classes (1-based) and atoms per column.
    microscopes : tuple of Microscope
        The microscope state of each frame.
    drift_px : ndarray, shape (frames, 2)
        Specimen shift ``(dx, dy)`` of each frame relative to frame 0 (pixels).
    """

    image: np.ndarray
    positions_px: np.ndarray
    labels: np.ndarray
    heights: np.ndarray
    microscopes: tuple[Microscope, ...]
    drift_px: np.ndarray

    @property
    def sampling_A(self) -> float:
        """Pixel size (Å)."""
        return self.microscopes[0].sampling_A


def resample_spectrum(waves: ExitWaves, out_shape: tuple[int, int]) -> np.ndarray:
    """Spectra of the exit waves on a coarser output grid of the same extent.

    The wave grid must be an integer multiple of ``out_shape``; frequencies
    beyond the output grid's Nyquist limit are dropped (exact for a band-limited
    image as long as the objective aperture lies inside). Scaled so that the
    inverse FFT on the output grid keeps the wave's amplitude (vacuum = 1).

    Returns
    -------
    ndarray, complex64, shape (n_configs, out_rows, out_cols)
    """
    n_rows, n_cols = waves.array.shape[-2:]
    spectrum = scipy.fft.fft2(waves.array, axes=(-2, -1), workers=1)
    rows = np.rint(np.fft.fftfreq(out_shape[0]) * out_shape[0]).astype(int) % n_rows
    cols = np.rint(np.fft.fftfreq(out_shape[1]) * out_shape[1]).astype(int) % n_cols
    scale = (out_shape[0] * out_shape[1]) / (n_rows * n_cols)
    return (spectrum[:, rows][:, :, cols] * scale).astype(np.complex64)


def shift_spectrum(spectrum: np.ndarray, shift_px: tuple[float, float]) -> np.ndarray:
    """Shift the specimen by ``(dx, dy)`` pixels (Fourier phase ramp, periodic)."""
    if shift_px[0] == 0 and shift_px[1] == 0:
        return spectrum
    fy = np.fft.fftfreq(spectrum.shape[-2])[:, None]
    fx = np.fft.fftfreq(spectrum.shape[-1])[None, :]
    ramp = np.exp(-2j * np.pi * (fx * shift_px[0] + fy * shift_px[1])).astype(np.complex64)
    return spectrum * ramp


def record(
    spectra: np.ndarray,
    microscope: Microscope,
    rng: np.random.Generator,
    centre_px: tuple[float, float],
    shift_px: tuple[float, float] = (0.0, 0.0),
    window: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """One recorded frame of the output grid (or of a window of it).

    Averages the intensity over the frozen-phonon configurations, then applies
    the detector (shot noise, MTF, blur, gain, offset) to ``window`` (default:
    the whole grid).

    Parameters
    ----------
    spectra : ndarray, complex64, shape (n_configs, rows, cols)
        Output-grid spectra from :func:`resample_spectrum`.
    microscope : Microscope
        The state to record with (``sampling_A`` must be the output grid's).
    rng : numpy.random.Generator
        Source of the shot noise.
    centre_px : (float, float)
        ``(x, y)`` where the defocus equals ``microscope.defocus_A``.
    shift_px : (float, float)
        Specimen drift of this frame (pixels).
    window : (slice, slice), optional
        ``(rows, cols)`` of the grid to record.
    """
    shape = spectra.shape[-2:]
    df = None
    if microscope.defocus_gradient != (0.0, 0.0) or microscope.defocus_curvature_A:
        df = defocus_map_A(shape, microscope, centre_px)
    intensity = np.zeros(shape, np.float32)
    for spectrum in spectra:
        intensity += image_intensity(shift_spectrum(spectrum, shift_px), microscope, df)
    intensity /= len(spectra)
    if window is not None:
        intensity = intensity[window]
    return detect(intensity, microscope, rng)


def crop_sites(
    sites: Sites,
    sampling_A: float,
    origin_px: tuple[int, int],
    shape: tuple[int, int],
    label_margin_px: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sites in the pixel frame of a crop.

    Parameters
    ----------
    sites : Sites
        Positions in Å in the structure's frame (pixel ``(0, 0)`` of the output
        grid is at 0 Å).
    sampling_A : float
        Output pixel size (Å).
    origin_px : (int, int)
        ``(x0, y0)``: the crop's top-left pixel in the output grid.
    shape : (int, int)
        The crop's ``(rows, cols)``.
    label_margin_px : float
        Keep sites up to this far outside the crop.

    Returns
    -------
    positions_px, labels, heights
    """
    xy = sites.positions_A / sampling_A - np.asarray(origin_px, dtype=float)
    m = label_margin_px
    inside = (
        (xy[:, 0] >= -0.5 - m)
        & (xy[:, 0] < shape[1] - 0.5 + m)
        & (xy[:, 1] >= -0.5 - m)
        & (xy[:, 1] < shape[0] - 0.5 + m)
    )
    return xy[inside], sites.labels[inside], sites.heights[inside]


def simulate_draw(
    spectra: np.ndarray,
    sites: Sites,
    microscopes: list[Microscope],
    drift_px: np.ndarray,
    origin_px: tuple[int, int],
    image_px: int,
    rng: np.random.Generator,
    label_margin_px: float = 4.0,
) -> SimulatedImage:
    """A cropped image (or focal series) from output-grid spectra.

    Parameters
    ----------
    spectra : ndarray, complex64, shape (n_configs, rows, cols)
        Output-grid spectra of the structure's exit waves.
    sites : Sites
        The structure's labelled sites (Å).
    microscopes : list of Microscope
        One state per frame (a focal series differs in defocus).
    drift_px : ndarray, shape (frames, 2)
        Specimen shift of each frame; the labels belong to frame 0.
    origin_px : (int, int)
        Top-left ``(x0, y0)`` of the crop in the output grid.
    image_px : int
        Side of the square crop (pixels).
    rng : numpy.random.Generator
        Source of the shot noise.
    label_margin_px : float
        See :func:`crop_sites`.
    """
    x0, y0 = origin_px
    centre = (x0 + (image_px - 1) / 2, y0 + (image_px - 1) / 2)
    # the detector sees the crop plus a pad, so its MTF does not wrap around the crop's edges
    n_rows, n_cols = spectra.shape[-2:]
    pad = min(DETECTOR_PAD_PX, x0, y0, n_cols - x0 - image_px, n_rows - y0 - image_px)
    window = (slice(y0 - pad, y0 + image_px + pad), slice(x0 - pad, x0 + image_px + pad))
    frames = []
    for m, d in zip(microscopes, drift_px):
        frame = record(spectra, m, rng, centre, (float(d[0]), float(d[1])), window)
        frames.append(frame[pad : pad + image_px, pad : pad + image_px])
    xy, labels, heights = crop_sites(sites, microscopes[0].sampling_A, origin_px, (image_px, image_px), label_margin_px)
    return SimulatedImage(
        image=np.stack(frames).astype(np.float32),
        positions_px=xy,
        labels=labels,
        heights=heights,
        microscopes=tuple(microscopes),
        drift_px=np.asarray(drift_px, dtype=np.float32),
    )
