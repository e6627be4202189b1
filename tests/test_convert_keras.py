"""xlstm.convert ↔ Keras `LSTM` weights, against an independent float64 transcription of
Keras's LSTM step (kernel [I, 4H], recurrent_kernel [H, 4H], gates i, f, c, o)."""
from __future__ import annotations

import numpy as np
import pytest

import xlstm
from xlstm.convert import from_keras, to_keras

B, T, I, H = 2, 5, 3, 4


def keras_lstm(weights, inputs, go_backwards=False):
    """Keras LSTM(return_sequences=True) over inputs [B, T, I], zero initial state."""
    kernel, recurrent_kernel = weights[0], weights[1]
    bias = weights[2] if len(weights) == 3 else np.zeros(4 * H)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    c = h = np.zeros((inputs.shape[0], H))
    steps = range(inputs.shape[1])
    outputs = []
    for t in (reversed(steps) if go_backwards else steps):
        i, f, candidate, o = np.split(inputs[:, t] @ kernel + h @ recurrent_kernel + bias, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(candidate)
        h = sigmoid(o) * np.tanh(c)
        outputs.append(h)
    outputs = np.stack(outputs, axis=1)
    return outputs[:, ::-1] if go_backwards else outputs  # Bidirectional re-aligns the backward layer


def _weights(rng, bias=True):
    weights = [rng.normal(size=(I, 4 * H)), rng.normal(size=(H, 4 * H))]
    return weights + [rng.normal(size=4 * H)] if bias else weights


@pytest.mark.parametrize("bias", [True, False])
def test_from_keras_matches_keras_semantics(backend, bias):
    rng = np.random.default_rng(0)
    weights, inputs = _weights(rng, bias), rng.normal(size=(B, T, I))
    outputs, _ = from_keras(weights, backend=backend)(xlstm.asarray(inputs, backend=backend))
    np.testing.assert_allclose(xlstm.to_numpy(outputs), keras_lstm(weights, inputs), atol=1e-12)


def test_bidirectional_wrapper(backend):
    rng = np.random.default_rng(1)
    forward, backward, inputs = _weights(rng), _weights(rng), rng.normal(size=(B, T, I))
    model = from_keras(forward + backward, backend=backend)
    assert isinstance(model.layers[0], xlstm.Bidirectional)
    outputs, _ = model(xlstm.asarray(inputs, backend=backend))
    expected = np.concatenate([keras_lstm(forward, inputs), keras_lstm(backward, inputs, go_backwards=True)], -1)
    np.testing.assert_allclose(xlstm.to_numpy(outputs), expected, atol=1e-12)


def test_round_trip_and_forget_bias_folding():
    rng = np.random.default_rng(2)
    weights = _weights(rng) + _weights(rng)
    model = from_keras(weights, dtype="float64")
    inputs = rng.normal(size=(B, T, I))
    outputs, _ = model(xlstm.asarray(inputs))  # the way there is right, not only there and back
    expected = np.concatenate([keras_lstm(weights[:3], inputs), keras_lstm(weights[3:], inputs, go_backwards=True)], -1)
    np.testing.assert_allclose(xlstm.to_numpy(outputs), expected, atol=1e-12)
    back = to_keras(model)
    for ours, theirs in zip(back, weights, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    cell = xlstm.LSTMCell(H, I, forget_bias=1.0, seed=3, dtype="float64")
    inputs = rng.normal(size=(B, T, I))
    outputs, _ = xlstm.dynamic_rnn(cell, xlstm.asarray(inputs))
    np.testing.assert_allclose(keras_lstm(to_keras(cell), inputs), xlstm.to_numpy(outputs), atol=1e-12)


def test_refusals_say_why():
    with pytest.raises(ValueError, match="got 5 arrays"):
        from_keras([np.zeros(1)] * 5)
    with pytest.raises(TypeError, match="get_weights"):
        from_keras(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="layer-norm"):
        to_keras(xlstm.LSTMCell(H, I, layer_norm=True))
    with pytest.raises(ValueError, match="Keras LSTM layer holds one"):
        to_keras(xlstm.MultiRNNCell([xlstm.LSTMCell(H, I), xlstm.LSTMCell(H, H)]))
    with pytest.raises(ValueError, match="recurrent_kernel"):
        from_keras([np.zeros((I, 4 * H)), np.zeros(4 * H), np.zeros(4 * H)])
