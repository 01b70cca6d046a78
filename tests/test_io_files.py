"""Tests of atomfinder.detection.io on files whose layout or header is unusual: each is made
here, small, and read as a microscopist expects (or refused in one line naming the file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atomfinder.detection.io import MicrographError, read_micrograph, require_sampling

IMAGE = np.random.default_rng(11).random((24, 32)).astype(np.float32)


def one_line_error(excinfo: pytest.ExceptionInfo, path: Path, *fragments: str) -> str:
    """The message: one line, naming the file, holding every fragment."""
    message = str(excinfo.value)
    assert "\n" not in message and path.name in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------ MRC


def write_mrc(path: Path, data: np.ndarray, cell_A: tuple[float, float, float],
              sampling: tuple[int, int, int]) -> Path:
    """A float32 MRC2014 file: ``cell_A`` is (Xlen, Ylen, Zlen) in Å, ``sampling`` (MX, MY, MZ)."""
    from rsciio.mrc._api import get_std_dtype_list

    data = np.asarray(data, np.float32)
    data = data[None] if data.ndim == 2 else data
    header = np.zeros(1, np.dtype(get_std_dtype_list("<")))
    header["NZ"], header["NY"], header["NX"] = data.shape
    header["MODE"] = 2
    header["MX"], header["MY"], header["MZ"] = sampling
    header["Xlen"], header["Ylen"], header["Zlen"] = cell_A
    header["MAPC"], header["MAPR"], header["MAPS"] = 1, 2, 3
    path.write_bytes(header.tobytes() + data.tobytes())
    return path


def test_mrc_pixel_size_is_cell_over_sampling(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "cal.mrc", IMAGE, (32 * 0.108, 24 * 0.108, 1.0), (32, 24, 1))
    assert read_micrograph(path).sampling_A == pytest.approx(0.108, rel=1e-6)


@pytest.mark.parametrize("cell_A", [(32 * 0.108, 24 * 0.108, 1.0), (0.0, 0.0, 0.0)])
def test_mrc_without_sampling_is_uncalibrated(tmp_path: Path, cell_A: tuple) -> None:
    """MX = MY = 0: rsciio puts a placeholder of 1 nm per pixel on the axes; that is no
    calibration, and the cell is not divided by NX instead (a guess)."""
    path = write_mrc(tmp_path / "mx0.mrc", IMAGE, cell_A, (0, 0, 0))
    m = read_micrograph(path)
    assert m.sampling_A is None and m.metadata["file_sampling_A"] is None
    assert "MX = 0, MY = 0 in the MRC header" in m.metadata["calibration_note"]
    with pytest.raises(MicrographError) as excinfo:
        require_sampling(m)
    one_line_error(excinfo, path, "no pixel size", "MX = 0", "--sampling")
    assert read_micrograph(path, sampling_A=0.1).sampling_A == 0.1
