"""xlstm.convert ↔ TensorFlow 1 variables (TensorFlow itself is not installable here).

The oracle is TensorFlow's published cell output and an independent float64 NumPy
transcription of TensorFlow 1's `BasicLSTMCell` / `LayerNormBasicLSTMCell` call, which
reads the variables in TensorFlow's own layout (kernel [I+H, 4H], gates i, j, f, o).
"""
from __future__ import annotations

import numpy as np
import pytest

import xlstm
from xlstm.convert import from_tensorflow, to_tensorflow

B, T, I, H = 2, 4, 3, 4
NORMS = ("input", "transform", "forget", "output")


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _tf_layer_norm(x, gamma, beta):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * gamma + beta


def tf_cell_call(variables, scope, x, c, h, forget_bias):
    """TensorFlow 1's cell `call` for a batch, as its source reads."""
    z = np.concatenate([x, h], axis=1) @ variables[f"{scope}/kernel"]
    layer_norm = f"{scope}/input/gamma" in variables
    if not layer_norm:
        z = z + variables[f"{scope}/bias"]
    gates = dict(zip(NORMS, np.split(z, 4, axis=1)))
    if layer_norm:
        gates = {n: _tf_layer_norm(g, variables[f"{scope}/{n}/gamma"], variables[f"{scope}/{n}/beta"])
                 for n, g in gates.items()}
    new_c = c * _sigmoid(gates["forget"] + forget_bias) + _sigmoid(gates["input"]) * np.tanh(gates["transform"])
    if layer_norm:
        new_c = _tf_layer_norm(new_c, variables[f"{scope}/state/gamma"], variables[f"{scope}/state/beta"])
    return new_c, np.tanh(new_c) * _sigmoid(gates["output"])


def tf_dynamic_rnn(variables, scopes, inputs, forget_bias):
    """Outputs of a (stacked) TensorFlow cell over inputs [B, T, I], zero initial state."""
    states = [(np.zeros((inputs.shape[0], H)), np.zeros((inputs.shape[0], H))) for _ in scopes]
    outputs = []
    for t in range(inputs.shape[1]):
        x = inputs[:, t]
        for k, scope in enumerate(scopes):
            states[k] = tf_cell_call(variables, scope, x, *states[k], forget_bias)
            x = states[k][1]
        outputs.append(x)
    return np.stack(outputs, axis=1)


def _variables(scope, input_size, layer_norm, rng):
    variables = {f"{scope}/kernel": rng.normal(size=(input_size + H, 4 * H))}
    if layer_norm:
        for norm in NORMS + ("state",):
            variables[f"{scope}/{norm}/gamma"] = rng.normal(size=H) + 1
            variables[f"{scope}/{norm}/beta"] = rng.normal(size=H)
    else:
        variables[f"{scope}/bias"] = rng.normal(size=4 * H)
    return variables


def test_published_tensorflow_values():
    """DESIGN.md: LayerNormBasicLSTMCell(layer_norm=False), every weight and bias 0.5."""
    variables = {"rnn/layer_norm_basic_lstm_cell/kernel:0": np.full((5, 8), 0.5, np.float32),
                 "rnn/layer_norm_basic_lstm_cell/bias:0": np.full(8, 0.5, np.float32)}
    cell = from_tensorflow(variables)
    h, state = cell(xlstm.asarray([[1.0, 1.0, 1.0]]), xlstm.LSTMState(xlstm.asarray([[0.0, 0.1]]),
                                                                      xlstm.asarray([[0.2, 0.3]])))
    np.testing.assert_allclose(xlstm.to_numpy(h), [[0.64121795, 0.68166804]], atol=1e-6)
    np.testing.assert_allclose(xlstm.to_numpy(state.c), [[0.88477188, 0.98103917]], atol=1e-6)


@pytest.mark.parametrize("cell_scope, layer_norm", [
    ("basic_lstm_cell", False), ("lstm_cell", False), ("layer_norm_basic_lstm_cell", True),
    ("layer_norm_basic_lstm_cell", False)])
@pytest.mark.parametrize("stacked", [False, True])
def test_from_tensorflow_matches_tensorflow_semantics(backend, cell_scope, layer_norm, stacked):
    rng = np.random.default_rng(0)
    scopes = [f"rnn/multi_rnn_cell/cell_{k}/{cell_scope}" for k in range(2)] if stacked else [f"rnn/{cell_scope}"]
    variables = {}
    for k, scope in enumerate(scopes):
        variables.update(_variables(scope, I if k == 0 else H, layer_norm, rng))
    inputs = rng.normal(size=(B, T, I))
    expected = tf_dynamic_rnn(variables, scopes, inputs, forget_bias=0.7)

    converted = from_tensorflow(variables, forget_bias=0.7, backend=backend)
    assert isinstance(converted, xlstm.MultiRNNCell if stacked else xlstm.LSTMCell)
    outputs, _ = xlstm.dynamic_rnn(converted, xlstm.asarray(inputs, backend=backend))
    np.testing.assert_allclose(xlstm.to_numpy(outputs), expected, atol=1e-12)


def test_bidirectional_names_and_reverse_alignment(backend):
    rng = np.random.default_rng(1)
    variables = {**_variables("bidirectional_rnn/fw/basic_lstm_cell", I, False, rng),
                 **_variables("bidirectional_rnn/bw/basic_lstm_cell", I, False, rng)}
    inputs = rng.normal(size=(B, T, I))
    lengths = [T, 2]
    converted = from_tensorflow(variables, backend=backend)
    assert isinstance(converted, xlstm.Bidirectional)
    outputs, _ = converted(xlstm.asarray(inputs, backend=backend), sequence_length=lengths)
    for b, length in enumerate(lengths):
        row = inputs[b:b + 1, :length]
        fw = tf_dynamic_rnn(variables, ["bidirectional_rnn/fw/basic_lstm_cell"], row, 1.0)
        bw = tf_dynamic_rnn(variables, ["bidirectional_rnn/bw/basic_lstm_cell"], row[:, ::-1], 1.0)[:, ::-1]
        np.testing.assert_allclose(xlstm.to_numpy(outputs)[b, :length], np.concatenate([fw, bw], -1)[0], atol=1e-12)
        assert not xlstm.to_numpy(outputs)[b, length:].any()


@pytest.mark.parametrize("layer_norm", [False, True])
def test_round_trip_and_forget_bias_folding(layer_norm):
    rng = np.random.default_rng(2)
    cell_scope = "layer_norm_basic_lstm_cell" if layer_norm else "basic_lstm_cell"
    scopes = [f"rnn/multi_rnn_cell/cell_{k}/{cell_scope}" for k in range(2)]
    variables = {**_variables(scopes[0], I, layer_norm, rng), **_variables(scopes[1], H, layer_norm, rng)}
    stack = from_tensorflow(variables, forget_bias=1.0, dtype="float64")
    inputs = rng.normal(size=(B, T, I))
    outputs, _ = xlstm.dynamic_rnn(stack, xlstm.asarray(inputs))  # the way there is right, not only there and back
    np.testing.assert_allclose(xlstm.to_numpy(outputs), tf_dynamic_rnn(variables, scopes, inputs, 1.0), atol=1e-12)
    back = to_tensorflow(stack, forget_bias=1.0)
    assert sorted(back) == sorted(variables)
    for name in variables:
        np.testing.assert_array_equal(back[name], variables[name], err_msg=name)
    # a TensorFlow cell built with forget_bias=0.0 must compute the same: the 1.0 is folded in
    refolded = to_tensorflow(stack, forget_bias=0.0)
    inputs = rng.normal(size=(B, T, I))
    np.testing.assert_allclose(tf_dynamic_rnn(refolded, scopes, inputs, 0.0),
                               tf_dynamic_rnn(variables, scopes, inputs, 1.0), atol=1e-12)


def test_names_are_recognised_in_a_whole_checkpoint():
    rng = np.random.default_rng(3)
    legacy = {"encoder/rnn/basic_lstm_cell/weights:0": rng.normal(size=(I + H, 4 * H)),
              "encoder/rnn/basic_lstm_cell/biases:0": rng.normal(size=4 * H)}
    other = _variables("decoder/rnn/lstm_cell", H, False, rng)
    everything = {**legacy, **other, "softmax/kernel": np.zeros((H, 7)), "global_step": np.array(5)}
    with pytest.raises(ValueError, match="more than one LSTM"):  # two models: the caller must choose one
        from_tensorflow(everything)
    encoder = from_tensorflow(everything, scope="encoder/", dtype="float64")
    np.testing.assert_array_equal(to_tensorflow(encoder, scope="encoder/rnn")["encoder/rnn/basic_lstm_cell/kernel"],
                                  legacy["encoder/rnn/basic_lstm_cell/weights:0"])


def test_refusals_say_why():
    rng = np.random.default_rng(4)
    variables = _variables("rnn/lstm_cell", I, False, rng)
    with pytest.raises(ValueError, match="peephole"):
        from_tensorflow({**variables, "rnn/lstm_cell/w_f_diag": np.zeros(H)})
    with pytest.raises(ValueError, match="projection"):
        from_tensorflow({**variables, "rnn/lstm_cell/projection/kernel": np.zeros((H, 2))})
    with pytest.raises(ValueError, match="variables"):
        from_tensorflow({"rnn/lstm_cell/kernel": variables["rnn/lstm_cell/kernel"]})
    with pytest.raises(ValueError, match="no LSTM cell variables"):
        from_tensorflow({"dense/kernel": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="fw/ and bw/"):
        from_tensorflow(_variables("bidirectional_rnn/fw/lstm_cell", I, False, rng))
    with pytest.raises(TypeError, match="variables must be a dict"):
        from_tensorflow([1, 2])
    with pytest.raises(TypeError, match="TensorFlow's structures"):
        to_tensorflow(xlstm.LSTM([xlstm.Reversed(xlstm.LSTMCell(H, I))]))
