"""Writing files all at once (temporary file beside the target, then a rename)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path | str, write: Callable[[str], Any]) -> Path:
    """Create ``path`` atomically: ``write(tmp)`` fills a temporary file, which is renamed onto ``path``.

    A reader never sees a half-written file and a failure (or a kill) leaves no
    file behind. The temporary name keeps ``path``'s suffix, so writers that pick
    a format from it (matplotlib, tifffile) work. The file gets the permissions a
    new file normally gets (0o666 less the umask), not ``mkstemp``'s 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
