"""MultiRNNCell: layer k feeds layer k+1, forward against the reference and torch, gradients."""
from __future__ import annotations

import numpy as np
import pytest

import xlstm
from reference import reference_rnn
from test_gradients import assert_gradient_close, numeric_gradient


def _stack(backend, weights, **settings):
    return xlstm.MultiRNNCell([
        xlstm.LSTMCell(w.shape[0] // 4, w.shape[1] - 1 - w.shape[0] // 4, weights=w, backend=backend, **settings)
        for w in weights])


def _weights(rng, sizes):
    """Fused matrices for layers of sizes [I, H1, H2, ...]."""
    return [rng.normal(size=(4 * h, 1 + i + h)) for i, h in zip(sizes, sizes[1:])]


def test_stack_matches_reference_layer_by_layer(backend):
    rng = np.random.default_rng(0)
    weights, inputs = _weights(rng, [3, 4, 2]), rng.normal(size=(2, 5, 3))
    lengths = [5, 2]
    stack = _stack(backend, weights, forget_bias=0.5)
    outputs, final = xlstm.dynamic_rnn(stack, xlstm.asarray(inputs, backend=backend), sequence_length=lengths)
    lower, c0, h0 = reference_rnn(weights[0], inputs, lengths=lengths, forget_bias=0.5)
    upper, c1, h1 = reference_rnn(weights[1], lower, lengths=lengths, forget_bias=0.5)
    np.testing.assert_allclose(xlstm.to_numpy(outputs), upper, atol=1e-10)
    assert isinstance(final, tuple) and len(final) == 2
    np.testing.assert_allclose(xlstm.to_numpy(final[0].c), c0, atol=1e-10)
    np.testing.assert_allclose(xlstm.to_numpy(final[1].h), h1, atol=1e-10)


def test_stack_step_by_step_equals_unrolled(backend):
    rng = np.random.default_rng(1)
    stack = _stack(backend, _weights(rng, [2, 3, 3]), layer_norm=True)
    x = xlstm.asarray(rng.normal(size=(2, 4, 2)), backend=backend)
    outputs, final = xlstm.dynamic_rnn(stack, x)
    state = stack.zero_state(2)
    for t in range(4):
        h, state = stack(x[:, t, :], state)
        np.testing.assert_allclose(xlstm.to_numpy(h), xlstm.to_numpy(outputs)[:, t], atol=1e-12)
    for mine, theirs in zip(state, final):
        np.testing.assert_allclose(xlstm.to_numpy(mine.c), xlstm.to_numpy(theirs.c), atol=1e-12)


def test_stack_matches_torch_multilayer_lstm(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    I, H, layers = 3, 4, 3
    lstm = torch.nn.LSTM(I, H, num_layers=layers, batch_first=True).double()
    weights = []
    for k in range(layers):
        w_ih, w_hh = (getattr(lstm, f"{n}_l{k}").detach().numpy() for n in ("weight_ih", "weight_hh"))
        bias = sum(getattr(lstm, f"{n}_l{k}").detach().numpy() for n in ("bias_ih", "bias_hh"))
        fused = np.concatenate([bias[:, None], w_ih, w_hh], axis=1)  # torch gates i, f, g, o
        i, f, g, o = np.split(fused, 4)
        weights.append(np.concatenate([f, i, g, o]))  # xlstm gates f, i, c, o
    inputs = rng.normal(size=(2, 5, I))
    expected, (h_n, c_n) = lstm(torch.from_numpy(inputs))
    outputs, final = xlstm.dynamic_rnn(_stack(backend, weights, forget_bias=0.0), xlstm.asarray(inputs, backend=backend))
    np.testing.assert_allclose(xlstm.to_numpy(outputs), expected.detach().numpy(), atol=1e-10)
    for k in range(layers):
        np.testing.assert_allclose(xlstm.to_numpy(final[k].c), c_n[k].detach().numpy(), atol=1e-10)
        np.testing.assert_allclose(xlstm.to_numpy(final[k].h), h_n[k].detach().numpy(), atol=1e-10)


def test_stack_gradients(backend):
    rng = np.random.default_rng(3)
    B, T = 2, 3
    weights, inputs = _weights(rng, [2, 2, 2]), rng.normal(size=(B, T, 2))
    gains = [rng.normal(size=(5, 2)) for _ in weights]
    r_out, r_c = rng.normal(size=(B, T, 2)), rng.normal(size=(B, 2))
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731

    def stack_of(ws, gs):
        return xlstm.MultiRNNCell([xlstm.LSTMCell(2, 2, weights=w, layer_norm=k == 1, norm_gain=g, backend=backend,
                                                  dropout_keep_prob=0.8, seed=k)
                                  for k, (w, g) in enumerate(zip(ws, gs))])

    def loss_of(ws, gs, x):
        outputs, final = xlstm.dynamic_rnn(stack_of(ws, gs), on(x), sequence_length=[3, 2])
        return float(np.sum(xlstm.to_numpy(outputs) * r_out) + np.sum(xlstm.to_numpy(final[0].c) * r_c))

    stack = stack_of(weights, gains)
    _, final, backward = xlstm.dynamic_rnn_vjp(stack, on(inputs), sequence_length=[3, 2])
    zeros = xlstm.asarray(np.zeros((B, 2)), backend=backend)
    grads = backward(on(r_out), (xlstm.LSTMState(on(r_c), zeros), xlstm.LSTMState(zeros, zeros)))
    assert set(grads) == set(stack.parameters()) | {"inputs", "initial_state"}
    for k in range(2):
        numeric = numeric_gradient(lambda w: loss_of([w if j == k else v for j, v in enumerate(weights)], gains, inputs),
                                   weights[k])
        assert_gradient_close(grads[f"cell_{k}/weights"], numeric, f"cell_{k}/weights")
    numeric_gain = numeric_gradient(lambda g: loss_of(weights, [gains[0], g], inputs), gains[1])
    assert_gradient_close(grads["cell_1/norm_gain"], numeric_gain, "cell_1/norm_gain")
    assert_gradient_close(grads["inputs"], numeric_gradient(lambda x: loss_of(weights, gains, x), inputs), "inputs")


def test_stack_bad_input():
    with pytest.raises(ValueError, match=r"cells\[1\].input_size must equal cells\[0\].num_units 4"):
        xlstm.MultiRNNCell([xlstm.LSTMCell(4, 3), xlstm.LSTMCell(4, 5)])
    with pytest.raises(TypeError, match="cells must be a non-empty list"):
        xlstm.MultiRNNCell([])
    stack = xlstm.MultiRNNCell([xlstm.LSTMCell(4, 3), xlstm.LSTMCell(2, 4)])
    with pytest.raises(TypeError, match="initial_state must be a tuple of 2 states"):
        xlstm.dynamic_rnn(stack, xlstm.asarray(np.zeros((1, 2, 3)), dtype="float32"),
                          initial_state=stack.cells[0].zero_state(1))
