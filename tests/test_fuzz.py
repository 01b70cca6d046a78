"""Property-based fuzzing of the micrograph readers and of ``atomfinder.detect`` (issue 17).

Every case must either succeed or raise a ``ValueError``/``OSError`` subclass whose
message is one line: never another exception type (``MemoryError``, ``IndexError``,
``struct.error``...), never a hang, never a crash of the machine.

* readers (:mod:`atomfinder.detection.io`): byte-level mutations of the real vendor
  samples in ``tests/data/io-samples`` and of small PNG/JPEG/NPY/TIFF files made here
  (truncation, flipped and overwritten bytes, inserted and deleted runs, a wrong
  extension), synthetic TIFFs with random calibrations and units, and
  :func:`unit_to_angstrom` on arbitrary text;
* ``atomfinder.detect`` on arrays (random shapes from 1 px to huge-but-refused
  views, dtypes, NaN/inf patterns, pixel sizes), on HyperSpy-like signals (random
  scales and units) and on the mutated files, with a tiny untrained model;
* model files (:mod:`atomfinder.nn.card`): cards with random field values (loaded and
  used for a detection when accepted), flipped, truncated or inserted bytes in a card
  or its weights (changed weights must always fail the SHA-256 check).

The fast set runs under the ``atomfinder-fast`` Hypothesis profile (registered in
``tests/conftest.py``; a few dozen examples per property, about half a minute in all).
``make fuzz`` runs this module, the ``slow`` variants included, under the
``atomfinder-fuzz`` profile (10 000 examples per property, more for some; one to two hours on two cores) and
prints the number of cases each property ran. While a property runs, the
process's address space is capped a few GB above what it uses, so a runaway allocation
becomes a ``MemoryError`` (a failure here) instead of an out-of-memory kill.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import math
import resource
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import atomfinder
import atomfinder.detection.io as io_mod
import atomfinder.detection.pipeline as pipeline
from atomfinder.cli import app
from atomfinder.detection.io import (
    SUPPORTED_EXTENSIONS,
    Micrograph,
    MicrographError,
    read_micrograph,
    unit_to_angstrom,
    write_tiff_calibrated,
)
from atomfinder.detection.peaks import TABLE_COLUMNS
from atomfinder.nn.card import ModelCard, load_model, save_model
from atomfinder.nn.unet import UNetConfig, build_model

torch.set_num_threads(1)

pytestmark = [
    pytest.mark.filterwarnings("ignore::atomfinder.detection.validity.ValidityWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # overflow when casting 1e300 to float32, etc.
    # A hang fails instead of blocking the suite; make fuzz's 10 000 examples per property
    # take hours, and there its per-case deadline of 10 s is the hang check.
    pytest.mark.timeout(900 if settings.default.max_examples < 1000 else 6 * 3600),
]

SAMPLES = Path(__file__).resolve().parent / "data" / "io-samples"
SAMPLING = 0.2  # Å/px of the tiny model
EXTENSIONS = sorted(SUPPORTED_EXTENSIONS)
#: Extra address space (bytes) a property may use beyond what the process maps when it starts.
ADDRESS_SPACE_HEADROOM = 6 * 1024**3
#: Fixed seeds for the generated sample files.
RNG = np.random.default_rng(1234)

#: The profile's deadline (none in the fast set, 10 s per case in make fuzz).
fast_settings = settings(deadline=settings.default.deadline,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------- helpers


#: Cases run per test in this process (``make fuzz`` prints them; see ``tests/conftest.py``).
CASES: collections.Counter[str] = collections.Counter()


def counted(prop):
    """Count each case the property ``prop`` runs (shrinking and replayed cases included)
    under the name of the test that is running (``make fuzz`` prints the counts)."""

    @functools.wraps(prop)
    def wrapper(*args, **kwargs):
        CASES[_RUNNING[0]] += 1
        return prop(*args, **kwargs)

    return wrapper


_RUNNING = [""]


@pytest.fixture(autouse=True)
def _count_cases(request):
    """Record the number of cases this test ran as its ``cases`` user property."""
    _RUNNING[0] = request.node.nodeid
    yield
    if CASES[request.node.nodeid]:
        request.node.user_properties.append(("cases", CASES[request.node.nodeid]))


@contextlib.contextmanager
def capped_address_space(headroom: int = ADDRESS_SPACE_HEADROOM):
    """Lower the soft RLIMIT_AS to the current virtual size plus ``headroom`` (restored after).

    Not on a machine with CUDA: its context reserves tens of GB of address space.
    """
    if torch.cuda.is_available():
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        import psutil

        vms = psutil.Process().memory_info().vms
    except Exception:  # noqa: BLE001 - no cap without psutil
        yield
        return
    cap = vms + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(autouse=True)
def _cap_memory():
    with capped_address_space():
        yield


def expect_clean_outcome(call):
    """Run ``call()``: return its result, or None after a one-line ValueError/OSError.

    Any other exception propagates (and fails the property).
    """
    try:
        return call()
    except (ValueError, OSError) as exc:
        message = str(exc)
        assert message.strip(), f"{type(exc).__name__} without a message"
        assert "\n" not in message, f"multi-line message: {message!r}"
        return None


def check_micrograph(m: Micrograph, min_size: int) -> None:
    """What every successful read returns."""
    assert isinstance(m, Micrograph)
    assert m.data.dtype == np.float32 and m.data.ndim in (2, 3)
    assert min(m.data.shape[-2:]) >= min_size
    assert not m.data.flags.writeable
    assert m.sampling_A is None or (math.isfinite(m.sampling_A) and m.sampling_A > 0)
    json.dumps(m.metadata)


def check_table(table) -> None:
    cols = list(table.columns)
    assert cols[-len(TABLE_COLUMNS):] == list(TABLE_COLUMNS)
    assert np.isfinite(table[["x", "y", "x_angstrom", "y_angstrom"]].to_numpy(dtype=float)).all()


# --------------------------------------------------------------------------- fixtures


def _made_samples(directory: Path) -> dict[str, bytes]:
    """Small valid files of the formats without a vendor sample: PNG, JPEG, NPY, ImageJ TIFF."""
    import imageio.v3 as iio

    img = (RNG.random((24, 20)) * 255).astype(np.uint8)
    files = {}
    for name, writer in {
        "made.png": lambda p: iio.imwrite(p, img),
        "made.jpg": lambda p: iio.imwrite(p, img),
        "made.npy": lambda p: np.save(p, img.astype(np.float32)),
        "made_stack.npy": lambda p: np.save(p, RNG.random((2, 18, 17)).astype(np.float64)),
        "made.tif": lambda p: write_tiff_calibrated(p, img.astype(np.float32), 0.25),
        "made_stack.tif": lambda p: write_tiff_calibrated(p, RNG.random((2, 17, 19)), 0.5),
    }.items():
        path = directory / name
        writer(path)
        files[name] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def samples(workdir) -> dict[str, bytes]:
    """File name -> bytes of every sample to mutate (vendor samples and made ones)."""
    found = {p.name: p.read_bytes() for p in sorted(SAMPLES.iterdir())
             if p.suffix.lower() in SUPPORTED_EXTENSIONS} if SAMPLES.is_dir() else {}
    return found | _made_samples(workdir)


@pytest.fixture(scope="module")
def tiny(workdir):
    """A tiny untrained single-image model (loaded) and its path."""
    cfg = UNetConfig(in_channels=1, n_classes=2, depth=2, width=4)
    torch.manual_seed(0)
    card = ModelCard(name="tiny", version="0", architecture=cfg.to_dict(), in_channels=1, class_names=("C",),
                     sampling_A=SAMPLING, normalization={"kind": "local", "window_A": 6.0},
                     detection={"threshold": 0.0, "min_distance_A": 1.0})
    stem = workdir / "tiny"
    save_model(build_model(cfg).eval(), card, stem)
    return load_model(stem), stem


_counter = itertools.count()


def _write_case(workdir: Path, name: str, data: bytes, ext: str, samples: dict[str, bytes]) -> Path:
    """Write a mutated file in a fresh folder (with the .ser an .emi refers to)."""
    case = workdir / f"case{next(_counter)}"
    case.mkdir()
    stem = Path(name).stem
    path = case / f"{stem}{ext}"
    path.write_bytes(data)
    if ext == ".emi":  # TIA: the .emi names its image in <stem>_1.ser
        ser = "tia_old_64x64_TEM_images_acquire_1.ser"
        if ser in samples:
            (case / f"{stem}_1.ser").write_bytes(samples[ser])
    return path


# --------------------------------------------------------------------------- strategies


@st.composite
def mutations(draw, names: list[str], samples: dict[str, bytes]):
    """(sample name, mutated bytes, extension): one to four mutations of a real file."""
    name = draw(st.sampled_from(names))
    data = bytearray(samples[name])
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        if n == 0:
            break
        # headers are where parsers go wrong: half of the positions fall in the first 512 bytes
        pos = draw(st.one_of(st.integers(0, min(511, n - 1)), st.integers(0, n - 1)))
        kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "int32"]))
        if kind == "truncate":
            del data[pos:]
        elif kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[pos:pos + len(chunk)] = chunk
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        else:  # an extreme 32-bit value where a size or offset may be
            value = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 65535, 65536]))
            data[pos:pos + 4] = int(value).to_bytes(4, draw(st.sampled_from(["little", "big"])))
    ext = Path(name).suffix.lower()
    if draw(st.integers(0, 5)) == 0:  # a wrong extension, one case in six
        ext = draw(st.sampled_from(EXTENSIONS))
    return name, bytes(data), ext


DTYPES = ["uint8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64", "bool", "complex64"]


@st.composite
def images(draw, max_side: int = 48):
    """Arrays of random shape, dtype and NaN/inf pattern."""
    ndim = draw(st.sampled_from([2, 2, 2, 3, 1, 4, 0]))
    if ndim == 0:
        shape: tuple[int, ...] = ()
    elif ndim == 3:
        shape = (draw(st.integers(1, 3)), draw(st.integers(0, max_side)), draw(st.integers(0, max_side)))
    elif ndim == 4:  # refused whatever its size: keep it small
        shape = tuple(draw(st.integers(0, 6)) for _ in range(ndim))
    else:
        shape = tuple(draw(st.integers(0, max_side)) for _ in range(ndim))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = draw(st.sampled_from(["noise", "lattice", "constant", "zeros", "spike", "huge", "tiny", "negative"]))
    x = rng.normal(100.0, 10.0, shape)
    if base == "lattice" and ndim >= 2:
        yy, xx = np.indices(shape[-2:])
        x = 100 + 50 * np.cos(xx * 0.9) * np.cos(yy * 0.9) + rng.normal(0, 1, shape)
    elif base == "constant":
        x = np.full(shape, draw(st.floats(-1e6, 1e6)))
    elif base == "zeros":
        x = np.zeros(shape)
    elif base == "spike":
        x = np.zeros(shape)
        if x.size:
            x.flat[rng.integers(x.size)] = 1.0
    elif base == "huge":
        x = x * 1e300 if dtype.kind in "fc" else x * 1e18
    elif base == "tiny":
        x = x * 1e-310
    elif base == "negative":
        x = -x
    x = np.array(x, dtype=np.float64)  # arithmetic on a 0-d array gives a scalar
    if dtype.kind in "fc" and x.size:
        pattern = draw(st.sampled_from(["none", "nan", "posinf", "neginf", "mixed", "all_nan", "all_inf"]))
        mask = rng.random(shape) < draw(st.floats(0.0, 1.0))
        if pattern == "nan":
            x[mask] = np.nan
        elif pattern == "posinf":
            x[mask] = np.inf
        elif pattern == "neginf":
            x[mask] = -np.inf
        elif pattern == "mixed":
            x[mask] = rng.choice([np.nan, np.inf, -np.inf], size=int(mask.sum()))
        elif pattern == "all_nan":
            x[...] = np.nan
        elif pattern == "all_inf":
            x[...] = np.inf
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dtype.kind in "iub":
            info = np.iinfo(dtype) if dtype.kind != "b" else None
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
            x = (x > 100) if info is None else np.clip(x, info.min, info.max)
        return x.astype(dtype)


SAMPLINGS = st.one_of(
    st.just(SAMPLING),
    st.floats(SAMPLING / 10, SAMPLING * 5),  # around the model's, both sides of the limits
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.2, 1e-300, 1e300, float("nan"), float("inf")]),
    st.integers(-3, 3),
)


# --------------------------------------------------------------------------- readers


def test_unit_to_angstrom_never_fails_otherwise():
    @fast_settings
    @given(st.one_of(st.text(max_size=12), st.binary(max_size=12), st.none(), st.floats(), st.integers()))
    @counted
    def prop(unit):
        try:
            factor = unit_to_angstrom(unit)
        except ValueError as exc:
            assert "reciprocal" in str(exc) and "\n" not in str(exc)
            return
        assert factor is None or (math.isfinite(factor) and factor > 0)

    prop()


def _read_mutated(workdir, samples, case, min_size):
    name, data, ext = case
    path = _write_case(workdir, name, data, ext, samples)
    m = expect_clean_outcome(lambda: read_micrograph(path, min_size=min_size))
    if m is not None:
        check_micrograph(m, min_size)
    return path


def _run_read_mutations(workdir, samples):
    names = sorted(samples)

    @fast_settings
    @given(mutations(names, samples), st.sampled_from([1, 16]))
    @counted
    def prop(case, min_size):
        _read_mutated(workdir, samples, case, min_size)

    prop()


def test_readers_on_mutated_files(workdir, samples):
    _run_read_mutations(workdir, samples)


def test_readers_on_unmutated_files_with_any_extension(workdir, samples):
    @fast_settings
    @given(st.sampled_from(sorted(samples)), st.sampled_from(EXTENSIONS + [".TIF", ".Dm4", ".txt", ""]))
    @counted
    def prop(name, ext):
        path = _write_case(workdir, name, samples[name], ext, samples)
        m = expect_clean_outcome(lambda: read_micrograph(path, min_size=1))
        if m is not None:
            check_micrograph(m, 1)

    prop()


UNITS = st.one_of(
    st.sampled_from(["nm", "Å", "\\u00C5", "A", "angstrom", "µm", "um", "micron", "pm", "m", "mm", "cm",
                     "1/nm", "nm^-1", "px", "pixel", "", "inch", "nm ", "[nm]", "NM", "Ångström"]),
    st.text(max_size=8),
)
SCALES = st.one_of(st.floats(1e-4, 1e4), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -1.0, 1e-30, 1e30]))


def test_tiff_with_random_calibration(workdir):
    import tifffile

    @fast_settings
    @given(images(max_side=40), SCALES, UNITS, st.booleans())
    @counted
    def prop(array, scale, unit, imagej):
        assume(array.ndim in (2, 3) and array.size and array.dtype.kind != "c")
        path = workdir / f"cal{next(_counter)}.tif"
        res = 1.0 / scale if (math.isfinite(scale) and scale > 0 and 1.0 / scale < 1e12) else 1.0
        kwargs = dict(resolution=(res, res))
        if imagej and array.dtype in (np.uint8, np.uint16, np.float32):
            kwargs.update(imagej=True, metadata={"unit": unit, "axes": "ZYX" if array.ndim == 3 else "YX"})
        try:
            tifffile.imwrite(path, array, **kwargs)
        except (ValueError, TypeError, OverflowError, UnicodeEncodeError, struct.error):
            assume(False)  # tifffile itself refuses to write this case
        m = expect_clean_outcome(lambda: read_micrograph(path, min_size=1))
        if m is not None:
            check_micrograph(m, 1)

    prop()


def test_write_tiff_calibrated_round_trips_the_pixel_size(workdir):
    @fast_settings
    @given(st.integers(1, 20), st.integers(1, 20), st.floats(1e-3, 1e3))
    @counted
    def prop(h, w, sampling):
        assume(h * w > 1)  # one pixel is a constant image, refused
        path = workdir / f"rt{next(_counter)}.tif"
        data = np.arange(h * w, dtype=np.float32).reshape(h, w)
        write_tiff_calibrated(path, data, sampling)
        m = read_micrograph(path, min_size=1)
        assert m.sampling_A == pytest.approx(sampling, rel=1e-5)
        np.testing.assert_array_equal(m.data, data)

    prop()


# --------------------------------------------------------------------------- detect


def _detect(model, image, sampling):
    out = expect_clean_outcome(lambda: atomfinder.detect(image, model=model, sampling=sampling, device="cpu",
                                                               precision="float32"))
    if out is not None:
        table, info = out
        check_table(table)
        assert info["probabilities"].dtype == np.float32
    return out


def test_detect_on_random_arrays(tiny):
    model, _ = tiny

    @fast_settings
    @given(images(), SAMPLINGS)
    @counted
    def prop(array, sampling):
        _detect(model, array, sampling)

    prop()


def test_detect_on_huge_views_is_refused_without_allocating(tiny):
    """Broadcast views of any size cost no memory; detect must refuse those that would not fit."""
    model, _ = tiny
    available = pipeline.available_memory_bytes() or 16 * 1024**3
    side = math.isqrt(available // pipeline.INPUT_WORK_BYTES) + 1  # cleaning alone would not fit

    @fast_settings
    @given(st.integers(side, 4 * side), st.integers(side, 4 * side), st.integers(1, 3), SAMPLINGS)
    @counted
    def prop(h, w, frames, sampling):
        row = np.random.default_rng(h).random(w).astype(np.float32)
        view = np.broadcast_to(row, (frames, h, w) if frames > 1 else (h, w))
        out = expect_clean_outcome(lambda: atomfinder.detect(view, model=model, sampling=sampling, device="cpu"))
        assert out is None, "a view this size cannot be detected in the available memory"

    prop()


def test_detect_refuses_huge_resampling(tiny):
    """A small image whose resampled grid would not fit, and far-off pixel sizes."""
    model, _ = tiny

    @fast_settings
    @given(st.integers(16, 48), st.floats(SAMPLING * 4.001, 1e6))
    @counted
    def prop(side, sampling):
        image = np.random.default_rng(side).random((side, side)).astype(np.float32)
        out = expect_clean_outcome(lambda: atomfinder.detect(image, model=model, sampling=sampling, device="cpu"))
        assert out is None

    prop()


def _signal(data, scales, units, title):
    axes = [SimpleNamespace(scale=s, units=u) for s, u in zip(scales, units)]
    return SimpleNamespace(
        data=data,
        axes_manager=SimpleNamespace(signal_axes=axes),
        metadata=SimpleNamespace(General=SimpleNamespace(title=title)),
    )


def test_detect_on_signals_with_random_calibration(tiny):
    model, _ = tiny

    @fast_settings
    @given(images(max_side=40), st.lists(SCALES, min_size=0, max_size=3), st.lists(UNITS, min_size=0, max_size=3),
           st.text(max_size=10), st.one_of(st.none(), st.just(SAMPLING)))
    @counted
    def prop(array, scales, units, title, sampling):
        signal = _signal(array, scales, units, title)
        _detect(model, signal, sampling)

    prop()


def test_detect_on_mutated_files(workdir, samples, tiny):
    model, _ = tiny
    names = sorted(samples)

    @fast_settings
    @given(mutations(names, samples), st.one_of(st.none(), st.just(SAMPLING)))
    @counted
    def prop(case, sampling):
        name, data, ext = case
        path = _write_case(workdir, name, data, ext, samples)
        _detect(model, str(path), sampling)

    prop()


def test_cli_detect_on_mutated_files(workdir, samples, tiny):
    """Through the command line: exit 0 with outputs, or exit 2 with one line."""
    _, stem = tiny
    names = sorted(samples)

    @settings(fast_settings, max_examples=max(5, settings.default.max_examples // 4))
    @given(mutations(names, samples))
    @counted
    def prop(case):
        name, data, ext = case
        path = _write_case(workdir, name, data, ext, samples)
        out = path.parent / "out"
        result = CliRunner().invoke(app, ["detect", str(path), "--model", str(stem), "--sampling", str(SAMPLING),
                                          "--out", str(out), "--precision", "float32"])
        text = result.output.strip()
        assert result.exit_code in (0, 2), (result.exit_code, text, result.exception)
        assert "Traceback" not in text
        if result.exit_code == 2:
            assert len(text.splitlines()) == 1 and path.name in text, text
            assert not out.exists() or not any(out.iterdir())
        else:
            assert (out / f"{path.stem}.csv").is_file()

    prop()


# --------------------------------------------------------------------------- long variants (make fuzz)


@pytest.mark.slow
def test_slow_detect_on_larger_arrays_and_stacks(tiny):
    model, _ = tiny

    @settings(fast_settings, max_examples=settings.default.max_examples * 2)
    @given(images(max_side=160), SAMPLINGS)
    @counted
    def prop(array, sampling):
        _detect(model, array, sampling)

    prop()


@pytest.mark.slow
def test_slow_readers_on_heavily_mutated_files(workdir, samples):
    # 1 to 3 files per case; DM3/DM4 and EMD reads start a process each (about 1 s), so
    # 10 000 cases here take about as long as the rest of make fuzz together
    names = sorted(samples)

    @settings(fast_settings, max_examples=settings.default.max_examples)
    @given(st.lists(mutations(names, samples), min_size=1, max_size=3))
    @counted
    def prop(cases):
        for case in cases:
            _read_mutated(workdir, samples, case, 1)

    prop()



# --------------------------------------------------------------------------- regressions found by fuzzing


def _mrc_with(samples_dir: Path, tmp: Path, **words) -> Path:
    """The MRC sample with header words (0-based 32-bit little-endian indices) replaced."""
    data = bytearray((samples_dir / "mrc_20241021_00405_movie.mrc").read_bytes())
    for index, value in words.items():
        i = int(index.removeprefix("w"))
        data[4 * i:4 * i + 4] = int(value).to_bytes(4, "little")
    path = tmp / "damaged.mrc"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="vendor samples missing")
@pytest.mark.parametrize("words", [
    {"w0": 0x7FFFFFFF},  # NX: 2**31 columns in a 3-kB file (rsciio built 3-GiB index arrays, then hung)
    {"w0": 5794, "w1": 11587, "w2": 1},  # 67 M pixels declared
    {"w2": 0},  # NZ = 0
    {"w23": 0xFFFFFFF0},  # NEXT: an extended header of 4 GB
], ids=["huge_nx", "large_nx_ny", "zero_nz", "huge_next"])
def test_mrc_header_declaring_more_than_the_file_is_refused(tmp_path, words):
    path = _mrc_with(SAMPLES, tmp_path, **words)
    with capped_address_space(2 * 1024**3):
        with pytest.raises(MicrographError, match="the header declares .* but the file holds 3.1 kB") as exc:
            read_micrograph(path, min_size=1)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="vendor samples missing")
def test_dm3_renamed_mrc_is_refused_without_allocating(tmp_path):
    """A DM3 file read as MRC declared 1.5 EiB (MemoryError traceback before)."""
    path = tmp_path / "renamed.mrc"
    path.write_bytes((SAMPLES / "digitalmicrograph_2D_test-1.dm3").read_bytes())
    with pytest.raises(MicrographError, match="cannot read it as an MRC file .*the header declares"):
        read_micrograph(path)
    result = CliRunner().invoke(app, ["detect", str(path), "--model", "graphene", "--sampling", "0.1",
                                      "--out", str(tmp_path / "out")])
    text = result.output.strip()
    assert result.exit_code == 2 and len(text.splitlines()) == 1 and "renamed.mrc" in text, text


def test_memory_error_of_a_reader_is_a_one_line_error(tmp_path, monkeypatch):
    path = tmp_path / "big.npy"
    np.save(path, np.ones((20, 20), np.float32))

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.52 EiB")

    monkeypatch.setattr(io_mod, "_read_raw", out_of_memory)
    with pytest.raises(MicrographError, match=r"big.npy: not enough memory to read it as a NumPy .npy file"):
        read_micrograph(path)


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="vendor samples missing")
def test_emd_that_makes_hdf5_loop_forever_is_refused(tmp_path, monkeypatch):
    """4 zero bytes at offset 2202 of the EMD sample replaced by 8: h5py spun for 17 min."""
    data = (SAMPLES / "emd_example_image.emd").read_bytes()
    assert data[2202:2206] == bytes(4)
    path = tmp_path / "spins.emd"
    path.write_bytes(data[:2202] + bytes.fromhex("d01b11bbd01b11bb") + data[2206:])
    # the default limit for this file is within the 10 s a case of make fuzz may take
    assert io_mod.read_timeout_s(path.stat().st_size) < 10.0
    # the refusal comes from that limit (lowered here to 2 s: the message names it), not from the reader
    monkeypatch.setattr(io_mod, "READ_TIMEOUT_S", 2.0)
    with pytest.raises(MicrographError, match=r"spins.emd: cannot read it as an EMD .*took more than 2\.\d+ s") as exc:
        read_micrograph(path, min_size=1)
    assert "\n" not in str(exc.value)


def test_isolated_reader_reports_errors_in_one_line(tmp_path):
    bad = tmp_path / "bad.emd"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(MicrographError, match=r"bad.emd: cannot read it as an EMD \(Velox/NCEM\) file \(\w+Error: ") as exc:
        read_micrograph(bad)
    assert "\n" not in str(exc.value)
    with pytest.raises(RuntimeError, match=r"^ModuleNotFoundError: No module named 'rsciio.no-such-reader'$"):
        io_mod._read_in_subprocess(bad, "no-such-reader", 60)


@pytest.mark.parametrize("name, reader", [
    ("emd_example_image.emd", "emd"),
    ("digitalmicrograph_2D_test-1.dm3", "digitalmicrograph"),
    ("digitalmicrograph_2D_test-1.dm4", "digitalmicrograph"),
    ("digitalmicrograph_3D_test-1.dm3", "digitalmicrograph"),
    ("digitalmicrograph_test_stackbuilder_imagestack.dm3", "digitalmicrograph"),
])
def test_isolated_read_equals_the_direct_read(name, reader):
    if not SAMPLES.is_dir():
        pytest.skip("vendor samples missing")
    path = SAMPLES / name
    direct = io_mod._read_with_rsciio(path, reader)
    isolated = io_mod._read_in_subprocess(path, reader, 120)
    assert direct[0].dtype == isolated[0].dtype and np.array_equal(direct[0], isolated[0])
    assert direct[1] == isolated[1]


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="vendor samples missing")
def test_dm4_that_makes_the_dm_parser_loop_is_refused_in_time(tmp_path, monkeypatch):
    """make fuzz: one byte inserted at offset 868 of the DM4 sample makes rsciio's DigitalMicrograph parser
    read a tag array of structs of a length it trusts, for minutes and gigabytes (found hanging at 2.8 GB)."""
    data = (SAMPLES / "digitalmicrograph_2D_test-1.dm4").read_bytes()
    path = tmp_path / "loops.dm4"
    path.write_bytes(data[:868] + b"n" + data[868:])
    assert io_mod.read_timeout_s(path.stat().st_size) < 10.0  # the default limit: within a case of make fuzz
    # refused by that limit (lowered here to 2 s: the message names it)
    monkeypatch.setattr(io_mod, "READ_TIMEOUT_S", 2.0)
    with pytest.raises(MicrographError,
                       match=r"loops.dm4: cannot read it as a Gatan DigitalMicrograph file .*took more than 2\.\d+ s"):
        read_micrograph(path, min_size=1)


def test_mrc_sample_still_reads():
    if not SAMPLES.is_dir():
        pytest.skip("vendor samples missing")
    m = read_micrograph(SAMPLES / "mrc_20241021_00405_movie.mrc", min_size=1)
    assert m.data.shape == (32, 4, 8)


# --------------------------------------------------------------------------- model cards

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
CARD_KEYS = ["name", "version", "architecture", "in_channels", "class_names", "sampling_A", "normalization",
             "defocus_offsets_A", "training", "evaluation", "detection", "calibration", "validity", "created",
             "format_version", "weights_sha256", "unknown_key"]
NESTED = {"architecture": ["in_channels", "n_classes", "depth", "width", "norm", "height_head", "max_height", "x"],
          "normalization": ["kind", "window_A", "noise_floor"],
          "detection": ["threshold", "min_distance_A"]}
TYPICAL = st.one_of(JSON, st.sampled_from([0, 1, 2, -1, 0.5, 1e300, -1e-300, float("nan"), float("inf"), "local",
                                           "global", "batch", True, False, [], {}, "", 1e6, 4]))


@st.composite
def card_edits(draw):
    """(top-level key, value) or (parent, key, value) changes of a valid card."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            edits.append((draw(st.sampled_from(CARD_KEYS)), draw(TYPICAL)))
        else:
            parent = draw(st.sampled_from(sorted(NESTED)))
            edits.append((parent, draw(st.sampled_from(NESTED[parent])), draw(TYPICAL)))
    return edits


def test_model_cards_with_random_fields(tiny, workdir):
    """A card with any field changed loads (and detects) or raises a one-line ValueError."""
    (_, base_card), stem = tiny
    weights = stem.with_name(stem.name + ".safetensors").read_bytes()
    base = base_card.to_dict()
    image = np.random.default_rng(0).normal(100, 5, (32, 32)).astype(np.float32)

    @fast_settings
    @given(card_edits())
    @counted
    def prop(edits):
        d = json.loads(json.dumps(base))
        for edit in edits:
            if len(edit) == 2:
                d[edit[0]] = edit[1]
            elif isinstance(d.get(edit[0]), dict):
                d[edit[0]][edit[1]] = edit[2]
        case = workdir / f"card{next(_counter)}"
        case.mkdir()
        (case / "m.safetensors").write_bytes(weights)
        try:
            text = json.dumps(d)
        except ValueError:
            assume(False)
        (case / "m.json").write_text(text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = expect_clean_outcome(lambda: load_model(case / "m"))
            if loaded is not None:
                _detect(loaded, image, SAMPLING)

    prop()


def test_model_files_with_mutated_bytes(tiny, workdir):
    """Flipped, truncated or inserted bytes in a card or its weights: refused in one line."""
    _, stem = tiny
    files = {suffix: stem.with_name(stem.name + suffix).read_bytes() for suffix in (".json", ".safetensors")}

    @fast_settings
    @given(st.sampled_from(sorted(files)), st.data())
    @counted
    def prop(suffix, data):
        raw = bytearray(files[suffix])
        pos = data.draw(st.integers(0, len(raw) - 1))
        kind = data.draw(st.sampled_from(["truncate", "flip", "insert"]))
        if kind == "truncate":
            del raw[pos:]
        elif kind == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        case = workdir / f"model{next(_counter)}"
        case.mkdir()
        for s, content in files.items():
            (case / f"m{s}").write_bytes(bytes(raw) if s == suffix else content)
        loaded = expect_clean_outcome(lambda: load_model(case / "m"))
        if suffix == ".safetensors":
            assert loaded is None, "changed weights must not match the card's SHA-256"

    prop()


def test_lazily_read_truncated_tiff_names_the_file(tmp_path):
    """Found by `make fuzz` (test_cli_detect_on_mutated_files): a TIFF whose pixel block runs past the end of
    the file opened lazily (as `detect` reads files) failed only when its pixels were read, with numpy's bare
    "mmap length is greater than file size" and no file name."""
    from atomfinder.detection.io import MicrographError, read_micrograph, write_tiff_calibrated

    path = write_tiff_calibrated(tmp_path / "made.tif", np.arange(20 * 25, dtype=np.float32).reshape(20, 25), 0.1)
    path.write_bytes(path.read_bytes()[:-200])  # the last 50 pixels are gone
    with pytest.raises(MicrographError) as info:
        read_micrograph(path, lazy=True)
    message = str(info.value)
    assert "made.tif" in message and "truncated" in message and len(message.splitlines()) == 1


def test_lazily_read_stack_with_a_damaged_page_names_the_file_and_frame(tmp_path):
    """make fuzz (test_cli_detect_on_mutated_files): a TIFF stack opened lazily whose later page cannot be
    read failed with a bare 'cannot reshape array of size 0' when that frame was read. Here the second page
    of a compressed stack is cut short."""
    import tifffile

    data = np.random.default_rng(0).random((2, 40, 48)).astype(np.float32)
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, data, compression="zlib", resolution=(10, 10))
    path.write_bytes(path.read_bytes()[:-40])
    stack = read_micrograph(path, 0.1, lazy=True).data
    np.testing.assert_array_equal(stack[0], data[0])
    with pytest.raises(MicrographError, match=r"cut\.tif: cannot read frame 1 \("):
        stack[1]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["detect", str(path), "--sampling", "0.1", "--model", "graphene",
                                      "--out", str(out)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "cut.tif" in result.output and "frame 1" in result.output
    assert not out.exists() or not any(out.iterdir())


def _isolated_readers_of(path: Path) -> list[int]:
    """PIDs of isolated-reader processes reading ``path`` (from /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"atomfinder.detection._isolated_read" in cmd and str(path).encode() in cmd:
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="vendor samples missing")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux only")
def test_isolated_reader_dies_with_its_parent_and_by_its_own_alarm(tmp_path):
    """make fuzz: after the fuzzing process was killed, the reader of a looping EMD kept spinning for half an
    hour as an orphan. It now dies with its parent, and ends by itself after its timeout."""
    import signal
    import time

    data = (SAMPLES / "emd_example_image.emd").read_bytes()
    path = tmp_path / "spins.emd"
    path.write_bytes(data[:2202] + bytes.fromhex("d01b11bbd01b11bb") + data[2206:])
    parent = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                               "from atomfinder.detection.io import _read_in_subprocess; "
                               "_read_in_subprocess(Path(sys.argv[1]), 'emd', 300.0)", str(path)])
    deadline = time.monotonic() + 60
    while not _isolated_readers_of(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _isolated_readers_of(path), "the reader did not start"
    time.sleep(1.0)  # past its start-up: in the looping read
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _isolated_readers_of(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _isolated_readers_of(path), "the reader outlived its killed parent"
    # run directly (no parent to die) with a 1 s timeout: its own alarm ends it (killed by SIGALRM, not
    # by subprocess.run's 60 s guard, which would raise TimeoutExpired)
    done = subprocess.run([sys.executable, "-m", "atomfinder.detection._isolated_read", str(path), "emd",
                           str(tmp_path), "1.0"], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGALRM, (done.returncode, done.stderr[-500:])


@pytest.mark.parametrize("arch", [{"depth": 755685214}, {"width": 755685214}, {"depth": 9, "width": 4096}],
                         ids=["deep", "wide", "both"])
def test_card_describing_a_huge_network_is_refused_before_building_it(tiny, tmp_path, arch):
    """make fuzz (test_model_cards_with_random_fields): a card whose depth was 755 685 214 made the loader
    build the network and fail with a bare MemoryError."""
    (_, base_card), stem = tiny
    d = json.loads(json.dumps(base_card.to_dict()))
    d["architecture"].update(arch)
    (tmp_path / "m.json").write_text(json.dumps(d))
    (tmp_path / "m.safetensors").write_bytes(stem.with_name(stem.name + ".safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"m\.json: field 'architecture' describes a network of about .* parameters"):
        load_model(tmp_path / "m")
