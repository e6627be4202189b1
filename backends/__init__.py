"""The only package that names array libraries: selection, devices, transfers, RNG, sync."""
from xlstm_backends.backend import Backend, dtype_name, float_dtype
from xlstm_backends.random import RandomStream
from xlstm_backends.selection import (
    LIBRARIES,
    BackendError,
    available_backends,
    current_backend,
    get_backend,
    use_backend,
)
from xlstm_backends.transfer import asarray, library_of, to_numpy

__all__ = [
    "LIBRARIES",
    "Backend",
    "BackendError",
    "RandomStream",
    "asarray",
    "available_backends",
    "dtype_name",
    "float_dtype",
    "current_backend",
    "get_backend",
    "library_of",
    "to_numpy",
    "use_backend",
]
