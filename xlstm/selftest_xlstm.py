"""The selftest's checks of the xLSTM cells (sLSTM, mLSTM) on the user's backend and device.

- a mixed stack (sLSTM over mLSTM, lengths, a nonzero initial state) run on the device against
  the same stack in float64 on NumPy;
- the mLSTM's two forms (step-by-step and parallel) against each other on the device;
- every gradient of that stack against central differences.
"""
from __future__ import annotations

from typing import Any, Callable

import xlstm

LENGTHS = [5, 2, 0]


def _stack(backend: Any, dtype: str, form: str = "auto") -> xlstm.MultiRNNCell:
    return xlstm.MultiRNNCell([xlstm.SLSTMCell(6, 3, num_heads=2, seed=31, dtype=dtype, backend=backend),
                               xlstm.MLSTMCell(4, 6, num_heads=2, form=form, seed=32, dtype=dtype, backend=backend)])


def _initial_state(stack: xlstm.MultiRNNCell, backend: Any, dtype: str) -> tuple:
    """A nonzero state for every layer (the normalisers positive, as a run leaves them)."""
    stream = backend.random(33, stream=7)
    return tuple(type(zero)(*(stream.uniform(tuple(part.shape), 0.1, 1.0, backend.resolve_dtype(dtype)) for part in zero))
                 for zero in stack.zero_state(3))


def xlstm_checks(backend: Any, dtype: str, check: Callable[..., Any], worst_error: Callable[[Any, Any], float],
                 bound: dict[str, float], central_difference_error: Callable[..., float]) -> list[Any]:
    """The rows of the selftest table for the xLSTM cells (`check` builds one row)."""
    inputs = backend.random(34, stream=8).normal((3, 5, 3), backend.resolve_dtype(dtype))
    stack = _stack(backend, dtype)
    state = _initial_state(stack, backend, dtype)
    outputs, _ = xlstm.dynamic_rnn(stack, inputs, state, sequence_length=LENGTHS)
    host = stack.to("numpy", dtype="float64")
    host_state = tuple(type(layer)(*(xlstm.asarray(xlstm.to_numpy(part), dtype="float64", backend="numpy")
                                     for part in layer)) for layer in state)
    wanted, _ = xlstm.dynamic_rnn(host, xlstm.asarray(xlstm.to_numpy(inputs), dtype="float64", backend="numpy"),
                                  host_state, sequence_length=LENGTHS)
    recurrent = _stack(backend, dtype, form="recurrent")
    stepped, _ = xlstm.dynamic_rnn(recurrent, inputs, state, sequence_length=LENGTHS)
    return [check(f"sLSTM + mLSTM stack vs float64 NumPy ({dtype})", worst_error(outputs, wanted), bound[dtype]),
            check(f"mLSTM parallel form vs step-by-step form ({dtype})", worst_error(outputs, stepped), bound[dtype]),
            check(f"gradients: sLSTM + mLSTM stack vs central differences ({dtype})",
                  _gradient_error(backend, dtype, inputs, state, central_difference_error),
                  1e-6 if dtype == "float64" else 5e-2)]


def _gradient_error(backend: Any, dtype: str, inputs: Any, state: tuple,
                    central_difference_error: Callable[..., float]) -> float:
    """Worst relative gap between the stack's hand-written gradients and central differences."""
    xp, stack = backend.xp, _stack(backend, dtype)
    d_outputs = backend.random(35, stream=9).normal((3, 5, 4), backend.resolve_dtype(dtype))

    def loss(params: dict[str, Any]) -> float:
        for name, value in params.items():
            if name != "inputs":
                layer, attribute = name.split("/")
                setattr(stack.cells[int(layer.removeprefix("cell_"))], attribute, value)
        outputs, _ = xlstm.dynamic_rnn(stack, params["inputs"], state, sequence_length=LENGTHS)
        return float(xp.sum(outputs * d_outputs))

    params = {**stack.parameters(), "inputs": inputs}
    _, _, backward = xlstm.dynamic_rnn_vjp(stack, inputs, state, sequence_length=LENGTHS)
    grads = backward(d_outputs)
    step = 1e-6 if dtype == "float64" else 1e-2
    return central_difference_error(loss, params, grads, step, xp)
