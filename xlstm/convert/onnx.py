"""ONNX ↔ xlstm: the weight tensors of one ONNX `LSTM` operator.

ONNX stores, per direction d, `W [D, 4H, I]`, `R [D, 4H, H]` and `B [D, 8H]` (input bias
Wb then recurrent bias Rb, simply added), gates i, o, f, c, and no run-time forget bias.
`direction` is "forward" or "reverse" (D = 1) or "bidirectional" (D = 2, forward first).
Only the operator's defaults are expressed: activations sigmoid/tanh/tanh, no `clip`,
`input_forget` 0 and no peepholes `P`. onnx itself is never imported here.
"""
from __future__ import annotations

from typing import Any

from xlstm_backends import Backend, asarray, float_dtype, get_backend, to_numpy
from xlstm.cell import LSTMCell
from xlstm.checks import check_shape, namespace_of
from xlstm.convert.gates import ONNX, GateParts, cell_from_parts, parts_from_cell
from xlstm.sequence import LSTM, Bidirectional, Reversed
from xlstm.stack import MultiRNNCell

DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}  # direction → D, the length of axis 0


def from_onnx(W: Any, R: Any, B: Any = None, *, direction: str | None = None, dtype: Any = None,
              backend: str | Backend | None = None, device: Any = None) -> LSTM:
    """An `xlstm.LSTM` of one layer computing what the ONNX LSTM operator with these tensors computes.

    The layer is an `LSTMCell` ("forward"), `Reversed(LSTMCell)` ("reverse") or
    `Bidirectional(LSTMCell, LSTMCell)` ("bidirectional"), cells with forget_bias 0.0.
    `direction` defaults to what W's first axis says; B absent means zero biases. Arrays of
    any backend or nested lists are accepted.
    """
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)} or None, got {direction!r}")
    target = get_backend(backend, device)
    W = asarray(W, dtype=dtype, backend=target)
    if W.ndim != 3 or W.shape[0] not in (1, 2) or W.shape[1] % 4 or W.shape[1] == 0:
        raise ValueError(f"W must have shape [num_directions (1 or 2), 4·hidden_size, input_size], got {list(W.shape)}")
    directions, units = W.shape[0], W.shape[1] // 4
    direction = direction or ("bidirectional" if directions == 2 else "forward")
    if DIRECTIONS[direction] != directions:
        raise ValueError(f"direction {direction!r} needs {DIRECTIONS[direction]} direction(s) on axis 0 of W, R and B, "
                         f"got W of shape {list(W.shape)}")
    R = asarray(R, dtype=W.dtype, backend=target)
    check_shape("R", R, (directions, 4 * units, units), "[num_directions, 4·hidden_size, hidden_size]")
    B = target.xp.zeros((directions, 8 * units), dtype=W.dtype, device=target.device) if B is None \
        else asarray(B, dtype=W.dtype, backend=target)
    check_shape("B", B, (directions, 8 * units), "[num_directions, 8·hidden_size]: Wb then Rb")
    bias = B[:, :4 * units] + B[:, 4 * units:]
    cells = [cell_from_parts(GateParts(bias[d, ...], W[d, ...], R[d, ...]), ONNX, backend=target)
             for d in range(directions)]
    if direction == "bidirectional":
        return LSTM([Bidirectional(*cells)])
    return LSTM([Reversed(cells[0]) if direction == "reverse" else cells[0]])


def to_onnx_tensors(layer: Any) -> dict[str, Any]:
    """The ONNX LSTM operator's "W", "R", "B" (NumPy arrays), "direction" and "hidden_size" for
    an LSTMCell, Reversed(LSTMCell), Bidirectional(LSTMCell, LSTMCell) or a one-layer
    `xlstm.LSTM` of one of those.

    The whole bias, with the cell's run-time forget bias folded in, goes to Wb; Rb is zero.
    """
    return operator_tensors(*operator_cells(layer))


def operator_cells(layer: Any) -> tuple[list[LSTMCell], str]:
    """The cells of the one ONNX LSTM operator that computes `layer`, and its direction."""
    if isinstance(layer, LSTM):
        if len(layer.layers) != 1:
            raise ValueError(f"one ONNX LSTM operator is one layer; this xlstm.LSTM has {len(layer.layers)} "
                             "(xlstm.export_onnx writes a chain of operators)")
        layer = layer.layers[0]
    if isinstance(layer, LSTMCell):
        return [layer], "forward"
    if isinstance(layer, Reversed) and isinstance(layer.cell, LSTMCell):
        return [layer.cell], "reverse"
    if isinstance(layer, Bidirectional) and isinstance(layer.cell_fw, LSTMCell) and isinstance(layer.cell_bw,
                                                                                               LSTMCell):
        if layer.cell_fw.num_units != layer.cell_bw.num_units:
            raise ValueError(f"the two directions of one ONNX LSTM operator share hidden_size; got "
                             f"{layer.cell_fw.num_units} (fw) and {layer.cell_bw.num_units} (bw)")
        return [layer.cell_fw, layer.cell_bw], "bidirectional"
    if isinstance(layer, (MultiRNNCell, Reversed, Bidirectional)):
        raise ValueError(f"one ONNX LSTM operator holds one layer of single cells; {layer!r} stacks several "
                         "(xlstm.export_onnx writes a chain of operators)")
    raise TypeError(f"layer must be an LSTMCell, Reversed(LSTMCell), Bidirectional(LSTMCell, LSTMCell) or a "
                    f"one-layer xlstm.LSTM of one of those, got {type(layer).__name__}")


def operator_tensors(cells: list[LSTMCell], direction: str, dtype: Any = None) -> dict[str, Any]:
    """W, R, B (NumPy arrays, cast to `dtype` when given), direction and hidden_size of the
    operator whose directions are `cells`."""
    parts = [parts_from_cell(cell, ONNX, target="ONNX") for cell in cells]
    xp = namespace_of(**{f"cells[{d}]": part.input_weights for d, part in enumerate(parts)})
    stacked = {name: xp.stack([getattr(part, name) for part in parts]) for name in GateParts._fields}
    bias = stacked["bias"]  # [D, 4H]
    tensors = {"W": stacked["input_weights"], "R": stacked["recurrent_weights"],
               "B": xp.concat([bias, xp.zeros_like(bias)], axis=1)}
    return {**{name: host_copy(value, dtype) for name, value in tensors.items()}, "direction": direction,
            "hidden_size": cells[0].num_units}


def host_copy(x: Any, dtype: Any = None) -> Any:
    """A NumPy copy of `x`, cast first (on its own backend) to the float `dtype` when given."""
    if dtype is not None:
        xp = namespace_of(x=x)
        x = xp.astype(x, float_dtype(xp, dtype))
    return to_numpy(x)
