"""What every array library adapter provides: the standard namespace plus what the standard lacks."""
from __future__ import annotations

from typing import Any

import numpy


class Library:
    """Adapter for one array library; subclasses fill in the library-specific parts.

    The array API standard has no host transfer, no random numbers and no device
    synchronisation; each adapter supplies those so `xlstm/` never has to name a library.
    """

    name: str = ""
    description: str = ""

    def unavailable_reason(self) -> str | None:
        """None when the library can run here, otherwise one line saying why not."""
        raise NotImplementedError

    def namespace(self) -> Any:
        """The array-API-compatible namespace (`xp`) of this library."""
        raise NotImplementedError

    def parse_device(self, spec: Any) -> Any:
        """Turn a user's device spec (None, a string, an int) into this library's device."""
        raise NotImplementedError

    def owns(self, x: Any) -> bool:
        """Whether `x` is an array of this library."""
        raise NotImplementedError

    def to_host(self, x: Any) -> numpy.ndarray:
        """Copy an array of this library into a NumPy array on the host."""
        raise NotImplementedError

    def from_host(self, x: numpy.ndarray, device: Any) -> Any:
        """Copy a NumPy array onto `device` of this library."""
        raise NotImplementedError

    def synchronize(self, device: Any) -> None:
        """Wait until queued work on `device` has finished (for honest timings)."""

    def lstm_kernels(self) -> Any:
        """A module with fused `lstm_forward`/`lstm_backward` for this library, or None.

        None means xlstm runs its generic array-API code, which every library supports.
        """
        return None
