"""Seeded random numbers, which the array API standard does not have.

Numbers are drawn on the host with NumPy's PCG64 in float64 and then placed on the
backend's device: the same seed gives the same numbers on every backend and device.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy

if TYPE_CHECKING:
    from xlstm_backends.backend import Backend


class RandomStream:
    """A seeded stream of random arrays for one backend; `seed=None` draws fresh entropy.

    `stream` tells apart independent streams made from one seed (say, weight
    initialisation and dropout masks), so they never share numbers.
    """

    def __init__(self, backend: "Backend", seed: int | None = None, stream: int = 0) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self.backend = backend
        sequence = numpy.random.SeedSequence(seed, spawn_key=(stream,))
        self._generator = numpy.random.Generator(numpy.random.PCG64(sequence))

    def uniform(self, shape: tuple[int, ...], low: float, high: float, dtype: Any) -> Any:
        """Uniform numbers in [low, high) of the given shape and dtype."""
        return self._place(self._generator.uniform(low, high, size=shape), dtype)

    def normal(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """Standard normal numbers of the given shape and dtype."""
        return self._place(self._generator.standard_normal(size=shape), dtype)

    def _place(self, values: numpy.ndarray, dtype: Any) -> Any:
        xp = self.backend.xp
        return xp.astype(self.backend.from_host(values), dtype)

    def state(self) -> dict:
        """The generator's state, to save in a checkpoint."""
        return self._generator.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Restore a state returned by `state()`."""
        self._generator.bit_generator.state = state
