"""TensorFlow 1 ↔ xlstm: the variables of `BasicLSTMCell`, `LSTMCell` and `LayerNormBasicLSTMCell`.

TensorFlow stores `kernel [I + H, 4H]` (rows x then h, gate columns i, j, f, o) and
`bias [4H]`, and adds `forget_bias` (default 1.0) to the forget gate at run time, as xlstm
does. `LayerNormBasicLSTMCell` with layer norm has no bias; it has a gamma and a beta for
each of `input`, `transform`, `forget`, `output` and `state`. Variables are recognised by
their usual names: `rnn/basic_lstm_cell/kernel`, `rnn/multi_rnn_cell/cell_0/lstm_cell/bias`,
`bidirectional_rnn/fw/layer_norm_basic_lstm_cell/forget/gamma`, with or without `:0`.
"""
from __future__ import annotations

import re
from typing import Any

from xlstm_backends import Backend, asarray, get_backend, to_numpy
from xlstm.cell import LSTMCell
from xlstm.convert.gates import TENSORFLOW, GateParts, cell_from_parts, parts_from_cell, weight_parts
from xlstm.sequence import Bidirectional
from xlstm.stack import MultiRNNCell

CELL_SCOPES = ("basic_lstm_cell", "lstm_cell", "layer_norm_basic_lstm_cell")
# TensorFlow's names for the rows of xlstm's norm_gain / norm_shift (f, i, c, o, state)
NORM_SCOPES = ("forget", "input", "transform", "output", "state")
_LEGACY_NAMES = {"weights": "kernel", "biases": "bias"}  # TensorFlow before 1.0
_UNSUPPORTED = {"w_f_diag": "peephole connections", "w_i_diag": "peephole connections",
                "w_o_diag": "peephole connections", "projection/kernel": "an output projection (num_proj)"}


def from_tensorflow(variables: dict[str, Any], forget_bias: float = 1.0, *, scope: str = "",
                    dtype: Any = None, backend: str | Backend | None = None,
                    device: Any = None) -> LSTMCell | MultiRNNCell | Bidirectional:
    """The cell (or `MultiRNNCell`, or `Bidirectional` of `fw/`, `bw/`) the variables describe.

    `forget_bias` is the value the TensorFlow cell was built with; xlstm adds it at run time
    just as TensorFlow did. Only names under `scope` (a name prefix) are read, so a whole
    checkpoint can be passed; names inside an LSTM cell's scope that are not LSTM variables
    are an error.
    """
    if not isinstance(variables, dict):
        raise TypeError(f"variables must be a dict of name → array, got {type(variables).__name__}")
    target = get_backend(backend, device)
    groups: dict[tuple[str, int | None], dict[str, Any]] = {}
    paths: dict[tuple[str, int | None], str] = {}  # each cell's scope path, like rnn/fw/lstm_cell
    for name, value in variables.items():
        parsed = _parse(name, scope)
        if parsed is not None:
            direction, layer, path, variable = parsed
            if paths.setdefault((direction, layer), path) != path:
                raise ValueError(f"variables hold more than one LSTM ({paths[(direction, layer)]} and {path}): "
                                 "choose one with scope=")
            groups.setdefault((direction, layer), {})[variable] = value
    if not groups:
        raise ValueError(f"variables hold no LSTM cell variables under scope {scope!r} (names like "
                         f"'rnn/basic_lstm_cell/kernel'); got {sorted(variables)[:5]}")
    if len({layer is None for _, layer in groups}) > 1:
        raise ValueError("variables mix a single cell and a multi_rnn_cell stack: pass one model's "
                         "variables, or choose one with scope=")

    def directional(direction: str) -> LSTMCell | MultiRNNCell:
        keys = sorted((key for key in groups if key[0] == direction), key=lambda key: key[1] or 0)
        cells = [_cell(groups[key], paths[key], forget_bias, dtype, target) for key in keys]
        if keys[0][1] is not None and [key[1] for key in keys] != list(range(len(keys))):
            raise ValueError(f"the multi_rnn_cell stack has cells {[key[1] for key in keys]}; expected 0 … "
                             f"{len(keys) - 1}")
        return cells[0] if keys[0][1] is None else MultiRNNCell(cells)

    directions = {direction for direction, _ in groups}
    if directions == {""}:
        return directional("")
    if directions != {"fw", "bw"}:
        raise ValueError(f"a bidirectional model needs variables under both fw/ and bw/, got {sorted(directions)}")
    return Bidirectional(directional("fw"), directional("bw"))


def to_tensorflow(cell: LSTMCell | MultiRNNCell | Bidirectional, forget_bias: float = 1.0, *,
                  scope: str | None = None, cell_scope: str | None = None) -> dict[str, Any]:
    """Variables (NumPy arrays keyed by TensorFlow's names) for a TensorFlow cell built with
    `forget_bias`: the difference to each xlstm cell's own forget bias is folded into the
    stored forget bias (into the forget beta under layer norm).

    Plain cells are written as `basic_lstm_cell` (or `cell_scope="lstm_cell"`), layer-norm
    cells as `layer_norm_basic_lstm_cell`; `scope` defaults to "rnn" ("bidirectional_rnn"
    for a Bidirectional, TensorFlow's default scopes).
    """
    if cell_scope not in (None, "basic_lstm_cell", "lstm_cell"):
        raise ValueError(f"cell_scope must be 'basic_lstm_cell' or 'lstm_cell', got {cell_scope!r}")
    if isinstance(cell, Bidirectional):
        prefix = scope or "bidirectional_rnn"
        return {**_directional_variables(cell.cell_fw, f"{prefix}/fw", forget_bias, cell_scope),
                **_directional_variables(cell.cell_bw, f"{prefix}/bw", forget_bias, cell_scope)}
    if isinstance(cell, (LSTMCell, MultiRNNCell)):
        return _directional_variables(cell, scope or "rnn", forget_bias, cell_scope)
    raise TypeError(f"cell must be an LSTMCell, MultiRNNCell or Bidirectional (TensorFlow's structures), "
                    f"got {type(cell).__name__}")


def _parse(name: str, scope: str) -> tuple[str, int | None, str, str] | None:
    """(direction "fw"/"bw"/"", layer or None, the cell's scope path, variable) of an LSTM variable."""
    if not isinstance(name, str):
        raise TypeError(f"variable names must be strings, got {name!r}")
    if not name.startswith(scope):
        return None
    parts = re.sub(r":\d+$", "", name).split("/")
    cell_at = next((k for k, part in enumerate(parts) if part in CELL_SCOPES), None)
    if cell_at is None:
        return None
    outer = parts[:cell_at]
    direction = next((part for part in reversed(outer) if part in ("fw", "bw")), "")
    layer = next((int(part[5:]) for part in reversed(outer) if re.fullmatch(r"cell_\d+", part)), None)
    variable = "/".join(parts[cell_at + 1:])
    return direction, layer, "/".join(parts[:cell_at + 1]), _LEGACY_NAMES.get(variable, variable)


def _cell(variables: dict[str, Any], path: str, forget_bias: float, dtype: Any, backend: Backend) -> LSTMCell:
    """One LSTMCell from the variables under one TensorFlow cell scope `path`."""
    layer_norm = any(name.endswith("/gamma") for name in variables)
    expected = {"kernel"} | ({f"{norm}/{part}" for norm in NORM_SCOPES for part in ("gamma", "beta")}
                             if layer_norm else {"bias"})
    for name in variables:
        if name in _UNSUPPORTED:
            raise ValueError(f"{path} has {_UNSUPPORTED[name]} ({name}), which xlstm's LSTMCell does not have")
    if set(variables) != expected:
        raise ValueError(f"{path} must have the variables {sorted(expected)}, got {sorted(variables)}")
    if layer_norm and not path.endswith("layer_norm_basic_lstm_cell"):
        raise ValueError(f"{path} has layer-norm variables, which only layer_norm_basic_lstm_cell has")
    kernel = asarray(variables["kernel"], dtype=dtype, backend=backend)
    xp = backend.xp
    if kernel.ndim != 2 or kernel.shape[1] % 4:
        raise ValueError(f"{path}/kernel must be [input + hidden, 4·hidden], got shape {list(kernel.shape)}")
    units = kernel.shape[1] // 4
    input_size = kernel.shape[0] - units
    kernel_t = xp.matrix_transpose(kernel)  # [4H, I + H], gate rows i, j, f, o
    if layer_norm:  # the norms' betas play the bias; the cell's bias column stays zero
        bias = xp.zeros((4 * units,), dtype=kernel.dtype, device=backend.device)
        norms = {part: xp.stack([asarray(variables[f"{norm}/{part}"], dtype=kernel.dtype, backend=backend)
                                 for norm in NORM_SCOPES]) for part in ("gamma", "beta")}
        options = {"layer_norm": True, "norm_gain": norms["gamma"], "norm_shift": norms["beta"]}
    else:
        bias, options = asarray(variables["bias"], dtype=kernel.dtype, backend=backend), {}
    parts = GateParts(bias, kernel_t[:, :input_size], kernel_t[:, input_size:])
    return cell_from_parts(parts, TENSORFLOW, forget_bias=forget_bias, backend=backend, **options)


def _directional_variables(cell: LSTMCell | MultiRNNCell, prefix: str, forget_bias: float,
                           cell_scope: str | None) -> dict[str, Any]:
    if isinstance(cell, MultiRNNCell):
        return {name: value for k, layer in enumerate(cell.cells)
                for name, value in _cell_variables(layer, f"{prefix}/multi_rnn_cell/cell_{k}", forget_bias,
                                                   cell_scope).items()}
    if not isinstance(cell, LSTMCell):
        raise TypeError(f"expected an LSTMCell or MultiRNNCell, got {type(cell).__name__}")
    return _cell_variables(cell, prefix, forget_bias, cell_scope)


def _cell_variables(cell: LSTMCell, prefix: str, forget_bias: float, cell_scope: str | None) -> dict[str, Any]:
    xp = cell.backend.xp
    if cell.layer_norm:
        parts = weight_parts(cell, TENSORFLOW)  # the bias column is unused under layer norm
        scope = f"{prefix}/layer_norm_basic_lstm_cell"
        shift = xp.concat([cell.norm_shift[:1, :] + (cell.forget_bias - forget_bias), cell.norm_shift[1:, :]])
        norms = {f"{scope}/{norm}/{part}": to_numpy(values[row, :]) for row, norm in enumerate(NORM_SCOPES)
                 for part, values in (("gamma", cell.norm_gain), ("beta", shift))}
        return {f"{scope}/kernel": _kernel(xp, parts), **norms}
    parts = parts_from_cell(cell, TENSORFLOW, forget_bias=forget_bias, target="TensorFlow")
    scope = f"{prefix}/{cell_scope or 'basic_lstm_cell'}"
    return {f"{scope}/kernel": _kernel(xp, parts), f"{scope}/bias": to_numpy(parts.bias)}


def _kernel(xp: Any, parts: GateParts) -> Any:
    """TensorFlow's kernel [I + H, 4H] from gate-ordered parts."""
    return to_numpy(xp.matrix_transpose(xp.concat([parts.input_weights, parts.recurrent_weights], axis=1)))
