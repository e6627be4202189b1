"""Files of arrays: one `.npz` holding named host arrays plus a JSON header, written atomically.

A write goes to a temporary file in the same folder, is flushed to disk, and only then
replaces the target: a crash mid-write leaves the previous file whole.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy

HEADER_KEY = "__header__"


class StorageError(ValueError):
    """A file that is missing, corrupt, truncated or not one of ours."""


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(file)` on a temporary file beside `path`, flush it to disk, then move it
    into place: readers see the old file or the new one, never half of one."""
    path = Path(path)
    mode = _file_mode(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temporary, mode)  # mkstemp makes files private (0600); a saved file should not be
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _file_mode(path: Path) -> int:
    """The permissions `path` should get: those it has, else what the umask allows a new file."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_arrays(path: str | os.PathLike, header: dict[str, Any], arrays: dict[str, Any]) -> None:
    """Write `arrays` (NumPy arrays) and the JSON-able `header` to `path`, atomically."""
    if HEADER_KEY in arrays:
        raise ValueError(f"arrays must not use the reserved name {HEADER_KEY!r}")
    encoded_header = numpy.frombuffer(json.dumps(header).encode("utf-8"), dtype=numpy.uint8)
    contents = {HEADER_KEY: encoded_header, **{k: numpy.asarray(v) for k, v in arrays.items()}}
    write_atomically(path, lambda file: numpy.savez(file, **contents))


def read_arrays(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, numpy.ndarray]]:
    """(header, arrays) from a file written by `write_arrays`; StorageError when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"{path} does not exist or is not a file")
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as error:
        raise StorageError(f"{path} is corrupt or truncated ({type(error).__name__}: {error})") from None
    if HEADER_KEY not in contents:
        raise StorageError(f"{path} is not an xlstm file (it has no {HEADER_KEY!r} entry)")
    try:
        header = json.loads(contents.pop(HEADER_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StorageError(f"{path} has a corrupt header ({error})") from None
    if not isinstance(header, dict):
        raise StorageError(f"{path} has a corrupt header (not a JSON object)")
    return header, contents
