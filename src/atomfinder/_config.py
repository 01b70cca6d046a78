"""``to_dict`` / ``from_dict`` for the frozen parameter dataclasses (JSON and TOML friendly),
and the checks of single fields their ``__post_init__`` use (:func:`check_number`,
:func:`check_pair`: one-line errors naming the field, its unit and the accepted range)."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any, ClassVar


class ConfigMixin:
    """Round trip of a frozen config dataclass through plain JSON/TOML values.

    Tuples are written as lists and read back as tuples (except the fields named
    in ``_list_fields``); unknown keys are an error (a typo in a config file must
    not be silently ignored); missing keys take the defaults.
    """

    #: What a key is called in the error for unknown keys (default: "<class> setting").
    _config_label: ClassVar[str] = ""
    #: Fields whose lists stay lists.
    _list_fields: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build a config from :meth:`to_dict` output (or a TOML table).

        Raises
        ------
        ValueError
            If ``data`` holds a key that is not a field of the config.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            label = cls._config_label or f"{cls.__name__} setting"
            raise ValueError(f"unknown {label}(s): {', '.join(unknown)}")
        return cls(**{
            k: tuple(v) if isinstance(v, list) and k not in cls._list_fields else v for k, v in data.items()
        })


# -- checks of single fields (one-line errors naming the field, its unit and the accepted range) --


def _is_real(value: Any) -> bool:
    """A real number (int or float, numpy's included), not a bool or a string."""
    import numbers

    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _bounds_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    """``"> 0"``, ``">= 1"``, ``"in [0, 1]"``, ``"in [0, 0.5)"``..."""
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return ""


def _inside(v: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    if math.isnan(v):
        return False
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))


def _label(name: str, unit: str) -> str:
    return f"{name} ({unit})" if unit else name


def check_number(
    name: str,
    value: Any,
    unit: str = "",
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
    allow_inf: bool = False,
) -> None:
    """Raise a one-line ``ValueError`` unless ``value`` is a number in the given bounds.

    Parameters
    ----------
    name, unit : str
        The field and its unit, named in the message (``"image_px"``, ``"pixels"``).
    value : Any
        The value to check: an int or float (a bool or a string is refused).
    lo, hi : float, optional
        Bounds (inclusive unless ``lo_open`` / ``hi_open``).
    integer : bool
        Refuse floats too (``2.5`` or ``128.0`` for a number of pixels).
    allow_inf : bool
        Accept ``inf`` where the bounds allow it (otherwise the value must be finite).
    """
    bounds = _bounds_text(lo, hi, lo_open, hi_open)
    what = ("an integer" if integer else "a number" if bounds else "a finite number") + (f" {bounds}" if bounds else "")
    if integer:
        import numbers

        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    else:
        ok = _is_real(value) and (allow_inf or math.isfinite(value) or math.isnan(value))
    if not ok or not _inside(float(value), lo, hi, lo_open, hi_open):
        raise ValueError(f"{_label(name, unit)} must be {what}; got {value!r}")


def check_pair(
    name: str,
    value: Any,
    unit: str = "",
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
) -> None:
    """Raise a one-line ``ValueError`` unless ``value`` is a ``[low, high]`` pair of finite
    numbers with ``low <= high``, both in the given bounds (see :func:`check_number`)."""
    bounds = _bounds_text(lo, hi, lo_open, hi_open)
    kind = ("integers" if integer else "numbers") if bounds else ("integers" if integer else "finite numbers")
    both = f"{kind} {bounds}".strip()
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        shown = list(value) if isinstance(value, tuple) else value
        raise ValueError(f"{_label(name, unit)} must be [low, high] (equal bounds fix it), two {both}; got {shown!r}")
    for v in value:
        try:
            check_number(name, v, unit, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, integer=integer)
        except ValueError:
            raise ValueError(f"{_label(name, unit)} must be [low, high] with both {both}; got {list(value)!r}") from None
    if value[0] > value[1]:
        raise ValueError(f"{_label(name, unit)} must be [low, high] with low <= high; got {list(value)!r}")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML file; a one-line ``ValueError`` naming the file when it is not valid TOML text."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text (TOML) file") from None
