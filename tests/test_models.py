"""CharLM: gradients by finite differences, truncated BPTT state carry, sampling."""
from __future__ import annotations

import numpy as np
import pytest

import xlstm
from test_gradients import assert_gradient_close, numeric_gradient
from xlstm.models import CharLM


def _model(backend, **kwargs):
    settings = {"embedding_size": 3, "hidden_size": 3, "num_layers": 2, "seed": 0, "dtype": "float64"}
    return CharLM(7, backend=backend, **{**settings, **kwargs})


@pytest.mark.parametrize("layer_norm", [False, True])
def test_loss_and_grads_match_finite_differences(backend, layer_norm):
    model = _model(backend, layer_norm=layer_norm, dropout_keep_prob=0.8)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, size=(2, 5))
    ids[0, :3] = 4  # a repeated token: its embedding row sums several gradients
    inputs, targets = (xlstm.asarray(a, backend=backend) for a in (ids[:, :-1], ids[:, 1:]))
    initial = tuple(xlstm.LSTMState(*(xlstm.asarray(rng.normal(size=(2, 3)), backend=backend) for _ in "ch"))
                    for _ in range(2))
    parameters = {name: xlstm.to_numpy(value) for name, value in model.parameters().items()}

    def loss_of(name):
        def of(value):
            fresh = _model(backend, layer_norm=layer_norm, dropout_keep_prob=0.8)  # same seed: same masks
            fresh.set_parameters({**parameters, name: value})
            return float(xlstm.to_numpy(fresh.loss(inputs, targets, initial)[0]))
        return of

    result = model.loss_and_grads(inputs, targets, initial)
    assert set(result.grads) == set(parameters)
    for name in ("embedding", "cell_0/weights", "cell_1/weights", "dense/kernel", "dense/bias") + (
            ("cell_1/norm_gain", "cell_0/norm_shift") if layer_norm else ()):
        numeric = numeric_gradient(loss_of(name), parameters[name], samples=8)
        assert_gradient_close(result.grads[name], numeric, name)


def test_loss_is_the_mean_cross_entropy_of_the_next_token(backend):
    model = _model(backend)
    ids = xlstm.asarray(np.array([[1, 2, 3, 4], [4, 3, 2, 1]]), backend=backend)
    loss, state = model.loss(ids[:, :-1], ids[:, 1:])
    outputs, _ = xlstm.dynamic_rnn(model.stack, xlstm.asarray(
        xlstm.to_numpy(model.embedding)[xlstm.to_numpy(ids[:, :-1])], backend=backend))
    logits = xlstm.to_numpy(model.dense(outputs))
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean(np.take_along_axis(log_p, xlstm.to_numpy(ids[:, 1:])[..., None], -1))
    np.testing.assert_allclose(float(xlstm.to_numpy(loss)), expected, atol=1e-12)
    assert len(state) == 2


def test_state_carries_across_windows(backend):
    model = _model(backend)
    ids = xlstm.asarray(np.random.default_rng(1).integers(0, 7, size=(2, 9)), backend=backend)
    whole, _ = model.loss(ids[:, :8], ids[:, 1:9])
    first, state = model.loss(ids[:, :4], ids[:, 1:5])
    second, _ = model.loss(ids[:, 4:8], ids[:, 5:9], state)
    np.testing.assert_allclose(float(xlstm.to_numpy(whole)),
                               (float(xlstm.to_numpy(first)) + float(xlstm.to_numpy(second))) / 2, atol=1e-12)


def test_generate_is_seeded_and_respects_top_k(backend):
    model = _model(backend)
    first = model.generate([1, 2], 20, seed=3)
    assert first == model.generate([1, 2], 20, seed=3) and len(first) == 20
    assert all(0 <= token < 7 for token in first)
    assert first != model.generate([1, 2], 20, seed=4)
    greedy = model.generate([1, 2], 10, top_k=1, seed=5)
    assert greedy == model.generate([1, 2], 10, top_k=1, seed=6), "top_k=1 is greedy: the seed cannot matter"
    # The greedy continuation follows the largest logit at every step.
    h, state = model.stack(model._embed(xlstm.asarray([[1]], backend=backend))[:, 0, :])
    h, state = model.stack(model._embed(xlstm.asarray([[2]], backend=backend))[:, 0, :], state)
    assert greedy[0] == int(np.argmax(xlstm.to_numpy(model.dense(h))))


def test_generate_bad_input():
    model = CharLM(5, hidden_size=4, embedding_size=2, num_layers=1)
    with pytest.raises(ValueError, match="prompt must be a non-empty list"):
        model.generate([], 3)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        model.generate([1], 3, temperature=0)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        model.generate([1], 3, top_k=0)
    with pytest.raises(ValueError, match=r"inputs must lie in \[0, 4\]"):
        model.generate([9], 3)


def test_scatter_add_rows_sums_repeated_ids(backend):
    rng = np.random.default_rng(2)
    ids = np.array([3, 0, 3, 3, 5, 0, 9], dtype=np.int64)
    values = rng.normal(size=(7, 4))
    expected = np.zeros((11, 4))
    for k, row in enumerate(ids):  # the oracle: one row at a time, in float64
        expected[row] += values[k]
    total = backend.library.scatter_add_rows(
        11, xlstm.asarray(ids, backend=backend), xlstm.asarray(values, dtype="float64", backend=backend))
    assert tuple(total.shape) == (11, 4)
    np.testing.assert_allclose(xlstm.to_numpy(total), expected, rtol=1e-12, atol=1e-12)


def test_blocked_output_layer_matches_finite_differences(backend, monkeypatch):
    """With the logits taken a few rows at a time, loss and gradients are unchanged (and still right)."""
    model = _model(backend)
    ids = np.random.default_rng(3).integers(0, 7, size=(2, 6))
    ids[1, :4] = 2  # repeated token ids
    inputs, targets = (xlstm.asarray(a, backend=backend) for a in (ids[:, :-1], ids[:, 1:]))
    whole = model.loss_and_grads(inputs, targets)
    monkeypatch.setattr("xlstm.models.LOGIT_BLOCK_ELEMENTS", 3 * 7)  # 3 of the 10 rows per block
    blocked = model.loss_and_grads(inputs, targets)
    np.testing.assert_allclose(xlstm.to_numpy(blocked.loss), xlstm.to_numpy(whole.loss), rtol=1e-12)
    np.testing.assert_allclose(xlstm.to_numpy(model.loss(inputs, targets)[0]), xlstm.to_numpy(whole.loss),
                               rtol=1e-12)
    for name, grad in whole.grads.items():
        np.testing.assert_allclose(xlstm.to_numpy(blocked.grads[name]), xlstm.to_numpy(grad), rtol=1e-10,
                                   atol=1e-14, err_msg=name)
    parameters = {name: xlstm.to_numpy(value) for name, value in model.parameters().items()}

    def loss_of_embedding(value):
        model.set_parameters({**parameters, "embedding": value})
        return float(xlstm.to_numpy(model.loss(inputs, targets)[0]))

    numeric = numeric_gradient(loss_of_embedding, parameters["embedding"], samples=21)
    assert_gradient_close(blocked.grads["embedding"], numeric, "embedding")


def test_eval_switches_dropout_off_and_generate_mutates_nothing(backend):
    model = _model(backend, dropout_keep_prob=0.5)
    plain = _model(backend)  # same seed and weights, no dropout
    ids = xlstm.asarray(np.array([[1, 2, 3, 4], [4, 3, 2, 1]]), backend=backend)
    assert model.training and all(cell.training for cell in model.stack.cells)
    dropped = xlstm.to_numpy(model.loss(ids[:, :-1], ids[:, 1:])[0])
    assert model.eval() is model and not model.training
    inferred = xlstm.to_numpy(model.loss(ids[:, :-1], ids[:, 1:])[0])
    np.testing.assert_array_equal(inferred, xlstm.to_numpy(plain.loss(ids[:, :-1], ids[:, 1:])[0]))
    assert not np.array_equal(dropped, inferred)
    model.train()
    before = [(cell.dropout_keep_prob, cell.training, cell.random_state()) for cell in model.stack.cells]
    model.generate([1, 2], 5, seed=0)
    assert [(cell.dropout_keep_prob, cell.training, cell.random_state()) for cell in model.stack.cells] == before
    with pytest.raises(TypeError, match="mode must be True or False"):
        model.train("no")
