"""LSTMCell: TensorFlow's published values, layer norm and dropout against the reference."""
from __future__ import annotations

import numpy as np
import pytest

import xlstm
from reference import reference_rnn, reference_step


def test_tensorflow_published_values(backend):
    # LayerNormBasicLSTMCell(layer_norm=False), all weights and bias 0.5, float32 (DESIGN.md).
    cell = xlstm.LSTMCell(2, 3, initializer=0.5, bias_initializer=0.5, backend=backend)
    state = xlstm.LSTMState(xlstm.asarray([[0.0, 0.1]], backend=backend), xlstm.asarray([[0.2, 0.3]], backend=backend))
    h, new_state = cell(xlstm.asarray([[1.0, 1.0, 1.0]], backend=backend), state)
    np.testing.assert_allclose(xlstm.to_numpy(h), [[0.64121795, 0.68166804]], atol=1e-6)
    np.testing.assert_allclose(xlstm.to_numpy(new_state.h), [[0.64121795, 0.68166804]], atol=1e-6)
    np.testing.assert_allclose(xlstm.to_numpy(new_state.c), [[0.88477188, 0.98103917]], atol=1e-6)
    assert str(h.dtype).endswith("float32")


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-10), ("float32", 1e-5)])
def test_single_step_matches_reference(backend, layer_norm, dtype, tolerance):
    rng = np.random.default_rng(1)
    B, I, H = 3, 4, 5
    W = rng.normal(size=(4 * H, 1 + I + H))
    gain, shift = rng.normal(size=(5, H)), rng.normal(size=(5, H))
    x, c, h = rng.normal(size=(B, I)), rng.normal(size=(B, H)), rng.normal(size=(B, H))
    cell = xlstm.LSTMCell(H, I, weights=W, layer_norm=layer_norm, norm_gain=gain, norm_shift=shift,
                          forget_bias=0.7, dtype=dtype, backend=backend)
    on = lambda a: xlstm.asarray(a, dtype=dtype, backend=backend)  # noqa: E731
    out, state = cell(on(x), xlstm.LSTMState(on(c), on(h)))
    for b in range(B):
        c_ref, h_ref = reference_step(W, x[b], c[b], h[b], forget_bias=0.7, layer_norm=layer_norm,
                                      gain=gain, shift=shift)
        np.testing.assert_allclose(xlstm.to_numpy(state.c)[b], c_ref, atol=tolerance, rtol=0)
        np.testing.assert_allclose(xlstm.to_numpy(out)[b], h_ref, atol=tolerance, rtol=0)


def test_layer_norm_ignores_the_bias_column(backend):
    rng = np.random.default_rng(2)
    W = rng.normal(size=(8, 1 + 3 + 2))
    other = W.copy()
    other[:, 0] += 5.0
    x = xlstm.asarray(rng.normal(size=(1, 3)), dtype="float64", backend=backend)
    h1, _ = xlstm.LSTMCell(2, 3, weights=W, layer_norm=True, backend=backend)(x)
    h2, _ = xlstm.LSTMCell(2, 3, weights=other, layer_norm=True, backend=backend)(x)
    np.testing.assert_array_equal(xlstm.to_numpy(h1), xlstm.to_numpy(h2))


def test_layer_norm_epsilon_is_used(backend):
    # With a huge epsilon the normalised values shrink towards the shift (0), so the
    # candidate is near tanh(0) = 0 and c stays near 0.5 * c_prev... any change shows epsilon works.
    W = np.random.default_rng(3).normal(size=(8, 6))
    x = xlstm.asarray([[0.3, -0.2, 0.5]], dtype="float64", backend=backend)
    small = xlstm.LSTMCell(2, 3, weights=W, layer_norm=True, backend=backend)
    large = xlstm.LSTMCell(2, 3, weights=W, layer_norm=True, norm_epsilon=100.0, backend=backend)
    c_small = xlstm.to_numpy(small(x)[1].c)
    c_large = xlstm.to_numpy(large(x)[1].c)
    c_ref, _ = reference_step(W, [0.3, -0.2, 0.5], np.zeros(2), np.zeros(2), layer_norm=True,
                              gain=np.ones((5, 2)), shift=np.zeros((5, 2)), eps=100.0)
    np.testing.assert_allclose(c_large[0], c_ref, atol=1e-12)
    assert not np.allclose(c_small, c_large)


def test_dropout_masks_candidate_only_and_fresh_each_step(backend):
    B, T, I, H, keep = 4, 6, 3, 8, 0.6
    rng = np.random.default_rng(4)
    W, inputs = rng.normal(size=(4 * H, 1 + I + H)), rng.normal(size=(B, T, I))
    cell = xlstm.LSTMCell(H, I, weights=W, dropout_keep_prob=keep, seed=11, dtype="float64", backend=backend)
    outputs, state = xlstm.dynamic_rnn(cell, xlstm.asarray(inputs, backend=backend))
    # A twin cell with the same seed draws the same masks; the reference applies them by hand.
    twin = xlstm.LSTMCell(H, I, weights=W, dropout_keep_prob=keep, seed=11, dtype="float64", backend=backend)
    masks = xlstm.to_numpy(twin.dropout_masks((T, B, H)))
    assert set(np.unique(masks)) <= {0.0, 1.0 / keep}
    assert 0.3 < (masks > 0).mean() < 0.9
    assert not np.array_equal(masks[0], masks[1]), "each step needs a fresh mask"
    ref_out, ref_c, _ = reference_rnn(W, inputs, masks=masks)
    np.testing.assert_allclose(xlstm.to_numpy(outputs), ref_out, atol=1e-10)
    np.testing.assert_allclose(xlstm.to_numpy(state.c), ref_c, atol=1e-10)


def test_dropout_is_seeded_and_off_by_default(backend):
    x = xlstm.asarray(np.ones((2, 5, 3)), dtype="float32", backend=backend)
    run = lambda **kw: xlstm.to_numpy(xlstm.dynamic_rnn(  # noqa: E731
        xlstm.LSTMCell(4, 3, seed=5, backend=backend, **kw), x)[0])
    np.testing.assert_array_equal(run(dropout_keep_prob=0.5), run(dropout_keep_prob=0.5))
    assert not np.array_equal(run(dropout_keep_prob=0.5), run())
    np.testing.assert_array_equal(run(), run(dropout_keep_prob=1.0))


def test_zero_state_and_properties(backend):
    cell = xlstm.LSTMCell(5, 10, backend=backend)
    state = cell.zero_state(3)
    assert state.c.shape == (3, 5) and state.h.shape == (3, 5)
    assert np.all(xlstm.to_numpy(state.c) == 0) and np.all(xlstm.to_numpy(state.h) == 0)
    assert cell.weights.shape == (20, 16)
    assert cell.state_size == (5, 5) and cell.output_size == 5
    assert cell.norm_gain is None
    ln = xlstm.LSTMCell(5, 10, layer_norm=True, norm_gain=2.0, norm_shift=0.5, backend=backend)
    assert ln.norm_gain.shape == (5, 5)
    assert np.all(xlstm.to_numpy(ln.norm_gain) == 2.0) and np.all(xlstm.to_numpy(ln.norm_shift) == 0.5)


def test_default_initialisation_is_glorot_with_zero_bias(backend):
    cell = xlstm.LSTMCell(16, 8, seed=0, backend=backend)
    w = xlstm.to_numpy(cell.weights)
    limit = np.sqrt(6.0 / (64 + 24))
    assert np.all(w[:, 0] == 0.0)
    assert np.abs(w[:, 1:]).max() <= limit and np.abs(w[:, 1:]).max() > 0.9 * limit
    again = xlstm.to_numpy(xlstm.LSTMCell(16, 8, seed=0, backend=backend).weights)
    np.testing.assert_array_equal(w, again)


def test_seeded_weights_are_the_same_on_every_backend(backend):
    here = xlstm.to_numpy(xlstm.LSTMCell(6, 4, seed=3, backend=backend).weights)
    on_numpy = xlstm.to_numpy(xlstm.LSTMCell(6, 4, seed=3, backend="numpy").weights)
    np.testing.assert_array_equal(here, on_numpy)


@pytest.mark.parametrize("shape", [(12, 7), (5, 9), (6, 6)])
def test_orthogonal_initializer(backend, shape):
    q = xlstm.to_numpy(xlstm.init.orthogonal(gain=2.0)(shape, backend.xp.float64, backend.random(0)))
    assert q.shape == shape
    small = min(shape)
    gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
    np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-10)


def test_initializer_spellings_agree(backend):
    by_factory = xlstm.LSTMCell(3, 2, initializer=xlstm.init.orthogonal, seed=1, backend=backend)
    by_name = xlstm.LSTMCell(3, 2, initializer="orthogonal", seed=1, backend=backend)
    by_object = xlstm.LSTMCell(3, 2, initializer=xlstm.init.orthogonal(), seed=1, backend=backend)
    for other in (by_name, by_object):
        np.testing.assert_array_equal(xlstm.to_numpy(by_factory.weights), xlstm.to_numpy(other.weights))
    uniform = xlstm.to_numpy(xlstm.LSTMCell(3, 2, initializer=xlstm.init.uniform(-0.2, 0.2), seed=1,
                                            bias_initializer=0.3, backend=backend).weights)
    assert np.all(uniform[:, 0] == np.float32(0.3)) and np.abs(uniform[:, 1:]).max() <= 0.2


def test_cell_moves_between_backends(backend):
    cell = xlstm.LSTMCell(4, 3, layer_norm=True, norm_gain=1.5, seed=2, dtype="float64")  # current backend
    moved = cell.to(backend.name, device=backend.device)
    x = np.random.default_rng(5).normal(size=(2, 3))
    h_here, _ = cell(xlstm.asarray(x, dtype="float64"))
    h_moved, _ = moved(xlstm.asarray(x, dtype="float64", backend=backend))
    np.testing.assert_allclose(xlstm.to_numpy(h_moved), xlstm.to_numpy(h_here), atol=1e-14)
    assert moved.backend.name == backend.name
