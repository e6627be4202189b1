"""softmax, log_softmax, softmax_cross_entropy and sequence_loss with TensorFlow's semantics."""
from __future__ import annotations

import numpy as np
import pytest

import xlstm

TF_LOGITS = [[2.0, -5.0, 0.5, -0.1], [0.0, 0.0, 1.9, 1.4], [-100.0, 100.0, -100.0, -100.0]]
TF_LABELS = [0, 3, 1]
TF_LOSSES = [0.29750752, 1.1448325, 0.0]  # tf.nn.sparse_softmax_cross_entropy_with_logits, float32


def _losses64(logits, labels):
    """Independent float64 cross-entropy: -log(exp(z_y) / Σ exp(z)) with math on Python floats."""
    logits = np.asarray(logits, np.float64)
    flat, flat_labels = logits.reshape(-1, logits.shape[-1]), np.asarray(labels).reshape(-1)
    out = [np.log(np.sum(np.exp(row - row.max()))) - (row[y] - row.max()) for row, y in zip(flat, flat_labels)]
    return np.array(out).reshape(np.asarray(labels).shape)


def test_tensorflow_published_losses(backend):
    logits = xlstm.asarray(TF_LOGITS, backend=backend)
    labels = xlstm.asarray(TF_LABELS, backend=backend)
    losses = xlstm.softmax_cross_entropy(logits, labels, reduction="none")
    np.testing.assert_allclose(xlstm.to_numpy(losses), TF_LOSSES, atol=1e-6)
    np.testing.assert_allclose(float(xlstm.to_numpy(xlstm.softmax_cross_entropy(logits, labels))),
                               np.mean(TF_LOSSES), atol=1e-6)


def test_reductions_and_weights(backend):
    rng = np.random.default_rng(0)
    logits, labels, weights = rng.normal(size=(4, 3, 7)), rng.integers(0, 7, size=(4, 3)), rng.random((4, 3))
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731
    expected = _losses64(logits, labels)
    none = xlstm.softmax_cross_entropy(on(logits), on(labels), on(weights), reduction="none")
    total = xlstm.softmax_cross_entropy(on(logits), on(labels), on(weights), reduction="sum")
    mean = xlstm.softmax_cross_entropy(on(logits), on(labels), on(weights), reduction="mean")
    np.testing.assert_allclose(xlstm.to_numpy(none), weights * expected, atol=1e-12)
    np.testing.assert_allclose(float(xlstm.to_numpy(total)), np.sum(weights * expected), atol=1e-12)
    np.testing.assert_allclose(float(xlstm.to_numpy(mean)), np.sum(weights * expected) / weights.sum(), atol=1e-12)
    zero = xlstm.softmax_cross_entropy(on(logits), on(labels), on(np.zeros((4, 3))))
    assert float(xlstm.to_numpy(zero)) == 0.0


def test_small_integer_labels_on_many_rows(backend):
    """uint8 labels over more rows × classes than uint8 can count: the gather of each row's
    label entry must not overflow, and the gradient is softmax − one-hot."""
    rng = np.random.default_rng(2)
    logits, labels = rng.normal(size=(40, 9)), rng.integers(0, 9, size=40).astype(np.uint8)
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731
    loss, backward = xlstm.softmax_cross_entropy_vjp(on(logits), on(labels), reduction="sum")
    np.testing.assert_allclose(float(xlstm.to_numpy(loss)), _losses64(logits, labels).sum(), atol=1e-12)
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(xlstm.to_numpy(backward(2.0)), 2.0 * (softmax - np.eye(9)[labels]), atol=1e-12)


@pytest.mark.parametrize("across_time, across_batch", [(True, True), (True, False), (False, True), (False, False)])
def test_sequence_loss_matches_tensorflow_formula(backend, across_time, across_batch):
    rng = np.random.default_rng(1)
    B, T, V = 3, 4, 5
    logits, targets = rng.normal(size=(B, T, V)), rng.integers(0, V, size=(B, T))
    weights = (rng.random((B, T)) > 0.3).astype(np.float64)
    crossent = _losses64(logits, targets) * weights
    if across_time and across_batch:
        expected = crossent.sum() / (weights.sum() + 1e-12)
    elif across_time:
        expected = crossent.sum(axis=1) / (weights.sum(axis=1) + 1e-12)
    elif across_batch:
        expected = crossent.sum(axis=0) / (weights.sum(axis=0) + 1e-12)
    else:
        expected = crossent
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731
    got = xlstm.sequence_loss(on(logits), on(targets), on(weights), average_across_timesteps=across_time,
                              average_across_batch=across_batch)
    np.testing.assert_allclose(xlstm.to_numpy(got), expected, atol=1e-12)


def test_softmax_is_stable_and_normalised(backend):
    logits = xlstm.asarray([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]], dtype="float32", backend=backend)
    probabilities = xlstm.to_numpy(xlstm.softmax(logits))
    log_probabilities = xlstm.to_numpy(xlstm.log_softmax(logits))
    assert np.all(np.isfinite(probabilities)) and np.all(np.isfinite(log_probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probabilities[1], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum(), atol=1e-6)
    np.testing.assert_allclose(log_probabilities[0], [0.0, -1000.0, -2000.0], atol=1e-3)


def test_sigmoid_is_stable(backend):
    x = xlstm.asarray([-1000.0, -20.0, 0.0, 20.0, 1000.0], dtype="float64", backend=backend)
    got = xlstm.to_numpy(xlstm.sigmoid(x))
    np.testing.assert_allclose(got, [0.0, 1 / (1 + np.exp(20.0)), 0.5, 1 / (1 + np.exp(-20.0)), 1.0], rtol=1e-15)


def test_one_hot(backend):
    hot = xlstm.one_hot(xlstm.asarray([[2, 0], [1, 3]], backend=backend), 4)
    np.testing.assert_array_equal(xlstm.to_numpy(hot), np.eye(4, dtype=np.float32)[[[2, 0], [1, 3]]])
    assert str(hot.dtype).endswith("float32")
    assert str(xlstm.one_hot(xlstm.asarray([1], backend=backend), 3, dtype="float64").dtype).endswith("float64")
