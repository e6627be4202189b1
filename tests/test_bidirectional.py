"""bidirectional_dynamic_rnn, reverse_sequence and the sequence layers (Reversed,
Bidirectional, LSTM) against the independent float64 reference and finite differences."""
from __future__ import annotations

import numpy as np
import pytest

import xlstm
from reference import reference_rnn
from test_gradients import assert_gradient_close, numeric_gradient

B, T, I, H_FW, H_BW = 3, 4, 2, 3, 2
LENGTHS = [4, 2, 0]


def _reference_reversed(W, inputs, lengths, c0=None, h0=None):
    """The backward direction by hand: each row's valid prefix reversed, run, reversed back."""
    outputs = np.zeros(inputs.shape[:2] + (np.asarray(W).shape[0] // 4,))
    finals_c, finals_h = [], []
    for b, length in enumerate(lengths):
        row = inputs[b:b + 1, :length][:, ::-1]
        initial = {} if c0 is None else {"c0": c0[b:b + 1], "h0": h0[b:b + 1]}
        out, c, h = reference_rnn(W, row, **initial)
        outputs[b, :length] = out[0, ::-1]
        finals_c.append(c[0])
        finals_h.append(h[0])
    return outputs, np.stack(finals_c), np.stack(finals_h)


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"w_fw": rng.normal(size=(4 * H_FW, 1 + I + H_FW)), "w_bw": rng.normal(size=(4 * H_BW, 1 + I + H_BW)),
            "inputs": rng.normal(size=(B, T, I)), "c_bw": rng.normal(size=(B, H_BW)), "h_bw": rng.normal(size=(B, H_BW))}


def test_reverse_sequence_reverses_each_valid_prefix(backend):
    x = np.arange(B * T * 2, dtype=np.float64).reshape(B, T, 2)
    expected = x.copy()
    for b, length in enumerate(LENGTHS):
        expected[b, :length] = x[b, :length][::-1]
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731
    np.testing.assert_array_equal(xlstm.to_numpy(xlstm.reverse_sequence(on(x), on(np.array(LENGTHS)))), expected)
    time_major = xlstm.reverse_sequence(on(x.transpose(1, 0, 2)), LENGTHS, time_major=True)
    np.testing.assert_array_equal(xlstm.to_numpy(time_major).transpose(1, 0, 2), expected)
    np.testing.assert_array_equal(xlstm.to_numpy(xlstm.reverse_sequence(on(x))), x[:, ::-1])


@pytest.mark.parametrize("time_major", [False, True])
def test_bidirectional_dynamic_rnn_matches_reference(backend, time_major):
    a = _arrays()
    on = lambda x: xlstm.asarray(x, backend=backend)  # noqa: E731
    cell_fw = xlstm.LSTMCell(H_FW, I, weights=a["w_fw"], backend=backend)
    cell_bw = xlstm.LSTMCell(H_BW, I, weights=a["w_bw"], backend=backend)
    inputs = a["inputs"].transpose(1, 0, 2) if time_major else a["inputs"]
    (out_fw, out_bw), (state_fw, state_bw) = xlstm.bidirectional_dynamic_rnn(
        cell_fw, cell_bw, on(inputs), sequence_length=LENGTHS,
        initial_state_bw=xlstm.LSTMState(on(a["c_bw"]), on(a["h_bw"])), time_major=time_major)
    ref_fw, ref_c_fw, ref_h_fw = reference_rnn(a["w_fw"], a["inputs"], lengths=LENGTHS)
    ref_bw, ref_c_bw, ref_h_bw = _reference_reversed(a["w_bw"], a["inputs"], LENGTHS, a["c_bw"], a["h_bw"])
    as_batch_major = (lambda x: xlstm.to_numpy(x).transpose(1, 0, 2)) if time_major else xlstm.to_numpy
    for name, actual, expected in [("outputs_fw", as_batch_major(out_fw), ref_fw),
                                   ("outputs_bw", as_batch_major(out_bw), ref_bw),
                                   ("c_fw", state_fw.c, ref_c_fw), ("h_fw", state_fw.h, ref_h_fw),
                                   ("c_bw", state_bw.c, ref_c_bw), ("h_bw", state_bw.h, ref_h_bw)]:
        np.testing.assert_allclose(xlstm.to_numpy(actual), expected, atol=1e-12, err_msg=name)


def test_bidirectional_vjp_matches_finite_differences(backend):
    a = _arrays(1)
    rng = np.random.default_rng(2)
    r_fw, r_bw = rng.normal(size=(B, T, H_FW)), rng.normal(size=(B, T, H_BW))
    r_c, r_h = rng.normal(size=(B, H_BW)), rng.normal(size=(B, H_BW))
    on = lambda x: xlstm.asarray(x, backend=backend)  # noqa: E731

    def run(values, vjp=False):
        cell_fw = xlstm.LSTMCell(H_FW, I, weights=values["w_fw"], backend=backend)
        cell_bw = xlstm.LSTMCell(H_BW, I, weights=values["w_bw"], backend=backend,
                                 layer_norm=True, norm_gain=1.5, norm_shift=0.1)
        call = xlstm.bidirectional_dynamic_rnn_vjp if vjp else xlstm.bidirectional_dynamic_rnn
        return call(cell_fw, cell_bw, on(values["inputs"]), sequence_length=LENGTHS,
                    initial_state_bw=xlstm.LSTMState(on(values["c_bw"]), on(values["h_bw"])))

    def loss(name):
        def of(array):
            (out_fw, out_bw), (_, state_bw) = run({**a, name: array})
            return float(np.sum(xlstm.to_numpy(out_fw) * r_fw) + np.sum(xlstm.to_numpy(out_bw) * r_bw)
                         + np.sum(xlstm.to_numpy(state_bw.c) * r_c) + np.sum(xlstm.to_numpy(state_bw.h) * r_h))
        return of

    _, _, backward = run(a, vjp=True)
    grads = backward((on(r_fw), on(r_bw)), (None, xlstm.LSTMState(on(r_c), on(r_h))))
    assert {"fw/weights", "bw/weights", "bw/norm_gain", "bw/norm_shift", "inputs"} <= set(grads)
    for key, name in [("fw/weights", "w_fw"), ("bw/weights", "w_bw"), ("inputs", "inputs")]:
        assert_gradient_close(grads[key], numeric_gradient(loss(name), a[name], samples=24), key)
    assert_gradient_close(grads["initial_state_bw"].c, numeric_gradient(loss("c_bw"), a["c_bw"]), "c_bw")
    assert_gradient_close(grads["initial_state_bw"].h, numeric_gradient(loss("h_bw"), a["h_bw"]), "h_bw")


def test_lstm_model_of_sequence_layers_matches_reference_and_finite_differences(backend):
    """LSTM([Bidirectional, Reversed]): layer 1 reads both directions of layer 0, reversed."""
    rng = np.random.default_rng(3)
    w = {"fw": rng.normal(size=(4 * H_FW, 1 + I + H_FW)), "bw": rng.normal(size=(4 * H_BW, 1 + I + H_BW)),
         "top": rng.normal(size=(8, 1 + H_FW + H_BW + 2))}
    inputs, r = rng.normal(size=(B, T, I)), rng.normal(size=(B, T, 2))
    on = lambda x: xlstm.asarray(x, backend=backend)  # noqa: E731

    def model(values):
        return xlstm.LSTM([
            xlstm.Bidirectional(xlstm.LSTMCell(H_FW, I, weights=values["fw"], backend=backend),
                                xlstm.LSTMCell(H_BW, I, weights=values["bw"], backend=backend)),
            xlstm.Reversed(xlstm.LSTMCell(2, H_FW + H_BW, weights=values["top"], backend=backend))])

    outputs, finals = model(w)(on(inputs), sequence_length=LENGTHS)
    layer0 = np.concatenate([reference_rnn(w["fw"], inputs, lengths=LENGTHS)[0],
                             _reference_reversed(w["bw"], inputs, LENGTHS)[0]], axis=-1)
    expected, c, h = _reference_reversed(w["top"], layer0, LENGTHS)
    np.testing.assert_allclose(xlstm.to_numpy(outputs), expected, atol=1e-12)
    np.testing.assert_allclose(xlstm.to_numpy(finals[1].h), h, atol=1e-12)
    assert isinstance(finals[0], tuple) and len(finals[0]) == 2

    _, _, backward = model(w).vjp(on(inputs), sequence_length=LENGTHS)
    grads = backward(on(r))
    assert sorted(k for k in grads if "/" in k) == ["layer_0/bw/weights", "layer_0/fw/weights", "layer_1/weights"]

    def loss(name):
        return lambda array: float(np.sum(xlstm.to_numpy(model({**w, name: array})(
            on(inputs), sequence_length=LENGTHS)[0]) * r))

    for key, name in [("layer_0/fw/weights", "fw"), ("layer_0/bw/weights", "bw"), ("layer_1/weights", "top")]:
        assert_gradient_close(grads[key], numeric_gradient(loss(name), w[name], samples=20), key)
    assert_gradient_close(grads["inputs"], numeric_gradient(
        lambda x: float(np.sum(xlstm.to_numpy(model(w)(on(x), sequence_length=LENGTHS)[0]) * r)), inputs), "inputs")


def test_bad_arguments_are_named():
    cell = xlstm.LSTMCell(2, 3)
    x = xlstm.asarray(np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="same input_size"):
        xlstm.bidirectional_dynamic_rnn(cell, xlstm.LSTMCell(2, 4), x)
    with pytest.raises(TypeError, match="cell_bw must be"):
        xlstm.bidirectional_dynamic_rnn(cell, "cell", x)
    with pytest.raises(TypeError, match="initial_state.*pair"):
        xlstm.Bidirectional(cell, cell)(x, initial_state=cell.zero_state(1))
    with pytest.raises(ValueError, match="layers\\[1\\].input_size"):
        xlstm.LSTM([xlstm.Bidirectional(cell, cell), xlstm.LSTMCell(2, 3)])
    with pytest.raises(ValueError, match="sequence_length"):
        xlstm.reverse_sequence(x, [5])
