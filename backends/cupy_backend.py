"""CuPy through array-api-compat: the CUDA GPU backend.

`import cupy` succeeds on machines without a GPU; only `cupy.is_available()` tells
whether it can actually run, so that is what decides usability.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy

from xlstm_backends.library import Library


class CupyLibrary(Library):
    name = "cupy"
    description = "CuPy via array-api-compat (CUDA device index)"

    def unavailable_reason(self) -> str | None:
        try:
            import cupy
        except ImportError:
            return "cupy is not installed (pip install 'xlstm-array[cupy]')"
        try:
            if not cupy.is_available():
                return "cupy is installed but finds no usable CUDA GPU"
        except Exception as error:  # a broken driver or toolkit reports itself in many ways
            return f"cupy is installed but CUDA failed: {error}"
        return None

    def namespace(self) -> Any:
        import array_api_compat.cupy

        return array_api_compat.cupy

    def parse_device(self, spec: Any) -> Any:
        import cupy

        text = "0" if spec is None else str(spec).removeprefix("cuda:").removeprefix("gpu:")
        count = cupy.cuda.runtime.getDeviceCount()
        if not text.isdigit() or int(text) >= count:
            raise ValueError(
                f"device for backend 'cupy' must be a GPU index below {count} (like 0 or 'cuda:0'), got {spec!r}"
            )
        return cupy.cuda.Device(int(text))

    def owns(self, x: Any) -> bool:
        cupy = sys.modules.get("cupy")  # no CuPy array can exist before cupy is imported
        return cupy is not None and isinstance(x, cupy.ndarray)

    def to_host(self, x: Any) -> numpy.ndarray:
        return x.get()

    def from_host(self, x: numpy.ndarray, device: Any) -> Any:
        import cupy

        with device:
            return cupy.asarray(x)

    def synchronize(self, device: Any) -> None:
        device.synchronize()

    def scatter_add_rows(self, num_rows: int, ids: Any, values: Any) -> Any:
        """`cupyx.scatter_add`: atomic adds of the rows of values into a zero table at ids."""
        import cupy
        import cupyx

        with values.device:
            total = cupy.zeros((num_rows, values.shape[1]), dtype=values.dtype)
        cupyx.scatter_add(total, ids, values)
        return total

    def lstm_kernels(self) -> Any:
        from xlstm_backends import cupy_kernels

        return cupy_kernels
