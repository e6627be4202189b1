"""`TableRows`: an LSTM's inputs given as rows of a table, the way an embedding lookup feeds one.

Passed as `inputs` to `dynamic_rnn` or `dynamic_rnn_vjp`, the cell reads input (t, b) as
table[ids[t, b]], and the backward pass returns the table's gradient instead of one gradient per
position. That lets a library kernel skip the per-position input gradient altogether: the
gradient reaching a table row is the sum of the pre-activation gradients of the positions that
read it, times W_x, so it can sum those [4H] rows by id first and multiply once per table row.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from xlstm.checks import check_integer, check_range, check_shape, namespace_of


class TableRows(NamedTuple):
    """Inputs table[ids]: table [V, I], integer ids [B, T] ([T, B] when the call is time-major)."""

    table: Any
    ids: Any


class LookedUp(NamedTuple):
    """What `look_up` gives the time loop: the inputs and, for the backward pass, where they came from."""

    inputs: Any  # [T, B, I], time-major
    table: Any  # [V, I]
    flat_ids: Any  # [T·B], row t·B + b: the id input (t, b) was read from


def look_up(rows: TableRows, time_major: bool) -> LookedUp:
    """Check `rows` (before any work) and read the inputs time-major."""
    xp = namespace_of(table=rows.table, ids=rows.ids)
    check_shape("inputs.table", rows.table, (None, None), "[rows, input size]")
    check_integer("inputs.ids", rows.ids, xp)
    check_shape("inputs.ids", rows.ids, (None, None), "[T, B] ids" if time_major else "[B, T] ids")
    check_range("inputs.ids", rows.ids, xp, 0, rows.table.shape[0] - 1, "row ids of inputs.table")
    ids = rows.ids if time_major else xp.permute_dims(rows.ids, (1, 0))
    steps, batch = ids.shape
    flat_ids = xp.reshape(ids, (-1,))
    inputs = xp.reshape(xp.take(rows.table, flat_ids, axis=0), (steps, batch, rows.table.shape[1]))
    return LookedUp(inputs, rows.table, flat_ids)


def table_gradient(looked_up: LookedUp, d_inputs: Any, library: Any) -> Any:
    """The table's gradient [V, I] from the per-position input gradients d_inputs [T, B, I]: each
    position's row added to its id's row (the library's scatter-add)."""
    xp = namespace_of(d_inputs=d_inputs, table=looked_up.table)
    flat = xp.reshape(d_inputs, (looked_up.flat_ids.shape[0], looked_up.table.shape[1]))
    return library.scatter_add_rows(looked_up.table.shape[0], looked_up.flat_ids, flat)
