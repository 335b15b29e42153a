"""What every engine configuration shares: integer-field checks, JSON form and a stable digest.

Engine configs are frozen dataclasses deriving from :class:`EngineConfig`; each validates its own
fields in ``__post_init__`` (with :func:`check_int`) and names itself with ``short_name``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from typing import Any, Self

import numpy as np

from tessera.models.rounding import Overflow, Rounding, _coerce_enum

__all__ = ["EngineConfig", "check_int"]


def check_int(name: str, value: Any, lo: int, hi: int) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is an integer in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


class EngineConfig:
    """Mixin of the engine config dataclasses: ``to_dict``, ``from_dict`` and ``digest``."""

    def _coerce_modes(self) -> None:
        """Turn ``rounding`` / ``overflow`` given as strings (JSON, command line) into enums."""
        object.__setattr__(self, "rounding", _coerce_enum(Rounding, self.rounding, "rounding"))
        object.__setattr__(self, "overflow", _coerce_enum(Overflow, self.overflow, "overflow"))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (enums as their values)."""
        return {
            k: v.value if isinstance(v, enum.Enum) else v
            for k, v in dataclasses.asdict(self).items()  # type: ignore[call-overload]
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**data)

    @property
    def digest(self) -> str:
        """Stable 10-hex-digit hash of the configuration (build and cache keys)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]
