"""xlstm.convert ↔ ONNX LSTM tensors: ONNX Runtime's LSTM operator is the oracle (float32, 1e-5)."""
from __future__ import annotations

import numpy as np
import pytest

import xlstm
from xlstm.convert import from_onnx, to_onnx_tensors

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx_oracle import run_lstm_operator  # noqa: E402

T, B, I, H = 5, 4, 3, 6
LENGTHS = [5, 0, 2, 4]  # unsorted, one empty row, one full row
ATOL = 1e-5  # ORT runs in float32
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def onnx_tensors(directions: int, seed: int):
    """Random float32 W [D, 4H, I], R [D, 4H, H], B [D, 8H] (Wb and Rb both non-zero)."""
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(0.0, 0.5, size=shape).astype(np.float32)
                 for shape in ((directions, 4 * H, I), (directions, 4 * H, H), (directions, 8 * H)))


def time_major_inputs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(T, B, I)).astype(np.float32)


def run_xlstm(model, x, lengths, backend):
    """model over time-major x → outputs [T, B, D·H] and final h, c [D, B, H] as NumPy."""
    seq = None if lengths is None else xlstm.asarray(np.asarray(lengths, np.int32), backend=backend)
    outputs, finals = model(xlstm.asarray(x, backend=backend), sequence_length=seq, time_major=True)
    states = finals[0] if isinstance(finals[0], tuple) and not isinstance(finals[0], xlstm.LSTMState) else finals
    h = np.stack([xlstm.to_numpy(state.h) for state in states])
    c = np.stack([xlstm.to_numpy(state.c) for state in states])
    return xlstm.to_numpy(outputs), h, c


def assert_matches_onnx_runtime(got, expected):
    y, y_h, y_c = expected
    steps, directions, batch, units = y.shape
    joined = np.transpose(y, (0, 2, 1, 3)).reshape(steps, batch, directions * units)  # [T, B, D·H], fw first
    for name, actual, want in zip(("outputs", "final h", "final c"), got, (joined, y_h, y_c)):
        np.testing.assert_allclose(actual, want, atol=ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_from_onnx_matches_onnx_runtime(backend, direction, lengths):
    W, R, bias = onnx_tensors(DIRECTIONS[direction], seed=len(direction))
    x = time_major_inputs(seed=3)
    expected = run_lstm_operator(W, R, bias, x, direction=direction, lengths=lengths)

    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731
    model = from_onnx(on(W), on(R), on(bias), direction=None if direction == "bidirectional" else direction,
                      backend=backend)
    layer = model.layers[0]
    assert isinstance(model, xlstm.LSTM) and len(model.layers) == 1
    assert {"forward": xlstm.LSTMCell, "reverse": xlstm.Reversed,
            "bidirectional": xlstm.Bidirectional}[direction] is type(layer)
    assert_matches_onnx_runtime(run_xlstm(model, x, lengths, backend), expected)


def test_from_onnx_takes_nested_lists_and_no_bias():
    W, R, _ = onnx_tensors(1, seed=4)
    x = time_major_inputs(seed=5)
    model = from_onnx(W.tolist(), R.tolist())
    assert model.dtype == xlstm.current_backend().xp.float32
    expected = run_lstm_operator(W, R, np.zeros((1, 8 * H), np.float32), x)
    assert_matches_onnx_runtime(run_xlstm(model, x, None, xlstm.current_backend()), expected)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_round_trip_gives_back_w_r_and_summed_bias(backend, direction):
    W, R, bias = (a.astype(np.float64) for a in onnx_tensors(DIRECTIONS[direction], seed=6))
    model = from_onnx(W, R, bias, direction=direction, backend=backend)
    x = time_major_inputs(seed=8)  # the way there is right, not only there and back:
    expected = run_lstm_operator(*(a.astype(np.float32) for a in (W, R, bias)), x, direction=direction)
    assert_matches_onnx_runtime(run_xlstm(model, x.astype(np.float64), None, backend), expected)
    tensors = to_onnx_tensors(model)
    assert tensors["direction"] == direction and tensors["hidden_size"] == H
    np.testing.assert_array_equal(tensors["W"], W)
    np.testing.assert_array_equal(tensors["R"], R)
    np.testing.assert_array_equal(tensors["B"][:, :4 * H], bias[:, :4 * H] + bias[:, 4 * H:])
    np.testing.assert_array_equal(tensors["B"][:, 4 * H:], 0.0)


def _layers_with_forget_bias(backend):
    def cell(seed, forget_bias):
        return xlstm.LSTMCell(H, I, forget_bias=forget_bias, bias_initializer=xlstm.init.uniform(-0.5, 0.5),
                              seed=seed, backend=backend)

    return {"forward": cell(1, 1.0), "reverse": xlstm.Reversed(cell(2, 1.0)),
            "bidirectional": xlstm.LSTM([xlstm.Bidirectional(cell(3, 1.0), cell(4, -0.5))])}


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_to_onnx_tensors_fold_the_forget_bias(backend, direction, lengths):
    layer = _layers_with_forget_bias(backend)[direction]
    tensors = to_onnx_tensors(layer)
    assert tensors["direction"] == direction
    assert all(isinstance(tensors[name], np.ndarray) for name in ("W", "R", "B"))
    x = time_major_inputs(seed=7)
    expected = run_lstm_operator(tensors["W"], tensors["R"], tensors["B"], x, direction=direction, lengths=lengths)
    model = layer if isinstance(layer, xlstm.LSTM) else xlstm.LSTM([layer])
    assert_matches_onnx_runtime(run_xlstm(model, x, lengths, backend), expected)


def test_from_onnx_refusals():
    W, R, bias = onnx_tensors(2, seed=8)
    with pytest.raises(ValueError, match="direction 'forward' needs 1"):
        from_onnx(W, R, bias, direction="forward")
    with pytest.raises(ValueError, match="direction must be one of"):
        from_onnx(W, R, bias, direction="backward")
    with pytest.raises(ValueError, match="W must have shape"):
        from_onnx(W[0], R, bias)
    with pytest.raises(ValueError, match="R must have shape"):
        from_onnx(W, R[:, :, :2], bias)
    with pytest.raises(ValueError, match="B must have shape"):
        from_onnx(W, R, bias[:, :4 * H])


def test_to_onnx_tensors_refusals():
    cell = xlstm.LSTMCell(H, I, seed=1)
    with pytest.raises(ValueError, match="layer normalisation"):
        to_onnx_tensors(xlstm.LSTMCell(H, I, layer_norm=True))
    with pytest.raises(ValueError, match="stacks several"):
        to_onnx_tensors(xlstm.MultiRNNCell([cell, xlstm.LSTMCell(H, H)]))
    with pytest.raises(ValueError, match="this xlstm.LSTM has 2"):
        to_onnx_tensors(xlstm.LSTM([cell, xlstm.LSTMCell(H, H)]))
    with pytest.raises(ValueError, match="share hidden_size"):
        to_onnx_tensors(xlstm.Bidirectional(cell, xlstm.LSTMCell(H + 1, I)))
    with pytest.raises(TypeError, match="layer must be"):
        to_onnx_tensors(object())
