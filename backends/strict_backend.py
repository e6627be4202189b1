"""array_api_strict: the standard's reference library, used to prove the code is portable.

Its extra devices (`device1`, ...) refuse to mix with the default one, which lets the
tests exercise device transfers and device-mixing errors without a GPU.
"""
from __future__ import annotations

from typing import Any

import numpy

from xlstm_backends.library import Library


class StrictLibrary(Library):
    name = "array_api_strict"
    description = "the array API standard's strict reference library (tests)"

    def unavailable_reason(self) -> str | None:
        try:
            import array_api_strict  # noqa: F401
        except ImportError:
            return "array_api_strict is not installed (pip install array-api-strict)"
        return None

    def namespace(self) -> Any:
        import array_api_strict

        return array_api_strict

    def parse_device(self, spec: Any) -> Any:
        import array_api_strict

        devices = array_api_strict.__array_namespace_info__().devices()
        if spec is None:
            return array_api_strict.__array_namespace_info__().default_device()
        if spec in devices:
            return spec
        by_name = {str(d).split("'")[1]: d for d in devices}
        if spec in by_name:
            return by_name[spec]
        raise ValueError(
            f"device for backend 'array_api_strict' must be one of {sorted(by_name)}, got {spec!r}"
        )

    def owns(self, x: Any) -> bool:
        return type(x).__module__.startswith("array_api_strict")

    def to_host(self, x: Any) -> numpy.ndarray:
        import array_api_strict

        cpu = array_api_strict.__array_namespace_info__().default_device()
        return numpy.asarray(x.to_device(cpu)).copy()

    def from_host(self, x: numpy.ndarray, device: Any) -> Any:
        import array_api_strict

        return array_api_strict.asarray(numpy.array(x, copy=True), device=device)
