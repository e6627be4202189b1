"""The CuPy fused kernels (`backends/cupy_kernels.py`) against the generic array-API code.

Everything here needs a CUDA GPU and is skipped, with the reason, where CuPy finds none.
Without one, tests/test_cuda_source.py runs the same kernel source and orchestration on the CPU.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from test_kernels import cases

import xlstm
from xlstm_backends import available_backends
from xlstm_backends.cupy_backend import CupyLibrary

UNAVAILABLE = available_backends()["cupy"]
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"cupy unavailable: {UNAVAILABLE}")


def _on_gpu(array, dtype):
    return xlstm.asarray(array, dtype=dtype, backend="cupy")


def _vjp_and_inference(case, dtype) -> dict[str, np.ndarray]:
    """Outputs, final states and every gradient of one random case on the cupy backend, on the host."""
    B, T, I, H, lengths, keep, time_major, seed = case
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(4 * H, 1 + I + H))
    inputs = rng.normal(size=(T, B, I) if time_major else (B, T, I))
    c0, h0, d_c, d_h = (rng.normal(size=(B, H)) for _ in range(4))
    d_outputs = rng.normal(size=inputs.shape[:2] + (H,))

    def unroll(run):
        cell = xlstm.LSTMCell(H, I, weights=weights, forget_bias=0.7, dropout_keep_prob=keep, seed=seed,
                              dtype=dtype, backend="cupy")
        state = xlstm.LSTMState(_on_gpu(c0, dtype), _on_gpu(h0, dtype))
        return run(cell, _on_gpu(inputs, dtype), state, sequence_length=lengths, time_major=time_major)

    outputs, final, backward = unroll(xlstm.dynamic_rnn_vjp)
    grads = backward(_on_gpu(d_outputs, dtype), xlstm.LSTMState(_on_gpu(d_c, dtype), _on_gpu(d_h, dtype)))
    inference, inference_final = unroll(xlstm.dynamic_rnn)
    found = {"outputs": outputs, "c": final.c, "h": final.h, "inference": inference,
             "inference c": inference_final.c, "inference h": inference_final.h, "d weights": grads["weights"],
             "d inputs": grads["inputs"], "d c0": grads["initial_state"].c, "d h0": grads["initial_state"].h}
    return {name: xlstm.to_numpy(value) for name, value in found.items()}


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
@settings(max_examples=30, deadline=None)
@given(case=cases())
def test_cupy_kernels_equal_generic_code(dtype, tolerance, case):
    fused = _vjp_and_inference(case, dtype)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(CupyLibrary, "lstm_kernels", lambda self: None)
        generic = _vjp_and_inference(case, dtype)
    for name, value in fused.items():
        assert value.dtype == generic[name].dtype, name
        np.testing.assert_allclose(value, generic[name], atol=tolerance, rtol=tolerance, err_msg=name)


def test_cupy_kernels_are_used_and_skipped_under_layer_norm(monkeypatch):
    from xlstm_backends import cupy_kernels

    calls = []
    original = cupy_kernels.lstm_forward
    monkeypatch.setattr(cupy_kernels, "lstm_forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = _on_gpu(np.ones((2, 3, 4)), "float32")
    xlstm.dynamic_rnn(xlstm.LSTMCell(5, 4, backend="cupy"), x)
    xlstm.dynamic_rnn(xlstm.LSTMCell(5, 4, layer_norm=True, backend="cupy"), x)
    assert calls == [1]


def test_cupy_kernels_never_write_into_the_callers_arrays():
    """B = H = 1 makes every [B, H] state contiguous either way round: the kernels must copy it."""
    c0, h0, d_c, d_h = (_on_gpu([[value]], "float64") for value in (0.5, 0.5, 1.0, 1.0))
    cell = xlstm.LSTMCell(1, 1, seed=0, dtype="float64", backend="cupy")
    _, _, backward = xlstm.dynamic_rnn_vjp(cell, _on_gpu(np.ones((1, 3, 1)), "float64"), xlstm.LSTMState(c0, h0))
    backward(None, xlstm.LSTMState(d_c, d_h))
    assert [xlstm.to_numpy(a).tolist() for a in (c0, h0, d_c, d_h)] == [[[0.5]], [[0.5]], [[1.0]], [[1.0]]]
