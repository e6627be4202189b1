"""`save` and `load`: a model (cell, stack, sequence layers, Dense, CharLM) in one `.npz` file.

The file holds the arrays on the host, named like the object's `parameters()`, and a JSON
header: format name and version, and the object's class tree with each node's
configuration, dtype and dropout random states. `load` rebuilds the tree on any backend
and device with the same bits, the same forward behaviour and the same dropout masks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from xlstm_backends import Backend, asarray, dtype_name, get_backend, to_numpy
from xlstm_backends.storage import StorageError, read_arrays, write_arrays
from xlstm.cell import LSTMCell
from xlstm.dense import Dense
from xlstm.mlstm import MLSTMCell
from xlstm.models import CharLM
from xlstm.sequence import LSTM, Bidirectional, Reversed
from xlstm.slstm import SLSTMCell
from xlstm.stack import MultiRNNCell

FORMAT = "xlstm-model"
VERSION = 1


class ModelFileError(ValueError):
    """A model file that cannot be loaded: missing, corrupt, truncated, foreign, too new or damaged."""


@dataclass(frozen=True)
class _Container:
    """How a class that only holds other objects is taken apart and put back together."""

    children: Callable[[Any], list]  # the held objects, in order
    prefix: Callable[[int], str]  # child k's prefix in the holder's parameters() names
    build: Callable[[list], Any]  # the holder, from its rebuilt children


_CONTAINERS: dict[type, _Container] = {
    MultiRNNCell: _Container(lambda o: o.cells, lambda k: f"cell_{k}/", MultiRNNCell),
    Reversed: _Container(lambda o: [o.cell], lambda k: "", lambda children: Reversed(*children)),
    Bidirectional: _Container(lambda o: [o.cell_fw, o.cell_bw], lambda k: ("fw/", "bw/")[k],
                              lambda children: Bidirectional(*children)),
    LSTM: _Container(lambda o: o.layers, lambda k: f"layer_{k}/", LSTM),
}
# Objects that own arrays: rebuilt from config(), dtype and backend, then given their arrays.
_LEAVES = (LSTMCell, SLSTMCell, MLSTMCell, Dense, CharLM)
_CLASSES = {cls.__name__: cls for cls in [*_LEAVES, *_CONTAINERS]}


def save(obj: Any, path: str | os.PathLike) -> None:
    """Write `obj` (LSTMCell, SLSTMCell, Dense, MultiRNNCell, Reversed, Bidirectional, LSTM or CharLM)
    to `path` atomically: an unsupported object or a failed write leaves `path` as it was."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if Path(path).is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; give a file name inside it, "
                         f"e.g. {str(Path(path) / 'model.npz')!r}")
    tree, arrays = _encode(obj, "", "obj")
    write_arrays(path, {"format": FORMAT, "version": VERSION, "object": tree}, arrays)


def load(path: str | os.PathLike, backend: str | Backend | None = None, device: Any = None) -> Any:
    """The object saved in `path`, rebuilt on `backend` and `device` (default: the current ones).

    Raises ModelFileError (a ValueError) naming the file and what is wrong with it.
    """
    try:
        header, arrays = read_arrays(path)
    except StorageError as error:
        raise ModelFileError(str(error)) from None
    if header.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an xlstm model file (format {header.get('format')!r}, "
                             f"expected {FORMAT!r})")
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path} is damaged: format version {version!r} is not a positive integer")
    if version > VERSION:
        raise ModelFileError(f"{path} has format version {version}; this xlstm reads versions up to "
                             f"{VERSION}: upgrade xlstm to read it")
    target = get_backend(backend, device)
    used: set[str] = set()
    try:
        obj = _decode(header.get("object"), arrays, "", target, used)
    except ModelFileError as error:
        raise ModelFileError(f"{path} is damaged: {error}") from None
    except (LookupError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path} is damaged: {type(error).__name__}: {error}") from None
    if set(arrays) - used:
        raise ModelFileError(f"{path} is damaged: arrays {sorted(set(arrays) - used)} belong to no object")
    return obj


def _encode(obj: Any, prefix: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header node of `obj` and its host arrays, named `prefix` + parameter name."""
    container = _CONTAINERS.get(type(obj))
    if container is not None:
        nodes, arrays = [], {}
        for k, child in enumerate(container.children(obj)):
            node, child_arrays = _encode(child, prefix + container.prefix(k), f"{name}[{k}]")
            nodes.append(node)
            arrays.update(child_arrays)
        return {"class": type(obj).__name__, "children": nodes}, arrays
    if type(obj) not in _LEAVES:
        raise TypeError(f"{name} must be one of {', '.join(_CLASSES)} to be saved, got {type(obj).__name__}")
    node = {"class": type(obj).__name__, "config": obj.config(), "dtype": dtype_name(obj.dtype),
            "random_states": [cell.random_state() for cell in _dropout_cells(obj)]}
    return node, {prefix + key: to_numpy(value) for key, value in obj.parameters().items()}


def _decode(node: Any, arrays: dict[str, Any], prefix: str, backend: Backend, used: set[str]) -> Any:
    """The object a header node describes, its arrays taken from `arrays` (names added to `used`)."""
    if not isinstance(node, dict) or node.get("class") not in _CLASSES:
        raise ModelFileError(f"the object tree has {node!r} where a node with a known class "
                             f"({', '.join(_CLASSES)}) was expected")
    cls = _CLASSES[node["class"]]
    if cls in _CONTAINERS:
        container = _CONTAINERS[cls]
        return container.build([_decode(child, arrays, prefix + container.prefix(k), backend, used)
                                for k, child in enumerate(node["children"])])
    obj = cls(**node["config"], dtype=node["dtype"], backend=backend)
    stored = {}
    for key, current in obj.parameters().items():
        stored[key] = _stored_array(arrays, prefix + key, tuple(current.shape), node["dtype"])
        used.add(prefix + key)
    _set_parameters(obj, stored)
    cells = _dropout_cells(obj)
    if len(node["random_states"]) != len(cells):
        raise ModelFileError(f"{node['class']} at array prefix {prefix!r} has {len(node['random_states'])} "
                             f"dropout random states, expected {len(cells)}")
    for cell, state in zip(cells, node["random_states"]):
        cell.set_random_state(state)
    return obj


def _stored_array(arrays: dict[str, Any], key: str, shape: tuple[int, ...], dtype: str) -> Any:
    """The host array `key`, checked to have the shape and dtype the configuration implies."""
    if key not in arrays:
        raise ModelFileError(f"the array {key!r} is missing")
    array = arrays[key]
    if tuple(array.shape) != shape or dtype_name(array.dtype) != dtype:
        raise ModelFileError(f"the array {key!r} is {dtype_name(array.dtype)} of shape {list(array.shape)}, "
                             f"expected {dtype} of shape {list(shape)}")
    return array


def _set_parameters(obj: Any, host_arrays: dict[str, Any]) -> None:
    """Give a freshly built leaf its saved arrays, placed on its backend and device."""
    placed = {key: asarray(value, dtype=obj.dtype, backend=obj.backend) for key, value in host_arrays.items()}
    if isinstance(obj, CharLM):
        obj.set_parameters(placed)
    else:  # LSTMCell and Dense keep each parameter in the attribute of its name
        for key, value in placed.items():
            setattr(obj, key, value)


def _dropout_cells(obj: Any) -> list[LSTMCell]:
    """The cells of a leaf whose dropout streams must survive the round trip."""
    if isinstance(obj, LSTMCell):
        return [obj]
    return list(obj.stack.cells) if isinstance(obj, CharLM) else []
