"""Property tests: random shapes, lengths and settings, every backend vs the float64 reference."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xlstm
from reference import reference_rnn
from xlstm_backends import numpy_backend, numpy_kernels, row_threads

NUMBA_MISSING = any(importlib.util.find_spec(name) is None for name in numpy_backend.FAST_EXTRA)


@st.composite
def problems(draw, batch=st.integers(1, 4)):
    B, T = draw(batch), draw(st.integers(0, 5))
    I, H = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    use_lengths = draw(st.booleans())
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B)) if use_lengths else None
    return {
        "shape": (B, T, I, H), "lengths": lengths, "seed": draw(st.integers(0, 2**32 - 1)),
        "layer_norm": draw(st.booleans()), "time_major": draw(st.booleans()),
        "initial_state": draw(st.booleans()), "forget_bias": draw(st.sampled_from([0.0, 1.0, -0.5])),
    }


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=problems())
def test_dynamic_rnn_agrees_with_reference(backend, problem):
    _check_against_reference(backend, problem)


@pytest.mark.parametrize("threads", ["2", "3"])
@settings(max_examples=20, deadline=None)
@given(problem=problems(batch=st.integers(2, 7)))
def test_numpy_kernels_on_row_blocks_agree_with_reference(threads, problem):
    """The NumPy kernels with the batch cut into 2-3 uneven row blocks, one thread each."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(row_threads.THREADS_VARIABLE, threads)
        monkeypatch.setattr(numpy_kernels, "MIN_BLOCK_CELLS", 1)
        monkeypatch.setenv(numpy_backend.KERNELS_VARIABLE, "numpy")
        _check_against_reference("numpy", problem)


@pytest.mark.skipif(NUMBA_MISSING, reason="the optional 'fast' extra (numba) is not installed")
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=problems())
def test_compiled_kernels_split_over_threads_agree_with_reference(monkeypatch, problem):
    """The compiled kernels with the batch cut into up to 3 row blocks, one thread each."""
    from xlstm_backends import numba_kernels

    monkeypatch.setenv(numpy_backend.KERNELS_VARIABLE, "numba")
    monkeypatch.setenv(row_threads.THREADS_VARIABLE, "3")
    monkeypatch.setattr(numba_kernels, "MIN_ROWS", 1)
    monkeypatch.setattr(numba_kernels, "MIN_ROW_UNITS", 1)
    _check_against_reference("numpy", problem)


def _check_against_reference(backend, problem):
    """dynamic_rnn's outputs and final state on `backend` against the float64 reference."""
    B, T, I, H = problem["shape"]
    rng = np.random.default_rng(problem["seed"])
    W, inputs = rng.normal(size=(4 * H, 1 + I + H)), rng.normal(size=(B, T, I))
    gain, shift = rng.normal(size=(5, H)), rng.normal(size=(5, H))
    c0, h0 = (rng.normal(size=(B, H)), rng.normal(size=(B, H))) if problem["initial_state"] else (None, None)
    cell = xlstm.LSTMCell(H, I, weights=W, layer_norm=problem["layer_norm"], norm_gain=gain, norm_shift=shift,
                          forget_bias=problem["forget_bias"], backend=backend)
    on = lambda a: None if a is None else xlstm.asarray(a, backend=backend)  # noqa: E731
    state = None if c0 is None else xlstm.LSTMState(on(c0), on(h0))
    given_inputs = on(np.swapaxes(inputs, 0, 1) if problem["time_major"] else inputs)
    outputs, final = xlstm.dynamic_rnn(cell, given_inputs, initial_state=state, sequence_length=on(problem["lengths"]),
                                       time_major=problem["time_major"])
    expected, c_ref, h_ref = reference_rnn(W, inputs, c0, h0, problem["lengths"], forget_bias=problem["forget_bias"],
                                           layer_norm=problem["layer_norm"], gain=gain, shift=shift)
    got = xlstm.to_numpy(outputs)
    got = np.swapaxes(got, 0, 1) if problem["time_major"] else got
    # Layer norm of one unit (H=1) divides 0 by sqrt(epsilon): both sides see exactly 0 there.
    np.testing.assert_allclose(got, expected, atol=1e-10, rtol=0)
    np.testing.assert_allclose(xlstm.to_numpy(final.c), c_ref, atol=1e-10, rtol=0)
    np.testing.assert_allclose(xlstm.to_numpy(final.h), h_ref, atol=1e-10, rtol=0)
