"""`Backend`: one array library on one device, and everything xlstm asks of it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy

from xlstm_backends.library import Library
from xlstm_backends.random import RandomStream


@dataclass(frozen=True)
class Backend:
    """An array library (`xp`, its array-API namespace) bound to one device."""

    name: str
    xp: Any
    device: Any
    library: Library

    def __repr__(self) -> str:
        return f"Backend(name={self.name!r}, device={self.device!r})"

    def from_host(self, values: numpy.ndarray) -> Any:
        """Copy a NumPy array onto this backend's device."""
        return self.library.from_host(numpy.asarray(values), self.device)

    def random(self, seed: int | None = None, stream: int = 0) -> RandomStream:
        """A seeded stream of random arrays on this backend (see `RandomStream`)."""
        return RandomStream(self, seed, stream)

    def synchronize(self) -> None:
        """Block until all queued work on the device has finished."""
        self.library.synchronize(self.device)

    def resolve_dtype(self, dtype: Any, default: str = "float32") -> Any:
        """This backend's float dtype for `dtype` (None, 'float32'/'float64', or any library's dtype)."""
        return float_dtype(self.xp, dtype, default)


def float_dtype(xp: Any, dtype: Any, default: str = "float32") -> Any:
    """The float dtype of namespace `xp` named by `dtype` (None means `default`)."""
    name = default if dtype is None else dtype_name(dtype)
    if name not in ("float32", "float64"):
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return getattr(xp, name)


def dtype_name(dtype: Any) -> str:
    """'float32' for numpy.float32, torch.float32, array_api_strict.float32, 'float32', ..."""
    if isinstance(dtype, str):
        return dtype
    name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or str(dtype)
    return str(name).rsplit(".", 1)[-1]
