"""Child process of :func:`atomfinder.detection.io._read_in_subprocess`.

``python -m atomfinder.detection._isolated_read PATH READER OUT_DIR [TIMEOUT_S]`` reads
``PATH`` with rosettasciio's ``READER`` and writes ``OUT_DIR/data.npy`` (the array, no
pickle) and ``OUT_DIR/axes.json`` (rsciio's axis dictionaries). A failure prints one
line, ``TypeName: message``, on stderr and exits with status 1. The parent kills this
process when it takes too long, so a library that loops forever on a damaged file (HDF5)
or crashes cannot take the caller with it. The process also ends on its own: after
``TIMEOUT_S`` (plus a second) by ``SIGALRM``, and on Linux as soon as its parent dies
(``PR_SET_PDEATHSIG``), so a parent killed with ``kill -9`` leaves no reader spinning
(a fuzzing run found one still busy half an hour after its parent was killed). Both are
carried out by the kernel, even while the looping library holds the interpreter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _plain(value):
    """JSON-able version of rsciio's axis values (NumPy scalars, bytes)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def end_with_parent_or_after(timeout_s: float) -> None:
    """Let the kernel end this process ``timeout_s`` (+1) seconds from now, or when its parent dies."""
    import math
    import signal

    if timeout_s > 0 and hasattr(signal, "alarm"):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # default action: terminate
        signal.alarm(int(math.ceil(timeout_s)) + 1)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def main(argv: list[str]) -> int:
    """Read one file into ``OUT_DIR``; 0 on success, 1 (with a one-line stderr) on failure."""
    from atomfinder.detection.io import _read_with_rsciio

    path, reader, out_dir = argv[:3]
    end_with_parent_or_after(float(argv[3]) if len(argv) > 3 else 0.0)
    try:
        data, axes = _read_with_rsciio(Path(path), reader)
        np.save(Path(out_dir) / "data.npy", data, allow_pickle=False)
        (Path(out_dir) / "axes.json").write_text(json.dumps(axes, default=_plain), encoding="utf-8")
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as one line
        message = " ".join(str(exc).split())
        print(f"{type(exc).__name__}: {message}"[:500], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
