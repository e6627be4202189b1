"""dynamic_rnn against the independent reference: lengths, initial state, time-major."""
from __future__ import annotations

import numpy as np
import pytest

import xlstm
from reference import reference_rnn


def _problem(B=3, T=5, I=4, H=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(4 * H, 1 + I + H)), rng.normal(size=(B, T, I)),
            rng.normal(size=(B, H)), rng.normal(size=(B, H)), rng.normal(size=(5, H)), rng.normal(size=(5, H)))


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-10), ("float32", 1e-5)])
def test_dynamic_rnn_matches_reference(backend, layer_norm, time_major, dtype, tolerance):
    W, inputs, c0, h0, gain, shift = _problem()
    lengths = [5, 0, 3]
    cell = xlstm.LSTMCell(6, 4, weights=W, layer_norm=layer_norm, norm_gain=gain, norm_shift=shift,
                          forget_bias=0.5, dtype=dtype, backend=backend)
    on = lambda a: xlstm.asarray(a, dtype=dtype, backend=backend)  # noqa: E731
    given = on(np.swapaxes(inputs, 0, 1) if time_major else inputs)
    outputs, state = xlstm.dynamic_rnn(cell, given, initial_state=xlstm.LSTMState(on(c0), on(h0)),
                                       sequence_length=xlstm.asarray(lengths, backend=backend),
                                       time_major=time_major)
    ref_out, ref_c, ref_h = reference_rnn(W, inputs, c0, h0, lengths, forget_bias=0.5,
                                          layer_norm=layer_norm, gain=gain, shift=shift)
    got = xlstm.to_numpy(outputs)
    np.testing.assert_allclose(np.swapaxes(got, 0, 1) if time_major else got, ref_out, atol=tolerance, rtol=0)
    np.testing.assert_allclose(xlstm.to_numpy(state.c), ref_c, atol=tolerance, rtol=0)
    np.testing.assert_allclose(xlstm.to_numpy(state.h), ref_h, atol=tolerance, rtol=0)
    # A row of length 0 keeps its initial state exactly.
    np.testing.assert_array_equal(xlstm.to_numpy(state.c)[1], xlstm.to_numpy(on(c0))[1])


def test_step_by_step_equals_unrolled(backend):
    W, inputs, *_ = _problem(B=2, T=4)
    cell = xlstm.LSTMCell(6, 4, weights=W, backend=backend)
    x = xlstm.asarray(inputs, backend=backend)
    outputs, final = xlstm.dynamic_rnn(cell, x)
    state = cell.zero_state(2)
    for t in range(4):
        h, state = cell(x[:, t, :], state)
        np.testing.assert_allclose(xlstm.to_numpy(h), xlstm.to_numpy(outputs)[:, t], atol=1e-6)
    np.testing.assert_allclose(xlstm.to_numpy(state.c), xlstm.to_numpy(final.c), atol=1e-6)


def test_lengths_as_python_list_and_empty_sequence(backend):
    W, inputs, *_ = _problem(B=2, T=3)
    cell = xlstm.LSTMCell(6, 4, weights=W, dtype="float64", backend=backend)
    outputs, state = xlstm.dynamic_rnn(cell, xlstm.asarray(inputs, backend=backend), sequence_length=[1, 3])
    ref_out, ref_c, _ = reference_rnn(W, inputs, lengths=[1, 3])
    np.testing.assert_allclose(xlstm.to_numpy(outputs), ref_out, atol=1e-10)
    empty, state = xlstm.dynamic_rnn(cell, xlstm.asarray(np.zeros((2, 0, 4)), backend=backend))
    assert empty.shape == (2, 0, 6)
    assert np.all(xlstm.to_numpy(state.h) == 0)


def test_dense_projects_every_step(backend):
    rng = np.random.default_rng(7)
    kernel, bias, x = rng.normal(size=(6, 10)), rng.normal(size=10), rng.normal(size=(2, 3, 6))
    dense = xlstm.Dense(10, 6, kernel=kernel, bias=bias, backend=backend)
    assert str(dense.kernel.dtype).endswith("float64")
    y = dense(xlstm.asarray(x, backend=backend))
    np.testing.assert_allclose(xlstm.to_numpy(y), np.einsum("bti,iu->btu", x, kernel) + bias, atol=1e-12)
    moved = dense.to("numpy", dtype="float32")
    assert moved.kernel.dtype == np.float32
    glorot = xlstm.to_numpy(xlstm.Dense(10, 6, seed=0, backend=backend).kernel)
    assert np.abs(glorot).max() <= np.sqrt(6 / 16)
