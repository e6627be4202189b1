"""The numpy backend's fused output layer (`Library.output_layer_kernels`) against the generic code:
Dense.vjp, softmax_cross_entropy_vjp and the dense backward, on both kernel paths.

float64 must agree within 1e-12. float32 differs by rounding only: the fused products sum in
another order (the hand-tiled product with FMAs on the compiled path, one-thread BLAS blocks
on both), the compiled softmax uses Cephes' expf (within 2 ulp, tests/test_training_kernels.py)
and reorders each row's sum, and d_kernel, d_bias add the row blocks' partial sums. Each is a
few float32 rounding steps (eps32 ≈ 1.2e-7) of sums of up to a few hundred terms, so float32
is held to 2e-5 of the largest reference entry (absolute) and rtol 1e-4.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xlstm
from xlstm.models import CharLM
from xlstm_backends import get_backend, numpy_losses, output_layer, row_threads
from xlstm_backends.library import GENERIC_CODE
from xlstm_backends.numpy_backend import NumpyLibrary
from xlstm_backends.output_layer import OutputLayerKernels

from test_training_kernels import NUMBA, _loss_kernels

PATHS = ["numpy", NUMBA]


def _fused(path: str) -> OutputLayerKernels:
    """The fused output layer over the loss kernels of `path`."""
    return OutputLayerKernels(_loss_kernels(path))


def _assert_close(mine, theirs, dtype, name):
    """float64 within 1e-12; float32 within the rounding bound of the module docstring."""
    mine, theirs = np.asarray(mine), np.asarray(theirs)
    assert mine.dtype == theirs.dtype == np.dtype(dtype) and mine.shape == theirs.shape, name
    if dtype == "float64":
        np.testing.assert_allclose(mine, theirs, rtol=0.0, atol=1e-12, err_msg=name)
    else:
        scale = float(np.max(np.abs(theirs))) if theirs.size else 0.0
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=2e-5 * scale + 1e-30, err_msg=name)


def _generic(monkeypatch, x, kernel, bias, labels):
    """(mean loss, d_x, d_kernel, d_bias) by Dense.vjp and softmax_cross_entropy_vjp, no kernels."""
    monkeypatch.setattr(NumpyLibrary, "loss_kernels", lambda self: None)
    dense = xlstm.Dense(kernel.shape[1], kernel.shape[0], kernel=kernel, bias=bias, dtype=str(x.dtype),
                        backend="numpy")
    logits, dense_backward = dense.vjp(x)
    loss, loss_backward = xlstm.softmax_cross_entropy_vjp(logits, labels)
    grads = dense_backward(loss_backward())
    monkeypatch.undo()
    return loss, grads["inputs"], grads["kernel"], grads["bias"]


@st.composite
def layer_cases(draw):
    return (draw(st.integers(1, 300)), draw(st.integers(1, 40)), draw(st.integers(1, 70)),
            draw(st.sampled_from([0.1, 3.0, 30.0])), draw(st.sampled_from(["1", "2", "3"])),
            draw(st.sampled_from([1, 50, 1 << 15])), draw(st.integers(0, 2**31)))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=layer_cases())
def test_fused_output_layer_matches_generic_code(monkeypatch, path, dtype, case):
    """Loss and every gradient for any rows (odd counts, one row), units and classes (leftover columns
    of the compiled product's tiles), over 1-3 row blocks of any size and chunks of one row to all."""
    rows, units, classes, scale, threads, chunk_elements, seed = case
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, units)).astype(dtype)
    kernel = (rng.normal(size=(units, classes)) * scale / np.sqrt(units)).astype(dtype)
    bias = rng.normal(size=classes).astype(dtype)
    labels = rng.integers(0, classes, size=rows)
    with monkeypatch.context() as patched:
        patched.setenv(row_threads.THREADS_VARIABLE, threads)
        patched.setattr(output_layer, "MIN_ROWS", 1)
        patched.setattr(output_layer, "CHUNK_ELEMENTS", chunk_elements)
        patched.setattr(output_layer, "MIN_CHUNK_ROWS", 1)
        fused = _fused(path).dense_softmax_cross_entropy(x, kernel, bias, labels, 1.0 / rows)
    generic = _generic(monkeypatch, x, kernel, bias, labels)
    for name, mine, theirs in zip(("loss", "d_x", "d_kernel", "d_bias"), fused, generic):
        _assert_close(mine, theirs, dtype, name)


def _charlm_grads(monkeypatch, fused, dtype, threads, logit_block):
    """loss_and_grads of a small CharLM with the output layer `fused` (None: the generic code)."""
    monkeypatch.setenv(row_threads.THREADS_VARIABLE, threads)
    monkeypatch.setattr(output_layer, "MIN_ROWS", 1)
    monkeypatch.setattr("xlstm.models.LOGIT_BLOCK_ELEMENTS", logit_block)
    monkeypatch.setattr(NumpyLibrary, "output_layer_kernels", lambda self: fused)
    model = CharLM(29, embedding_size=6, hidden_size=11, num_layers=2, dtype=dtype, seed=4, backend="numpy")
    ids = xlstm.asarray(np.random.default_rng(5).integers(0, 29, size=(3, 16)), backend="numpy")
    result = model.loss_and_grads(ids[:, :-1], ids[:, 1:])
    monkeypatch.undo()
    return result


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("threads, logit_block", [("1", 1 << 22), ("2", 1 << 22), ("3", 7 * 29)])
def test_charlm_gradients_are_unchanged_by_the_fused_output_layer(monkeypatch, path, dtype, threads, logit_block):
    """Every gradient, the loss and the final state of CharLM.loss_and_grads (45 rows: odd, over 1-3
    row threads, and with 7-row logit blocks, LOGIT_BLOCK_ELEMENTS) equal the generic path's."""
    fused = _charlm_grads(monkeypatch, _fused(path), dtype, threads, logit_block)
    generic = _charlm_grads(monkeypatch, None, dtype, threads, logit_block)
    _assert_close(fused.loss, generic.loss, dtype, "loss")
    assert set(fused.grads) == set(generic.grads)
    for name in generic.grads:
        _assert_close(fused.grads[name], generic.grads[name], dtype, name)
    for mine, theirs in zip(fused.state, generic.state):
        np.testing.assert_array_equal(mine.h, theirs.h)


@pytest.mark.parametrize("path", PATHS)
def test_bad_targets_are_refused_before_any_work(monkeypatch, path):
    """Targets outside the vocabulary or not integers: a clear error naming them, before the LSTM runs."""
    monkeypatch.setattr(NumpyLibrary, "output_layer_kernels", lambda self: _fused(path))
    monkeypatch.setattr("xlstm.models.dynamic_rnn_vjp", lambda *a, **k: pytest.fail("the LSTM ran"))
    model = CharLM(5, embedding_size=3, hidden_size=4, num_layers=1, seed=0, backend="numpy")
    inputs = xlstm.asarray(np.zeros((2, 3), np.int64), backend="numpy")
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 4\]"):
        model.loss_and_grads(inputs, xlstm.asarray(np.full((2, 3), 5), backend="numpy"))
    with pytest.raises(TypeError, match="targets must be an integer array"):
        model.loss_and_grads(inputs, xlstm.asarray(np.zeros((2, 3)), backend="numpy"))


def test_only_the_numpy_backend_has_a_fused_output_layer():
    """Other libraries run the generic code, and `kernel_paths` (what bench prints) says which ran."""
    assert get_backend("array_api_strict").library.output_layer_kernels() is None
    assert get_backend("array_api_strict").library.kernel_paths()["output layer"] == GENERIC_CODE
    numpy_library = get_backend("numpy").library
    assert numpy_library.kernel_paths()["output layer"] == numpy_library.output_layer_kernels().DESCRIPTION
    assert numpy_losses.DESCRIPTION in _fused("numpy").DESCRIPTION
