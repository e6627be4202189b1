"""Explicit moves of arrays between libraries and devices (never behind the user's back)."""
from __future__ import annotations

from typing import Any

import numpy

from xlstm_backends.backend import Backend
from xlstm_backends.library import Library
from xlstm_backends.selection import LIBRARIES, get_backend


def library_of(x: Any) -> Library | None:
    """The library an array belongs to, or None for lists, scalars and unknown objects."""
    return next((library for library in LIBRARIES.values() if library.owns(x)), None)


def to_numpy(x: Any) -> numpy.ndarray:
    """A NumPy copy of an array from any backend (or of nested lists)."""
    library = library_of(x)
    return numpy.asarray(x) if library is None else library.to_host(x)


def asarray(obj: Any, dtype: Any = None, backend: str | Backend | None = None, device: Any = None) -> Any:
    """Put `obj` (an array of any backend, nested lists, a scalar) onto a backend and device.

    Moves across libraries go through host memory. Arrays keep their dtype unless `dtype`
    is given; Python floats and lists of them become float32, the project's default.
    """
    target = get_backend(backend, device)
    xp = target.xp
    source = library_of(obj)
    if source is not None and source.name == target.name:
        moved = xp.asarray(obj)
        if _device_of(moved) != target.device:
            moved = xp.asarray(_to_device(xp, moved, target.device))
    else:
        host = to_numpy(obj)
        if source is None and dtype is None and host.dtype == numpy.float64:
            dtype = "float32"
        moved = target.from_host(host)
    if dtype is not None:
        moved = xp.astype(moved, target.resolve_dtype(dtype))
    return moved


def _device_of(x: Any) -> Any:
    import array_api_compat

    return array_api_compat.device(x)


def _to_device(xp: Any, x: Any, device: Any) -> Any:
    import array_api_compat

    return array_api_compat.to_device(x, device)
