"""``to_dict`` / ``from_dict`` for the frozen parameter dataclasses (JSON and TOML friendly)."""

from __future__ import annotations

import dataclasses
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
