"""Bad input: a clear TypeError/ValueError naming the argument, raised before any work."""
from __future__ import annotations

import numpy as np
import pytest

import xlstm


@pytest.fixture
def cell(backend):
    return xlstm.LSTMCell(5, 3, seed=0, backend=backend)


def _on(backend, a, dtype="float32"):
    return xlstm.asarray(np.asarray(a), dtype=dtype, backend=backend)


def test_wrong_rank(cell, backend):
    with pytest.raises(ValueError, match=r"inputs must have shape \[\?, \?, 3\] \(\[B, T, I\]\), got \[2, 3\]"):
        xlstm.dynamic_rnn(cell, _on(backend, np.zeros((2, 3))))
    with pytest.raises(ValueError, match=r"x must have shape \[\?, 3\].*got \[1, 2, 3\]"):
        cell(_on(backend, np.zeros((1, 2, 3))))


def test_input_size_differs_from_cell(cell, backend):
    with pytest.raises(ValueError, match="inputs must have its last axis equal to the cell's input_size 3, got shape"):
        xlstm.dynamic_rnn(cell, _on(backend, np.zeros((2, 4, 7))))
    with pytest.raises(ValueError, match="x must have its last axis equal to the cell's input_size 3"):
        cell(_on(backend, np.zeros((2, 4))))


def test_state_batch_differs_from_input_batch(cell, backend):
    state = cell.zero_state(4)
    with pytest.raises(ValueError, match=r"initial_state.c must have shape \[2, 5\].*got \[4, 5\]"):
        xlstm.dynamic_rnn(cell, _on(backend, np.zeros((2, 3, 3))), initial_state=state)
    with pytest.raises(ValueError, match=r"state.c must have shape \[2, 5\]"):
        cell(_on(backend, np.zeros((2, 3))), state)
    with pytest.raises(TypeError, match="initial_state must be an LSTMState"):
        xlstm.dynamic_rnn(cell, _on(backend, np.zeros((2, 3, 3))), initial_state=state.c)


def test_input_dtype_differs_from_cell(cell, backend):
    with pytest.raises(TypeError, match="inputs must have dtype float32 .* got float64"):
        xlstm.dynamic_rnn(cell, _on(backend, np.zeros((2, 3, 3)), dtype="float64"))
    with pytest.raises(TypeError, match="inputs must be a float32 or float64 array, got dtype int"):
        xlstm.dynamic_rnn(cell, xlstm.asarray(np.zeros((2, 3, 3), dtype=np.int64), backend=backend))


def test_bad_labels(backend):
    logits = _on(backend, np.zeros((3, 4)))
    with pytest.raises(TypeError, match="labels must be an integer array, got dtype float32"):
        xlstm.softmax_cross_entropy(logits, _on(backend, [0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\] .*got values from 0 to 4"):
        xlstm.softmax_cross_entropy(logits, xlstm.asarray([0, 1, 4], backend=backend))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\] .*got values from -1"):
        xlstm.softmax_cross_entropy(logits, xlstm.asarray([0, -1, 2], backend=backend))
    with pytest.raises(ValueError, match=r"labels must have shape \[3\]"):
        xlstm.softmax_cross_entropy(logits, xlstm.asarray([0, 1], backend=backend))
    with pytest.raises(ValueError, match="reduction must be one of"):
        xlstm.softmax_cross_entropy(logits, xlstm.asarray([0, 1, 2], backend=backend), reduction="avg")
    with pytest.raises(ValueError, match=r"weights must have shape \[2, 3\]"):
        xlstm.sequence_loss(_on(backend, np.zeros((2, 3, 4))), xlstm.asarray(np.zeros((2, 3), dtype=np.int64),
                            backend=backend), _on(backend, np.ones((3, 2))))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 2\]"):
        xlstm.one_hot(xlstm.asarray([0, 3], backend=backend), 3)


@pytest.mark.parametrize("lengths, message", [
    ([3, -1], r"sequence_length must lie in \[0, 4\] .*got values from -1 to 3"),
    ([3, 5], r"sequence_length must lie in \[0, 4\] .*got values from 3 to 5"),
    ([3, 2, 1], r"sequence_length must have shape \[2\] \(one length per batch row\), got \[3\]"),
])
def test_bad_sequence_length(cell, backend, lengths, message):
    with pytest.raises(ValueError, match=message):
        xlstm.dynamic_rnn(cell, _on(backend, np.zeros((2, 4, 3))), sequence_length=xlstm.asarray(lengths, backend=backend))


def test_float_sequence_length(cell, backend):
    with pytest.raises(TypeError, match="sequence_length must be an integer array"):
        xlstm.dynamic_rnn(cell, _on(backend, np.zeros((2, 4, 3))), sequence_length=_on(backend, [1.0, 2.0]))


def test_arrays_of_two_libraries(cell, backend):
    other = "array_api_strict" if backend.name != "array_api_strict" else "numpy"
    with pytest.raises(TypeError, match=r"inputs and weights are arrays of different libraries \((\w+) and (\w+)\)"):
        xlstm.dynamic_rnn(cell, xlstm.asarray(np.zeros((2, 4, 3)), dtype="float32", backend=other))
    with pytest.raises(TypeError, match="x must be an array of a known backend.*got list"):
        cell([[0.0, 0.0, 0.0]])


def test_arrays_on_two_devices():
    cell = xlstm.LSTMCell(5, 3, backend="array_api_strict")  # default device
    inputs = xlstm.asarray(np.zeros((2, 4, 3)), dtype="float32", backend="array_api_strict", device="device1")
    with pytest.raises(ValueError, match=r"inputs and weights are on different devices \(.*device1.*CPU_DEVICE"):
        xlstm.dynamic_rnn(cell, inputs)
    state = cell.zero_state(2)
    moved = xlstm.asarray(np.zeros((2, 5)), dtype="float32", backend="array_api_strict", device="device1")
    with pytest.raises(ValueError, match="different devices"):
        xlstm.dynamic_rnn(cell, xlstm.asarray(inputs, backend="array_api_strict"),
                          initial_state=xlstm.LSTMState(state.c, moved))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"initializer": "xavier"}, ValueError, "initializer must be a float, an xlstm.init initializer or one of"),
    ({"bias_initializer": object()}, ValueError, "bias_initializer must be"),
    ({"dropout_keep_prob": 0.0}, ValueError, r"dropout_keep_prob must lie in \(0, 1\], got 0.0"),
    ({"dropout_keep_prob": 1.5}, ValueError, r"dropout_keep_prob must lie in \(0, 1\], got 1.5"),
    ({"weights": np.zeros((20, 15))}, ValueError, r"weights must have shape \[20, 16\] \(\[4H, 1 \+ I \+ H\]\), got \[20, 15\]"),
    ({"layer_norm": True, "norm_gain": np.ones((4, 5))}, ValueError, r"norm_gain must have shape \[5, 5\]"),
    ({"norm_epsilon": 0.0}, ValueError, "norm_epsilon must be positive"),
    ({"dtype": "int32"}, TypeError, "dtype must be float32 or float64, got 'int32'"),
    ({"seed": -3}, ValueError, "seed must be a non-negative int or None, got -3"),
    ({"forget_bias": "1"}, TypeError, "forget_bias must be a Python float"),
])
def test_bad_cell_arguments(backend, kwargs, error, message):
    with pytest.raises(error, match=message):
        xlstm.LSTMCell(5, 10, backend=backend, **kwargs)


@pytest.mark.parametrize("units, inputs, name", [(0, 3, "num_units"), (-2, 3, "num_units"), (4, 0, "input_size"),
                                                  (2.5, 3, "num_units"), (True, 3, "num_units")])
def test_non_positive_sizes(units, inputs, name):
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        xlstm.LSTMCell(units, inputs)
    with pytest.raises(ValueError, match="must be a positive integer"):
        xlstm.Dense(units, inputs)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        xlstm.LSTMCell(2, 2).zero_state(0)


def test_bad_dense_input(backend):
    dense = xlstm.Dense(4, 3, backend=backend)
    with pytest.raises(ValueError, match="x must have its last axis equal to the layer's input_size 3"):
        dense(_on(backend, np.zeros((2, 5))))
    with pytest.raises(ValueError, match=r"kernel must have shape \[3, 4\], got \[4, 3\]"):
        xlstm.Dense(4, 3, kernel=np.zeros((4, 3)), backend=backend)
    with pytest.raises(TypeError, match="cell must be an xlstm.LSTMCell, SLSTMCell, MLSTMCell or MultiRNNCell, got Dense"):
        xlstm.dynamic_rnn(dense, _on(backend, np.zeros((1, 1, 3))))
