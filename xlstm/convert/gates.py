"""The one fact every converter needs: how a framework orders the four gate blocks, and
how its bias convention maps onto xlstm's fused `[4H, 1 + I + H]` matrix.

Gates are named by one letter each: i (input), f (forget), c (candidate; PyTorch's g,
TensorFlow's j) and o (output). xlstm's own order is f, i, c, o (the article's figure 2),
and xlstm adds `forget_bias` at run time, as TensorFlow does.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from xlstm.cell import LSTMCell
from xlstm.checks import device_of, namespace_of

XLSTM = "fico"
PYTORCH = "ifco"  # weight_ih/weight_hh/bias: i, f, g, o
TENSORFLOW = "icfo"  # kernel/bias: i, j, f, o
KERAS = "ifco"  # kernel/recurrent_kernel/bias: i, f, c, o
ONNX = "iofc"  # W/R/B: i, o, f, c


class GateParts(NamedTuple):
    """One cell's parameters as the frameworks store them: rows in some gate order."""

    bias: Any  # [4H]
    input_weights: Any  # [4H, I]
    recurrent_weights: Any  # [4H, H]


def reorder_gates(x: Any, source: str, target: str, axis: int = 0) -> Any:
    """Rearrange the four equal gate blocks of `x` along `axis` from order `source` to `target`."""
    xp = namespace_of(x=x)
    if x.shape[axis] % 4:
        raise ValueError(f"an axis holding four gate blocks must have a length divisible by 4, got {x.shape[axis]}")
    units = x.shape[axis] // 4
    blocks = {gate: xp.take(x, xp.arange(k * units, (k + 1) * units, device=device_of(x)), axis=axis)
              for k, gate in enumerate(source)}
    return xp.concat([blocks[gate] for gate in target], axis=axis)


def cell_from_parts(parts: GateParts, order: str, *, forget_bias: float = 0.0, **cell_options: Any) -> LSTMCell:
    """An `LSTMCell` from a framework's parameters in gate `order` (all on one backend).

    The result adds `forget_bias` at run time; frameworks that store the whole bias
    (PyTorch, Keras, ONNX) want the default 0.0.
    """
    xp = namespace_of(bias=parts.bias, input_weights=parts.input_weights, recurrent_weights=parts.recurrent_weights)
    units4, input_size = parts.input_weights.shape
    _check_parts(parts, units4 // 4, input_size)
    weights = xp.concat([parts.bias[:, None], parts.input_weights, parts.recurrent_weights], axis=1)
    return LSTMCell(units4 // 4, input_size, weights=reorder_gates(weights, order, XLSTM), forget_bias=forget_bias,
                    **cell_options)


def parts_from_cell(cell: LSTMCell, order: str, forget_bias: float = 0.0, target: str = "") -> GateParts:
    """`cell`'s parameters in gate `order`, for a framework that adds `forget_bias` at run time
    (0.0 for all but TensorFlow): the difference to the cell's own forget bias is folded into
    the stored forget-gate bias, so the framework computes exactly what the cell does."""
    if not isinstance(cell, LSTMCell):
        raise TypeError(f"expected an xlstm.LSTMCell, got {type(cell).__name__}")
    if cell.layer_norm:
        raise ValueError(f"a layer-norm LSTMCell cannot be exported to {target or 'this format'}: "
                         "its LSTM has no layer normalisation (TensorFlow's LayerNormBasicLSTMCell can hold it)")
    xp, units = cell.backend.xp, cell.num_units
    parts = weight_parts(cell, order)
    shift = xp.concat([xp.full((units,), cell.forget_bias - forget_bias, dtype=cell.dtype, device=cell.backend.device),
                       xp.zeros((3 * units,), dtype=cell.dtype, device=cell.backend.device)])  # rows f, i, c, o
    return parts._replace(bias=parts.bias + reorder_gates(shift, XLSTM, order))


def weight_parts(cell: LSTMCell, order: str) -> GateParts:
    """`cell`'s bias column, input and recurrent weights as stored, rows in gate `order`."""
    return GateParts(*(reorder_gates(part, XLSTM, order) for part in cell.split_weights()))


def _check_parts(parts: GateParts, units: int, input_size: int) -> None:
    expected = {"bias": (4 * units,), "input_weights": (4 * units, input_size), "recurrent_weights": (4 * units, units)}
    for name, shape in expected.items():
        actual = tuple(getattr(parts, name).shape)
        if actual != shape:
            raise ValueError(f"{name} must have shape {list(shape)} (4·hidden = {4 * units} rows), got {list(actual)}")

