"""NumPy, through array-api-compat: the default backend, CPU only."""
from __future__ import annotations

from typing import Any

import numpy

from xlstm_backends.library import Library


class NumpyLibrary(Library):
    name = "numpy"
    description = "NumPy via array-api-compat (CPU)"

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
        from xlstm_backends import numpy_kernels

        return numpy_kernels
