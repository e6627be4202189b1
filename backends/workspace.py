"""Reusable host memory for the fused NumPy kernels: large buffers without fresh pages.

A new NumPy array of many megabytes is new memory from the operating system, and the
first write to each of its pages is a page fault. At the benchmark's medium shape the
training step's forward pass spent about as long faulting in its 25 MB of buffers as
computing. `empty` hands out views of blocks kept from earlier calls instead. A block is
reused only when nothing refers to it any more (its CPython reference count says so:
every view of it, however derived, holds a reference to it), so an array a caller still
holds is never overwritten.
"""
from __future__ import annotations

import math
import sys
import threading

import numpy

SMALL_BYTES = 1 << 16  # below this, numpy.empty is cheap enough: no pooling
KEEP_FREE_BYTES = 256 << 20  # free blocks beyond this are released when the pool grows, least recently used first
_UNREFERENCED = 2  # sys.getrefcount(blocks[k]) of a free block: the list's reference and the argument's


class Workspace:
    """A pool of byte blocks, handed out as arrays with `empty(shape, dtype)`."""

    def __init__(self, keep_free_bytes: int = KEEP_FREE_BYTES) -> None:
        self.keep_free_bytes = keep_free_bytes
        self._blocks: list[numpy.ndarray] = []  # 1-D uint8, least recently used first
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: numpy.dtype | type) -> numpy.ndarray:
        """Like `numpy.empty(shape, dtype)`, but large arrays reuse memory nobody holds any more."""
        dtype = numpy.dtype(dtype)
        size = math.prod(shape) * dtype.itemsize
        if size < SMALL_BYTES:
            return numpy.empty(shape, dtype)
        with self._lock:
            block = self._free_block(size)
            grown = block is None
            if grown:
                block = numpy.empty(size, numpy.uint8)
            self._blocks.append(block)  # most recently used last
            array = block[:size].view(dtype).reshape(shape)
            del block
            if grown:  # taking a free block only shrinks the free bytes: nothing to release then
                self._release_surplus()
        return array

    def _free_block(self, size: int) -> numpy.ndarray | None:
        """Take out of the pool the smallest free block holding `size` bytes (at most twice that)."""
        fitting = [k for k in range(len(self._blocks))
                   if size <= self._blocks[k].nbytes <= 2 * size and sys.getrefcount(self._blocks[k]) == _UNREFERENCED]
        if not fitting:
            return None
        return self._blocks.pop(min(fitting, key=lambda k: self._blocks[k].nbytes))

    def _release_surplus(self) -> None:
        """Drop the least recently used free blocks until the free ones fit `keep_free_bytes`."""
        free = [k for k in range(len(self._blocks)) if sys.getrefcount(self._blocks[k]) == _UNREFERENCED]
        surplus = sum(self._blocks[k].nbytes for k in free) - self.keep_free_bytes
        for k in free:
            if surplus <= 0:
                break
            surplus -= self._blocks[k].nbytes
            self._blocks[k] = None  # removed below, after the indices are no longer needed
        self._blocks = [block for block in self._blocks if block is not None]

    def held_bytes(self) -> int:
        """Bytes of every block the pool keeps, free or in use."""
        with self._lock:
            return sum(block.nbytes for block in self._blocks)


WORKSPACE = Workspace()
