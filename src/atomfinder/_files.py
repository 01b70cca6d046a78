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


def stale_temporaries(path: Path | str) -> list[Path]:
    """Temporary files that writers of ``path`` left beside it when they were killed.

    :func:`atomic_write` stages ``path`` as ``.<name>.<random>.tmp<suffix>`` and the
    detection writer as ``.<name>.<random>.partial<suffix>``; a ``kill -9`` between
    creating and renaming one leaves it behind, and so does one killed while a writer
    stages its own temporary beside such a staged file (``..<name>.<random>.partial<suffix>.<random>.tmp<suffix>``,
    e.g. the overlay figure). Nothing else matches.

    Parameters
    ----------
    path : path
        The final file.

    Returns
    -------
    list of Path
        The leftovers found (none when the folder does not exist).
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix = f"{path.name}."
    endings = (".tmp" + path.suffix, ".partial" + path.suffix)
    return sorted(p for p in path.parent.iterdir()
                  if p.name.startswith(".") and p.name.lstrip(".").startswith(prefix)
                  and p.name.endswith(endings) and p.is_file())


def remove_stale_temporaries(*paths: Path | str) -> int:
    """Delete what :func:`stale_temporaries` finds for each path; returns how many.

    Call it only where this process is the one writer of those paths (a rerun of an
    interrupted command): a concurrent writer's temporary file would go too.
    """
    removed = 0
    for path in paths:
        for tmp in stale_temporaries(path):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def check_output_dir(out_dir: Path | str) -> None:
    """Refuse an output folder that cannot be created or written, before any work (creates nothing).

    Raises
    ------
    ValueError
        One line: the folder, or the nearest existing folder above it, is a file or is
        not writable.
    """
    out_dir = Path(out_dir)
    probe = out_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{out_dir}: cannot be an output directory ({probe} is a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "output directory" if probe == out_dir else f"output directory (cannot create it in {probe})"
        raise ValueError(f"{out_dir}: {what} is not writable")


def refuse_earlier_files(out_dir: Path | str, existing: list[Path], advice: str, shown: int = 4) -> None:
    """Refuse, in one line naming them, to replace the files an earlier run left in ``out_dir``.

    The message is ``"<out_dir>: already holds a, b, c, d and 2 more from an earlier run; <advice>"``:
    ``advice`` says how the caller's user replaces them or goes elsewhere (``--overwrite``,
    ``overwrite=True``, another folder).

    Raises
    ------
    ValueError
        When ``existing`` is not empty.
    """
    if not existing:
        return
    names = ", ".join(Path(p).name for p in existing[:shown])
    more = f" and {len(existing) - shown} more" if len(existing) > shown else ""
    raise ValueError(f"{out_dir}: already holds {names}{more} from an earlier run; {advice}")
