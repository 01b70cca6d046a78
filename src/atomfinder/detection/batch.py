"""Find atoms in micrograph files and write the outputs: :func:`detect_files`, behind ``atomfinder detect``.

:func:`detect_files` validates every input (read, calibration, frame count, unique
output names, writable output folder) before it writes anything, and then writes, per
input, ``<stem>.csv`` (atom table), ``<stem>.json`` (provenance and validity checks),
``<stem>.png`` (overlay) and optionally ``<stem>_probabilities.tif`` (at the model's
pixel size, or resampled back onto the input's pixels); the files of one input appear
together (temporary files renamed at the end, the JSON sidecar last), so an input that
fails, or a run killed at any point, leaves no file of an unfinished input behind.
:func:`existing_outputs` lists what a run would replace; with ``resume=True`` the
inputs whose outputs are all there (:func:`finished_inputs`) are skipped, so a rerun
after an interruption does only what is missing. With a ``scheduler`` address the
inputs are processed on a dask.distributed cluster (a task lost with a killed worker
is run again by the scheduler). A stack of independent frames in a ``.npy`` or TIFF
file is read frame by frame (:func:`atomfinder.detection.io.open_frames`), and its
probability maps are kept only when they are written, so a long stack needs the
memory of one frame. Each input is detected as :func:`atomfinder.detection.micrograph.detect`
does it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atomfinder._files import check_output_dir, remove_stale_temporaries
from atomfinder.detection.io import MicrographError, write_tiff_calibrated
from atomfinder.detection.micrograph import SampleResult, check_threshold, run_sample
from atomfinder.detection.provenance import sidecar
from atomfinder.detection.resampling import probabilities_on_input_grid
from atomfinder.detection.sample import (
    check_focal_step_argument,
    check_frames,
    check_sampling_value,
    check_size,
    load_sample,
)

__all__ = [
    "PROBABILITY_GRIDS",
    "FileReport",
    "InputErrors",
    "check_outputs_spare_inputs",
    "detect_files",
    "existing_outputs",
    "finished_inputs",
    "finished_with_other_settings",
    "recorded_settings",
    "run_settings",
    "write_probabilities_tiff",
]

#: Grids the probability maps can be written on: the model's pixels or the input's.
PROBABILITY_GRIDS = ("model", "input")

ProgressFn = Callable[[int, int, "FileReport"], None]


@dataclass(frozen=True)
class FileReport:
    """What :func:`detect_files` did with one input.

    Attributes
    ----------
    source : str
        The input (first file of a multi-file focal series).
    stem : str
        Base name of the outputs.
    n_atoms : int
        Rows of the atom table (all frames of a stack).
    n_frames : int
        Frames in the input.
    outputs : tuple of Path
        Files written.
    warnings : tuple of str
        One line per failed validity check (see :mod:`atomfinder.detection.validity`).
    sampling_A : float or None
        Pixel size used, in Å/px.
    sampling_source : str
        Where it came from (:attr:`~atomfinder.detection.sample.Sample.sampling_source`: ``"file"``, ``"--sampling"``, ...).
    notes : tuple of str
        One line each about how the input was read (:attr:`~atomfinder.detection.sample.Sample.notes`).
    """

    source: str
    stem: str
    n_atoms: int
    n_frames: int
    outputs: tuple[Path, ...]
    warnings: tuple[str, ...] = ()
    sampling_A: float | None = None
    sampling_source: str = ""
    notes: tuple[str, ...] = ()


def _groups(paths: Sequence[str | os.PathLike[str]], focal_series: bool) -> list[tuple[str, ...]]:
    """Inputs as samples: one per file, or all files as one focal series."""
    items = tuple(os.fspath(p) for p in paths)
    if not items:
        raise ValueError("no input files given")
    if focal_series and len(items) > 1:
        return [items]
    return [(p,) for p in items]


def _outputs(out_dir: Path, stem: str, probabilities: bool, overlay_format: str = "png") -> list[Path]:
    """``<stem>.csv``, ``<stem>.json``, ``<stem>.<overlay_format>`` and optionally ``<stem>_probabilities.tif``."""
    names = [f"{stem}.csv", f"{stem}.json", f"{stem}.{overlay_format}"] + (
        [f"{stem}_probabilities.tif"] if probabilities else [])
    return [out_dir / n for n in names]


def existing_outputs(
    paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *, focal_series: bool = False,
    probabilities: bool = False, overlay_format: str = "png",
) -> list[Path]:
    """The files of ``out_dir`` that :func:`detect_files` would replace (reads no input).

    Parameters
    ----------
    paths, out_dir, focal_series, probabilities
        As given to :func:`detect_files`.
    overlay_format : str
        Suffix of the overlay (``OverlayStyle.format``).

    Returns
    -------
    list of Path
        Existing ``<stem>.csv``, ``.json``, ``.png`` (and ``_probabilities.tif``) of
        the inputs, in input order; empty when nothing would be replaced.
    """
    return [p for _, outputs in _outputs_by_input(paths, out_dir, focal_series, probabilities, overlay_format)
            for p in outputs if p.exists()]


def finished_inputs(
    paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *, focal_series: bool = False,
    probabilities: bool = False, overlay_format: str = "png", settings: dict[str, Any] | None = None,
) -> list[tuple[str, ...]]:
    """The inputs whose outputs are all in ``out_dir`` (what ``resume=True`` skips; reads no input).

    The files of one input are published together with the JSON sidecar last, so an
    input with every output present was finished; one with only some of them was
    interrupted while they were renamed into place and is done again.

    Parameters
    ----------
    paths, out_dir, focal_series, probabilities, overlay_format
        As for :func:`existing_outputs`.
    settings : dict, optional
        :func:`run_settings` of the run: only inputs whose sidecar records the same
        settings count as finished (default: any).

    Returns
    -------
    list of tuple of str
        The finished inputs (groups of files for a focal series), in input order.
    """
    return [group for group, outputs in _outputs_by_input(paths, out_dir, focal_series, probabilities, overlay_format)
            if all(p.exists() for p in outputs)
            and (settings is None or recorded_settings(outputs[1]) == settings)]


def finished_with_other_settings(
    paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], settings: dict[str, Any], *,
    focal_series: bool = False, probabilities: bool = False, overlay_format: str = "png",
) -> list[str]:
    """One line per input whose outputs are all in ``out_dir`` but were made with other
    :func:`run_settings` than ``settings`` (reads no input): ``"<sidecar>: model graphene 0.3 (now gold 0.5)"``."""
    lines = []
    for _, outputs in _outputs_by_input(paths, out_dir, focal_series, probabilities, overlay_format):
        if all(p.exists() for p in outputs):
            difference = _settings_difference(recorded_settings(outputs[1]), settings)
            if difference:
                lines.append(f"{outputs[1]}: made with {difference}")
    return lines


def run_settings(
    card: Any, *, sampling_A: float | None = None, sampling_label: str = "argument", threshold: float | None = None,
    augment: bool | None = None, focal_series: bool = False, focal_step_A: float | None = None,
) -> dict[str, Any]:
    """What makes the atom tables of a run comparable: model, pixel-size rule, threshold,
    augmentation and focal series, as :func:`recorded_settings` reads them back from a sidecar.

    Parameters
    ----------
    card : ModelCard
        The run's model.
    sampling_A, threshold, augment, focal_series, focal_step_A
        As given to :func:`detect_files` (None: the file's pixel size, the card's threshold
        and augmentation).
    sampling_label : str
        How the pixel size was given; not part of the settings (a value given in Python or
        with ``--sampling`` is the same setting).
    """
    from atomfinder.detection.pipeline import detection_settings, uses_augmentation

    return _settings(f"{card.name} {card.version}", sampling_A, detection_settings(card, threshold)[0],
                     uses_augmentation(card, augment), focal_series, focal_step_A)


def _settings(model: str, given_sampling_A: float | None, threshold: float, augmentation: bool,
              focal_series: bool, focal_step_A: float | None) -> dict[str, Any]:
    """The comparable record of :func:`run_settings` (``given_sampling_A`` None: each file's own)."""
    return {
        "model": model,
        "pixel size": "from each file" if given_sampling_A is None else f"{float(given_sampling_A):.6g} Å/px given",
        "threshold": round(float(threshold), 6),
        "test-time augmentation": bool(augmentation),
        "focal series": bool(focal_series),
        "focal step": None if focal_step_A is None else round(float(focal_step_A), 6),
    }


def recorded_settings(sidecar_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The :func:`run_settings` an earlier run wrote into the JSON sidecar ``sidecar_path``
    (None when it cannot be read)."""
    import json

    try:
        with open(sidecar_path, encoding="utf-8") as f:
            prov = json.load(f)["provenance"]
        return _settings(f"{prov['model']['name']} {prov['model']['version']}",
                         None if prov["sampling_source"] == "file" else prov["sampling_A"], prov["threshold"],
                         prov.get("test_time_augmentation", False), prov["focal_series"], prov.get("focal_step_A"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _settings_difference(recorded: dict[str, Any] | None, wanted: dict[str, Any]) -> str:
    """``"model graphene 0.3 (now gold 0.5), ..."``: what differs ("" when nothing does)."""
    if recorded is None:
        return "settings unreadable"
    return ", ".join(f"{k} {recorded.get(k)} (now {v})" for k, v in wanted.items() if recorded.get(k) != v)


def _outputs_by_input(paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], focal_series: bool,
                      probabilities: bool, overlay_format: str) -> list[tuple[tuple[str, ...], list[Path]]]:
    """Each input (a group of files for a focal series) with the output files :func:`detect_files` gives it."""
    out = Path(out_dir)
    return [(group, _outputs(out, Path(group[0]).stem, probabilities, overlay_format))
            for group in _groups(paths, focal_series)]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    import json

    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=False, ensure_ascii=False)
        f.write("\n")


class InputErrors(ValueError):
    """Several inputs cannot be used: one line per input (:attr:`problems`), in input order."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


def _validate(
    groups: list[tuple[str, ...]], card: Any, sampling_A: float | None, focal_series: bool,
    sampling_label: str = "argument",
) -> None:
    """Read every input and check it against the model before anything is written.

    Raises
    ------
    MicrographError
        The one input that cannot be used.
    InputErrors
        Several inputs cannot be used: every one is named, not only the first.
    """
    stems: dict[str, str] = {}
    problems: list[MicrographError] = []
    for group in groups:
        try:
            sample = load_sample(list(group), sampling_A, sampling_label=sampling_label, lazy=True)
            check_frames(sample, card, focal_series, focal_flag(sampling_label))
            check_size(sample, card, focal_series)
            if sample.stem in stems:
                raise MicrographError(
                    group[0], f"has the same name as {stems[sample.stem]}; their outputs {sample.stem}.* would collide"
                )
            stems[sample.stem] = group[0]
        except MicrographError as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise InputErrors([str(e) for e in problems] + [f"{len(problems)} of {len(groups)} inputs cannot be used"])


def focal_flag(sampling_label: str) -> str:
    """How the user says "focal series": ``--focal-series`` on the command line (whose labels are
    options, ``--sampling``), else the Python keyword."""
    return "--focal-series" if sampling_label.startswith("--") else "focal_series=True"


def check_outputs_spare_inputs(
    paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *, focal_series: bool = False,
    probabilities: bool = False, overlay_format: str = "png",
) -> None:
    """Refuse an output folder where an output would replace one of the inputs (reads no input).

    ``a.png`` detected into its own folder would be overwritten by its overlay ``a.png``.

    Raises
    ------
    ValueError
        Naming the input and the output that would replace it.
    """
    inputs = {_same_file_key(Path(os.fspath(p))): os.fspath(p) for p in paths}
    for _, outputs in _outputs_by_input(paths, out_dir, focal_series, probabilities, overlay_format):
        for output in outputs:
            source = inputs.get(_same_file_key(output))
            if source is not None:
                raise ValueError(f"{source}: is an input, and its output {output.name} would replace it in "
                                 f"{os.fspath(out_dir)}; choose another output folder")


def _same_file_key(path: Path) -> Any:
    """What identifies a file: its device and inode when it exists, else its resolved path."""
    try:
        st = path.stat()
        return (st.st_dev, st.st_ino)
    except OSError:
        return str(path.resolve())


def _check_distinct_stems(groups: list[tuple[str, ...]]) -> None:
    """Refuse inputs whose outputs would have the same names (reads no input)."""
    stems: dict[str, str] = {}
    for group in groups:
        stem = Path(group[0]).stem
        if stem in stems:
            raise MicrographError(
                group[0], f"has the same name as {stems[stem]}; their outputs {stem}.* would collide")
        stems[stem] = group[0]


def _temp_beside(final: Path) -> Path:
    """An empty, uniquely named temporary file beside ``final``, created with the
    permissions a new file gets here (0o666 less the umask), unlike ``mkstemp``'s 0o600."""
    for _ in range(100):
        name = final.parent / f".{final.name}.{secrets.token_hex(4)}.partial{final.suffix}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return name
    raise FileExistsError(f"{final}: cannot create a temporary file beside it")


def _publish(tmp: Path, final: Path, mode: int) -> None:
    """Rename ``tmp`` onto ``final`` with permission bits ``mode``.

    Writers that stage through ``mkstemp`` (0o600) may have replaced ``tmp``; the
    mode recorded when ``tmp`` was created is restored.
    """
    os.chmod(tmp, mode)
    os.replace(tmp, final)


def write_probabilities_tiff(path: str | os.PathLike[str], probabilities: np.ndarray, sampling_A: float) -> Path:
    """Write probability maps as a calibrated float32 ImageJ TIFF (atomically).

    Parameters
    ----------
    path : path
        Destination ``.tif``.
    probabilities : ndarray, shape (k, h, w) or (N, k, h, w)
        Per-class maps (class 0 = background), written as an ImageJ hyperstack whose
        classes are channels: axes ``CYX``, or ``TCYX`` for a stack of frames.
    sampling_A : float
        Pixel size of the maps in Å/px.
    """
    data = np.ascontiguousarray(probabilities, dtype=np.float32)
    if data.ndim == 2:
        return write_tiff_calibrated(path, data, sampling_A)
    if data.ndim not in (3, 4):
        raise ValueError(f"{path}: probabilities must be [k, h, w] or [N, k, h, w], got {data.shape}")
    import tifffile

    target = Path(path)
    tmp = _temp_beside(target)
    try:
        ppa = 1.0 / float(sampling_A)
        tifffile.imwrite(tmp, data, imagej=True, resolution=(ppa, ppa),
                         metadata={"unit": "\\u00C5", "axes": "TCYX" if data.ndim == 4 else "CYX"})
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _write_result(
    res: SampleResult, out_dir: Path, probabilities: bool, model_name: str, grid: str = "model",
    overlay: Any = None,
) -> FileReport:
    """Write the outputs of one input: all appear, or none; the probability maps on the
    ``grid`` of the model or of the input, the overlay in the :class:`OverlayStyle` ``overlay``."""
    from atomfinder.detection.overlay import OverlayStyle, overlay_figure

    overlay = overlay or OverlayStyle()
    out_dir.mkdir(parents=True, exist_ok=True)
    finals = _outputs(out_dir, res.stem, probabilities, overlay.format)
    staged: list[tuple[Path, Path]] = []
    mode = 0o644
    try:
        csv_tmp = _temp_beside(finals[0])
        staged.append((csv_tmp, finals[0]))
        mode = os.stat(csv_tmp).st_mode & 0o777
        res.table.to_csv(csv_tmp, index=False, float_format="%.4f")
        json_tmp = _temp_beside(finals[1])
        staged.append((json_tmp, finals[1]))
        _write_json(json_tmp, sidecar(res, finals[0].name))
        png_tmp = _temp_beside(finals[2])
        staged.append((png_tmp, finals[2]))
        frame_note = f", frame 0 of {res.n_frames}" if res.n_frames > 1 and "frame" in res.table else ""
        table0 = res.table[res.table["frame"] == 0] if "frame" in res.table else res.table
        title = f"{len(table0)} atoms{frame_note} (model {model_name}, {res.sampling_A:.4g} Å/px)"
        overlay_figure(res.overlay_image, table0, res.class_names, res.sampling_A, png_tmp,
                       title=overlay.figure_title(title), **overlay.options())
        if probabilities:
            tif_tmp = _temp_beside(finals[3])
            staged.append((tif_tmp, finals[3]))
            if grid == "input":
                maps = probabilities_on_input_grid(res.probabilities, res.model_sampling_A, res.sampling_A,
                                                   res.overlay_image.shape[-2:])
                write_probabilities_tiff(tif_tmp, maps, res.sampling_A)
            else:
                write_probabilities_tiff(tif_tmp, res.probabilities, res.model_sampling_A)
        for tmp, final in sorted(staged, key=lambda pair: pair[1] == finals[1]):  # the sidecar last
            _publish(tmp, final, mode)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    return FileReport(source=res.source, stem=res.stem, n_atoms=len(res.table), n_frames=res.n_frames,
                      outputs=tuple(finals), warnings=tuple(res.validity.get("warnings", ())),
                      sampling_A=res.sampling_A, sampling_source=str(res.provenance.get("sampling_source", "")),
                      notes=res.notes)


@functools.lru_cache(maxsize=2)
def _cached_model(model_path: str) -> tuple[Any, Any]:
    """A worker's model, loaded once per process (CPU; moved by inference as needed)."""
    from atomfinder.nn.card import load_model

    return load_model(model_path)


def _remote_task(
    group: tuple[str, ...], model_path: str, sampling_A: float | None, focal_series: bool,
    threshold: float | None, keep_probabilities: bool, precision: str = "auto",
    sampling_label: str = "argument", focal_step_A: float | None = None, augment: bool | None = None,
) -> SampleResult:
    """One input on a dask worker: load the model (cached), read, detect.

    Errors come back as plain ``ValueError`` with the one-line message
    (``MicrographError`` cannot be unpickled on the client).
    """
    try:
        net, card = _cached_model(model_path)
        sample = load_sample(list(group), sampling_A, sampling_label=sampling_label, lazy=True)
        res = run_sample(net, card, sample, focal_series, threshold, None, precision,
                         focal_flag=focal_flag(sampling_label), model_path=model_path,
                         focal_step_A=focal_step_A, keep_maps=keep_probabilities, augment=augment)
    except (ValueError, OSError) as exc:
        raise ValueError(str(exc)) from None
    if not keep_probabilities:
        res = dataclasses.replace(res, probabilities=None, height=None)
    return res


def _run_distributed(
    groups: list[tuple[str, ...]], model_path: str, scheduler: Any, out_dir: Path, *,
    sampling_A: float | None, focal_series: bool, probabilities: bool, threshold: float | None,
    model_name: str, report: Callable[[FileReport], None], precision: str = "auto", overlay: Any = None,
    sampling_label: str = "argument", grid: str = "model", focal_step_A: float | None = None,
    augment: bool | None = None,
) -> None:
    """Send inputs to a dask.distributed cluster; write results as they complete."""
    from distributed import Client, as_completed

    if isinstance(scheduler, Client):
        client, own = scheduler, False
    else:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ValueError(f"cannot connect to the dask scheduler {scheduler}: {exc}") from None
        own = True
    try:
        futures = client.map(
            _remote_task, groups, model_path=model_path, sampling_A=sampling_A, focal_series=focal_series,
            threshold=threshold, keep_probabilities=probabilities, precision=precision,
            sampling_label=sampling_label, focal_step_A=focal_step_A, augment=augment, pure=False,
        )
        try:
            for future in as_completed(futures):
                report(_write_result(future.result(), out_dir, probabilities, model_name, grid, overlay))
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        if own:
            client.close()


def detect_files(
    paths: Sequence[str | os.PathLike[str]],
    model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    sampling_A: float | None = None,
    focal_series: bool = False,
    probabilities: bool = False,
    threshold: float | None = None,
    progress: ProgressFn | None = None,
    scheduler: Any = None,
    precision: str = "auto",
    sampling_label: str = "argument",
    probabilities_grid: str = "model",
    focal_step_A: float | None = None,
    resume: bool = False,
    overlay: Any = None,
    augment: bool | None = None,
    overwrite: bool = True,
) -> list[Path]:
    """Find atoms in micrograph files and write a table and an overlay for each.

    For each input (``<stem>`` = its file name without extension) writes
    ``<out_dir>/<stem>.csv`` (atom table, DESIGN.md columns; a ``frame`` column for a
    stack of independent frames), ``<out_dir>/<stem>.json`` (provenance and
    validity checks, :func:`~atomfinder.detection.provenance.sidecar`), ``<out_dir>/<stem>.png`` (overlay of the first
    frame) and, with ``probabilities``, ``<out_dir>/<stem>_probabilities.tif``
    (float32 ``[k, h, w]`` at the model sampling, class 0 = background; ``[N, k, h,
    w]`` as an ImageJ hyperstack for a stack; calibrated in Å; with
    ``probabilities_grid="input"`` resampled onto the input's pixels,
    :func:`~atomfinder.detection.resampling.probabilities_on_input_grid`). Existing files are replaced (see
    :func:`existing_outputs`), unless ``resume`` skips their input.

    Every input is read and checked (calibration, frame count, distinct output
    names) and the output folder's writability is checked before anything is
    written; the files of one input are renamed into place together, the JSON
    sidecar last, so that a run killed at any point leaves every input either with
    all its outputs or with none that a rerun with ``resume`` would keep. A stack of
    independent frames in one ``.npy`` or TIFF file is read and detected frame by
    frame (:func:`~atomfinder.detection.sample.load_sample` with ``lazy=True``); its frames are checked when they
    are reached.

    Parameters
    ----------
    paths : sequence of paths
        Micrograph files. With ``focal_series``: one multi-frame file, or several
        single-image files in defocus order, which are stacked into one series
        (named after the first; a multi-frame file among several is refused).
    model : str or path
        Shipped model name or path to ``<stem>.safetensors``/``.json``.
    out_dir : path
        Output folder (created if missing).
    sampling_A : float, optional
        Pixel size in Å/px for all inputs; overrides the files' calibration.
    focal_series : bool
        Frames form a focal series (registered to the first frame, then fed to the
        model together; coordinates are in the first frame's pixel grid); their
        number must equal the card's ``in_channels`` (see :func:`~atomfinder.detection.micrograph.detect`).
    probabilities : bool
        Also write the probability maps.
    threshold : float, optional
        Smallest atom probability (default: the card's, else 0.5).
    progress : callable, optional
        ``progress(done, total, report)`` after each input, with its
        :class:`FileReport`.
    scheduler : str or distributed.Client, optional
        A dask.distributed scheduler address (``tcp://host:8786``) or client: each
        input becomes a task that loads the model from its path (which workers must
        be able to read, as the inputs); results are written here as they complete.
    precision : {"auto", "float32", "bfloat16", "float16"}
        Network arithmetic (see :func:`~atomfinder.detection.micrograph.detect`).
    sampling_label : str
        How a given ``sampling_A`` is named in the provenance (``"argument"``; the
        command line passes ``"--sampling"``) and, when it is an option, in messages.
    probabilities_grid : {"model", "input"}
        Grid of the written probability maps: the model's pixel size (as inferred) or
        the input image's pixels.
    focal_step_A : float, optional
        Focal series only: the defocus step between frames (Å, positive =
        underfocus), checked against the card's trained range (see :func:`~atomfinder.detection.micrograph.detect`).
    resume : bool
        Continue an interrupted run: inputs whose outputs are all in ``out_dir`` and
        whose sidecars record this run's settings (:func:`finished_inputs`,
        :func:`run_settings`: model and version, pixel size, threshold, augmentation,
        focal series) are skipped (neither read nor written), the others are done
        (again). ``progress`` counts the skipped inputs as done.
    overlay : OverlayStyle, optional
        Format (PNG, SVG, PDF), dpi, colouring, marker size and title of the overlay
        (:class:`atomfinder.detection.overlay.OverlayStyle`; default: a 150-dpi PNG
        coloured by class, or by height for a model with a height head).
    augment : bool, optional
        Test-time augmentation (see :func:`~atomfinder.detection.micrograph.detect`; default: the card's setting).
    overwrite : bool
        With ``resume``: whether inputs finished with other settings may be done again
        (replacing their outputs); ``False`` refuses them (the command line without
        ``--overwrite``).

    Temporary files that a killed run left beside the outputs about to be written are
    removed. An output that would replace one of the inputs (``a.png`` into its own
    folder) is refused (:func:`check_outputs_spare_inputs`).

    Returns
    -------
    list of Path
        The files written, input by input (in completion order with a scheduler);
        not those of skipped inputs.

    Warns
    -----
    ValidityWarning
        One per failed validity check of an input (also in :attr:`FileReport.warnings`).

    Raises
    ------
    MicrographError (a ValueError)
        An unreadable or unusable input (the message names it and the problem).
    InputErrors (a ValueError)
        Several unusable inputs: one line each.
    ValueError
        Unknown model (lists the shipped ones), unwritable output folder, an output
        that would replace an input, inputs finished with other settings (``resume``
        without ``overwrite``), bad threshold or precision, unreachable scheduler.
    """
    from atomfinder.detection.validity import warn
    from atomfinder.nn.card import load_model, resolve_model
    from atomfinder.nn.infer import check_precision

    check_threshold(threshold)
    check_precision(precision)
    if probabilities_grid not in PROBABILITY_GRIDS:
        raise ValueError(f"probabilities grid must be one of {', '.join(PROBABILITY_GRIDS)}, got {probabilities_grid!r}")
    if sampling_A is not None:
        sampling_A = check_sampling_value(
            sampling_A, sampling_label if sampling_label.startswith("--") else "sampling_A")
    cli = sampling_label.startswith("--")
    focal_step_A = check_focal_step_argument(
        focal_step_A, focal_series, ("--focal-step", "--focal-series") if cli else ("focal_step_A", "focal_series"))
    groups = _groups(paths, focal_series)
    from atomfinder.detection.overlay import OverlayStyle

    overlay = overlay or OverlayStyle()
    stem = resolve_model(model)
    net, card = load_model(stem)
    if overlay.colour_by == "height" and not card.architecture.get("height_head"):
        raise ValueError(f"model {card.name} predicts no column heights: the overlay cannot be coloured by height")
    out = Path(out_dir)
    check_output_dir(out)
    check_outputs_spare_inputs(paths, out, focal_series=focal_series, probabilities=probabilities,
                               overlay_format=overlay.format)
    todo = groups
    if resume:
        _check_distinct_stems(groups)
        settings = run_settings(card, sampling_A=sampling_A, sampling_label=sampling_label, threshold=threshold,
                                augment=augment, focal_series=focal_series, focal_step_A=focal_step_A)
        if not overwrite:
            other = finished_with_other_settings(paths, out, settings, focal_series=focal_series,
                                                 probabilities=probabilities, overlay_format=overlay.format)
            if other:
                more = f" (and {len(other) - 1} more)" if len(other) > 1 else ""
                raise ValueError(f"{other[0]}{more}: --resume continues a run with the same settings; "
                                 "give --overwrite to redo those inputs, or another --out")
        done = set(finished_inputs(paths, out, focal_series=focal_series, probabilities=probabilities,
                                   overlay_format=overlay.format, settings=settings))
        todo = [g for g in groups if g not in done]
    _validate(todo, card, sampling_A, focal_series, sampling_label)
    remove_stale_temporaries(*(f for g in todo for f in _outputs(out, Path(g[0]).stem, probabilities,
                                                                  overlay.format)))
    skipped = len(groups) - len(todo)

    written: list[Path] = []
    reports: list[FileReport] = []

    def report(rep: FileReport) -> None:
        written.extend(rep.outputs)
        reports.append(rep)
        warn(rep.warnings, stacklevel=4)
        if progress is not None:
            progress(skipped + len(reports), len(groups), rep)

    if scheduler is not None:
        _run_distributed(
            todo, str(stem), scheduler, out, sampling_A=sampling_A, focal_series=focal_series,
            probabilities=probabilities, threshold=threshold, model_name=card.name, report=report,
            precision=precision, sampling_label=sampling_label, grid=probabilities_grid, focal_step_A=focal_step_A,
            overlay=overlay, augment=augment,
        )
        return written
    for group in todo:
        sample = load_sample(list(group), sampling_A, sampling_label=sampling_label, lazy=True)
        res = run_sample(net, card, sample, focal_series, threshold, None, precision,
                         focal_flag=focal_flag(sampling_label), model_path=str(stem),
                         focal_step_A=focal_step_A, keep_maps=probabilities, augment=augment)
        del sample
        report(_write_result(res, out, probabilities, card.name, probabilities_grid, overlay))
    return written
