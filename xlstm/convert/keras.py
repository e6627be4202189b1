"""Keras ↔ xlstm: the weights of a Keras `LSTM` layer, `layer.get_weights()`.

Keras stores `kernel [I, 4H]`, `recurrent_kernel [H, 4H]` and `bias [4H]` (absent when
`use_bias=False`), gate columns i, f, c, o, and no run-time forget bias (its
`unit_forget_bias` only initialises the bias). A `Bidirectional(LSTM)` wrapper lists the
forward layer's weights, then the backward layer's. Keras's defaults are assumed:
activation tanh and recurrent_activation sigmoid (Keras 1 and standalone Keras 2 used
hard_sigmoid, which xlstm does not compute).
"""
from __future__ import annotations

from typing import Any

from xlstm_backends import Backend, asarray, get_backend, to_numpy
from xlstm.cell import LSTMCell
from xlstm.convert.gates import KERAS, GateParts, cell_from_parts, parts_from_cell
from xlstm.sequence import LSTM, Bidirectional


def from_keras(weights: list[Any], *, dtype: Any = None, backend: str | Backend | None = None,
               device: Any = None) -> LSTM:
    """An `xlstm.LSTM` computing what the Keras layer computes (with `return_sequences=True`).

    `weights` is `[kernel, recurrent_kernel, bias]` (or without bias) for an `LSTM` layer, or
    twice that for a `Bidirectional(LSTM(...))` with merge_mode "concat".
    """
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights must be a list (layer.get_weights()), got {type(weights).__name__}")
    if len(weights) not in (2, 3, 4, 6):
        raise ValueError("weights must be a Keras LSTM layer's [kernel, recurrent_kernel, bias] (2 or 3 arrays), or "
                         f"twice that for a Bidirectional layer; got {len(weights)} arrays")
    target = get_backend(backend, device)
    half = len(weights) // 2 if len(weights) in (4, 6) else len(weights)
    cells = [_cell(list(weights[start:start + half]), dtype, target) for start in range(0, len(weights), half)]
    return LSTM([cells[0] if len(cells) == 1 else Bidirectional(*cells)])


def to_keras(cell_or_model: Any) -> list[Any]:
    """`[kernel, recurrent_kernel, bias]` NumPy arrays for `layer.set_weights` (six for a
    Bidirectional of two LSTMCells), the cell's forget bias folded into the bias."""
    layer = cell_or_model.layers[0] if isinstance(cell_or_model, LSTM) and len(cell_or_model.layers) == 1 \
        else cell_or_model
    if isinstance(layer, Bidirectional) and isinstance(layer.cell_fw, LSTMCell) and isinstance(layer.cell_bw, LSTMCell):
        return _weights_of(layer.cell_fw) + _weights_of(layer.cell_bw)
    if isinstance(layer, LSTMCell):
        return _weights_of(layer)
    raise ValueError(f"a Keras LSTM layer holds one LSTMCell (or a Bidirectional of two); cannot express "
                     f"{cell_or_model!r}")


def _cell(weights: list[Any], dtype: Any, backend: Backend) -> LSTMCell:
    xp = backend.xp
    kernel, recurrent_kernel = (asarray(w, dtype=dtype, backend=backend) for w in weights[:2])
    if kernel.ndim != 2 or recurrent_kernel.ndim != 2:
        raise ValueError(f"kernel must be [input, 4·units] and recurrent_kernel [units, 4·units], got shapes "
                         f"{list(kernel.shape)} and {list(recurrent_kernel.shape)}")
    bias = asarray(weights[2], dtype=kernel.dtype, backend=backend) if len(weights) == 3 else xp.zeros(
        (kernel.shape[1],), dtype=kernel.dtype, device=backend.device)
    parts = GateParts(bias, xp.matrix_transpose(kernel), xp.matrix_transpose(recurrent_kernel))
    return cell_from_parts(parts, KERAS, backend=backend)


def _weights_of(cell: LSTMCell) -> list[Any]:
    parts = parts_from_cell(cell, KERAS, target="Keras")
    xp = cell.backend.xp
    return [to_numpy(xp.matrix_transpose(parts.input_weights)), to_numpy(xp.matrix_transpose(parts.recurrent_weights)),
            to_numpy(parts.bias)]
