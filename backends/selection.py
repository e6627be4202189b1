"""Which backend computations run on: `XLSTM_BACKEND` / `XLSTM_DEVICE`, or `use_backend`."""
from __future__ import annotations

import os
from typing import Any

from xlstm_backends.backend import Backend
from xlstm_backends.cupy_backend import CupyLibrary
from xlstm_backends.library import Library
from xlstm_backends.numpy_backend import NumpyLibrary
from xlstm_backends.strict_backend import StrictLibrary
from xlstm_backends.torch_backend import TorchLibrary

LIBRARIES: dict[str, Library] = {
    library.name: library for library in (NumpyLibrary(), CupyLibrary(), TorchLibrary(), StrictLibrary())
}
DEFAULT_BACKEND = "numpy"


class BackendError(ValueError):
    """An unknown or unusable backend or device was asked for."""


def available_backends() -> dict[str, str | None]:
    """Every known backend mapped to None when usable here, or to the reason it is not."""
    return {name: library.unavailable_reason() for name, library in LIBRARIES.items()}


def get_backend(name: str | Backend | None = None, device: Any = None) -> Backend:
    """The Backend for `name` on `device`; None means the current one."""
    if isinstance(name, Backend):
        return name if device is None else get_backend(name.name, device)
    if name is None:
        current = current_backend()
        return current if device is None else get_backend(current.name, device)
    if name not in LIBRARIES:
        raise BackendError(f"unknown backend {name!r}; {_usable_list()}")
    library = LIBRARIES[name]
    reason = library.unavailable_reason()
    if reason is not None:
        raise BackendError(f"backend {name!r} is not usable: {reason}; {_usable_list()}")
    try:
        parsed_device = library.parse_device(device)
    except ValueError as error:
        raise BackendError(str(error)) from None
    return Backend(name=name, xp=library.namespace(), device=parsed_device, library=library)


def _usable_list() -> str:
    usable = [name for name, reason in available_backends().items() if reason is None]
    return "usable backends: " + ", ".join(usable)


_current: Backend | None = None


def current_backend() -> Backend:
    """The backend new arrays and models go to (first call reads XLSTM_BACKEND/XLSTM_DEVICE)."""
    global _current
    if _current is None:
        name = os.environ.get("XLSTM_BACKEND", "").strip() or DEFAULT_BACKEND
        device = os.environ.get("XLSTM_DEVICE", "").strip() or None
        try:
            _current = get_backend(name, device)
        except BackendError as error:
            raise BackendError(f"XLSTM_BACKEND={name!r}" + (f" XLSTM_DEVICE={device!r}" if device else "")
                               + f": {error}") from None
    return _current


class use_backend:
    """Switch the current backend; as a context manager, switch back on exit.

    `xlstm.use_backend("cupy")` switches for the rest of the program;
    `with xlstm.use_backend("array_api_strict", device="device1"): ...` only inside the block.
    """

    def __init__(self, name: str | Backend, device: Any = None) -> None:
        global _current
        self._previous = _current
        self.backend = get_backend(name, device)
        _current = self.backend

    def __enter__(self) -> Backend:
        return self.backend

    def __exit__(self, *exc_info: object) -> None:
        global _current
        _current = self._previous
