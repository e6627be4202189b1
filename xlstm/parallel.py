"""Data parallelism in array-API terms: who takes which rows, and one flat buffer per step.

N ranks compute exactly what one process computes on the global batch: rank r takes row
block r of every batch, its gradients are packed into one flat buffer, summed over the
ranks in one allreduce and divided by N (the mean over equal row blocks is the mean over
the batch). Carried LSTM states are gathered into the global state for checkpoints and
split again on resume, so a run may continue on another number of ranks.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from xlstm_backends import Communicator, asarray, dtype_name, to_numpy
from xlstm import flat
from xlstm.checks import check_positive_int, namespace_of
from xlstm.flat import Slot


def pack(arrays: dict[str, Any]) -> tuple[Any, list[Slot]]:
    """One flat buffer holding every array of `arrays` (one dtype, one backend) in order,
    and the slots that `unpack` needs to cut it back."""
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError("arrays must be a non-empty dict of named arrays")
    xp = namespace_of(**{f"arrays[{name!r}]": value for name, value in arrays.items()})
    dtypes = {name: dtype_name(value.dtype) for name, value in arrays.items()}
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"arrays must share one dtype to travel in one buffer, got {dtypes}")
    slots = flat.layout(arrays)
    return flat.concat(xp, arrays, slots), slots


def unpack(buffer: Any, slots: list[Slot]) -> dict[str, Any]:
    """The named arrays of a buffer made by `pack` (views where the library allows)."""
    xp = namespace_of(buffer=buffer)
    expected = slots[-1].stop if slots else 0
    if buffer.ndim != 1 or buffer.shape[0] != expected:
        raise ValueError(f"buffer must be flat with {expected} elements (the packed slots), got shape {buffer.shape}")
    return flat.views(xp, buffer, slots)


def average_over_ranks(arrays: dict[str, Any], communicator: Communicator) -> dict[str, Any]:
    """The mean over all ranks of each named array (gradients, the loss), in one allreduce."""
    if communicator.size == 1:
        return arrays
    buffer, slots = pack(arrays)
    return unpack(communicator.allreduce_sum(buffer) / float(communicator.size), slots)


def row_block(batch_size: int, rank: int, size: int) -> slice:
    """The rows of a global batch that rank `rank` of `size` trains on: equal contiguous blocks,
    so the ranks' mean gradients average to the global batch's exactly."""
    check_positive_int("batch_size", batch_size)
    _check_rank(rank, size)
    if batch_size % size:
        raise ValueError(f"--batch-size {batch_size} is the global batch and must divide evenly among {size} "
                         f"ranks; use a multiple of {size}")
    rows = batch_size // size
    return slice(rank * rows, (rank + 1) * rows)


def share_rows(num_rows: int, rank: int, size: int) -> slice:
    """Rank `rank`'s share of `num_rows` rows when they need not divide evenly (evaluation):
    contiguous blocks whose sizes differ by at most one; some may be empty."""
    _check_rank(rank, size)
    return slice(rank * num_rows // size, (rank + 1) * num_rows // size)


def split_state(state: Any, rows: slice) -> Any:
    """The given rows of a carried state (a tuple of `LSTMState`s of [B, H] arrays, or None)."""
    if state is None:
        return None
    return _map_state(state, lambda x: x[rows, ...])


def concat_states(states: list[Any]) -> Any:
    """The global state from the ranks' states in rank order (their rows stacked)."""
    if any(state is None for state in states):
        return None
    return _combine(states, lambda arrays: namespace_of(state=arrays[0]).concat(list(arrays), axis=0))


def gather_state(state: Any, communicator: Communicator, backend: Any) -> Any:
    """On rank 0, the global carried state (ranks' rows in rank order) on `backend`; None elsewhere.

    States travel through host memory: a gather is once per checkpoint, not per step.
    """
    if communicator.size == 1:
        return state
    host = None if state is None else _map_state(state, to_numpy)
    gathered = communicator.gather(host)
    if gathered is None:
        return None
    return concat_states([None if part is None else _map_state(part, lambda x: asarray(x, backend=backend))
                          for part in gathered])


def local_loss_sum(loss: Callable[[Any, Any, Any], tuple[Any, Any]], windows: Iterable[tuple[Any, Any]],
                   rows: slice) -> tuple[float, int]:
    """Σ over windows of (mean loss of this rank's rows × their number) and the number of rows
    summed, the state carried across windows; with `mean_over_ranks` it reproduces the mean of
    per-window mean losses of one process evaluating every row."""
    total, count, state = 0.0, 0, None
    for inputs, targets in windows:
        inputs, targets = inputs[rows, ...], targets[rows, ...]
        if inputs.shape[0] == 0:
            continue
        value, state = loss(inputs, targets, state)
        total += float(to_numpy(value)) * inputs.shape[0]
        count += inputs.shape[0]
    return total, count


def mean_over_ranks(total: float, count: int, communicator: Communicator) -> float:
    """Σ totals / Σ counts over all ranks (one allreduce of two float64 numbers)."""
    if communicator.size > 1:
        summed = to_numpy(communicator.allreduce_sum(asarray([total, float(count)], dtype="float64",
                                                             backend="numpy")))
        total, count = float(summed[0]), float(summed[1])
    return total / count


def _map_state(state: Any, function: Callable[[Any], Any]) -> Any:
    """`function` applied to every array of a (nested, possibly named) tuple state."""
    return _combine([state], lambda arrays: function(arrays[0]))


def _combine(states: list[Any], function: Callable[[list[Any]], Any]) -> Any:
    """States of one structure (nested, possibly named tuples) merged position by position:
    `function` gets the list of arrays found at each position."""
    first = states[0]
    if not isinstance(first, tuple):
        return function(states)
    parts = [_combine([state[k] for state in states], function) for k in range(len(first))]
    return type(first)(*parts) if hasattr(first, "_fields") else tuple(parts)


def _check_rank(rank: int, size: int) -> None:
    check_positive_int("size", size)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < size:
        raise ValueError(f"rank must be an integer in 0..{size - 1}, got {rank!r}")
