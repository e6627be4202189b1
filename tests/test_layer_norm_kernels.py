"""The layer-norm LSTM kernels, compiled (backends/numba_layer_norm.py) and NumPy (backends/numpy_layer_norm.py),
against the generic array-API code."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xlstm
from test_kernels import force_chunked_products
from xlstm_backends import numpy_backend, numpy_layer_norm, row_threads
from xlstm_backends.numpy_backend import NumpyLibrary

NUMBA_MISSING = any(importlib.util.find_spec(name) is None for name in numpy_backend.FAST_EXTRA)
needs_numba = pytest.mark.skipif(NUMBA_MISSING, reason="numba or scipy is not installed (the optional 'fast' extra)")
KERNELS = [pytest.param("numba", marks=needs_numba), "numpy"]  # XLSTM_KERNELS: both layer-norm kernel paths
RESULTS = ("outputs", "inference", "c", "h", "weights", "norm_gain", "norm_shift", "inputs", "c0", "h0")


def _run_both(monkeypatch, case, dtype, kernels):
    """(fused, generic) results of dynamic_rnn and dynamic_rnn_vjp of one random layer-norm case, the fused
    ones from the `kernels` path."""
    B, T, I, H, lengths, keep, epsilon, initial_state, threads, time_major, seed = case
    rng = np.random.default_rng(seed)
    weights, inputs = rng.normal(size=(4 * H, 1 + I + H)), rng.normal(size=(T, B, I) if time_major else (B, T, I))
    gain, shift = rng.normal(1.0, 0.5, size=(5, H)), rng.normal(size=(5, H))
    c0, h0 = rng.normal(size=(B, H)), rng.normal(size=(B, H))
    d_out, d_c, d_h = rng.normal(size=inputs.shape[:2] + (H,)), rng.normal(size=(B, H)), rng.normal(size=(B, H))
    on = lambda a: xlstm.asarray(a, dtype=dtype, backend="numpy")  # noqa: E731
    state = xlstm.LSTMState(on(c0), on(h0)) if initial_state else None

    def cell():
        return xlstm.LSTMCell(H, I, weights=weights, layer_norm=True, norm_gain=gain, norm_shift=shift,
                              norm_epsilon=epsilon, forget_bias=0.7, dropout_keep_prob=keep, seed=seed, dtype=dtype,
                              backend="numpy")

    def run():
        outputs, final, backward = xlstm.dynamic_rnn_vjp(cell(), on(inputs), state, sequence_length=lengths,
                                                         time_major=time_major)
        inference, _ = xlstm.dynamic_rnn(cell(), on(inputs), state, sequence_length=lengths, time_major=time_major)
        grads = backward(on(d_out), xlstm.LSTMState(on(d_c), on(d_h)))
        return dict(zip(RESULTS, (outputs, inference, final.c, final.h, grads["weights"], grads["norm_gain"],
                                  grads["norm_shift"], grads["inputs"], *grads["initial_state"])))

    # Blocks of a single row are allowed here, so that small batches split over `threads` threads.
    if kernels == "numba":
        from xlstm_backends import numba_layer_norm

        monkeypatch.setattr(numba_layer_norm, "MIN_ROWS", 1)
    else:
        monkeypatch.setattr(numpy_layer_norm, "MIN_BLOCK_CELLS", 1)
    monkeypatch.setenv(row_threads.THREADS_VARIABLE, str(threads))
    monkeypatch.setenv(numpy_backend.KERNELS_VARIABLE, kernels)
    fused = run()
    monkeypatch.setattr(NumpyLibrary, "lstm_layer_norm_kernels", lambda self: None)
    generic = run()
    return fused, generic


@st.composite
def cases(draw, min_units=1):
    """Shapes from B = 1 up, lengths, dropout, epsilon, initial states, 1–3 row blocks (uneven ones too).

    With ε = 1e-12 (negligible) a norm over one or two units is constant (x̂ = 0 or ±1), and over
    pre-activations that are all multiples of one number (I = 1 with a zero state) it is invariant to
    that number's scale: the exact gradients through it are ε-sized, and both codes compute them as
    rounding noise amplified by 1/σ (1e-11 apart in float64 for H = 2 in 1,500 draws, the compiled
    kernels as much as the NumPy ones). Those draws take ε = 1e-3, where the norm is well conditioned.
    """
    B, T, I, H = (draw(st.integers(1, 7)), draw(st.integers(0, 6)), draw(st.integers(1, 5)),
                  draw(st.integers(min_units, 8)))
    lengths = draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B))
    epsilon = draw(st.sampled_from([1e-12, 1e-3])) if I >= 2 and H >= 3 else 1e-3
    return (B, T, I, H, lengths, draw(st.sampled_from([1.0, 0.6])), epsilon, draw(st.booleans()),
            draw(st.integers(1, 3)), draw(st.booleans()), draw(st.integers(0, 2**31)))


@pytest.mark.parametrize("kernels", KERNELS)
@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_fused_layer_norm_kernels_equal_generic_code_in_float64(kernels, case):
    _assert_close(case, "float64", 1e-12, kernels)


@pytest.mark.parametrize("kernels", KERNELS)
@settings(max_examples=40, deadline=None)
@given(case=cases(min_units=4))
def test_fused_layer_norm_kernels_equal_generic_code_in_float32(kernels, case):
    """The kernels' float32 tanh is approximate (a few units in the last place; 1.2e-5 at worst in
    300 draws). H ≥ 4: in a block of two or three units the values can nearly coincide, and then
    float32's mean subtraction loses most digits, so that a few units in the last place upstream
    came out 1e-2 apart in a gradient (once in 300 draws with H = 2: ill-conditioned, not wrong)."""
    _assert_close(case, "float32", 1e-4, kernels)


@settings(max_examples=25, deadline=None)
@given(case=cases())
def test_numpy_layer_norm_kernels_with_chunked_step_products_equal_generic_code(case):
    """The NumPy layer-norm loops with every per-step product in row chunks (as `chunk_rows` picks where that is
    faster), float64 within 1e-12 of the generic code."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        force_chunked_products(monkeypatch)
        fused, generic = _run_both(monkeypatch, case, "float64", "numpy")
    largest = max(float(np.max(np.abs(generic[name]), initial=0.0)) for name in RESULTS)
    for name in RESULTS:
        np.testing.assert_allclose(fused[name], generic[name], atol=1e-12 * max(1.0, largest), rtol=1e-12,
                                   err_msg=name)


def _assert_close(case, dtype, tolerance, kernels):
    """Every result within `tolerance`, relative, and absolute scaled by the run's largest magnitude: the
    rounding errors carried along the recurrence and through the norms (whose 1/σ amplifies them) scale with
    the values they came from, so an entry much smaller than M in a run whose values reach M is as uncertain as M·ulp
    (float32, ε = 1e-3, I = 1: a norm shift's gradient of 0.48 came out 1.9e-4 apart, compiled and NumPy
    kernels alike, in a run whose initial-state gradient reached 159; once in 4,000 draws). Where no value
    exceeds 1 this is the plain tolerance; with it 8,000 draws per kernel path and dtype passed."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        fused, generic = _run_both(monkeypatch, case, dtype, kernels)
    largest = max(float(np.max(np.abs(generic[name]), initial=0.0)) for name in RESULTS)
    for name in RESULTS:
        assert fused[name].dtype == generic[name].dtype, name
        assert fused[name].shape == generic[name].shape, name
        np.testing.assert_allclose(fused[name], generic[name], atol=tolerance * max(1.0, largest), rtol=tolerance,
                                   err_msg=name)


@needs_numba
@pytest.mark.parametrize("batch, threads", [(1, 2), (32, 2), (65, 2), (97, 3)])
def test_row_blocks_of_realistic_batches_equal_one_block(monkeypatch, batch, threads):
    """With the default MIN_ROWS, split unevenly or not at all, the blocks compute what one block does
    (to rounding: the norms' gradients are summed block by block)."""
    from xlstm_backends import numba_layer_norm

    rng = np.random.default_rng(batch)
    H, I, T = 6, 3, 5
    cell = xlstm.LSTMCell(H, I, layer_norm=True, norm_gain=rng.normal(size=(5, H)), seed=1, dtype="float64",
                          backend="numpy")
    x = xlstm.asarray(rng.normal(size=(batch, T, I)), backend="numpy")
    lengths = xlstm.asarray(rng.integers(0, T + 1, size=batch), backend="numpy")
    d_out = xlstm.asarray(rng.normal(size=(batch, T, H)), backend="numpy")
    results = []
    for count in (1, threads):
        monkeypatch.setenv(row_threads.THREADS_VARIABLE, str(count))
        outputs, final, backward = xlstm.dynamic_rnn_vjp(cell, x, sequence_length=lengths)
        grads = backward(d_out)
        results.append([outputs, *final, grads["weights"], grads["norm_gain"], grads["norm_shift"], grads["inputs"],
                        *grads["initial_state"]])
    assert len(row_threads.row_blocks(batch, numba_layer_norm.MIN_ROWS)) == min(threads, max(1, batch // 32))
    for one_block, split in zip(*results):
        np.testing.assert_allclose(split, one_block, rtol=1e-13, atol=1e-13)


@needs_numba
def test_layer_norm_cells_run_the_compiled_kernels_unless_numpy_kernels_are_asked_for(monkeypatch):
    from xlstm_backends import numba_layer_norm

    calls = []
    for module in (numba_layer_norm, numpy_layer_norm):
        original = module.lstm_forward
        monkeypatch.setattr(module, "lstm_forward",
                            lambda *a, module=module, original=original, **k: calls.append(module) or original(*a, **k))
    x = xlstm.asarray(np.ones((2, 3, 4)), dtype="float32", backend="numpy")
    cell = xlstm.LSTMCell(5, 4, layer_norm=True, backend="numpy")
    monkeypatch.setenv(numpy_backend.KERNELS_VARIABLE, "numba")
    xlstm.dynamic_rnn(cell, x)
    xlstm.dynamic_rnn(xlstm.LSTMCell(5, 4, backend="numpy"), x)  # the plain cell runs numba_kernels
    assert calls == [numba_layer_norm]
    assert "layer-norm LSTM: compiled layer-norm kernels" in NumpyLibrary().description
    monkeypatch.setenv(numpy_backend.KERNELS_VARIABLE, "numpy")
    xlstm.dynamic_rnn(cell, x)
    assert calls == [numba_layer_norm, numpy_layer_norm]
    assert NumpyLibrary().lstm_layer_norm_kernels() is numpy_layer_norm
    assert "layer-norm LSTM: NumPy layer-norm kernels" in NumpyLibrary().description


@pytest.mark.parametrize("kernels", KERNELS)
def test_kernels_never_write_into_the_callers_arrays(monkeypatch, kernels):
    """B = H = 1 makes a transpose contiguous: the kernels must still copy the states they update."""
    monkeypatch.setenv(numpy_backend.KERNELS_VARIABLE, kernels)
    c0, h0 = (xlstm.asarray([[0.5]], dtype="float64", backend="numpy") for _ in range(2))
    cell = xlstm.LSTMCell(1, 1, layer_norm=True, norm_shift=0.3, seed=0, dtype="float64", backend="numpy")
    gain = xlstm.to_numpy(cell.norm_gain).copy()
    _, _, backward = xlstm.dynamic_rnn_vjp(cell, xlstm.asarray(np.ones((1, 3, 1)), backend="numpy"),
                                           xlstm.LSTMState(c0, h0))
    d_c, d_h = (xlstm.asarray([[1.0]], dtype="float64", backend="numpy") for _ in range(2))
    backward(None, xlstm.LSTMState(d_c, d_h))
    assert c0.tolist() == [[0.5]] and h0.tolist() == [[0.5]] and d_c.tolist() == [[1.0]] and d_h.tolist() == [[1.0]]
    np.testing.assert_array_equal(xlstm.to_numpy(cell.norm_gain), gain)
