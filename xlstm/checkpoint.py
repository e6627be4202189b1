"""Training checkpoints of a CharLM: model, optimiser state, vocabulary, configuration,
random-number states, the carried LSTM state, the step and the loss history, in one
`.npz` file written atomically (see `xlstm_backends.storage`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlstm_backends import Backend, asarray, dtype_name, get_backend, to_numpy
from xlstm_backends.storage import StorageError, read_arrays, write_arrays
from xlstm.data import Vocabulary
from xlstm.models import CharLM

FORMAT = "xlstm-charlm-checkpoint"
VERSION = 1
FILE_NAME = "checkpoint.npz"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, truncated, foreign or too new."""


@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly where it stopped, or to sample."""

    model: CharLM
    vocabulary: Vocabulary
    training: dict[str, Any]  # the run's configuration (flags)
    step: int  # optimiser steps taken
    optimizer_state: dict[str, Any] | None
    carried_state: tuple | None  # the state entering the next window, one per layer
    history: list[dict[str, Any]]


def checkpoint_path(location: str | os.PathLike) -> Path:
    """The checkpoint file of a run folder, or `location` itself when it is a file."""
    location = Path(location)
    return location / FILE_NAME if location.is_dir() else location


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Write `checkpoint` to `path` atomically: a crash mid-write keeps the old file."""
    model = checkpoint.model
    arrays = {f"model/{name}": to_numpy(value) for name, value in model.parameters().items()}
    optimizer_header = None
    if checkpoint.optimizer_state is not None:
        state = checkpoint.optimizer_state
        for name, buffers in state["state"].items():
            arrays.update({f"optimizer/{name}/{buffer}": to_numpy(value) for buffer, value in buffers.items()})
        optimizer_header = {key: state[key] for key in ("optimizer", "hyperparameters", "step")}
    if checkpoint.carried_state is not None:
        for k, layer in enumerate(checkpoint.carried_state):  # one state per layer: its fields by name
            arrays.update({f"carried/{k}/{field}": to_numpy(value) for field, value in zip(layer._fields, layer)})
    header = {
        "format": FORMAT, "version": VERSION,
        "model": {**model.config(), "dtype": dtype_name(model.dtype)},
        "dropout_random_states": [cell.random_state() for cell in model.stack.cells],
        "vocabulary": checkpoint.vocabulary.to_dict(),
        "training": checkpoint.training, "step": checkpoint.step,
        "optimizer": optimizer_header, "history": checkpoint.history,
    }
    write_arrays(path, header, arrays)


def load_checkpoint(path: str | os.PathLike, backend: str | Backend | None = None, device: Any = None) -> Checkpoint:
    """Read a checkpoint (a file, or a run folder holding one) onto a backend and device."""
    path = checkpoint_path(path)
    try:
        header, arrays = read_arrays(path)
    except StorageError as error:
        raise CheckpointError(str(error)) from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an xlstm CharLM checkpoint (format {header.get('format')!r})")
    if not isinstance(header.get("version"), int) or header["version"] > VERSION:
        raise CheckpointError(f"{path} has format version {header.get('version')!r}; this xlstm reads "
                              f"versions up to {VERSION}: upgrade xlstm to read it")
    try:
        return _rebuild(header, arrays, get_backend(backend, device))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is damaged: {type(error).__name__}: {error}") from None


def _rebuild(header: dict, arrays: dict, backend: Backend) -> Checkpoint:
    """The Checkpoint described by a header and its arrays (KeyError/ValueError when damaged)."""
    settings = dict(header["model"])
    model = CharLM(**{**settings, "dtype": settings.pop("dtype")}, backend=backend)
    model.set_parameters({name: arrays[f"model/{name}"] for name in model.parameters()})
    for cell, state in zip(model.stack.cells, header["dropout_random_states"]):
        cell.set_random_state(state)
    optimizer_state = None
    if header["optimizer"] is not None:
        buffers: dict[str, dict[str, Any]] = {}
        for key, value in arrays.items():
            if key.startswith("optimizer/"):
                name, buffer = key.removeprefix("optimizer/").rsplit("/", 1)
                buffers.setdefault(name, {})[buffer] = asarray(value, backend=backend)
        optimizer_state = {**header["optimizer"], "state": buffers}
    carried = None
    if any(key.startswith("carried/") for key in arrays):
        zero_states = model.zero_state(1)  # each layer's state type
        carried = tuple(type(zero)(*(asarray(arrays[f"carried/{k}/{field}"], backend=backend) for field in zero._fields))
                        for k, zero in enumerate(zero_states))
    return Checkpoint(model, Vocabulary.from_dict(header["vocabulary"]), header["training"], int(header["step"]),
                      optimizer_state, carried, list(header["history"]))

