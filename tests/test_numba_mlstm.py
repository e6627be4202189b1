"""The compiled mLSTM kernel (backends/numba_mlstm.py) against the generic array-API code it replaces."""
from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xlstm
from test_mlstm import core_problems, problem_arrays, random_state
from xlstm.mlstm_parallel import chunkwise_form, parallel_form
from xlstm.mlstm_recurrent import MLSTMState
from xlstm_backends import numpy_backend

pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(name) is None for name in numpy_backend.FAST_EXTRA),
                                reason="numba or scipy is not installed (the optional 'fast' extra)")


@settings(max_examples=60, deadline=None)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # exp(−m) of a tiny memory: inf, h̃ = 0
@given(problem=core_problems(), chunk=st.integers(1, 12))
def test_compiled_chunkwise_form_equals_the_generic_one(problem, chunk):
    """Outputs, final state and every gradient within 1e-12 in float64, in chunks of `chunk` steps (the whole
    window when it is at least T) and in one piece; float32 stays float32 and finite.

    With gate pre-activations of ±30 the normaliser qᵀn can be a near-cancelling sum of terms e^30 apart,
    and the two codes sum in different orders: a fresh clone's hypothesis run found h off by 5e-11
    relative there (chunks of 1). Those problems are held to 1e-9."""
    from xlstm_backends import numba_mlstm

    arrays, state, valid, r_h, r_state = problem_arrays(problem)
    pairs = [(functools.partial(chunkwise_form, chunk_size=chunk),
              functools.partial(numba_mlstm.chunkwise_form, chunk_size=chunk)),
             (parallel_form, numba_mlstm.parallel_form)]
    for generic_form, compiled_form in pairs:
        results = []
        for form in (generic_form, compiled_form):
            h, final, backward = form(*(arrays[name] for name in "qkvif"), state, valid, 1e-6, True)
            grads = backward(r_h, r_state if problem["with_final"] else None)
            results.append([h, *final, *(grads[name] for name in "qkvif"), *grads["initial_state"]])
        for generic, compiled in zip(*results):
            assert compiled.shape == generic.shape and compiled.dtype == generic.dtype
            tolerance = 1e-12 if problem["gate_scale"] < 10 else 1e-9
            np.testing.assert_allclose(compiled, generic, rtol=tolerance, atol=tolerance)
    as_float32 = {name: a.astype(np.float32) for name, a in arrays.items()}
    h, final, backward = numba_mlstm.chunkwise_form(*(as_float32[name] for name in "qkvif"),
                                                    MLSTMState(*(a.astype(np.float32) for a in state)), valid, 1e-6,
                                                    True, chunk)
    grads = backward(r_h.astype(np.float32), None)
    every = [h, *final, *(grads[name] for name in "qkvif"), *grads["initial_state"]]
    assert {a.dtype for a in every} == {np.dtype(np.float32)} and all(np.all(np.isfinite(a)) for a in every)


@pytest.mark.parametrize("output_gate", [True, False])
@pytest.mark.parametrize("lengths, with_state, with_final", [(None, False, False), ([40, 0, 17, 33], True, True),
                                                             ([5, 40, 40, 1], False, True)])
def test_compiled_cell_equals_the_generic_cell(monkeypatch, output_gate, lengths, with_state, with_final):
    """MLSTMCell form="auto" through the kernel's `unroll` (projection, chunks of 8 over 40 steps, output gate,
    two row blocks) against the generic array-API code: outputs, final state and gradients within 1e-12."""
    from xlstm_backends import numba_mlstm

    monkeypatch.setattr(xlstm.mlstm, "CHUNK_SIZE", 8)
    monkeypatch.setattr(numba_mlstm, "MIN_ROWS", 1)
    monkeypatch.setattr(numba_mlstm, "row_blocks", lambda rows, least: [(0, 1), (1, rows)])  # two row blocks
    rng = np.random.default_rng(11)
    B, T, I, H, NH = 4, 40, 3, 6, 2
    rows = 3 * H + 2 * NH + (H if output_gate else 0)
    weights, x = rng.normal(scale=0.7, size=(rows, 1 + I)), rng.normal(size=(B, T, I))
    state = random_state(rng, B, NH, H // NH) if with_state else None
    r_out, r_state = rng.normal(size=(B, T, H)), random_state(rng, B, NH, H // NH)
    results = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(numpy_backend.NumpyLibrary, "mlstm_kernels", lambda self: None)
        cell = xlstm.MLSTMCell(H, I, num_heads=NH, output_gate=output_gate, weights=weights, dtype="float64")
        outputs, final, backward = xlstm.dynamic_rnn_vjp(cell, x, state, sequence_length=lengths)
        grads = backward(r_out, r_state if with_final else None)
        results.append([outputs, *final, grads["weights"], grads["inputs"], *grads["initial_state"]])
    for compiled, generic in zip(*results):
        assert compiled.shape == generic.shape and compiled.dtype == generic.dtype
        np.testing.assert_allclose(compiled, generic, rtol=1e-12, atol=1e-12)


def test_the_numpy_backend_runs_the_compiled_kernel_and_says_so(monkeypatch):
    """With the `fast` extra the numpy backend's mLSTM kernels are the compiled ones (XLSTM_KERNELS=numpy: NumPy's)."""
    library = numpy_backend.NumpyLibrary()
    assert library.mlstm_kernels().__name__ == "xlstm_backends.numba_mlstm"
    assert "compiled mLSTM" in library.kernel_paths()["mLSTM"]
    monkeypatch.setenv("XLSTM_KERNELS", "numpy")
    assert library.mlstm_kernels().__name__ == "xlstm_backends.numpy_mlstm"
