"""NumPy, through array-api-compat: the default backend, CPU only."""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import numpy

from xlstm_backends.library import Library

KERNELS_VARIABLE = "XLSTM_KERNELS"
KERNEL_CHOICES = ("numba", "numpy")  # the first one that can run is the default
FAST_EXTRA = ("numba", "scipy")  # what the compiled kernels import beyond the base install (the `fast` extra)


class NumpyLibrary(Library):
    name = "numpy"

    @property
    def description(self) -> str:
        """What the backend is and which LSTM kernels it runs (`python -m xlstm backends` prints it)."""
        try:
            kernels = self.lstm_kernels().DESCRIPTION
            layer_norm = self.lstm_layer_norm_kernels()
        except ValueError as error:  # a bad XLSTM_KERNELS: say so here too
            return f"NumPy via array-api-compat (CPU); LSTM: {error}"
        return f"NumPy via array-api-compat (CPU); LSTM: {kernels}; layer-norm LSTM: {layer_norm.DESCRIPTION}"

    def unavailable_reason(self) -> str | None:
        return None

    def namespace(self) -> Any:
        import array_api_compat.numpy

        return array_api_compat.numpy

    def parse_device(self, spec: Any) -> Any:
        if spec not in (None, "cpu"):
            raise ValueError(f"device for backend 'numpy' must be 'cpu', got {spec!r}")
        return "cpu"

    def owns(self, x: Any) -> bool:
        return isinstance(x, (numpy.ndarray, numpy.generic))

    def to_host(self, x: Any) -> numpy.ndarray:
        return numpy.asarray(x)

    def from_host(self, x: numpy.ndarray, device: Any) -> Any:
        return numpy.array(x, copy=True)

    def scatter_add_rows(self, num_rows: int, ids: Any, values: Any) -> Any:
        """Sort the ids, sum each run of equal ids with one `add.reduceat`, write the sums.

        Measured 1.5-2x faster than `numpy.add.at` at N = 2048, E = 32 (README).
        """
        order = numpy.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        starts = numpy.flatnonzero(numpy.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
        total = numpy.zeros((num_rows, values.shape[1]), dtype=values.dtype)
        if starts.size:
            total[sorted_ids[starts]] = numpy.add.reduceat(values[order], starts, axis=0)
        return total

    def lstm_kernels(self) -> Any:
        """The compiled kernels when numba is installed (the `fast` extra), else the NumPy ones;
        XLSTM_KERNELS=numpy or =numba picks one (asking for numba without it is an error)."""
        choice = kernel_choice()
        if choice == "numba":
            from xlstm_backends import numba_kernels

            return numba_kernels
        from xlstm_backends import numpy_kernels

        return numpy_kernels

    def lstm_layer_norm_kernels(self) -> Any:
        """The layer-norm kernels of the same choice as `lstm_kernels`: the compiled ones with the `fast`
        extra (unless XLSTM_KERNELS=numpy), else the NumPy ones."""
        if kernel_choice() == "numba":
            from xlstm_backends import numba_layer_norm

            return numba_layer_norm
        from xlstm_backends import numpy_layer_norm

        return numpy_layer_norm


@functools.cache
def _missing_fast_extra() -> tuple[str, ...]:
    """The packages of the `fast` extra that are not installed; asked once per process, since
    find_spec takes ~60 µs a package, a third of a tiny LSTM's whole forward pass."""
    return tuple(name for name in FAST_EXTRA if importlib.util.find_spec(name) is None)


def kernel_choice() -> str:
    """'numba' or 'numpy': which fused kernels the numpy backend runs (see `lstm_kernels`)."""
    asked = os.environ.get(KERNELS_VARIABLE, "").strip().lower()
    if asked and asked not in KERNEL_CHOICES:
        raise ValueError(f"{KERNELS_VARIABLE} must be one of {KERNEL_CHOICES}, got {asked!r}")
    missing = _missing_fast_extra()
    if asked == "numba" and missing:
        raise ValueError(f"{KERNELS_VARIABLE}=numba needs {', '.join(missing)}, not installed: "
                         "pip install 'xlstm-array[fast]'")
    if asked:
        return asked
    return "numpy" if missing else "numba"
