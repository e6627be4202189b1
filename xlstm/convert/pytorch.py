"""PyTorch ↔ xlstm: `nn.LSTM` and `nn.LSTMCell` weights, and their (h, c) state tensors.

PyTorch stores, per layer and direction, `weight_ih [4H, I]`, `weight_hh [4H, H]` and two
biases that are simply added, gates i, f, g, o, and no run-time forget bias. Layer k of a
bidirectional `nn.LSTM` reads both directions' outputs of layer k-1, concatenated: that
is an `xlstm.LSTM` of `Bidirectional` layers. torch is never imported here: modules are
read through `state_dict()` and tensors moved with `xlstm_backends.asarray`.
"""
from __future__ import annotations

import re
from typing import Any

from xlstm_backends import Backend, asarray, get_backend
from xlstm.cell import LSTMCell, LSTMState
from xlstm.checks import namespace_of
from xlstm.convert.gates import PYTORCH, GateParts, cell_from_parts, parts_from_cell
from xlstm.sequence import LSTM, Bidirectional
from xlstm.stack import MultiRNNCell

_LSTM_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?")
_CELL_KEYS = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}


def from_pytorch(module_or_state_dict: Any, dtype: Any = None, backend: str | Backend | None = None,
                 device: Any = None) -> LSTM | LSTMCell:
    """An `xlstm.LSTM` from an `nn.LSTM` (or its state dict), an `LSTMCell` from an `nn.LSTMCell`.

    The model computes what the module computes: `model(inputs, initial_state, sequence_length,
    time_major)` → (outputs, final states); a bidirectional model's outputs are both
    directions concatenated on the last axis, as PyTorch's are. `batch_first` does not
    touch the weights: pass `time_major=True` for PyTorch's default [T, B, I] inputs.
    """
    if getattr(module_or_state_dict, "proj_size", 0):
        raise ValueError("from_pytorch cannot convert an nn.LSTM with proj_size > 0: xlstm's LSTMCell has no "
                         "projection of the hidden state")
    state = module_or_state_dict.state_dict() if hasattr(module_or_state_dict, "state_dict") else module_or_state_dict
    if not isinstance(state, dict) or not state:
        raise TypeError(f"module_or_state_dict must be an nn.LSTM, an nn.LSTMCell or a non-empty state dict, "
                        f"got {type(module_or_state_dict).__name__}")
    target = get_backend(backend, device)
    if "weight_ih" in state:
        _refuse_unknown(state, _CELL_KEYS, "an nn.LSTMCell")
        return _cell(state, "", dtype, target)
    layers: dict[int, set[str]] = {}
    for key in state:
        match = _LSTM_KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"state dict key {key!r} is not one of nn.LSTM's (weight_ih_l0, bias_hh_l1_reverse, ...)")
        if match[1] == "weight_hr":
            raise ValueError("from_pytorch cannot convert an nn.LSTM with proj_size > 0 (it has weight_hr_l*): "
                             "xlstm's LSTMCell has no projection of the hidden state")
        layers.setdefault(int(match[2]), set()).add(match[3] or "")
    if sorted(layers) != list(range(len(layers))):
        raise ValueError(f"state dict has layers {sorted(layers)}; expected 0 … {len(layers) - 1}")
    model_layers = []
    for k in range(len(layers)):
        if layers[k] == {"", "_reverse"}:
            model_layers.append(Bidirectional(_cell(state, f"_l{k}", dtype, target),
                                              _cell(state, f"_l{k}_reverse", dtype, target)))
        else:
            model_layers.append(_cell(state, f"_l{k}", dtype, target))
    return LSTM(model_layers)


def to_pytorch(cell_or_model: Any, for_lstm_cell: bool = False) -> dict[str, Any]:
    """A state dict (torch tensors) that `nn.LSTM.load_state_dict` accepts, or with
    `for_lstm_cell=True` one for `nn.LSTMCell` (a single LSTMCell only).

    The cell's run-time forget bias is folded into `bias_ih`; `bias_hh` is zero. Accepts an
    LSTMCell, MultiRNNCell, a Bidirectional of two LSTMCells, or an `xlstm.LSTM` whose
    layers are all LSTMCells or all such Bidirectionals with one hidden size.
    """
    layers = _layers_of(cell_or_model)
    if for_lstm_cell:
        if len(layers) != 1 or len(layers[0]) != 1:
            raise ValueError("for_lstm_cell=True needs a single LSTMCell (nn.LSTMCell has one direction, one layer)")
        return _state_of(layers[0][0], "")
    state: dict[str, Any] = {}
    for k, directions in enumerate(layers):
        for cell, suffix in zip(directions, ("", "_reverse")):
            state.update(_state_of(cell, f"_l{k}{suffix}"))
    return state


def to_pytorch_state(final_state: tuple) -> tuple[Any, Any]:
    """An `xlstm.LSTM`'s final states → PyTorch's (h_n, c_n), each [layers · directions, B, H]."""
    states = [state for layer in final_state
              for state in (layer if isinstance(layer, tuple) and not isinstance(layer, LSTMState) else (layer,))]
    if not states or not all(isinstance(state, LSTMState) for state in states):
        raise TypeError("final_state must be an xlstm.LSTM's final states: one LSTMState, or a pair of them, per layer")
    xp = namespace_of(h=states[0].h)
    return xp.stack([s.h for s in states], axis=0), xp.stack([s.c for s in states], axis=0)


def from_pytorch_state(model: LSTM, h: Any, c: Any) -> tuple:
    """PyTorch's (h_0, c_0) [layers · directions, B, H] → an initial state for `model`."""
    directions = [2 if isinstance(layer, Bidirectional) else 1 for layer in model.layers]
    if h.shape[0] != sum(directions) or c.shape[0] != sum(directions):
        raise ValueError(f"h and c must have {sum(directions)} rows on axis 0 (layers · directions), "
                         f"got {h.shape[0]} and {c.shape[0]}")
    states, row = [], 0
    for count in directions:
        pieces = tuple(LSTMState(c[row + d, ...], h[row + d, ...]) for d in range(count))
        states.append(pieces if count == 2 else pieces[0])
        row += count
    return tuple(states)


def _cell(state: dict, suffix: str, dtype: Any, backend: Backend) -> LSTMCell:
    """The LSTMCell of one layer and direction (`suffix` like "_l1_reverse", or "" for nn.LSTMCell)."""
    def get(name: str) -> Any:
        return asarray(state[name + suffix], dtype=dtype, backend=backend)

    for name in ("weight_ih", "weight_hh"):
        if name + suffix not in state:
            raise ValueError(f"state dict lacks {name + suffix!r}")
    input_weights, recurrent_weights = get("weight_ih"), get("weight_hh")
    if ("bias_ih" + suffix in state) != ("bias_hh" + suffix in state):
        raise ValueError(f"state dict must hold both or neither of bias_ih{suffix} and bias_hh{suffix}")
    if "bias_ih" + suffix in state:
        bias = get("bias_ih") + get("bias_hh")
    else:  # bias=False
        bias = backend.xp.zeros((input_weights.shape[0],), dtype=input_weights.dtype, device=backend.device)
    return cell_from_parts(GateParts(bias, input_weights, recurrent_weights), PYTORCH, backend=backend)


def _state_of(cell: LSTMCell, suffix: str) -> dict[str, Any]:
    parts = parts_from_cell(cell, PYTORCH, target="PyTorch")
    xp = cell.backend.xp
    torch_tensor = lambda x: asarray(x, backend="torch")  # noqa: E731
    return {f"weight_ih{suffix}": torch_tensor(parts.input_weights),
            f"weight_hh{suffix}": torch_tensor(parts.recurrent_weights),
            f"bias_ih{suffix}": torch_tensor(parts.bias), f"bias_hh{suffix}": torch_tensor(xp.zeros_like(parts.bias))}


def _layers_of(obj: Any) -> list[list[LSTMCell]]:
    """The cells of each layer (one direction or two), as nn.LSTM numbers them."""
    if isinstance(obj, LSTMCell):
        layers = [[obj]]
    elif isinstance(obj, MultiRNNCell):
        layers = [[cell] for cell in obj.cells]
    elif isinstance(obj, (Bidirectional, LSTM)):
        layers = []
        for layer in (obj.layers if isinstance(obj, LSTM) else [obj]):
            if isinstance(layer, Bidirectional) and isinstance(layer.cell_fw, LSTMCell) and isinstance(
                    layer.cell_bw, LSTMCell):
                layers.append([layer.cell_fw, layer.cell_bw])
            elif isinstance(layer, (LSTMCell, MultiRNNCell)):
                layers.extend(_layers_of(layer))
            else:
                raise ValueError(f"nn.LSTM cannot express the layer {layer!r}: it has only forward layers or "
                                 "bidirectional layers of single cells")
    else:
        raise TypeError(f"cell_or_model must be an LSTMCell, MultiRNNCell, Bidirectional or xlstm.LSTM, "
                        f"got {type(obj).__name__}")
    shapes = {(len(directions), directions[0].num_units) for directions in layers}
    if len(shapes) > 1 or any(cell.num_units != layers[0][0].num_units for d in layers for cell in d):
        raise ValueError("nn.LSTM needs every layer to have the same hidden size and number of directions, got "
                         f"{[[cell.num_units for cell in directions] for directions in layers]}")
    return layers


def _refuse_unknown(state: dict, known: set[str], what: str) -> None:
    unknown = sorted(set(state) - known)
    if unknown:
        raise ValueError(f"state dict of {what} has unexpected keys {unknown}")

