"""Many named arrays in one flat buffer, and back: the layout the optimisers and the
allreduce of data parallelism share.

A step that treats every parameter alike (Adam, clipping, an allreduce) costs one pass over
one buffer instead of a dozen small calls per parameter. `concat` copies the arrays into a
new buffer once; `views` cuts a buffer back into arrays of the original shapes without
copying (reshapes of contiguous slices). Neither checks its arguments: their callers do.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple


class Slot(NamedTuple):
    """Where one named array lies in a packed buffer."""

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int


def layout(arrays: dict[str, Any]) -> list[Slot]:
    """The slots of `arrays`, in their order, one after another."""
    slots, start = [], 0
    for name, value in arrays.items():
        size = math.prod(value.shape)
        slots.append(Slot(name, tuple(value.shape), start, start + size))
        start += size
    return slots


def concat(xp: Any, arrays: dict[str, Any], slots: list[Slot]) -> Any:
    """One new flat buffer holding arrays[slot.name] for every slot, in order (one dtype)."""
    return xp.concat([xp.reshape(arrays[slot.name], (-1,)) for slot in slots])


def views(xp: Any, buffer: Any, slots: list[Slot]) -> dict[str, Any]:
    """The named arrays of a flat buffer (views where the library allows)."""
    return {slot.name: xp.reshape(buffer[slot.start:slot.stop], slot.shape) for slot in slots}
