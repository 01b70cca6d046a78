"""A time series ready for tracking: its frames, its model and the detector of one frame.

:func:`load_time_series` reads the frames and the model and checks that they fit
together; :class:`TimeSeries` holds them, detects one frame at a time
(:meth:`TimeSeries.detect_frame`, keeping each frame's validity checks) and records
the provenance; :func:`default_presence_threshold` is the presence threshold when
none is given. The command line and the napari plugin both start here. Part of
:mod:`atomfinder.analysis.timeseries`, which re-exports every public name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atomfinder.analysis.presence import check_threshold
from atomfinder.analysis.timeseries.frames import FrameDetection


@dataclass(frozen=True)
class TimeSeries:
    """A time series ready for :func:`track`: the model, the frames and how to detect one.

    Made by :func:`load_time_series`; the command line (``atomfinder track``) and the
    napari plugin both start from it.

    Attributes
    ----------
    net, card
        The single-image model and its card.
    sample : Sample
        The input as read (:func:`atomfinder.detection.sample.load_sample`): source,
        pixel size in Å/px and where it came from, notes.
    frames : ndarray, shape (n, h, w)
        The frames in time order (``n >= 2``).
    threshold : float
        Atom-map value that separates present from absent.
    augment : bool, optional
        Test-time augmentation of each frame's maps (None: the card's setting; see
        :func:`atomfinder.detection.pipeline.detect_array`).
    model_path : str, optional
        The model's stem on disk, when known.
    checks : list
        The validity checks of each frame :meth:`detect_frame` has detected, in order
        (:func:`atomfinder.detection.validity.check_image`); :meth:`validity_warnings`
        turns them into lines.
    """

    net: Any
    card: Any
    sample: Any
    frames: np.ndarray
    threshold: float
    augment: bool | None = None
    model_path: str | None = None
    checks: list = field(default_factory=list, compare=False, repr=False)

    def provenance(self) -> dict[str, Any]:
        """What the tracked series was made from: input, pixel size and its source, model,
        presence threshold, augmentation and atomfinder's version (``provenance.json`` of
        :func:`track`, which adds the tracking settings it used)."""
        from atomfinder import __version__
        from atomfinder.detection.pipeline import uses_augmentation
        from atomfinder.detection.provenance import calibration_record

        s = self.sample
        return {
            "input": s.source,
            "input_files": list(s.files),
            "frames": int(len(self.frames)),
            "sampling_A": float(s.sampling_A),
            "sampling_source": s.sampling_source,
            "file_sampling_A": None if s.file_sampling_A is None else float(s.file_sampling_A),
            **calibration_record(s),
            "notes": list(s.notes),
            "model": {"name": self.card.name, "version": self.card.version, "path": self.model_path,
                      "sampling_A": float(self.card.sampling_A)},
            "threshold": float(self.threshold),
            "test_time_augmentation": uses_augmentation(self.card, self.augment),
            "atomfinder_version": __version__,
        }

    def detect_frame(self, frame: np.ndarray) -> FrameDetection:
        """Detections of one frame and its atom map (``1 - p(background)``, on the model's grid)."""
        from atomfinder.detection.pipeline import detect_array

        from atomfinder.detection.validity import card_reference, check_image

        result = detect_array(self.net, self.card, frame, self.sample.sampling_A, augment=self.augment)
        table = result.to_frame()
        # frames come in order (track detects frame 0, 1, ...): the check's frame is the count so far
        self.checks.append(check_image(table, card_reference(self.card), contrast_to_noise_ratio=result.contrast_to_noise,
                                       sampling_A=self.sample.sampling_A, model_sampling_A=float(self.card.sampling_A),
                                       source=self.sample.source, frame=len(self.checks)))
        return FrameDetection(table, 1.0 - result.probabilities[0], result.model_sampling_A)

    def validity_warnings(self) -> list[str]:
        """The failed validity checks of the frames detected so far (:mod:`atomfinder.detection.validity`), one
        line per check naming the frames where it failed, as ``atomfinder detect`` gives them for a stack."""
        from atomfinder.detection.validity import warning_lines

        return warning_lines(self.checks)


def default_presence_threshold(card: Any) -> float:
    """The presence threshold of a time series when none is given: the card's peak threshold, or
    0.5 when that lies outside the range :func:`check_threshold` accepts (e.g. 0: every peak)."""
    from atomfinder.detection.pipeline import detection_settings

    peak = detection_settings(card)[0]
    try:
        return check_threshold(peak)
    except ValueError:
        return 0.5


def load_time_series(image: Any, model: Any, sampling_A: float | None = None, *,
                     threshold: float | None = None, sampling_label: str = "argument",
                     sampling_name: str | None = None, augment: bool | None = None,
                     threshold_name: str = "threshold") -> TimeSeries:
    """Read a time series and its model, checking that they fit together.

    Parameters
    ----------
    image : path, sequence of paths, ndarray or signal
        One multi-frame file, several single-image files in time order, or a stack
        ``[N, H, W]`` (anything :func:`atomfinder.detection.sample.load_sample` reads).
    model : str or path
        A single-image model's name or path.
    sampling_A : float, optional
        Pixel size in Å/px; overrides the files' (required for arrays).
    threshold : float, optional
        Present/absent threshold of the atom map, above 0.01 and below 0.99
        (:func:`check_threshold`; default :func:`default_presence_threshold`: the
        card's peak threshold, or 0.5 when that is outside).
    sampling_label, sampling_name : str
        How a given pixel size is recorded as its source, and how the user gives one, in
        messages (:func:`atomfinder.detection.sample.load_sample`; the command line passes
        ``"--sampling"``).
    augment : bool, optional
        Test-time augmentation of every frame (default: the card's setting).
    threshold_name : str
        How the user gives ``threshold``, in messages (``--threshold`` on the command line).

    Raises
    ------
    ValueError
        A threshold out of range, a focal-series model, fewer than 2 frames, a
        pixel size too far from the model's, or an unusable input (one line naming it).
    """
    from atomfinder.detection.io import MicrographError
    from atomfinder.detection.pipeline import pixel_size_problem
    from atomfinder.detection.sample import load_sample
    from atomfinder.nn.card import load_model, resolve_model

    given = None if threshold is None else check_threshold(threshold, threshold_name)  # before reading anything
    stem = resolve_model(model)
    net, card = load_model(stem)
    if card.in_channels != 1:
        raise ValueError(f"model {card.name} needs {card.in_channels}-frame focal series; "
                         "a time series needs a single-image model")
    if isinstance(image, (list, tuple)) and len(image) == 1:
        image = image[0]
    sample = load_sample([str(p) for p in image] if isinstance(image, (list, tuple)) else image, sampling_A,
                         sampling_label=sampling_label, sampling_name=sampling_name, series="time series")
    frames = sample.data if sample.data.ndim == 3 else sample.data[None]
    if len(frames) < 2:
        raise ValueError(f"{sample.source}: a time series needs at least 2 frames, got {len(frames)}")
    problem = pixel_size_problem(sample.sampling_A, card.sampling_A)
    if problem:  # before any frame is registered or detected
        raise MicrographError(sample.source, problem)
    decide_at = default_presence_threshold(card) if given is None else given
    return TimeSeries(net, card, sample, frames, decide_at, augment, str(stem))
