"""Token ids on disk: a flat file of unsigned integers written in chunks, read back as a memory map.

The NumPy parts of `xlstm.data`'s streamed corpus: turning chunks of text into id arrays,
writing them, counting them and mapping them, so memory stays flat however long the text is.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy

UNSIGNED = ("uint8", "uint16", "uint32")
_CHUNK_TOKENS = 1 << 20  # ids read per piece when counting (bincount widens them to 8 bytes each)


def smallest_unsigned(vocabulary_size: int) -> str:
    """The narrowest of uint8, uint16, uint32 that holds the ids 0 .. vocabulary_size - 1."""
    for name in UNSIGNED:
        if vocabulary_size - 1 <= numpy.iinfo(name).max:
            return name
    raise ValueError(f"a vocabulary of {vocabulary_size} tokens does not fit in uint32 ids")


class CharEncoder:
    """Characters → ids through a table indexed by code point (the vocabulary's sorted characters)."""

    def __init__(self, characters: Sequence[str], dtype: str) -> None:
        code_points = numpy.array([ord(c) for c in characters], dtype=numpy.uint32)
        self._unknown = len(characters)
        self._table = numpy.full(int(code_points.max()) + 1, self._unknown, dtype=numpy.uint32)
        self._table[code_points] = numpy.arange(len(characters), dtype=numpy.uint32)
        self._dtype = dtype

    def __call__(self, text: str) -> numpy.ndarray:
        """The ids of the characters of `text`; a character outside the vocabulary is a ValueError."""
        code_points = numpy.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        inside = code_points < self._table.size
        ids = self._table[numpy.where(inside, code_points, 0)]
        unknown = ~inside | (ids == self._unknown)
        if unknown.any():
            position = int(numpy.argmax(unknown))
            raise ValueError(f"character {text[position]!r} is not in the vocabulary (the text changed while read?)")
        return ids.astype(self._dtype)


def word_ids(words: Sequence[str], index: dict[str, int], dtype: str) -> numpy.ndarray:
    """The ids of `words` by dictionary look-up (a KeyError names an unknown word)."""
    return numpy.fromiter((index[word] for word in words), dtype=dtype, count=len(words))


def write_token_file(path: str | os.PathLike, pieces: Iterable[numpy.ndarray]) -> int:
    """Write the id arrays `pieces` one after another to `path`, atomically; the number written.

    The pieces go to a temporary file beside `path` that replaces it only when complete.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(handle, "wb") as file:
            for piece in pieces:
                piece.tofile(file)
                count += piece.size
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count


def map_token_file(path: str | os.PathLike, dtype: str, count: int) -> numpy.ndarray:
    """The ids in `path` as a read-only memory map of `count` elements (pages load when touched)."""
    expected = count * numpy.dtype(dtype).itemsize
    actual = Path(path).stat().st_size
    if actual != expected:
        raise ValueError(f"token file {str(path)!r} has {actual} bytes, expected {expected} ({count} {dtype} ids)")
    return numpy.memmap(path, dtype=dtype, mode="r", shape=(count,))


def count_token_file(path: str | os.PathLike, dtype: str, stop: int, vocabulary_size: int) -> list[int]:
    """How often each id occurs among the first `stop` ids in `path`, read in pieces (never all mapped)."""
    counts = numpy.zeros(vocabulary_size, dtype=numpy.int64)
    with open(path, "rb") as file:
        for start in range(0, stop, _CHUNK_TOKENS):
            piece = numpy.fromfile(file, dtype=dtype, count=min(_CHUNK_TOKENS, stop - start))
            counts += numpy.bincount(piece, minlength=vocabulary_size)
    return counts.tolist()

