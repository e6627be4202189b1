"""Input validation: every public function checks its arguments here before any work.

Each check raises a `TypeError` or `ValueError` that names the argument and says what
was expected and what was given.
"""
from __future__ import annotations

import math
from typing import Any

import array_api_compat

from xlstm_backends import dtype_name, library_of


def namespace_of(**arrays: Any) -> Any:
    """The shared array namespace of the named arrays (None values are skipped).

    Arrays of two libraries are a TypeError and arrays on two devices a ValueError,
    both naming the arguments, since nothing is moved behind the user's back.
    """
    named = {name: x for name, x in arrays.items() if x is not None}
    by_type: dict[type, Any] = {}  # Python type → (an array of it, its library): both go by type
    libraries: dict[str, str] = {}
    for name, x in named.items():
        if type(x) not in by_type:
            by_type[type(x)] = (x, library_of(x))
        library = by_type[type(x)][1]
        if library is None:
            raise TypeError(
                f"{name} must be an array of a known backend (numpy, cupy, torch, array_api_strict), "
                f"got {type(x).__name__}; convert it with xlstm.asarray"
            )
        libraries[name] = library.name
    _refuse_mixture(libraries, TypeError, "are arrays of different libraries")
    devices = {name: array_api_compat.device(x) for name, x in named.items()}
    _refuse_mixture(devices, ValueError, "are on different devices")
    return array_api_compat.array_namespace(*(x for x, _ in by_type.values()))


def _refuse_mixture(values: dict[str, Any], error: type[Exception], what: str) -> None:
    first_name, first = next(iter(values.items()))
    for name, value in values.items():
        if value != first:
            raise error(
                f"{first_name} and {name} {what} ({first} and {value}); "
                "move one explicitly with xlstm.asarray(..., backend=..., device=...)"
            )


def device_of(x: Any) -> Any:
    """The device an array lives on."""
    return array_api_compat.device(x)


def check_positive_int(name: str, value: Any) -> int:
    """`value` as an int, or a ValueError when it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """`value` itself, or a TypeError when it is not True or False."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_no_booleans(name: str, values: Any) -> None:
    """A list or tuple of lengths or ids must not hold True/False (bool is an int in Python)."""
    position = next((k for k, v in enumerate(values) if isinstance(v, bool)), None)
    if position is not None:
        raise TypeError(f"{name}[{position}] must be an integer, got {values[position]!r} (booleans are not lengths)")


def check_shape(name: str, x: Any, expected: tuple[Any, ...], what: str = "") -> None:
    """Check rank and the known sizes of `x`; `None` in `expected` accepts any size."""
    shape = tuple(x.shape)
    matches = len(shape) == len(expected) and all(e is None or e == s for e, s in zip(expected, shape))
    if not matches:
        wanted = "[" + ", ".join("?" if e is None else str(e) for e in expected) + "]"
        suffix = f" ({what})" if what else ""
        raise ValueError(f"{name} must have shape {wanted}{suffix}, got {list(shape)}")


def check_float(name: str, x: Any, xp: Any, dtype: Any = None) -> None:
    """`x` must be a real floating array, and of `dtype` when one is given."""
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {dtype_name(x.dtype)}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"{name} must have dtype {dtype_name(dtype)} (the model's), got {dtype_name(x.dtype)}; "
            "cast it with xlstm.asarray(..., dtype=...)"
        )


def check_integer(name: str, x: Any, xp: Any) -> None:
    """`x` must be an integer array."""
    if not xp.isdtype(x.dtype, "integral"):
        raise TypeError(f"{name} must be an integer array, got dtype {dtype_name(x.dtype)}")


def check_range(name: str, x: Any, xp: Any, low: int, high: int, what: str) -> None:
    """Every element of integer array `x` must lie in [low, high]."""
    if math.prod(x.shape) == 0:
        return
    smallest, largest = int(xp.min(x)), int(xp.max(x))
    if smallest < low or largest > high:
        raise ValueError(f"{name} must lie in [{low}, {high}] ({what}), got values from {smallest} to {largest}")
